"""pandas leaves: a Series, an Index or an extension array becomes a 1-D array, a DataFrame a 2-D one.

Only the values convert: the index of a Series or DataFrame and the column names are dropped
(pass ``df.reset_index()`` to keep the index as columns). pandas is never imported here: its
objects are recognized through ``sys.modules`` (``detect.py``).

How each column dtype converts:

- NumPy bool, int, uint, float, complex: its values, a view (NaN in a float column is a
  value, kept).
- nullable ``Int64``, ``UInt8``, ``Float64``, ``boolean``, ``int64[pyarrow]``...: the NumPy dtype
  of the same kind, a view where pandas gives one.
- ``datetime64``, ``timedelta64``, tz-aware ``datetime64[.., tz]``: with ``datetime_unit``,
  int64 counts of that unit (since the epoch; tz-aware columns: of the UTC instants). A value
  that is not a whole number of the unit, or that overflows int64, raises.
- ``Sparse[..]``: densified with ``dense=True``, else refused.
- categorical, object, strings, period, interval, ``MultiIndex``: refused
  (``UnsupportedError``, a TypeError), each with its fix.

**Missing values** (``pd.NA`` in nullable and pyarrow columns, ``NaT``; in pandas 3 a NaN in a
``Float64`` column is ``pd.NA`` too) raise ``ValueRangeError`` (a ValueError) naming the column
and the count, unless ``na_value=`` is given: then they are filled with it, checked like a
cast, against ``dtype=`` when one is given (filling ``Int64`` with 0.5 or NaN raises; pass
``dtype=torch.float32, na_value=float("nan")`` for NaN), else against the column's own dtype.
For datetimes the ``na_value`` is an int64 count. A NaN in a NumPy float column is a value, not
a missing one: ``na_value`` leaves it alone (``df.fillna(v)`` replaces it).

**DataFrame**: one array of shape (rows, columns). The columns must convert to one dtype,
unless ``dtype=`` is given: then each column is cast to it (checked). Columns that are evenly
spaced in one pandas block come out as one 2-D view of it (a single-dtype NumPy-backed frame
usually is); otherwise they are gathered into fresh memory, column-major like pandas'
``to_numpy``. A frame without columns becomes an empty float64 (rows, 0) array.

**Memory**: every view of pandas' memory is handed over read-only, under pandas 2 too, so by
default ``to_tensor`` copies it and writing to the tensor never reaches pandas (pandas 3's
copy-on-write would otherwise be broken silently: its objects share memory). ``copy=False``
shares it: then writing to the tensor changes the pandas object and, under copy-on-write,
every object sharing that memory; treat such tensors as read-only. ``to_numpy`` returns the
read-only view where there is one; ``copy=True`` gives fresh, writable memory. A view, like
pandas' own ``to_numpy()``, follows later in-place writes to the pandas object
(``s.iloc[0] = 5``): pass ``copy=True`` for a snapshot.

**Planning** reads only metadata: the dtypes, the index type, the length and the column names;
refusals that these show (a categorical column, datetimes without ``datetime_unit``, mixed
NumPy dtypes) come while planning, and ``explain()`` shows them. The values are read when the
conversion runs: missing values, checked fills and casts, datetime ranges, and whether the
columns are one block (a view) or must be gathered, are found then, with the same errors;
``copy=False`` then refuses a copy the data turned out to need.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, NoReturn

import numpy as np

from .._convert.cast import cast_array
from ..dtypes import numpy_dtype
from ..errors import ConversionError, CopyRefusedError, UnsupportedError, ValueRangeError
from ..plan.core import NO_VALUE, InteropOptions, ToNumpyOptions, ToTensorOptions
from .base import Adoption
from .detect import is_instance

__all__ = ["ADAPTER"]

_NUMERIC: Final = "biufc"
# One unit in nanoseconds; every unit is a whole multiple of each finer one.
_NS: Final = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "D": 86400 * 10**9}
_INT64_MAX: Final = int(np.iinfo(np.int64).max)
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


@dataclass
class _Column:
    """One column's values as a 1-D array, and what it took."""

    values: np.ndarray[Any, Any]
    copied: bool
    note: str
    plain: bool = False  # a NumPy-backed column's own values, nothing done to them
    memory: str = ""  # how plans describe the memory, when neither "fresh" nor "pandas' own" is true


@dataclass(frozen=True)
class _Plan:
    """One column (or a whole leaf) as planned from its dtype: what it becomes, and the data work.

    Attributes:
        dtype: the NumPy dtype it becomes (before any cast to ``dtype=``).
        note: what converting does, from metadata.
        copies: True: fresh memory; False: a view of pandas' memory; None: a view, unless the
            data needs a copy (``unless`` says when).
        get: reads the values and converts them (raises for what the data holds).
        unless: when ``copies`` is None, what makes fresh memory.
        plain: a NumPy-backed numeric column's own values: nothing in its data can fail.
        memory: how plans describe the memory, when neither "fresh" nor "pandas' own" is true.
    """

    dtype: np.dtype[Any]
    note: str
    copies: bool | None
    get: Callable[[], _Column]
    unless: str = ""
    plain: bool = False
    memory: str = ""


@dataclass(frozen=True)
class _Ctx:
    """What every column of one leaf needs: the call, the options and the target dtype."""

    what: str
    path: str
    io: InteropOptions
    target: np.dtype[Any] | None
    copy: bool | None = None


_VIEW: Final = "a view of pandas' memory, read-only (writes must not reach pandas)"


def _named(kind: str, name: Any) -> str:
    return f"{kind} {name!r}" if name is not None else f"the {kind}"


def _readonly(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A read-only view, so neither a tensor nor a caller writes into pandas' memory by default."""
    view: np.ndarray[Any, Any] = a.view()
    view.flags.writeable = False
    return view


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


def _float_example(ctx: _Ctx) -> str:
    return "torch.float32" if ctx.what == "to_tensor" else "np.float32"


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
    dt = data.dtype
    if ctx.target is not None and ctx.target != dt:
        data[missing] = 0  # placeholders, so the checked cast sees only real values
        data = cast_array(data, ctx.target, ctx.path)
    data[missing] = _filler(ctx, data.dtype, label, x)
    return _Column(data, True, f"{count} missing filled with {ctx.io.na_value!r} as {data.dtype}")


def _datetimes(ctx: _Ctx, a: np.ndarray[Any, Any], label: str, x: str, shown: str, utc: bool) -> _Column:
    """datetime64/timedelta64 values -> int64 counts of ``datetime_unit``, exactly or not at all."""
    unit = ctx.io.datetime_unit
    if unit is None:
        raise UnsupportedError(
            ctx.what,
            ctx.path,
            f"{label} holds {shown} values, which have no tensor dtype",
            "Pass datetime_unit='ns' (or 'us', 'ms', 's', 'D') for int64 counts of that unit since the epoch",
        )
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
    unit = ctx.io.datetime_unit
    if unit is None:
        raise UnsupportedError(
            ctx.what,
            ctx.path,
            f"{label} holds {shown} values, which have no tensor dtype",
            "Pass datetime_unit='ns' (or 'us', 'ms', 's', 'D') for int64 counts of that unit since the epoch",
        )
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


def _series(ctx: _Ctx, obj: Any, kind: str, x: str) -> tuple[_Column, str, str]:
    """A Series, an Index or an extension array: its values, its label and its description."""
    label = _named(kind, getattr(obj, "name", None))
    source = f"pandas.{type(obj).__name__} {obj.dtype}, {len(obj)} values"
    if is_instance(obj, "pandas", "MultiIndex"):
        why = f"{label} is a MultiIndex: one array per level ({obj.nlevels} levels)"
        raise UnsupportedError(ctx.what, ctx.path, why, "Convert index.to_frame(index=False), a DataFrame")
    if is_instance(obj, "pandas", "RangeIndex"):
        values = np.arange(obj.start, obj.stop, obj.step, dtype=np.int64)
        return _Column(values, True, "a range materialized as int64"), label, source
    return _column(ctx, getattr(obj, "array", obj), label, x), label, source


def _series_plan(ctx: _Ctx, obj: Any, kind: str, x: str) -> tuple[_Plan, str, str]:
    """Plan a Series, an Index or an extension array from its dtype; its label and its description."""
    label = _named(kind, getattr(obj, "name", None))
    source = f"pandas.{type(obj).__name__} {obj.dtype}, {len(obj)} values"
    if is_instance(obj, "pandas", "MultiIndex"):
        why = f"{label} is a MultiIndex: one array per level ({obj.nlevels} levels)"
        raise UnsupportedError(ctx.what, ctx.path, why, "Convert index.to_frame(index=False), a DataFrame")
    if is_instance(obj, "pandas", "RangeIndex"):

        def get() -> _Column:
            return _series(ctx, obj, kind, x)[0]

        return _Plan(np.dtype(np.int64), "a range materialized as int64", True, get), label, source
    return _column_plan(ctx, obj.dtype, lambda: getattr(obj, "array", obj), label, x), label, source


def _column_array(df: Any, j: int) -> Any:
    return df.iloc[:, j].array


# When columns that could be one view are gathered instead.
_SPREAD: Final = "they are not evenly spaced in one block (then gathered, column-major)"


def _frame_plan(ctx: _Ctx, df: Any) -> tuple[_Plan, str, str]:
    """Plan a DataFrame from its dtypes and column names, as ``_frame`` converts it.

    A refusal the dtypes show is raised now, unless an earlier column could fail on its data
    first (``_frame`` converts the columns in order): then converting raises, whichever first.
    """
    rows, ncols = df.shape
    source = f"pandas.DataFrame {rows} rows x {ncols} columns"

    def get() -> _Column:
        return _frame(ctx, df)[0]

    if ncols == 0:  # nothing to share or copy
        return (
            _Plan(np.dtype(np.float64), "no columns", False, get, memory="an empty float64 array"),
            "DataFrame",
            source,
        )
    dtypes = list(df.dtypes)
    one = set(dtypes)
    dt = one.pop() if len(one) == 1 else None
    if isinstance(dt, np.dtype) and dt.kind in _NUMERIC:  # pandas' own to_numpy, when converting
        note = f"{_columns(ncols, dt)} as one 2-D array"
        return _Plan(dt, note, None, get, unless=_SPREAD), "DataFrame", f"{source}, {dt}"
    names, cols = list(df.columns), []
    for j, name in enumerate(names):
        sub = _Ctx(ctx.what, f"{ctx.path}[{name!r}]", ctx.io, ctx.target, ctx.copy)
        try:
            cols.append(
                _column_plan(sub, dtypes[j], partial(_column_array, df, j), f"column {name!r}", f"df[{name!r}]")
            )
        except ConversionError as err:
            if all(c.plain for c in cols):
                raise  # nothing before it can fail on its data: this is the conversion's error
            note = f"{_columns(ncols)}, converted column by column; column {name!r} does not convert ({err.cause})"
            return _Plan(np.dtype(np.float64), note, None, get), "DataFrame", source
    notes = [f"{name!r}: {c.note}" for name, c in zip(names, cols, strict=True) if not c.plain]
    found = list(dict.fromkeys(c.dtype for c in cols))
    cast = len(found) > 1
    if cast:
        if ctx.target is None:
            mixed = _mixed(ctx, [(name, c.dtype) for name, c in zip(names, cols, strict=True)])
            if all(c.plain for c in cols):
                raise mixed
            note = f"{_columns(ncols)} of {len(found)} dtypes, converted column by column ({mixed.cause})"
            return _Plan(np.dtype(np.float64), note, None, get), "DataFrame", source
        notes.append(f"{_columns(sum(c.dtype != ctx.target for c in cols))} cast to {ctx.target} (checked)")
        found = [ctx.target]
    dt = found[0]
    detail = "".join(f"; {n}" for n in notes)
    if cast or any(c.copies for c in cols):
        return _Plan(dt, _gathered(ncols, dt) + detail, True, get), "DataFrame", f"{source}, {dt}"
    unless = " or ".join(dict.fromkeys([_SPREAD, *(c.unless for c in cols if c.unless)]))
    note = f"{_columns(ncols, dt)} as one 2-D array{detail}"
    return _Plan(dt, note, None, get, unless=unless), "DataFrame", f"{source}, {dt}"


def _columns(n: int, dt: object = "") -> str:
    return f"{n} {dt} column{'s' * (n != 1)}" if dt else f"{n} column{'s' * (n != 1)}"


def _frame(ctx: _Ctx, df: Any) -> tuple[_Column, str, str]:
    """A DataFrame: one 2-D array, rows x columns."""
    rows, ncols = df.shape
    source = f"pandas.DataFrame {rows} rows x {ncols} columns"
    if ncols == 0:  # nothing to share or copy
        return (
            _Column(np.empty((rows, 0), np.float64), False, "no columns", memory="an empty float64 array"),
            "DataFrame",
            source,
        )
    plain = _one_numpy_dtype(df)
    if plain is not None:
        arr, fresh = plain
        source += f", {arr.dtype}"
        if fresh:
            return _Column(arr, True, _gathered(ncols, arr.dtype)), "DataFrame", source
        return _Column(arr, False, f"{_columns(ncols, arr.dtype)} as one 2-D array"), "DataFrame", source
    names, paths, cols = list(df.columns), [f"{ctx.path}[{name!r}]" for name in df.columns], []
    for j, (name, path) in enumerate(zip(names, paths, strict=True)):
        sub = _Ctx(ctx.what, path, ctx.io, ctx.target)
        cols.append(_column(sub, df.iloc[:, j].array, f"column {name!r}", f"df[{name!r}]"))
    notes = [f"{name!r}: {c.note}" for name, c in zip(names, cols, strict=True) if not c.plain]
    dtypes = list(dict.fromkeys(c.values.dtype for c in cols))
    if len(dtypes) > 1:
        if ctx.target is None:
            raise _mixed(ctx, [(name, c.values.dtype) for name, c in zip(names, cols, strict=True)])
        notes.append(f"{_columns(sum(c.values.dtype != ctx.target for c in cols))} cast to {ctx.target} (checked)")
        cols = [
            c if c.values.dtype == ctx.target else _cast(c, ctx.target, p) for c, p in zip(cols, paths, strict=True)
        ]
        dtypes = [ctx.target]
    dt = dtypes[0]
    source += f", {dt}"
    detail = "".join(f"; {n}" for n in notes)
    view = None if any(c.copied for c in cols) else _as_one_view([c.values for c in cols])
    if view is not None:
        return _Column(view, False, f"{_columns(ncols, dt)} as one 2-D array{detail}"), "DataFrame", source
    out = np.empty((rows, ncols), dt, order="F")  # column-major, like pandas' own to_numpy
    for j, c in enumerate(cols):
        out[:, j] = c.values
    return _Column(out, True, _gathered(ncols, dt) + detail), "DataFrame", source


def _gathered(ncols: int, dt: np.dtype[Any]) -> str:
    return f"{_columns(ncols)} gathered into one {dt} array (they are not one evenly spaced block)"


def _one_numpy_dtype(df: Any) -> tuple[np.ndarray[Any, Any], bool] | None:
    """The frame through pandas' own ``to_numpy`` when its columns share one NumPy numeric dtype; copied?

    One call instead of one per column: a wide frame costs microseconds, not milliseconds.
    """
    dtypes = set(df.dtypes)
    dt = dtypes.pop() if len(dtypes) == 1 else None
    if not isinstance(dt, np.dtype) or dt.kind not in _NUMERIC:
        return None
    arr = df.to_numpy()
    if arr.dtype != dt or arr.shape != df.shape:
        return None
    # A view of pandas' block holds the first column; pandas' gathered copy does not.
    return arr, not np.may_share_memory(arr, np.asarray(df.iloc[:, 0].array))


def _cast(col: _Column, dt: np.dtype[Any], path: str) -> _Column:
    return _Column(cast_array(col.values, dt, path), True, col.note)


def _mixed(ctx: _Ctx, found: list[tuple[Any, np.dtype[Any]]]) -> UnsupportedError:
    groups: dict[np.dtype[Any], list[str]] = {}
    for name, dt in found:
        groups.setdefault(dt, []).append(repr(name))
    shown = "; ".join(
        f"{dt}: {', '.join(names[:4])}{f' and {len(names) - 4} more' if len(names) > 4 else ''}"
        for dt, names in groups.items()
    )
    return UnsupportedError(
        ctx.what,
        ctx.path,
        f"the DataFrame's columns have {len(groups)} dtypes ({shown}), and one array has one dtype",
        f"Pass dtype={_float_example(ctx)} to cast every column (checked), or convert the columns separately: "
        "{name: df[name] for name in df} (a dict of Series converts leaf by leaf)",
    )


def _root(a: np.ndarray[Any, Any]) -> object:
    """The object that owns ``a``'s memory."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a if a.base is None else a.base


def _as_one_view(cols: list[np.ndarray[Any, Any]]) -> np.ndarray[Any, Any] | None:
    """The columns as one (rows, columns) view when they are evenly spaced in one buffer, else None.

    Element (i, j) of the view is at column j's start plus i row strides, which is exactly
    column j's own element i: the view addresses nothing the columns do not. All columns must
    live in one allocation, which the first column keeps alive.
    """
    first = cols[0]
    owner = _root(first)
    if any(c.dtype != first.dtype or c.strides != first.strides or _root(c) is not owner for c in cols):
        return None
    starts = [c.__array_interface__["data"][0] for c in cols]
    step = starts[1] - starts[0] if len(cols) > 1 else first.itemsize
    if any(b - a != step for a, b in itertools.pairwise(starts)):
        return None
    shape, strides = (first.shape[0], len(cols)), (first.strides[0], step)
    return np.lib.stride_tricks.as_strided(first, shape, strides, writeable=False)


def _planned(label: str, plan: _Plan) -> str:
    """What adopting does, as planning knows it (the metadata)."""
    if plan.memory:
        return f"{label}: {plan.note}, {plan.memory}"
    if plan.copies:
        return f"{label}: {plan.note}, fresh memory"
    if plan.copies is None and plan.unless:
        return f"{label}: {plan.note}, {_VIEW}; fresh memory if {plan.unless}"
    return f"{label}: {plan.note}, {_VIEW}"


def _converted(label: str, col: _Column) -> str:
    """What adopting did, once the values are known."""
    if col.memory:
        return f"{label}: {col.note}, {col.memory}"
    if col.copied:
        return f"{label}: {col.note}, fresh memory"
    return f"{label}: {col.note}, {_VIEW}"


def _refused(path: str, why: str) -> NoReturn:
    """``copy=False``, but the values needed a copy (the words the planner uses for a copying adoption)."""
    raise CopyRefusedError(
        "conversion", path, f"copy=False, but adopting this leaf copies: {why}", "Pass copy=None to allow the copy"
    )


def _target(dtype: Any) -> np.dtype[Any] | None:
    return None if dtype is None else numpy_dtype(dtype)


class _Pandas:
    name = "pandas"

    def claims(self, obj: object) -> bool:
        """Return whether ``obj`` is a pandas Series, DataFrame, Index or extension array.

        Example:
            >>> import pandas as pd
            >>> ADAPTER.claims(pd.Series([1, 2])), ADAPTER.claims(pd.array([1, None])), ADAPTER.claims([1, 2])
            (True, True, False)
        """
        if "pandas" not in sys.modules:
            return False
        return (
            is_instance(obj, "pandas", "Series")
            or is_instance(obj, "pandas", "DataFrame")
            or is_instance(obj, "pandas", "Index")
            or is_instance(obj, "pandas.api.extensions", "ExtensionArray")
        )

    def _adopt(self, obj: Any, ctx: _Ctx) -> Adoption:
        if is_instance(obj, "pandas", "DataFrame"):
            plan, label, source = _frame_plan(ctx, obj)
        elif is_instance(obj, "pandas", "Series"):
            plan, label, source = _series_plan(ctx, obj, "Series", "series")
        elif is_instance(obj, "pandas", "Index"):
            plan, label, source = _series_plan(ctx, obj, "Index", "index.to_series()")
        else:
            plan, label, source = _series_plan(ctx, obj, "array", "pd.Series(arr)")

        def run() -> np.ndarray[Any, Any]:
            col = plan.get()
            if col.copied and ctx.copy is False:  # the data needed a copy the metadata did not show
                _refused(ctx.path, _converted(label, col))
            return col.values if col.copied or col.memory else _readonly(col.values)

        return Adoption("adopt_copy" if plan.copies else "adopt", _planned(label, plan), run, source=source)

    def to_tensor(self, obj: Any, opts: ToTensorOptions, path: str) -> Adoption:
        """Adopt a pandas object for ``to_tensor``: its values as a NumPy array (see the module's rules).

        Example:
            >>> import pandas as pd, torch, tensorbridge as tb
            >>> tb.to_tensor(pd.Series([1, 2, None], dtype="Int64"), na_value=-1)
            tensor([ 1,  2, -1])
            >>> tb.to_tensor({"df": pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]})}, dtype=torch.float32)
            {'df': tensor([[1.0000, 0.5000],
                    [2.0000, 1.5000]])}
        """
        return self._adopt(obj, _Ctx("to_tensor", path, opts.interop, _target(opts.dtype), opts.copy))

    def to_numpy(self, obj: Any, opts: ToNumpyOptions, path: str) -> Adoption:
        """Adopt a pandas object for ``to_numpy``: the same arrays as ``to_tensor``, then ``dtype=``/``copy=``.

        Example:
            >>> import pandas as pd, tensorbridge as tb
            >>> when = pd.Series(pd.to_datetime(["1970-01-02", "2000-01-01"]).tz_localize("Europe/Paris"))
            >>> tb.to_numpy(when, datetime_unit="s").tolist()  # UTC instants: Paris is 1 hour ahead in winter
            [82800, 946681200]
            >>> df = pd.DataFrame({"a": [1.5, 2.5], "b": [3.0, 4.0]})
            >>> a = tb.to_numpy(df)  # a read-only view of the frame's memory
            >>> a, a.flags.writeable
            (array([[1.5, 3. ],
                   [2.5, 4. ]]), False)
        """
        return self._adopt(obj, _Ctx("to_numpy", path, opts.interop, opts.dtype, opts.copy))


ADAPTER: Final = _Pandas()
