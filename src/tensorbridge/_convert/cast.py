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
from typing import Any

import ml_dtypes
import numpy as np
import torch

from ..dtypes import numpy_dtype
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


@functools.cache
def _limits(dt: np.dtype[Any]) -> _Limits:
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return _Limits(float(info.min), float(info.max), True, False, False)
    if dt.kind == "c":
        dt = np.dtype(f"f{dt.itemsize // 2}")
    finder: Any = ml_dtypes.finfo if dt.kind == "V" else np.finfo
    finfo: Any = finder(dt)
    with np.errstate(all="ignore"):
        special = np.array([np.nan, np.inf], np.float32).astype(dt).astype(np.float32)
    return _Limits(float(finfo.min), float(finfo.max), False, bool(np.isnan(special[0])), bool(np.isinf(special[1])))


def needs_check(src: np.dtype[Any], dst: np.dtype[Any]) -> bool:
    """Return whether a cast from ``src`` to ``dst`` can change a value beyond rounding."""
    if dst.kind == "b" or src.kind == "b":
        return False  # to bool means "non-zero"; bool fits every type
    if src.kind == "c" and dst.kind != "c":
        return True
    if np.can_cast(src, dst, "safe"):
        return False
    if src.kind in "iu" and dst.kind in "fcV":
        s, d = _limits(src), _limits(dst)
        return s.hi > d.hi or s.lo < d.lo
    return True


def _is_float(dt: np.dtype[Any]) -> bool:
    return dt.kind in "fV"


def _size(x: Any) -> int:
    return int(x.numel()) if isinstance(x, torch.Tensor) else int(x.size)


def _check(chunk: Any, src: np.dtype[Any], dst: np.dtype[Any], path: str) -> None:
    """Raise ValueRangeError if any value of ``chunk`` (a tensor or an array) does not fit ``dst``."""
    lim = _limits(dst)
    if src.kind == "c":
        if dst.kind != "c":
            imag = chunk.imag
            if bool((imag != 0).any()):
                raise ValueRangeError(
                    "cast",
                    path,
                    f"a non-zero imaginary part would be dropped casting {src.name} to {dst.name}",
                    "Take .real explicitly, or cast to a complex dtype",
                )
            _check(chunk.real, np.dtype(f"f{src.itemsize // 2}"), dst, path)
            return
        part = np.dtype(f"f{src.itemsize // 2}")
        _check(chunk.real, part, dst, path)
        _check(chunk.imag, part, dst, path)
        return
    if src.kind == "V" or (isinstance(chunk, torch.Tensor) and chunk.element_size() == 1 and _is_float(src)):
        chunk = chunk.float() if isinstance(chunk, torch.Tensor) else chunk.astype(np.float32)
    if _size(chunk) == 0:
        return
    lo, hi = _min_max(chunk)
    if math.isnan(lo) or math.isnan(hi) or math.isinf(lo) or math.isinf(hi):
        lo, hi = _special(chunk, src, dst, lim, path)
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
        if src.kind in "fV":
            xp: Any = torch if isinstance(chunk, torch.Tensor) else np
            fractional = chunk != xp.trunc(chunk)
            if bool(fractional.any()):
                bad = float(chunk[fractional].reshape(-1)[0])
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


def _min_max(chunk: Any) -> tuple[float, float]:
    """Both extremes in one pass where the backend has one (NaN propagates into either)."""
    if isinstance(chunk, torch.Tensor) and chunk.dtype != torch.bool:
        lo, hi = torch.aminmax(chunk)
        return float(lo), float(hi)
    return float(chunk.min()), float(chunk.max())


def _special(chunk: Any, src: np.dtype[Any], dst: np.dtype[Any], lim: _Limits, path: str) -> tuple[float, float]:
    """Handle NaN and infinity in a chunk; return the range of its finite values."""
    xp: Any = torch if isinstance(chunk, torch.Tensor) else np
    finite_mask = xp.isfinite(chunk)
    if bool(xp.isnan(chunk).any()) and not lim.has_nan:
        raise ValueRangeError(
            "cast",
            path,
            f"NaN cannot be represented in {dst.name}",
            "Replace NaN first (np.nan_to_num / Tensor.nan_to_num) or keep a float dtype",
        )
    if bool(xp.isinf(chunk).any()) and not lim.has_inf:
        raise ValueRangeError(
            "cast",
            path,
            f"infinity cannot be represented in {dst.name}",
            "Replace infinities first (np.nan_to_num / Tensor.nan_to_num) or choose a dtype with inf",
        )
    finite = chunk[finite_mask]
    if _size(finite) == 0:
        return 0.0 if lim.lo <= 0 else lim.lo, 0.0 if lim.lo <= 0 else lim.lo
    return float(finite.min()), float(finite.max())


def cast_tensor(t: torch.Tensor, dst: torch.dtype, path: str) -> torch.Tensor:
    """Cast a tensor to ``dst`` into fresh memory on its device, refusing values that do not fit."""
    src_np, dst_np = numpy_dtype(t.dtype), numpy_dtype(dst)
    on_host = t.device.type == "cpu"
    if not needs_check(src_np, dst_np):
        return host_copy(t, dst) if on_host else t.to(dst, copy=True)
    if src_np.kind == "c" and dst_np.kind != "c":
        _check(t, src_np, dst_np, path)
        return host_copy(t.real, dst) if on_host else t.real.to(dst, copy=True)
    # One multithreaded min/max pass, then the cast: measured faster here than checking in
    # cache-sized chunks, whose per-chunk dispatch costs more than the cache saves.
    _check(t, src_np, dst_np, path)
    return host_copy(t, dst) if on_host else t.to(dst, copy=True)


def cast_array(a: np.ndarray[Any, Any], dst: np.dtype[Any], path: str) -> np.ndarray[Any, Any]:
    """Cast an array NumPy alone can read (e.g. longdouble) to ``dst``, refusing values that do not fit."""
    if needs_check(a.dtype, dst):
        _check(a, a.dtype, dst, path)
    with np.errstate(all="ignore"):
        return (a.real if a.dtype.kind == "c" and dst.kind != "c" else a).astype(dst, order="K")
