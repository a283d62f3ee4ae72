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

import sys
from typing import Any, Final, NoReturn

import numpy as np

from ..dtypes import numpy_dtype
from ..errors import CopyRefusedError
from ..plan.core import ToNumpyOptions, ToTensorOptions
from ._pandas_common import _Column, _Ctx, _Plan
from .base import Adoption
from .detect import is_instance
from .pandas_columns import _series_plan
from .pandas_frames import _frame_plan

__all__ = ["ADAPTER"]

_VIEW: Final = "a view of pandas' memory, read-only (writes must not reach pandas)"


def _readonly(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A read-only view, so neither a tensor nor a caller writes into pandas' memory by default."""
    view: np.ndarray[Any, Any] = a.view()
    view.flags.writeable = False
    return view


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
