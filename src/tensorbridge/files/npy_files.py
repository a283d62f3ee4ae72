"""NumPy's ``.npy`` files: headers validated before anything is allocated, data mapped lazily.

**.npy** (:data:`NPY`) holds one array, read as one entry named ``data`` (``structure.ROOT_NAME``).
The header is checked in layers, as NumPy's own ``_read_array_header`` does, but no size is
trusted: the magic string; the version (1.0, 2.0 or 3.0); the header length against the bytes the
file holds, :data:`~tensorbridge.files.base.MAX_HEADER_BYTES` and the 10,000 characters ``np.load``
parses without ``allow_pickle``; NumPy's literal-only parser (``np.lib.format.read_array_header_*``:
a dict with exactly ``descr``, ``fortran_order`` and ``shape``); then no Python objects (nothing is
ever unpickled), dimensions that are non-negative ints, and ``itemsize * prod(shape)`` within the
bytes that follow the header. :meth:`Entry.load` returns a read-only ``np.memmap`` (an empty
read-only array for zero elements). Arrays load in the byte order and memory order they were
stored in. Writing needs exactly one entry; its name, ``structure`` and ``extra`` are not kept
(a ``.npy`` file has no room for them: use ``.npz`` to keep them).

**bfloat16 and float8** (every ``ml_dtypes`` row of ``tensorbridge.ROWS``): ``np.save`` writes them
as raw bytes (``|V2``, ``|V1``) that load as void, the dtype lost. Here they are stored as a
one-field structured dtype named after the type, holding the bits as the unsigned integer of the
same size, e.g. ``[('bfloat16', '<u2')]``. Plain NumPy loads that as a structured uint array; the
values are ``a["bfloat16"].view(ml_dtypes.bfloat16)``. tensorbridge reads a lone field named after
such a row with an integer of that size as the ``ml_dtypes`` array itself (a view; a byteswapped
copy for a big-endian carrier, which ``ml_dtypes`` cannot represent), so a user's own structured
array of exactly that shape reads as the type too. Other ``ml_dtypes`` types (int4, float4...)
are refused on writing. Every other dtype without Python objects is stored natively.

The header checks, the memory mapping and the dtype preparation for writing here also serve
``npz_files.py``, whose members are ``.npy`` files.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import tokenize
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import IO, Any, Final, Literal

import numpy as np

from ..dtypes import ROWS, is_ml_dtype
from ..errors import UnsupportedError
from . import structure as _structure
from .base import MAX_HEADER_BYTES, Archive, Entry, bad_file, check_size, clipped, load_for_writing

__all__ = ["NPY", "NpyFormat"]

# np.load parses at most this many header characters unless allow_pickle=True; so do we.
_MAX_HEADER_TEXT: Final = 10_000
_MAX_DIMS: Final = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32
_VERSIONS: Final = {(1, 0): "<H", (2, 0): "<I", (3, 0): "<I"}
_ML: Final = {row.name: row.numpy for row in ROWS if is_ml_dtype(row.numpy)}
_ML_NAME: Final = {dt: name for name, dt in _ML.items()}
_PARSE_ERRORS: Final = (
    ValueError,
    TypeError,
    SyntaxError,
    MemoryError,
    RecursionError,
    OverflowError,
    KeyError,
    tokenize.TokenError,  # from the Python 2 header filter NumPy tries after a SyntaxError
)


@dataclass(frozen=True)
class _Header:
    """One validated .npy header."""

    stored: np.dtype[Any]  # the dtype in the file
    mapped: np.dtype[Any]  # the dtype the bytes are read as
    loads_as: np.dtype[Any]  # the dtype Entry.load returns (ml_dtypes for a recognized field)
    shape: tuple[int, ...]
    fortran: bool
    size: int  # bytes before the data
    nbytes: int


class NpyFormat:
    """NumPy's ``.npy`` format: one array, memory-mapped on reading, streamed on writing."""

    name: str = "npy"
    suffixes: tuple[str, ...] = (".npy",)
    keeps_metadata: bool = False

    def read(self, path: str) -> Archive:
        """Read and validate the header of ``path``; load no data.

        Args:
            path: the file.

        Returns:
            One entry named ``data`` that loads as a read-only memory map, and the nesting record
            ``{"t": "data"}`` (a lone array).

        Raises:
            FileFormatError: (ValueError) the file is malformed, truncated or claims more data than it holds.
            UnsupportedError: (TypeError) the array holds Python objects (a pickle), or has too many dimensions.

        Example:
            >>> import os, tempfile, numpy as np
            >>> tmp = tempfile.TemporaryDirectory()
            >>> path = os.path.join(tmp.name, "x.npy")
            >>> np.save(path, np.asfortranarray(np.arange(6, dtype=">i4").reshape(2, 3)))
            >>> (entry,) = NPY.read(path).entries
            >>> entry.name, entry.dtype, entry.shape
            ('data', dtype('>i4'), (2, 3))
            >>> a = entry.load()
            >>> type(a).__name__, a.flags.f_contiguous, a.tolist()
            ('memmap', True, [[0, 1, 2], [3, 4, 5]])
            >>> del a; tmp.cleanup()
        """
        path = os.fspath(path)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = _read_header(f, size, path, "the file")
        load = partial(_map, path, header.size, header, size)
        entry = Entry(_structure.ROOT_NAME, header.loads_as, header.shape, load)
        return Archive([entry], {"t": _structure.ROOT_NAME})

    def write(self, path: str, entries: Sequence[Entry], structure: Any, extra: dict[str, str]) -> None:
        """Write the one entry to a new ``.npy`` file at ``path``, streaming it from its array.

        ``structure`` and ``extra`` are not kept: a ``.npy`` file holds one bare array.

        Args:
            path: the file to create (the caller renames it into place).
            entries: exactly one array.
            structure: ignored.
            extra: ignored.

        Raises:
            UnsupportedError: (TypeError) not exactly one entry, or a dtype a ``.npy`` cannot hold
                without pickling (object, other ``ml_dtypes`` types than tensorbridge's rows).
            StructureError: (ValueError) the entry loads with another dtype or shape than it declared.

        Example:
            >>> import os, tempfile, ml_dtypes, numpy as np
            >>> from tensorbridge.files.base import Entry
            >>> tmp = tempfile.TemporaryDirectory()
            >>> path = os.path.join(tmp.name, "w.npy")
            >>> w = np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)
            >>> NPY.write(path, [Entry("w", w.dtype, w.shape, lambda: w)], None, {})
            >>> plain = np.load(path)  # what NumPy alone sees: the bits as uint16
            >>> plain.dtype, plain["bfloat16"].view(ml_dtypes.bfloat16).tolist()
            (dtype([('bfloat16', '<u2')]), [1.5, -2.0])
            >>> NPY.read(path).entries[0].load().dtype
            dtype(bfloat16)
            >>> tmp.cleanup()
        """
        path = os.fspath(path)
        if len(entries) != 1:
            raise UnsupportedError(
                "writing",
                path,
                f"a .npy file holds one array, and {len(entries)} were given",
                "Use .npz (or .safetensors) for several arrays, or pick one with --only",
            )
        (entry,) = entries
        _stored_dtype(path, entry.name, entry.dtype)
        with open(path, "wb") as f:
            np.lib.format.write_array(f, _prepared(path, entry), allow_pickle=False)


NPY: Final = NpyFormat()


# ----------------------------------------------------------------------------------- headers


def _read_exact(f: IO[bytes], n: int) -> bytes:
    """Up to ``n`` bytes: fewer only at the end of the stream (zip members may return short reads)."""
    parts, left = [], n
    while left > 0:
        part = f.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _read_header(f: IO[bytes], available: int, where: str, what: str) -> _Header:
    """Validate a .npy header at the start of ``f`` (``available`` bytes in all), layer by layer."""
    magic = _read_exact(f, np.lib.format.MAGIC_LEN)
    if len(magic) < np.lib.format.MAGIC_LEN or magic[:-2] != np.lib.format.MAGIC_PREFIX:
        raise bad_file(where, f"{what} does not start with the .npy magic string (it starts {magic[:6]!r})")
    version = (magic[-2], magic[-1])
    length_format = _VERSIONS.get(version)
    if length_format is None:
        raise bad_file(where, f"{what} claims .npy format version {version[0]}.{version[1]}; NumPy writes 1.0 to 3.0")
    preamble = len(magic) + struct.calcsize(length_format)
    raw_length = _read_exact(f, preamble - len(magic))
    if len(raw_length) < preamble - len(magic):
        raise bad_file(where, f"{what} ends inside its header length")
    (length,) = struct.unpack(length_format, raw_length)
    if length > MAX_HEADER_BYTES:
        raise bad_file(where, f"the header of {what} claims {length} bytes, more than the limit of {MAX_HEADER_BYTES}")
    check_size(where, length, available - preamble, f"the header of {what}")
    if length > _MAX_HEADER_TEXT:
        raise bad_file(
            where,
            f"the header of {what} is {length} bytes, more than the {_MAX_HEADER_TEXT} that np.load parses either",
        )
    raw = _read_exact(f, length)
    if len(raw) < length:
        raise bad_file(where, f"{what} ends inside its {length}-byte header")
    stored, shape, fortran = _parse(raw, version, where, what)
    return _checked(stored, shape, fortran, preamble + length, available, where, what)


def _parse(raw: bytes, version: tuple[int, int], where: str, what: str) -> tuple[np.dtype[Any], Any, bool]:
    """NumPy's own literal-only parser (exact key set, field types) on the raw header bytes."""
    if version == (3, 0):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise bad_file(where, f"the version 3.0 header of {what} is not UTF-8 ({err.reason})") from err
        # NumPy's public parsers read latin-1; non-ASCII can only stand inside string literals
        # (field names), where a backslash escape means the same character.
        raw = text.encode("ascii", "backslashreplace")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    stream = io.BytesIO(struct.pack(_VERSIONS[version], len(raw)) + raw)
    try:
        with warnings.catch_warnings():
            # A header NumPy warns about (Python 2 era, deprecated dtype spellings) is refused:
            # tensorbridge never warns.
            warnings.simplefilter("error")
            shape, fortran, dtype = read(stream, max_header_size=len(raw))
    except Warning as err:
        raise bad_file(where, f"the header of {what} is not as NumPy writes it today ({_short(err)})") from err
    except _PARSE_ERRORS as err:  # whatever a hostile literal provokes, it is a bad header
        raise bad_file(where, f"the header of {what} is not a valid .npy header ({_short(err)})") from err
    return dtype, shape, fortran


def _checked(
    stored: np.dtype[Any], shape: Any, fortran: bool, size: int, available: int, where: str, what: str
) -> _Header:
    """The checks NumPy leaves to its caller: no objects, sane dimensions, data within the file."""
    if stored.hasobject:
        raise UnsupportedError(
            "reading",
            where,
            f"{what} holds Python objects (dtype {stored}), stored as a pickle, which tensorbridge never "
            "loads: unpickling can run any code",
            "If you trust the file, load it with np.load(path, allow_pickle=True) and save the values "
            "with a numeric dtype",
        )
    if not all(type(d) is int and d >= 0 for d in shape):
        raise bad_file(where, f"{what} has shape {_short(shape)}, not a tuple of non-negative integers")
    if len(shape) > _MAX_DIMS:
        raise UnsupportedError(
            "reading", where, f"{what} has {len(shape)} dimensions; NumPy holds at most {_MAX_DIMS}", "Reshape it"
        )
    if stored.itemsize == 0 or stored.subdtype is not None:
        why = "has no bytes per element" if stored.itemsize == 0 else "is a subarray, which np.save never writes"
        raise bad_file(where, f"{what} has dtype {stored}, which {why}")
    count = span = 1
    for d in shape:
        count *= d
        span *= max(d, 1)
    if span * stored.itemsize > sys.maxsize:  # even with a zero dimension, NumPy refuses such shapes
        raise bad_file(where, f"{what} has shape {shape}, too large for any array")
    nbytes = count * stored.itemsize
    check_size(where, nbytes, available - size, f"the data of {what} ({stored}, shape {shape})")
    mapped = loads_as = stored
    carried = _ml_field(stored)
    if carried is not None:
        loads_as, carrier = carried
        mapped = loads_as if carrier.isnative else carrier  # a big-endian carrier is swapped on loading
    return _Header(stored, mapped, loads_as, shape, fortran, size, nbytes)


def _ml_field(dt: np.dtype[Any]) -> tuple[np.dtype[Any], np.dtype[Any]] | None:
    """The ml_dtypes dtype a one-field structured dtype carries, and its carrier (module docs), or None."""
    if dt.names is None or dt.fields is None or len(dt.names) != 1 or dt.names[0] not in _ML:
        return None
    ml = _ML[dt.names[0]]
    carrier, offset = dt.fields[dt.names[0]][:2]
    if offset != 0 or carrier.kind not in "ui" or carrier.itemsize != ml.itemsize or dt.itemsize != ml.itemsize:
        return None
    return ml, carrier


def _finish(data: np.ndarray[Any, Any], header: _Header) -> np.ndarray[Any, Any]:
    if header.mapped == header.loads_as:
        return data
    # ml_dtypes has no big-endian types: one copy, in memory (no longer a memory map).
    swapped: np.ndarray[Any, Any] = np.asarray(data).byteswap().view(header.loads_as)
    swapped.flags.writeable = False
    return swapped


def _map(path: str, offset: int, header: _Header, size: int) -> np.ndarray[Any, Any]:
    """The data as a read-only memory map (zero elements: an empty read-only array)."""
    order: Literal["C", "F"] = "F" if header.fortran else "C"
    if header.nbytes == 0:
        empty = np.empty(header.shape, header.loads_as, order=order)
        empty.flags.writeable = False
        return empty
    now = os.stat(path).st_size
    if now != size:
        raise bad_file(path, f"the file is now {now} bytes, not the {size} it held when read")
    data: np.ndarray[Any, Any] = np.memmap(path, header.mapped, "r", offset, header.shape, order)
    return _finish(data, header)


# ----------------------------------------------------------------------------------- writing


def _stored_dtype(path: str, name: str, dt: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype ``dt`` is written as; refuses what a .npy cannot hold without pickling."""
    if dt in _ML_NAME:
        return np.dtype([(_ML_NAME[dt], f"u{dt.itemsize}")])
    why = None
    if dt.hasobject:
        why = "holds Python objects, which only a pickle can store"
    elif not getattr(type(dt), "_legacy", True):  # NumPy 2's StringDType and other new-style dtypes
        why = "can only be stored as a pickle"
    elif _has_ml(dt):
        why = "is an ml_dtypes type without a tensorbridge row, which NumPy would store as raw bytes"
    if why is not None:
        raise UnsupportedError(
            "writing", path, f"array {name!r} has dtype {dt}, which {why}", "Cast it to a numeric dtype first"
        )
    return dt


def _has_ml(dt: np.dtype[Any]) -> bool:
    if dt.subdtype is not None:
        return _has_ml(dt.subdtype[0])
    if dt.fields is not None:
        return any(_has_ml(field[0]) for field in dt.fields.values())
    return is_ml_dtype(dt)


def _prepared(path: str, entry: Entry) -> np.ndarray[Any, Any]:
    """The entry's data, checked against its declaration, as it is written (a view, never a copy)."""
    data = load_for_writing(path, entry)
    stored = _stored_dtype(path, entry.name, data.dtype)
    return data if stored == data.dtype else data.view(stored)


def _short(value: object) -> str:
    return clipped(str(value))
