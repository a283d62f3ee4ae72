"""The planning-free fast path must give what the general walker gives, or step aside."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensorbridge as tb
import tensorbridge.tree
from tensorbridge import _fastpath
from tensorbridge.api import _numpy_leaf_default, _tensor_leaf_default
from tensorbridge.tree import map_leaves

arrays = st.sampled_from(
    [
        lambda: np.arange(3.0),
        lambda: np.arange(6, dtype=np.int8).reshape(2, 3)[:, ::-1],
        lambda: np.arange(4, dtype=">i4"),
        lambda: np.frombuffer(b"\0" * 8, dtype=np.float32),
        lambda: np.zeros((1, 2))[::-1],
        lambda: np.float32(2.5),
        lambda: torch.ones(2),
        lambda: 7,
        lambda: "s",
        lambda: None,
    ]
).map(lambda make: make())
trees = st.recursive(
    arrays,
    lambda kids: st.one_of(
        st.lists(kids, max_size=3),
        st.lists(kids, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=2), kids, max_size=3),
    ),
    max_leaves=8,
)


def source_ptrs(tree: Any) -> set[int]:
    """Data pointers of the input's arrays and tensors."""
    leaves = tb.tree.iter_leaves(tree, lambda x: isinstance(x, (np.ndarray, torch.Tensor)))
    return {x.ctypes.data if isinstance(x, np.ndarray) else x.data_ptr() for _, x in leaves}


def same(a: Any, b: Any, src: set[int]) -> bool:
    """Same types, values, strides, and both results view the input or neither does."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], src) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, src) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        shared_alike = (a.data_ptr() in src) == (b.data_ptr() in src)
        return a.dtype == b.dtype and a.stride() == b.stride() and torch.equal(a, b) and shared_alike
    if isinstance(a, np.ndarray):
        shared_alike = (a.ctypes.data in src) == (b.ctypes.data in src)
        return a.dtype == b.dtype and np.array_equal(a, b) and shared_alike
    return bool(a == b)


@given(trees)
def test_fast_and_general_paths_agree_to_tensor(tree: Any) -> None:
    general = map_leaves(_tensor_leaf_default, tree)
    try:
        fast = _fastpath.fast_to_tensor(tree)
    except _fastpath.Bail:
        fast = general
    src = source_ptrs(tree)
    assert same(fast, general, src)
    assert same(tb.to_tensor(tree), general, src)


@given(trees)
def test_fast_and_general_paths_agree_to_numpy(tree: Any) -> None:
    tensors = tb.to_tensor(tree)
    general = map_leaves(_numpy_leaf_default, tensors)
    try:
        fast = _fastpath.fast_to_numpy(tensors)
    except _fastpath.Bail:
        fast = general
    assert same(fast, general, source_ptrs(tensors))


def test_fast_path_bails_on_what_it_cannot_do() -> None:
    for tree in (
        [np.arange(3)[::-1]],
        {"ro": np.frombuffer(b"\0" * 4, np.uint8)},
        [np.float32(1)],
        _deep(_fastpath.MAX_DEPTH + 1),
        [set()],
    ):
        with pytest.raises(_fastpath.Bail):
            _fastpath.fast_to_tensor(tree)
    with pytest.raises(_fastpath.Bail):
        _fastpath.fast_to_numpy([torch.ones(1, requires_grad=True)])


def test_fast_path_shares_memory() -> None:
    a = np.arange(3.0)
    out = tb.to_tensor({"a": [a, (a,)]})
    assert out["a"][1][0].data_ptr() == a.ctypes.data
    back = tb.to_numpy(out)
    assert np.shares_memory(back["a"][0], a)


def _deep(n: int) -> Any:
    tree: Any = np.ones(1)
    for _ in range(n):
        tree = [tree]
    return tree
