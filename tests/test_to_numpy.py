from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch

import tensorbridge as tb

from .helpers import EXACT_ROWS, bits, quiet_tensor, random_bits


@pytest.mark.parametrize("row", EXACT_ROWS, ids=lambda r: r.name)
def test_every_dtype_is_zero_copy(row: tb.dtypes.DtypeRow) -> None:
    src = random_bits(row, (2, 3), seed=5)
    t = tb.to_tensor(src)
    out = tb.to_numpy(t)
    assert out.dtype == row.numpy
    assert out.ctypes.data == t.data_ptr()
    assert bits(out) == bits(src)
    assert tb.explain(t, to="numpy").shares_memory


def test_bfloat16_and_float8_become_ml_dtypes() -> None:
    t = torch.tensor([1.0, -2.0, 0.5]).to(torch.bfloat16)
    out = tb.to_numpy(t)
    assert out.dtype == np.dtype(ml_dtypes.bfloat16)
    assert out.astype(np.float32).tolist() == [1.0, -2.0, 0.5]
    out[0] = 4  # shares: the tensor sees the write
    assert t[0].item() == 4.0
    f8 = torch.tensor([0.5, 448.0]).to(torch.float8_e4m3fn)
    assert tb.to_numpy(f8).astype(np.float32).tolist() == [0.5, 448.0]


def test_requires_grad_and_parameters_share_without_copy() -> None:
    t = torch.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError):
        t.numpy()
    out = tb.to_numpy(t)
    assert out.ctypes.data == t.data_ptr()
    p = torch.nn.Parameter(torch.zeros(2))
    pa = tb.to_numpy({"w": p})["w"]
    assert pa.ctypes.data == p.data_ptr()
    assert "detach" in str(tb.explain(p, to="numpy"))


def test_conjugate_and_negative_bits_are_resolved() -> None:
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    assert tb.to_numpy(z.conj()).tolist() == [1 - 2j, 3 + 4j]
    neg = z.conj().imag
    assert neg.is_neg()
    assert tb.to_numpy(neg).tolist() == [-2.0, 4.0]
    assert not tb.explain(z.conj(), to="numpy").shares_memory
    with pytest.raises(tb.CopyRefusedError, match="conjugate"):
        tb.to_numpy(z.conj(), copy=False)


def test_complex32_becomes_complex64() -> None:
    t = quiet_tensor(torch.tensor, [1 + 2j, -0.5j], dtype=torch.complex32)
    out = tb.to_numpy(t)
    assert out.dtype == np.complex64
    assert out.tolist() == [1 + 2j, -0.5j]


def test_dtype_casts_on_the_way() -> None:
    t = torch.arange(4, dtype=torch.int64)
    out = tb.to_numpy(t, dtype=np.float32)
    assert out.dtype == np.float32 and out.tolist() == [0, 1, 2, 3]
    assert tb.to_numpy(torch.ones(2), dtype="bfloat16").dtype == np.dtype(ml_dtypes.bfloat16)
    with pytest.raises(tb.ValueRangeError, match="300"):
        tb.to_numpy(torch.tensor([300]), dtype=np.int8)
    ld = tb.to_numpy(torch.tensor([1.5], dtype=torch.float64), dtype=np.longdouble)
    assert ld.dtype == np.longdouble and ld.tolist() == [1.5]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: torch.empty(3, device="meta"), "meta"),
        # Quantized tensors need a choice (issue 4); sparse and nested ones convert since
        # issue 4 (tests/test_sparse.py, tests/test_layouts.py).
        (lambda: quiet_tensor(torch.quantize_per_tensor, torch.ones(3), 0.1, 0, torch.quint8), "dequantize"),
    ],
)
def test_unsupported_tensors_raise_clear_errors(make: Any, match: str) -> None:
    t = make()
    with pytest.raises(tb.UnsupportedError, match=match) as info:
        tb.to_numpy({"layer": [t]})
    assert info.value.path == "data['layer'][0]"
    assert isinstance(info.value, TypeError)
    assert "error" in str(tb.explain({"layer": [t]}, to="numpy"))


def test_ndarray_is_returned_unchanged() -> None:
    a = np.arange(3)
    assert tb.to_numpy(a) is a
    assert tb.to_numpy(a, dtype=a.dtype) is a
    b = tb.to_numpy(a, copy=True)
    assert b is not a and not np.shares_memory(a, b)
    assert tb.to_numpy(a, dtype=np.float32).dtype == np.float32
    s = tb.to_numpy(np.float32(2))
    assert isinstance(s, np.ndarray) and s.shape == () and s.dtype == np.float32


def test_copy_true_and_false() -> None:
    t = torch.arange(4.0)
    c = tb.to_numpy(t, copy=True)
    c[0] = 9
    assert t[0].item() == 0
    assert tb.to_numpy(t, copy=False).ctypes.data == t.data_ptr()
    bf = torch.ones(2, dtype=torch.bfloat16)
    assert tb.to_numpy(bf, copy=True).ctypes.data != bf.data_ptr()


def test_tensor_views_keep_strides() -> None:
    t = torch.arange(12.0).reshape(3, 4).t()[::2]
    out = tb.to_numpy(t)
    assert out.strides == tuple(s * 4 for s in t.stride())
    assert out.tolist() == t.tolist()
    ex = torch.arange(3.0).expand(2, 3)
    assert tb.to_numpy(ex).strides == (0, 4)


def test_masked_arrays_keep_their_mask_through_casts_and_copies() -> None:
    m = np.ma.masked_array([1.0, 2.0, 300.0], mask=[False, False, True])
    cast = tb.to_numpy({"m": m}, dtype=np.uint8)["m"]  # the masked 300 is not checked
    assert isinstance(cast, np.ma.MaskedArray) and cast.dtype == np.uint8
    assert cast.mask.tolist() == [False, False, True] and cast.compressed().tolist() == [1, 2]
    copied = tb.to_numpy(m, copy=True)
    assert isinstance(copied, np.ma.MaskedArray) and copied.mask.tolist() == [False, False, True]
    copied.mask[0] = True
    assert not m.mask[0]  # the mask was copied too
    with pytest.raises(tb.ValueRangeError, match="300"):
        tb.to_numpy(np.ma.masked_array([1.0, 300.0], mask=[False, False]), dtype=np.uint8)
