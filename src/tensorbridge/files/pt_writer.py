"""Writing torch.save files one storage at a time, without torch.save.

``torch.save`` needs every tensor at once and builds the whole zip in its writer, so writing a
model through it held the model in memory (an 87 MB model peaked at 1.28 GB). This writer streams:
each entry is loaded, written as one storage record in bounded pieces (``chunks.py``) and dropped;
the pickle, which names the storages but holds no data, is written last. Peak memory is one
entry (a memory map, for mapped sources) plus one piece.

**The layout is torch.save's** (torch 2.x, checked against it byte for byte in the tests):

* a zip archive of stored (never compressed) records under the folder ``archive/``;
* ``archive/data/<key>``: each storage's bytes, keys ``0, 1, ...``; every record's data starts
  at a multiple of 64 bytes (padding in a ``FB`` extra field, as torch's miniz writer pads), and
  a data descriptor follows it (none after an empty record), so torch's
  ``calculate_storage_offsets`` finds the storages too;
* ``archive/data.pkl``: pickle protocol 2 of the containers, each tensor
  ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`` with
  the persistent id ``('storage', torch.FloatStorage, key, 'cpu', numel)`` (dtypes without a
  legacy storage class, such as float8 and uint16: ``_rebuild_tensor_v3`` with
  ``torch.storage.UntypedStorage``, the byte count and the dtype, as torch writes them);
* ``archive/.format_version`` (``1``), ``archive/.storage_alignment`` (``64``),
  ``archive/byteorder`` (``little`` on little-endian machines), ``archive/version`` (``3``) and
  ``archive/.data/serialization_id`` (40 digits: a hash of the record names, then one of the
  records' CRC-32s, as torch composes it, though not with torch's hash functions);
* zip64 fields where a record or an offset passes 4 GiB, or the archive holds over 65,534 records.

Only the order differs: the storage records come first and the pickle after them, since a
storage's strides are known only once its entry is loaded. ``torch.load`` reads records by name,
with ``weights_only=True`` and with ``mmap=True``.

Storages are written as the entry's memory lies where that memory is dense (C order, Fortran
order, any permutation of the axes), keeping its strides as torch.save does; other views
(negative or zero strides, gaps) are written compactly in C order. Entries whose arrays are the
same view of the same live memory (tied weights read from a .pt) become one tensor, stored once.
Entries are written in the order the nesting record names them, so that the pickle meets the
storages in key order.
"""

from __future__ import annotations

import hashlib
import struct
import sys
import zlib
from collections.abc import Iterable, Sequence
from typing import IO, Any, Final

import numpy as np
import torch

from ..errors import FileFormatError, StructureError
from .base import Entry, load_for_writing
from .chunks import pieces
from .pickle_scan import MAX_DEPTH
from .pt_pickle import _layout, _pickled, _Storage, _storage_kind, _Tensor, _Ties, _torch_dtype
from .structure import unflatten

__all__ = ["write"]

_FOLDER: Final = "archive"
_ALIGN: Final = 64
_U16: Final = 0xFFFF
_U32: Final = 0xFFFFFFFF
#: Records and offsets from this size on get zip64 fields (a module constant so tests can lower it).
ZIP64_FROM: int = _U32
_UTF8_AND_DESCRIPTOR: Final = 0x0808  # general-purpose flags: UTF-8 names, a data descriptor follows
_UTF8: Final = 0x0800
_LOCAL: Final = struct.Struct("<IHHHHHIIIHH")
_CENTRAL: Final = struct.Struct("<IHHHHHHIIIHHHHHII")
_PT_VERSION: Final = b"3\n"  # torch's kProducedFileFormatVersion


def write(path: str, entries: Sequence[Entry], structure: Any) -> None:
    """Write the entries as a torch.save file, nested as ``structure`` says (None: a flat dict).

    Raises:
        StructureError: (ValueError) two entries share a name, entries the record does not name,
            or an entry that loads as another dtype or shape than it said.
        FileFormatError: (ValueError) the nesting record is malformed or names a missing entry.
        UnsupportedError: (TypeError) an entry's dtype torch cannot hold.
        OSError: the file cannot be written.

    Example:
        >>> import os, tempfile, numpy as np, torch
        >>> w = np.arange(6, dtype=np.float32).reshape(2, 3)
        >>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
        >>> write(path, [Entry("w", w.dtype, w.shape, lambda: w)], None)
        >>> torch.load(path, weights_only=True, mmap=True)["w"].tolist()
        [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    """
    ordered = _in_record_order(entries, structure, path)
    for e in ordered:
        _torch_dtype(e.dtype, e.name, path)  # refuse before anything is written
    with open(path, "wb") as f:
        out = _ZipWriter(f, path)
        tensors: dict[str, _Tensor] = {}
        ties = _Ties()
        for e in ordered:
            arr = load_for_writing(path, e)
            tensor = ties.find(arr)
            if tensor is None:
                tensor = _write_storage(out, arr, _torch_dtype(arr.dtype, e.name, path))
                ties.add(arr, tensor)
            tensors[e.name] = tensor
            del arr  # the entry's memory goes before the next one is loaded
        obj: Any = dict(tensors) if structure is None else unflatten(structure, tensors, where=path)
        buffer = _pickled(obj)
        out.record("data.pkl", len(buffer), [buffer])
        for name, data in (
            (".format_version", b"1"),
            (".storage_alignment", str(_ALIGN).encode()),
            ("byteorder", sys.byteorder.encode()),
            ("version", _PT_VERSION),
        ):
            out.record(name, len(data), [data])
        out.finish()


def _in_record_order(entries: Sequence[Entry], structure: Any, path: str) -> list[Entry]:
    """The entries in the order the record names them, after checking that it names each exactly once."""
    by_name: dict[str, Entry] = {}
    for e in entries:
        if e.name in by_name:
            raise StructureError("writing", path, f"two entries are named {e.name!r}", "Give every entry its own name")
        by_name[e.name] = e
    if structure is None:
        return list(entries)
    named: list[str] = []
    stack: list[tuple[Any, int]] = [(structure, 0)]
    while stack:  # iteratively and in order, so that a deep record cannot overflow anything
        rec, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FileFormatError(
                "writing", path, f"the nesting record is deeper than {MAX_DEPTH} levels", "Write a flat dict instead"
            )
        if not isinstance(rec, dict) or len(rec) != 1:
            continue  # unflatten names the malformed part
        ((kind, body),) = rec.items()
        if kind == "t" and isinstance(body, str):
            if body not in by_name:
                raise FileFormatError(
                    "writing",
                    path,
                    f"the nesting record names array {body!r}, which is not among the entries",
                    "Pass structure=None for a flat dict, or the record flatten() gives",
                )
            named.append(body)
        elif kind in ("dict", "odict") and isinstance(body, list):
            pairs = [p for p in body if isinstance(p, list) and len(p) == 2]
            stack.extend((pair[1], depth + 1) for pair in reversed(pairs))
        elif kind in ("list", "tuple") and isinstance(body, list):
            stack.extend((r, depth + 1) for r in reversed(body))
    unnamed = [name for name in by_name if name not in set(named)]
    if unnamed:
        raise StructureError(
            "writing",
            path,
            f"{len(unnamed)} entries ({', '.join(map(repr, unnamed[:3]))}) are not in the nesting record",
            "Pass structure=None for a flat dict, or a record that names every entry",
        )
    return [by_name[name] for name in dict.fromkeys(named)]


def _write_storage(out: _ZipWriter, arr: np.ndarray[Any, Any], dtype: torch.dtype) -> _Tensor:
    rebuild, storage_class, numel_is_bytes = _storage_kind(dtype)
    data, strides = _layout(arr)
    key = out.next_key()
    out.record(f"data/{key}", data.nbytes, pieces(data))
    numel = data.nbytes if numel_is_bytes else data.size
    storage = _Storage(("storage", storage_class, key, "cpu", numel))
    extra = (dtype,) if numel_is_bytes else ()
    return _Tensor(rebuild, (storage, 0, tuple(arr.shape), strides, *extra))


class _ZipWriter:
    """A zip archive of stored records, laid out as torch's miniz writer lays them out."""

    def __init__(self, f: IO[bytes], path: str) -> None:
        self._f, self._path = f, path
        self._at = 0
        self._central: list[bytes] = []
        self._names: list[bytes] = []
        self._crc = 0  # over the records' CRC-32s, for the serialization id
        self._keys = 0

    def next_key(self) -> str:
        key, self._keys = str(self._keys), self._keys + 1
        return key

    def _write(self, data: Any) -> None:
        self._f.write(data)
        self._at += memoryview(data).nbytes

    def record(self, name: str, size: int, data: Iterable[Any]) -> None:
        """Write one record of ``size`` bytes, given in pieces."""
        full = f"{_FOLDER}/{name}".encode()
        header_at = self._at
        big_size, big_offset = size >= ZIP64_FROM, header_at >= ZIP64_FROM
        zip64 = b""
        if big_size or big_offset:  # miniz's local zip64 field: the sizes if large, then the offset if large
            values = ((size, size) if big_size else ()) + ((header_at,) if big_offset else ())
            zip64 = struct.pack(f"<HH{len(values)}Q", 1, 8 * len(values), *values)
        start = header_at + _LOCAL.size + len(full) + len(zip64) + 4
        pad = -start % _ALIGN
        extra = zip64 + b"FB" + struct.pack("<H", pad) + b"Z" * pad
        flags = _UTF8_AND_DESCRIPTOR if size else _UTF8
        local_size = _U32 if big_size else 0
        version = 45 if zip64 else 0
        self._write(_LOCAL.pack(0x04034B50, version, flags, 0, 0, 0, 0, local_size, local_size, len(full), len(extra)))
        self._write(full + extra)
        crc = written = 0
        for piece in data:
            crc = zlib.crc32(piece, crc)
            self._write(piece)
            written += memoryview(piece).nbytes
        if written != size:
            raise FileFormatError(
                "writing", self._path, f"record {name!r} got {written} bytes, not {size}", "Report this to tensorbridge"
            )
        if size:
            sizes = struct.pack("<QQ", size, size) if zip64 else struct.pack("<II", size, size)
            self._write(struct.pack("<II", 0x08074B50, crc) + sizes)
        self._crc = zlib.crc32(struct.pack("<I", crc), self._crc)  # not the data again: once is enough
        self._names.append(full)
        self._central.append(self._entry(full, flags, crc, size, header_at))

    @staticmethod
    def _entry(full: bytes, flags: int, crc: int, size: int, header_at: int) -> bytes:
        values: tuple[int, ...] = (size, size) if size >= ZIP64_FROM else ()
        values += (header_at,) if header_at >= ZIP64_FROM else ()
        extra = struct.pack(f"<HH{len(values)}Q", 1, 8 * len(values), *values) if values else b""
        shown_size = _U32 if size >= ZIP64_FROM else size
        shown_at = _U32 if header_at >= ZIP64_FROM else header_at
        version = 45 if values else 0
        head = _CENTRAL.pack(
            0x02014B50,
            version,
            version,
            flags,
            0,
            0,
            0,
            crc,
            shown_size,
            shown_size,
            len(full),
            len(extra),
            0,
            0,
            0,
            0,
            shown_at,
        )
        return head + full + extra

    def finish(self) -> None:
        """Write the serialization id, the central directory and its end records."""
        names = hashlib.blake2b(b"\0".join(self._names), digest_size=8).digest()
        serial = f"{int.from_bytes(names, 'little'):020d}{self._crc:020d}".encode()
        self.record(".data/serialization_id", len(serial), [serial])
        directory_at = self._at
        for entry in self._central:
            self._write(entry)
        directory_size = self._at - directory_at
        count = len(self._central)
        if count >= _U16 or directory_at >= ZIP64_FROM or directory_size >= ZIP64_FROM:
            end64_at = self._at
            self._write(
                struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, directory_size, directory_at)
            )
            self._write(struct.pack("<IIQI", 0x07064B50, 0, end64_at, 1))
            count, directory_size, directory_at = min(count, _U16), min(directory_size, _U32), min(directory_at, _U32)
        self._write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, directory_size, directory_at, 0))
