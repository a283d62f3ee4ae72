"""pandas values a NumPy array cannot hold as they are: missing values filled, datetimes as int64 counts.

Missing values (``pd.NA``, ``NaT``) raise unless ``na_value=`` is given; then they are filled
with it, checked like a cast against ``dtype=`` or else the column's own dtype
(:func:`_fill`). ``datetime64``/``timedelta64`` values become int64 counts of ``datetime_unit``,
exactly or not at all (:func:`_datetimes`, planned from the dtype alone by
:func:`_datetimes_plan`). The rules as a user sees them are in ``pandas.py``'s module docs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import numpy as np

from ..errors import UnsupportedError, ValueRangeError
from ..ops.cast import cast_array
from ..plan.core import NO_VALUE
from ._pandas_common import _NUMERIC, _Column, _Ctx, _float_example, _Plan

# One unit in nanoseconds; every unit is a whole multiple of each finer one.
_NS: Final = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "D": 86400 * 10**9}
_INT64_MAX: Final = int(np.iinfo(np.int64).max)


def _filler(ctx: _Ctx, dt: np.dtype[Any], label: str, x: str) -> Any:
    """``na_value`` as a scalar of ``dt``; raise if it is not a value of ``dt``."""
    value = ctx.io.na_value
    fix = f"Pass an na_value that {dt} holds, or a dtype= that holds it, or fill first: {x}.fillna(...)"
    if dt.kind == "b":
        if isinstance(value, (bool, np.bool_)):
            return np.bool_(value)
        raise ValueRangeError(ctx.what, ctx.path, f"na_value {value!r} is not a bool, and {label} is bool", fix)
    given = np.asarray(value) if isinstance(value, (int, float, complex, np.generic)) else None
    if given is None or given.dtype.kind not in _NUMERIC:
        raise ValueRangeError(ctx.what, ctx.path, f"na_value {value!r} is not a number {dt} can hold", fix)
    try:
        return cast_array(given.reshape(1), dt, ctx.path)[0]
    except ValueRangeError as err:
        cause = f"na_value {value!r} cannot fill {label} as {dt}: {err.cause}"
        raise ValueRangeError(ctx.what, ctx.path, cause, fix) from err


def _fill(
    ctx: _Ctx, data: np.ndarray[Any, Any], missing: np.ndarray[Any, Any], label: str, x: str, kind: str
) -> _Column:
    """Fill the missing values of ``data`` (fresh memory) with ``na_value``, cast to ``dtype=`` first if given."""
    count = int(missing.sum())
    if ctx.io.na_value is NO_VALUE:
        if kind == "NaT":
            how = "an int64 count of the unit, e.g. na_value=-1"
        else:
            how = f"checked against dtype=; for NaN: dtype={_float_example(ctx)}, na_value=float('nan')"
        raise ValueRangeError(
            ctx.what,
            ctx.path,
            f"{label} has {count} missing value{'s' * (count != 1)} ({kind}) among {missing.size}, "
            "and a NumPy array has no missing value",
            f"Pass na_value=... to fill them ({how}), or fill them first: {x}.fillna(...)",
        )
    if not data.flags.writeable:  # pyarrow hands out read-only memory even when asked for a copy
        data = data.copy()
    dt = data.dtype
    if ctx.target is not None and ctx.target != dt:
        data[missing] = 0  # placeholders, so the checked cast sees only real values
        data = cast_array(data, ctx.target, ctx.path)
    data[missing] = _filler(ctx, data.dtype, label, x)
    return _Column(data, True, f"{count} missing filled with {ctx.io.na_value!r} as {data.dtype}")


def _unit(ctx: _Ctx, label: str, shown: str) -> str:
    """The ``datetime_unit`` datetimes/timedeltas become counts of, or the refusal (planning and conversion alike)."""
    unit = ctx.io.datetime_unit
    if unit is None:
        raise UnsupportedError(
            ctx.what,
            ctx.path,
            f"{label} holds {shown} values, which have no tensor dtype",
            "Pass datetime_unit='ns' (or 'us', 'ms', 's', 'D') for int64 counts of that unit since the epoch",
        )
    return unit


def _datetimes(ctx: _Ctx, a: np.ndarray[Any, Any], label: str, x: str, shown: str, utc: bool) -> _Column:
    """datetime64/timedelta64 values -> int64 counts of ``datetime_unit``, exactly or not at all."""
    unit = _unit(ctx, label, shown)
    src_unit, count = np.datetime_data(a.dtype)
    if src_unit not in _NS:
        raise UnsupportedError(ctx.what, ctx.path, f"{label} has unit {src_unit!r}", f"Convert {x}.astype(...) first")
    src, dst = _NS[src_unit] * count, _NS[unit]
    ints = a.view(np.int64)
    missing = np.isnat(a)
    some_missing = bool(missing.any())
    valid = ints[~missing] if some_missing else ints
    what = f"{shown} -> int64 {unit} {'since the epoch' if a.dtype.kind == 'M' else 'counts'}" + (
        " (UTC instants)" if utc else ""
    )
    if src == dst and not some_missing:
        return _Column(ints, False, what)
    if src >= dst:
        scale = src // dst
        if valid.size and max(-int(valid.min()), int(valid.max())) > _INT64_MAX // scale:
            bad = a[~missing][np.argmax(np.abs(valid))]
            raise ValueRangeError(
                ctx.what,
                ctx.path,
                f"{label} value {bad} overflows int64 as {unit} counts",
                "Pass a coarser datetime_unit",
            )
        out = ints * scale
    else:
        scale = dst // src
        rest = valid % scale
        if rest.any():
            bad = a[~missing][np.flatnonzero(rest)[0]]
            raise ValueRangeError(
                ctx.what,
                ctx.path,
                f"{label} value {bad} is not a whole number of {unit!r}",
                f"Pass a finer datetime_unit, e.g. '{src_unit}', or round first: {x}.dt.floor('{unit}')",
            )
        out = ints // scale
    if some_missing:
        col = _fill(ctx, out, missing, label, x, "NaT")
        col.note = f"{what}; {col.note}"
        return col
    return _Column(out, True, what)


def _datetimes_plan(
    ctx: _Ctx, src: np.dtype[Any], get: Callable[[], _Column], label: str, x: str, shown: str, utc: bool
) -> _Plan:
    """Plan datetime64/timedelta64 values of dtype ``src`` -> int64 counts of ``datetime_unit`` (see ``_datetimes``)."""
    unit = _unit(ctx, label, shown)
    src_unit, count = np.datetime_data(src)
    if src_unit not in _NS:
        raise UnsupportedError(ctx.what, ctx.path, f"{label} has unit {src_unit!r}", f"Convert {x}.astype(...) first")
    what = f"{shown} -> int64 {unit} {'since the epoch' if src.kind == 'M' else 'counts'}" + (
        " (UTC instants)" if utc else ""
    )
    filled = ctx.io.na_value is not NO_VALUE
    note = what + (f"; missing values (NaT) filled with {ctx.io.na_value!r}" if filled else "")
    same = _NS[src_unit] * count == _NS[unit]  # a view of the int64s, unless NaT are filled
    unless = "missing values (NaT) are filled" if filled else ""
    return _Plan(np.dtype(np.int64), note, None if same else True, get, unless=unless)
