"""The three jobs of the command: convert a file, describe it, compare two.

Every job streams: headers are read first (``Format.read`` loads no data), then one entry at a
time is loaded (memory-mapped where the format allows), cast if asked, written or compared, and
dropped. A conversion writes to a new file beside the destination, created exclusively and held
open (``output.py``), and links it into place only when everything has been written (and
verified, with ``verify=True``), so a failure never leaves a half-written file, nothing is ever
written through a planted symbolic link, and an existing destination is kept unless ``force``.

Progress is reported by bytes, through one callable: ``progress(phase, done, total)`` with
phase ``"convert"`` as each entry is loaded to be written, then ``"verify"`` piece by piece.

Paths are checked before any data is read or written, and every error names the user's path:
a missing file, a directory, a permission refused. The readers are called in one place
(``steps.read_archive``, shared with ``tb.load``), which turns anything they raise on a
malformed file into ``FileFormatError``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..errors import UnsupportedError
from . import format_for, is_set_path
from .base import Entry
from .compare import CHUNK as CHUNK
from .compare import Progress, VerifyError, _compare_values, _numeric, _verify
from .dcp_files import DCP, is_dcp_dir
from .hf_sets import DEFAULT_SHARD_SIZE, SAFETENSORS_SET, SafetensorsSetFormat, parse_size
from .output import check_destination
from .set_output import check_set_destination
from .steps import cast_floating, check_source, floating_target, read_archive, select, write_archive

__all__ = ["ConvertReport", "Difference", "Inspection", "Progress", "VerifyError", "convert", "diff", "inspect"]


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


def _serialized(progress: Progress) -> Progress:
    """``progress``, called by one thread at a time."""
    lock = threading.Lock()

    def report(phase: str, done: int, total: int) -> None:
        with lock:
            progress(phase, done, total)

    return report


def _reporting(entries: list[Entry], progress: Progress | None) -> list[Entry]:
    """The entries, reporting the bytes of those before each one as it is loaded.

    Writers stream, so an entry is loaded when the ones before it have been written.
    """
    if progress is None:
        return entries
    total = sum(e.nbytes for e in entries)
    done = [0]

    def loader(e: Entry) -> Callable[[], np.ndarray[Any, Any]]:
        def load() -> np.ndarray[Any, Any]:
            progress("convert", done[0], total)
            data = e.load()
            done[0] += e.nbytes
            return data

        return load

    return [Entry(e.name, e.dtype, e.shape, loader(e)) for e in entries]


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
    max_shard_size: int | str | None = None,
    strip_prefix: str | None = None,
) -> ConvertReport:
    """Convert ``src`` to ``dst``, one array at a time.

    Args:
        src: the file to read.
        dst: the file to write; its format comes from its suffix unless ``dst_format`` says
            (``"dcp"``: a torch.distributed.checkpoint directory, ``dcp_files.py``; an existing DCP
            directory is one without it).
        src_format: the source format name, if its suffix does not say it.
        dst_format: the destination format name, likewise.
        dtype: cast every floating-point array to this floating-point dtype (checked: values that
            rounding would turn into inf/NaN raise); integer, bool and complex arrays are kept, as
            ``nn.Module.to(dtype)`` and Hugging Face loaders keep them. A dtype that is not
            floating point raises.
        only: keep only arrays whose dotted names match one of these shell patterns.
        verify: read the written file back and compare it bit for bit before renaming it.
        force: replace an existing ``dst`` (a file or a symbolic link; a directory only when it
            holds nothing but a sharded set's or a DCP checkpoint's files).
        progress: called with ``("convert", bytes done, bytes total)`` as each array is loaded
            and once at the end, then with ``("verify", ...)`` as the written file is compared.
        max_shard_size: write ``dst`` as a Hugging Face sharded set (a directory of shards and
            ``model.safetensors.index.json``) with at most this many bytes per shard: bytes, or
            ``"5GB"``, ``"500MB"``, ``"2GiB"``. A destination that names a set (a directory, no
            suffix) gets 5GB shards without it.
            A DCP destination refuses it (one data file per tensor).
        strip_prefix: remove this prefix from the names that start with it (``"model."``).

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
    check_source(src, "convert")
    limit = None if max_shard_size is None else parse_size(max_shard_size)
    to_dcp = is_dcp_dir(dst) if dst_format is None else dst_format.lower().lstrip(".") == DCP.name
    if limit is not None and to_dcp:
        raise UnsupportedError(
            "convert", dst, "--max-shard-size splits a sharded safetensors set, and a DCP checkpoint is written "
            "as one data file per tensor", "Leave out --max-shard-size, or write a set (--to safetensors-set)",
        )  # fmt: skip
    if limit is not None and dst_format is None:
        if not is_set_path(dst):
            raise UnsupportedError(
                "convert", dst, "--max-shard-size writes a sharded set (a directory), and this names a file",
                "Give a directory name without suffix, e.g. out/",
            )  # fmt: skip
        dst_format = SAFETENSORS_SET.name
    to_set = is_set_path(dst) if dst_format is None else dst_format.lower().lstrip(".") == SAFETENSORS_SET.name
    if limit is not None and not to_set:
        raise UnsupportedError(
            "convert", dst, f"--max-shard-size writes a sharded set, and --to says {dst_format}",
            "Leave out --to (or pass --to safetensors-set), and give a directory name",
        )  # fmt: skip
    (check_set_destination if to_set or to_dcp else check_destination)(dst, force=force)
    src_fmt, dst_fmt = format_for(src, src_format), format_for(dst, dst_format)
    if to_set:
        dst_fmt = SafetensorsSetFormat(limit or DEFAULT_SHARD_SIZE)
    target = None if dtype is None else floating_target(dtype, src)
    archive = read_archive(src_fmt, src)
    entries, nesting = select(archive, only, src)
    if strip_prefix:
        entries, nesting = _stripped(entries, strip_prefix, src), None
    cast = 0
    if target is not None:
        entries, cast = cast_floating(entries, target)
    total = sum(e.nbytes for e in entries)
    if progress is not None:
        progress = _serialized(progress)  # reported from the writer's thread and from a size watcher

    def finish(written: str) -> None:
        if progress is not None:
            progress("convert", total, total)
        if verify:
            _verify(written, dst_fmt.name, entries, dst, progress)

    def growing(nbytes: int) -> None:
        if progress is not None:
            progress("convert", min(nbytes, total), total)  # headers make the file a little larger

    write_archive(
        dst,
        dst_fmt,
        _reporting(entries, progress),
        nesting,
        dict(archive.extra),
        force=force,
        check=finish,
        written=None if progress is None else growing,
    )
    kept = len(entries) - cast if target is not None else 0
    return ConvertReport(src, dst, len(entries), total, verify, cast, kept, None if target is None else target.name)


def _stripped(entries: list[Entry], prefix: str, src: str) -> list[Entry]:
    """The entries with ``prefix`` removed from the names that start with it; two alike is an error."""
    out: list[Entry] = []
    seen: dict[str, str] = {}
    for e in entries:
        name = e.name[len(prefix) :] if e.name.startswith(prefix) and e.name != prefix else e.name
        if name in seen:
            raise UnsupportedError(
                "convert", src, f"--strip-prefix {prefix!r} makes {seen[name]!r} and {e.name!r} both {name!r}",
                "Pick another prefix, or select fewer names with --only",
            )  # fmt: skip
        seen[name] = e.name
        out.append(Entry(name, e.dtype, e.shape, e.load))
    return out


@dataclass(frozen=True)
class Row:
    """One array of a file, as ``inspect`` lists it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


class Inspection(NamedTuple):
    """What ``inspect`` finds in a file's headers."""

    format: str
    rows: list[Row]
    structure: Any
    """The nesting record, or None for a flat set of names."""
    metadata: dict[str, str]
    """The format's own metadata (safetensors ``__metadata__`` less tensorbridge's nesting record)."""


def inspect(path: str, fmt: str | None = None) -> Inspection:
    """List a file's arrays and metadata from its headers, loading no data.

    Example:
        >>> import os, tempfile, numpy as np
        >>> p = os.path.join(tempfile.mkdtemp(), "x.npy")
        >>> np.save(p, np.zeros((2, 3), np.float32))
        >>> inspect(p).rows
        [Row(name='data', dtype='float32', shape=(2, 3), nbytes=24)]
    """
    check_source(path, "inspect")
    f = format_for(path, fmt)
    archive = read_archive(f, path)
    rows = [Row(e.name, e.dtype.name, e.shape, e.nbytes) for e in archive.entries]
    return Inspection(f.name, rows, archive.structure, dict(archive.extra))


@dataclass(frozen=True)
class Difference:
    """How one name differs between two files."""

    name: str
    kind: str  # "only in A", "only in B", "shape", "dtype", "values", "metadata"
    detail: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    numeric: bool = True
    """False when the values were compared by equality alone (strings, structured dtypes): no errors to show."""


def diff(
    a: str,
    b: str,
    *,
    rtol: float = 0.0,
    atol: float = 0.0,
    fmt_a: str | None = None,
    fmt_b: str | None = None,
    metadata: bool = True,
) -> list[Difference]:
    """Compare two files name by name: presence, shape, dtype, then values within ``rtol``/``atol``.

    Then, where both formats have a place for metadata (safetensors ``__metadata__``, the JSON
    member of a .npz), the metadata key by key: a key in one file only, or with another value, is
    a ``"metadata"`` difference named by the key (none with ``metadata=False``). A format without
    that place (.npy, .pt) never differs in metadata: converting to it drops the metadata by design.
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
    check_source(a, "diff")
    check_source(b, "diff")
    archive_a_format, archive_b_format = format_for(a, fmt_a), format_for(b, fmt_b)
    archive_a, archive_b = read_archive(archive_a_format, a), read_archive(archive_b_format, b)
    left = {e.name: e for e in archive_a.entries}
    right = {e.name: e for e in archive_b.entries}
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
    if metadata and archive_a_format.keeps_metadata and archive_b_format.keeps_metadata:
        out.extend(_metadata_differences(archive_a.extra, archive_b.extra))
    return out


def _metadata_differences(a: dict[str, str], b: dict[str, str]) -> list[Difference]:
    out = []
    for key in [*a, *(k for k in b if k not in a)]:
        if key not in b:
            detail = f"only in A ({_shown_value(a[key])})"
        elif key not in a:
            detail = f"only in B ({_shown_value(b[key])})"
        elif a[key] != b[key]:
            detail = f"{_shown_value(a[key])} vs {_shown_value(b[key])}"
        else:
            continue
        out.append(Difference(key, "metadata", detail, numeric=False))
    return out


def _shown_value(value: str, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"
