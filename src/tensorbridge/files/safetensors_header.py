"""The safetensors header, read and validated in layers before any of it is trusted.

The layers, each bounding what the next may spend (as NumPy's ``_read_array_header`` does):

1. the length ``N`` (8 bytes, little-endian u64) within :data:`MAX_HEADER_BYTES`, the limit of the
   reference implementation (huggingface/safetensors ``tensor.rs``: 100,000,000 bytes), and within
   the file;
2. the ``N`` bytes, read once, and an upper bound on the JSON values parsing them would create
   (``structure.json_values``, counted without parsing) within :data:`MAX_VALUES`; ``json.loads``
   spends about 60 bytes per value, so this caps the parse near 250 MB while admitting 32 values per
   array at :data:`~tensorbridge.files.structure.MAX_ARRAYS` arrays (a tensor takes 11 plus one per
   dimension, tensorbridge's nesting record about 6 more);
3. strict JSON: UTF-8, no NaN, no duplicate key anywhere, an object at the top;
4. at most ``MAX_ARRAYS`` tensors (a valid header holds no more than ``N`` / 50 anyway: the
   smallest tensor entry, ``"":{"dtype":"U8","shape":[],"data_offsets":[0,1]},``, is 50 bytes);
5. each tensor: a name of at most ``MAX_NAME_BYTES`` of valid Unicode, exactly the keys ``dtype``,
   ``shape`` and ``data_offsets``, a known dtype code, at most 64 dimensions, each a non-negative
   int below 2**63 (NumPy's and torch's index type), a shape NumPy can hold (the product of its
   non-zero dimensions times the item size within ``sys.maxsize``, in Python ints), and offsets
   spanning exactly its bytes;
6. the tiling: the tensors cover the data buffer exactly, so all of them together claim no more
   data than the file holds.

Stricter than the reference in a few ways, each refusing an ambiguity or a hostile size rather
than guessing: a duplicated tensor name (the reference keeps one silently), keys besides the three
(they would be lost), a name that is not valid Unicode, the array and value counts, name lengths,
and shapes NumPy cannot represent (``[2**63, 0]`` has no elements, yet no array has that shape).
"""

from __future__ import annotations

import json
import os
import struct
import sys
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from ..dtypes import ROWS, DtypeRow
from ..errors import UnsupportedError
from .base import bad_file, check_size
from .structure import MAX_ARRAYS, MAX_NAME_BYTES, json_values

__all__ = ["CODES", "DTYPES_KEY", "MAX_HEADER_BYTES", "MAX_VALUES", "METADATA", "STRUCTURE_KEY", "Info", "read_header"]

STRUCTURE_KEY: Final = "tensorbridge.structure"
DTYPES_KEY: Final = "tensorbridge.dtypes"
METADATA: Final = "__metadata__"
#: The reference refuses headers over this many bytes; so do readers and writers here.
MAX_HEADER_BYTES: Final = 100_000_000
#: The most JSON values (an upper bound counted before parsing) a header may hold.
MAX_VALUES: Final = 32 * MAX_ARRAYS + (1 << 16)
_FIELDS: Final = frozenset({"dtype", "shape", "data_offsets"})
_DIM_LIMIT: Final = 2**63  # dimensions are int64 in NumPy and torch
_MAX_DIMS: Final = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32
_FIX_SOURCE: Final = "Convert from the source again, or check that the file was copied completely"
_FIX_HOSTILE: Final = "Do not use this file, or split its tensors over several files where it was written"

#: Every code the reference knows: bits per element, and the tensorbridge dtype it loads as (None:
#: no NumPy dtype holds it).
CODES: Final[dict[str, tuple[int, str | None]]] = {
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
EXACT_ROWS: Final = {row.name: row for row in ROWS if row.exact}


@dataclass(frozen=True)
class Info:
    """One tensor of a header, validated."""

    name: str
    code: str
    shape: tuple[int, ...]
    begin: int
    end: int


def read_header(path: str) -> tuple[int, int, list[Info], dict[str, str]]:
    """The header length, the file size, the tensors (header order) and ``__metadata__``, all checked.

    Raises:
        FileFormatError: (ValueError) any layer of the module docs fails.
        UnsupportedError: (TypeError) a tensor has more dimensions than NumPy holds.

    Example:
        >>> import os, struct, tempfile
        >>> head = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
        >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> with open(path, "wb") as f:
        ...     _ = f.write(struct.pack("<Q", len(head)) + head + bytes(4))
        >>> read_header(path)[2]
        [Info(name='w', code='F32', shape=(1,), begin=0, end=4)]
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise bad_file(path, f"the file holds {size} bytes, fewer than the 8 of the header length")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER_BYTES:
            raise bad_file(
                path,
                f"the header claims {n} bytes, more than the limit of {MAX_HEADER_BYTES} that safetensors sets",
                _FIX_HOSTILE,
            )
        check_size(path, n, size - 8, "the header")
        raw = f.read(n)
    if len(raw) != n:
        raise bad_file(path, f"the file shrank while its {n}-byte header was read")
    values = json_values(raw)
    if values > MAX_VALUES:
        raise bad_file(
            path, f"the header holds up to {values} JSON values, more than the {MAX_VALUES} allowed", _FIX_HOSTILE
        )
    header = strict_json(path, raw, "the header")
    del raw
    if not isinstance(header, dict):
        raise bad_file(path, f"the header is a JSON {type(header).__name__}, not an object")
    count = len(header) - (METADATA in header)
    if count > MAX_ARRAYS:
        raise bad_file(
            path, f"the header lists {count} tensors, more than the {MAX_ARRAYS} tensorbridge reads", _FIX_HOSTILE
        )
    infos: list[Info] = []
    metadata: dict[str, str] = {}
    for key, value in header.items():
        if key == METADATA:
            metadata = _metadata(path, value)
        else:
            infos.append(_info(path, key, value))
    _check_tiling(path, infos, size - 8 - n)
    return n, size, infos, metadata


class _DuplicateKeyError(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:  # json.loads would keep the last silently; the reference refuses most
            raise _DuplicateKeyError(f"the key {short(key)} appears twice")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(path: str, raw: bytes | str, what: str) -> Any:
    """Parse JSON as the reference does: UTF-8, no NaN/Infinity, no duplicate keys."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except UnicodeDecodeError as err:
        raise bad_file(path, f"{what} is not UTF-8 ({err.reason} at byte {err.start})") from err
    except (ValueError, RecursionError) as err:  # JSONDecodeError, duplicates, NaN, huge ints
        raise bad_file(path, f"{what} is not valid JSON ({short(str(err), quote=False)})") from err


def _check_text(path: str, text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate escape such as "\ud800"
        raise bad_file(path, f"{what} {short(text)} is not valid Unicode") from err


def _is_int(x: object, limit: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < limit


def _info(path: str, name: str, value: object) -> Info:
    """Validate one tensor's header entry on its own (the tiling is checked afterwards)."""
    _check_text(path, name, "the tensor name")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise bad_file(
            path,
            f"the tensor name {short(name)} is {len(name.encode('utf-8'))} bytes, more than the {MAX_NAME_BYTES} "
            "tensorbridge reads (a .npz member name holds no more)",
            _FIX_HOSTILE,
        )
    if not isinstance(value, dict):
        raise bad_file(path, f"tensor {short(name)} is described by a JSON {type(value).__name__}, not an object")
    if value.keys() != _FIELDS:
        missing, unknown = sorted(_FIELDS - value.keys()), sorted(value.keys() - _FIELDS)
        why = f"lacks {missing}" if missing else f"has keys besides dtype, shape and data_offsets: {short(unknown)}"
        raise bad_file(path, f"tensor {short(name)} {why}")
    code, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if not isinstance(code, str) or code not in CODES:
        raise bad_file(path, f"tensor {short(name)} has dtype {short(code)}, which safetensors does not define")
    if not isinstance(shape, list) or not all(_is_int(d, _DIM_LIMIT) for d in shape):
        raise bad_file(
            path, f"tensor {short(name)} has shape {short(shape)}, not a list of non-negative integers below 2**63"
        )
    if len(shape) > _MAX_DIMS + 1:  # one more for a carried dtype's bytes (the reader checks the rest)
        raise UnsupportedError(
            "reading",
            path,
            f"tensor {short(name)} has {len(shape)} dimensions; NumPy holds at most {_MAX_DIMS}",
            "Reshape it to fewer dimensions where it was written",
        )
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o, 2**64) for o in offsets):
        raise bad_file(path, f"tensor {short(name)} has data_offsets {short(offsets)}, not two non-negative u64")
    begin, end = offsets
    if end < begin:
        raise bad_file(path, f"tensor {short(name)} ends (byte {end}) before it begins (byte {begin})")
    bits = CODES[code][0]
    count = span = 1
    for d in shape:  # Python ints: no overflow, the limit is checked once
        count *= d
        span *= max(d, 1)
    if span * max(bits // 8, 1) > sys.maxsize:  # NumPy refuses such shapes even with a zero dimension
        raise bad_file(path, f"tensor {short(name)} has shape {short(shape)}, too large for any array", _FIX_HOSTILE)
    if count * bits % 8:
        raise bad_file(path, f"tensor {short(name)} ({code}, shape {shape}) does not end on a byte boundary")
    if end - begin != count * bits // 8:
        raise bad_file(
            path,
            f"tensor {short(name)} ({code}, shape {shape}) needs {count * bits // 8} bytes but its offsets span "
            f"{end - begin}",
        )
    return Info(name, code, tuple(shape), begin, end)


def _check_tiling(path: str, infos: list[Info], buffer: int) -> None:
    """The tensors must cover the data buffer exactly, in offset order, as the reference requires."""
    at = 0
    for info in sorted(infos, key=lambda i: (i.begin, i.end)):
        if info.begin != at:
            kind = "a gap" if info.begin > at else "an overlap"
            why = f"begins at byte {info.begin} of the data, not {at} ({kind})"
            raise bad_file(path, f"tensor {short(info.name)} {why}")
        at = info.end
    if at != buffer:
        why = "the file ends early" if at > buffer else "extra bytes follow the last tensor"
        raise bad_file(path, f"the tensors cover {at} bytes of data but the file holds {buffer} ({why})")


def _metadata(path: str, value: object) -> dict[str, str]:
    if value is None:  # the reference accepts null
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise bad_file(path, f"__metadata__ is {short(value)}, not an object of strings")
    for k, v in value.items():
        _check_text(path, k, "the metadata key")
        _check_text(path, v, "the metadata value")
    return dict(value)


def short(value: object, quote: bool = True) -> str:
    """``repr(value)`` (``str`` without ``quote``), cut to 80 characters for a message."""
    text = repr(value) if quote else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def carried_dtypes(path: str, record: str | None, infos: list[Info]) -> dict[str, DtypeRow]:
    """Tensors stored as bytes (``U8``, one trailing dimension of the item size) and their dtypes."""
    if record is None:
        return {}
    # Its JSON values were counted with the header's (layer 2), so parsing it is bounded too.
    parsed = strict_json(path, record, f"the {DTYPES_KEY} metadata")
    if not isinstance(parsed, dict):
        raise bad_file(path, f"the {DTYPES_KEY} metadata is {short(parsed)}, not an object", _FIX_SOURCE)
    by_name = {info.name: info for info in infos}
    carried: dict[str, DtypeRow] = {}
    for name, dtype_name in parsed.items():
        row = EXACT_ROWS.get(dtype_name) if isinstance(dtype_name, str) else None
        info = by_name.get(name)
        if row is None or info is None:
            why = f"dtype {short(dtype_name)} is unknown here" if row is None else f"names no tensor {short(name)}"
            raise bad_file(path, f"the {DTYPES_KEY} metadata {why}", _FIX_SOURCE)
        if info.code != "U8" or not info.shape or info.shape[-1] != row.numpy.itemsize:
            raise bad_file(
                path,
                f"tensor {short(name)} is recorded as {row.name} but is {info.code} of shape {list(info.shape)}, "
                f"not U8 with a last dimension of {row.numpy.itemsize}",
                _FIX_SOURCE,
            )
        carried[name] = row
    return carried
