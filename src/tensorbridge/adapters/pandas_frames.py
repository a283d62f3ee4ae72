"""pandas DataFrames: the columns as one (rows, columns) array, a view of one block where they are one.

:func:`_frame_plan` decides from the dtypes and column names what a frame becomes;
:func:`_frame` converts it, through pandas' own ``to_numpy`` when the columns share one NumPy
numeric dtype, else column by column (``pandas_columns.py``): one 2-D view where the columns are
evenly spaced in one buffer (:func:`_as_one_view`), else gathered column-major.
"""

from __future__ import annotations

import itertools
from functools import partial
from typing import Any, Final

import numpy as np

from ..errors import ConversionError, UnsupportedError
from ..ops.cast import cast_array
from ._pandas_common import _NUMERIC, _Column, _Ctx, _float_example, _Plan
from .pandas_columns import _column, _column_plan


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
