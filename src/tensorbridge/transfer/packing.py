"""Packed groups: many small leaves in one allocation, one kernel per run of one dtype.

One packer serves both directions. On the way to a device each run is packed into the pinned
staging buffer with one ``torch.stack`` (one shape) or one flatten, and cut back into views of
the device allocation with one ``unbind``/``split``; on the way back each run is packed on the
device, copied once, and cut into views of one host allocation. Offsets are those of
:func:`~tensorbridge.plan.routes.pack_layout`, so ``explain()`` describes what happens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import torch

from ..plan.routes import Transfer, pack_layout, wire_dtype
from .staging import resolved as _resolved

__all__ = ["Run", "layout", "pack", "unpack"]


@dataclass
class Run:
    """Leaves of one dtype that sit back to back in a packed group: ``nbytes`` at ``offset``.

    ``shape`` is the leaves' one shape, or None when their shapes differ.
    """

    offset: int
    nbytes: int
    dtype: torch.dtype
    leaves: list[torch.Tensor]
    shape: torch.Size | None
    slots: list[int]


# dtypes whose cat/stack kernels exist on every device; others are packed as integer bits.
_CAT_DTYPES: Final = frozenset(
    {
        torch.bool,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.complex64,
        torch.complex128,
    }
)


# torch's flatten (the one DDP uses): ``contiguous().view(-1)`` per leaf and one cat, all in C++.
_flatten: Final[Callable[[list[torch.Tensor]], torch.Tensor]] = torch._utils._flatten_dense_tensors


def layout(items: Sequence[tuple[torch.Tensor, Transfer]], members: list[int]) -> tuple[int, list[Run]]:
    """One packed group's size and its runs: :func:`pack_layout` over the planned copies.

    A run is a stretch of consecutive leaves of one wire run (see ``pack_layout``) that also
    share their exact dtype, so one kernel packs it and one call cuts it into views.
    """
    offsets, total = pack_layout([(items[n][1].dtype, items[n][1].nbytes) for n in members])
    runs: list[Run] = []
    last: dict[torch.dtype, Run] = {}  # wire dtype -> its run being extended
    for off, n in zip(offsets, members, strict=True):
        t, tr = items[n]
        run = last.get(tr.dtype)
        if run is None or t.dtype != run.dtype:
            run = last[tr.dtype] = Run(off, 0, t.dtype, [], t.shape, [])
            runs.append(run)
        elif run.shape is not None and t.shape != run.shape:
            run.shape = None
        run.leaves.append(t)
        run.slots.append(n)
        run.nbytes += tr.nbytes
    return total, runs


def pack(dst: torch.Tensor, run: Run) -> None:
    """Write ``run``'s leaves back to back into ``dst`` (bytes) at its offset, in one kernel.

    The kernel gathers strided leaves and applies lazy conjugate/negative bits. ``dst`` is the
    pinned staging buffer (host to device) or the group's device buffer (device to host).
    """
    leaves = run.leaves
    dtype = run.dtype
    if dtype not in _CAT_DTYPES:  # as same-size integers: every device has those kernels
        dtype = wire_dtype(dtype)
        leaves = [_resolved(t).view(dtype) for t in leaves]
    typed = dst[run.offset : run.offset + run.nbytes].view(dtype)
    with torch.no_grad():  # thread-local: packing may run on a host thread
        if run.shape is not None:
            torch.stack(leaves, out=typed.view(len(leaves), *run.shape))
            return
        flat = _flatten(leaves)
        if flat.numel() != typed.numel():
            raise AssertionError(f"a packed run of {typed.numel()} elements got {flat.numel()}")
        typed.copy_(flat)


def unpack(whole: torch.Tensor, run: Run, slots: list[torch.Tensor | None]) -> None:
    """Cut ``run`` out of ``whole`` (the group's bytes) into one view per leaf, in its slots."""
    typed = whole[run.offset : run.offset + run.nbytes].view(run.dtype)
    views: Sequence[torch.Tensor]
    if run.shape is not None:
        views = typed.view(len(run.leaves), *run.shape).unbind(0)
    else:
        parts = torch.split(typed, [t.numel() for t in run.leaves])
        views = [p if t.dim() == 1 else p.view(t.shape) for p, t in zip(parts, run.leaves, strict=True)]
    for n, v in zip(run.slots, views, strict=True):
        slots[n] = v
