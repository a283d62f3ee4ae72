"""Issue 9: selective casts (dtype= as a mapping), copy=True and requires_grad mean memory of one's own,
inference tensors, and NumPy strings."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch

import tensorbridge as tb

# --- dtype= as a mapping ---------------------------------------------------------------------


def batch() -> dict[str, Any]:
    return {
        "x": np.array([0.1, 2.5]),
        "big_endian": np.array([0.1, 2.5], ">f8"),
        "ids": np.array([257, 3]),
        "f32": np.ones(2, np.float32),
        "bf16": np.ones(2, ml_dtypes.bfloat16),
        "name": "a.png",
    }


@pytest.mark.parametrize(
    "key", [np.float64, np.dtype("float64"), ">f8", "double", "torch.float64", torch.float64, float]
)
def test_a_mapping_casts_only_leaves_whose_dtype_is_a_key(key: object) -> None:
    out = tb.to_tensor(batch(), dtype={key: torch.float32})
    assert {k: v.dtype for k, v in out.items() if k != "name"} == {
        "x": torch.float32,
        "big_endian": torch.float32,
        "ids": torch.int64,
        "f32": torch.float32,
        "bf16": torch.bfloat16,
    }
    assert out["ids"].tolist() == [257, 3] and out["name"] == "a.png"
    assert out["x"].tolist() == np.array([0.1, 2.5], np.float32).tolist()


def test_a_mapping_leaves_the_other_leaves_shared() -> None:
    data = batch()
    out = tb.to_tensor(data, dtype={np.float64: torch.float32})
    assert np.shares_memory(out["ids"].numpy(), data["ids"])
    assert np.shares_memory(out["f32"].numpy(), data["f32"])


def test_a_mapping_to_numpy() -> None:
    sd = {"w": torch.ones(2, dtype=torch.bfloat16), "step": torch.tensor(3), "h": torch.ones(1, dtype=torch.float16)}
    out = tb.to_numpy(sd, dtype={torch.bfloat16: np.float32, "half": "float64"})
    assert {k: v.dtype for k, v in out.items()} == {
        "w": np.dtype(np.float32),
        "step": np.dtype(np.int64),
        "h": np.dtype(np.float64),
    }
    assert np.shares_memory(out["step"], sd["step"].numpy())


def test_a_mapping_casts_are_checked() -> None:
    with pytest.raises(tb.ValueRangeError, match=r"data\['ids'\]"):
        tb.to_tensor({"ids": np.array([300]), "ok": np.ones(1)}, dtype={np.int64: torch.uint8})


def test_a_mapping_matches_dtypes_torch_lacks_and_other_libraries_leaves() -> None:
    out = tb.to_tensor(
        {"ld": np.ones(2, np.longdouble), "buf": bytearray(b"ab")},
        dtype={np.longdouble: "float64", np.uint8: torch.int16},
    )
    assert out["ld"].dtype == torch.float64 and out["buf"].dtype == torch.int16 and out["buf"].tolist() == [97, 98]


def test_an_empty_mapping_casts_nothing() -> None:
    out = tb.to_tensor(batch(), dtype={})
    assert out["x"].dtype == torch.float64


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"nope": torch.float32}, "key 'nope' names no dtype"),
        ({np.float64: "zzz"}, "value 'zzz' for np.float64 is not a to_tensor target"),
        ({np.float64: None}, "value for np.float64 is None"),
        ({np.float64: torch.qint8}, "torch.qint8 cannot be produced from NumPy data"),
        ({np.float64: torch.float32, "float64": torch.float16}, "gives float64 two targets, float32 and float16"),
        ({"float": torch.float32}, "ambiguous"),
    ],
)
def test_a_bad_mapping_is_a_clear_error(mapping: dict[Any, Any], message: str) -> None:
    with pytest.raises(tb.UnsupportedError, match=message):
        tb.to_tensor(batch(), dtype=mapping)
    with pytest.raises(tb.UnsupportedError, match="dtype mapping"):
        tb.explain(batch(), dtype=mapping)


def test_a_bad_mapping_value_for_to_numpy() -> None:
    with pytest.raises(tb.UnsupportedError, match="is not a to_numpy target"):
        tb.to_numpy({"w": torch.ones(1)}, dtype={torch.float32: torch.qint8})


def test_explain_shows_which_leaves_a_mapping_casts() -> None:
    text = str(tb.explain(batch(), dtype={np.float64: torch.float16}))
    blocks = {b.split(":")[0]: b for b in text.split("\ndata")}
    assert "cast (float64 -> float16)" in blocks["data['x']"]
    assert "cast" not in blocks["['ids']"] and "shares memory" in blocks["['ids']"]


# --- copy=True and requires_grad: every element its own memory ---------------------------------


def overlapping_arrays() -> dict[str, np.ndarray[Any, Any]]:
    base = np.arange(6.0)
    return {
        "broadcast": np.broadcast_to(np.arange(3.0), (4, 3)),
        "as_strided": np.lib.stride_tricks.as_strided(base, (3, 3), (8, 8)),
        "writable_zero_stride": np.lib.stride_tricks.as_strided(base, (4, 3), (0, 8)),
        "broadcast_float32": np.broadcast_to(np.arange(3, dtype=np.float32)[:, None], (3, 5)),
    }


def overlapping_tensors() -> dict[str, torch.Tensor]:
    return {
        "expand": torch.arange(3.0).expand(4, 3),
        "as_strided": torch.arange(6.0).as_strided((3, 3), (1, 1)),
        "expand_bf16": torch.ones(2, 1, dtype=torch.bfloat16).expand(2, 4),
    }


def assert_own_memory(t: torch.Tensor) -> None:
    assert torch._debug_has_internal_overlap(t) == 0, t.stride()  # 0: no overlap
    before = t.clone()
    with torch.no_grad():
        t[(0,) * t.ndim] += 1
        t.add_(1)  # raises "more than one element ... single memory location" on overlap
    changed = (t != before + 1).sum().item()
    assert changed == 1


@pytest.mark.parametrize("name", list(overlapping_arrays()))
@pytest.mark.parametrize("kwargs", [{"copy": True}, {"requires_grad": True}, {"copy": True, "dtype": torch.float16}])
def test_array_with_overlapping_memory_gets_its_own(name: str, kwargs: dict[str, Any]) -> None:
    a = overlapping_arrays()[name]
    t = tb.to_tensor(a, **kwargs)
    assert t.tolist() == a.astype(np.float16 if "dtype" in kwargs else a.dtype).tolist()
    assert_own_memory(t.detach())
    if "dtype" not in kwargs:
        assert t.is_contiguous()  # C order, not the zero strides sorted first


@pytest.mark.parametrize("name", list(overlapping_tensors()))
@pytest.mark.parametrize("kwargs", [{"copy": True}, {"requires_grad": True}])
def test_tensor_with_overlapping_memory_gets_its_own(name: str, kwargs: dict[str, Any]) -> None:
    t = overlapping_tensors()[name]
    out = tb.to_tensor(t, **kwargs)
    assert torch.equal(out.detach(), t)
    assert_own_memory(out.detach())


@pytest.mark.parametrize("name", list(overlapping_tensors()))
def test_to_numpy_copy_of_overlapping_tensor_is_independent(name: str) -> None:
    t = overlapping_tensors()[name]
    a = tb.to_numpy(t, copy=True)
    assert a.flags.c_contiguous and a.flags.writeable
    a.reshape(-1)[0] = 9
    assert (a == 9).sum() == 1 and t.reshape(-1)[0].item() != 9


@pytest.mark.parametrize("name", list(overlapping_arrays()))
def test_to_numpy_copy_of_overlapping_array_is_independent(name: str) -> None:
    a = tb.to_numpy(overlapping_arrays()[name], copy=True)
    assert a.flags.c_contiguous
    a.reshape(-1)[0] = 9
    assert (a == 9).sum() == 1


def test_a_broadcast_leaf_that_requires_grad_can_be_optimized() -> None:
    w = tb.to_tensor(np.broadcast_to(np.arange(3.0), (4, 3)), requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.5)
    w.sum().backward()
    opt.step()
    assert w.detach().tolist() == [[-0.5, 0.5, 1.5]] * 4
    w2 = tb.to_tensor(torch.arange(3.0).expand(4, 3), requires_grad=True)
    torch.optim.SGD([w2], lr=0.5).zero_grad()
    w2.add(0).sum().backward()
    with torch.no_grad():
        w2.add_(1)  # an expanded leaf would raise "more than one element ... single memory location"


def test_copy_none_may_keep_a_broadcast_and_explain_says_so() -> None:
    b = np.broadcast_to(np.arange(3.0), (4, 3))
    assert tb.to_tensor(b).stride() == (0, 1)
    assert "expand" in str(tb.explain(b))
    text = str(tb.explain(b, copy=True))
    assert "expand" not in text and "fresh memory" in text


def test_copy_false_with_requires_grad_on_overlap_is_refused() -> None:
    a = overlapping_arrays()["as_strided"]
    with pytest.raises(tb.CopyRefusedError, match="elements of the input share memory"):
        tb.to_tensor(a, requires_grad=True, copy=False)
    with pytest.raises(tb.CopyRefusedError, match="elements of the input share memory"):
        tb.to_tensor(overlapping_tensors()["expand"], requires_grad=True, copy=False)


def test_requires_grad_on_plain_layouts_still_shares() -> None:
    a = np.arange(6.0).reshape(2, 3)
    t = tb.to_tensor(a, requires_grad=True)
    assert t.is_leaf and np.shares_memory(t.detach().numpy(), a)
    tt = torch.arange(6.0).reshape(2, 3).t()
    out = tb.to_tensor(tt, requires_grad=True)
    assert out.data_ptr() == tt.data_ptr()


# --- inference-mode tensors ------------------------------------------------------------------


def test_inference_tensor_with_requires_grad_is_a_new_leaf_copy() -> None:
    with torch.inference_mode():
        it = torch.ones(3) * 2
    out = tb.to_tensor(it, requires_grad=True)
    assert out.requires_grad and out.is_leaf and not out.is_inference() and out.tolist() == [2.0, 2.0, 2.0]
    assert out.data_ptr() != it.data_ptr()
    (out * 3).sum().backward()
    assert out.grad is not None and out.grad.tolist() == [3.0, 3.0, 3.0]
    text = str(tb.explain(it, requires_grad=True))
    assert "inference-mode tensor" in text and "fresh memory" in text
    with pytest.raises(tb.CopyRefusedError, match="inference-mode"):
        tb.to_tensor(it, requires_grad=True, copy=False)


def test_inference_tensor_in_a_container_and_with_a_cast() -> None:
    with torch.inference_mode():
        sd = {"w": torch.ones(2), "h": torch.ones(2, dtype=torch.float16)}
    out = tb.to_tensor(sd, requires_grad=True, dtype={torch.float16: torch.float32})
    assert all(v.requires_grad and v.dtype == torch.float32 for v in out.values())


# --- NumPy strings -------------------------------------------------------------------------


@pytest.mark.parametrize("convert", [tb.to_tensor, tb.to_numpy])
def test_numpy_str_passes_through_like_str(convert: Any) -> None:
    name = np.str_("img_0001.png")
    out = convert({"file": name, "x": np.ones(1)})
    assert out["file"] is name
    assert convert(name) is name
    assert convert([name, np.str_("b")])[0] is name


@pytest.mark.parametrize("convert", [tb.to_tensor, tb.to_numpy])
def test_numpy_bytes_converts_like_bytes(convert: Any) -> None:
    got = convert({"a": np.bytes_(b"abc"), "b": b"abc"})
    assert got["a"].dtype == got["b"].dtype and got["a"].tolist() == got["b"].tolist() == [97, 98, 99]


# --- requires_grad=True always gives a leaf that requires grad --------------------------------


@pytest.mark.parametrize(
    "kwargs", [{}, {"copy": True}, {"dtype": torch.float16}, {"dtype": torch.float64, "copy": True}]
)
def test_requires_grad_gives_a_leaf_whatever_else_changes(kwargs: dict[str, Any]) -> None:
    p = torch.nn.Parameter(torch.ones(2))
    out = tb.to_tensor(p, requires_grad=True, **kwargs)
    assert out.requires_grad and out.is_leaf
    assert (out is p) == (not kwargs)  # nothing asked of it: the parameter itself


def test_an_intermediate_result_becomes_a_leaf_sharing_memory() -> None:
    p = torch.nn.Parameter(torch.ones(2))
    y = p * 2
    out = tb.to_tensor(y, requires_grad=True)
    assert out.is_leaf and out.requires_grad and out.data_ptr() == y.data_ptr() and y.grad_fn is not None


def test_a_copy_of_a_tensor_that_requires_grad_comes_back_detached() -> None:
    p = torch.nn.Parameter(torch.ones(2))
    for out in (tb.to_tensor(p, copy=True), tb.to_tensor(p, dtype=torch.float16)):
        assert not out.requires_grad and out.grad_fn is None and out.is_leaf
