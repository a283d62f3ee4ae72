"""Checked dtype casts: each value becomes the nearest value of the new dtype, or the cast raises.

Rounding. Every cast rounds the exact source value once, to the nearest value of the target,
ties to the neighbour with the even last mantissa bit (float8_e8m0fnu has no mantissa bits:
its ties go up, as ml_dtypes and torch round them). torch, and ml_dtypes through 0.6, round
through float32, which would round some values twice (float64 ``1 + 2**-8 + 2**-40`` would
become bfloat16 1.0 instead of 1.0078125); those casts pre-round the source to odd first
(see :mod:`.rounding`), so the result is the single rounding. Rounding to the largest finite
value is rounding: 65519.0 -> float16 is 65504.0, 464 -> float8_e4m3fn is 448.0.

Refused with ``ValueRangeError``, every bound compared exactly (Python ints, floats and
fractions, never a float of an int64 bound):

- a value whose nearest value lies past the target's largest finite one, so that it would
  become inf, or NaN in a type without inf (65520.0 -> float16, 465.0 -> float8_e4m3fn,
  1e300 -> float32; a tie goes past when the largest value is odd);
- NaN or infinity where the target has none (NaN -> int64, inf -> float8_e4m3fn);
- for an integer target, a value outside its range (300 -> uint8, -1 -> uint16,
  2**63 -> int64) or one that is not a whole number (1.5 -> int8: truncation is not rounding);
- for float8_e8m0fnu, zero and negative values, which it cannot hold (positive values
  below its smallest, 2**-127, round to it);
- a non-zero imaginary part when casting complex to a real dtype (to bool, a value with
  either part non-zero is True).

Messages give the offending value exactly (integers in full, floats as repr) and the bounds.
Casts that cannot change a value beyond rounding skip the check. A checked cast reads the
source once more (one multithreaded min/max pass) before casting.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

import numpy as np
import torch

from ..dtypes import is_ml_dtype, numpy_dtype
from ..errors import ValueRangeError
from .alloc import host_copy, host_empty
from .rounding import Limits, Number, Rounding, limits, part, round_once, rounding_for, rounds_past

__all__ = ["cast_array", "cast_tensor", "needs_check"]

# torch has no min/max kernels for these; their values are checked through a NumPy view.
_NO_MINMAX: Final = frozenset({getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)})


def needs_check(src: np.dtype[Any], dst: np.dtype[Any]) -> bool:
    """Return whether a cast from ``src`` to ``dst`` can change a value beyond rounding.

    Decided from the value ranges alone (not ``np.can_cast``, which ml_dtypes answers for
    precision rather than range).
    """
    return _needs_check(src, dst.kind == "c", part(dst))


def _needs_check(src: np.dtype[Any], to_complex: bool, dst_part: np.dtype[Any]) -> bool:
    if dst_part.kind == "b":
        return False  # to bool means "non-zero"
    if src.kind == "c" and not to_complex:
        return True
    s, d = limits(part(src)), limits(dst_part)
    if s.lo < d.lo or s.hi > d.hi or (d.positive and s.lo <= 0):
        return True
    if d.integer:
        return not s.integer  # NaN, inf and fractions
    return (s.has_nan and not d.has_nan) or (s.has_inf and not d.has_inf)


def _exact(v: Any) -> Number:
    """A tensor or NumPy scalar as the exact Python number it holds."""
    x = v.item()  # an int or float for every dtype but longdouble, whose .item() stays a longdouble
    if type(x) is float or type(x) is int:
        return x
    if isinstance(x, np.floating) and np.isfinite(x):
        return Fraction(*x.as_integer_ratio())  # longdouble: float() would round it
    return int(x) if isinstance(x, (bool, np.bool_)) else float(x)


def _show(v: Number) -> str:
    """A value as the message prints it: integers in full, floats as repr (enough digits to tell them apart)."""
    if isinstance(v, Fraction):  # a longdouble: print it as one, with its own shortest repr
        n, d = v.numerator, v.denominator
        zeros = (n & -n).bit_length() - 1 if n else 0
        return str(np.ldexp(np.longdouble(n >> zeros), zeros - (d.bit_length() - 1)))
    return repr(v) if isinstance(v, float) else str(v)


def _nonfinite(v: Number) -> bool:
    return type(v) is float and not math.isfinite(v)


def _size(x: Any) -> int:
    return int(x.numel()) if isinstance(x, torch.Tensor) else int(x.size)


def _check(
    values: Any, src: np.dtype[Any], to_complex: bool, lim: Limits, name: str, path: str
) -> tuple[Number, Number] | None:
    """Raise ValueRangeError if any value of ``values`` (a tensor or an array) does not fit.

    Returns the exact smallest and largest finite (real) values it found, or ``None`` when
    there were none or the values are complex (parts checked one by one).
    """
    if isinstance(values, torch.Tensor) and values.dtype in _NO_MINMAX:
        values = values.cpu().numpy()
    if src.kind == "c":
        if not to_complex:
            if bool((values.imag != 0).any()):
                raise ValueRangeError(
                    "cast",
                    path,
                    f"a non-zero imaginary part would be dropped casting {src.name} to {name}",
                    "Take .real explicitly, or cast to a complex dtype",
                )
            return _check(values.real, part(src), False, lim, name, path)
        _check(values.real, part(src), False, lim, name, path)
        _check(values.imag, part(src), False, lim, name, path)
        return None
    if is_ml_dtype(src) and (not isinstance(values, torch.Tensor) or values.element_size() == 1):
        # float8 has no min/max kernels in torch, and ml_dtypes arrays none in NumPy:
        # float32 holds every such value exactly.
        values = values.float() if isinstance(values, torch.Tensor) else values.astype(np.float32)
    if _size(values) == 0:
        return None
    lo, hi = _min_max(values)
    extremes = _special(values, lim, name, path) if _nonfinite(lo) or _nonfinite(hi) else (lo, hi)
    if extremes is None:
        return None
    if lim.integer:
        _check_integer(values, extremes, limits(src).integer, lim, name, path)
    else:
        _check_float(extremes, lim, name, path)
    return extremes


def _check_integer(
    values: Any, extremes: tuple[Number, Number], whole: bool, lim: Limits, name: str, path: str
) -> None:
    lo, hi = extremes
    if lo < lim.lo or hi > lim.hi:
        raise ValueRangeError(
            "cast",
            path,
            f"value {_show(lo if lo < lim.lo else hi)} does not fit {name} (range {lim.lo} to {lim.hi})",
            "Clip the data first (np.clip / Tensor.clamp) or choose a wider dtype",
        )
    if not whole:
        xp: Any = torch if isinstance(values, torch.Tensor) else np
        fractional = values != xp.trunc(values)
        if bool(fractional.any()):
            bad = _exact(values[fractional].reshape(-1)[0])
            raise ValueRangeError(
                "cast",
                path,
                f"value {_show(bad)} is not a whole number, and {name} would truncate it",
                "Round explicitly first (np.round / Tensor.round, or floor/ceil)",
            )


def _check_float(extremes: tuple[Number, Number], lim: Limits, name: str, path: str) -> None:
    lo, hi = extremes
    if lim.positive and lo <= 0:
        raise ValueRangeError(
            "cast",
            path,
            f"value {_show(lo)} does not fit {name}, which has no zero and no sign "
            f"(its values run from {_show(lim.lo)} to {_show(lim.hi)})",
            "Take the absolute value and clamp it away from zero first, or choose a signed float dtype",
        )
    bad = hi if rounds_past(hi, lim) else lo if rounds_past(lo, lim) else None
    if bad is not None:
        becomes = "inf" if lim.has_inf else "NaN" if lim.has_nan else "a value it cannot hold"
        edge = lim.overflow if isinstance(lim.overflow, int) else float(lim.overflow)  # ints print in full
        raise ValueRangeError(
            "cast",
            path,
            f"value {_show(bad)} does not fit {name} (finite range {_show(-lim.hi)} to {_show(lim.hi)}; "
            f"magnitudes {'from' if lim.tie_overflows else 'above'} {edge} round to {becomes})",
            "Clip or rescale the data first, or choose a wider dtype",
        )


def _min_max(values: Any) -> tuple[Number, Number]:
    """Both extremes, exactly, in one pass where the backend has one (NaN propagates into either)."""
    if isinstance(values, torch.Tensor) and values.dtype != torch.bool:
        lo, hi = torch.aminmax(values)
        return _exact(lo), _exact(hi)
    if isinstance(values, np.ndarray) and values.dtype.kind == "f" and values.itemsize <= 8:
        return float(values.min()), float(values.max())  # exact: a float holds each of these
    return _exact(values.min()), _exact(values.max())


def _special(values: Any, lim: Limits, name: str, path: str) -> tuple[Number, Number] | None:
    """Handle NaN and infinity; return the range of the finite values (``None``: there are none)."""
    xp: Any = torch if isinstance(values, torch.Tensor) else np
    if not lim.has_nan and bool(xp.isnan(values).any()):
        raise ValueRangeError(
            "cast",
            path,
            f"NaN cannot be represented in {name}",
            "Replace NaN first (np.nan_to_num / Tensor.nan_to_num) or keep a float dtype",
        )
    if not lim.has_inf and bool(xp.isinf(values).any()):
        raise ValueRangeError(
            "cast",
            path,
            f"infinity cannot be represented in {name}",
            "Replace infinities first (np.nan_to_num / Tensor.nan_to_num) or choose a dtype with inf",
        )
    finite = values[xp.isfinite(values)]
    return _min_max(finite) if _size(finite) else None


def _extremes(values: Any) -> tuple[Number, Number] | None:
    """Exact min and max of integers, where they are cheap to find (they let small ones skip pre-rounding)."""
    if isinstance(values, torch.Tensor) and values.dtype in _NO_MINMAX:
        if values.device.type != "cpu":
            return None  # pre-round them all rather than copy them to the host to look
        values = values.numpy()
    return _min_max(values) if _size(values) else None


def _pre_round(x: Any, r: Rounding, extremes: tuple[Number, Number] | None, scratch: Any = None) -> Any:
    if isinstance(x, torch.Tensor) and x.is_complex():
        parts = torch.view_as_real(x)
        room = None if scratch is None else scratch.view(parts.shape)
        return torch.view_as_complex(round_once(parts, r, extremes, room))
    return round_once(x, r, extremes, scratch)


@dataclass(frozen=True)
class _Cast:
    """What a cast from one dtype to another does, decided once per pair."""

    src: np.dtype[Any]
    to_complex: bool
    limits: Limits  # of the target's values (a complex target's parts)
    name: str  # the target, as messages name it
    check: bool
    real: bool  # complex to a real dtype other than bool: keep the (checked) real part
    rounding: Rounding | None


def _decide(
    src: np.dtype[Any], src_part: np.dtype[Any], dst: np.dtype[Any], dst_part: np.dtype[Any], name: str, numpy: bool
) -> _Cast:
    to_complex = dst.kind == "c"
    real = src.kind == "c" and not to_complex and dst.kind != "b"
    rounding = rounding_for(src_part, dst_part, numpy_side=numpy)
    return _Cast(src, to_complex, limits(dst_part), name, _needs_check(src, to_complex, dst_part), real, rounding)


@functools.cache
def _torch_cast(src: torch.dtype, dst: torch.dtype) -> _Cast:
    src_np, dst_np = numpy_dtype(src), numpy_dtype(dst)
    # complex32's NumPy stand-in is complex64; its values are float16 pairs.
    src_part = np.dtype(np.float16) if src == torch.complex32 else part(src_np)
    dst_part = np.dtype(np.float16) if dst == torch.complex32 else part(dst_np)
    return _decide(src_np, src_part, dst_np, dst_part, str(dst).removeprefix("torch."), False)


@functools.cache
def _numpy_cast(src: np.dtype[Any], dst: np.dtype[Any]) -> _Cast:
    return _decide(src, part(src), dst, part(dst), dst.name, True)


def _extremes_for(c: _Cast, values: Any, path: str) -> tuple[Number, Number] | None:
    """Check the values if the cast needs it; return their exact extremes where known."""
    if c.check:
        return _check(values, c.src, c.to_complex, c.limits, c.name, path)
    if c.rounding is not None and c.rounding.source == "int":
        return _extremes(values)
    return None


def cast_tensor(t: torch.Tensor, dst: torch.dtype, path: str) -> torch.Tensor:
    """Cast a tensor to ``dst`` into fresh memory on its device, refusing values that do not fit."""
    c = _torch_cast(t.dtype, dst)
    # One multithreaded min/max pass, then the cast: measured faster here than checking in
    # cache-sized blocks, whose per-block dispatch costs more than the cache saves.
    extremes = _extremes_for(c, t, path)
    if c.real:
        t = t.real  # checked: the imaginary part is zero
    if c.rounding is not None and c.rounding.needed(extremes):
        return _pre_round_and_cast(t, c.rounding, dst, extremes)
    if t.device.type != "cpu":
        return t.to(dst, copy=True)
    return host_copy(t, dst)


# Pre-rounding on the CPU works through blocks of this many values: its temporaries then stay
# in cache, and the final cast writes straight into the result.
_BLOCK: Final = 1 << 18


def _pre_round_and_cast(
    t: torch.Tensor, r: Rounding, dst: torch.dtype, extremes: tuple[Number, Number] | None
) -> torch.Tensor:
    t = t.resolve_conj().resolve_neg()  # the pre-rounding works on the bits, so lazy signs must be applied
    if t.device.type != "cpu" or not t.is_contiguous() or t.numel() <= _BLOCK:
        x = _pre_round(t, r, extremes)
        return x.to(dst, copy=True) if x.device.type != "cpu" else host_copy(x, dst)
    out = host_empty(tuple(t.shape), dst)
    src, flat = t.reshape(-1), out.view(-1)
    scratch = torch.empty(2 * _BLOCK if t.is_complex() else _BLOCK, dtype=torch.int64)
    for i in range(0, src.numel(), _BLOCK):
        block = src[i : i + _BLOCK]
        room = scratch[: block.numel() * (2 if t.is_complex() else 1)]
        flat[i : i + _BLOCK].copy_(_pre_round(block, r, extremes, room))
    return out


def _native(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def _cast_values(
    data: np.ndarray[Any, Any], mask: np.ndarray[Any, Any] | None, dst: np.dtype[Any], path: str
) -> np.ndarray[Any, Any]:
    """Check the values of ``data`` that ``mask`` leaves (all without one), then cast ``data`` to ``dst``."""
    c = _numpy_cast(data.dtype, dst)
    extremes = _extremes_for(c, data if mask is None else data[~mask], path) if c.check or c.rounding else None
    values = data.real if c.real else data
    with np.errstate(all="ignore"):
        if c.rounding is not None and c.rounding.needed(extremes):
            values = _pre_round(_native(values), c.rounding, extremes)
        return _astype(values, dst)


def _astype(values: np.ndarray[Any, Any], dst: np.dtype[Any]) -> np.ndarray[Any, Any]:
    try:
        return values.astype(dst, order="K")
    except TypeError:
        # ml_dtypes 0.5 (the last for NumPy 1.x) registers no casts between some of its own kinds
        # (float8_e8m0fnu <-> the other float8s). float32 holds every value of a float of 16 bits
        # or fewer exactly, so the detour is still one rounding.
        if not (is_ml_dtype(values.dtype) and values.dtype.itemsize <= 2):
            raise
        return values.astype(np.float32, order="K").astype(dst, order="K")


def cast_array(a: np.ndarray[Any, Any], dst: np.dtype[Any], path: str) -> np.ndarray[Any, Any]:
    """Cast a NumPy array to ``dst``, refusing values that do not fit.

    A masked array stays masked: only its unmasked values are checked, and the mask is
    copied onto the result (NumPy's own astype would also carry over a fill value that may
    not fit the new dtype, so the result gets the new dtype's default).
    """
    if isinstance(a, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(a)
        data = np.ma.getdata(a)
        values = _cast_values(data, mask, dst, path)
        out: np.ndarray[Any, Any] = np.ma.masked_array(values, mask=mask.copy())
        return out
    return _cast_values(a, None, dst, path)
