"""tb.collate in real DataLoader worker processes (spawned): the same batches as in the main
process, every container type kept, and each batch built in one shared-memory segment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import tensorbridge as tb

from .collate_samples import Meta, Sample, Samples

ROOT = Path(__file__).resolve().parents[1]


def tensor_leaves(batch: Any) -> list[torch.Tensor]:
    return [leaf for _, leaf in tb.tree.iter_leaves(batch, lambda x: isinstance(x, torch.Tensor))]


def assert_same_batch(got: Sample, want: Sample) -> None:
    assert type(got) is Sample and type(got.meta) is Meta and type(got.tags) is tuple
    assert type(got.meta.name) is list and got.meta.name == want.meta.name
    got_leaves, want_leaves = tensor_leaves(got), tensor_leaves(want)
    assert len(got_leaves) == len(want_leaves) == 8
    for g, w in zip(got_leaves, want_leaves, strict=True):
        assert g.dtype is w.dtype and g.shape == w.shape
        assert torch.equal(g.view(torch.uint8), w.view(torch.uint8))  # bit for bit


def test_spawned_workers_collate_the_main_process_batches_in_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    # Spawned workers unpickle the dataset by module name (tests.collate_samples): they need the
    # repository root on sys.path, which `pytest` (unlike `python -m pytest`) does not put there.
    monkeypatch.syspath_prepend(str(ROOT))
    data = Samples(10)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=4,
        num_workers=2,
        multiprocessing_context="spawn",
        collate_fn=tb.Collate(),
        timeout=60,
        persistent_workers=False,
    )
    batches = list(loader)
    assert [len(b.meta.index) for b in batches] == [4, 4, 2]
    for n, batch in enumerate(batches):
        indices = list(range(4 * n, min(4 * n + 4, len(data))))
        want = tb.collate([data[i] for i in indices])  # in the main process
        assert batch.meta.index.tolist() == indices and batch.meta.index.dtype is torch.int64
        assert batch.image.dtype is torch.float32 and batch.scale.dtype is torch.bfloat16
        assert batch.depth.dtype is torch.int64 and batch.mask.dtype is torch.bool
        assert_same_batch(batch, want)
        leaves = tensor_leaves(batch)
        # Built in shared memory in the worker, so it crossed over without a copy ...
        assert all(t.is_shared() for t in leaves)
        # ... as one segment: every leaf is a view of one storage.
        assert len({t.untyped_storage().data_ptr() for t in leaves}) == 1
        # The main process's own batch is private memory, one allocation per leaf.
        assert not any(t.is_shared() for t in tensor_leaves(want))
