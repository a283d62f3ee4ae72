"""Quantized, nested, DTensor and fake tensors (interop/{layouts,quantized,nested}.py), directly and through tb.*."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings
from typing import Any

import numpy as np
import pytest
import torch

import tensorbridge as tb
from tensorbridge.adapters import adapter_for
from tensorbridge.adapters.layouts import ADAPTER
from tensorbridge.adapters.nested import nested_tensor
from tensorbridge.adapters.quantized import QuantizedArray
from tensorbridge.plan.core import InteropOptions, ToNumpyOptions, ToTensorOptions

from .helpers import EXACT_ROWS, bits, random_bits

QDTYPES = [torch.qint8, torch.quint8, torch.qint32]


def quiet(fn: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Build a tensor whose kind torch warns about (quantized: deprecated; strided nested: prototype)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out: torch.Tensor = fn(*args, **kwargs)
        return out


def per_tensor(dtype: torch.dtype, shape: tuple[int, ...] = (3, 4), seed: int = 0) -> torch.Tensor:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 4
    return quiet(torch.quantize_per_tensor, x, 0.037, 5 if dtype != torch.qint8 else -3, dtype)


def per_channel(dtype: torch.dtype, axis: int = 0, float_qparams: bool = False) -> torch.Tensor:
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1)) * 4
    n = x.shape[axis]
    scales = torch.linspace(0.02, 0.09, n, dtype=torch.float32 if float_qparams else torch.float64)
    zero_points = torch.arange(n, dtype=torch.float32 if float_qparams else torch.int64) + 1
    return quiet(torch.quantize_per_channel, x, scales, zero_points, axis, dtype)


def same_quantized(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.qscheme() == b.qscheme() and a.shape == b.shape
    assert torch.equal(a.int_repr(), b.int_repr())
    if a.qscheme() == torch.per_tensor_affine:
        assert (a.q_scale(), a.q_zero_point()) == (b.q_scale(), b.q_zero_point())
    else:
        assert a.q_per_channel_axis() == b.q_per_channel_axis()
        assert torch.equal(a.q_per_channel_scales(), b.q_per_channel_scales())
        assert torch.equal(a.q_per_channel_zero_points(), b.q_per_channel_zero_points())


def np_opts(**interop: Any) -> ToNumpyOptions:
    return ToNumpyOptions(interop=InteropOptions(**interop))


# --- claims -----------------------------------------------------------------------------------


def test_claims_only_the_special_kinds() -> None:
    plain = torch.zeros(3)
    assert ADAPTER.claims(per_tensor(torch.qint8))
    assert ADAPTER.claims(torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)], layout=torch.jagged))
    assert ADAPTER.claims(QuantizedArray(np.zeros(2, np.int8), np.array(1.0), np.array(0), None, "qint8"))
    for other in (
        plain,
        torch.nn.Parameter(plain),
        plain.to_sparse(),
        torch.empty(3, device="meta"),
        np.zeros(3),
        "x",
        None,
        [plain],
    ):
        assert not ADAPTER.claims(other), other
    assert not ADAPTER.claims(quiet(torch.eye(3).to_sparse_csr))  # sparse is sparse.py's


def test_claims_never_imports_torch_distributed() -> None:
    code = (
        "import sys, torch, numpy as np, tensorbridge as tb\n"
        "tb.to_numpy({'p': torch.nn.Parameter(torch.ones(2)), 'x': torch.zeros(2)}, dtype='float32')\n"
        "tb.to_tensor({'x': np.zeros(2)}, dtype='float32')\n"
        "assert 'torch.distributed.tensor' not in sys.modules, 'imported torch.distributed.tensor'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# --- quantized -> NumPy -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", QDTYPES, ids=str)
def test_per_tensor_codes_round_trip(dtype: torch.dtype) -> None:
    q = per_tensor(dtype)
    qa = tb.to_numpy({"w": q}, quantized="int")["w"]
    assert isinstance(qa, QuantizedArray)
    assert qa.values.dtype == q.int_repr().numpy().dtype and qa.values.shape == (3, 4)
    assert np.array_equal(qa.values, q.int_repr().numpy())
    assert qa.scale.dtype == np.float64 and qa.scale.shape == () and float(qa.scale) == q.q_scale()
    assert qa.zero_point.shape == () and int(qa.zero_point) == q.q_zero_point()
    assert (qa.axis, qa.dtype, qa.qscheme) == (None, str(dtype).removeprefix("torch."), "per_tensor_affine")
    same_quantized(tb.to_tensor({"w": qa})["w"], q)


@pytest.mark.parametrize("dtype", QDTYPES, ids=str)
@pytest.mark.parametrize("axis", [0, 1])
def test_per_channel_codes_round_trip(dtype: torch.dtype, axis: int) -> None:
    q = per_channel(dtype, axis)
    qa = tb.to_numpy(q, quantized="int")
    assert np.array_equal(qa.values, q.int_repr().numpy())
    assert qa.axis == axis and qa.qscheme == "per_channel_affine"
    assert np.array_equal(qa.scale, q.q_per_channel_scales().numpy()) and qa.scale.shape == (q.shape[axis],)
    assert np.array_equal(qa.zero_point, q.q_per_channel_zero_points().numpy())
    same_quantized(tb.to_tensor(qa), q)


def test_float_qparams_round_trip() -> None:
    q = per_channel(torch.quint8, 0, float_qparams=True)
    qa = tb.to_numpy(q, quantized="int")
    assert qa.qscheme == "per_channel_affine_float_qparams"
    assert qa.zero_point.dtype == np.float32 and qa.scale.dtype == np.float32
    same_quantized(tb.to_tensor(qa), q)


@pytest.mark.parametrize("view", ["transposed", "sliced", "column"])
def test_codes_are_a_view_of_the_tensor(view: str) -> None:
    base = per_tensor(torch.qint8, (4, 6))
    q = {"transposed": base.t(), "sliced": base[1:, ::2], "column": base[:, 3]}[view]
    qa = tb.to_numpy(q, quantized="int")
    assert np.array_equal(qa.values, q.int_repr().numpy())
    last = (-1,) * q.dim()
    before = int(q.int_repr()[last])
    qa.values[last] = before + 1 if before < 100 else before - 1  # writes reach the tensor
    assert int(q.int_repr()[last]) == int(qa.values[last]) != before
    assert tb.explain(q, to="numpy", quantized="int").shares_memory


def test_codes_copy_modes() -> None:
    q = per_tensor(torch.quint8)
    fresh = tb.to_numpy(q, quantized="int", copy=True)
    assert fresh.values.ctypes.data != q.data_ptr() and np.array_equal(fresh.values, q.int_repr().numpy())
    assert tb.to_numpy(q, quantized="int", copy=False).values.ctypes.data == q.data_ptr()
    assert not tb.explain(q, to="numpy", quantized="int", copy=True).shares_memory


def test_codes_refuse_dtype() -> None:
    with pytest.raises(tb.UnsupportedError, match=r"at data\['w'\]: dtype=float32 with quantized='int'"):
        tb.to_numpy({"w": per_tensor(torch.qint8)}, quantized="int", dtype=np.float32)


def test_packed_sub_byte_codes_are_refused_but_dequantize() -> None:
    q = quiet(torch.quantize_per_tensor, torch.tensor([[0.0, 0.3], [0.6, 0.9]]), 0.1, 2, torch.quint4x2)
    with pytest.raises(tb.UnsupportedError, match="quint4x2 packs several codes into each byte"):
        tb.to_numpy(q, quantized="int")
    assert np.array_equal(tb.to_numpy(q, quantized="dequantize"), q.dequantize().numpy())


@pytest.mark.parametrize("make", [lambda: per_tensor(torch.qint8), lambda: per_channel(torch.qint32, 1)])
def test_dequantize(make: Any) -> None:
    q = make()
    out = tb.to_numpy({"w": q}, quantized="dequantize")["w"]
    assert out.dtype == np.float32 and bits(out) == bits(q.dequantize().numpy())
    half = tb.to_numpy(q, quantized="dequantize", dtype="float16")
    assert half.dtype == np.float16 and np.array_equal(half, q.dequantize().numpy().astype(np.float16))
    for dtype in (None, np.float32):
        plan = tb.explain(q, to="numpy", quantized="dequantize", copy=True, dtype=dtype)
        assert not plan.shares_memory
        assert "clone" not in str(plan)  # dequantizing already gave fresh memory: one copy, not two
    assert "(code - zero point) * scale" in str(plan)
    with pytest.raises(tb.CopyRefusedError, match=r"at data\['w'\]: copy=False, but dequantizing"):
        tb.to_numpy({"w": q}, quantized="dequantize", copy=False)


@pytest.mark.parametrize(
    ("make", "scheme"),
    [
        (lambda: per_tensor(torch.qint8), "per_tensor_affine, scale 0.037"),
        (lambda: per_channel(torch.quint8), "per_channel_affine along axis 0"),
    ],
)
def test_no_choice_offers_both(make: Any, scheme: str) -> None:
    with pytest.raises(tb.UnsupportedError) as info:
        tb.to_numpy({"layer": {"w": make()}})
    msg = str(info.value)
    assert msg.startswith("to_numpy at data['layer']['w']: quantized tensor")
    assert scheme in msg and "quantized='dequantize'" in msg and "quantized='int'" in msg
    assert isinstance(info.value, TypeError)
    assert "quantized='int'" in str(tb.explain({"w": make()}, to="numpy"))  # explain shows the error


def test_adapter_called_directly() -> None:
    q = per_tensor(torch.qint8)
    got = ADAPTER.to_numpy(q, np_opts(quantized="int"), "x")
    assert got.done and got.kind == "adopt" and "int8 codes" in got.why
    assert np.array_equal(got.run().values, q.int_repr().numpy())
    deq = ADAPTER.to_numpy(q, np_opts(quantized="dequantize"), "x")
    assert deq.kind == "adopt_copy"
    with pytest.raises(tb.UnsupportedError, match=r"^to_numpy at x: quantized tensor"):
        ADAPTER.to_numpy(q, ToNumpyOptions(), "x")


# --- quantized -> tensor ------------------------------------------------------------------------


def test_to_tensor_keeps_quantized() -> None:
    q = per_channel(torch.qint8)
    assert tb.to_tensor({"w": q})["w"] is q
    assert tb.to_tensor(q, device="cpu", copy=False) is q
    fresh = tb.to_tensor(q, copy=True)
    assert fresh is not q and fresh.data_ptr() != q.data_ptr()
    same_quantized(fresh, q)
    assert "stays one" in str(tb.explain(q))


def test_to_tensor_refuses_casting_quantized() -> None:
    q = per_tensor(torch.quint8)
    with pytest.raises(tb.UnsupportedError, match=r"at data\['w'\]: dtype=torch.float32 asks to cast a quantized"):
        tb.to_tensor({"w": q}, dtype=torch.float32)
    with pytest.raises(tb.UnsupportedError, match="requires_grad=True needs a float or complex tensor"):
        tb.to_tensor(q, requires_grad=True)


def test_quantized_array_leaf() -> None:
    q = per_tensor(torch.qint32)
    qa = tb.to_numpy(q, quantized="int")
    assert tb.to_numpy({"k": qa})["k"] is qa  # NumPy already: returned as it is
    again = tb.to_numpy(qa, copy=True)
    assert again is not qa and again.values.ctypes.data != qa.values.ctypes.data
    assert np.array_equal(again.values, qa.values)
    assert bits(tb.to_numpy(qa, quantized="dequantize")) == bits(q.dequantize().numpy())
    with pytest.raises(AttributeError, match="immutable"):
        qa.axis = 1  # type: ignore[misc]
    same_quantized(tb.to_tensor(pickle.loads(pickle.dumps(qa))), q)
    assert "QuantizedArray(qint32, shape (3, 4), per_tensor_affine" in repr(qa)
    with pytest.raises(tb.CopyRefusedError, match="torch copies the codes"):
        tb.to_tensor(qa, copy=False)
    with pytest.raises(tb.UnsupportedError, match="dtype=float32 would cast a QuantizedArray"):
        tb.to_numpy(qa, dtype="float32")


def test_quantized_array_rebuild_errors() -> None:
    bad_dtype = QuantizedArray(np.zeros(3, np.int16), np.array(0.5), np.array(0), None, "qint8")
    with pytest.raises(tb.UnsupportedError, match=r"at data\['q'\]: a QuantizedArray of dtype 'qint8' with int16"):
        tb.to_tensor({"q": bad_dtype})
    few = QuantizedArray(np.zeros((3, 2), np.int8), np.array([0.1, 0.2]), np.array([0, 0]), 0, "qint8")
    with pytest.raises(tb.StructureError, match=r"scale and zero_point need shape \(3,\), not \(2,\) and \(2,\)"):
        tb.to_tensor(few)
    wrong_axis = QuantizedArray(np.zeros((3, 2), np.int8), np.ones(3), np.zeros(3), 2, "qint8")
    with pytest.raises(tb.StructureError, match="axis 2 is out of range for 2-d values"):
        tb.to_tensor(wrong_axis)
    two = QuantizedArray(np.zeros(3, np.int8), np.ones(2), np.zeros(2), None, "qint8")
    with pytest.raises(tb.StructureError, match="one value each"):
        tb.to_numpy(two, quantized="dequantize")
    negative = QuantizedArray(np.zeros((3, 2), np.int8), np.ones(2), np.zeros(2), -1, "qint8")
    assert tb.to_tensor(negative).q_per_channel_axis() == 1


def test_quantized_array_from_odd_numpy_layouts() -> None:
    codes = np.arange(12, dtype=">i4").reshape(3, 4)[::-1]  # big-endian, negative strides
    codes.flags.writeable = False
    q = tb.to_tensor(QuantizedArray(codes, np.array(0.25), np.array(1), None, "qint32"))
    assert q.dtype == torch.qint32 and q.int_repr().tolist() == codes.tolist()


# --- nested -------------------------------------------------------------------------------------

JAGGED_ROWS = EXACT_ROWS
# torch's strided nested layout lacks these ("create_nt_buffer" not implemented).
STRIDED_ROWS = [
    r for r in EXACT_ROWS if r.name not in ("uint16", "uint32", "uint64") and not r.name.startswith("float8")
]


def components(row: Any, shapes: list[tuple[int, ...]]) -> list[np.ndarray[Any, Any]]:
    return [random_bits(row, s, seed=i) for i, s in enumerate(shapes)]


@pytest.mark.parametrize("row", JAGGED_ROWS, ids=lambda r: r.name)
def test_jagged_round_trip_bit_exact(row: Any) -> None:
    arrays = components(row, [(2, 3), (0, 3), (5, 3)])
    nt = nested_tensor(arrays)
    assert nt.is_nested and nt.layout == torch.jagged
    out = tb.to_numpy({"n": nt})["n"]
    assert isinstance(out, list) and len(out) == 3
    for got, want in zip(out, arrays, strict=True):
        assert got.dtype == row.numpy and got.shape == want.shape and bits(got) == bits(want)
    again = nested_tensor(out, layout=torch.jagged)
    for a, b in zip(again.unbind(), nt.unbind(), strict=True):
        assert a.dtype == b.dtype and bits(tb.to_numpy(a)) == bits(tb.to_numpy(b))


@pytest.mark.parametrize("row", STRIDED_ROWS, ids=lambda r: r.name)
def test_strided_round_trip_bit_exact(row: Any) -> None:
    arrays = components(row, [(2, 3), (4, 1), (1, 5)])  # ragged in both dimensions
    nt = nested_tensor(arrays, layout=torch.strided)
    assert nt.is_nested and nt.layout == torch.strided
    out = tb.to_numpy(nt)
    assert [bits(a) for a in out] == [bits(a) for a in arrays] and [a.shape for a in out] == [(2, 3), (4, 1), (1, 5)]
    again = nested_tensor(out, layout=torch.strided)
    assert [bits(tb.to_numpy(c)) for c in again.unbind()] == [bits(a) for a in arrays]


@pytest.mark.parametrize("layout", [torch.jagged, torch.strided], ids=str)
def test_nested_components_share_memory(layout: torch.layout) -> None:
    nt = nested_tensor([np.zeros((2, 3), np.float32), np.zeros((1, 3), np.float32)], layout=layout)
    out = tb.to_numpy(nt)
    out[1][0, 2] = 7.0
    assert nt.unbind()[1][0, 2].item() == 7.0
    assert tb.explain(nt, to="numpy").shares_memory
    fresh = tb.to_numpy(nt, copy=True)
    fresh[0][0, 0] = 5.0
    assert nt.unbind()[0][0, 0].item() == 0.0
    assert tb.to_numpy(nt, copy=False)[1][0, 2] == 7.0


def test_nested_explain_says_what_and_why() -> None:
    nt = nested_tensor([np.ones(2, np.float32), np.ones(3, np.float32)])
    text = str(tb.explain({"n": nt}, to="numpy"))
    assert "a list of 2 arrays, one per component" in text and "view of the tensor's memory" in text


def test_nested_non_contiguous_and_grad() -> None:
    nt = nested_tensor([np.arange(6.0).reshape(2, 3), np.arange(9.0).reshape(3, 3)]).transpose(1, 2)
    out = tb.to_numpy(nt)
    assert [a.tolist() for a in out] == [c.tolist() for c in nt.unbind()]
    grad = nested_tensor([np.ones(2), np.ones(3)]).requires_grad_()
    assert [a.tolist() for a in tb.to_numpy(grad)] == [[1.0, 1.0], [1.0, 1.0, 1.0]]


def test_nested_to_numpy_dtype_is_checked() -> None:
    nt = nested_tensor([np.array([1.0], np.float32), np.array([1.0, 70000.0], np.float32)])
    halves = tb.to_numpy(nested_tensor([np.array([1.5], np.float32)]), dtype=np.float16)
    assert halves[0].dtype == np.float16 and halves[0].tolist() == [1.5]
    with pytest.raises(tb.ValueRangeError, match=r"at data\['n'\]\[1\]: .*70000"):
        tb.to_numpy({"n": nt}, dtype=np.float16)


def test_bfloat16_nested_to_ml_dtypes() -> None:
    nt = torch.nested.nested_tensor([torch.tensor([1.0, -2.5]), torch.tensor([0.5])], layout=torch.jagged)
    out = tb.to_numpy(nt.to(torch.bfloat16))
    assert [a.dtype.name for a in out] == ["bfloat16", "bfloat16"]
    assert [a.astype(np.float32).tolist() for a in out] == [[1.0, -2.5], [0.5]]


def test_to_tensor_keeps_nested() -> None:
    nt = nested_tensor([np.arange(3, dtype=np.float64), np.arange(2, dtype=np.float64)])
    assert tb.to_tensor({"n": nt})["n"] is nt
    fresh = tb.to_tensor(nt, copy=True)
    assert fresh.is_nested and fresh.values().data_ptr() != nt.values().data_ptr()
    assert [c.tolist() for c in fresh.unbind()] == [[0.0, 1.0, 2.0], [0.0, 1.0]]
    halves = tb.to_tensor(nt, dtype=torch.float16)
    assert halves.is_nested and halves.layout == torch.jagged and halves.dtype == torch.float16
    grads = tb.to_tensor(nt, requires_grad=True)
    assert grads.requires_grad and not nt.requires_grad
    with pytest.raises(tb.ValueRangeError, match=r"at data\['n'\]\[0\]"):
        tb.to_tensor({"n": nested_tensor([np.array([300]), np.array([1, 2])])}, dtype=torch.uint8)
    with pytest.raises(tb.CopyRefusedError, match=r"casting to torch\.float16 makes new components"):
        tb.to_tensor(nt, dtype=torch.float16, copy=False)


def test_to_tensor_keeps_strided_nested_layout() -> None:
    nt = nested_tensor([np.ones((2, 3)), np.ones((3, 4))], layout=torch.strided)
    cast = tb.to_tensor(nt, dtype="float32")
    assert cast.is_nested and cast.layout == torch.strided and cast.dtype == torch.float32
    assert [tuple(c.shape) for c in cast.unbind()] == [(2, 3), (3, 4)]


# --- nested_tensor(): building ------------------------------------------------------------------


def test_nested_tensor_shares_nothing_and_takes_odd_layouts(tmp_path: Any) -> None:
    src = np.arange(12, dtype=">f4").reshape(3, 4)[::-1]  # big-endian, negative strides
    ro = np.arange(4, dtype=np.float32).reshape(1, 4)
    ro.flags.writeable = False
    nt = nested_tensor([src, ro])
    assert [c.tolist() for c in nt.unbind()] == [src.tolist(), ro.tolist()]
    mapped = np.memmap(tmp_path / "m.bin", dtype=np.int16, mode="w+", shape=(3,))
    mapped[:] = [1, 2, 3]
    assert nested_tensor([mapped, np.array([4], np.int16)]).unbind()[0].tolist() == [1, 2, 3]
    plain = np.zeros((2, 4), np.float32)
    built = nested_tensor([plain])
    plain[0, 0] = 9.0
    assert built.unbind()[0][0, 0].item() == 0.0


def test_nested_tensor_dtype_is_checked() -> None:
    nt = nested_tensor([np.array([1, 2]), np.array([3.0])], dtype="float32")
    assert nt.dtype == torch.float32 and [c.tolist() for c in nt.unbind()] == [[1.0, 2.0], [3.0]]
    with pytest.raises(tb.ValueRangeError, match="300"):
        nested_tensor([np.array([300, 1])], dtype=torch.uint8)


def test_nested_tensor_errors() -> None:
    with pytest.raises(tb.UnsupportedError, match=r"at arrays\[1\]: dtype float64 differs from arrays\[0\]'s float32"):
        nested_tensor([np.zeros(2, np.float32), np.zeros(3, np.float64)])
    with pytest.raises(tb.StructureError, match=r"at arrays\[1\]: shape \(3, 1\) is 2-d but arrays\[0\] is 1-d"):
        nested_tensor([np.zeros(2), np.zeros((3, 1))])
    with pytest.raises(tb.StructureError, match=r"differ in dimensions \[0, 1\].*layout=torch.strided"):
        nested_tensor([np.zeros((2, 3)), np.zeros((3, 4))])
    with pytest.raises(tb.StructureError, match="no arrays were given"):
        nested_tensor([])
    with pytest.raises(tb.UnsupportedError, match=r"arrays\[0\] is a torch.Tensor"):
        nested_tensor([torch.zeros(2)])  # type: ignore[list-item]
    with pytest.raises(tb.UnsupportedError, match=r"arrays\[0\] is a numpy.ma(.core)?.MaskedArray"):
        nested_tensor([np.ma.masked_array([1.0, 2.0], mask=[True, False])])
    with pytest.raises(tb.UnsupportedError, match="arrays is a ndarray"):
        nested_tensor(np.zeros((2, 3)))  # type: ignore[arg-type]
    with pytest.raises(tb.StructureError, match="at least 1 dimension"):
        nested_tensor([np.array(1.0), np.array(2.0)])
    with pytest.raises(tb.UnsupportedError, match=r"lacks uint16.*layout=torch\.jagged"):
        nested_tensor([np.zeros(2, np.uint16)], layout=torch.strided)
    with pytest.raises(tb.UnsupportedError, match="is not a nested layout"):
        nested_tensor([np.zeros(2)], layout=torch.sparse_coo)
    with pytest.raises(tb.UnsupportedError, match="has no torch equivalent"):
        nested_tensor([np.array(["a"])])
    with pytest.raises(tb.DeviceError, match="not a device torch knows"):
        nested_tensor([np.zeros(2)], device="nowhere")
    if not torch.cuda.is_available():
        with pytest.raises(tb.DeviceError, match="CUDA is not available"):
            nested_tensor([np.zeros(2)], device="cuda")


# --- fake tensors and DTensors ------------------------------------------------------------------


def test_fake_tensors_are_refused_both_ways() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fake = torch.empty(3)
    assert adapter_for(fake) is ADAPTER
    for convert, what in ((tb.to_numpy, "to_numpy"), (tb.to_tensor, "to_tensor")):
        with pytest.raises(tb.UnsupportedError) as info:
            convert({"f": fake})
        msg = str(info.value)
        assert msg.startswith(
            f"{what} at data['f']: fake tensor (float32, shape (3,)): fake tensors have a shape but no data"
        )
        assert "FakeTensorMode" in msg
    with pytest.raises(tb.UnsupportedError, match="no data"):
        ADAPTER.to_tensor(fake, ToTensorOptions(), "x")


def test_dtensors_need_a_choice_and_to_tensor_refuses_them() -> None:
    """The default refuses and names the choices; on a one-rank group, 'local' and 'gather' work in-process."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        mesh = DeviceMesh("cpu", [0])
        for placement in (Shard(0), Replicate()):
            d = distribute_tensor(torch.arange(4.0), mesh, [placement])
            assert adapter_for(d) is ADAPTER
            for convert, what in ((tb.to_numpy, "to_numpy"), (tb.to_tensor, "to_tensor")):
                with pytest.raises(tb.UnsupportedError) as info:
                    convert({"d": d})
                msg = str(info.value)
                assert msg.startswith(f"{what} at data['d']: DTensor (global shape (4,), placements [{placement!r}])")
                if what == "to_numpy":
                    assert "shards='gather'" in msg and "shards='local'" in msg and "dst=None" in msg
                else:
                    assert "t.full_tensor()" in msg and "t.to_local()" in msg and "mesh=" in msg
            local = tb.to_numpy({"d": d}, shards="local")["d"]
            assert np.shares_memory(local, d.to_local().numpy()) and local.tolist() == [0.0, 1.0, 2.0, 3.0]
            plan = str(tb.explain({"d": d}, to="numpy", shards="local"))
            assert "rank 0's shard at mesh coordinate (0,): offsets (0,), shape (4,)" in plan, plan
            gathered = tb.to_numpy({"d": d, "n": 1}, shards="gather")
            assert gathered["d"].tolist() == [0.0, 1.0, 2.0, 3.0] and gathered["n"] == 1
            assert "gathered onto rank 0" in str(tb.explain(d, to="numpy", shards="gather"))
            made = tb.to_tensor(np.arange(3.0), mesh=mesh, placements=[placement])
            assert made.placements == (placement,) and made.full_tensor().tolist() == [0.0, 1.0, 2.0]
    finally:
        dist.destroy_process_group()


def test_explain_prints_strided_nested() -> None:
    nt = nested_tensor([np.ones((2, 3)), np.ones((3, 4))], layout=torch.strided)
    assert "one per component" in str(tb.explain({"n": nt}, to="numpy"))


# --- on a GPU (never run yet: no GPU has been lent to this project) -----------------------------


@pytest.mark.cuda
def test_cuda_nested_and_quantized_come_home() -> None:
    nt = nested_tensor([np.arange(3.0), np.arange(2.0)], device="cuda")
    assert nt.device.type == "cuda"
    out = tb.to_numpy(nt)
    assert [a.tolist() for a in out] == [[0.0, 1.0, 2.0], [0.0, 1.0]]
    assert "copied from cuda" in str(tb.explain(nt, to="numpy"))
    with pytest.raises(tb.CopyRefusedError, match="must be copied to the host"):
        tb.to_numpy(nt, copy=False)
    back = tb.to_tensor(tb.to_numpy(nt), device="cuda")  # a list of arrays: one tensor each
    assert [t.device.type for t in back] == ["cuda", "cuda"]
    moved = tb.to_tensor(nested_tensor([np.ones(2), np.ones(3)]), device="cuda")
    assert moved.is_nested and moved.device.type == "cuda"
    q = quiet(torch.quantize_per_tensor, torch.randn(3, 4, device="cuda"), 0.1, 2, torch.qint8)
    qa = tb.to_numpy(q, quantized="int")
    assert np.array_equal(qa.values, q.int_repr().cpu().numpy())
    assert bits(tb.to_numpy(q, quantized="dequantize")) == bits(q.dequantize().cpu().numpy())
    same_quantized(tb.to_tensor(qa, device="cuda").cpu(), q.cpu())
