"""Exact dtype limits, and the pre-rounding that makes a narrowing cast round only once.

torch converts to float16, bfloat16, the float8 kinds and complex32 through float32, and
ml_dtypes (through 0.6) converts every source to its types through float32 too. A value
float32 cannot hold is then rounded twice, and the second rounding can go the wrong way:
float64 ``1 + 2**-8 + 2**-40`` lies above the midpoint between the bfloat16 neighbours 1
and 1.0078125, float32 rounds it onto that midpoint, and the tie then goes to 1.

The fix is rounding to odd. Round the exact value to an intermediate precision of at least
the target's plus two bits, but instead of rounding to nearest, truncate and set the last
kept bit whenever anything non-zero was dropped (a "sticky" bit). The intermediate then
never sits on a midpoint or a value of the target unless the exact value does, and it lies
on the same side of each, so the one rounding to nearest that follows gives exactly the
nearest value of the exact source (Boldo & Melquiond, "When double rounding is odd", 2005).
Here the intermediate is a float64 whose low mantissa bits are folded into a sticky bit,
keeping ``p + 2`` significant bits for a target of ``p``; such a value converts to float32
exactly, so the library's own conversion through float32 is then the single rounding.

Integers wider than float64's 53 bits get the same treatment in integer arithmetic first,
and longdouble is rounded to odd into float64 by comparing back. A source the intermediate
already holds exactly (float32, float16, small integers) needs nothing: its cast is the fast
path, untouched.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

import ml_dtypes
import numpy as np
import torch

from ..dtypes import is_ml_dtype

__all__ = ["Limits", "Rounding", "limits", "part", "round_once", "rounding_for"]

Number = int | float | Fraction


@dataclass(frozen=True)
class Limits:
    """What a dtype holds, as exact Python numbers.

    Attributes:
        integer: whether the dtype holds whole numbers only.
        lo: the smallest value (integers), ``-top`` (floats), or the smallest positive value
            of a float with no sign (float8_e8m0fnu).
        hi: the largest finite value.
        overflow: floats: the magnitude from which rounding goes past ``hi`` (``hi`` plus
            half its spacing); integers: unused.
        tie_overflows: whether a magnitude of exactly ``overflow`` rounds past ``hi`` (a tie
            goes to the even neighbour; past ``hi`` when ``hi`` is odd, or always where a
            type has no mantissa bits, whose ties go up in both ml_dtypes and torch).
        positive: the type has no zero and no sign (float8_e8m0fnu): values <= 0 do not fit.
        has_nan: whether NaN is representable.
        has_inf: whether infinity is representable.
        precision: floats: significant bits, the implicit one included; integers: 0.
    """

    integer: bool
    lo: Number
    hi: Number
    overflow: Number
    tie_overflows: bool
    positive: bool
    has_nan: bool
    has_inf: bool
    precision: int


def part(dt: np.dtype[Any]) -> np.dtype[Any]:
    """The real dtype of a complex dtype's parts; any other dtype itself."""
    return np.dtype(f"f{dt.itemsize // 2}") if dt.kind == "c" else dt


def _ml_is_float(dt: np.dtype[Any]) -> bool:
    try:
        finder: Any = ml_dtypes.finfo
        finder(dt)
    except (TypeError, ValueError):
        return False
    return True


@functools.cache
def limits(dt: np.dtype[Any]) -> Limits:
    """The exact limits of a real dtype (a complex one's parts: pass ``part(dt)``)."""
    if not dt.isnative:
        return limits(dt.newbyteorder("="))
    if dt.kind == "b":
        return Limits(True, 0, 1, 0, False, False, False, False, 0)
    if dt.kind in "iu" or (is_ml_dtype(dt) and not _ml_is_float(dt)):  # int4, uint4, int2...
        finder: Any = np.iinfo if dt.kind in "iu" else ml_dtypes.iinfo
        info = finder(dt)
        return Limits(True, int(info.min), int(info.max), 0, False, False, False, False, 0)
    ffinder: Any = ml_dtypes.finfo  # NumPy's finfo does not know ml_dtypes; this one knows both
    finfo: Any = ffinder(dt)
    with np.errstate(all="ignore"):
        special = np.array([np.nan, np.inf], np.float32).astype(dt).astype(np.float32)
    has_nan, has_inf = bool(np.isnan(special[0])), bool(np.isinf(special[1]))
    if dt.itemsize > 8:
        # longdouble holds every value of every other dtype: nothing rounds past it.
        return Limits(False, -math.inf, math.inf, math.inf, False, False, has_nan, has_inf, int(finfo.nmant) + 1)
    top = float(finfo.max)
    nmant = int(finfo.nmant)
    spacing = Fraction(2) ** (math.frexp(top)[1] - 1 - nmant)  # between top and the value after it
    overflow = Fraction(top) + spacing / 2
    top_code = int(np.array(top).astype(dt).view(f"u{dt.itemsize}")[()])
    tie_overflows = nmant == 0 or top_code % 2 == 1
    positive = float(finfo.min) > 0
    lo: Number = float(finfo.min) if positive else -top
    exact_overflow: Number = int(overflow) if overflow.denominator == 1 else overflow
    return Limits(False, lo, top, exact_overflow, tie_overflows, positive, has_nan, has_inf, nmant + 1)


def rounds_past(v: Number, lim: Limits) -> bool:
    """Whether rounding the finite value ``v`` to the nearest value of a float dtype passes its largest."""
    mag = -v if v < 0 else v
    return mag > lim.overflow or (mag == lim.overflow and lim.tie_overflows)


@dataclass(frozen=True)
class Rounding:
    """How to pre-round a source so that the library's cast to the target rounds once.

    Attributes:
        source: ``"float64"``, ``"longdouble"``, ``"int"`` (a 32- or 64-bit integer), or
            ``"none"`` when only ``lift`` applies.
        drop: float64 mantissa bits folded into the sticky bit (53 minus the target's
            precision plus two).
        lift: a type without zero (float8_e8m0fnu): raise values below the midpoint of its
            two smallest values to the smallest first. torch misrounds float32 subnormals to
            it, and a sticky bit can leave a tiny value that float32 flushes to 0, which
            ml_dtypes turns into NaN.
        via_float32: NumPy side: cast the pre-rounded float64 to float32 (exact) before the
            final cast, which ml_dtypes does several times faster from float32.
        tiny: the target's smallest positive value (what ``lift`` raises to).
    """

    source: str
    drop: int
    lift: bool
    via_float32: bool
    tiny: float

    def needed(self, extremes: tuple[Number, Number] | None) -> bool:
        """Whether values with these exact extremes (``None``: unknown) need any of it.

        Integers float32 holds exactly already round once (the NumPy side still takes them
        through float32, for speed), and a type without zero needs no lifting when every
        value is at least its second-smallest value.
        """
        if extremes is None:
            return True
        lo, hi = extremes
        if self.source == "int":
            return self.via_float32 or max(-lo, hi) >= _EXACT_IN_FLOAT32
        return self.source != "none" or lo < 2 * self.tiny


def _smallest(dt: np.dtype[Any]) -> float:
    finder: Any = ml_dtypes.finfo
    return float(finder(dt).smallest_subnormal)


# Integers below this are exact in float32: their casts round once already.
_EXACT_IN_FLOAT32: Final = 2**24
_EXACT_IN_FLOAT64: Final = 2**53


@functools.cache
def rounding_for(src: np.dtype[Any], dst: np.dtype[Any], *, numpy_side: bool) -> Rounding | None:
    """The pre-rounding a cast from ``src`` to ``dst`` (real dtypes, or complex parts) needs, if any.

    ``None`` for every cast that rounds once by itself: to float32, float64 and integers,
    and from every source float32 holds exactly. On the NumPy side float64 -> float16 is
    direct (NumPy rounds it once); longdouble -> float16 goes through float64 there.
    """
    s, d = limits(src), limits(dst)
    if d.integer or d.precision > 11 or src == dst:  # float16 has 11 bits; float32 holds p + 2 for all of these
        return None
    drop = 53 - (d.precision + 2)
    via_float32 = numpy_side and is_ml_dtype(dst)
    # Only sources with values below the second-smallest of such a type need lifting (float32,
    # bfloat16, float64): float16 and float8 reach no lower than 2**-24.
    lift = d.positive and not s.integer and _smallest(src) < 2 * d.lo
    tiny = float(d.lo) if d.positive else 0.0
    if not s.integer and s.precision > 24:
        wide = "longdouble" if src.itemsize > 8 else "float64"
        if numpy_side and wide == "float64" and not is_ml_dtype(dst):
            return None  # NumPy rounds float64 -> float16 once
        return Rounding(wide, drop, lift, via_float32, tiny)
    if s.integer and s.hi >= _EXACT_IN_FLOAT32 and d.overflow > _EXACT_IN_FLOAT32:
        return Rounding("int", drop, False, via_float32, tiny)
    return Rounding("none", drop, True, False, tiny) if lift else None


def _is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _view(x: Any, name: str) -> Any:
    return x.view(getattr(torch, name)) if _is_torch(x) else x.view(np.dtype(name))


def _to(x: Any, name: str) -> Any:
    return x.to(getattr(torch, name)) if _is_torch(x) else x.astype(name)


def _where(cond: Any, a: Any, b: Any) -> Any:
    return torch.where(cond, a, b) if _is_torch(b) else np.where(cond, a, b)


def _sticky(x: Any, drop: int, scratch: Any = None) -> Any:
    """Round float64 values to odd at ``53 - drop`` bits: truncate, and set the last kept bit if anything was cut.

    ``scratch``, an int64 array or tensor shaped like ``x``, receives the result (else a new one).
    """
    mask = (1 << drop) - 1
    bits = _view(x, "int64")
    # (bits & mask) + mask carries into bit `drop` exactly when a dropped bit is set; OR-ing that
    # carry in and clearing the dropped bits truncates with a sticky bit. Works for either sign:
    # round-to-odd keeps the odd neighbour, whichever way truncation went. NaN stays NaN (its
    # payload keeps a bit), infinity has no dropped bits.
    if scratch is None:
        out = bits & mask
    else:
        out = scratch
        (torch if _is_torch(x) else np).bitwise_and(bits, mask, out=out)
    out += mask
    out |= bits
    out &= ~mask
    return _view(out, "float64")


def _ints_to_float64(x: Any, unsigned: bool) -> Any:
    """Round 64-bit integers of 54 bits or more to odd at bit 11, so float64 then holds them exactly."""
    mask = (1 << 11) - 1
    bits = _view(x, "int64")  # uint64 too: the bit operations below do not depend on the sign
    big = (bits >= _EXACT_IN_FLOAT64) | (bits < (0 if unsigned else -_EXACT_IN_FLOAT64))
    odd = bits & mask
    odd += mask
    odd |= bits
    odd &= ~mask
    return _to(_view(_where(big, odd, bits), "uint64" if unsigned else "int64"), "float64")


def _longdouble_to_float64(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Round longdouble to odd into float64: round to nearest, then step toward zero and set the sticky bit."""
    y = x.astype(np.float64)
    back = y.astype(x.dtype)
    bits = y.view(np.int64)
    # The step toward zero lands on the truncation; OR-ing the inexact flag in makes it odd.
    bits -= (np.abs(back) > np.abs(x)).astype(np.int64)
    bits |= (back != x).astype(np.int64)
    return y


def round_once(x: Any, r: Rounding, extremes: tuple[Number, Number] | None, scratch: Any = None) -> Any:
    """Return ``x`` pre-rounded per ``r`` (a new array or tensor), or ``x`` itself when it needs nothing.

    ``extremes`` are the exact smallest and largest values of ``x`` where a check found them
    (see :meth:`Rounding.needed`). ``scratch`` (int64, shaped like ``x``) receives the result
    of the last step when given.
    """
    if r.lift and (extremes is None or extremes[0] < 2 * r.tiny):
        # Everything below 1.5 * tiny rounds to tiny (a tie goes up, as ml_dtypes and torch do).
        tiny = torch.tensor(r.tiny, dtype=x.dtype, device=x.device) if _is_torch(x) else x.dtype.type(r.tiny)
        x = _where(x < 1.5 * r.tiny, tiny, x)
    if r.source == "none":
        return x
    if r.source == "int":
        largest = None if extremes is None else max(-extremes[0], extremes[1])
        if largest is not None and largest < _EXACT_IN_FLOAT32:
            return _to(x, "float32") if r.via_float32 else x  # exact either way
        wide = x.element_size() if _is_torch(x) else x.itemsize
        if wide == 8 and (largest is None or largest >= _EXACT_IN_FLOAT64):
            unsigned = x.dtype == torch.uint64 if _is_torch(x) else x.dtype.kind == "u"
            x = _ints_to_float64(x, unsigned)
        else:
            x = _to(x, "float64")
    elif r.source == "longdouble":
        x = _longdouble_to_float64(x)
    x = _sticky(x, r.drop, scratch)
    return _to(x, "float32") if r.via_float32 else x
