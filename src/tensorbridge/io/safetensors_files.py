"""safetensors files, read and written without the ``safetensors`` package.

Layout: 8 bytes (little-endian u64 ``N``), ``N`` bytes of UTF-8 JSON
``{name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {str: str}}``,
then the data buffer; offsets count from the start of the buffer, the tensors tile it exactly (no
gap, no overlap, nothing after the last one), data is little-endian and in C order.

Reading follows the reference implementation's rules (huggingface/safetensors ``tensor.rs``) and
checks everything before any data is touched: the header length against
:data:`~tensorbridge.io.base.MAX_HEADER_BYTES` and the file size, strict JSON (no NaN, no
duplicate key anywhere), the exact key set of each tensor, shapes of non-negative ints whose
element count fits a u64, offsets that match dtype size times element count, and the tiling. It is
stricter than the reference in three ways, each refusing an ambiguity rather than guessing: a
duplicated tensor name (the reference keeps one silently), a tensor with keys besides ``dtype``,
``shape`` and ``data_offsets`` (they would be lost), and a name that is not valid Unicode.
:meth:`Entry.load` memory-maps the tensor read-only; nothing is copied.

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
from dataclasses import dataclass
from functools import partial
from typing import IO, Any, Final

import numpy as np

from .._convert.blocks import blocks
from ..dtypes import ROWS, DtypeRow, row_for_numpy
from ..errors import StructureError, UnsupportedError
from . import structure as _structure
from .base import MAX_HEADER_BYTES, Archive, Entry, bad_file, check_size

__all__ = ["SAFETENSORS", "SafetensorsFormat"]

STRUCTURE_KEY: Final = "tensorbridge.structure"
DTYPES_KEY: Final = "tensorbridge.dtypes"
_METADATA: Final = "__metadata__"
_FIELDS: Final = frozenset({"dtype", "shape", "data_offsets"})
_U64_MAX: Final = 2**64 - 1
# The reference refuses headers over 100_000_000 bytes, a little less than MAX_HEADER_BYTES.
_REFERENCE_HEADER_LIMIT: Final = 100_000_000
# Bytes of a non-contiguous or big-endian tensor converted at a time while writing.
_CHUNK_BYTES = 16 << 20
_MAX_DIMS: Final = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32

# Every code the reference knows: bits per element, and the tensorbridge dtype it loads as (None:
# no NumPy dtype holds it).
_CODES: Final[dict[str, tuple[int, str | None]]] = {
    "BOOL": (8, "bool"),
    "U8": (8, "uint8"),
    "I8": (8, "int8"),
    "U16": (16, "uint16"),
    "I16": (16, "int16"),
    "U32": (32, "uint32"),
    "I32": (32, "int32"),
    "U64": (64, "uint64"),
    "I64": (64, "int64"),
    "F16": (16, "float16"),
    "BF16": (16, "bfloat16"),
    "F32": (32, "float32"),
    "F64": (64, "float64"),
    "C64": (64, "complex64"),
    "F8_E4M3": (8, "float8_e4m3fn"),
    "F8_E5M2": (8, "float8_e5m2"),
    "F8_E4M3FNUZ": (8, "float8_e4m3fnuz"),
    "F8_E5M2FNUZ": (8, "float8_e5m2fnuz"),
    "F8_E8M0": (8, "float8_e8m0fnu"),
    "F4": (4, None),
    "F6_E2M3": (6, None),
    "F6_E3M2": (6, None),
}
_EXACT_ROWS: Final = {row.name: row for row in ROWS if row.exact}
_ROW_BY_CODE: Final = {code: _EXACT_ROWS[n] for code, (_, n) in _CODES.items() if n in _EXACT_ROWS}
_CODE_BY_ROW: Final = {row.name: code for code, row in _ROW_BY_CODE.items()}
_FIX_SOURCE: Final = "Convert from the source again, or check that the file was copied completely"


@dataclass(frozen=True)
class _Info:
    """One tensor of a header, validated."""

    name: str
    code: str
    shape: tuple[int, ...]
    begin: int
    end: int


class SafetensorsFormat:
    """The safetensors format (``.safetensors``): lazy, memory-mapped reads; streaming writes."""

    name: str = "safetensors"
    suffixes: tuple[str, ...] = (".safetensors",)

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
            >>> from tensorbridge.io.base import Entry
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
        n, size, header = _read_header(path)
        infos: list[_Info] = []
        metadata: dict[str, str] = {}
        for key, value in header.items():
            if key == _METADATA:
                metadata = _metadata(path, value)
            else:
                infos.append(_info(path, key, value))
        _check_tiling(path, infos, size - 8 - n)
        carried = _carried(path, metadata.pop(DTYPES_KEY, None), infos)
        record = metadata.pop(STRUCTURE_KEY, None)
        nesting = None if record is None else _structure.loads(record, where=path)
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
            >>> from tensorbridge.io.base import Entry
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
                data = entry.load()
                _check_loaded(path, entry, data)
                _write_array(f, data)


SAFETENSORS: Final = SafetensorsFormat()


# ----------------------------------------------------------------------------------- reading


def _read_header(path: str) -> tuple[int, int, dict[str, Any]]:
    """The header length, the file size and the parsed header (a JSON object)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise bad_file(path, f"the file holds {size} bytes, fewer than the 8 of the header length")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER_BYTES:
            raise bad_file(path, f"the header claims {n} bytes, more than the limit of {MAX_HEADER_BYTES}")
        check_size(path, n, size - 8, "the header")
        raw = f.read(n)
    if len(raw) != n:
        raise bad_file(path, f"the file shrank while its {n}-byte header was read")
    header = _strict_json(path, raw, "the header")
    if not isinstance(header, dict):
        raise bad_file(path, f"the header is a JSON {type(header).__name__}, not an object")
    return n, size, header


class _DuplicateKeyError(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:  # json.loads would keep the last silently; the reference refuses most
            raise _DuplicateKeyError(f"the key {key!r} appears twice")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _strict_json(path: str, raw: bytes | str, what: str) -> Any:
    """Parse JSON as the reference does: UTF-8, no NaN/Infinity, no duplicate keys."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except UnicodeDecodeError as err:
        raise bad_file(path, f"{what} is not UTF-8 ({err.reason} at byte {err.start})") from err
    except (ValueError, RecursionError) as err:  # JSONDecodeError, duplicates, NaN, huge ints
        raise bad_file(path, f"{what} is not valid JSON ({err})") from err


def _check_text(path: str, text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate escape such as "\ud800"
        raise bad_file(path, f"{what} {text!r} is not valid Unicode") from err


def _is_u64(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= _U64_MAX


def _info(path: str, name: str, value: object) -> _Info:
    """Validate one tensor's header entry on its own (the tiling is checked afterwards)."""
    _check_text(path, name, "the tensor name")
    if not isinstance(value, dict):
        raise bad_file(path, f"tensor {name!r} is described by a JSON {type(value).__name__}, not an object")
    if value.keys() != _FIELDS:
        missing, unknown = sorted(_FIELDS - value.keys()), sorted(value.keys() - _FIELDS)
        why = f"lacks {missing}" if missing else f"has keys besides dtype, shape and data_offsets: {unknown}"
        raise bad_file(path, f"tensor {name!r} {why}")
    code, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if not isinstance(code, str) or code not in _CODES:
        raise bad_file(path, f"tensor {name!r} has dtype {code!r}, which safetensors does not define")
    if not isinstance(shape, list) or not all(_is_u64(d) for d in shape):
        raise bad_file(path, f"tensor {name!r} has shape {shape!r}, not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_u64(o) for o in offsets):
        raise bad_file(path, f"tensor {name!r} has data_offsets {offsets!r}, not two non-negative integers")
    begin, end = offsets
    if end < begin:
        raise bad_file(path, f"tensor {name!r} ends (byte {end}) before it begins (byte {begin})")
    count = 1
    for d in shape:
        count *= d
        if count > _U64_MAX:  # as the reference: the running product must fit a u64
            raise bad_file(path, f"tensor {name!r} has shape {shape}, whose element count overflows 64 bits")
    bits = count * _CODES[code][0]
    if bits % 8:
        raise bad_file(path, f"tensor {name!r} ({code}, shape {shape}) does not end on a byte boundary")
    if end - begin != bits // 8:
        raise bad_file(
            path, f"tensor {name!r} ({code}, shape {shape}) needs {bits // 8} bytes but its offsets span {end - begin}"
        )
    return _Info(name, code, tuple(shape), begin, end)


def _check_tiling(path: str, infos: list[_Info], buffer: int) -> None:
    """The tensors must cover the data buffer exactly, in offset order, as the reference requires."""
    at = 0
    for info in sorted(infos, key=lambda i: (i.begin, i.end)):
        if info.begin != at:
            kind = "a gap" if info.begin > at else "an overlap"
            raise bad_file(path, f"tensor {info.name!r} begins at byte {info.begin} of the data, not {at} ({kind})")
        at = info.end
    if at != buffer:
        why = "the file ends early" if at > buffer else "extra bytes follow the last tensor"
        raise bad_file(path, f"the tensors cover {at} bytes of data but the file holds {buffer} ({why})")


def _metadata(path: str, value: object) -> dict[str, str]:
    if value is None:  # the reference accepts null
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise bad_file(path, f"__metadata__ is {_short(value)}, not an object of strings")
    for k, v in value.items():
        _check_text(path, k, "the metadata key")
        _check_text(path, v, "the metadata value")
    return dict(value)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _carried(path: str, record: str | None, infos: list[_Info]) -> dict[str, DtypeRow]:
    """Tensors stored as bytes (``U8``, one trailing dimension of the item size) and their dtypes."""
    if record is None:
        return {}
    parsed = _strict_json(path, record, f"the {DTYPES_KEY} metadata")
    if not isinstance(parsed, dict):
        raise bad_file(path, f"the {DTYPES_KEY} metadata is {_short(parsed)}, not an object", _FIX_SOURCE)
    by_name = {info.name: info for info in infos}
    carried: dict[str, DtypeRow] = {}
    for name, dtype_name in parsed.items():
        row = _EXACT_ROWS.get(dtype_name) if isinstance(dtype_name, str) else None
        info = by_name.get(name)
        if row is None or info is None:
            why = f"dtype {dtype_name!r} is unknown here" if row is None else f"names no tensor {name!r}"
            raise bad_file(path, f"the {DTYPES_KEY} metadata {why}", _FIX_SOURCE)
        if info.code != "U8" or not info.shape or info.shape[-1] != row.numpy.itemsize:
            raise bad_file(
                path,
                f"tensor {name!r} is recorded as {row.name} but is {info.code} of shape {list(info.shape)}, "
                f"not U8 with a last dimension of {row.numpy.itemsize}",
                _FIX_SOURCE,
            )
        carried[name] = row
    return carried


def _entry(path: str, info: _Info, carried: DtypeRow | None, start: int, size: int) -> Entry:
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
            f"tensor {info.name!r} has {len(shape)} dimensions; NumPy holds at most {_MAX_DIMS}",
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
    metadata: dict[str, str] = {}
    for k, v in extra.items():
        _writable_text(path, k, "the metadata key")
        _writable_text(path, v, f"the metadata value of {k!r}")
        if k in (STRUCTURE_KEY, DTYPES_KEY):
            raise UnsupportedError("writing", path, f"the metadata key {k!r} is tensorbridge's own", "Rename it")
        metadata[k] = v
    if structure is not None:
        metadata[STRUCTURE_KEY] = _structure.dumps(structure)
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
    limit = min(MAX_HEADER_BYTES, _REFERENCE_HEADER_LIMIT)
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
        raise UnsupportedError("writing", path, f"{what} {_short(text)} is not a str", "Use str names and metadata")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise UnsupportedError("writing", path, f"{what} {text!r} is not valid Unicode", "Rename it") from err


def _check_loaded(path: str, entry: Entry, data: object) -> None:
    if (
        not isinstance(data, np.ndarray)
        or data.shape != entry.shape
        or data.dtype.itemsize != entry.dtype.itemsize
        or row_for_numpy(data.dtype) is not row_for_numpy(entry.dtype)
    ):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise StructureError(
            "writing",
            path,
            f"tensor {entry.name!r} was declared {entry.dtype} {entry.shape} but loaded as {got}",
            "Make the entry's dtype and shape match its data",
        )


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
