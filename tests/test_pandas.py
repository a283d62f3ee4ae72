"""pandas leaves: Series, DataFrame, Index and extension arrays.

Zero-copy is proved with ``np.shares_memory`` against pandas' own views and by writing
through the tensor; exactness by comparing with pandas' own conversions on extreme values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensorbridge as tb
from tensorbridge.adapters import adapter_for

pd = pytest.importorskip("pandas")

NUMPY_DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
NUMPY_DTYPES += ["float32", "float64", "complex64", "complex128"]
NULLABLE = {
    "Int8": "int8",
    "Int16": "int16",
    "Int32": "int32",
    "Int64": "int64",
    "UInt8": "uint8",
    "UInt16": "uint16",
    "UInt32": "uint32",
    "UInt64": "uint64",
    "Float32": "float32",
    "Float64": "float64",
    "boolean": "bool",
}


def _extremes(dt: np.dtype[Any]) -> np.ndarray[Any, Any]:
    """Values at the edges of ``dt``: its min and max, zero, and for floats NaN, inf, the tiniest."""
    if dt.kind == "b":
        return np.array([True, False, True])
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return np.array([info.min, info.max, 0, 1], dt)
    real = np.dtype(f"f{dt.itemsize // 2}") if dt.kind == "c" else dt
    fi = np.finfo(real)
    vals = np.array([fi.min, fi.max, fi.smallest_subnormal, -0.0, np.inf, -np.inf, np.nan, 1.5], real)
    if dt.kind != "c":
        return vals
    out = np.empty(len(vals), dt)
    out.real, out.imag = vals, vals[::-1]
    return out


def _same(a: Any, b: Any) -> None:
    """Bit-exact equality, NaN included."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def _message(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    return str(excinfo.value)


# --- claims -----------------------------------------------------------------------------------


def test_the_pandas_adapter_claims_pandas_objects_only() -> None:
    for obj in (pd.Series([1]), pd.DataFrame({"a": [1]}), pd.Index([1]), pd.RangeIndex(3), pd.array([1, None])):
        found = adapter_for(obj)
        assert found is not None and found.name == "pandas"
    for obj in (np.ones(2), [1, 2], {"a": 1}, None):
        found = adapter_for(obj)
        assert found is None or found.name != "pandas"


# --- Series of NumPy dtypes -------------------------------------------------------------------


@pytest.mark.parametrize("name", NUMPY_DTYPES)
def test_numpy_backed_series_convert_exactly_both_ways(name: str) -> None:
    values = _extremes(np.dtype(name))
    s = pd.Series(values, name="x")
    t = tb.to_tensor(s)
    _same(t.numpy(), values)
    a = tb.to_numpy(s)
    _same(a, values)
    assert np.shares_memory(a, s.to_numpy()), "to_numpy hands over a view of the Series"
    assert not a.flags.writeable, "the view is read-only: writes must not reach pandas"


def test_nan_in_a_numpy_float_column_is_a_value_not_missing() -> None:
    s = pd.Series([1.0, np.nan, -np.inf])
    _same(tb.to_tensor(s).numpy(), np.array([1.0, np.nan, -np.inf]))
    _same(tb.to_numpy({"s": s}, na_value=0.0)["s"], np.array([1.0, np.nan, -np.inf]))


def test_the_index_of_a_series_is_dropped() -> None:
    s = pd.Series([10, 20], index=["a", "b"])
    assert tb.to_tensor(s).tolist() == [10, 20]


def test_to_tensor_copies_by_default_and_writes_never_reach_the_series() -> None:
    s = pd.Series([1.0, 2.0, 3.0])
    other = s.copy(deep=False)  # shares memory with s under copy-on-write
    t = tb.to_tensor(s)
    t[0] = 99.0
    assert s.tolist() == [1.0, 2.0, 3.0] and other.tolist() == [1.0, 2.0, 3.0]
    plan = tb.explain({"s": s})
    assert not plan.shares_memory
    assert "adopt (Series 0: float64 values" not in str(plan)  # unnamed
    assert "the Series: float64 values, a view of pandas' memory, read-only" in str(plan)
    assert not np.shares_memory(t.numpy(), s.to_numpy())  # the planner copied the read-only view


def test_copy_false_shares_pandas_memory_and_writes_reach_it() -> None:
    # Documented: with copy=False the tensor is pandas' memory; writing to it changes the Series.
    s = pd.Series([1.0, 2.0, 3.0], name="x")
    t = tb.to_tensor(s, copy=False)
    assert np.shares_memory(t.numpy(), s.to_numpy())
    assert tb.explain(s, copy=False).shares_memory
    t[0] = 99.0
    assert s.iloc[0] == 99.0


def test_to_numpy_copy_true_gives_fresh_writable_memory() -> None:
    s = pd.Series([1, 2, 3])
    a = tb.to_numpy(s, copy=True)
    assert a.flags.writeable and not np.shares_memory(a, s.to_numpy())
    a[0] = 7
    assert s.iloc[0] == 1


def test_a_view_follows_later_writes_to_pandas_like_pandas_own_to_numpy() -> None:
    # Documented: views are views; copy=True is the snapshot.
    s = pd.Series([1.0, 2.0])
    view, theirs, snapshot = tb.to_numpy(s), s.to_numpy(), tb.to_numpy(s, copy=True)
    s.iloc[0] = 5.0
    assert view[0] == theirs[0] and snapshot[0] == 1.0


def test_dtype_is_applied_after_adoption_and_checked() -> None:
    s = pd.Series([1.5, 2.5], name="w")
    assert tb.to_tensor(s, dtype=torch.float16).tolist() == [1.5, 2.5]
    assert tb.to_numpy(s, dtype=np.float32).dtype == np.float32
    with pytest.raises(tb.ValueRangeError, match="not a whole number"):
        tb.to_tensor(s, dtype=torch.int64)


# --- nullable extension dtypes ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(NULLABLE))
def test_nullable_without_missing_values_becomes_the_numpy_dtype_of_its_kind(name: str) -> None:
    np_dt = np.dtype(NULLABLE[name])
    values = _extremes(np_dt)
    if np_dt.kind == "f":
        values = values[~np.isnan(values)]  # in pandas 3 NaN in a Float column is NA
    s = pd.Series(values, dtype=name)
    assert not s.isna().any()
    _same(tb.to_tensor(s).numpy(), values)
    a = tb.to_numpy(s)
    _same(a, values)
    assert np.shares_memory(a, s.to_numpy(dtype=np_dt)), "a view of the masked array's values"
    assert f"{name} as {np_dt}" in str(tb.explain(s))  # whether values are missing is in the data


@pytest.mark.parametrize("name", sorted(NULLABLE))
def test_missing_values_raise_naming_path_column_and_count(name: str) -> None:
    s = pd.Series([1, None, None, 0], dtype=name, name="price")
    with pytest.raises(tb.ValueRangeError) as excinfo:
        tb.to_tensor({"batch": {"s": s}})
    msg = _message(excinfo)
    assert msg.startswith("to_tensor at data['batch']['s']: Series 'price' has 2 missing values (NA) among 4")
    assert "na_value=" in msg and "series.fillna(...)" in msg
    assert isinstance(excinfo.value, ValueError)
    with pytest.raises(tb.ValueRangeError, match="to_numpy at data: Series 'price' has 2 missing"):
        tb.to_numpy(s)


@pytest.mark.parametrize("name", sorted(NULLABLE))
def test_na_value_fills_missing_values(name: str) -> None:
    np_dt = np.dtype(NULLABLE[name])
    fill = True if np_dt.kind == "b" else 7
    s = pd.Series([1, None, 0], dtype=name)
    want = np.array([1, fill, 0], np_dt)
    _same(tb.to_tensor(s, na_value=fill).numpy(), want)
    _same(tb.to_numpy(s, na_value=fill), want)
    assert "missing values filled with" in str(tb.explain(s, na_value=fill))  # how many is in the data


@pytest.mark.parametrize(
    ("name", "fill", "why"),
    [
        ("Int64", 0.5, "not a whole number"),
        ("Int64", float("nan"), "NaN cannot be represented in int64"),
        ("UInt8", -1, "does not fit uint8"),
        ("Int8", 300, "does not fit int8"),
        ("Float32", 1e300, "does not fit float32"),
        ("boolean", 0.5, "is not a bool"),
        ("boolean", 1, "is not a bool"),
        ("Int64", "zero", "is not a number"),
        ("Int64", None, "is not a number"),
        ("Int64", pd.NA, "is not a number"),
    ],
)
def test_na_value_must_fit_the_dtype(name: str, fill: object, why: str) -> None:
    s = pd.Series([1, None], dtype=name, name="n")
    with pytest.raises(tb.ValueRangeError, match=why) as excinfo:
        tb.to_tensor({"s": s}, na_value=fill)
    assert _message(excinfo).startswith(f"to_tensor at data['s']: na_value {fill!r} ")


def test_na_value_is_checked_against_dtype_when_given() -> None:
    s = pd.Series([1, None, 3], dtype="Int64")
    t = tb.to_tensor(s, dtype=torch.float32, na_value=float("nan"))
    assert t.dtype is torch.float32
    _same(t.numpy(), np.array([1, np.nan, 3], np.float32))
    a = tb.to_numpy(s, dtype=np.float64, na_value=np.nan)
    _same(a, np.array([1, np.nan, 3]))
    with pytest.raises(tb.ValueRangeError, match="does not fit int8"):
        tb.to_tensor(pd.Series([1000, None], dtype="Int64"), dtype=torch.int8, na_value=0)


def test_nan_and_na_in_a_float64_column() -> None:
    # pandas 3 turns NaN into NA in a Float64 column; pandas 2 keeps NaN a value. Either way
    # what pandas calls missing is missing, and nothing else.
    s = pd.Series(np.array([1.0, np.nan]), dtype="Float64")
    if bool(s.isna().iloc[1]):
        with pytest.raises(tb.ValueRangeError, match="1 missing value"):
            tb.to_tensor(s)
    else:
        _same(tb.to_numpy(s), np.array([1.0, np.nan]))
    filled = tb.to_numpy(pd.Series([1.0, None], dtype="Float64"), na_value=np.nan)
    _same(filled, np.array([1.0, np.nan]))


@given(
    values=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=0, max_size=30),
    data=st.data(),
)
def test_filled_int64_values_are_exact(values: list[int], data: st.DataObject) -> None:
    missing = data.draw(st.lists(st.booleans(), min_size=len(values), max_size=len(values)))
    fill = data.draw(st.integers(-(2**63), 2**63 - 1))
    s = pd.Series(pd.array([None if m else v for v, m in zip(values, missing, strict=True)], dtype="Int64"))
    want = np.array([fill if m else v for v, m in zip(values, missing, strict=True)], np.int64)
    _same(tb.to_numpy(s, na_value=fill), want)
    assert tb.to_tensor(s, na_value=fill).tolist() == want.tolist()


# --- datetimes --------------------------------------------------------------------------------

_UNITS_NS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "D": 86400 * 10**9}


def test_datetimes_without_a_unit_are_refused_with_the_fix() -> None:
    s = pd.Series(pd.to_datetime(["2020-01-01"]), name="when")
    with pytest.raises(tb.UnsupportedError) as excinfo:
        tb.to_tensor({"d": s})
    msg = _message(excinfo)
    assert msg.startswith("to_tensor at data['d']: Series 'when' holds datetime64[")
    assert "datetime_unit='ns'" in msg and isinstance(excinfo.value, TypeError)


@pytest.mark.parametrize("unit", list(_UNITS_NS))
def test_datetimes_become_int64_counts_since_the_epoch(unit: str) -> None:
    days = np.array(["1969-12-31", "1970-01-01", "2000-02-29", "2262-04-10"], "datetime64[D]")
    s = pd.Series(days.astype("datetime64[s]"))
    want = days.astype(np.int64) * (86400 * 10**9 // _UNITS_NS[unit])
    if unit == "ns":
        s, want = s.iloc[:3], want[:3]  # 2262-04-10 is past int64 nanoseconds
    _same(tb.to_numpy(s, datetime_unit=unit), want)
    _same(tb.to_tensor(s, datetime_unit=unit).numpy(), want)


def test_datetime_unit_too_coarse_or_overflowing_raises() -> None:
    s = pd.Series(pd.to_datetime(["2020-01-01 00:00:00.5"]), name="t")
    with pytest.raises(tb.ValueRangeError, match=r"2020-01-01T00:00:00\.5.* is not a whole number of 's'") as exc:
        tb.to_tensor({"t": s}, datetime_unit="s")
    assert "dt.floor('s')" in _message(exc)
    far = pd.Series(np.array(["2500-01-01"], "datetime64[s]"), name="far")
    with pytest.raises(tb.ValueRangeError, match="2500-01-01T00:00:00 overflows int64 as ns counts"):
        tb.to_numpy(far, datetime_unit="ns")
    assert tb.to_numpy(far, datetime_unit="s").tolist() == [16725225600]


def test_same_unit_datetimes_are_a_view() -> None:
    s = pd.Series(np.array(["2020-01-01", "2021-06-01"], "datetime64[ms]"))
    a = tb.to_numpy(s, datetime_unit="ms")
    assert a.dtype == np.int64 and np.shares_memory(a, s.to_numpy())
    assert a.tolist() == s.to_numpy().astype(np.int64).tolist()


def test_tz_aware_datetimes_are_utc_instants() -> None:
    hours = ["2020-03-29 00:00", "2020-03-29 01:00", "2020-03-29 03:00", "2020-07-01 12:00"]  # around a DST change
    local = pd.Series(pd.to_datetime(hours).tz_localize("Europe/Paris"))
    got = tb.to_numpy(local, datetime_unit="ns")
    want = [ts.value for ts in local]  # Timestamp.value: UTC nanoseconds since the epoch
    assert got.tolist() == want
    utc = local.dt.tz_convert("UTC")
    assert tb.to_tensor(utc, datetime_unit="s").tolist() == tb.to_tensor(local, datetime_unit="s").tolist()
    assert "(UTC instants)" in str(tb.explain(local, datetime_unit="s"))


def test_nat_follows_the_missing_value_rules() -> None:
    s = pd.Series([pd.Timestamp("2020-01-02"), pd.NaT, pd.NaT], name="t")
    with pytest.raises(tb.ValueRangeError, match=r"Series 't' has 2 missing values \(NaT\) among 3") as exc:
        tb.to_tensor(s, datetime_unit="D")
    assert "na_value=-1" in _message(exc)
    assert tb.to_tensor(s, datetime_unit="D", na_value=-1).tolist() == [18263, -1, -1]
    with pytest.raises(tb.ValueRangeError, match=r"na_value 0\.5"):
        tb.to_tensor(s, datetime_unit="D", na_value=0.5)
    with pytest.raises(tb.ValueRangeError, match="is not a number"):
        tb.to_tensor(s, datetime_unit="D", na_value=pd.Timestamp("2000-01-01"))


def test_nat_in_the_series_own_unit_is_filled_in_fresh_memory() -> None:
    s = pd.Series(np.array(["2020-01-01", "NaT"], "datetime64[us]"))
    with pytest.raises(tb.ValueRangeError, match="1 missing value"):
        tb.to_numpy(s, datetime_unit="us")
    a = tb.to_numpy(s, datetime_unit="us", na_value=-1)
    assert a.tolist() == [1577836800000000, -1] and not np.shares_memory(a, s.to_numpy())
    assert s.isna().tolist() == [False, True], "the fill never reaches pandas"


def test_nat_filled_then_cast_to_dtype_checks_only_real_values() -> None:
    s = pd.Series(np.array(["1970-01-02", "NaT"], "datetime64[ns]"))
    t = tb.to_tensor(s, datetime_unit="s", dtype=torch.int32, na_value=-1)
    assert t.dtype is torch.int32 and t.tolist() == [86400, -1]


def test_timedeltas_become_counts() -> None:
    s = pd.Series(pd.to_timedelta([1.5, -2, 0], unit="s"))
    assert tb.to_numpy(s, datetime_unit="ms").tolist() == [1500, -2000, 0]
    with pytest.raises(tb.UnsupportedError, match="timedelta64"):
        tb.to_numpy(s)


def test_a_datetime_index_converts_like_a_series() -> None:
    idx = pd.DatetimeIndex(["1970-01-01", "1970-01-03"], name="day")
    assert tb.to_numpy(idx, datetime_unit="D").tolist() == [0, 2]


# --- refused dtypes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: pd.Series(["a", "b"], dtype="category", name="c"), r"categorical.*series\.cat\.codes"),
        (lambda: pd.Series(["a", "b"], name="c"), r"has dtype (str|object|string).*astype\('category'\)"),
        (lambda: pd.Series(["a", "b"], dtype="string", name="c"), r"has dtype string.*astype\('category'\)"),
        (lambda: pd.Series([1, "b"], dtype=object, name="c"), r"has dtype object.*astype\('float64'\)"),
        (lambda: pd.Series(pd.period_range("2020", periods=2, freq="D"), name="c"), r"periods.*to_timestamp"),
        (lambda: pd.Series(pd.interval_range(0, 2), name="c"), r"intervals.*array\.left"),
        (lambda: pd.Series(pd.arrays.SparseArray([0.0, 1.0]), name="c"), r"sparse.*dense=True"),
        (lambda: pd.MultiIndex.from_arrays([[1], [2]]), r"MultiIndex.*to_frame"),
        (lambda: pd.CategoricalIndex(["a"]), r"categorical.*index\.to_series\(\)\.cat\.codes"),
    ],
)
def test_unconvertible_columns_are_refused_with_a_fix(make: Any, match: str) -> None:
    obj = make()
    for convert in (tb.to_tensor, tb.to_numpy):
        with pytest.raises(tb.UnsupportedError, match=match) as excinfo:
            convert({"x": obj})
        assert " at data['x']: " in _message(excinfo) and isinstance(excinfo.value, TypeError)


def test_an_object_series_of_numbers_is_refused_but_its_fix_works() -> None:
    s = pd.Series([1.0, 2.0], dtype=object)
    with pytest.raises(tb.UnsupportedError):
        tb.to_tensor(s)
    assert tb.to_tensor(s.astype("float64")).tolist() == [1.0, 2.0]


def test_sparse_densified_with_dense_true() -> None:
    s = pd.Series(pd.arrays.SparseArray([0, 0, 3, 0]))
    assert tb.to_tensor(s, dense=True).tolist() == [0, 0, 3, 0]
    assert "densified" in str(tb.explain(s, dense=True))


def test_pyarrow_backed_columns() -> None:
    pytest.importorskip("pyarrow")
    s = pd.Series([1, 2, 2**62], dtype="int64[pyarrow]", name="a")
    _same(tb.to_numpy(s), np.array([1, 2, 2**62]))
    _same(tb.to_tensor(s).numpy(), np.array([1, 2, 2**62]))
    holes = pd.Series([1.5, None], dtype="float64[pyarrow]", name="a")
    with pytest.raises(tb.ValueRangeError, match="Series 'a' has 1 missing value"):
        tb.to_tensor(holes)
    _same(tb.to_numpy(holes, na_value=0.0), np.array([1.5, 0.0]))


# --- Index ------------------------------------------------------------------------------------


def test_range_index_becomes_an_int64_array() -> None:
    idx = pd.RangeIndex(3, -4, -2)
    t = tb.to_tensor(idx)
    assert t.dtype is torch.int64 and t.tolist() == [3, 1, -1, -3]
    assert tb.to_numpy(pd.RangeIndex(0)).shape == (0,)
    assert "a range materialized as int64, fresh memory" in str(tb.explain(idx))


def test_an_index_is_a_read_only_view() -> None:
    idx = pd.Index([1.5, 2.5], name="i")
    a = tb.to_numpy(idx)
    assert a.tolist() == [1.5, 2.5] and not a.flags.writeable
    t = tb.to_tensor(idx)
    t[0] = 0
    assert idx[0] == 1.5


# --- DataFrame --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NUMPY_DTYPES)
def test_a_single_dtype_frame_is_one_zero_copy_view(name: str) -> None:
    values = _extremes(np.dtype(name))
    df = pd.DataFrame({"a": values, "b": values[::-1].copy(), "c": values})
    a = tb.to_numpy({"df": df})["df"]
    _same(a, df.to_numpy())
    assert a.shape == (len(values), 3)
    assert all(np.shares_memory(a, df[c].to_numpy()) for c in df), "one view of the frame's block"
    assert not a.flags.writeable
    plan = tb.explain({"df": df}, to="numpy")
    assert "3 " + name + " columns as one 2-D array" in str(plan)
    assert tb.explain({"df": df}, to="numpy", copy=False).shares_memory  # copy=None: planned when it arrives
    t = tb.to_tensor(df)
    _same(t.numpy(), df.to_numpy())
    t[0, 0] = t[1, 0]
    _same(df["a"].to_numpy(), values)
    shared = tb.to_tensor(df, copy=False)
    assert np.shares_memory(shared.numpy(), df["b"].to_numpy())


def test_selected_reordered_and_repeated_columns_stay_views_with_the_right_values() -> None:
    df = pd.DataFrame(np.arange(12.0).reshape(3, 4), columns=list("abcd"))
    for view in (df[["d", "c", "b", "a"]], df.iloc[::2, ::2], df[["a", "a"]], df[["b"]]):
        a = tb.to_numpy(view)
        _same(a, view.to_numpy())
        assert np.shares_memory(a, df.to_numpy()) == np.shares_memory(view.to_numpy(), df.to_numpy())
        _same(tb.to_tensor(view).numpy(), view.to_numpy())


def test_columns_in_separate_blocks_are_gathered_column_major() -> None:
    df = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    df["c"] = [5.0, 6.0]  # a second block
    a = tb.to_numpy(df)
    _same(a, df.to_numpy())
    assert a.flags.f_contiguous and a.flags.writeable
    assert not any(np.shares_memory(a, df[c].to_numpy()) for c in df)
    # Which block each column is in, pandas' to_numpy finds when converting.
    assert "fresh memory if they are not evenly spaced in one block" in str(tb.explain(df, to="numpy"))
    t = tb.to_tensor(df)
    _same(t.numpy(), df.to_numpy())


def test_mixed_dtypes_are_refused_naming_columns_dtypes_and_fixes() -> None:
    df = pd.DataFrame({"id": [1, 2], "price": [0.5, 1.5], "qty": [3, 4], "ok": [True, False]})
    with pytest.raises(tb.UnsupportedError) as excinfo:
        tb.to_tensor({"df": df})
    msg = _message(excinfo)
    assert msg.startswith("to_tensor at data['df']: the DataFrame's columns have 3 dtypes ")
    assert "int64: 'id', 'qty'; float64: 'price'; bool: 'ok'" in msg
    assert "dtype=torch.float32" in msg and "{name: df[name] for name in df}" in msg
    with pytest.raises(tb.UnsupportedError, match=r"dtype=np\.float32"):
        tb.to_numpy(df)
    # the fix: a dict of Series converts leaf by leaf
    parts = tb.to_tensor({name: df[name] for name in df})
    assert parts["id"].dtype is torch.int64 and parts["ok"].dtype is torch.bool
    assert parts["price"].tolist() == [0.5, 1.5]


def test_mixed_dtypes_with_dtype_are_cast_column_by_column_checked() -> None:
    df = pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5], "c": pd.array([3, 4], dtype="UInt8")})
    t = tb.to_tensor(df, dtype=torch.float32)
    assert t.dtype is torch.float32 and t.tolist() == [[1, 0.5, 3], [2, 1.5, 4]]
    a = tb.to_numpy(df, dtype=np.float64)
    _same(a, np.array([[1, 0.5, 3], [2, 1.5, 4]]))
    assert "cast to float32 (checked)" in str(tb.explain(df, dtype=torch.float32))
    with pytest.raises(tb.ValueRangeError) as excinfo:
        tb.to_tensor({"df": df}, dtype=torch.int64)
    assert _message(excinfo).startswith("cast at data['df']['b']: value 0.5 is not a whole number")
    big = pd.DataFrame({"a": [1, 2**62 + 1], "b": [0.5, 1.5]})
    with pytest.raises(tb.ValueRangeError, match=r"at data\['b'\]"):
        tb.to_numpy(big, dtype=np.int64)


def test_one_frame_dtype_with_dtype_is_cast_by_the_planner() -> None:
    df = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 70000.0]})
    assert tb.to_tensor(df, dtype=torch.bfloat16).dtype is torch.bfloat16
    with pytest.raises(tb.ValueRangeError, match=r"value 70000\.0 does not fit float16"):
        tb.to_tensor(df, dtype=torch.float16)


def test_column_errors_name_the_column_in_the_path() -> None:
    df = pd.DataFrame({"a": [1, 2], 0: pd.array([1, None], dtype="Int64")})
    with pytest.raises(tb.ValueRangeError) as excinfo:
        tb.to_tensor({"df": df})
    assert _message(excinfo).startswith("to_tensor at data['df'][0]: column 0 has 1 missing value (NA) among 2")
    assert "df[0].fillna(...)" in _message(excinfo)
    filled = tb.to_tensor({"df": df}, na_value=-5)["df"]
    assert filled.tolist() == [[1, 1], [2, -5]]
    dates = pd.DataFrame({"when": pd.to_datetime(["2020-01-01"])})
    with pytest.raises(tb.UnsupportedError, match=r"at data\['when'\]: column 'when' holds datetime64"):
        tb.to_numpy(dates)


def test_datetime_columns_in_one_block_are_one_view_in_their_own_unit() -> None:
    stamps = np.array([["2020-01-01", "2021-01-01"], ["2022-01-01", "2023-01-01"]], "datetime64[us]")
    df = pd.DataFrame(stamps, columns=["start", "end"])
    a = tb.to_numpy(df, datetime_unit="us")
    _same(a, stamps.astype(np.int64))
    assert all(np.shares_memory(a, df[c].to_numpy()) for c in df) and not a.flags.writeable
    _same(tb.to_tensor(df, datetime_unit="ms").numpy(), stamps.astype(np.int64) // 1000)


def test_frames_of_nullable_and_datetime_columns() -> None:
    df = pd.DataFrame({"a": pd.array([1, 2], dtype="Int64"), "b": pd.array([3, None], dtype="Int64")})
    _same(tb.to_numpy(df, na_value=0), np.array([[1, 3], [2, 0]]))
    when = pd.DataFrame(
        {"start": pd.to_datetime(["1970-01-01", "1970-01-02"]), "end": pd.to_datetime(["1970-01-03", None])}
    )
    _same(tb.to_numpy(when, datetime_unit="D", na_value=-1), np.array([[0, 2], [1, -1]]))


@pytest.mark.parametrize(
    ("df", "shape", "dtype"),
    [
        (pd.DataFrame(), (0, 0), np.float64),
        (pd.DataFrame(index=range(3)), (3, 0), np.float64),
        (pd.DataFrame({"a": pd.Series([], dtype="int32"), "b": pd.Series([], dtype="int32")}), (0, 2), np.int32),
        (pd.DataFrame({"a": pd.Series([], dtype="Int16")}), (0, 1), np.int16),
    ],
)
def test_empty_frames(df: Any, shape: tuple[int, int], dtype: type) -> None:
    a = tb.to_numpy(df)
    assert a.shape == shape and a.dtype == dtype
    t = tb.to_tensor(df)
    assert tuple(t.shape) == shape
    assert tb.to_tensor(df, dtype=torch.float32).dtype is torch.float32


def test_the_index_of_a_frame_is_dropped_and_reset_index_keeps_it() -> None:
    df = pd.DataFrame({"v": [1.0, 2.0]}, index=pd.Index([10.0, 20.0], name="k"))
    assert tb.to_tensor(df).tolist() == [[1.0], [2.0]]
    assert tb.to_tensor(df.reset_index()).tolist() == [[10.0, 1.0], [20.0, 2.0]]


def test_frames_inside_containers_and_explain() -> None:
    df = pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0]})
    out = tb.to_tensor({"batch": [df, df["x"]], "n": 3})
    assert out["n"] == 3
    assert out["batch"][0].tolist() == [[1.0, 3.0], [2.0, 4.0]] and out["batch"][1].tolist() == [1.0, 2.0]
    text = str(tb.explain({"batch": [df]}))
    assert "data['batch'][0]" in text and "adopt (DataFrame: 2 float64 columns as one 2-D array" in text


def test_an_extension_array_converts_like_a_series() -> None:
    assert tb.to_tensor(pd.array([1, 2], dtype="Int32")).dtype is torch.int32
    with pytest.raises(tb.ValueRangeError, match="the array has 1 missing value"):
        tb.to_numpy(pd.array([1.0, None], dtype="Float64"))


def test_copy_false_refuses_a_frame_that_must_be_gathered() -> None:
    df = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    df["c"] = [5.0, 6.0]
    with pytest.raises(tb.CopyRefusedError, match="3 columns gathered"):
        tb.to_tensor(df, copy=False)
