"""Where a batch's memory comes from: fresh host memory, shared memory, or one pinned slab.

In the main process each leaf gets its own fresh memory (huge pages for large ones, see
``ops/alloc.py``), so keeping one leaf does not keep the batch. In a DataLoader worker the
batch is built in shared memory, as ``default_collate`` builds it, so the main process copies
nothing; here every CPU leaf is a view of *one* shared segment, so a batch crosses the process
boundary as one file descriptor instead of one per leaf. With ``pin_memory`` the batch is one
page-locked allocation (from torch's caching host allocator), ready for asynchronous copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

import torch

from ..errors import DeviceError
from ..plan.core import contiguous_strides
from ..transfer.devices import backend_for
from .columns import Column

__all__ = ["ALIGN", "Placement", "allocate", "in_worker"]

Placement = Literal["fresh", "shared", "pinned"]
#: Every leaf of a slab starts on a cache line (and on every dtype's alignment).
ALIGN: Final = 64


def in_worker() -> bool:
    """Whether this is a DataLoader worker process (``torch.utils.data.get_worker_info``)."""
    return torch.utils.data.get_worker_info() is not None


def allocate(columns: Sequence[Column], placement: Placement) -> list[torch.Tensor | None]:
    """The result of each column (None: the column makes its own, fresh)."""
    outs: list[torch.Tensor | None] = [None] * len(columns)
    if placement == "fresh":
        return outs
    offsets: list[tuple[int, int]] = []
    total = 0
    for n, col in enumerate(columns):
        if col.kind != "list" and col.device.type == "cpu":
            offsets.append((n, total))
            total += -(-col.nbytes // ALIGN) * ALIGN
    if not offsets:
        return outs
    storage = _slab(max(total, 1), placement)
    for n, off in offsets:
        col = columns[n]
        itemsize = col.target.itemsize
        outs[n] = torch.empty(0, dtype=col.target).set_(
            storage, off // itemsize, col.shape, contiguous_strides(col.shape)
        )
    return outs


def _slab(nbytes: int, placement: Placement) -> torch.UntypedStorage:
    if placement == "shared":
        new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
        if new_shared is not None:  # what default_collate uses: no copy of uninitialized bytes
            storage: torch.UntypedStorage = new_shared(nbytes)
            return storage
        shared: torch.Tensor = torch.empty(nbytes, dtype=torch.uint8).share_memory_()  # type: ignore[no-untyped-call]  # untyped in torch
        return shared.untyped_storage()
    backend = backend_for("cuda")
    if backend is None or not backend.available():
        raise DeviceError(
            "collate",
            "pin_memory",
            f"pin_memory=True needs CUDA, which is not available (torch {torch.__version__})",
            "Pass pin_memory=False; tb.prefetch(loader, device) stages batches through pinned buffers itself",
        )
    return backend.empty_pinned(nbytes).untyped_storage()
