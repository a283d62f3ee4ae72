"""safetensors files, read and written without the ``safetensors`` package.

Layout: 8 bytes (little-endian u64 ``N``), ``N`` bytes of UTF-8 JSON
``{name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {str: str}}``,
then the data buffer; offsets count from the start of the buffer, the tensors tile it exactly (no
gap, no overlap, nothing after the last one), data is little-endian and in C order.

Reading follows the reference implementation's rules (huggingface/safetensors ``tensor.rs``) and
checks everything before any data is touched, in layers that each bound what the next may spend
(``safetensors_header.py``: the header length, a count of its JSON values before parsing, strict
JSON, the number of tensors, each tensor's name, keys, dtype, shape and offsets, and the tiling of
the data buffer). A nesting record is then bounded by the names present and checked against them
(``structure.validate``). :meth:`Entry.load` memory-maps the tensor read-only; nothing is copied.

Dtypes: every code the reference knows is validated. Those with a tensorbridge row load as it
(BF16 and F8_* as ``ml_dtypes``); ``C64`` (complex64, safetensors >= 0.7), ``F8_E4M3FNUZ``,
``F8_E5M2FNUZ`` and ``F8_E8M0`` are written with their own codes, as ``safetensors.torch`` writes
them, so older safetensors versions refuse such files. The packed sub-byte codes ``F4``,
``F6_E2M3`` and ``F6_E3M2`` have no NumPy dtype and raise :class:`UnsupportedError` on reading.

Dtypes without a safetensors code (complex128) are written as ``U8`` with one extra trailing
dimension of the item size, holding each element's little-endian bytes, and the metadata key
``tensorbridge.dtypes`` records the real dtype (JSON ``{name: "complex128"}``). tensorbridge
reads them back as the real dtype; other readers see uint8 arrays of shape ``(*shape, 16)``, which
``a.view("<c16")[..., 0]`` turns back into the values. The nesting record (``structure.py``) is
kept under ``tensorbridge.structure``; all other metadata travels as :attr:`Archive.extra`.

Writing keeps the caller's entry order in the header, but lays the data out by decreasing item
size (a stable sort, as the reference sorts by alignment), so every tensor is aligned for its
dtype in a memory map. Headers stay within the reference's 100_000_000-byte limit.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Sequence
from functools import partial
from typing import IO, Any, Final

import numpy as np

from ..dtypes import DtypeRow, row_for_numpy
from ..errors import StructureError, UnsupportedError
from ..ops.blocks import blocks
from . import structure as _structure
from .base import Archive, Entry, bad_file, load_for_writing
from .safetensors_header import (
    CODES,
    DTYPES_KEY,
    EXACT_ROWS,
    MAX_HEADER_BYTES,
    METADATA,
    STRUCTURE_KEY,
    Info,
    carried_dtypes,
    read_header,
    short,
)

__all__ = ["DTYPES_KEY", "SAFETENSORS", "STRUCTURE_KEY", "SafetensorsFormat"]

_METADATA: Final = METADATA
# Bytes of a non-contiguous or big-endian tensor converted at a time while writing.
_CHUNK_BYTES = 16 << 20

_MAX_DIMS: Final = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32
_CODES: Final = CODES
_EXACT_ROWS: Final = EXACT_ROWS
_ROW_BY_CODE: Final = {code: _EXACT_ROWS[n] for code, (_, n) in _CODES.items() if n in _EXACT_ROWS}
_CODE_BY_ROW: Final = {row.name: code for code, row in _ROW_BY_CODE.items()}


class SafetensorsFormat:
    """The safetensors format (``.safetensors``): lazy, memory-mapped reads; streaming writes."""

    name: str = "safetensors"
    suffixes: tuple[str, ...] = (".safetensors",)
    keeps_metadata: bool = True

    def read(self, path: str) -> Archive:
        """Read and validate the header of ``path``; load no data.

        Args:
            path: the file.

        Returns:
            The entries in the header's order, each loading as a read-only memory map; the nesting
            record tensorbridge wrote, if any; the rest of ``__metadata__`` as ``extra``.

        Raises:
            FileFormatError: (ValueError) the file is malformed, truncated or hostile.
            UnsupportedError: (TypeError) a tensor has a dtype NumPy cannot hold (F4, F6_*).

        Example:
            >>> import os, tempfile, numpy as np
            >>> from tensorbridge.files.base import Entry
            >>> tmp = tempfile.TemporaryDirectory()
            >>> path = os.path.join(tmp.name, "w.safetensors")
            >>> w = np.arange(6, dtype=np.float32).reshape(2, 3)
            >>> SAFETENSORS.write(path, [Entry("w", w.dtype, w.shape, lambda: w)], None, {"k": "v"})
            >>> archive = SAFETENSORS.read(path)
            >>> [(e.name, e.dtype, e.shape) for e in archive.entries], archive.extra
            ([('w', dtype('float32'), (2, 3))], {'k': 'v'})
            >>> archive.entries[0].load().tolist()
            [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
            >>> tmp.cleanup()
        """
        path = os.fspath(path)
        n, size, infos, metadata = read_header(path)
        carried = carried_dtypes(path, metadata.pop(DTYPES_KEY, None), infos)
        record = metadata.pop(STRUCTURE_KEY, None)
        names = [info.name for info in infos]
        nesting = None
        if record is not None:
            nesting = _structure.loads(record, where=path, names=names)
            _structure.validate(nesting, names, where=path)
        entries = [_entry(path, info, carried.get(info.name), 8 + n, size) for info in infos]
        return Archive(entries, nesting, metadata)

    def write(self, path: str, entries: Sequence[Entry], structure: Any, extra: dict[str, str]) -> None:
        """Write ``entries`` to a new file at ``path``, one entry's data at a time.

        Everything that could be refused is checked before the file is created. Data is written
        little-endian in C order; a big-endian or non-contiguous array is converted
        ``_CHUNK_BYTES`` at a time, so peak memory is one loaded entry plus two chunks.

        Args:
            path: the file to create (the caller renames it into place).
            entries: the arrays; names must be unique.
            structure: the nesting record to keep in the metadata, or None.
            extra: ``__metadata__`` to carry, str -> str.

        Raises:
            UnsupportedError: (TypeError) a dtype tensorbridge has no row for, a name or metadata
                that is not a str (or is reserved), a header over the size limit.
            StructureError: (ValueError) an entry loads with another dtype or shape than it declared.

        Example:
            >>> import os, tempfile, numpy as np
            >>> from tensorbridge.files.base import Entry
            >>> tmp = tempfile.TemporaryDirectory()
            >>> path = os.path.join(tmp.name, "z.safetensors")
            >>> z = np.array([1 + 2j], dtype=np.complex128)  # no safetensors code: stored as U8
            >>> SAFETENSORS.write(path, [Entry("z", z.dtype, z.shape, lambda: z)], None, {})
            >>> SAFETENSORS.read(path).entries[0].load().tolist()
            [(1+2j)]
            >>> tmp.cleanup()
        """
        path = os.fspath(path)
        head, layout = _plan(path, entries, structure, extra)
        with open(path, "wb") as f:
            f.write(head)
            for entry in layout:
                _write_array(f, load_for_writing(path, entry))


SAFETENSORS: Final = SafetensorsFormat()


# ----------------------------------------------------------------------------------- reading


def _entry(path: str, info: Info, carried: DtypeRow | None, start: int, size: int) -> Entry:
    shape = info.shape if carried is None else info.shape[:-1]
    row = carried or _ROW_BY_CODE.get(info.code)
    if row is None:
        raise UnsupportedError(
            "reading",
            path,
            f"tensor {info.name!r} has dtype {info.code}, which neither NumPy nor this installation's "
            "ml_dtypes can hold",
            "Load it with safetensors.torch and cast it to a dtype such as bfloat16 first",
        )
    if len(shape) > _MAX_DIMS:
        raise UnsupportedError(
            "reading",
            path,
            f"tensor {short(info.name)} has {len(shape)} dimensions; NumPy holds at most {_MAX_DIMS}",
            "Reshape it to fewer dimensions where it was written",
        )
    load = partial(_load, path, start + info.begin, row.numpy, shape, size)
    return Entry(info.name, row.numpy, shape, load)


def _load(path: str, offset: int, dtype: np.dtype[Any], shape: tuple[int, ...], size: int) -> np.ndarray[Any, Any]:
    """One tensor as a read-only memory map (zero-size tensors: an empty read-only array)."""
    if 0 in shape:
        empty = np.empty(shape, dtype)
        empty.flags.writeable = False
        return empty
    if os.stat(path).st_size != size:
        raise bad_file(path, f"the file is now {os.stat(path).st_size} bytes, not the {size} it held when read")
    data: np.ndarray[Any, Any] = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    if sys.byteorder == "big" and dtype.itemsize > 1:  # pragma: no cover - little-endian hosts only here
        data = data.byteswap()
        data.flags.writeable = False
    return data


# ----------------------------------------------------------------------------------- writing


def _plan(path: str, entries: Sequence[Entry], structure: Any, extra: dict[str, str]) -> tuple[bytes, list[Entry]]:
    """The file's first 8 + N bytes, and the entries in data order; refuses before anything is written."""
    names: set[str] = set()
    carried: dict[str, str] = {}
    described: dict[str, tuple[str, list[int]]] = {}
    for e in entries:
        _writable_text(path, e.name, "the tensor name")
        if e.name == _METADATA or e.name in names:
            why = "is reserved for metadata" if e.name == _METADATA else "appears twice"
            raise UnsupportedError("writing", path, f"the tensor name {e.name!r} {why}", "Rename the tensor")
        names.add(e.name)
        row = row_for_numpy(e.dtype)
        if row is None or not row.exact:
            raise UnsupportedError(
                "writing", path, f"tensor {e.name!r} has dtype {e.dtype}, which tensorbridge does not convert",
                "Cast it to a numeric dtype first",
            )  # fmt: skip
        code = _CODE_BY_ROW.get(row.name)
        shape = [int(d) for d in e.shape]
        if any(d < 0 for d in shape):
            raise StructureError("writing", path, f"tensor {e.name!r} has shape {e.shape}", "Fix the entry's shape")
        if code is None:  # no safetensors code: the bytes, with the real dtype in the metadata
            code, shape = "U8", [*shape, row.numpy.itemsize]
            carried[e.name] = row.name
        described[e.name] = (code, shape)
    record = _structure.writable(path, [e.name for e in entries], structure)
    metadata: dict[str, str] = {}
    for k, v in extra.items():
        _writable_text(path, k, "the metadata key")
        _writable_text(path, v, f"the metadata value of {k!r}")
        if k in (STRUCTURE_KEY, DTYPES_KEY):
            raise UnsupportedError("writing", path, f"the metadata key {k!r} is tensorbridge's own", "Rename it")
        metadata[k] = v
    if record is not None:
        metadata[STRUCTURE_KEY] = record
    if carried:
        metadata[DTYPES_KEY] = json.dumps(carried, separators=(",", ":"), ensure_ascii=False)

    # Largest items first (stable): every offset is then a multiple of its item size, and the
    # buffer starts 8-aligned, so each tensor is aligned in a memory map.
    layout = sorted(entries, key=lambda e: -e.dtype.itemsize)
    offsets: dict[str, list[int]] = {}
    at = 0
    for e in layout:
        offsets[e.name] = [at, at + e.nbytes]
        at += e.nbytes
    header: dict[str, Any] = {_METADATA: metadata} if metadata else {}
    for e in entries:
        code, shape = described[e.name]
        header[e.name] = {"dtype": code, "shape": shape, "data_offsets": offsets[e.name]}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the reference pads with spaces to a multiple of 8
    limit = MAX_HEADER_BYTES
    if len(text) > limit:
        raise UnsupportedError(
            "writing",
            path,
            f"the header would be {len(text)} bytes, over the {limit} that safetensors readers accept",
            "Split the tensors over several files",
        )
    return struct.pack("<Q", len(text)) + text, layout


def _writable_text(path: str, text: object, what: str) -> None:
    if not isinstance(text, str):
        raise UnsupportedError("writing", path, f"{what} {short(text)} is not a str", "Use str names and metadata")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise UnsupportedError("writing", path, f"{what} {text!r} is not valid Unicode", "Rename it") from err


def _swapped(dtype: np.dtype[Any]) -> bool:
    """Whether the array's bytes are big-endian."""
    order = dtype.byteorder
    return dtype.itemsize > 1 and (order == ">" or (order == "=" and sys.byteorder == "big"))


def _write_array(f: IO[bytes], data: np.ndarray[Any, Any]) -> None:
    if data.size == 0:
        return
    if data.flags.c_contiguous and not _swapped(data.dtype):
        f.write(data.reshape(-1).view(np.uint8).data)  # zero-copy
        return
    for block in blocks(data, _CHUNK_BYTES):
        buf = np.array(block, order="C")  # a copy of at most one chunk
        if _swapped(buf.dtype):
            buf.byteswap(inplace=True)  # the copy's bytes become little-endian
        f.write(buf.reshape(-1).view(np.uint8).data)
