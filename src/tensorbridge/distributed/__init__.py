"""Sharded tensors across processes: DTensors to NumPy arrays and back, over ``torch.distributed``.

Imported only when a call asks for it (``to_numpy(shards="gather")``, ``to_tensor(mesh=...)``,
``save(shards="gather")``), so ``import tensorbridge`` never imports ``torch.distributed``.
Every exchange uses torch.distributed's own collectives and point-to-point sends on the default
process group; nothing here opens a connection of its own.

| module | what it does |
|---|---|
| ``placements.py`` | where each rank's shard lies in the global tensor (pure arithmetic) |
| ``comm.py`` | rank and world, buffers on the backend's device, failures and timeouts in words |
| ``agree.py`` | the ranks agree on what they hold before any data moves, or all raise alike |
| ``gather.py`` | DTensors to full tensors on one rank (point to point, leaf by leaf) or on all |
| ``scatter.py`` | arrays to DTensors: from one rank, or each rank slicing its own copy |
"""

from __future__ import annotations

from .gather import Gathering, gather_leaves, layout_words, unwrap
from .scatter import scatter_leaves

__all__ = ["Gathering", "gather_leaves", "layout_words", "scatter_leaves", "unwrap"]
