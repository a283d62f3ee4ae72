"""pandas columns: one Series, Index or extension array, planned from its dtype and converted to a 1-D array.

:func:`_column_plan` decides from the dtype alone what a column becomes (and raises the
refusals the dtype shows); :func:`_column` reads the values and converts them, with the same
errors. :func:`_series_plan` and :func:`_series` do the same for a whole leaf (a Series, an
Index, an extension array), adding its label and its description.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import numpy as np

from ..errors import UnsupportedError
from ..plan.core import NO_VALUE
from ._pandas_common import _NUMERIC, _Column, _Ctx, _Plan
from .detect import is_instance
from .pandas_datetimes import _datetimes, _datetimes_plan, _fill

# Extension dtypes refused outright: (why, fix), with {x} for the expression naming the column.
_REFUSED: Final = {
    "CategoricalDtype": (
        "is categorical: its integer codes mean nothing without its categories",
        "Convert {x}.cat.codes (the integer codes, -1 where missing) and keep {x}.cat.categories, "
        "or the values: {x}.astype({x}.cat.categories.dtype)",
    ),
    "PeriodDtype": ("holds periods, which have no tensor dtype", "Convert {x}.dt.to_timestamp() with datetime_unit="),
    "IntervalDtype": ("holds intervals, which have no tensor dtype", "Convert {x}.array.left and {x}.array.right"),
}


def _named(kind: str, name: Any) -> str:
    return f"{kind} {name!r}" if name is not None else f"the {kind}"


def _column_plan(ctx: _Ctx, dtype: Any, values: Callable[[], Any], label: str, x: str) -> _Plan:
    """Plan one pandas column from its dtype, as ``_column`` converts it; ``values`` gives its ``.array``.

    Raises what the dtype shows (the same errors ``_column`` raises); what the values hold is
    found by ``get``, which runs ``_column`` on them.
    """

    def get() -> _Column:
        return _column(ctx, values(), label, x)

    if type(dtype).__name__ in ("NumpyEADtype", "PandasDtype"):  # NumPy-backed (PandasDtype before pandas 2.1)
        dtype = dtype.numpy_dtype
    if isinstance(dtype, np.dtype):
        if dtype.kind in _NUMERIC:
            return _Plan(dtype, f"{dtype} values", False, get, plain=True)
        if dtype.kind in "Mm":
            return _datetimes_plan(ctx, dtype, get, label, x, str(dtype), False)
        fix = f"Encode them first, e.g. {x}.astype('category').cat.codes, or {x}.astype('float64') for numbers"
        raise UnsupportedError(ctx.what, ctx.path, f"{label} has dtype {dtype}, which has no tensor dtype", fix)
    family = type(dtype).__name__
    if family in _REFUSED:
        why, fix = _REFUSED[family]
        raise UnsupportedError(ctx.what, ctx.path, f"{label} ({dtype}) {why}", fix.format(x=x))
    if family == "DatetimeTZDtype":
        return _datetimes_plan(ctx, np.dtype(f"datetime64[{dtype.unit}]"), get, label, x, str(dtype), True)
    if family == "SparseDtype":
        if not ctx.io.dense:
            why = f"{label} is sparse ({dtype}), and densifying silently could exhaust memory"
            raise UnsupportedError(ctx.what, ctx.path, why, f"Pass dense=True, or convert {x}.sparse.to_dense()")
        inner = _column_plan(ctx, np.dtype(dtype.subtype), values, label, x)  # the dense values' rules
        return _Plan(inner.dtype, f"{dtype} densified", True, get)
    np_dt = getattr(dtype, "numpy_dtype", None)
    kind = getattr(dtype, "kind", "O")
    if not isinstance(np_dt, np.dtype) or kind not in _NUMERIC + "Mm" or np_dt.kind != kind:
        fix = f"Convert it to a NumPy dtype first, e.g. {x}.astype('category').cat.codes for strings"
        raise UnsupportedError(ctx.what, ctx.path, f"{label} has dtype {dtype}, which has no tensor dtype", fix)
    if kind in "Mm":  # pyarrow timestamps and durations
        return _datetimes_plan(ctx, np_dt, get, label, x, str(dtype), False)
    filled = ctx.io.na_value is not NO_VALUE
    note = f"{dtype} as {np_dt}" + (f"; missing values filled with {ctx.io.na_value!r}" if filled else "")
    return _Plan(np_dt, note, None, get, unless="missing values are filled" if filled else "")


def _column(ctx: _Ctx, values: Any, label: str, x: str) -> _Column:
    """One pandas column (its ``.array``, or a NumPy array) as a 1-D NumPy array."""
    dtype = values.dtype
    if type(dtype).__name__ in ("NumpyEADtype", "PandasDtype"):  # NumPy-backed (PandasDtype before pandas 2.1)
        dtype = dtype.numpy_dtype
    if isinstance(dtype, np.dtype):
        a = np.asarray(values)  # a NumPy-backed column hands over its own array
        if dtype.kind in _NUMERIC:
            return _Column(a, False, f"{dtype} values", plain=True)
        if dtype.kind in "Mm":
            return _datetimes(ctx, a, label, x, str(dtype), False)
        fix = f"Encode them first, e.g. {x}.astype('category').cat.codes, or {x}.astype('float64') for numbers"
        raise UnsupportedError(ctx.what, ctx.path, f"{label} has dtype {dtype}, which has no tensor dtype", fix)
    family = type(dtype).__name__
    if family in _REFUSED:
        why, fix = _REFUSED[family]
        raise UnsupportedError(ctx.what, ctx.path, f"{label} ({dtype}) {why}", fix.format(x=x))
    if family == "DatetimeTZDtype":
        return _datetimes(ctx, np.asarray(values.tz_convert(None)), label, x, str(dtype), True)
    if family == "SparseDtype":
        if not ctx.io.dense:
            why = f"{label} is sparse ({dtype}), and densifying silently could exhaust memory"
            raise UnsupportedError(ctx.what, ctx.path, why, f"Pass dense=True, or convert {x}.sparse.to_dense()")
        col = _column(ctx, np.asarray(values.to_dense()), label, x)
        return _Column(col.values, True, f"{dtype} densified")
    np_dt = getattr(dtype, "numpy_dtype", None)
    kind = getattr(dtype, "kind", "O")
    if not isinstance(np_dt, np.dtype) or kind not in _NUMERIC + "Mm" or np_dt.kind != kind:
        fix = f"Convert it to a NumPy dtype first, e.g. {x}.astype('category').cat.codes for strings"
        raise UnsupportedError(ctx.what, ctx.path, f"{label} has dtype {dtype}, which has no tensor dtype", fix)
    if kind in "Mm":  # pyarrow timestamps and durations
        return _datetimes(ctx, values.to_numpy(dtype=np_dt, na_value=np_dt.type("NaT")), label, x, str(dtype), False)
    missing = np.asarray(values.isna(), dtype=bool)
    if missing.any():
        data = values.to_numpy(dtype=np_dt, na_value=np_dt.type(0), copy=True)
        col = _fill(ctx, data, missing, label, x, "NA")
        col.note = f"{dtype} -> {np_dt}; {col.note}"
        return col
    a = values.to_numpy(dtype=np_dt, copy=False)
    # Fresh only when proven: a masked array's values are ``_data`` (private, so only a hint);
    # anything unproven is handed over read-only, as if it were pandas' memory.
    inner = getattr(values, "_data", None)
    fresh = isinstance(inner, np.ndarray) and not np.may_share_memory(a, inner)
    return _Column(a, fresh, f"{dtype} without missing values as {np_dt}")


def _label_and_source(ctx: _Ctx, obj: Any, kind: str) -> tuple[str, str]:
    """A Series/Index's label and description; a MultiIndex is refused (planning and conversion alike)."""
    label = _named(kind, getattr(obj, "name", None))
    if is_instance(obj, "pandas", "MultiIndex"):
        why = f"{label} is a MultiIndex: one array per level ({obj.nlevels} levels)"
        raise UnsupportedError(ctx.what, ctx.path, why, "Convert index.to_frame(index=False), a DataFrame")
    return label, f"pandas.{type(obj).__name__} {obj.dtype}, {len(obj)} values"


def _series(ctx: _Ctx, obj: Any, kind: str, x: str) -> tuple[_Column, str, str]:
    """A Series, an Index or an extension array: its values, its label and its description."""
    label, source = _label_and_source(ctx, obj, kind)
    if is_instance(obj, "pandas", "RangeIndex"):
        values = np.arange(obj.start, obj.stop, obj.step, dtype=np.int64)
        return _Column(values, True, "a range materialized as int64"), label, source
    return _column(ctx, getattr(obj, "array", obj), label, x), label, source


def _series_plan(ctx: _Ctx, obj: Any, kind: str, x: str) -> tuple[_Plan, str, str]:
    """Plan a Series, an Index or an extension array from its dtype; its label and its description."""
    label, source = _label_and_source(ctx, obj, kind)
    if is_instance(obj, "pandas", "RangeIndex"):

        def get() -> _Column:
            return _series(ctx, obj, kind, x)[0]

        return _Plan(np.dtype(np.int64), "a range materialized as int64", True, get), label, source
    return _column_plan(ctx, obj.dtype, lambda: getattr(obj, "array", obj), label, x), label, source
