"""The options of one call, validated once, the same way, before any leaf is looked at.

``to_tensor``, ``to_numpy`` and ``explain`` all normalize their keyword arguments here, so an
invalid option raises the same error, with the same message, whether the data is a lone leaf,
a container, a device call or an ``explain``. Normalized options are interned: equal options
get one object with one ``token``, which keys the plan cache (see ``tensorbridge.pipeline``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import torch

from .dtype_map import DtypeMap, normalize_dtype_map
from .dtypes import numpy_dtype, row_for_torch, torch_dtype
from .errors import DeviceError, UnsupportedError

__all__ = [
    "DATETIME_UNITS",
    "DEFAULT_INTEROP",
    "DEFAULT_NUMPY",
    "DEFAULT_TENSOR",
    "NO_VALUE",
    "SHARDS",
    "InteropOptions",
    "ToNumpyOptions",
    "ToTensorOptions",
    "normalize_interop",
    "normalize_to_numpy",
    "normalize_to_tensor",
    "numpy_options",
    "tensor_options",
]


class _NoValue:
    def __repr__(self) -> str:
        return "NO_VALUE"


#: The default of ``na_value``: missing values raise instead of being filled.
NO_VALUE: Final = _NoValue()
DATETIME_UNITS: Final = ("ns", "us", "ms", "s", "D")
SHARDS: Final = ("error", "local", "gather")


@dataclass(frozen=True)
class InteropOptions:
    """Choices that only leaves from other libraries need (see ``tensorbridge.adapters``).

    Attributes:
        dense: densify sparse matrices and tensors instead of keeping their layout.
        quantized: ``"dequantize"`` (floats) or ``"int"`` (integer codes with their scale and
            zero point) for quantized tensors; None raises and offers both.
        na_value: what missing values (pandas NA/NaN in nullable columns, NaT) become;
            :data:`NO_VALUE` raises instead.
        datetime_unit: datetimes/timedeltas become int64 counts of this unit since the
            epoch; None raises instead.
        shards: what ``to_numpy`` does with a DTensor: ``"error"`` raises and names the
            choices, ``"local"`` gives this rank's shard, ``"gather"`` the full array on ``dst``.
        dst: the rank that gets gathered arrays (``shards="gather"``), or None for every rank.
    """

    dense: bool = False
    quantized: Literal["dequantize", "int"] | None = None
    na_value: object = NO_VALUE
    datetime_unit: str | None = None
    shards: Literal["error", "local", "gather"] = "error"
    dst: int | None = 0


DEFAULT_INTEROP: Final = InteropOptions()


@dataclass(frozen=True)
class ToTensorOptions:
    """The options of one ``to_tensor`` call, normalized once."""

    dtype: torch.dtype | None = None
    device: torch.device | None = None
    copy: bool | None = None
    requires_grad: bool = False
    pin_memory: bool = False
    interop: InteropOptions = DEFAULT_INTEROP
    dtype_map: DtypeMap[torch.dtype] | None = None
    """``dtype=`` as a mapping; resolved per leaf into ``dtype`` before the leaf is planned."""
    non_blocking: bool | None = None
    token: int = field(default=-1, compare=False, repr=False)
    """Equal options share one token (-1: not interned, so never cached)."""


@dataclass(frozen=True)
class ToNumpyOptions:
    """The options of one ``to_numpy`` call, normalized once."""

    dtype: np.dtype[Any] | None = None
    copy: bool | None = None
    interop: InteropOptions = DEFAULT_INTEROP
    dtype_map: DtypeMap[np.dtype[Any]] | None = None
    """``dtype=`` as a mapping; resolved per leaf into ``dtype`` before the leaf is planned."""
    non_blocking: bool | None = None
    token: int = field(default=-1, compare=False, repr=False)
    """Equal options share one token (-1: not interned, so never cached)."""


# --- interning: equal options, one object, one token --------------------------------------

_INTERNED: dict[object, Any] = {}
_MAX_INTERNED: Final = 512
_LOCK = threading.Lock()
_NEXT: list[int] = [0]


def _intern(opts: Any) -> Any:
    """The one interned object equal to ``opts``; ``opts`` itself (token -1) when it cannot be hashed.

    ``na_value``'s type is part of the key: ``1``, ``1.0`` and ``True`` are equal in Python,
    but they fill a column differently (a bool column refuses ``1``).
    """
    key = (opts, type(opts.interop.na_value))
    try:
        return _INTERNED[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable na_value, say: planned leaf by leaf, never cached
        return opts
    with _LOCK:
        found = _INTERNED.get(key)
        if found is not None:
            return found
        if len(_INTERNED) >= _MAX_INTERNED:
            _INTERNED.clear()  # old tokens are never reused: their cached plans just age out
        object.__setattr__(opts, "token", _NEXT[0])
        _NEXT[0] += 1
        _INTERNED[key] = opts
        return opts


DEFAULT_TENSOR: Final[ToTensorOptions] = _intern(ToTensorOptions())
DEFAULT_NUMPY: Final[ToNumpyOptions] = _intern(ToNumpyOptions())


# --- the options a call spelled, mapped to their normalized object -------------------------
#
# A training loop passes the same arguments every step (device="cuda", dtype=torch.float32):
# they are validated the first time, then found. The key holds each argument's type as well as
# its value, since 1 == True == 1.0 in Python. Unhashable arguments (a dtype mapping) are
# validated every time; failures are never remembered.

_RAW: dict[tuple[Any, ...], Any] = {}


def _raw_key(raw: tuple[Any, ...]) -> tuple[Any, ...]:
    return (*raw, *map(type, raw))


def _remembered(raw: tuple[Any, ...]) -> Any:
    try:
        return _RAW.get(_raw_key(raw))
    except TypeError:  # unhashable: validated every time
        return None


def _remember(raw: tuple[Any, ...], opts: Any) -> None:
    if opts.token < 0:
        return
    try:
        key = _raw_key(raw)
        hash(key)
    except TypeError:
        return
    with _LOCK:
        if len(_RAW) >= _MAX_INTERNED:
            _RAW.clear()
        _RAW[key] = opts


# --- validation -----------------------------------------------------------------------------


def _flag(what: str, name: str, value: object) -> bool:
    if value is True or value is False:
        return value
    raise UnsupportedError(what, name, f"{name} must be True or False, not {value!r}", "Pass one of those")


def _tri(what: str, name: str, value: object) -> bool | None:
    if value is None or value is True or value is False:
        return value
    raise UnsupportedError(what, name, f"{name} must be None, True or False, not {value!r}", "Pass one of those")


def normalize_interop(
    what: str,
    dense: object = False,
    quantized: object = None,
    na_value: object = NO_VALUE,
    datetime_unit: object = None,
    shards: object = "error",
    dst: object = 0,
) -> InteropOptions:
    """Validate the options that leaves from other libraries need."""
    dense = _flag(what, "dense", dense)
    if not (type(shards) is str and shards in SHARDS):
        raise UnsupportedError(
            what,
            "shards",
            f"shards must be one of {SHARDS}, not {shards!r}",
            "Pass 'local' for this rank's shard, or 'gather' for the full array on rank dst",
        )
    if dst is not None and (type(dst) is not int or dst < 0):
        raise UnsupportedError(
            what, "dst", f"dst must be a rank (an int >= 0) or None, not {dst!r}",
            "Pass dst=0 for rank 0, or dst=None for every rank",
        )  # fmt: skip
    if quantized not in (None, "dequantize", "int"):
        raise UnsupportedError(
            what,
            "quantized",
            f"quantized must be None, 'dequantize' or 'int', not {quantized!r}",
            "Pass 'dequantize' for floats, or 'int' for the integer codes with their scale and zero point",
        )
    if datetime_unit is not None and datetime_unit not in DATETIME_UNITS:
        raise UnsupportedError(
            what,
            "datetime_unit",
            f"datetime_unit must be one of {DATETIME_UNITS} or None, not {datetime_unit!r}",
            "Pass datetime_unit='ns' for int64 nanoseconds since the epoch",
        )
    plain = dense is False and quantized is None and na_value is NO_VALUE and datetime_unit is None
    if plain and shards == "error" and dst == 0:
        return DEFAULT_INTEROP
    return InteropOptions(dense, quantized, na_value, datetime_unit, shards, dst)  # type: ignore[arg-type]


def _tensor_target(dtype: object) -> torch.dtype:
    tdt = torch_dtype(dtype)
    if row_for_torch(tdt) is None:
        raise UnsupportedError(
            "to_tensor",
            "dtype",
            f"{tdt} cannot be produced from NumPy data",
            "Convert to a plain dtype first, then use torch's own API (e.g. quantize_per_tensor)",
        )
    return tdt


def normalize_to_tensor(
    dtype: object,
    device: object,
    copy: object,
    requires_grad: object,
    pin_memory: object,
    interop: InteropOptions = DEFAULT_INTEROP,
    non_blocking: object = None,
) -> ToTensorOptions:
    """Validate and normalize ``to_tensor``'s options (not interned: see :func:`tensor_options`)."""
    if isinstance(dtype, Mapping):
        tdt, tmap = None, normalize_dtype_map(dtype, "to_tensor", _tensor_target)
    else:
        tdt, tmap = (None if dtype is None else _tensor_target(dtype)), None
    try:
        dev = None if device is None else torch.device(device)  # type: ignore[call-overload]
    except (RuntimeError, TypeError) as err:
        raise DeviceError(
            "to_tensor",
            "device",
            f"{device!r} is not a device torch knows ({err})",
            "Pass 'cpu', 'cuda', 'cuda:1' or a torch.device",
        ) from err
    return ToTensorOptions(
        tdt,
        dev,
        _tri("to_tensor", "copy", copy),
        _flag("to_tensor", "requires_grad", requires_grad),
        _flag("to_tensor", "pin_memory", pin_memory),
        interop,
        tmap,
        _tri("to_tensor", "non_blocking", non_blocking),
    )


def normalize_to_numpy(
    dtype: object, copy: object, interop: InteropOptions = DEFAULT_INTEROP, non_blocking: object = None
) -> ToNumpyOptions:
    """Validate and normalize ``to_numpy``'s options (not interned: see :func:`numpy_options`)."""
    copy = _tri("to_numpy", "copy", copy)
    blocking = _tri("to_numpy", "non_blocking", non_blocking)
    if isinstance(dtype, Mapping):
        return ToNumpyOptions(None, copy, interop, normalize_dtype_map(dtype, "to_numpy", numpy_dtype), blocking)
    return ToNumpyOptions(None if dtype is None else numpy_dtype(dtype), copy, interop, None, blocking)


def tensor_options(
    dtype: object = None,
    device: object = None,
    copy: object = None,
    requires_grad: object = False,
    pin_memory: object = False,
    non_blocking: object = None,
    dense: object = False,
    na_value: object = NO_VALUE,
    datetime_unit: object = None,
) -> ToTensorOptions:
    """``to_tensor``'s keyword arguments, validated and interned.

    Example:
        >>> import torch
        >>> tensor_options(dtype="float32") is tensor_options(dtype=torch.float32)
        True
    """
    if (
        dtype is None
        and device is None
        and copy is None
        and requires_grad is False
        and pin_memory is False
        and non_blocking is None
        and dense is False
        and na_value is NO_VALUE
        and datetime_unit is None
    ):
        return DEFAULT_TENSOR
    raw = ("to_tensor", dtype, device, copy, requires_grad, pin_memory, non_blocking, dense, na_value, datetime_unit)
    found = _remembered(raw)
    if found is not None:
        return found  # type: ignore[no-any-return]
    interop = normalize_interop("to_tensor", dense, None, na_value, datetime_unit)
    opts: ToTensorOptions = _intern(
        normalize_to_tensor(dtype, device, copy, requires_grad, pin_memory, interop, non_blocking)
    )
    _remember(raw, opts)
    return opts


def numpy_options(
    dtype: object = None,
    copy: object = None,
    non_blocking: object = None,
    dense: object = False,
    quantized: object = None,
    na_value: object = NO_VALUE,
    datetime_unit: object = None,
    shards: object = "error",
    dst: object = 0,
) -> ToNumpyOptions:
    """``to_numpy``'s keyword arguments, validated and interned.

    Example:
        >>> numpy_options(copy=True).copy
        True
    """
    if (
        dtype is None
        and copy is None
        and non_blocking is None
        and dense is False
        and quantized is None
        and na_value is NO_VALUE
        and datetime_unit is None
        and type(shards) is str
        and shards == "error"
        and dst == 0
        and type(dst) is int
    ):
        return DEFAULT_NUMPY
    raw = ("to_numpy", dtype, copy, non_blocking, dense, quantized, na_value, datetime_unit, shards, dst)
    found = _remembered(raw)
    if found is not None:
        return found  # type: ignore[no-any-return]
    interop = normalize_interop("to_numpy", dense, quantized, na_value, datetime_unit, shards, dst)
    opts: ToNumpyOptions = _intern(normalize_to_numpy(dtype, copy, interop, non_blocking))
    _remember(raw, opts)
    return opts
