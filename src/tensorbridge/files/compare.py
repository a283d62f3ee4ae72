"""Comparing arrays: the verify step of a conversion (bit for bit), and the values ``diff`` compares.

:func:`_verify` reads a written file back and compares every entry's bytes with the source's,
piece by piece (``chunks.py``); :func:`_compare_values` compares two arrays of equal shape in
chunks of :data:`CHUNK` elements, exactly or within tolerances. The jobs that use them are in
``convert.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..dtypes import row_for_numpy
from ..errors import ConversionError, FileFormatError
from . import format_for
from .base import Entry
from .chunks import blocks, pieces
from .output import shown
from .steps import read_archive

__all__ = ["CHUNK", "Progress", "VerifyError"]

#: Values are compared in chunks of this many elements, so a diff holds little beyond two chunks.
CHUNK = 1 << 22

#: ``(phase, bytes done, bytes total)``; phase is ``"convert"`` or ``"verify"``.
Progress = Callable[[str, int, int], None]


class VerifyError(ConversionError, ValueError):
    """The written file does not read back bit for bit (also a ValueError)."""


_REPORT = "Report this to tensorbridge"


def _bits(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The array's bytes in C order and native byte order, as uint8 (a copy only where needed)."""
    native = a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))
    return np.ascontiguousarray(native).reshape(-1).view(np.uint8)


def _verify(written: str, fmt: str, expected: list[Entry], shown_as: str, progress: Progress | None = None) -> None:
    """Read the written file back and compare every entry's bytes, piece by piece.

    Both sides are memory-mapped where the formats allow, and cut into the same pieces of
    ``PIECE_BYTES`` (``chunks.py``), so what the comparison holds beyond the maps is one piece
    of each, whatever the size of the tensor.
    """
    try:
        back = read_archive(format_for(written, fmt), written)
    except FileFormatError as err:
        raise VerifyError(
            "verify", shown(shown_as), f"the written file does not read back ({err.cause})", _REPORT
        ) from err
    names = [e.name for e in back.entries]
    if len(expected) == 1 and len(back.entries) == 1:
        pairs = [(back.entries[0], expected[0])]  # .npy keeps no name: a lone array reads back as "data"
    elif sorted(names) == sorted(e.name for e in expected):
        by_name = {e.name: e for e in back.entries}
        pairs = [(by_name[want.name], want) for want in expected]
    else:
        raise VerifyError("verify", shown_as, f"the written file holds {names}", "Report this to tensorbridge")
    total = sum(want.nbytes for want in expected)
    done = 0
    for got, want in pairs:
        where = f"{shown_as}: {want.name}"
        if got.shape != want.shape or got.dtype.newbyteorder("=") != want.dtype.newbyteorder("="):
            raise VerifyError(
                "verify",
                where,
                f"reads back as {got.dtype} {got.shape}, not {want.dtype} {want.shape}",
                "Report this to tensorbridge",
            )
        try:
            data = got.load()
        except FileFormatError as err:
            raise VerifyError("verify", where, f"it does not read back ({err.cause})", _REPORT) from err
        source = want.load()
        for a, b in zip(pieces(data), pieces(source), strict=True):  # equal shapes: cut at the same places
            if not np.array_equal(a, b):
                raise VerifyError("verify", where, "the bytes differ", _REPORT)
            done += a.size
            if progress is not None:
                progress("verify", done, total)
        del data, source


def _numeric(dt: np.dtype[Any]) -> bool:
    """Numbers that subtract: NumPy's numeric kinds and the table's others (bfloat16, float8, int4...)."""
    return dt.kind in "biufc" or row_for_numpy(dt) is not None


def _unequal(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> int:
    """How many elements differ, by ``==`` alone (dtypes that cannot be compared differ everywhere)."""
    try:
        same = np.asarray(x == y)
    except (TypeError, ValueError):
        return x.size
    return x.size if same.shape != x.shape else int(x.size - np.count_nonzero(same))


def _as_numbers(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if a.dtype.kind in "biufc":
        return a.astype(np.complex128 if a.dtype.kind == "c" else np.float64)
    return a.astype(np.float32).astype(np.float64)  # ml_dtypes kinds: float32 holds them exactly


def _compare_values(
    x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], rtol: float, atol: float, *, numeric: bool = True
) -> tuple[float, float, int] | None:
    worst_abs = worst_rel = 0.0
    count = 0
    for index in blocks(x.shape, CHUNK):  # the same blocks of both (equal shapes), whatever their strides
        cx, cy = x[index].reshape(-1), y[index].reshape(-1)
        if x.dtype == y.dtype and np.array_equal(_bits(cx), _bits(cy)):
            continue
        if not numeric:
            count += _unequal(cx, cy)
            continue
        nx, ny = _as_numbers(cx), _as_numbers(cy)
        with np.errstate(all="ignore"):
            same = (nx == ny) | (np.isnan(nx) & np.isnan(ny))
            err = np.abs(nx - ny)
            close = same | (err <= atol + rtol * np.abs(ny))
            bad = ~close
            if bad.any():
                count += int(bad.sum())
                worst_abs = max(worst_abs, float(np.nanmax(np.where(bad, err, 0.0))))
                rel = np.where(bad & (ny != 0), err / np.abs(np.where(ny == 0, 1, ny)), np.where(bad, np.inf, 0.0))
                worst_rel = max(worst_rel, float(np.nanmax(rel)))
    return None if count == 0 else (worst_abs, worst_rel, count)
