"""NumPy's ``.npz`` files: a zip of ``.npy`` members, checked before anything is allocated, data mapped lazily.

**.npz** (:data:`NPZ`) is a zip of ``<name>.npy`` members, each validated as in ``npy_files.py`` from its header
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
``extra`` (string metadata, such as safetensors' ``{"format": "pt"}``) is kept as the JSON
member ``__tensorbridge_metadata__.json``, written only when there is some, read bounded
(:data:`MAX_METADATA_BYTES`) and checked to be an object of strings. A member that is neither a
``.npy`` array nor one of the two records raises :class:`UnsupportedError` (it would be lost in
silence otherwise).

bfloat16 and float8 arrays are stored in members as ``npy_files.py`` stores them (a one-field
structured dtype, see there).
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import zipfile
import zlib
from collections.abc import Sequence
from functools import partial
from typing import IO, Any, Final

import numpy as np

from ..errors import ConversionError, UnsupportedError
from . import structure as _structure
from .base import Archive, Entry, bad_file, check_size
from .npy_files import _finish, _Header, _map, _prepared, _read_exact, _read_header, _short, _stored_dtype

__all__ = ["METADATA_MEMBER", "NPZ", "RECORD_MEMBER", "NpzFormat"]

#: The member of an .npz file that holds the nesting record (JSON, ``structure.dumps``).
RECORD_MEMBER: Final = "__tensorbridge__.json"
#: The member that holds string metadata (``Archive.extra``): one JSON object of strings.
METADATA_MEMBER: Final = "__tensorbridge_metadata__.json"
#: The most bytes the metadata member may hold: metadata is a few short strings in practice, and a
#: deflated member may claim ~1000x its size, so this bounds what a small file can make us parse.
MAX_METADATA_BYTES: Final = 1 << 20
# DEFLATE tops out near 1032:1 (an all-zero float64 array reaches 1028:1); more is a lie.
_MAX_RATIO: Final = 1100
_CHUNK: Final = 1 << 20  # bytes decompressed at a time
_ALIGN: Final = 64
_ZIPALIGN_ID: Final = 0xD935
_LOCAL_MAGIC: Final = b"PK\x03\x04"
_LOCAL_HEADER: Final = 30  # bytes of a zip local file header before its name and extra field
_ZIP64_EXTRA: Final = 20  # the local zip64 extra field zipfile writes with force_zip64
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
_FIX_RECORD: Final = (
    f"Convert it without the record (remove the {RECORD_MEMBER} member, zip -d) to read the arrays by their flat "
    "names, or convert from the source again"
)
# The zip end records (APPNOTE 4.3.16, 4.3.15, 4.3.14) and the fixed part of a directory entry.
_EOCD: Final = struct.Struct("<4s4H2LH")
_EOCD_MAGIC: Final = b"PK\x05\x06"
_ZIP64_LOCATOR: Final = struct.Struct("<4sLQL")
_ZIP64_LOCATOR_MAGIC: Final = b"PK\x06\x07"
_ZIP64_EOCD: Final = struct.Struct("<4sQ2H2L4Q")
_ZIP64_EOCD_MAGIC: Final = b"PK\x06\x06"
_CENTRAL: Final = 46  # bytes of a directory entry before its name, extra field and comment
_CENTRAL_MAGIC: Final = b"PK\x01\x02"


class NpzFormat:
    """NumPy's ``.npz`` format: a zip of ``.npy`` members, memory-mapped where stored uncompressed."""

    name: str = "npz"
    suffixes: tuple[str, ...] = (".npz",)
    keeps_metadata: bool = True

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
        metadata: dict[str, str] = {}
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            try:
                _check_directory(path, f, size)  # before zipfile builds an object per directory entry
                with zipfile.ZipFile(f) as zf:
                    record_info = metadata_info = None
                    for info, start in _members(path, f, zf.infolist(), size):
                        if info.filename == RECORD_MEMBER:
                            record_info = info
                            continue
                        if info.filename == METADATA_MEMBER:
                            metadata_info = info
                            continue
                        with zf.open(info) as member:
                            header = _read_header(member, info.file_size, path, f"member {info.filename!r}")
                        if info.compress_type == zipfile.ZIP_STORED:
                            load = partial(_map, path, start + header.size, header, size)
                        else:
                            load = partial(_inflate, path, info, header, size)
                        entries.append(Entry(info.filename[:-4], header.loads_as, header.shape, load))
                    if record_info is not None:
                        record = _read_record(path, zf, record_info, [e.name for e in entries])
                    if metadata_info is not None:
                        metadata = _read_metadata(path, zf, metadata_info)
            except ConversionError:
                raise
            except _ZIP_ERRORS as err:
                raise bad_file(path, f"it is not a valid zip archive ({_short(err)})", _FIX_ZIP) from err
        return Archive(entries, record, metadata)

    def write(self, path: str, entries: Sequence[Entry], structure: Any, extra: dict[str, str]) -> None:
        """Write the entries to a new ``.npz`` file at ``path``, one STORED member at a time.

        Everything that could be refused (names, dtypes) is checked before the file is created.

        Args:
            path: the file to create (the caller renames it into place).
            entries: the arrays; names must be unique zip member names (see the module docs).
            structure: the nesting record, kept as ``__tensorbridge__.json`` unless None or flat.
            extra: string metadata, kept as ``__tensorbridge_metadata__.json`` unless empty.

        Raises:
            UnsupportedError: (TypeError) a name that is no zip member name or appears twice, or a
                dtype a ``.npy`` cannot hold without pickling.
            StructureError: (ValueError) an entry loads with another dtype or shape than it declared.

        Example:
            >>> import os, tempfile, numpy as np
            >>> from tensorbridge.files.base import Entry
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
        text = _structure.writable(path, [e.name for e in entries], None if structure == flat else structure)
        record = None if text is None else text.encode()
        meta = _metadata_bytes(path, extra)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for e in entries:
                data = _prepared(path, e)
                with zf.open(_member_info(zf, e.name + ".npy"), "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, data, allow_pickle=False)
                del data  # one entry's data in memory at a time
            if record is not None:
                zf.writestr(_member_info(zf, RECORD_MEMBER, aligned=False), record)
            if meta is not None:
                zf.writestr(_member_info(zf, METADATA_MEMBER, aligned=False), meta)


NPZ: Final = NpzFormat()


# ----------------------------------------------------------------------------------- zip members


def _check_directory(path: str, f: IO[bytes], size: int) -> None:
    """Bound the zip directory from its end records, and count its entries, before zipfile parses it.

    zipfile builds a ``ZipInfo`` (about 700 bytes) for every entry in the directory before anything
    can look at one, so a small file listing millions of entries costs gigabytes. The end records
    are found and read as zipfile does (the last 22 bytes, else the last 64 KiB; a zip64 record
    right before its locator); then the directory must lie inside the file, declare at most
    ``MAX_ARRAYS + 1`` entries (the arrays and the record) and have room for each (46 bytes in the
    directory, a 30-byte local header before it); finally its entries are counted by their lengths
    alone, which must agree.
    """
    if size < _EOCD.size:
        raise bad_file(path, f"it is not a valid zip archive ({size} bytes, too few for its end record)", _FIX_ZIP)
    f.seek(size - _EOCD.size)
    tail = f.read(_EOCD.size)
    at = size - _EOCD.size
    if tail[:4] != _EOCD_MAGIC or tail[-2:] != b"\0\0":  # an archive comment: search as zipfile does
        start = max(size - _EOCD.size - 0xFFFF, 0)
        f.seek(start)
        found = f.read(size - start).rfind(_EOCD_MAGIC)
        if found < 0 or start + found + _EOCD.size > size:
            raise bad_file(path, "it is not a valid zip archive (no end-of-central-directory record)", _FIX_ZIP)
        at = start + found
        f.seek(at)
        tail = f.read(_EOCD.size)
    _, disk, cd_disk, _, entries, cd_size, _, _ = _EOCD.unpack(tail)
    zip64 = 0
    if at >= _ZIP64_LOCATOR.size + _ZIP64_EOCD.size:
        f.seek(at - _ZIP64_LOCATOR.size)
        if _ZIP64_LOCATOR.unpack(f.read(_ZIP64_LOCATOR.size))[0] == _ZIP64_LOCATOR_MAGIC:
            f.seek(at - _ZIP64_LOCATOR.size - _ZIP64_EOCD.size)
            record = _ZIP64_EOCD.unpack(f.read(_ZIP64_EOCD.size))
            if record[0] == _ZIP64_EOCD_MAGIC:  # else zipfile ignores the locator too
                _, _, _, _, disk, cd_disk, _, entries, cd_size, _ = record
                zip64 = _ZIP64_LOCATOR.size + _ZIP64_EOCD.size
    begin = at - zip64 - cd_size  # where zipfile reads the directory from
    if disk != 0 or cd_disk != 0:
        raise UnsupportedError("reading", path, "it is one part of a multi-disk zip", "Join the parts into one file")
    if begin < 0:
        raise bad_file(
            path,
            f"it is not a valid zip archive (its directory claims {cd_size} bytes, more than the {at} before its end)",
            _FIX_ZIP,
        )
    if entries > _structure.MAX_ARRAYS + 1:
        raise bad_file(
            path,
            f"its zip directory lists {entries} members, more than the {_structure.MAX_ARRAYS} arrays a file may hold",
            "Do not use this file, or split its arrays over several files",
        )
    if entries * _CENTRAL > cd_size or entries * _LOCAL_HEADER > begin:
        raise bad_file(
            path, f"its zip directory lists {entries} members, more than its {cd_size} bytes can hold", _FIX_ZIP
        )
    f.seek(begin)
    directory = f.read(cd_size)
    count = offset = 0
    while offset < len(directory):
        if directory[offset : offset + 4] != _CENTRAL_MAGIC or offset + _CENTRAL > len(directory):
            raise bad_file(
                path, f"it is not a valid zip archive (its directory is damaged at byte {begin + offset})", _FIX_ZIP
            )
        name, extra, comment = struct.unpack_from("<3H", directory, offset + 28)
        offset += _CENTRAL + name + extra + comment
        count += 1
        if count > entries:
            break
    if count != entries or len(directory) != cd_size:
        raise bad_file(
            path,
            f"it is not a valid zip archive (its directory holds other than the {entries} members its end lists)",
            _FIX_ZIP,
        )


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
        if name not in (RECORD_MEMBER, METADATA_MEMBER) and not name.endswith(".npy"):
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


_FIX_METADATA: Final = f"Remove the {METADATA_MEMBER} member (zip -d) to read the arrays without their metadata"


def _metadata_bytes(path: str, extra: dict[str, str]) -> bytes | None:
    """The metadata member's bytes, or None when there is no metadata; refused before writing if too large."""
    if not extra:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise UnsupportedError("writing", path, "metadata must map strings to strings", "Pass str keys and values")
    raw = json.dumps(extra, ensure_ascii=False, sort_keys=True).encode()
    if len(raw) > MAX_METADATA_BYTES:
        raise UnsupportedError(
            "writing", path, f"the metadata takes {len(raw)} bytes, more than {MAX_METADATA_BYTES}", "Keep it short"
        )
    return raw


def _read_metadata(path: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> dict[str, str]:
    """The metadata member: bounded before a byte is decompressed, then one JSON object of strings."""
    if info.file_size > MAX_METADATA_BYTES:
        raise bad_file(
            path,
            f"the metadata claims {info.file_size} bytes, more than the {MAX_METADATA_BYTES} allowed",
            _FIX_METADATA,
        )
    with zf.open(info) as member:
        raw = _read_exact(member, info.file_size + 1)
    if len(raw) != info.file_size:
        raise bad_file(path, f"the metadata holds {len(raw)} bytes, not the {info.file_size} declared", _FIX_ZIP)
    try:
        found = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise bad_file(path, f"the metadata is not JSON ({_short(err)})", _FIX_METADATA) from err
    if not isinstance(found, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in found.items()):
        raise bad_file(path, "the metadata is not one JSON object of strings", _FIX_METADATA)
    return found


def _read_record(path: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo, names: list[str]) -> Any:
    """The nesting record, bounded by the names present before a byte is decompressed, then validated."""
    max_bytes, max_values = _structure.record_budget(names)
    if info.file_size > max_bytes:
        raise bad_file(
            path,
            f"the nesting record claims {info.file_size} bytes, more than the {max_bytes} its {len(names)} arrays "
            "allow",
            _FIX_RECORD,
        )
    with zf.open(info) as member:
        # zipfile stops at the declared size; read(n + 1) bounds the memory even if it did not.
        raw = _read_exact(member, info.file_size + 1)
    if len(raw) != info.file_size:
        raise bad_file(path, f"the nesting record holds {len(raw)} bytes, not the {info.file_size} declared", _FIX_ZIP)
    values = _structure.json_values(raw)
    if values > max_values:  # counted on the bytes, before they are decoded or parsed
        raise bad_file(
            path,
            f"the nesting record holds up to {values} JSON values, more than the {max_values} allowed",
            _FIX_RECORD,
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise bad_file(path, f"the nesting record is not UTF-8 ({err.reason})", _FIX_RECORD) from err
    del raw
    record = _structure.loads(text, where=path, names=names)
    _structure.validate(record, names, where=path)
    return record


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
