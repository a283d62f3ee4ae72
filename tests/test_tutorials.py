"""Every code example of two NumPy <-> PyTorch tutorials: what torch really does, then the same with tensorbridge.

t1: "Convert Numpy Array to PyTorch Tensor and back" (stackabuse-style guide, seed 000).
t2: "PyTorch Tensor to NumPy Array and Back" (Ben Cook, seed 001).

Part (a) of each test runs the tutorial's own code and asserts reality; where the tutorial is
wrong or platform-dependent, a ``# Tutorial says X; reality: Y`` comment says so. Part (b)
does the same conversion with tensorbridge and checks values, dtype, and memory sharing.
"""

from __future__ import annotations

import sys
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch

import tensorbridge as tb
from tensorbridge import tour

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")

# NumPy's default integer: int64 on Linux/macOS (and on Windows since NumPy 2), int32 on Windows with NumPy 1.x.
DEFAULT_INT = np.dtype(np.int_)
DEFAULT_INT_TORCH = {np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32}[DEFAULT_INT]
INT_IS_INT64 = np.dtype(np.int_).itemsize == 8


def tutorial_np_array() -> np.ndarray[Any, Any]:
    return np.array([5, 7, 1, 2, 4, 4])


# --- t1: NumPy -> tensor -----------------------------------------------------------------------


def test_t1_convert_numpy_array_to_tensor_three_ways() -> None:
    np_array = tutorial_np_array()
    tensor_a = torch.from_numpy(np_array)
    tensor_b = torch.Tensor(np_array)
    tensor_c = torch.tensor(np_array)
    assert tensor_a.tolist() == tensor_b.tolist() == tensor_c.tolist() == [5, 7, 1, 2, 4, 4]
    # from_numpy shares memory; torch.tensor always copies; torch.Tensor copies here (int -> float32).
    np_array[0] = 50
    assert tensor_a[0].item() == 50
    assert tensor_b[0].item() == 5.0
    assert tensor_c[0].item() == 5
    # (b) tensorbridge: zero-copy like from_numpy, same dtype, and explain() says so.
    np_array = tutorial_np_array()
    t = tb.to_tensor(np_array)
    assert t.dtype == tensor_a.dtype
    assert np.shares_memory(t.numpy(), np_array)
    assert tb.explain(np_array).shares_memory
    np_array[1] = 70
    assert t[1].item() == 70
    t[2] = 10
    assert np_array[2] == 10


def test_t1_numpy_array_dtype_is_platform_int() -> None:
    np_array = tutorial_np_array()
    # Tutorial says np_array.dtype is int32 (printed as "dtype('int32')");
    # reality: NumPy's default int, int64 on Linux/macOS/NumPy 2 (int32 only on Windows with NumPy 1.x),
    # and print() shows "int64", not "dtype('int64')".
    assert np_array.dtype == DEFAULT_INT
    assert str(np_array.dtype) == DEFAULT_INT.name
    if sys.platform.startswith("linux") and int(np.__version__.split(".")[0]) >= 2:
        assert np_array.dtype == np.int64
    # (b) tensorbridge keeps whatever the platform gave.
    assert tb.to_tensor(np_array).dtype == DEFAULT_INT_TORCH


def test_t1_print_the_tensors() -> None:
    np_array = tutorial_np_array()
    tensor_a = torch.from_numpy(np_array)
    tensor_b = torch.Tensor(np_array)
    tensor_c = torch.tensor(np_array)
    printed = f"tensor_a: {tensor_a}\ntensor_b: {tensor_b}\ntensor_c: {tensor_c}"
    # Tutorial says tensor_a/tensor_c print with ", dtype=torch.int32"; reality: they keep NumPy's default int,
    # and torch omits the dtype for int64 (its default integer), so on Linux no dtype is printed.
    suffix = "" if INT_IS_INT64 else ", dtype=torch.int32"
    assert printed == (
        f"tensor_a: tensor([5, 7, 1, 2, 4, 4]{suffix})\n"
        "tensor_b: tensor([5., 7., 1., 2., 4., 4.])\n"
        f"tensor_c: tensor([5, 7, 1, 2, 4, 4]{suffix})"
    )
    # (b) tensorbridge prints like from_numpy.
    assert str(tb.to_tensor(np_array)) == str(tensor_a)


def test_t1_check_dtype_fields() -> None:
    np_array = tutorial_np_array()
    # Tutorial says int32 / float32 / int32; reality: the default int (int64 on Linux) / float32 / the default int.
    assert torch.from_numpy(np_array).dtype == DEFAULT_INT_TORCH
    assert torch.Tensor(np_array).dtype == torch.float32
    assert torch.tensor(np_array).dtype == DEFAULT_INT_TORCH
    # torch.Tensor() is not always a copy: a float32 array is shared (not mentioned by the tutorial).
    f32 = np.arange(3, dtype=np.float32)
    assert np.shares_memory(torch.Tensor(f32).numpy(), f32)
    # (b)
    assert tb.to_tensor(np_array).dtype == DEFAULT_INT_TORCH
    as_float = tb.to_tensor(np_array, dtype=torch.float32)
    assert as_float.dtype == torch.float32
    assert torch.equal(as_float, torch.Tensor(np_array))


def test_t1_numpy_array_to_tensor_with_dtype() -> None:
    np_array = tutorial_np_array()
    # from_numpy() and Tensor() really take no dtype: both raise TypeError.
    with pytest.raises(TypeError, match="takes no keyword arguments"):
        torch.from_numpy(np_array, dtype=torch.int32)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="invalid combination of arguments"):
        torch.Tensor(np_array, dtype=torch.int32)  # type: ignore[call-overload]
    tensor_c = torch.tensor(np_array, dtype=torch.int32)
    assert tensor_c.dtype == torch.int32
    assert tensor_c.tolist() == [5, 7, 1, 2, 4, 4]
    # torch.tensor(dtype=) wraps values that do not fit, silently.
    assert torch.tensor(np.array([2**40 + 5]), dtype=torch.int32).item() == 5
    # (b) tensorbridge takes dtype= (any spelling), copies once, and refuses values that do not fit.
    for spelling in (torch.int32, "int32", np.int32):
        t = tb.to_tensor(np_array, dtype=spelling)
        assert t.dtype == torch.int32
        assert torch.equal(t, tensor_c)
    t = tb.to_tensor(np_array, dtype=torch.int32)
    assert not tb.explain(np_array, dtype=torch.int32).shares_memory
    np_array[0] = 99
    assert t[0].item() == 5  # a cast is a copy: the array's later writes do not reach it
    with pytest.raises(tb.CopyRefusedError, match="copy=False") as info:
        tb.to_tensor(np_array, dtype=torch.int32, copy=False)
    assert isinstance(info.value, ValueError)
    with pytest.raises(tb.ValueRangeError, match="does not fit int32"):
        tb.to_tensor(np.array([2**40 + 5]), dtype=torch.int32)
    # Asking for the dtype it already has shares memory.
    same = tb.to_tensor(np_array, dtype=DEFAULT_INT_TORCH, copy=False)
    assert np.shares_memory(same.numpy(), np_array)


def test_t1_cast_after_creation() -> None:
    np_array = tutorial_np_array()
    tensor_a = torch.from_numpy(np_array)
    tensor_b = torch.Tensor(np_array)
    tensor_c = torch.tensor(np_array, dtype=torch.int32)
    floats = [tensor_a.float(), tensor_b.float(), tensor_c.float()]
    assert [f.dtype for f in floats] == [torch.float32] * 3
    assert tensor_b.float() is tensor_b  # already float32: .float() returns the tensor itself
    assert tensor_a.float().data_ptr() != tensor_a.data_ptr()
    # (b)
    a = tb.to_tensor(tensor_a, dtype=torch.float32)
    assert a.dtype == torch.float32
    assert torch.equal(a, floats[0])
    assert a.data_ptr() != tensor_a.data_ptr()
    assert not tb.explain(tensor_a, dtype=torch.float32).shares_memory
    assert tb.to_tensor(tensor_b, dtype=torch.float32) is tensor_b
    assert tb.explain(tensor_b, dtype=torch.float32).shares_memory


# --- t1: tensor -> NumPy -----------------------------------------------------------------------


def test_t1_convert_tensor_to_numpy_three_ways() -> None:
    tensor = torch.tensor([1, 2, 3, 4, 5])
    np_a = tensor.numpy()
    np_b = tensor.detach().numpy()
    np_c = tensor.detach().cpu().numpy()
    # Tutorial says tensors are "built on top of Numpy arrays"; reality: they are not, but on the CPU
    # all three arrays are views of the tensor's own memory.
    for arr in (np_a, np_b, np_c):
        assert arr.tolist() == [1, 2, 3, 4, 5]
        assert np.shares_memory(arr, np_a)
    tensor[0] = 100
    assert np_c[0] == 100
    # (b)
    out = tb.to_numpy(tensor)
    assert np.shares_memory(out, np_a)
    assert tb.explain(tensor, to="numpy").shares_memory
    out[1] = 200
    assert tensor[1].item() == 200


def test_t1_cpu_tensor_to_cpu_numpy_array() -> None:
    tensor = torch.tensor([1, 2, 3, 4, 5])
    np_a = tensor.numpy()
    # Tutorial shows "array([1, 2, 3, 4, 5], dtype=int64)"; reality: dtype is int64 everywhere (torch's
    # default), but repr() shows ", dtype=int64" only where int64 is not NumPy's default int (Windows, NumPy 1).
    assert np_a.dtype == np.int64
    expected = "array([1, 2, 3, 4, 5])" if INT_IS_INT64 else "array([1, 2, 3, 4, 5], dtype=int64)"
    assert repr(np_a) == expected
    # (b)
    out = tb.to_numpy(tensor)
    assert out.dtype == np.int64
    assert repr(out) == expected
    assert np.shares_memory(out, np_a)


def test_t1_cpu_tensor_with_gradients_to_numpy() -> None:
    tensor = torch.tensor([1, 2, 3, 4, 5], dtype=torch.float32, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"Can't call numpy\(\) on Tensor that requires grad"):
        tensor.numpy()
    np_b = tensor.detach().numpy()
    assert np_b.dtype == np.float32
    assert np_b.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    # (b) no detach() needed; the array is a view of the tensor's data, and the tensor is untouched.
    out = tb.to_numpy(tensor)
    assert out.dtype == np.float32
    assert np.shares_memory(out, np_b)
    assert tb.explain(tensor, to="numpy").shares_memory
    assert tensor.requires_grad
    out[0] = 10.0
    assert tensor[0].item() == 10.0
    assert not np.shares_memory(tb.to_numpy(tensor, copy=True), np_b)
    # A non-leaf (part of a graph) works too.
    assert tb.to_numpy(tensor * 2).tolist() == [20.0, 4.0, 6.0, 8.0, 10.0]


def test_t1_detach_cpu_order_and_nothing_happens() -> None:
    tensor = torch.tensor([1, 2, 3, 4, 5])
    # "If you've got a CPU tensor, and you try sending it to the CPU - nothing happens": true, same object.
    assert tensor.cpu() is tensor
    assert tensor.to("cpu") is tensor
    # "If you've got a tensor without gradients, and try detaching it - nothing happens";
    # reality: detach() returns a NEW tensor object, a view sharing the same memory.
    detached = tensor.detach()
    assert detached is not tensor
    assert detached.data_ptr() == tensor.data_ptr()
    grad = torch.tensor([1.0, 2.0], requires_grad=True)
    # Tutorial says cpu() before detach() would copy the gradients; reality: on the CPU, cpu() returns the
    # tensor itself (still requiring grad, so numpy() still fails), and both orders give the same view.
    assert grad.cpu() is grad
    with pytest.raises(RuntimeError, match="requires grad"):
        grad.cpu().numpy()
    a, b = grad.detach().cpu().numpy(), grad.cpu().detach().numpy()
    assert np.shares_memory(a, b)
    assert grad.grad is None  # nothing to copy: .grad is only filled by backward()
    # (b) tensorbridge needs neither call.
    assert np.shares_memory(tb.to_numpy(grad), a)
    assert tb.to_tensor(tensor, device="cpu") is tensor


@pytest.mark.cuda
@needs_cuda
def test_t1_gpu_tensor_to_cpu_numpy_array() -> None:
    tensor = torch.tensor([1, 2, 3, 4, 5], dtype=torch.float32, requires_grad=True).cuda()
    assert tensor.device.type == "cuda"
    assert not tensor.is_leaf  # .cuda() of a grad tensor is recorded in the graph
    with pytest.raises(TypeError, match="can't convert cuda:0 device type tensor to numpy"):
        tensor.detach().numpy()
    np_c = tensor.detach().cpu().numpy()
    assert np_c.dtype == np.float32
    assert np_c.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    # cpu() then detach() gives the same values (the order is about the graph, not the result).
    assert np.array_equal(tensor.cpu().detach().numpy(), np_c)
    # (b) one call; a device copy, which explain() reports.
    out = tb.to_numpy(tensor)
    assert out.dtype == np.float32
    assert out.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert not tb.explain(tensor, to="numpy").shares_memory
    with pytest.raises(tb.CopyRefusedError):
        tb.to_numpy(tensor, copy=False)


@without_cuda
def test_t1_gpu_tensor_without_cuda_raises() -> None:
    # The tutorial's .cuda() fails without CUDA: an AssertionError on CPU builds of torch
    # ("Torch not compiled with CUDA enabled"), a RuntimeError on CUDA builds with no device.
    with pytest.raises((AssertionError, RuntimeError)):
        torch.tensor([1, 2, 3, 4, 5], dtype=torch.float32, requires_grad=True).cuda()
    # (b) tensorbridge raises one clear error type, which is also a RuntimeError.
    data = np.array([1, 2, 3, 4, 5])
    with pytest.raises(tb.DeviceError, match="CUDA") as info:
        tb.to_tensor(data, dtype=torch.float32, requires_grad=True, device="cuda")
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, tb.ConversionError)
    explained = tb.explain(data, device="cuda")
    assert not explained.shares_memory
    assert "CUDA is not available" in str(explained)


# --- t2: NumPy -> PyTorch ----------------------------------------------------------------------


def test_t2_numpy_to_pytorch_from_numpy() -> None:
    x = np.eye(3)
    t = torch.from_numpy(x)
    assert repr(t) == ("tensor([[1., 0., 0.],\n        [0., 1., 0.],\n        [0., 0., 1.]], dtype=torch.float64)")
    # (b)
    out = tb.to_tensor(x)
    assert repr(out) == repr(t)
    assert np.shares_memory(out.numpy(), x)
    assert tb.explain(x).shares_memory
    x[0, 1] = 7.0
    assert out[0, 1].item() == 7.0


def test_t2_change_dtype_with_type() -> None:
    x = np.eye(3)
    t = torch.from_numpy(x).type(torch.float32)
    # Tutorial's expected result shows integers "tensor([[1, 0, 0], ...])"; reality: float32 values print
    # as "1., 0." and, float32 being torch's default, without a dtype suffix.
    assert t.dtype == torch.float32
    assert repr(t) == ("tensor([[1., 0., 0.],\n        [0., 1., 0.],\n        [0., 0., 1.]])")
    # .type() silently turns values float32 cannot hold into inf.
    assert torch.isinf(torch.from_numpy(np.array([1e300])).type(torch.float32)).all()
    # (b)
    out = tb.to_tensor(x, dtype=torch.float32)
    assert out.dtype == torch.float32
    assert torch.equal(out, t)
    assert not tb.explain(x, dtype=torch.float32).shares_memory
    x[0, 0] = 5.0
    assert out[0, 0].item() == 1.0
    with pytest.raises(tb.ValueRangeError, match="does not fit float32"):
        tb.to_tensor(np.array([1e300]), dtype=torch.float32)


@pytest.mark.cuda
@needs_cuda
def test_t2_numpy_to_gpu_with_to() -> None:
    x = np.eye(3)
    t = torch.from_numpy(x).to("cuda")
    assert repr(t) == (
        "tensor([[1., 0., 0.],\n        [0., 1., 0.],\n        [0., 0., 1.]], device='cuda:0', dtype=torch.float64)"
    )
    # (b)
    out = tb.to_tensor(x, device="cuda")
    assert out.device.type == "cuda"
    assert out.dtype == torch.float64
    assert torch.equal(out.cpu(), torch.from_numpy(x))
    assert not tb.explain(x, device="cuda").shares_memory


@without_cuda
def test_t2_numpy_to_gpu_without_cuda_raises() -> None:
    x = np.eye(3)
    assert not torch.cuda.is_available()  # the tutorial's own check
    with pytest.raises((AssertionError, RuntimeError)):
        torch.from_numpy(x).to("cuda")
    with pytest.raises(tb.DeviceError, match="CUDA") as info:
        tb.to_tensor(x, device="cuda")
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(tb.DeviceError, match="CUDA"):
        tb.to_tensor(torch.eye(3), device="cuda")


# --- t2: PyTorch -> NumPy ----------------------------------------------------------------------


def test_t2_pytorch_to_numpy() -> None:
    x = torch.eye(3)
    arr = x.numpy()
    assert repr(arr) == ("array([[1., 0., 0.],\n       [0., 1., 0.],\n       [0., 0., 1.]], dtype=float32)")
    # (b)
    out = tb.to_numpy(x)
    assert repr(out) == repr(arr)
    assert np.shares_memory(out, arr)
    assert tb.explain(x, to="numpy").shares_memory
    x[2, 0] = 3.0
    assert out[2, 0] == 3.0


def test_t2_detach_before_numpy() -> None:
    x = torch.eye(3)
    # The tutorial's example tensor does not require grad, so plain x.numpy() would have worked too.
    assert not x.requires_grad
    assert x.detach().numpy().tolist() == np.eye(3).tolist()
    x.requires_grad_(True)
    with pytest.raises(RuntimeError, match="requires grad"):
        x.numpy()
    arr = x.detach().numpy()
    assert arr.dtype == np.float32
    # (b)
    out = tb.to_numpy(x)
    assert np.shares_memory(out, arr)
    assert tb.explain(x, to="numpy").shares_memory
    assert "detach" in str(tb.explain(x, to="numpy"))


@pytest.mark.cuda
@needs_cuda
def test_t2_gpu_back_to_cpu() -> None:
    x = torch.eye(3)
    x = x.to("cuda")
    with pytest.raises(TypeError, match="can't convert cuda:0 device type tensor to numpy"):
        x.numpy()
    arr = x.to("cpu").numpy()
    assert arr.dtype == np.float32
    assert arr.tolist() == np.eye(3).tolist()
    # (b)
    out = tb.to_numpy(x)
    assert out.dtype == np.float32
    assert np.array_equal(out, arr)
    assert not tb.explain(x, to="numpy").shares_memory


def test_t2_detach_and_to_cpu_are_idempotent() -> None:
    x = torch.eye(3)
    arr = x.detach().to("cpu").numpy()
    assert repr(arr) == ("array([[1., 0., 0.],\n       [0., 1., 0.],\n       [0., 0., 1.]], dtype=float32)")
    # Idempotent in result: to("cpu") on a CPU tensor is the tensor itself; detach() gives a new
    # object each call, but every one views the same memory.
    assert x.to("cpu") is x
    assert x.detach() is not x
    assert x.detach().detach().data_ptr() == x.data_ptr()
    assert np.shares_memory(arr, x.numpy())
    # (b) tensorbridge does what detach().to("cpu").numpy() does, for a Parameter too.
    weight = torch.nn.Parameter(torch.eye(3))
    out = tb.to_numpy(weight)
    assert np.shares_memory(out, weight.detach().numpy())
    assert tb.explain(weight, to="numpy").shares_memory
    assert np.shares_memory(tb.to_numpy(x), arr)


# --- inputs plain torch gets wrong ---------------------------------------------------------------


def test_extra_read_only_array_to_tensor() -> None:
    frozen = np.arange(6.0).reshape(2, 3)
    frozen.flags.writeable = False
    t = tb.to_tensor(frozen)
    assert not np.shares_memory(t.numpy(), frozen)
    assert not tb.explain(frozen).shares_memory
    t[0, 0] = 100.0
    assert frozen[0, 0] == 0.0  # writes to the tensor never reach read-only memory
    shared = tb.to_tensor(frozen, copy=False)
    assert np.shares_memory(shared.numpy(), frozen)
    assert tb.explain(frozen, copy=False).shares_memory


def test_extra_negative_strides_to_tensor() -> None:
    img = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    rgb = img[:, :, ::-1]
    with pytest.raises(ValueError, match="negative"):
        torch.from_numpy(rgb)
    t = tb.to_tensor(rgb)
    assert t.dtype == torch.uint8
    assert t.tolist() == rgb.tolist()
    assert not np.shares_memory(t.numpy(), img)
    assert not tb.explain(rgb).shares_memory
    with pytest.raises(tb.CopyRefusedError, match="negative strides"):
        tb.to_tensor(rgb, copy=False)


def test_extra_bfloat16_tensor_to_numpy() -> None:
    half = torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="BFloat16"):
        half.numpy()
    out = tb.to_numpy(half)
    assert out.dtype == np.dtype(ml_dtypes.bfloat16)
    assert out.astype(np.float32).tolist() == [1.5, -2.0, 3.25]
    assert tb.explain(half, to="numpy").shares_memory
    out[0] = 8
    assert half[0].item() == 8.0
    back = tb.to_tensor(out)
    assert back.dtype == torch.bfloat16
    assert back.data_ptr() == half.data_ptr()


# --- the tour ------------------------------------------------------------------------------------


def test_tour_quiet_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert tour.run_tour(quiet=True) == 0
    assert capsys.readouterr().out == ""


def test_tour_reports_each_stop(capsys: pytest.CaptureFixture[str]) -> None:
    assert tour.run_tour() == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out
    assert out.count("SHARED (checked") >= 6
    assert out.count("COPIED (checked") >= 4
    assert "tb.to_numpy(half)" in out
    assert "raises RuntimeError: Can't call numpy() on Tensor that requires grad" in out
    if not torch.cuda.is_available():
        assert "DeviceError" in out and "CUDA is not available" in out


def test_tour_fails_loudly_when_explain_disagrees(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_explain = tb.explain

    class Inverted:
        def __init__(self, data: object, **options: Any) -> None:
            self.real = real_explain(data, **options)
            self.shares_memory = not self.real.shares_memory

        def __str__(self) -> str:
            return str(self.real)

    monkeypatch.setattr(tour, "explain", Inverted)
    assert tour.run_tour() == 1
    assert "MISMATCH" in capsys.readouterr().out
