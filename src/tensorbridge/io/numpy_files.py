"""NumPy's ``.npy`` and ``.npz`` files: headers validated before anything is allocated, data mapped lazily.

**.npy** (:data:`NPY`) holds one array, read as one entry named ``data`` (``structure.ROOT_NAME``).
The header is checked in layers, as NumPy's own ``_read_array_header`` does, but no size is
trusted: the magic string; the version (1.0, 2.0 or 3.0); the header length against the bytes the
file holds, :data:`~tensorbridge.io.base.MAX_HEADER_BYTES` and the 10,000 characters ``np.load``
parses without ``allow_pickle``; NumPy's literal-only parser (``np.lib.format.read_array_header_*``:
a dict with exactly ``descr``, ``fortran_order`` and ``shape``); then no Python objects (nothing is
ever unpickled), dimensions that are non-negative ints, and ``itemsize * prod(shape)`` within the
bytes that follow the header. :meth:`Entry.load` returns a read-only ``np.memmap`` (an empty
read-only array for zero elements). Arrays load in the byte order and memory order they were
stored in. Writing needs exactly one entry; its name, ``structure`` and ``extra`` are not kept
(a ``.npy`` file has no room for them: use ``.npz`` to keep them).

**.npz** (:data:`NPZ`) is a zip of ``<name>.npy`` members, each validated as above from its header
alone, with sizes checked against the member's declared size. The zip itself is checked first:
only STORED and DEFLATED members (those NumPy writes), no encryption, each member's bytes inside
the file and overlapping no other member, and no DEFLATED member declaring more than
``_MAX_RATIO`` times its compressed size (DEFLATE cannot exceed about 1032:1; larger claims are
zip bombs). A STORED member loads as a read-only memory map of its bytes inside the zip (zero
copy; its CRC is not checked, as that would read everything); a DEFLATED member is decompressed in
chunks into one array of exactly the declared size, and its CRC is checked. Writing is streamed,
one entry at a time, as STORED members, so the file reads back memory-mapped (``np.savez``
does the same; compress it yourself if size matters more than mapping), with fixed timestamps so
equal inputs give equal files, and each member's data aligned to 64 bytes in the file by padding in
its zip extra field (ID 0xD935, as Android's zipalign). Array names must be usable zip member
names: non-empty, valid Unicode, no NUL or backslash, not starting with ``/``, no empty, ``.``
or ``..`` part between slashes (such names are refused, never changed). The nesting record
(``structure.py``) is kept as the JSON member ``__tensorbridge__.json``, written only when it
says more than the flat names do; ``np.load`` lists it as a key whose value is its bytes.
``extra`` has no place in a ``.npz`` and is not kept. A member that is neither a ``.npy`` array
nor the record raises :class:`UnsupportedError` (it would be lost in silence otherwise).

**bfloat16 and float8** (every ``ml_dtypes`` row of ``tensorbridge.ROWS``): ``np.save`` writes them
as raw bytes (``|V2``, ``|V1``) that load as void, the dtype lost. Here they are stored as a
one-field structured dtype named after the type, holding the bits as the unsigned integer of the
same size, e.g. ``[('bfloat16', '<u2')]``. Plain NumPy loads that as a structured uint array; the
values are ``a["bfloat16"].view(ml_dtypes.bfloat16)``. tensorbridge reads a lone field named after
such a row with an integer of that size as the ``ml_dtypes`` array itself (a view; a byteswapped
copy for a big-endian carrier, which ``ml_dtypes`` cannot represent), so a user's own structured
array of exactly that shape reads as the type too. Other ``ml_dtypes`` types (int4, float4...)
are refused on writing. Every other dtype without Python objects is stored natively.
"""

from __future__ import annotations

import io
import itertools
import os
import struct
import sys
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import IO, Any, Final, Literal

import numpy as np

from ..dtypes import ROWS, is_ml_dtype, row_for_numpy
from ..errors import ConversionError, StructureError, UnsupportedError
from . import structure as _structure
from .base import MAX_HEADER_BYTES, Archive, Entry, bad_file, check_size

__all__ = ["NPY", "NPZ", "RECORD_MEMBER", "NpyFormat", "NpzFormat"]

#: The member of an .npz file that holds the nesting record (JSON, ``structure.dumps``).
RECORD_MEMBER: Final = "__tensorbridge__.json"
# np.load parses at most this many header characters unless allow_pickle=True; so do we.
_MAX_HEADER_TEXT: Final = 10_000
# DEFLATE tops out near 1032:1 (an all-zero float64 array reaches 1028:1); more is a lie.
_MAX_RATIO: Final = 1100
_MAX_DIMS: Final = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32
_CHUNK: Final = 1 << 20  # bytes decompressed at a time
_ALIGN: Final = 64
_ZIPALIGN_ID: Final = 0xD935
_LOCAL_MAGIC: Final = b"PK\x03\x04"
_LOCAL_HEADER: Final = 30  # bytes of a zip local file header before its name and extra field
_ZIP64_EXTRA: Final = 20  # the local zip64 extra field zipfile writes with force_zip64
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
_ZIP_ERRORS: Final = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    struct.error,
    NotImplementedError,
    RuntimeError,
    OverflowError,
)
_FIX_ZIP: Final = "Check that the file is complete, or save it again with np.savez"


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
            >>> from tensorbridge.io.base import Entry
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


class NpzFormat:
    """NumPy's ``.npz`` format: a zip of ``.npy`` members, memory-mapped where stored uncompressed."""

    name: str = "npz"
    suffixes: tuple[str, ...] = (".npz",)

    def read(self, path: str) -> Archive:
        """Read and validate the zip directory and every member's ``.npy`` header; load no data.

        Args:
            path: the file.

        Returns:
            One entry per ``.npy`` member (``.npy`` stripped from its name), in file order; the
            nesting record tensorbridge wrote, or None.

        Raises:
            FileFormatError: (ValueError) the zip or a member is malformed, truncated, overlaps
                another member or claims more data than it holds (a zip bomb).
            UnsupportedError: (TypeError) a member is encrypted, compressed other than by DEFLATE,
                holds Python objects, or is not an array.

        Example:
            >>> import os, tempfile, numpy as np
            >>> tmp = tempfile.TemporaryDirectory()
            >>> path = os.path.join(tmp.name, "a.npz")
            >>> np.savez_compressed(path, w=np.ones((2, 2), np.float32), n=np.array(7))
            >>> archive = NPZ.read(path)
            >>> [(e.name, e.dtype, e.shape) for e in archive.entries], archive.structure
            ([('w', dtype('float32'), (2, 2)), ('n', dtype('int64'), ())], None)
            >>> archive.entries[0].load().tolist()
            [[1.0, 1.0], [1.0, 1.0]]
            >>> tmp.cleanup()
        """
        path = os.fspath(path)
        entries: list[Entry] = []
        record: Any = None
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            try:
                with zipfile.ZipFile(f) as zf:
                    for info, start in _members(path, f, zf.infolist(), size):
                        if info.filename == RECORD_MEMBER:
                            record = _read_record(path, zf, info)
                            continue
                        with zf.open(info) as member:
                            header = _read_header(member, info.file_size, path, f"member {info.filename!r}")
                        if info.compress_type == zipfile.ZIP_STORED:
                            load = partial(_map, path, start + header.size, header, size)
                        else:
                            load = partial(_inflate, path, info, header, size)
                        entries.append(Entry(info.filename[:-4], header.loads_as, header.shape, load))
            except ConversionError:
                raise
            except _ZIP_ERRORS as err:
                raise bad_file(path, f"it is not a valid zip archive ({_short(err)})", _FIX_ZIP) from err
        return Archive(entries, record)

    def write(self, path: str, entries: Sequence[Entry], structure: Any, extra: dict[str, str]) -> None:
        """Write the entries to a new ``.npz`` file at ``path``, one STORED member at a time.

        Everything that could be refused (names, dtypes) is checked before the file is created.

        Args:
            path: the file to create (the caller renames it into place).
            entries: the arrays; names must be unique zip member names (see the module docs).
            structure: the nesting record, kept as ``__tensorbridge__.json`` unless None or flat.
            extra: ignored (a ``.npz`` has no place for it).

        Raises:
            UnsupportedError: (TypeError) a name that is no zip member name or appears twice, or a
                dtype a ``.npy`` cannot hold without pickling.
            StructureError: (ValueError) an entry loads with another dtype or shape than it declared.

        Example:
            >>> import os, tempfile, numpy as np
            >>> from tensorbridge.io.base import Entry
            >>> tmp = tempfile.TemporaryDirectory()
            >>> path = os.path.join(tmp.name, "m.npz")
            >>> w, b = np.eye(2), np.zeros(2, np.float32)
            >>> rec = {"dict": [["layer", {"list": [{"t": "layer.0"}, {"t": "layer.1"}]}], ["step", {"v": 3}]]}
            >>> entries = [Entry(n, a.dtype, a.shape, lambda a=a: a) for n, a in [("layer.0", w), ("layer.1", b)]]
            >>> NPZ.write(path, entries, rec, {})
            >>> with np.load(path) as npz:  # plain NumPy reads it too
            ...     sorted(npz.files)
            ['__tensorbridge__.json', 'layer.0', 'layer.1']
            >>> NPZ.read(path).structure == rec
            True
            >>> tmp.cleanup()
        """
        path = os.fspath(path)
        names: set[str] = set()
        for e in entries:
            _check_member_name(path, e.name, names)
            _stored_dtype(path, e.name, e.dtype)
        flat = {"dict": [[e.name, {"t": e.name}] for e in entries]}
        record = None if structure is None or structure == flat else _structure.dumps(structure).encode()
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for e in entries:
                data = _prepared(path, e)
                with zf.open(_member_info(zf, e.name + ".npy"), "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, data, allow_pickle=False)
                del data  # one entry's data in memory at a time
            if record is not None:
                zf.writestr(_member_info(zf, RECORD_MEMBER, aligned=False), record)


NPY: Final = NpyFormat()
NPZ: Final = NpzFormat()


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


# ----------------------------------------------------------------------------------- zip members


def _members(path: str, f: IO[bytes], infos: list[zipfile.ZipInfo], size: int) -> list[tuple[zipfile.ZipInfo, int]]:
    """Each member with the offset of its bytes in the file, after the zip-level checks."""
    out: list[tuple[zipfile.ZipInfo, int]] = []
    seen: set[str] = set()
    spans: list[tuple[int, int, str]] = []
    for info in infos:
        name = info.filename
        if name in seen:
            raise bad_file(path, f"member {name!r} appears twice in the zip directory", _FIX_ZIP)
        seen.add(name)
        if name != RECORD_MEMBER and not name.endswith(".npy"):
            raise UnsupportedError(
                "reading",
                path,
                f"member {name!r} is not a .npy array, and tensorbridge reads only arrays",
                "Remove it from the archive (or read it with zipfile)",
            )
        if info.flag_bits & 0x1:
            raise UnsupportedError("reading", path, f"member {name!r} is encrypted", "Save it again unencrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise UnsupportedError(
                "reading",
                path,
                f"member {name!r} is compressed with zip method {info.compress_type}; NumPy writes only "
                "stored (0) and DEFLATE (8) members",
                "Save it again with np.savez or np.savez_compressed",
            )
        f.seek(info.header_offset)
        local = f.read(_LOCAL_HEADER)
        if len(local) < _LOCAL_HEADER or local[:4] != _LOCAL_MAGIC:
            raise bad_file(path, f"member {name!r} has no local header at byte {info.header_offset}", _FIX_ZIP)
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        start = info.header_offset + _LOCAL_HEADER + name_length + extra_length
        check_size(path, info.compress_size, max(size - start, 0), f"member {name!r}")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise bad_file(path, f"stored member {name!r} claims {info.file_size} bytes in {info.compress_size}")
        if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > _MAX_RATIO * max(info.compress_size, 1):
            raise bad_file(
                path,
                f"member {name!r} claims {info.file_size} bytes from {info.compress_size} compressed, more than "
                f"the {_MAX_RATIO}:1 DEFLATE can reach (a zip bomb?)",
                "Do not use this file",
            )
        spans.append((info.header_offset, start + info.compress_size, name))
        out.append((info, start))
    spans.sort()
    for (_, end, before), (begin, _, after) in itertools.pairwise(spans):
        if begin < end:  # shared bytes multiply what a small file can claim (a zip bomb)
            raise bad_file(path, f"members {before!r} and {after!r} overlap", "Do not use this file")
    return out


def _read_record(path: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Any:
    if info.file_size > MAX_HEADER_BYTES:
        raise bad_file(path, f"the nesting record claims {info.file_size} bytes, over {MAX_HEADER_BYTES}")
    with zf.open(info) as member:
        raw = _read_exact(member, info.file_size + 1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise bad_file(path, f"the nesting record is not UTF-8 ({err.reason})") from err
    return _structure.loads(text, where=path)


def _inflate(path: str, info: zipfile.ZipInfo, header: _Header, size: int) -> np.ndarray[Any, Any]:
    """A DEFLATED member's data, decompressed in chunks into one new array of exactly its size."""
    now = os.stat(path).st_size
    if now != size:
        raise bad_file(path, f"the file is now {now} bytes, not the {size} it held when read")
    raw = np.empty(header.nbytes, np.uint8)
    try:
        with zipfile.ZipFile(path) as zf, zf.open(info) as member:
            _read_exact(member, header.size)
            at = 0
            while at < header.nbytes:
                chunk = member.read(min(_CHUNK, header.nbytes - at))
                if not chunk:
                    raise bad_file(path, f"member {info.filename!r} ends after {at} of {header.nbytes} data bytes")
                raw[at : at + len(chunk)] = np.frombuffer(chunk, np.uint8)
                at += len(chunk)
            while member.read(_CHUNK):  # to the end, so zipfile checks the CRC
                pass
    except ConversionError:
        raise
    except _ZIP_ERRORS as err:
        raise bad_file(path, f"member {info.filename!r} cannot be decompressed ({_short(err)})", _FIX_ZIP) from err
    data = raw.view(header.mapped).reshape(header.shape, order="F" if header.fortran else "C")
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
    data = entry.load()
    if (
        not isinstance(data, np.ndarray)
        or data.shape != entry.shape
        or not (data.dtype == entry.dtype or row_for_numpy(data.dtype) is row_for_numpy(entry.dtype) is not None)
    ):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise StructureError(
            "writing",
            path,
            f"array {entry.name!r} was declared {entry.dtype} {entry.shape} but loaded as {got}",
            "Make the entry's dtype and shape match its data",
        )
    stored = _stored_dtype(path, entry.name, data.dtype)
    return data if stored == data.dtype else data.view(stored)


def _check_member_name(path: str, name: str, seen: set[str]) -> None:
    why = None
    if not isinstance(name, str):
        why = "is not a str"
    elif name in seen:
        why = "appears twice"
    elif "\0" in name or "\\" in name or name.startswith("/") or {"", ".", ".."} & set(name.split("/")):
        # zipfile cuts a name at NUL and turns backslashes into slashes on Windows; the others
        # are unsafe or ambiguous paths for unzip.
        why = "cannot be a zip member name (empty, NUL, backslash, leading slash, or an empty, '.' or '..' part)"
    else:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            why = "is not valid Unicode"
    if why is not None:
        raise UnsupportedError("writing", path, f"the array name {name!r} {why}", "Rename the array")
    seen.add(name)


def _member_info(zf: zipfile.ZipFile, name: str, *, aligned: bool = True) -> zipfile.ZipInfo:
    """A STORED member with a fixed timestamp, padded so that its .npy data starts 64-aligned."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    if aligned and zf.fp is not None:
        # The local header is written at the current position; np.lib.format pads the .npy
        # header itself to a multiple of 64, so aligning the member's first byte suffices.
        fixed = zf.fp.tell() + _LOCAL_HEADER + len(name.encode("utf-8")) + _ZIP64_EXTRA + 6
        pad = -fixed % _ALIGN
        info.extra = struct.pack("<HHH", _ZIPALIGN_ID, 2 + pad, _ALIGN) + bytes(pad)
    return info


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 160 else text[:157] + "..."
