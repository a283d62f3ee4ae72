"""The kind of a leaf: the facts its plan depends on, as a cheap, hashable key.

Two leaves of one kind get the same plan, so the plan is made once per kind (see
``pipeline.cache``). A key holds the call's options token, the leaf's exact type and dtype,
and the layout facts the planner reads: for arrays writability, contiguity and, for other
layouts, each axis's stride sign, whole-element strides and (when a new leaf must own its
memory) overlap; for tensors the device, layout and grad bit.

Some facts are left out of the keys because reading them costs more than the conversion of a
small leaf, and they are rare: a contiguous array's axes of size 1 may carry a negative or
partial stride (``a[::-1]`` on a size-1 axis), and, for ``to_numpy``, a tensor may carry a
conjugate or negative bit (``x.conj().imag``) or be sparse or nested. Such a leaf is *odd*
(:func:`odd`): it is never the leaf a cached plan is made from, ``explain`` and device calls
plan it in full, and a cached plan refuses to run on it (``torch.from_numpy``,
``Tensor.numpy()`` and ``Tensor.view(dtype)`` refuse these leaves themselves; other plans check
first), so the leaf is then planned in full. A cached plan never runs on a leaf it was not made
for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import numpy as np
import torch

from ..options import ToNumpyOptions, ToTensorOptions
from ..plan.core import may_overlap

__all__ = ["INERT", "Keyer", "keyer_for", "odd"]

Keyer = Callable[[Any, int], Any]

_CONTIGUOUS: Final = 0x1 | 0x2  # NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_F_CONTIGUOUS
_WRITEABLE: Final = 0x400  # NPY_ARRAY_WRITEABLE
_FLAGS: Final = _CONTIGUOUS | _WRITEABLE


def _axes(a: np.ndarray[Any, Any]) -> tuple[Any, ...]:
    """The planner's layout facts of a non-contiguous array (see ``plan.to_tensor``)."""
    size = a.size
    itemsize = a.dtype.itemsize
    signs = tuple(
        ((st > 0) - (st < 0)) if n > 1 and size else (2 if st < 0 else 3)
        for st, n in zip(a.strides, a.shape, strict=True)
    )
    whole = size == 0 or not any(st % itemsize for st in a.strides)
    return signs, whole


def _odd_array(a: np.ndarray[Any, Any], key: Any) -> bool:
    """A contiguous array (keyed by its flags) whose strides are not all non-negative whole elements."""
    if len(key) != 4:
        return False
    shape = a.shape
    if 1 not in shape and 0 not in shape:
        return False  # contiguous, every axis longer than 1: every stride is a positive whole element
    itemsize = a.dtype.itemsize
    return not all(st >= 0 and st % itemsize == 0 for st in a.strides)


def _odd_tensor(t: torch.Tensor, key: Any) -> bool:
    """For ``to_numpy``: a tensor with a lazy conjugate or negative bit, or not strided (sparse, nested)."""
    return bool(t.layout is not torch.strided or t.is_nested or t.is_conj() or t.is_neg())


def _never(x: Any, key: Any) -> bool:
    return False


def odd(keyer: Keyer) -> Callable[[Any, Any], bool]:
    """For leaves keyed by ``keyer``: the test of a leaf its key does not fully describe."""
    return _ODD.get(keyer, _never)


def _array(a: Any, token: int) -> Any:
    flags = a.flags.num & _FLAGS
    if flags & _CONTIGUOUS:
        return (token, type(a), a.dtype, flags)
    return (token, type(a), a.dtype, flags, _axes(a))


def _array_owning(a: Any, token: int) -> Any:
    """As :func:`_array`, and whether elements overlap (a new leaf must own each one)."""
    flags = a.flags.num & _FLAGS
    if flags & _CONTIGUOUS:
        return (token, type(a), a.dtype, flags)
    return (token, type(a), a.dtype, flags, _axes(a), may_overlap(a.shape, a.strides, a.dtype.itemsize))


def _array_as_is(a: Any, token: int) -> Any:
    """``to_numpy`` of an array: only its type and dtype matter."""
    return (token, type(a), a.dtype)


def _scalar(x: Any, token: int) -> Any:
    return (token, type(x), x.dtype)


def _tensor(t: Any, token: int) -> Any:
    if t.is_cpu:
        return (token, type(t), t.dtype, t.requires_grad, t.layout, t.is_nested)
    return (token, type(t), t.dtype, t.requires_grad, t.layout, t.is_nested, t.device)


def _tensor_owning(t: Any, token: int) -> Any:
    """As :func:`_tensor`, and the facts ``requires_grad=True`` reads: leaf, inference mode, overlap."""
    strided = t.layout == torch.strided and not t.is_nested
    overlap = strided and may_overlap(tuple(t.shape), t.stride(), 1)
    return (*_tensor(t, token), t.device, t.is_leaf, t.is_inference(), overlap)


def _tensor_to_numpy(t: Any, token: int) -> Any:
    # The hottest keyer (every state dict leaf): layout and nesting are odd facts here (see
    # _odd_tensor), since Tensor.numpy() and Tensor.view(dtype) refuse those tensors themselves.
    if t.is_cpu:
        return (token, type(t), t.dtype, t.requires_grad)
    return (token, type(t), t.dtype, t.requires_grad, t.device)


_ODD: Final[dict[Keyer, Callable[[Any, Any], bool]]] = {
    _array: _odd_array,
    _array_owning: _odd_array,
    _tensor_to_numpy: _odd_tensor,
}


# Types that are never leaves: walked past at the cost of one set lookup.
INERT: Final = frozenset({type(None), bool, int, float, complex, str})


def keyer_for(cls: type, opts: ToTensorOptions | ToNumpyOptions) -> Keyer | None:
    """The key function for leaves of exact type ``cls`` under ``opts``, or None (planned one by one).

    Types other libraries own (buffers, DLPack producers, pandas, SciPy) are adopted, which
    depends on the object, not its type: they are planned leaf by leaf.
    """
    owning = isinstance(opts, ToTensorOptions) and opts.requires_grad
    if issubclass(cls, np.ndarray):
        if isinstance(opts, ToNumpyOptions):
            return _array_as_is
        return _array_owning if owning else _array
    if issubclass(cls, np.generic):
        return None if issubclass(cls, (np.str_, np.bytes_)) else _scalar
    if issubclass(cls, torch.Tensor):
        if isinstance(opts, ToNumpyOptions):
            return _tensor_to_numpy
        return _tensor_owning if owning else _tensor
    return None
