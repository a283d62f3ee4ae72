"""Property tests over the dtype table itself: a new row is tested automatically."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensorbridge as tb

from .helpers import EXACT_ROWS, bits, random_bits

LAYOUTS = [
    "c",
    "fortran",
    "reversed",
    "reversed_size1",
    "step",
    "transpose",
    "broadcast",
    "big_endian",
    "readonly",
    "zero_d",
    "empty",
    "scalar",
]


def make(row: tb.dtypes.DtypeRow, shape: tuple[int, ...], layout: str, seed: int) -> Any:
    base = random_bits(row, shape, seed)
    if layout == "fortran":
        return np.asfortranarray(base)
    if layout == "reversed" and base.ndim:
        return base[..., ::-1]
    if layout == "reversed_all":
        return base[(slice(None, None, -1),) * base.ndim]
    if layout == "reversed_readonly" and base.ndim:
        base.flags.writeable = False
        return base[..., ::-1]
    if layout == "reversed_size1":
        return random_bits(row, (1, *shape), seed)[::-1]
    if layout == "step" and base.ndim:
        return base[..., ::2]
    if layout == "transpose":
        return base.T
    if layout == "broadcast":
        return np.broadcast_to(base, (2, *shape))
    if layout == "big_endian" and row.carrier is None and row.numpy.itemsize > 1:
        return base.astype(base.dtype.newbyteorder(">"))
    if layout == "readonly":
        base.flags.writeable = False
        return base
    if layout == "zero_d":
        return random_bits(row, (), seed)
    if layout == "empty":
        return random_bits(row, (0, *shape), seed)[:, ::-1] if shape else random_bits(row, (0,), seed)
    if layout == "scalar":
        return random_bits(row, (), seed)[()]
    return base


shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


@given(row=st.sampled_from(EXACT_ROWS), shape=shapes, layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**16))
def test_round_trip_is_bit_exact(row: tb.dtypes.DtypeRow, shape: tuple[int, ...], layout: str, seed: int) -> None:
    a = make(row, shape, layout, seed)
    t = tb.to_tensor(a)
    assert isinstance(t, torch.Tensor)
    assert t.dtype is row.torch
    assert tuple(t.shape) == np.shape(a)
    back = tb.to_numpy(t)
    assert back.dtype == row.numpy
    assert back.shape == np.shape(a)
    assert bits(back) == bits(np.asarray(a))


@given(
    row=st.sampled_from(EXACT_ROWS),
    shape=shapes,
    layout=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**16),
    copy=st.sampled_from([None, True, False]),
)
def test_explain_tells_the_truth_about_memory(
    row: tb.dtypes.DtypeRow, shape: tuple[int, ...], layout: str, seed: int, copy: bool | None
) -> None:
    a = make(row, shape, layout, seed)
    plan = tb.explain(a, copy=copy)
    try:
        t = tb.to_tensor(a, copy=copy)
    except tb.CopyRefusedError:
        assert (copy is False and not plan.shares_memory) or plan.plans[0].error is not None
        return
    assert copy is not False or plan.shares_memory
    if isinstance(a, np.ndarray) and a.size:
        shared = bool(np.shares_memory(tb.to_numpy(t), a))
        assert shared == plan.shares_memory, str(plan)
    if copy is True:
        assert not plan.shares_memory
    # A read-only input is never shared unless copy=False asked for it.
    if isinstance(a, np.ndarray) and not a.flags.writeable and copy is not False:
        assert not plan.shares_memory


@given(row=st.sampled_from(EXACT_ROWS), shape=shapes, seed=st.integers(0, 2**16))
def test_tensor_side_round_trip(row: tb.dtypes.DtypeRow, shape: tuple[int, ...], seed: int) -> None:
    t = tb.to_tensor(random_bits(row, shape, seed)).clone()
    a = tb.to_numpy(t)
    again = tb.to_tensor(a)
    assert again.dtype is t.dtype
    assert bits(tb.to_numpy(again)) == bits(tb.to_numpy(t))
    assert tb.explain(t, to="numpy").shares_memory
