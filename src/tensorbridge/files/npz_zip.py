"""The zip layer of ``.npz`` files: the directory and each member checked before zipfile trusts them.

Reading: :func:`_check_directory` bounds the zip directory from its end records before zipfile
builds an object per entry; :func:`_members` checks each member (a ``.npy`` array or one of the
two JSON members, stored or DEFLATED, unencrypted, inside the file, overlapping no other, no zip
bomb); :func:`_inflate` decompresses a DEFLATED member into one array of exactly its size.
Writing: :func:`_check_member_name` refuses names that are no safe zip member name, and
:func:`_member_info` makes STORED members whose ``.npy`` data starts 64-aligned. The rules are in
``npz_files.py``'s module docs.
"""

from __future__ import annotations

import itertools
import os
import struct
import zipfile
import zlib
from typing import IO, Any, Final

import numpy as np

from ..errors import ConversionError, UnsupportedError
from . import structure as _structure
from .base import bad_file, check_size
from .npy_files import _finish, _Header, _read_exact, _short

__all__ = ["METADATA_MEMBER", "RECORD_MEMBER"]

#: The member of an .npz file that holds the nesting record (JSON, ``structure.dumps``).
RECORD_MEMBER: Final = "__tensorbridge__.json"
#: The member that holds string metadata (``Archive.extra``): one JSON object of strings.
METADATA_MEMBER: Final = "__tensorbridge_metadata__.json"

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
# The zip end records (APPNOTE 4.3.16, 4.3.15, 4.3.14) and the fixed part of a directory entry.
_EOCD: Final = struct.Struct("<4s4H2LH")
_EOCD_MAGIC: Final = b"PK\x05\x06"
_ZIP64_LOCATOR: Final = struct.Struct("<4sLQL")
_ZIP64_LOCATOR_MAGIC: Final = b"PK\x06\x07"
_ZIP64_EOCD: Final = struct.Struct("<4sQ2H2L4Q")
_ZIP64_EOCD_MAGIC: Final = b"PK\x06\x06"
_CENTRAL: Final = 46  # bytes of a directory entry before its name, extra field and comment
_CENTRAL_MAGIC: Final = b"PK\x01\x02"


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
