"""Planning is pure: ``explain()`` never calls a producer, never reads, copies, casts or moves data.

Each test builds leaves whose data access is counted (a producer's ``__array__``/``__dlpack__``,
pandas' ``to_numpy``/``__array__``/``isna``, torch's ``dequantize``/``int_repr``/``clone``, SciPy's
canonical-format scan and constructors), explains them in both directions, inside containers and
with options, and checks that no count moved; then converts the same leaves and checks the values.
"""

from __future__ import annotations

import inspect
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

import tensorbridge as tb

pytestmark = [
    pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions:UserWarning"),
]


class Calls:
    """Counts calls of methods and property reads patched on classes or modules (undone after the test)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: Counter[str] = Counter()
        self._mp = monkeypatch

    def watch(self, owner: Any, name: str, when: Callable[..., bool] | None = None) -> None:
        label = f"{getattr(owner, '__name__', owner)}.{name}"
        raw = inspect.getattr_static(owner, name)
        if not callable(raw) and hasattr(raw, "__get__"):  # a property, or pandas' cache_readonly

            def getter(obj: Any) -> Any:
                self.seen[label] += 1
                return raw.__get__(obj, type(obj))

            keep = (raw.fset, raw.fdel) if isinstance(raw, property) else (None, None)
            self._mp.setattr(owner, name, property(getter, *keep))
            return
        func = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if when is None or when(*args, **kwargs):
                self.seen[label] += 1
            return func(*args, **kwargs)

        self._mp.setattr(owner, name, staticmethod(wrapper) if isinstance(raw, staticmethod) else wrapper)

    @property
    def total(self) -> int:
        return sum(self.seen.values())

    def reset(self) -> None:
        self.seen.clear()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    yield Calls(monkeypatch)


def _explain_all(leaves: dict[str, Any], to: str, variants: list[dict[str, Any]]) -> None:
    """Explain each leaf alone and all of them in one container, with each set of options."""
    for options in variants:
        for leaf in leaves.values():
            str(tb.explain(leaf, to=to, **options))  # type: ignore[arg-type]
        plan = tb.explain({"batch": dict(leaves), "n": 3}, to=to, **options)  # type: ignore[arg-type]
        str(plan)
        _ = plan.shares_memory


# --- array producers --------------------------------------------------------------------------


class CountingArray:
    """An ``__array__`` producer that reads its data (as an HDF5 or Zarr dataset does) and counts it."""

    def __init__(self, a: np.ndarray[Any, Any]) -> None:
        self._a = a
        self.reads = 0

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray[Any, Any]:
        self.reads += 1
        return self._a.copy()


class CountingDLPack:
    """A host DLPack producer (over a NumPy array) that counts its exports."""

    def __init__(self, a: np.ndarray[Any, Any], device: tuple[int, int] = (1, 0)) -> None:
        self._a = a
        self._device = device
        self.exports = 0

    def __dlpack__(self, **kwargs: Any) -> Any:
        self.exports += 1
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._device


class CountingGpu:
    """Says it lives on CUDA device 0 (kDLCUDA = 2); counts its exports, which fail without a GPU."""

    strides = (8,)

    def __init__(self) -> None:
        self.exports = 0

    def __dlpack__(self, **kwargs: Any) -> Any:
        self.exports += 1
        raise BufferError("no real device here")

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, 0)


_TENSOR_VARIANTS: list[dict[str, Any]] = [
    {},
    {"dtype": torch.float32},
    {"copy": True},
    {"copy": False},
    {"requires_grad": True, "dtype": torch.float64},
    {"dense": True},
]
_NUMPY_VARIANTS: list[dict[str, Any]] = [{}, {"dtype": np.float32}, {"copy": True}, {"copy": False}]


def test_explain_never_calls_array_or_dlpack() -> None:
    base = np.arange(6, dtype=np.int16).reshape(2, 3)
    ds, dl, gpu = CountingArray(base), CountingDLPack(base.astype(np.float64)), CountingGpu()
    leaves = {"ds": ds, "dl": dl, "gpu": gpu}
    _explain_all(leaves, "tensor", _TENSOR_VARIANTS)
    _explain_all(leaves, "numpy", _NUMPY_VARIANTS)
    assert (ds.reads, dl.exports, gpu.exports) == (0, 0, 0)
    # Converting still reads each producer, and gives its values.
    out = tb.to_tensor({"ds": ds, "dl": dl})
    assert out["ds"].dtype is torch.int16 and out["ds"].tolist() == base.tolist()
    assert out["dl"].dtype is torch.float64 and out["dl"].tolist() == base.tolist()
    assert tb.to_numpy(ds, dtype=np.float32).tolist() == base.astype(np.float32).tolist()
    assert ds.reads == 2 and dl.exports == 1
    with pytest.raises(tb.DeviceError, match=r"at data\['gpu'\]: torch could not import"):
        tb.to_tensor({"gpu": gpu})  # torch asks for CUDA's stream first, or calls __dlpack__: it fails now


def test_a_failing_producer_fails_at_conversion_not_at_explain() -> None:
    class Closed:
        reads = 0

        def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray[Any, Any]:
            Closed.reads += 1
            raise KeyError("the dataset's file was closed")

    plan = tb.explain({"ds": Closed()})
    assert Closed.reads == 0 and plan.plans[0].error is None and "through __array__" in str(plan)
    with pytest.raises(tb.UnsupportedError, match=r"adoption at data\['ds'\]: .*Closed could not be handed over"):
        tb.to_tensor({"ds": Closed()})
    assert Closed.reads == 1


def test_copy_false_of_a_producer_shares_what_it_hands_over() -> None:
    base = np.arange(4.0)
    dl = CountingDLPack(base)
    plan = tb.explain(dl, copy=False)
    assert dl.exports == 0 and plan.shares_memory
    t = tb.to_tensor(dl, copy=False)
    t[0] = 9.0
    assert base[0] == 9.0 and dl.exports == 1


# --- pandas -----------------------------------------------------------------------------------


def _watch_pandas(calls: Calls, pd: Any) -> None:
    masked = next(c for c in type(pd.array([1], dtype="Int64")).__mro__ if c.__name__ == "BaseMaskedArray")
    numpy_backed = type(pd.Series([1.0]).array)
    for owner in (pd.Series, pd.DataFrame, pd.Index):
        for name in ("to_numpy", "__array__", "isna", "astype"):
            if hasattr(owner, name):
                calls.watch(owner, name)
    for owner in (pd.Series, pd.Index):
        for name in ("array", "values"):
            calls.watch(owner, name)
    for name in ("to_numpy", "__array__", "isna", "astype"):
        calls.watch(masked, name)  # every nullable column
    for name in ("to_numpy", "__array__", "astype"):
        calls.watch(numpy_backed, name)


def test_explain_never_reads_pandas_data(calls: Calls) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0]})
    mixed = pd.DataFrame({"i": [1, 2, 3], "f": [0.5, 1.5, 2.5], "n": pd.array([1, None, 3], dtype="Int16")})
    leaves = {
        "s": pd.Series([1.5, 2.5, 3.5], name="s"),
        "nullable": pd.Series([1, None, 3], dtype="Int64", name="nullable"),
        "when": pd.Series(pd.to_datetime(["2020-01-01", None, "2021-01-01"]), name="when"),
        "df": frame,
        "mixed": mixed,
        "idx": pd.Index([1.0, 2.0]),
        "arr": pd.array([1.0, None], dtype="Float64"),
    }
    _watch_pandas(calls, pd)
    variants: list[dict[str, Any]] = [
        {},
        {"na_value": 0},
        {"na_value": -1, "datetime_unit": "s"},
        {"dtype": torch.float32, "na_value": 0, "datetime_unit": "D"},
        {"copy": True, "na_value": 7, "datetime_unit": "ms"},
        {"copy": False, "na_value": 7, "datetime_unit": "ns"},
    ]
    _explain_all(leaves, "tensor", variants)
    np_variants = [{k: np.float64 if k == "dtype" else v for k, v in o.items()} for o in variants]
    _explain_all(leaves, "numpy", np_variants)
    assert calls.seen == Counter(), "explain() read pandas data"
    # Converting reads them, with the same results as ever.
    out = tb.to_tensor(leaves, na_value=-1, datetime_unit="D", dtype=torch.float64)
    assert out["s"].tolist() == [1.5, 2.5, 3.5]
    assert out["nullable"].tolist() == [1.0, -1.0, 3.0]
    assert out["when"].tolist() == [18262.0, -1.0, 18628.0]
    assert out["df"].tolist() == [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]
    assert out["mixed"].tolist() == [[1.0, 0.5, 1.0], [2.0, 1.5, -1.0], [3.0, 2.5, 3.0]]
    assert out["arr"].tolist() == [1.0, -1.0]
    assert calls.total > 0
    assert tb.to_numpy(frame).tolist() == [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]


def test_pandas_errors_that_need_the_data_come_at_conversion() -> None:
    pd = pytest.importorskip("pandas")
    s = pd.Series([1, None, None, 0], dtype="Int64", name="price")
    plan = tb.explain({"s": s})
    assert plan.plans[0].error is None  # whether values are missing is in the data
    with pytest.raises(tb.ValueRangeError, match=r"at data\['s'\]: Series 'price' has 2 missing values"):
        tb.to_tensor({"s": s})
    # What the metadata shows is still refused while planning.
    refused = tb.explain({"c": pd.Series(["a", "b"], dtype="category")})
    assert refused.plans[0].error is not None


def test_copy_false_refuses_at_conversion_when_the_data_needs_a_copy() -> None:
    pd = pytest.importorskip("pandas")
    s = pd.Series(np.array(["2020-01-01", "NaT"], "datetime64[us]"), name="t")
    assert tb.explain(s, copy=False, datetime_unit="us", na_value=-1).plans[0].error is None
    with pytest.raises(tb.CopyRefusedError, match=r"copy=False, but adopting this leaf copies"):
        tb.to_tensor(s, copy=False, datetime_unit="us", na_value=-1)
    same = pd.Series(np.array(["2020-01-01", "2021-01-01"], "datetime64[us]"))
    assert tb.to_tensor(same, copy=False, datetime_unit="us").tolist() == [1577836800000000, 1609459200000000]


# --- quantized and nested tensors -------------------------------------------------------------


def _quantized() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.linspace(-2, 2, 12).reshape(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        per_tensor = torch.quantize_per_tensor(x, 0.05, 3, torch.qint8)
        scales = torch.tensor([0.02, 0.05, 0.09], dtype=torch.float64)
        per_channel = torch.quantize_per_channel(x, scales, torch.tensor([1, 2, 3]), 0, torch.quint8)
    return per_tensor, per_channel


def test_explain_never_dequantizes_or_copies_quantized_tensors(calls: Calls) -> None:
    q, qc = _quantized()
    want_q, want_qc = q.dequantize(), qc.dequantize()
    codes = q.int_repr()
    qa = tb.to_numpy(q, quantized="int")
    leaves = {"q": q, "qc": qc, "qa": qa}
    for name in ("dequantize", "int_repr", "clone", "cpu", "to", "pin_memory"):
        calls.watch(torch.Tensor, name)
    calls.watch(torch, "_make_per_tensor_quantized_tensor")
    calls.watch(torch, "_make_per_channel_quantized_tensor")
    _explain_all(
        leaves,
        "numpy",
        [
            {"quantized": "dequantize"},
            {"quantized": "dequantize", "dtype": np.float16},
            {"quantized": "dequantize", "copy": True},
            {"quantized": "int"},
            {"quantized": "int", "copy": True},
        ],
    )
    _explain_all(leaves, "tensor", [{}, {"copy": True}, {"device": "cpu"}])
    assert calls.seen == Counter(), "explain() touched quantized data"
    deq = tb.to_numpy(leaves, quantized="dequantize")
    assert np.array_equal(deq["q"], want_q.numpy()) and np.array_equal(deq["qc"], want_qc.numpy())
    assert np.array_equal(deq["qa"], want_q.numpy())
    assert np.array_equal(tb.to_numpy(q, quantized="int", copy=True).values, codes.numpy())
    back = tb.to_tensor(qa, copy=True)
    assert back.is_quantized and torch.equal(back.int_repr(), codes) and back.q_scale() == q.q_scale()
    assert calls.seen["Tensor.dequantize"] >= 3


def test_explain_never_copies_nested_components(calls: Calls) -> None:
    nt = tb.nested_tensor([np.arange(3.0), np.arange(2.0)])
    calls.watch(torch.Tensor, "clone")
    calls.watch(torch.Tensor, "to")
    calls.watch(torch.Tensor, "unbind")
    calls.watch(torch.nested, "nested_tensor")
    _explain_all({"n": nt}, "numpy", [{}, {"copy": True}, {"dtype": np.float32}])
    _explain_all({"n": nt}, "tensor", [{}, {"copy": True}, {"dtype": torch.float32}])
    assert calls.seen == Counter()
    parts = tb.to_numpy(nt, dtype=np.float32)
    assert [p.tolist() for p in parts] == [[0.0, 1.0, 2.0], [0.0, 1.0]] and parts[0].dtype == np.float32
    cast = tb.to_tensor(nt, dtype=torch.float32)
    assert cast.is_nested and cast.dtype is torch.float32


# --- sparse -----------------------------------------------------------------------------------


def _watch_sparse(calls: Calls, sp: Any) -> None:
    base = next(c for c in sp.csr_array.__mro__ if c.__name__ == "_spbase")
    calls.watch(base, "__init__")  # every SciPy constructor, copy() and astype() included
    compressed = next(c for c in sp.csr_array.__mro__ if c.__name__ == "_cs_matrix")
    for name in ("has_canonical_format", "has_sorted_indices"):
        calls.watch(compressed, name)
    for name in ("sum_duplicates", "sort_indices", "toarray"):
        calls.watch(compressed, name)
    for name in ("sparse_coo_tensor", "sparse_compressed_tensor"):
        calls.watch(torch, name)
    for name in ("to_dense", "coalesce", "clone", "cpu", "to"):
        calls.watch(torch.Tensor, name)


def test_explain_never_scans_or_builds_sparse_data(calls: Calls) -> None:
    sp = pytest.importorskip("scipy.sparse")
    dense = np.array([[0.0, 1.5, 0.0], [2.0, 0.0, 3.0]])
    unsorted = sp.csr_array((np.array([1.0, 2.0, 5.0]), np.array([2, 0, 2]), np.array([0, 3, 3])), shape=(2, 3))
    leaves = {
        "csr": sp.csr_array(dense),
        "csc": sp.csc_matrix(dense),
        "coo": sp.coo_array(dense),
        "unsorted": unsorted,
        "t_coo": torch.from_numpy(dense).to_sparse(),
        "t_csr": torch.from_numpy(dense).to_sparse_csr(),
    }
    _watch_sparse(calls, sp)
    _explain_all(leaves, "tensor", [{}, {"dtype": torch.float32}, {"copy": True}, {"copy": False}, {"dense": True}])
    _explain_all(leaves, "numpy", [{}, {"dtype": np.float32}, {"copy": True}, {"copy": False}, {"dense": True}])
    assert calls.seen == Counter(), "explain() read sparse data"
    out = tb.to_tensor(leaves)
    for name in ("csr", "csc", "coo", "t_coo", "t_csr"):
        assert out[name].to_dense().tolist() == dense.tolist(), name
    assert out["unsorted"].values().tolist() == [2.0, 6.0]
    back = tb.to_numpy(leaves, dtype=np.float32)
    for name in ("csr", "csc", "coo", "t_coo", "t_csr"):
        assert back[name].toarray().tolist() == dense.tolist(), name
    assert tb.to_numpy(leaves["t_csr"], dense=True).tolist() == dense.tolist()
    assert calls.total > 0


def test_a_non_canonical_matrix_is_found_at_conversion() -> None:
    sp = pytest.importorskip("scipy.sparse")
    X = sp.csr_array((np.array([1.0, 2.0, 5.0]), np.array([2, 0, 2]), np.array([0, 3, 3, 3])), shape=(3, 3))
    plan = tb.explain(X, copy=False)
    assert plan.plans[0].error is None and not hasattr(X, "_has_canonical_format"), "nothing scanned"
    with pytest.raises(tb.CopyRefusedError, match=r"unsorted or duplicate indices within a row.*sum_duplicates"):
        tb.to_tensor(X, copy=False)
    t = tb.to_tensor(X)
    assert t.values().tolist() == [2.0, 6.0] and X.data.tolist() == [1.0, 2.0, 5.0]
    # Once SciPy knows (its cached flag), explain says so without scanning again.
    assert not X.has_canonical_format
    assert "everything copied (unsorted or duplicate indices within a row" in str(tb.explain(X))
