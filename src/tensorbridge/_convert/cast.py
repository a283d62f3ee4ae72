"""Checked dtype casts: a cast that would change a value beyond rounding raises instead.

Rounding to the nearest representable value (float64 -> float32, int64 -> float32) is what
an explicit ``dtype=`` asks for. What it does not ask for is a value that does not fit:
300 -> uint8 wrapping to 44, 1e300 -> float32 becoming inf, NaN -> int, 1.5 -> int truncated
to 1, a non-zero imaginary part dropped, a negative number cast to an unsigned type. Those
raise ``ValueRangeError``.

Casts that cannot lose range skip the check. A checked cast reads the source once more
(one multithreaded min/max pass) before casting.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Final

import ml_dtypes
import numpy as np
import torch

from ..dtypes import is_ml_dtype, numpy_dtype
from ..errors import ValueRangeError
from .alloc import host_copy

__all__ = ["cast_array", "cast_tensor", "needs_check"]


@dataclass(frozen=True)
class _Limits:
    lo: float
    hi: float
    integer: bool
    has_nan: bool
    has_inf: bool


def _ml_is_float(dt: np.dtype[Any]) -> bool:
    try:
        finder: Any = ml_dtypes.finfo
        finder(dt)
    except (TypeError, ValueError):
        return False
    return True


@functools.cache
def _limits(dt: np.dtype[Any]) -> _Limits:
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return _Limits(float(info.min), float(info.max), True, False, False)
    if dt.kind == "b":
        return _Limits(0.0, 1.0, True, False, False)
    if dt.kind == "c":
        dt = np.dtype(f"f{dt.itemsize // 2}")
    if is_ml_dtype(dt) and not _ml_is_float(dt):  # int4, uint4, int2...
        iinfo: Any = ml_dtypes.iinfo
        small = iinfo(dt)
        return _Limits(float(small.min), float(small.max), True, False, False)
    finder: Any = ml_dtypes.finfo  # NumPy's finfo does not know ml_dtypes; this one knows both
    finfo: Any = finder(dt)
    with np.errstate(all="ignore"):
        special = np.array([np.nan, np.inf], np.float32).astype(dt).astype(np.float32)
    return _Limits(float(finfo.min), float(finfo.max), False, bool(np.isnan(special[0])), bool(np.isinf(special[1])))


def needs_check(src: np.dtype[Any], dst: np.dtype[Any]) -> bool:
    """Return whether a cast from ``src`` to ``dst`` can change a value beyond rounding.

    Decided from the value ranges alone (not ``np.can_cast``, which ml_dtypes answers for
    precision rather than range).
    """
    if dst.kind == "b" or src.kind == "b":
        return False  # to bool means "non-zero"; bool fits every type
    if src.kind == "c" and dst.kind != "c":
        return True
    s, d = _limits(src), _limits(dst)
    if s.lo < d.lo or s.hi > d.hi:
        return True
    if d.integer:
        return not s.integer  # NaN, inf and fractions
    return (s.has_nan and not d.has_nan) or (s.has_inf and not d.has_inf)


# Casts where torch rounds twice (float64 -> float32 -> float16) and so misses the nearest
# value in ~1 of 10^4 cases; NumPy rounds once. Every other pair in the table agrees
# (checked in tests/test_to_tensor.py against a brute-force nearest value).
_NUMPY_ROUNDS: Final = frozenset({(torch.float64, torch.float16)})

# torch has no min/max kernels for these; their values are checked through a NumPy view.
_NO_MINMAX: Final = frozenset({getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)})


def _size(x: Any) -> int:
    return int(x.numel()) if isinstance(x, torch.Tensor) else int(x.size)


def _check(values: Any, src: np.dtype[Any], dst: np.dtype[Any], path: str) -> None:
    """Raise ValueRangeError if any value of ``values`` (a tensor or an array) does not fit ``dst``."""
    lim = _limits(dst)
    if isinstance(values, torch.Tensor) and values.dtype in _NO_MINMAX:
        values = values.cpu().numpy()
    if src.kind == "c":
        if dst.kind != "c":
            imag = values.imag
            if bool((imag != 0).any()):
                raise ValueRangeError(
                    "cast",
                    path,
                    f"a non-zero imaginary part would be dropped casting {src.name} to {dst.name}",
                    "Take .real explicitly, or cast to a complex dtype",
                )
            _check(values.real, np.dtype(f"f{src.itemsize // 2}"), dst, path)
            return
        part = np.dtype(f"f{src.itemsize // 2}")
        _check(values.real, part, dst, path)
        _check(values.imag, part, dst, path)
        return
    if is_ml_dtype(src) and (not isinstance(values, torch.Tensor) or values.element_size() == 1):
        # float8 has no min/max kernels in torch, and ml_dtypes arrays none in NumPy:
        # float32 holds every such value exactly.
        values = values.float() if isinstance(values, torch.Tensor) else values.astype(np.float32)
    if _size(values) == 0:
        return
    lo, hi = _min_max(values)
    if math.isnan(lo) or math.isnan(hi) or math.isinf(lo) or math.isinf(hi):
        lo, hi = _special(values, src, dst, lim, path)
    if lim.integer:
        # Casting to an integer truncates toward zero: v fits when lo - 1 < v < hi + 1.
        if lo <= lim.lo - 1 or hi >= lim.hi + 1:
            bad = lo if lo <= lim.lo - 1 else hi
            raise ValueRangeError(
                "cast",
                path,
                f"value {bad:g} does not fit {dst.name} (range {lim.lo:g} to {lim.hi:g})",
                "Clip the data first (np.clip / Tensor.clamp) or choose a wider dtype",
            )
        if src.kind == "f" or is_ml_dtype(src):
            xp: Any = torch if isinstance(values, torch.Tensor) else np
            fractional = values != xp.trunc(values)
            if bool(fractional.any()):
                bad = float(values[fractional].reshape(-1)[0])
                raise ValueRangeError(
                    "cast",
                    path,
                    f"value {bad:g} is not a whole number, and {dst.name} would truncate it",
                    "Round explicitly first (np.round / Tensor.round, or floor/ceil)",
                )
        return
    if lo < lim.lo or hi > lim.hi:
        bad = lo if lo < lim.lo else hi
        raise ValueRangeError(
            "cast",
            path,
            f"value {bad:g} does not fit {dst.name} (finite range {lim.lo:g} to {lim.hi:g})",
            "Clip or rescale the data first, or choose a wider dtype",
        )


def _min_max(values: Any) -> tuple[float, float]:
    """Both extremes in one pass where the backend has one (NaN propagates into either)."""
    if isinstance(values, torch.Tensor) and values.dtype != torch.bool:
        lo, hi = torch.aminmax(values)
        return float(lo), float(hi)
    return float(values.min()), float(values.max())


def _special(values: Any, src: np.dtype[Any], dst: np.dtype[Any], lim: _Limits, path: str) -> tuple[float, float]:
    """Handle NaN and infinity; return the range of the finite values."""
    xp: Any = torch if isinstance(values, torch.Tensor) else np
    finite_mask = xp.isfinite(values)
    if bool(xp.isnan(values).any()) and not lim.has_nan:
        raise ValueRangeError(
            "cast",
            path,
            f"NaN cannot be represented in {dst.name}",
            "Replace NaN first (np.nan_to_num / Tensor.nan_to_num) or keep a float dtype",
        )
    if bool(xp.isinf(values).any()) and not lim.has_inf:
        raise ValueRangeError(
            "cast",
            path,
            f"infinity cannot be represented in {dst.name}",
            "Replace infinities first (np.nan_to_num / Tensor.nan_to_num) or choose a dtype with inf",
        )
    finite = values[finite_mask]
    if _size(finite) == 0:
        return 0.0 if lim.lo <= 0 else lim.lo, 0.0 if lim.lo <= 0 else lim.lo
    return float(finite.min()), float(finite.max())


def cast_tensor(t: torch.Tensor, dst: torch.dtype, path: str) -> torch.Tensor:
    """Cast a tensor to ``dst`` into fresh memory on its device, refusing values that do not fit."""
    src_np, dst_np = numpy_dtype(t.dtype), numpy_dtype(dst)
    if needs_check(src_np, dst_np):
        # One multithreaded min/max pass, then the cast: measured faster here than checking in
        # cache-sized valuess, whose per-values dispatch costs more than the cache saves.
        _check(t, src_np, dst_np, path)
    if src_np.kind == "c" and dst_np.kind != "c":
        t = t.real  # checked above: the imaginary part is zero
    if t.device.type != "cpu":
        return t.to(dst, copy=True)
    if (t.dtype, dst) in _NUMPY_ROUNDS:
        return torch.from_numpy(t.numpy().astype(dst_np, order="K"))
    return host_copy(t, dst)


def cast_array(a: np.ndarray[Any, Any], dst: np.dtype[Any], path: str) -> np.ndarray[Any, Any]:
    """Cast a NumPy array to ``dst``, refusing values that do not fit.

    A masked array stays masked: only its unmasked values are checked, and the mask is
    copied onto the result (NumPy's own astype would also carry over a fill value that may
    not fit the new dtype, so the result gets the new dtype's default).
    """
    if isinstance(a, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(a)
        data = np.ma.getdata(a)
        if needs_check(a.dtype, dst):
            _check(data[~mask], a.dtype, dst, path)
        with np.errstate(all="ignore"):
            values = (data.real if a.dtype.kind == "c" and dst.kind != "c" else data).astype(dst, order="K")
        out: np.ndarray[Any, Any] = np.ma.masked_array(values, mask=mask.copy())
        return out
    if needs_check(a.dtype, dst):
        _check(a, a.dtype, dst, path)
    with np.errstate(all="ignore"):
        return (a.real if a.dtype.kind == "c" and dst.kind != "c" else a).astype(dst, order="K")
