"""``stack``: one tensor from many same-shape arrays, without ``torch.tensor``'s Python loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .api import to_tensor
from .batch.columns import fill, plan
from .errors import StructureError
from .options import tensor_options
from .tree import ROOT

__all__ = ["stack"]


def stack(items: Sequence[Any], dtype: object = None, device: object = None, *, dim: int = 0) -> torch.Tensor:
    """Make one tensor from a sequence of same-shape arrays or tensors, fast.

    ``torch.tensor(list_of_arrays)`` walks every element in Python and takes seconds for
    data that this does in milliseconds: each item is copied once, straight into the result
    (as :func:`collate` stacks each leaf position).

    Args:
        items: arrays, tensors, NumPy scalars or Python numbers of one shape and dtype (mixed
            arrays and tensors are fine).
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
    # The column code of tb.collate: one copy into the result, the same checks and messages.
    col = plan(items, ROOT, tensor_options(dtype=dtype), "data", text=False, what="stack")
    ndim = len(col.shape) - 1
    if not -(ndim + 1) <= dim <= ndim:
        raise StructureError(
            "stack", "dim", f"dim={dim} is out of range for items of shape {col.shape[1:]}", "Pass a valid axis"
        )
    out: torch.Tensor = fill(col, None)
    if dim % (ndim + 1):
        out = out.movedim(0, dim % (ndim + 1)).contiguous()
    return out if device is None else to_tensor(out, device=device)
