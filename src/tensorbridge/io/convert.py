"""The three jobs of the command: convert a file, describe it, compare two.

Every job streams: headers are read first (``Format.read`` loads no data), then one entry at a
time is loaded (memory-mapped where the format allows), cast if asked, written or compared, and
dropped. A conversion writes to a temporary file beside the destination and renames it over the
destination only when everything has been written (and verified, with ``verify=True``), so a
failure never leaves a half-written file, and an existing destination is kept unless ``force``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dtypes import numpy_dtype, row_for_numpy
from ..errors import ConversionError, StructureError, UnsupportedError
from . import format_for, structure
from .base import Archive, Entry

__all__ = ["ConvertReport", "Difference", "VerifyError", "convert", "diff", "inspect"]

#: Values are compared in chunks of this many elements, so a diff holds little beyond two chunks.
CHUNK = 1 << 22

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


class VerifyError(ConversionError, ValueError):
    """The written file does not read back bit for bit (also a ValueError)."""


@dataclass(frozen=True)
class ConvertReport:
    """What a conversion did."""

    source: str
    destination: str
    entries: int
    nbytes: int
    verified: bool
    cast: int = 0
    """How many floating-point entries ``dtype=`` cast (0 without ``dtype=``)."""
    kept: int = 0
    """How many entries ``dtype=`` left as they were (integer, bool and complex ones)."""
    dtype: str | None = None
    """The dtype floating-point entries were cast to, if any."""


def _select(archive: Archive, only: Sequence[str] | None, path: str) -> tuple[list[Entry], Any]:
    if not only:
        return list(archive.entries), archive.structure
    kept = [e for e in archive.entries if any(fnmatch.fnmatchcase(e.name, pat) for pat in only)]
    if not kept:
        raise StructureError(
            "selecting",
            path,
            f"no array name matches {list(only)} (the file holds {len(archive.entries)})",
            "Run `tensorbridge inspect` to see the names; patterns use shell wildcards (encoder.*)",
        )
    return kept, structure.prune(archive.structure, {e.name for e in kept})


def _is_floating(dt: np.dtype[Any]) -> bool:
    """Real floating point: NumPy's float kinds and the table's others (bfloat16, the float8 kinds)."""
    row = row_for_numpy(dt)
    return dt.kind == "f" or (row is not None and row.torch.is_floating_point)


def _floating_target(dtype: object, path: str) -> np.dtype[Any]:
    target = numpy_dtype(dtype)
    if not _is_floating(target):
        raise UnsupportedError(
            "convert",
            path,
            f"--dtype {target} is not a floating-point dtype; --dtype casts floating-point tensors only "
            "(as nn.Module.to(dtype) does), keeping integer, bool and complex ones",
            "Pass a floating-point dtype such as float32, float16 or bfloat16",
        )
    return target


def _cast(entries: list[Entry], target: np.dtype[Any]) -> list[Entry]:
    """Cast the floating-point entries to ``target``; integer, bool and complex entries are kept as they are."""
    from ..api import to_numpy

    def loader(e: Entry) -> Callable[[], np.ndarray[Any, Any]]:
        def load() -> np.ndarray[Any, Any]:
            # A checked cast: a value that does not fit raises, naming the array.
            out: np.ndarray[Any, Any] = to_numpy({e.name: e.load()}, dtype=target)[e.name]
            return out

        return load

    return [Entry(e.name, target, e.shape, loader(e)) if _is_floating(e.dtype) else e for e in entries]


def _reporting(entries: list[Entry], progress: Progress | None) -> list[Entry]:
    if progress is None:
        return entries
    total = sum(e.nbytes for e in entries)
    done = [0]

    def loader(e: Entry) -> Callable[[], np.ndarray[Any, Any]]:
        def load() -> np.ndarray[Any, Any]:
            progress(done[0], total)
            data = e.load()
            done[0] += e.nbytes
            return data

        return load

    return [Entry(e.name, e.dtype, e.shape, loader(e)) for e in entries]


@contextlib.contextmanager
def _temporary_beside(dst: str) -> Iterator[str]:
    """A fresh path in ``dst``'s directory, removed unless the caller renamed it."""
    folder = os.path.dirname(os.path.abspath(dst))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dst)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    os.unlink(tmp)  # writers create the file themselves
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def convert(
    src: str,
    dst: str,
    *,
    src_format: str | None = None,
    dst_format: str | None = None,
    dtype: object = None,
    only: Sequence[str] | None = None,
    verify: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> ConvertReport:
    """Convert ``src`` to ``dst``, one array at a time.

    Args:
        src: the file to read.
        dst: the file to write; its format comes from its suffix unless ``dst_format`` says.
        src_format: the source format name, if its suffix does not say it.
        dst_format: the destination format name, likewise.
        dtype: cast every floating-point array to this floating-point dtype (checked: values that
            rounding would turn into inf/NaN raise); integer, bool and complex arrays are kept, as
            ``nn.Module.to(dtype)`` and Hugging Face loaders keep them. A dtype that is not
            floating point raises.
        only: keep only arrays whose dotted names match one of these shell patterns.
        verify: read the written file back and compare it bit for bit before renaming it.
        force: replace an existing ``dst``.
        progress: called with (bytes done, bytes total) before each array.

    Raises:
        FileFormatError: the source is malformed. ``FileExistsError``-like refusals raise
        StructureError. VerifyError: the written file does not read back identically.

    Example:
        >>> import os, tempfile, numpy as np
        >>> d = tempfile.mkdtemp()
        >>> np.savez(os.path.join(d, "a.npz"), w=np.arange(3.0))
        >>> convert(os.path.join(d, "a.npz"), os.path.join(d, "a.safetensors"), verify=True).entries
        1
    """
    src_fmt, dst_fmt = format_for(src, src_format), format_for(dst, dst_format)
    target = None if dtype is None else _floating_target(dtype, src)
    if os.path.exists(dst) and not force:
        raise StructureError(
            "convert", dst, "the destination exists", "Pass --force to replace it, or pick another name"
        )
    archive = src_fmt.read(src)
    entries, nesting = _select(archive, only, src)
    cast = 0
    if target is not None:
        cast = sum(_is_floating(e.dtype) for e in entries)
        entries = _cast(entries, target)
    with _temporary_beside(dst) as tmp:
        dst_fmt.write(tmp, _reporting(entries, progress), nesting, dict(archive.extra))
        if verify:
            _verify(tmp, dst_fmt.name, entries, dst)
        os.replace(tmp, dst)
    total = sum(e.nbytes for e in entries)
    kept = len(entries) - cast if target is not None else 0
    return ConvertReport(src, dst, len(entries), total, verify, cast, kept, None if target is None else target.name)


def _bits(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The array's bytes in C order and native byte order, as uint8."""
    native = a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))
    return np.ascontiguousarray(native).reshape(-1).view(np.uint8)


def _verify(written: str, fmt: str, expected: list[Entry], shown_as: str) -> None:
    back = format_for(written, fmt).read(written)
    names = [e.name for e in back.entries]
    if len(expected) == 1 and len(back.entries) == 1:
        pairs = [(back.entries[0], expected[0])]  # .npy keeps no name: a lone array reads back as "data"
    elif sorted(names) == sorted(e.name for e in expected):
        by_name = {e.name: e for e in back.entries}
        pairs = [(by_name[want.name], want) for want in expected]
    else:
        raise VerifyError("verify", shown_as, f"the written file holds {names}", "Report this to tensorbridge")
    for got, want in pairs:
        if got.shape != want.shape or got.dtype.newbyteorder("=") != want.dtype.newbyteorder("="):
            raise VerifyError(
                "verify",
                f"{shown_as}: {want.name}",
                f"reads back as {got.dtype} {got.shape}, not {want.dtype} {want.shape}",
                "Report this to tensorbridge",
            )
        if not np.array_equal(_bits(got.load()), _bits(want.load())):
            raise VerifyError("verify", f"{shown_as}: {want.name}", "the bytes differ", "Report this to tensorbridge")


@dataclass(frozen=True)
class Row:
    """One array of a file, as ``inspect`` lists it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def inspect(path: str, fmt: str | None = None) -> tuple[str, list[Row], Any]:
    """List a file's arrays from its headers, loading no data.

    Returns:
        (format name, one row per array, the nesting record or None).

    Example:
        >>> import os, tempfile, numpy as np
        >>> p = os.path.join(tempfile.mkdtemp(), "x.npy")
        >>> np.save(p, np.zeros((2, 3), np.float32))
        >>> inspect(p)[1]
        [Row(name='data', dtype='float32', shape=(2, 3), nbytes=24)]
    """
    f = format_for(path, fmt)
    archive = f.read(path)
    rows = [Row(e.name, e.dtype.name, e.shape, e.nbytes) for e in archive.entries]
    return f.name, rows, archive.structure


@dataclass(frozen=True)
class Difference:
    """How one name differs between two files."""

    name: str
    kind: str  # "only in A", "only in B", "shape", "dtype", "values"
    detail: str
    max_abs: float = 0.0
    max_rel: float = 0.0


def diff(
    a: str, b: str, *, rtol: float = 0.0, atol: float = 0.0, fmt_a: str | None = None, fmt_b: str | None = None
) -> list[Difference]:
    """Compare two files name by name: presence, shape, dtype, then values within ``rtol``/``atol``.

    With the default tolerances, values must be identical (NaN equals NaN). Values are compared
    in chunks, so memory stays at two chunks beyond the memory maps.

    Example:
        >>> import os, tempfile, numpy as np
        >>> d = tempfile.mkdtemp()
        >>> np.savez(os.path.join(d, "a.npz"), w=np.array([1.0, 2.0]))
        >>> np.savez(os.path.join(d, "b.npz"), w=np.array([1.0, 2.5]))
        >>> [(x.name, x.kind, x.max_abs) for x in diff(os.path.join(d, "a.npz"), os.path.join(d, "b.npz"))]
        [('w', 'values', 0.5)]
    """
    left = {e.name: e for e in format_for(a, fmt_a).read(a).entries}
    right = {e.name: e for e in format_for(b, fmt_b).read(b).entries}
    out: list[Difference] = []
    for name in [*left, *(n for n in right if n not in left)]:
        if name not in right:
            out.append(Difference(name, "only in A", f"{left[name].dtype} {left[name].shape}"))
            continue
        if name not in left:
            out.append(Difference(name, "only in B", f"{right[name].dtype} {right[name].shape}"))
            continue
        x, y = left[name], right[name]
        if x.shape != y.shape:
            out.append(Difference(name, "shape", f"{x.shape} vs {y.shape}"))
            continue
        dtypes_differ = x.dtype.newbyteorder("=") != y.dtype.newbyteorder("=")
        if dtypes_differ:
            out.append(Difference(name, "dtype", f"{x.dtype} vs {y.dtype}"))
        found = _compare_values(x.load(), y.load(), rtol, atol)
        if found is not None:
            abs_err, rel_err, count = found
            out.append(Difference(name, "values", f"{count} values differ", abs_err, rel_err))
    return out


def _as_numbers(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if a.dtype.kind in "biufc":
        return a.astype(np.complex128 if a.dtype.kind == "c" else np.float64)
    return a.astype(np.float32).astype(np.float64)  # ml_dtypes kinds: float32 holds them exactly


def _compare_values(
    x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], rtol: float, atol: float
) -> tuple[float, float, int] | None:
    fx, fy = x.reshape(-1), y.reshape(-1)
    worst_abs = worst_rel = 0.0
    count = 0
    for start in range(0, fx.size, CHUNK):
        cx, cy = fx[start : start + CHUNK], fy[start : start + CHUNK]
        if x.dtype == y.dtype and np.array_equal(_bits(cx), _bits(cy)):
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
