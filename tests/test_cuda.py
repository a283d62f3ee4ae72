"""GPU paths. Marked ``cuda``: skipped on machines without CUDA (see conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tensorbridge as tb

from .helpers import EXACT_ROWS, bits, random_bits

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("row", EXACT_ROWS, ids=lambda r: r.name)
def test_round_trip_through_the_gpu_is_bit_exact(row: tb.dtypes.DtypeRow) -> None:
    a = random_bits(row, (3, 4), seed=11)
    t = tb.to_tensor({"x": a}, device="cuda")["x"]
    assert t.is_cuda and t.dtype is row.torch
    back = tb.to_numpy(t)
    assert isinstance(back, np.ndarray) and back.dtype == row.numpy
    assert bits(back) == bits(a)
    assert not tb.explain(t, to="numpy").shares_memory


@pytest.mark.parametrize("layout", ["reversed", "big_endian", "readonly", "fortran"])
def test_layouts_reach_the_gpu(layout: str) -> None:
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    a = {
        "reversed": base[:, ::-1],
        "big_endian": base.astype(">f4"),
        "readonly": np.frombuffer(base.tobytes(), np.float32).reshape(3, 4),
        "fortran": np.asfortranarray(base),
    }[layout]
    t = tb.to_tensor(a, device="cuda")
    assert t.is_cuda and t.cpu().tolist() == np.asarray(a).tolist()


def test_cuda_tensor_bits_are_resolved_on_the_way() -> None:
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64, device="cuda")
    assert tb.to_numpy(z.conj()).tolist() == [1 - 2j, 3 + 4j]
    assert tb.to_numpy(z.conj().imag).tolist() == [-2.0, 4.0]
    g = torch.ones(2, device="cuda", requires_grad=True)
    assert tb.to_numpy(g).tolist() == [1.0, 1.0]
    bf = torch.tensor([1.5, -2.0], device="cuda").to(torch.bfloat16)
    assert tb.to_numpy(bf).astype(np.float32).tolist() == [1.5, -2.0]


def test_cast_before_the_copy_is_checked_on_the_gpu() -> None:
    t = torch.tensor([300.0], device="cuda")
    with pytest.raises(tb.ValueRangeError, match="300"):
        tb.to_numpy(t, dtype=np.uint8)
    ok = tb.to_tensor(np.array([1.0, 2.0]), dtype=torch.float32, device="cuda")
    assert ok.dtype is torch.float32 and ok.is_cuda


def test_pin_memory() -> None:
    t = tb.to_tensor(np.ones(1024, np.float32), pin_memory=True)
    assert t.is_pinned() and not t.is_cuda
    with pytest.raises(tb.CopyRefusedError):
        tb.to_tensor(np.ones(4), pin_memory=True, copy=False)


def test_missing_device_is_a_device_error() -> None:
    index = torch.cuda.device_count()
    with pytest.raises(tb.DeviceError, match="does not exist"):
        tb.to_tensor(np.ones(2), device=f"cuda:{index}")
