"""The three jobs of the command: convert a file, describe it, compare two.

Every job streams: headers are read first (``Format.read`` loads no data), then one entry at a
time is loaded (memory-mapped where the format allows), cast if asked, written or compared, and
dropped. A conversion writes to a new file beside the destination, created exclusively and held
open (``output.py``), and links it into place only when everything has been written (and
verified, with ``verify=True``), so a failure never leaves a half-written file, nothing is ever
written through a planted symbolic link, and an existing destination is kept unless ``force``.

Paths are checked before any data is read or written, and every error names the user's path:
a missing file, a directory, a permission refused. The readers are called in one place
(:func:`_read`), which turns anything they raise on a malformed file into ``FileFormatError``.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dtypes import numpy_dtype, row_for_numpy
from ..errors import ConversionError, FileFormatError, StructureError, UnsupportedError
from . import format_for, structure
from .base import Archive, Entry, Format, bad_file
from .output import Output, check_destination, shown

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


_FILES = "Give the path of a .npy, .npz, .pt/.pth/.bin or .safetensors file"

#: What a reader may raise that says something about the machine, not about the file.
_NOT_THE_FILE = (ConversionError, OSError, MemoryError)


def _check_source(path: str, what: str) -> None:
    """Refuse a source that is missing, a directory or unreadable, naming it (before its suffix is looked at)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileFormatError(
            what, shown(path), "the file does not exist (No such file or directory)", "Check the path"
        ) from None
    except NotADirectoryError:
        raise FileFormatError(what, shown(path), "a part of the path is not a directory", "Check the path") from None
    except PermissionError:
        raise FileFormatError(
            what, shown(path), "the file cannot be reached (permission denied)", "Check the path"
        ) from None
    except (UnicodeError, ValueError) as err:
        raise FileFormatError(what, shown(path), f"the name is not a valid path ({err})", "Check the path") from err
    if stat.S_ISDIR(st.st_mode):
        raise FileFormatError(what, shown(path), "it is a directory, not a tensor file", _FILES)
    if not os.access(path, os.R_OK):
        raise FileFormatError(what, shown(path), "the file cannot be read (permission denied)", "Check its permissions")


def _short(err: BaseException, limit: int = 160) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read(fmt: Format, path: str) -> Archive:
    """``fmt.read(path)``, the one call of a reader: what a malformed file makes it raise becomes FileFormatError.

    The entries' ``load`` is guarded the same way, since a reader reads the data lazily.
    """
    try:
        archive = fmt.read(path)
    except _NOT_THE_FILE:
        raise
    except Exception as err:  # a reader's unforeseen failure on a hostile file: still a bad file, not a bug report
        raise bad_file(path, f"it is not a readable {fmt.name} file ({_short(err)})") from err
    return Archive([_guarded(e, path) for e in archive.entries], archive.structure, archive.extra)


def _guarded(e: Entry, path: str) -> Entry:
    def load() -> np.ndarray[Any, Any]:
        try:
            return e.load()
        except _NOT_THE_FILE:
            raise
        except Exception as err:
            raise bad_file(path, f"array {e.name!r} cannot be read ({_short(err)})") from err

    return Entry(e.name, e.dtype, e.shape, load)


def _renamed(err: Exception, tmp: str, dst: str) -> Exception:
    """``err`` with the temporary path it names replaced by the user's destination."""
    if tmp not in str(err):
        return err
    dst = shown(dst)
    if isinstance(err, ConversionError):
        if not err.path:
            return type(err)(str(err).replace(tmp, dst))
        parts = (err.path, err.cause, err.fix)
        return type(err)(err.what, *(part.replace(tmp, dst) for part in parts))
    if isinstance(err, OSError) and err.errno is not None and err.strerror:
        return type(err)(err.errno, f"writing {dst}: {err.strerror}")
    return type(err)(str(err).replace(tmp, dst))


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
        force: replace an existing ``dst`` (a file or a symbolic link; never a directory).
        progress: called with (bytes done, bytes total) before each array.

    Raises:
        FileFormatError: the source is missing, a directory, unreadable or malformed.
        StructureError: ``dst`` exists (or appears while converting) without ``force``, is a
            directory, or its directory is missing or not writable; all checked before any data
            is read, and again when the file is put in place.
        VerifyError: the written file does not read back identically.

    Example:
        >>> import os, tempfile, numpy as np
        >>> d = tempfile.mkdtemp()
        >>> np.savez(os.path.join(d, "a.npz"), w=np.arange(3.0))
        >>> convert(os.path.join(d, "a.npz"), os.path.join(d, "a.safetensors"), verify=True).entries
        1
    """
    _check_source(src, "convert")
    check_destination(dst, force=force)
    src_fmt, dst_fmt = format_for(src, src_format), format_for(dst, dst_format)
    target = None if dtype is None else _floating_target(dtype, src)
    archive = _read(src_fmt, src)
    entries, nesting = _select(archive, only, src)
    cast = 0
    if target is not None:
        cast = sum(_is_floating(e.dtype) for e in entries)
        entries = _cast(entries, target)
    with Output(dst, force=force) as out:
        try:
            dst_fmt.write(out.path, _reporting(entries, progress), nesting, dict(archive.extra))
            if verify:
                _verify(out.path, dst_fmt.name, entries, dst)
        except (ConversionError, OSError) as err:
            raise _renamed(err, out.path, dst) from err
        out.commit()
    total = sum(e.nbytes for e in entries)
    kept = len(entries) - cast if target is not None else 0
    return ConvertReport(src, dst, len(entries), total, verify, cast, kept, None if target is None else target.name)


_REPORT = "Report this to tensorbridge"


def _bits(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The array's bytes in C order and native byte order, as uint8."""
    native = a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))
    return np.ascontiguousarray(native).reshape(-1).view(np.uint8)


def _verify(written: str, fmt: str, expected: list[Entry], shown_as: str) -> None:
    try:
        back = _read(format_for(written, fmt), written)
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
    for got, want in pairs:
        if got.shape != want.shape or got.dtype.newbyteorder("=") != want.dtype.newbyteorder("="):
            raise VerifyError(
                "verify",
                f"{shown_as}: {want.name}",
                f"reads back as {got.dtype} {got.shape}, not {want.dtype} {want.shape}",
                "Report this to tensorbridge",
            )
        try:
            data = got.load()
        except FileFormatError as err:
            raise VerifyError(
                "verify", f"{shown_as}: {want.name}", f"it does not read back ({err.cause})", _REPORT
            ) from err
        if not np.array_equal(_bits(data), _bits(want.load())):
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
    _check_source(path, "inspect")
    f = format_for(path, fmt)
    archive = _read(f, path)
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
    numeric: bool = True
    """False when the values were compared by equality alone (strings, structured dtypes): no errors to show."""


def diff(
    a: str, b: str, *, rtol: float = 0.0, atol: float = 0.0, fmt_a: str | None = None, fmt_b: str | None = None
) -> list[Difference]:
    """Compare two files name by name: presence, shape, dtype, then values within ``rtol``/``atol``.

    With the default tolerances, values must be identical (NaN equals NaN). Values of dtypes that
    are not numbers (strings, structured dtypes) are compared by equality, ignoring the tolerances.
    Values are compared in chunks, so memory stays at two chunks beyond the memory maps.

    Example:
        >>> import os, tempfile, numpy as np
        >>> d = tempfile.mkdtemp()
        >>> np.savez(os.path.join(d, "a.npz"), w=np.array([1.0, 2.0]))
        >>> np.savez(os.path.join(d, "b.npz"), w=np.array([1.0, 2.5]))
        >>> [(x.name, x.kind, x.max_abs) for x in diff(os.path.join(d, "a.npz"), os.path.join(d, "b.npz"))]
        [('w', 'values', 0.5)]
    """
    _check_source(a, "diff")
    _check_source(b, "diff")
    left = {e.name: e for e in _read(format_for(a, fmt_a), a).entries}
    right = {e.name: e for e in _read(format_for(b, fmt_b), b).entries}
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
        numeric = _numeric(x.dtype) and _numeric(y.dtype)
        found = _compare_values(x.load(), y.load(), rtol, atol, numeric=numeric)
        if found is not None:
            abs_err, rel_err, count = found
            out.append(Difference(name, "values", f"{count} values differ", abs_err, rel_err, numeric))
    return out


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
    fx, fy = x.reshape(-1), y.reshape(-1)
    worst_abs = worst_rel = 0.0
    count = 0
    for start in range(0, fx.size, CHUNK):
        cx, cy = fx[start : start + CHUNK], fy[start : start + CHUNK]
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
