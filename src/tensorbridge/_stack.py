"""``stack``: one tensor from many same-shape arrays, without ``torch.tensor``'s Python loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .api import to_tensor
from .errors import StructureError, UnsupportedError
from .ops.alloc import host_empty

__all__ = ["stack"]

_Tensor = torch.Tensor


def stack(items: Sequence[Any], dtype: object = None, device: object = None, *, dim: int = 0) -> torch.Tensor:
    """Make one tensor from a sequence of same-shape arrays or tensors, fast.

    ``torch.tensor(list_of_arrays)`` walks every element in Python and takes seconds for
    data that this does in milliseconds: each item is viewed as a tensor without copying
    (see :func:`to_tensor`), then ``torch.stack`` copies them once into the result.

    Args:
        items: arrays, tensors or NumPy scalars of one shape and dtype (mixed kinds are fine).
        dtype: the result's dtype; needed when the items' dtypes differ. Checked like ``to_tensor``.
        device: where the result lives.
        dim: the new axis, as in ``torch.stack``.

    Raises:
        StructureError: (ValueError) no items, or items whose shapes or dtypes differ.

    Example:
        >>> import numpy as np, tensorbridge as tb
        >>> frames = [np.full((2, 2), i, dtype=np.float32) for i in range(3)]
        >>> tb.stack(frames).shape
        torch.Size([3, 2, 2])
    """
    items = list(items)
    if not items:
        raise StructureError(
            "stack",
            "data",
            "there are no items, so the shape is unknown",
            "Use torch.empty((0, *shape)) for an empty batch",
        )
    # One walk over the list: plain writable arrays take the fast path, as in to_tensor.
    tensors = to_tensor(items) if dtype is None else to_tensor(items, dtype)
    if not all(isinstance(t, _Tensor) for t in tensors) or len({t.dtype for t in tensors}) > 1:
        _stack_mismatch(items, tensors)
    first = tensors[0]
    if not -(first.dim() + 1) <= dim <= first.dim():
        raise StructureError(
            "stack", "dim", f"dim={dim} is out of range for items of shape {tuple(first.shape)}", "Pass a valid axis"
        )
    shape = list(first.shape)
    shape.insert(dim % (first.dim() + 1), len(tensors))
    # Large results go to huge-page host memory (see ops/alloc.py).
    out = host_empty(tuple(shape), first.dtype) if first.device.type == "cpu" else None
    try:
        out = torch.stack(tensors, dim=dim, out=out)
    except RuntimeError:
        _stack_mismatch(items, tensors)
        raise
    return out if device is None else to_tensor(out, device=device)


def _stack_mismatch(items: list[Any], tensors: list[Any]) -> None:
    """Raise for the first item that is not a tensor of the first item's shape and dtype."""
    first = tensors[0]
    for i, t in enumerate(tensors):
        if not isinstance(t, _Tensor):
            raise UnsupportedError(
                "stack",
                f"data[{i}]",
                f"{type(items[i]).__name__} is not an array or tensor",
                "Pass NumPy arrays, NumPy scalars or tensors",
            )
        if t.shape != first.shape:
            raise StructureError(
                "stack",
                f"data[{i}]",
                f"shape {tuple(t.shape)} differs from data[0]'s shape {tuple(first.shape)}",
                "Pad or resize the items to one shape, or use tb.nested_tensor for ragged items",
            )
        if t.dtype != first.dtype:
            raise StructureError(
                "stack",
                f"data[{i}]",
                f"dtype {str(t.dtype).removeprefix('torch.')} differs from data[0]'s "
                f"{str(first.dtype).removeprefix('torch.')}",
                "Pass dtype= to cast them all (checked), e.g. dtype=torch.float32",
            )
