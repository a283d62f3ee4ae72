"""One declarative table of the dtypes NumPy and PyTorch share, and every lookup derived from it.

A row pairs a torch dtype with the NumPy dtype that holds the same bits. Rows that the
installed torch or ml_dtypes lacks are skipped (never keyed by ``None``), so the table is
exactly what this machine can convert. Tests parametrize over :data:`ROWS`, so a new row is
tested automatically.
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import ml_dtypes
import numpy as np
import torch

from .errors import UnsupportedError

__all__ = [
    "ROWS",
    "DtypeRow",
    "numpy_dtype",
    "row_for_numpy",
    "row_for_torch",
    "torch_dtype",
]


_TorchDtype = torch.dtype  # the rows' field named ``torch`` hides the module inside the class
_Tensor = torch.Tensor


@dataclass(frozen=True)
class DtypeRow:
    """One dtype both libraries can hold.

    Attributes:
        name: the canonical spelling, e.g. ``"bfloat16"``.
        torch: the torch dtype.
        numpy: the NumPy dtype holding the same bits (an ``ml_dtypes`` dtype where NumPy has none).
        carrier: a plain NumPy dtype of the same size that ``torch.from_numpy`` accepts, used to
            move the bits when ``numpy`` itself is unknown to torch; ``None`` when torch accepts it.
        exact: ``False`` when ``numpy`` is a wider stand-in (complex32 -> complex64); such a row
            converts torch -> NumPy only, by a widening cast.
    """

    name: str
    torch: torch.dtype
    numpy: np.dtype[Any]
    carrier: np.dtype[Any] | None = None
    exact: bool = True

    @property
    def torch_carrier(self) -> _TorchDtype | None:
        """The torch integer type matching ``carrier`` (same size), or None."""
        return None if self.carrier is None else TORCH_BITS[self.carrier.itemsize]

    @functools.cached_property
    def share_as_tensor(self) -> Callable[[np.ndarray[Any, Any]], _Tensor]:
        """NumPy memory of this dtype as a tensor, bit-exact and zero-copy (the one carrier rule).

        Example:
            >>> import ml_dtypes, numpy as np
            >>> row = row_for_numpy(np.dtype(ml_dtypes.bfloat16))
            >>> row.share_as_tensor(np.ones(2, ml_dtypes.bfloat16)).tolist()
            [1.0, 1.0]
        """
        if self.carrier is None:
            return torch.from_numpy
        carrier, dtype = self.carrier, self.torch
        return lambda a: torch.from_numpy(a.view(carrier)).view(dtype)

    @functools.cached_property
    def share_as_array(self) -> Callable[[_Tensor], np.ndarray[Any, Any]]:
        """A CPU tensor of this dtype as a NumPy array, bit-exact and zero-copy (the one carrier rule).

        Example:
            >>> import torch
            >>> row_for_torch(torch.bfloat16).share_as_array(torch.ones(2, dtype=torch.bfloat16)).dtype.name
            'bfloat16'
        """
        bits = self.torch_carrier
        if bits is None:
            return torch.Tensor.numpy
        dtype = self.numpy
        return lambda t: t.view(bits).numpy().view(dtype)


# (canonical name, torch attribute, NumPy or ml_dtypes attribute, source of the NumPy type, exact)
_SPEC: Final = (
    ("bool", "bool", "bool_", "numpy", True),
    ("int8", "int8", "int8", "numpy", True),
    ("int16", "int16", "int16", "numpy", True),
    ("int32", "int32", "int32", "numpy", True),
    ("int64", "int64", "int64", "numpy", True),
    ("uint8", "uint8", "uint8", "numpy", True),
    ("uint16", "uint16", "uint16", "numpy", True),
    ("uint32", "uint32", "uint32", "numpy", True),
    ("uint64", "uint64", "uint64", "numpy", True),
    ("float16", "float16", "float16", "numpy", True),
    ("float32", "float32", "float32", "numpy", True),
    ("float64", "float64", "float64", "numpy", True),
    ("complex64", "complex64", "complex64", "numpy", True),
    ("complex128", "complex128", "complex128", "numpy", True),
    ("bfloat16", "bfloat16", "bfloat16", "ml_dtypes", True),
    ("float8_e4m3fn", "float8_e4m3fn", "float8_e4m3fn", "ml_dtypes", True),
    ("float8_e5m2", "float8_e5m2", "float8_e5m2", "ml_dtypes", True),
    ("float8_e4m3fnuz", "float8_e4m3fnuz", "float8_e4m3fnuz", "ml_dtypes", True),
    ("float8_e5m2fnuz", "float8_e5m2fnuz", "float8_e5m2fnuz", "ml_dtypes", True),
    ("float8_e8m0fnu", "float8_e8m0fnu", "float8_e8m0fnu", "ml_dtypes", True),
    # NumPy has no complex of two float16; complex64 holds every complex32 value exactly.
    ("complex32", "complex32", "complex64", "numpy", False),
)

#: Same-size integers, the one "itemsize -> integer dtype" rule: bits are carried, gathered
#: and packed as these, never reinterpreted as values.
TORCH_BITS: Final[dict[int, torch.dtype]] = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
NUMPY_BITS: Final[dict[int, np.dtype[Any]]] = {
    n: np.dtype(f"i{n}") if n > 1 else np.dtype(np.uint8) for n in TORCH_BITS
}
_CARRIERS: Final = {n: NUMPY_BITS[n] for n in (1, 2)}


def torch_bits(dtype: torch.dtype) -> torch.dtype:
    """The same-size integer type ``dtype``'s bits travel as (complex128 as int64 pairs is the caller's).

    Example:
        >>> import torch
        >>> torch_bits(torch.bfloat16)
        torch.int16
    """
    return TORCH_BITS[dtype.itemsize]


def _build_rows() -> tuple[DtypeRow, ...]:
    rows = []
    for name, torch_attr, np_attr, np_source, exact in _SPEC:
        tdt = getattr(torch, torch_attr, None)
        ntype = getattr(np if np_source == "numpy" else ml_dtypes, np_attr, None)
        if not isinstance(tdt, torch.dtype) or ntype is None:
            continue  # this torch or ml_dtypes lacks the row
        ndt = np.dtype(ntype)
        carrier = _CARRIERS[ndt.itemsize] if np_source == "ml_dtypes" else None
        rows.append(DtypeRow(name, tdt, ndt, carrier, exact))
    return tuple(rows)


ROWS: Final[tuple[DtypeRow, ...]] = _build_rows()
"""Every dtype this installation converts, one row each."""

_BY_TORCH: Final = {row.torch: row for row in ROWS}
# Exact rows only: NumPy complex64 means torch.complex64, never complex32.
_BY_NUMPY: Final = {row.numpy: row for row in ROWS if row.exact}
_BY_NAME: Final = {row.name: row for row in ROWS}

# Spellings torch gives its dtypes that are not the canonical name.
_TORCH_ALIASES: Final = {
    "half": "float16",
    "double": "float64",
    "long": "int64",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
    "chalf": "complex32",
    "bool_": "bool",
}
# Spellings that mean different things in torch (float32, int32) and NumPy (float64, int64).
_AMBIGUOUS: Final = {"float": ("float32", "float64"), "int": ("int32", "int64")}
_PY_TYPES: Final[dict[type, str]] = {
    builtins.bool: "bool",
    builtins.int: "int64",
    builtins.float: "float64",
    builtins.complex: "complex128",
}


def _unsupported(spelling: object, cause: str, fix: str) -> UnsupportedError:
    return UnsupportedError("dtype lookup", "dtype", f"{spelling!r} {cause}", fix)


def row_for_numpy(dt: np.dtype[Any]) -> DtypeRow | None:
    """Return the row for a NumPy dtype in either byte order, or ``None`` when there is none."""
    row = _BY_NUMPY.get(dt)
    if row is None and dt.byteorder not in "=|" and dt.isnative is False:
        row = _BY_NUMPY.get(dt.newbyteorder("="))
    return row


def is_ml_dtype(dt: np.dtype[Any]) -> bool:
    """Whether ``dt`` comes from ml_dtypes (its ``kind`` is 'V', or 'f' for some kinds)."""
    return dt.type.__module__.startswith("ml_dtypes")


def row_for_torch(dt: torch.dtype) -> DtypeRow | None:
    """Return the row for a torch dtype, or ``None`` when NumPy cannot hold it."""
    return _BY_TORCH.get(dt)


def _row_from_string(spelling: str) -> DtypeRow | None:
    key = spelling.strip()
    key = key.removeprefix("torch.").removeprefix("numpy.").removeprefix("np.")
    key = key.removeprefix("ml_dtypes.")
    if key in _AMBIGUOUS:
        as_torch, as_numpy = _AMBIGUOUS[key]
        raise _unsupported(
            spelling,
            f"is ambiguous (torch reads it as {as_torch}, NumPy as {as_numpy})",
            f"Spell it {as_torch!r} or {as_numpy!r}",
        )
    key = _TORCH_ALIASES.get(key, key)
    if key in _BY_NAME:
        return _BY_NAME[key]
    try:
        return row_for_numpy(np.dtype(key))
    except TypeError:
        return None


def _lookup(x: object) -> DtypeRow | np.dtype[Any] | torch.dtype:
    """Normalize any spelling to a table row, or to the foreign dtype it names (for messages)."""
    if isinstance(x, torch.dtype):
        return _BY_TORCH.get(x) or x
    if isinstance(x, str):
        row = _row_from_string(x)
        if row is None:
            raise _unsupported(
                x,
                "names no dtype that both NumPy and torch can hold",
                "Use a name such as 'float32', 'bfloat16' or 'int64'",
            )
        return row
    if isinstance(x, type) and x in _PY_TYPES:
        return _BY_NAME[_PY_TYPES[x]]
    try:
        dt = np.dtype(x)  # type: ignore[call-overload]  # any spelling NumPy accepts
    except TypeError as err:
        raise _unsupported(x, "is not a dtype", "Pass a torch.dtype, a NumPy dtype or a name") from err
    return row_for_numpy(dt) or dt


def torch_dtype(x: object) -> torch.dtype:
    """Return the torch dtype for any dtype spelling.

    Accepts a ``torch.dtype``, a NumPy dtype or scalar type (either byte order), an
    ``ml_dtypes`` type, a Python type (``float`` is float64, as in NumPy and torch) or a
    name (``"float32"``, ``"torch.bfloat16"``, ``"half"``). The bare names ``"float"`` and
    ``"int"`` are refused: torch and NumPy read them differently.

    Raises:
        UnsupportedError: (a TypeError) when the spelling names no dtype torch can hold.

    Example:
        >>> import numpy as np, tensorbridge as tb
        >>> tb.torch_dtype(np.dtype(">f4"))
        torch.float32
        >>> tb.torch_dtype("bfloat16")
        torch.bfloat16
    """
    found = _lookup(x)
    if isinstance(found, DtypeRow):
        return found.torch
    if isinstance(found, torch.dtype):
        return found
    raise _unsupported(
        x, f"(NumPy dtype {found}) has no torch equivalent", "Cast the data to a dtype torch has, e.g. float64"
    )


def numpy_dtype(x: object) -> np.dtype[Any]:
    """Return the NumPy dtype that holds the same values as any dtype spelling.

    torch dtypes NumPy lacks map to ``ml_dtypes`` (bfloat16, float8 kinds); torch.complex32
    maps to complex64, which holds every complex32 value exactly. Byte order is normalized
    to native.

    Raises:
        UnsupportedError: (a TypeError) for torch dtypes with no NumPy counterpart
            (quantized, sub-byte).

    Example:
        >>> import torch, tensorbridge as tb
        >>> tb.numpy_dtype(torch.bfloat16)
        dtype(bfloat16)
        >>> tb.numpy_dtype("half")
        dtype('float16')
    """
    found = _lookup(x)
    if isinstance(found, DtypeRow):
        return found.numpy
    if isinstance(found, torch.dtype):
        raise _unsupported(
            x, "has no NumPy counterpart", "Convert the tensor to a dtype NumPy can hold first, e.g. float32"
        )
    return found.newbyteorder("=") if found.byteorder not in "=|" else found
