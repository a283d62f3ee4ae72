"""The tensors of a torch.save file as ``pt_writer.py`` pickles them, and how each storage is laid out.

The pickle (``archive/data.pkl``) names storages by their persistent id (``_Storage``) and
rebuilds each tensor by the call torch.save writes for its dtype (``_Tensor``,
``_storage_kind``). :func:`_layout` decides which bytes make an entry's storage and the tensor's
strides, as torch.save keeps them; ``_Ties`` finds entries that are the same view of the same
live memory (tied weights), so they are stored once. Writing the records is ``pt_writer.py``'s.
"""

from __future__ import annotations

import collections
import functools
import io
import pickle
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..dtypes import row_for_numpy
from ..errors import UnsupportedError
from ..plan.core import contiguous_strides


class _Storage:
    """A storage as the pickle names it: by its persistent id, never by its bytes."""

    __slots__ = ("pid",)

    def __init__(self, pid: tuple[Any, ...]) -> None:
        self.pid = pid


class _Tensor:
    """A tensor as the pickle writes it: the call torch.load makes to rebuild it."""

    __slots__ = ("args", "rebuild")

    def __init__(self, rebuild: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.rebuild, self.args = rebuild, args

    def __reduce__(self) -> tuple[Any, ...]:
        # A fresh OrderedDict each time, as torch writes a tensor's (empty) backward hooks.
        return self.rebuild, (*self.args[:4], False, collections.OrderedDict(), *self.args[4:])


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        return obj.pid if type(obj) is _Storage else None


@functools.cache
def _storage_kind(dtype: torch.dtype) -> tuple[Callable[..., Any], Any, bool]:
    """(rebuild function, storage class, whether numel counts bytes) as torch.save writes ``dtype``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # complex32 is "experimental", TypedStorage "deprecated"
        # What torch.save pickles for a tensor of this dtype (torch leaves __reduce_ex__ unannotated).
        rebuild, args = torch.empty(0, dtype=dtype).__reduce_ex__(2)  # type: ignore[no-untyped-call]
    if isinstance(args[0], torch.UntypedStorage):
        return rebuild, torch.UntypedStorage, True
    # torch's own table of the legacy storage classes (torch.FloatStorage ...), which it pickles.
    return rebuild, getattr(torch, torch.storage._dtype_to_storage_type_map()[dtype]), False


def _pickled(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump(obj)  # torch.save's protocol
    return buffer.getvalue()


def _torch_dtype(dtype: np.dtype[Any], name: str, path: str) -> torch.dtype:
    row = row_for_numpy(dtype.newbyteorder("="))
    if row is None:
        raise UnsupportedError(
            "writing",
            path,
            f"entry {name!r} has dtype {dtype}, which a torch tensor cannot hold",
            "Write it to .npz or .npy, or select the numeric arrays with --only",
        )
    return row.torch


def _layout(arr: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], tuple[int, ...]]:
    """The array whose bytes make the storage (written in C order), and the tensor's strides in elements.

    As torch.save keeps a tensor's storage: dense memory in any axis order is written as it lies,
    with its strides (a Fortran array stays one), and a broadcast axis (stride 0) stays one row
    with stride 0. Anything else (gaps, negative strides) is written compactly with C strides.
    """
    repeated = [axis for axis in range(arr.ndim) if arr.strides[axis] == 0 and arr.shape[axis] > 1]
    base = arr[tuple(slice(0, 1) if axis in repeated else slice(None) for axis in range(arr.ndim))]
    strides = list(contiguous_strides(base.shape))
    if base.ndim > 1 and base.size > 1:
        order = sorted(range(base.ndim), key=lambda axis: -base.strides[axis])
        view = base.transpose(order)
        if view.flags.c_contiguous:
            for position, stride in zip(order, contiguous_strides(view.shape), strict=True):
                strides[position] = stride
            base = view
    for axis in repeated:
        strides[axis] = 0
    return base, tuple(strides)


def _view_key(arr: np.ndarray[Any, Any]) -> tuple[Any, ...] | None:
    """Arrays with equal keys, while the memory of the first is alive, are the same view of it."""
    if arr.size == 0:
        return None
    return (arr.__array_interface__["data"][0], arr.dtype, arr.shape, arr.strides)


class _Ties:
    """Which arrays already written are the same view of the same memory (tied weights).

    An address is only evidence while the memory it belonged to is alive: freed memory is handed
    out again, and a new array at an old address is new data. So each key keeps a weak reference
    to the object that owns the memory (the end of the ``.base`` chain: a memory map, a tensor's
    storage, an array), never a strong one, which would keep every entry in memory.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[Any, ...], tuple[weakref.ref[Any], _Tensor]] = {}

    def find(self, arr: np.ndarray[Any, Any]) -> _Tensor | None:
        key = _view_key(arr)
        hit = self._seen.get(key) if key is not None else None
        return hit[1] if hit is not None and hit[0]() is not None else None

    def add(self, arr: np.ndarray[Any, Any], tensor: _Tensor) -> None:
        key = _view_key(arr)
        owner: Any = arr
        while isinstance(owner, np.ndarray) and owner.base is not None:
            owner = owner.base
        if isinstance(owner, torch.Tensor):
            # Tensors over one storage come and go (each load may make one); the storage's Python
            # object lives exactly as long as the storage itself (torch preserves it).
            owner = owner.untyped_storage()
        try:
            ref = weakref.ref(owner)
        except TypeError:  # an owner that takes no weak reference (bytes): no ties through it
            return
        if key is not None:
            self._seen[key] = (ref, tensor)
