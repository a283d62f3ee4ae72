"""Fresh host memory for copies.

Large host buffers are allocated through NumPy, not torch's CPU allocator: NumPy asks the
kernel for transparent huge pages on big allocations, torch does not, and on machines where
huge pages are opt-in (``madvise``) a fresh torch buffer spends more time in page faults on
first write than the copy itself takes (measured in ``benchmarks/bench_core.py``).
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import torch

from ..dtypes import row_for_torch
from ..plan.core import may_overlap

__all__ = ["host_copy", "host_empty"]


# NumPy asks for huge pages from 4 MiB up; below that both allocators behave the same.
HUGE_PAGE_MIN_BYTES: Final = 4 << 20


def host_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Return an uninitialized C-contiguous CPU tensor; large ones get memory NumPy allocated."""
    row = row_for_torch(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if row is None or not row.exact or nbytes < HUGE_PAGE_MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    if row.carrier is None:
        return torch.from_numpy(np.empty(shape, row.numpy))
    return torch.from_numpy(np.empty(shape, row.carrier)).view(dtype)


def host_copy(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Copy (and cast, unchecked) a CPU tensor into fresh memory; C order unless strides are kept free."""
    dtype = t.dtype if dtype is None else dtype
    if not t.is_contiguous() and not may_overlap(tuple(t.shape), t.stride(), 1):
        # Keep the input's layout (a transposed view stays transposed), as torch's clone does;
        # overlapping layouts (an expand) get C order, where torch would sort the zero strides first.
        return t.to(dtype, copy=True) if dtype != t.dtype else t.clone()
    out = host_empty(tuple(t.shape), dtype)
    out.copy_(t)
    return out
