"""SciPy sparse matrices <-> torch sparse tensors, format for format.

Sharing is proved by writing through one side and reading the other; round trips compare the
bits of values and index arrays; every refusal is matched on its message.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from typing import Any

import numpy as np
import pytest
import torch

import tensorbridge as tb
from tensorbridge.adapters import adapter_for
from tensorbridge.adapters._sparse_common import _coords
from tensorbridge.adapters.sparse import ADAPTER
from tensorbridge.adapters.sparse_to_scipy import _scipy_holds
from tensorbridge.dtypes import DtypeRow
from tensorbridge.plan.core import InteropOptions, ToNumpyOptions, ToTensorOptions

from .helpers import EXACT_ROWS, bits, quiet_tensor, random_bits

# torch warns once per process that its compressed layouts are beta; the tests build such
# tensors themselves. That the adapter itself never lets the warning out is checked in a
# subprocess run with -W error (test_no_warnings_reach_the_caller).
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning")

FORMATS = ["coo", "csr", "csc", "bsr"]
LAYOUTS = {"coo": torch.sparse_coo, "csr": torch.sparse_csr, "csc": torch.sparse_csc, "bsr": torch.sparse_bsr}
# Rows whose values SciPy's sparse formats hold (no float16, no ml_dtypes).
SCIPY_ROWS = [row for row in EXACT_ROWS if _scipy_holds(row.numpy)]
DENSE = InteropOptions(dense=True)


@pytest.fixture
def sp() -> Any:
    return pytest.importorskip("scipy.sparse")


def make(sp: Any, fmt: str, values: DtypeRow | np.dtype[Any], shape: tuple[int, int] = (6, 8), seed: int = 0) -> Any:
    """A canonical SciPy array of ``fmt`` with random structure and random value bits.

    Its index arrays are contiguous int32, as SciPy's own conversions make them for this size.
    """
    rng = np.random.default_rng(seed)
    row = values if isinstance(values, DtypeRow) else tb.ROWS[[r.numpy for r in tb.ROWS].index(values)]
    if fmt == "bsr":
        blocks = rng.random((shape[0] // 2, shape[1] // 2)) < 0.5
        indptr = np.concatenate([[0], np.cumsum(blocks.sum(1))]).astype(np.int32)
        data = random_bits(row, (int(blocks.sum()), 2, 2), seed)
        return sp.bsr_array((data, np.nonzero(blocks)[1].astype(np.int32), indptr), shape=shape)
    mask = rng.random(shape) < 0.4
    data = random_bits(row, (int(mask.sum()),), seed)
    if fmt == "coo":
        return sp.coo_array((data, tuple(i.astype(np.int32) for i in np.nonzero(mask))), shape=shape)
    if fmt == "csc":
        mask = mask.T
    indptr = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int32)
    cls = sp.csr_array if fmt == "csr" else sp.csc_array
    return cls((data, np.nonzero(mask)[1].astype(np.int32), indptr), shape=shape)


def torch_make(sp: Any, layout: str, row: DtypeRow) -> torch.Tensor:
    """A sparse tensor with torch's int64 indices, built by torch's own constructors (not the adapter)."""
    X = make(sp, layout, row, seed=1)
    values = torch.from_numpy(X.data)
    if layout == "coo":
        index = torch.from_numpy(np.stack(_coords(X)).astype(np.int64))
        return torch.sparse_coo_tensor(index, values, X.shape, is_coalesced=True, check_invariants=True)
    compressed, plain = (torch.from_numpy(a.astype(np.int64)) for a in (X.indptr, X.indices))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_compressed_tensor(
            compressed, plain, values, X.shape, layout=LAYOUTS[layout], check_invariants=True
        )


def parts_of(x: Any) -> list[np.ndarray[Any, Any]]:
    """Values, then each index array (COO: one per axis), as NumPy views, in one order for both libraries."""
    if isinstance(x, torch.Tensor):
        if x.layout == torch.sparse_coo:
            return [tb.to_numpy(x._values()), *x._indices().numpy()]
        if x.layout in (torch.sparse_csr, torch.sparse_bsr):
            return [tb.to_numpy(x.values()), x.crow_indices().numpy(), x.col_indices().numpy()]
        return [tb.to_numpy(x.values()), x.ccol_indices().numpy(), x.row_indices().numpy()]
    if x.format == "coo":
        return [x.data, *_coords(x)]
    return [x.data, x.indptr, x.indices]


def same_bits(a: Any, b: Any) -> None:
    pa, pb = parts_of(a), parts_of(b)
    assert pa[0].dtype == pb[0].dtype and bits(pa[0]) == bits(pb[0]), "values differ"
    for x, y in zip(pa[1:], pb[1:], strict=True):
        assert x.tolist() == y.tolist(), "indices differ"


# --- what the adapter claims -----------------------------------------------------------------


def test_claims_every_scipy_format_and_every_sparse_layout(sp: Any) -> None:
    dense = np.eye(4)
    for fmt in ("coo", "csr", "csc", "bsr", "lil", "dok", "dia"):
        assert ADAPTER.claims(sp.csr_array(dense).asformat(fmt)), fmt
        assert ADAPTER.claims(sp.csr_matrix(dense).asformat(fmt)), fmt
        assert adapter_for(sp.csr_array(dense).asformat(fmt)) is ADAPTER
    t = torch.eye(4)
    for layout in (t.to_sparse(), t.to_sparse_csr(), t.to_sparse_csc(), t.to_sparse_bsr(2), t.to_sparse_bsc(2)):
        assert ADAPTER.claims(layout), layout.layout
    assert not ADAPTER.claims(t) and not ADAPTER.claims(dense) and not ADAPTER.claims([1])


def test_importing_or_claiming_never_imports_scipy() -> None:
    code = """
        import sys, torch, tensorbridge as tb
        from tensorbridge.adapters.sparse import ADAPTER
        t = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
        assert ADAPTER.claims(t.to_sparse()) and not ADAPTER.claims(object())
        assert tb.to_tensor(t.to_sparse()).layout == torch.sparse_coo
        assert tb.to_numpy({"s": t.to_sparse()}, dense=True)["s"].tolist() == [[0, 2], [3, 0]]
        print(sorted(m for m in sys.modules if m.split(".")[0] == "scipy"))
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_no_warnings_reach_the_caller(sp: Any) -> None:
    code = """
        import numpy as np, scipy.sparse as sp, torch, tensorbridge as tb
        X = sp.csr_array(np.arange(25.0).reshape(5, 5) % 3)
        ro = X.copy(); ro.data.flags.writeable = False
        for fmt in ("coo", "csr", "csc", "bsr"):
            t = tb.to_tensor(X.asformat(fmt))
            tb.to_numpy(t); tb.to_tensor(t, dtype=torch.float32); tb.to_numpy(t, dense=True)
        tb.to_tensor(ro, copy=False)
    """
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


# --- round trips, bit for bit ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("row", SCIPY_ROWS, ids=lambda r: r.name)
def test_scipy_round_trip_is_bit_exact(sp: Any, fmt: str, row: DtypeRow) -> None:
    X = make(sp, fmt, row)
    t = tb.to_tensor({"adj": X})["adj"]
    assert t.layout is LAYOUTS[fmt] and t.dtype is row.torch and tuple(t.shape) == X.shape
    same_bits(X, t)
    Y = tb.to_numpy([t])[0]
    assert type(Y) is getattr(sp, f"{fmt}_array") and Y.shape == X.shape
    same_bits(X, Y)
    if fmt == "bsr":
        assert Y.blocksize == X.blocksize == (2, 2)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("row", [r for r in EXACT_ROWS if not _scipy_holds(r.numpy)], ids=lambda r: r.name)
def test_values_scipy_cannot_hold_still_reach_torch_exactly(sp: Any, fmt: str, row: DtypeRow) -> None:
    """SciPy's constructors accept float16/bfloat16/float8 data (its operations do not): torch gets every bit."""
    X = make(sp, "csr", np.float64).asformat(fmt)
    X.data = random_bits(row, X.data.shape, 3)
    t = tb.to_tensor(X)
    assert t.dtype is row.torch
    same_bits(X, t)
    with pytest.raises(tb.UnsupportedError, match=f"cannot hold {row.numpy} values.*dtype=np.float32") as info:
        tb.to_numpy({"w": t})
    assert info.value.path == "data['w']"
    wide = tb.to_numpy(t, dtype=np.float32)  # float32 holds every value of these dtypes exactly
    assert wide.dtype == np.float32 and np.array_equal(wide.data, X.data.astype(np.float32), equal_nan=True)


@pytest.mark.parametrize("layout", ["coo", "csr", "csc", "bsr"])
@pytest.mark.parametrize("row", SCIPY_ROWS, ids=lambda r: r.name)
def test_torch_round_trip_is_bit_exact(sp: Any, layout: str, row: DtypeRow) -> None:
    t = torch_make(sp, layout, row)
    X = tb.to_numpy(t)
    assert X.format == layout and X.dtype == row.numpy
    same_bits(X, t)
    back = tb.to_tensor(X)
    assert back.layout is t.layout
    same_bits(back, t)
    assert parts_of(back)[1].ctypes.data == parts_of(t)[1].ctypes.data, "index memory went round and came back"


def test_complex32_becomes_complex64_exactly(sp: Any) -> None:
    t = quiet_tensor(lambda: torch.tensor([[0, 1 + 2j], [3j, 0]], dtype=torch.complex32).to_sparse())
    X = tb.to_numpy(t)
    assert X.dtype == np.complex64 and X.toarray().tolist() == [[0, 1 + 2j], [3j, 0]]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(0, 4), (4, 6), (0, 0)])
def test_empty_matrices(sp: Any, fmt: str, shape: tuple[int, int]) -> None:
    X = sp.csr_array(shape, dtype=np.float32).asformat(fmt)
    if fmt == "bsr":
        X = sp.bsr_array(shape, blocksize=(2, 2), dtype=np.float32)
    t = tb.to_tensor(X)
    assert t.layout is LAYOUTS[fmt] and tuple(t.shape) == shape and t._nnz() == 0
    Y = tb.to_numpy(t)
    assert Y.format == fmt and Y.shape == shape and Y.nnz == 0 and Y.dtype == np.float32
    assert tb.to_tensor(X, copy=False)._nnz() == 0, "an empty COO has no indices to copy"


def test_coo_of_any_dimension(sp: Any) -> None:
    vec = sp.coo_array(np.array([0, 5, 0, 7]))
    if vec.ndim != 1:
        pytest.skip("this SciPy has only 2-D sparse arrays")
    t = tb.to_tensor(vec)
    assert t.shape == (4,) and t.to_dense().tolist() == [0, 5, 0, 7]
    cube = sp.coo_array(np.arange(8).reshape(2, 2, 2) % 3)
    t3 = tb.to_tensor(cube)
    assert t3.shape == (2, 2, 2) and t3.to_dense().tolist() == (np.arange(8).reshape(2, 2, 2) % 3).tolist()
    back = tb.to_numpy(t3)
    assert back.shape == (2, 2, 2) and back.toarray().tolist() == cube.toarray().tolist()


# --- sharing, proved by writing --------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csr", "csc", "bsr"])
def test_compressed_matrices_share_every_part(sp: Any, fmt: str) -> None:
    X = make(sp, fmt, np.float64)
    t = tb.to_tensor(X)
    t.values()[0] = 123.0
    assert X.data.reshape(-1)[0] == 123.0, "a write to the tensor's values reaches X.data"
    X.data.reshape(-1)[1] = -7.0
    assert t.values().reshape(-1)[1] == -7.0
    compressed, plain = (t.crow_indices(), t.col_indices()) if fmt != "csc" else (t.ccol_indices(), t.row_indices())
    assert compressed.data_ptr() == X.indptr.ctypes.data and plain.data_ptr() == X.indices.ctypes.data
    plan = tb.explain({"adj": X})
    assert plan.shares_memory and "adopt (data, indptr, indices shared)" in str(plan)


def test_coo_shares_values_and_copies_int32_coords(sp: Any) -> None:
    X = make(sp, "coo", np.float32)
    assert _coords(X)[0].dtype == np.int32
    t = tb.to_tensor(X)
    t._values()[0] = 99.0
    assert X.data[0] == 99.0
    assert t._indices().dtype is torch.int64
    t._indices()[0, 0] += 1
    assert _coords(X)[0][0] == t._indices()[0, 0] - 1, "the coords are a copy"
    text = str(tb.explain(X))
    assert "coords copied (torch keeps one (ndim, nnz) int64 array, SciPy one int32 array per axis" in text
    assert "data shared" in text and tb.explain(X).shares_memory
    with pytest.raises(tb.CopyRefusedError, match=r"at data\['a'\]: copy=False, but the conversion must copy: coords"):
        tb.to_tensor({"a": X}, copy=False)


def test_int64_coords_of_one_buffer_are_viewed_not_stacked(sp: Any) -> None:
    mask = np.eye(4, dtype=bool) | np.eye(4, k=1, dtype=bool)
    X = sp.coo_array((np.arange(7.0), np.nonzero(mask)), shape=(4, 4))  # np.nonzero: rows of one int64 buffer
    assert _coords(X)[0].dtype == np.int64 and not _coords(X)[0].flags.c_contiguous
    t = tb.to_tensor(X, copy=False)
    t._indices()[1, 0] = 3
    assert _coords(X)[1][0] == 3, "torch's (2, nnz) indices are a strided view of SciPy's coords"
    assert "data, coords shared" in str(tb.explain(X))
    apart = sp.coo_array((np.arange(7.0), tuple(c.copy() for c in np.nonzero(mask))), shape=(4, 4))
    assert "coords copied" in str(tb.explain(apart)), "two allocations are never viewed as one"


def test_compressed_indices_must_be_contiguous(sp: Any) -> None:
    X = make(sp, "csr", np.float64)
    X.indices = np.stack([X.indices, X.indices], axis=1)[:, 0]
    assert not X.indices.flags.c_contiguous
    t = tb.to_tensor(X)
    assert t.col_indices().tolist() == X.indices.tolist() and t.crow_indices().data_ptr() == X.indptr.ctypes.data
    assert "indices copied (not contiguous, which torch's compressed indices must be)" in str(tb.explain(X))
    strided = make(sp, "csr", np.float64)
    strided.data = np.stack([strided.data, strided.data], axis=1)[:, 0]
    view = tb.to_tensor(strided, copy=False)
    view.values()[0] = 5.0
    assert strided.data[0] == 5.0, "strided values are kept as they are"


def test_torch_to_scipy_shares_every_part(sp: Any) -> None:
    for t in (torch.eye(3).to_sparse(), torch.eye(3).to_sparse_csr(), torch.eye(4).to_sparse_bsr(2)):
        X = tb.to_numpy(t)
        X.data.reshape(-1)[0] = 5.0
        values = t._values() if t.layout == torch.sparse_coo else t.values()
        assert values.reshape(-1)[0] == 5.0, t.layout
        if t.layout == torch.sparse_coo:
            assert _coords(X)[1].ctypes.data == t._indices()[1].data_ptr()
        else:
            assert X.indptr.ctypes.data == t.crow_indices().data_ptr()
        assert tb.explain(t, to="numpy").shares_memory


def test_a_tensor_that_requires_grad_is_detached_not_copied(sp: Any) -> None:
    t = torch.eye(3).to_sparse().requires_grad_()
    X = tb.to_numpy(t)
    assert X.data.ctypes.data == t._values().data_ptr()
    assert t.requires_grad


def test_read_only_and_byte_swapped_values_are_copied(sp: Any) -> None:
    X = make(sp, "csr", np.float64)
    X.data.flags.writeable = False
    t = tb.to_tensor(X)
    t.values()[0] = 1e9
    assert X.data[0] != 1e9, "writes must not reach read-only memory"
    assert "data copied (read-only memory" in str(tb.explain(X))
    shared = tb.to_tensor(X, copy=False)
    assert shared.values().data_ptr() == X.data.ctypes.data, "copy=False shares read-only memory (README)"
    Y = make(sp, "csr", np.float64)
    Y.data = Y.data.astype(">f8")
    swapped = tb.to_tensor(Y)
    assert swapped.values().tolist() == Y.data.tolist()
    with pytest.raises(tb.CopyRefusedError, match="non-native byte order"):
        tb.to_tensor(Y, copy=False)


# --- duplicates and canonical format ---------------------------------------------------------


def test_coo_keeps_duplicates_and_its_canonical_flag(sp: Any) -> None:
    dup = sp.coo_array((np.array([1.0, 2.0, 4.0]), (np.array([0, 0, 1]), np.array([1, 1, 0]))), shape=(2, 2))
    assert not dup.has_canonical_format
    t = tb.to_tensor(dup)
    assert not t.is_coalesced() and t._nnz() == 3 and t.to_dense().tolist() == [[0, 3], [4, 0]]
    canonical = dup.copy()
    canonical.sum_duplicates()
    assert tb.to_tensor(canonical).is_coalesced()
    back = tb.to_numpy(t)
    assert not back.has_canonical_format and back.nnz == 3 and back.toarray().tolist() == [[0, 3], [4, 0]]
    assert tb.to_numpy(t.coalesce()).has_canonical_format


def test_scipy_claiming_a_false_canonical_format_is_caught(sp: Any) -> None:
    dup = sp.coo_array((np.array([1.0, 2.0]), (np.array([0, 0]), np.array([1, 1]))), shape=(2, 2))
    dup.has_canonical_format = True
    with pytest.raises(tb.ValueRangeError, match=r"breaks torch's sparse_coo invariants.*uncoalesced"):
        tb.to_tensor(dup)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_non_canonical_compressed_matrices_are_made_canonical_on_a_copy(sp: Any, fmt: str) -> None:
    cls = sp.csr_array if fmt == "csr" else sp.csc_array
    X = cls((np.array([1.0, 2.0, 5.0]), np.array([2, 0, 2]), np.array([0, 3, 3, 3])), shape=(3, 3))
    assert not X.has_canonical_format
    before = (X.data.copy(), X.indices.copy())
    t = tb.to_tensor(X)
    assert t.to_dense().tolist() == X.toarray().tolist()
    assert t.values().tolist() == [2.0, 6.0]
    assert X.data.tolist() == before[0].tolist() and X.indices.tolist() == before[1].tolist(), "input untouched"
    assert "everything copied (unsorted or duplicate indices within a row" in str(tb.explain(X))
    with pytest.raises(tb.CopyRefusedError, match=r"call X.sum_duplicates\(\) first"):
        tb.to_tensor(X, copy=False)


def test_out_of_range_indices_raise_instead_of_crashing_later(sp: Any) -> None:
    X = sp.csr_array((np.ones(2), np.array([0, 1]), np.array([0, 1, 2])), shape=(2, 2))
    X.indices[1] = 9
    with pytest.raises(tb.ValueRangeError, match=r"at data\['m'\]: the SciPy matrix breaks torch's sparse_csr"):
        tb.to_tensor({"m": X})


# --- options -------------------------------------------------------------------------------


def test_dtype_is_a_checked_cast_of_the_values(sp: Any) -> None:
    X = make(sp, "csr", np.float64)
    X.data[:] = np.arange(X.nnz)
    t = tb.to_tensor(X, dtype=torch.int16)
    assert t.dtype is torch.int16 and t.values().tolist() == list(range(X.nnz))
    assert t.col_indices().data_ptr() == X.indices.ctypes.data, "the indices stay shared"
    X.data[0] = 300
    with pytest.raises(tb.ValueRangeError, match=r"value 300\.0 does not fit int8"):
        tb.to_tensor(X, dtype=torch.int8)
    X.data[0] = 0.5
    with pytest.raises(tb.ValueRangeError, match="not a whole number"):
        tb.to_tensor(X, dtype=torch.int32)
    with pytest.raises(tb.CopyRefusedError, match="cast float64 -> float32"):
        tb.to_tensor(X, dtype=torch.float32, copy=False)
    half = tb.to_tensor(X, dtype=torch.bfloat16)
    assert half.dtype is torch.bfloat16 and half.layout is torch.sparse_csr


def test_longdouble_values_need_an_explicit_dtype(sp: Any) -> None:
    X = make(sp, "coo", np.float64).astype(np.longdouble)
    with pytest.raises(tb.UnsupportedError, match=r"dtype (longdouble|float128) have no torch dtype"):
        tb.to_tensor(X)
    assert tb.to_tensor(X, dtype=torch.float64).dtype is torch.float64


@pytest.mark.parametrize("fmt", FORMATS)
def test_copy_true_shares_nothing(sp: Any, fmt: str) -> None:
    X = make(sp, fmt, np.float64)
    t = tb.to_tensor(X, copy=True)
    for a, b in zip(parts_of(X), parts_of(t), strict=True):
        assert not np.shares_memory(a, b)
    assert not tb.explain(X, copy=True).shares_memory
    back = tb.to_numpy(t, copy=True)
    for a, b in zip(parts_of(back), parts_of(t), strict=True):
        assert not np.shares_memory(a, b)
    assert not tb.explain(t, to="numpy", copy=True).shares_memory


def test_device_cpu_is_a_no_op_and_requires_grad_makes_a_leaf(sp: Any) -> None:
    X = make(sp, "csr", np.float32)
    t = tb.to_tensor(X, device="cpu", requires_grad=True)
    assert t.requires_grad and t.is_leaf and t.values().data_ptr() == X.data.ctypes.data
    assert "adopt (data, indptr, indices shared; a leaf that requires grad)" in str(tb.explain(X, requires_grad=True))
    with pytest.raises(tb.UnsupportedError, match="requires_grad=True needs a float or complex dtype"):
        tb.to_tensor(make(sp, "csr", np.int64), requires_grad=True)
    if not torch.cuda.is_available():
        with pytest.raises(
            tb.DeviceError, match=r"at data\['a'\]: device cuda was asked for but CUDA is not available"
        ):
            tb.to_tensor({"a": X}, device="cuda")
        with pytest.raises(tb.DeviceError, match="CUDA is not available"):
            tb.to_tensor({"a": torch.eye(2).to_sparse()}, device="cuda")
    with pytest.raises(tb.UnsupportedError, match="pin_memory=True is not supported for sparse tensors"):
        tb.to_tensor(X, pin_memory=True)


def test_dense_true_densifies_both_ways(sp: Any) -> None:
    X = make(sp, "csr", np.float64)
    t = tb.to_tensor({"adj": X}, dense=True)["adj"]
    assert t.layout is torch.strided and t.tolist() == X.toarray().tolist()
    t[0, 0] = 42.0
    assert X.toarray()[0, 0] != 42.0
    text = str(tb.explain(X, dense=True))
    assert "adopt copy (densified (dense=True): SciPy toarray())" in text
    lil = tb.to_tensor(sp.lil_array(np.eye(2)), dense=True, dtype=torch.float32)
    assert lil.dtype is torch.float32 and lil.tolist() == [[1, 0], [0, 1]]
    s = torch.eye(3).to_sparse_csr()
    a = tb.to_numpy({"s": s}, dense=True)["s"]
    assert isinstance(a, np.ndarray) and a.tolist() == np.eye(3).tolist()
    assert tb.to_tensor(s, dense=True).layout is torch.strided
    assert isinstance(tb.to_numpy(X, dense=True), np.ndarray)
    for call in (lambda: tb.to_tensor(X, dense=True, copy=False), lambda: tb.to_numpy(s, dense=True, copy=False)):
        with pytest.raises(tb.CopyRefusedError, match="dense=True writes every value"):
            call()


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2])
def test_dense_true_for_dtypes_torch_cannot_densify(dtype: torch.dtype) -> None:
    values = torch.tensor([1, 2, 3], dtype=torch.uint8).to(dtype)
    index = torch.tensor([[0, 1, 1], [1, 0, 2]])
    coo = torch.sparse_coo_tensor(index, values, (2, 3), is_coalesced=True, check_invariants=True)
    crow, col = torch.tensor([0, 1, 3]), torch.tensor([1, 0, 2])
    csr = quiet_tensor(torch.sparse_csr_tensor, crow, col, values, (2, 3), check_invariants=True)
    want = np.zeros((2, 3), np.float64)
    want[0, 1], want[1, 0], want[1, 2] = 1, 2, 3
    for t in (coo, csr):
        a = tb.to_numpy(t, dense=True)
        assert a.dtype == tb.numpy_dtype(dtype) and a.astype(np.float64).tolist() == want.tolist()


def test_dense_sums_wrap_like_torch_for_unsigned_duplicates() -> None:
    big = torch.tensor([2**64 - 1, 2], dtype=torch.uint64)
    dup = torch.sparse_coo_tensor(torch.tensor([[0, 0]]), big, (1,), check_invariants=True)
    assert tb.to_numpy(dup, dense=True).tolist() == [1]


def test_dense_refuses_what_has_no_exact_dense_form() -> None:
    e8 = getattr(torch, "float8_e8m0fnu", None)
    if e8 is not None:
        t = torch.sparse_coo_tensor(torch.tensor([[0]]), torch.ones(1).to(e8), (2,), check_invariants=True)
        with pytest.raises(tb.UnsupportedError, match="torch cannot densify"):
            tb.to_numpy(t, dense=True)
    dup = torch.sparse_coo_tensor(
        torch.tensor([[0, 0]]), torch.ones(2).to(torch.float8_e4m3fn), (2,), check_invariants=True
    )
    with pytest.raises(tb.UnsupportedError, match=r"Coalesce it \(t.coalesce\(\)\) or cast the values first"):
        tb.to_numpy(dup, dense=True)


# --- formats and layouts with no counterpart ---------------------------------------------------


@pytest.mark.parametrize("fmt", ["lil", "dok", "dia"])
def test_other_scipy_formats_name_the_fix(sp: Any, fmt: str) -> None:
    X = sp.csr_array(np.eye(3)).asformat(fmt)
    to_tensor, to_numpy = tb.to_tensor, tb.to_numpy
    if fmt == "dok":  # a dict subclass the tree walks first: see test_dok_through_the_api

        def to_tensor(x: Any, **kw: Any) -> Any:
            return {"x": ADAPTER.to_tensor(x["x"], ToTensorOptions(**kw), "data['x']").run()}

        def to_numpy(x: Any, **kw: Any) -> Any:
            return ADAPTER.to_numpy(x, ToNumpyOptions(**kw), "data").run()

    with pytest.raises(
        tb.UnsupportedError,
        match=rf"at data\['x'\]: SciPy's {fmt.upper()} format has no torch layout. Convert it first with X.tocsr\(\)",
    ):
        to_tensor({"x": X})
    assert to_numpy(X) is X, "SciPy is NumPy-land already"
    with pytest.raises(tb.UnsupportedError, match=r"X.tocsr\(\)"):
        to_numpy(X, dtype=np.dtype(np.float32))
    assert to_numpy(X, copy=True) is not X


def test_dok_through_the_api(sp: Any) -> None:
    X = sp.dok_array(np.eye(2))
    with pytest.raises(tb.UnsupportedError, match=r"DOK format has no torch layout"):
        tb.to_tensor({"x": X})
    assert tb.to_tensor(X, dense=True).tolist() == [[1, 0], [0, 1]]


def test_one_dimensional_compressed_arrays_name_the_fix(sp: Any) -> None:
    v = sp.csr_array(np.array([0.0, 1.0, 0.0]))
    if v.ndim != 1:
        pytest.skip("this SciPy has only 2-D sparse arrays")
    with pytest.raises(tb.UnsupportedError, match=r"1-D CSR array has no torch layout.*X.tocoo\(\)"):
        tb.to_tensor(v)


def test_bsc_hybrid_and_batched_tensors_name_the_fix(sp: Any) -> None:
    bsc = torch.eye(4).to_sparse_bsc(2)
    assert tb.to_tensor(bsc) is bsc
    with pytest.raises(
        tb.UnsupportedError, match=r"SciPy has no block-CSC format. Convert it first with t.to_sparse_bsr"
    ):
        tb.to_numpy(bsc)
    assert tb.to_numpy(bsc, dense=True).tolist() == np.eye(4).tolist()
    hybrid = torch.ones(2, 3, 4).to_sparse(sparse_dim=2)
    with pytest.raises(tb.UnsupportedError, match=r"hybrid sparse_coo tensor.*1 dense dimensions.*dense=True"):
        tb.to_numpy(hybrid)
    batched = torch.ones(2, 3, 3).to_sparse_csr()
    with pytest.raises(tb.UnsupportedError, match=r"batched sparse_csr tensor \(shape \(2, 3, 3\)\)"):
        tb.to_numpy(batched)


def test_scipy_holds_exactly_what_scipy_accepts(sp: Any) -> None:
    for row in EXACT_ROWS:
        try:
            sp.coo_array((np.zeros(1, row.numpy), (np.array([0]), np.array([0]))), shape=(1, 1))
            accepted = True
        except ValueError:
            accepted = False
        assert _scipy_holds(row.numpy) == accepted, row.name


def test_without_scipy_the_error_names_the_extra_and_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy.sparse", None)  # import scipy.sparse now raises ImportError
    t = torch.eye(2).to_sparse()
    with pytest.raises(
        tb.UnsupportedError, match=r"SciPy cannot be imported.*tensorbridge\[scipy\]'\), or pass dense=True"
    ):
        tb.to_numpy({"s": t})
    assert tb.to_numpy(t, dense=True).tolist() == [[1, 0], [0, 1]]


# --- SciPy -> SciPy and torch -> torch ------------------------------------------------------


def test_to_numpy_of_scipy_keeps_it_unless_asked(sp: Any) -> None:
    X = sp.csr_matrix(make(sp, "csr", np.float64))
    assert tb.to_numpy({"m": X})["m"] is X
    assert "already a SciPy sparse matrix" in str(tb.explain(X, to="numpy"))
    X.data[:] = np.arange(X.nnz)
    Y = tb.to_numpy(X, dtype=np.int32)
    assert type(Y) is type(X) and Y.dtype == np.int32 and Y.toarray().tolist() == X.toarray().tolist()
    assert np.shares_memory(Y.indices, X.indices) and not np.shares_memory(Y.data, X.data)
    with pytest.raises(tb.ValueRangeError, match="does not fit int8"):
        tb.to_numpy(X.astype(np.float64) * 100, dtype=np.int8)
    with pytest.raises(tb.UnsupportedError, match="cannot hold float16 values"):
        tb.to_numpy(X, dtype=np.float16)
    Z = tb.to_numpy(X, copy=True)
    assert not np.shares_memory(Z.data, X.data) and not np.shares_memory(Z.indices, X.indices)
    C = make(sp, "coo", np.float64)
    C.data[:] = 1.5
    C.sum_duplicates()
    D = tb.to_numpy(C, dtype=np.float32, copy=True)
    assert D.has_canonical_format and not np.shares_memory(_coords(D)[0], _coords(C)[0])


def test_a_constructor_that_copies_is_reported_as_copying(sp: Any) -> None:
    """SciPy's *_matrix constructors narrow int64 indices to int32: the step says so, copy=False refuses."""
    X = sp.csr_matrix(np.eye(3))
    X.indices, X.indptr = X.indices.astype(np.int64), X.indptr.astype(np.int64)
    Y = tb.to_numpy(X, dtype=np.float32)
    assert Y.indices.dtype == np.int32 and not np.shares_memory(Y.indices, X.indices)
    assert "indices copied (SciPy copied it); indptr copied (SciPy copied it)" in str(
        tb.explain(X, to="numpy", dtype=np.float32)
    )


def test_to_tensor_of_a_sparse_tensor(sp: Any) -> None:
    t = torch.tensor([[0.0, 2.0], [3.0, 0.0]]).to_sparse_csr()
    assert tb.to_tensor({"t": t})["t"] is t
    assert "already a sparse_csr tensor: returned as it is" in str(tb.explain(t))
    half = tb.to_tensor(t, dtype=torch.float16)
    assert half.dtype is torch.float16 and half.layout is torch.sparse_csr
    assert half.crow_indices().data_ptr() == t.crow_indices().data_ptr()
    with pytest.raises(tb.ValueRangeError, match="does not fit uint8"):
        tb.to_tensor(t * -1, dtype=torch.uint8)
    cast_fresh = tb.to_tensor(t, dtype=torch.float16, copy=True)
    assert cast_fresh.crow_indices().data_ptr() != t.crow_indices().data_ptr()
    assert "indices copied (copy=True asks for fresh memory)" in str(tb.explain(t, dtype=torch.float16, copy=True))
    fresh = tb.to_tensor(t, copy=True)
    assert fresh.values().data_ptr() != t.values().data_ptr()
    assert fresh.crow_indices().data_ptr() != t.crow_indices().data_ptr()
    leaf = tb.to_tensor(t, requires_grad=True)
    assert leaf.requires_grad and not t.requires_grad, "the caller's tensor is not modified"
    assert leaf.values().data_ptr() == t.values().data_ptr()
    with pytest.raises(tb.CopyRefusedError):
        tb.to_tensor(t, dtype=torch.float64, copy=False)
    with pytest.raises(tb.UnsupportedError, match="pin_memory"):
        tb.to_tensor(t, pin_memory=True)


@pytest.mark.cuda
def test_cuda_round_trip(sp: Any) -> None:
    X = make(sp, "csr", np.float32)
    t = tb.to_tensor(X, device="cuda")
    assert t.is_cuda and t.layout is torch.sparse_csr
    assert "moved to cuda" in str(tb.explain(X, device="cuda"))
    Y = tb.to_numpy(t)
    same_bits(X, Y)
    assert "copied from cuda" in str(tb.explain(t, to="numpy"))


def test_adapter_direct_calls_report_their_steps(sp: Any) -> None:
    X = make(sp, "bsr", np.complex128)
    X.data[...] = np.arange(X.data.size).reshape(X.data.shape) * (1 - 2j)
    got = ADAPTER.to_tensor(X, ToTensorOptions(), "data")
    t = got.run()
    assert got.done and got.kind == "adopt" and t.layout is torch.sparse_bsr
    dense = ADAPTER.to_numpy(t, ToNumpyOptions(interop=DENSE), "data")
    assert not dense.done and dense.kind == "adopt_copy"
    assert np.array_equal(tb.to_numpy(dense.run()), X.toarray())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ADAPTER.to_numpy(t, ToNumpyOptions(dtype=np.dtype(np.complex64)), "data").run().dtype == np.complex64


def test_bfloat16_sparse_tensor_converts_with_a_dtype(sp: Any) -> None:
    t = torch.tensor([[0.0, 1.5], [-2.25, 0.0]], dtype=torch.bfloat16).to_sparse()
    X = tb.to_numpy(t, dtype=np.float32)
    assert X.dtype == np.float32 and X.toarray().tolist() == [[0.0, 1.5], [-2.25, 0.0]]
    assert _coords(X)[0].ctypes.data == t._indices().data_ptr(), "only the values are cast"
    assert tb.to_tensor(X, dtype=torch.bfloat16).dtype is torch.bfloat16
