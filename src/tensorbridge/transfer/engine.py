"""The transfer engine: carries out the host <-> device routes the planner chose.

Every copy is a *job*: bytes that go through one pinned staging buffer, one copy over the
link. A large leaf is one job per chunk; a packed group of small leaves is one job. Jobs run
through a ring of pinned buffers borrowed from the pool (``pinned.py``):

- host to device: host threads fill buffer k (a plain memcpy for dense memory, a strided
  gather for anything else) while buffers k-1, k-2... are on the wire; a buffer is refilled
  only after the event of its last copy has completed.
- device to host: the copy into buffer k is queued while host threads drain buffers k-1,
  k-2... into the new host array, each thread waiting for its buffer's event first.

A packed group is laid out by the planner (``pack_layout``: one run of back-to-back leaves per
wire dtype) and packed one *run* at a time, never leaf by leaf: per-leaf Python calls cost
more than the copies of small leaves. On the sending side one ``torch.stack`` (leaves of one
shape) or one flatten (mixed shapes) per run of one dtype writes the run's bytes into place:
into the pinned buffer on the host for uploads, into one device buffer for downloads, where it
also gathers strided or lazily conjugated leaves. On the receiving side ``unbind``/``split``
cut each run into per-leaf views of the group's one allocation.

All copies run on the current stream of the device, so later work on that stream sees the
data without any synchronization. Buffers go back to the pool with the event of their last
copy, so a ``non_blocking=True`` upload can return while its last chunks are on the wire.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import torch

from ..plan.routes import Transfer, wire_dtype
from . import inflight as _inflight
from .config import TransferConfig, current
from .devices import Backend, Event, backend_for
from .inflight import deferred_wait, finish
from .packing import Run as _Run
from .packing import layout as _layout
from .packing import pack as _pack
from .packing import unpack as _unpack
from .staging import Ring as _Ring
from .staging import as_c_bytes as _as_c_bytes
from .staging import host_bits as _host_bits
from .staging import inverse as _inverse
from .staging import memory_order as _memory_order
from .staging import piece as _piece
from .staging import pieces_of as _blocks
from .staging import resolved as _resolved
from .staging import submit as _submit

__all__ = ["deferred_wait", "finish", "move"]

# How often a thread waiting for a staging buffer looks at fills that may have finished.
_POLL_S: Final = 50e-6


@dataclass
class _Job:
    """One trip through a staging buffer.

    ``host`` lists (offset in the staging buffer, host array): the arrays to gather from
    (host to device) or the flat byte arrays to scatter into (device to host), in order.
    ``runs`` (host to device, a packed group): the group's runs, packed into the staging
    buffer at their offsets. ``dev`` is the device byte range on the other side of the copy.
    """

    nbytes: int
    dev: torch.Tensor
    host: list[tuple[int, np.ndarray[Any, Any]]] = field(default_factory=list)
    runs: list[_Run] = field(default_factory=list)


# --- host to device ---------------------------------------------------------------------------


def _upload_jobs(
    items: Sequence[tuple[torch.Tensor, Transfer]], backend: Backend, cfg: TransferConfig
) -> tuple[list[_Job], list[torch.Tensor]]:
    """Allocate the device results and cut the copies into jobs (staged leaves first, then groups)."""
    jobs: list[_Job] = []
    results: list[torch.Tensor] = []
    groups: dict[int, list[int]] = {}
    slots: list[torch.Tensor | None] = [None] * len(items)
    for n, (t, tr) in enumerate(items):
        if tr.route == "packed":
            groups.setdefault(tr.group, []).append(n)
            continue
        order = _memory_order(t)
        src = _host_bits(t if order is None else t.permute(order))
        dev = backend.empty(src.nbytes, tr.device)
        if order is None:
            slots[n] = dev.view(t.dtype).view(t.shape)
        else:
            slots[n] = dev.view(t.dtype).view([t.shape[i] for i in order]).permute(_inverse(order))
        start, size = 0, 0
        blocks: list[tuple[int, np.ndarray[Any, Any]]] = []
        for block in _blocks(src, cfg.chunk_bytes):
            if size + block.nbytes > cfg.chunk_bytes and blocks:
                jobs.append(_Job(size, dev[start : start + size], blocks))
                start, blocks, size = start + size, [], 0
            blocks.append((size, block))
            size += block.nbytes
        if blocks:
            jobs.append(_Job(size, dev[start : start + size], blocks))
    for members in groups.values():
        total, runs = _layout(items, members)
        dev = backend.empty(total, items[members[0]][1].device)
        jobs.append(_Job(total, dev, runs=runs))
        for run in runs:  # the results: views of the group's device allocation
            _unpack(dev, run, slots)
    for s in slots:
        assert s is not None
        results.append(s)
    return jobs, results


def _fill_tasks(
    job: _Job, staging: np.ndarray[Any, Any], pinned: torch.Tensor, cfg: TransferConfig
) -> list[Callable[[], None]]:
    """The host copies that fill ``staging`` (``pinned`` as a tensor) for ``job``, in pieces for the host threads."""
    piece = _piece(cfg)
    tasks: list[Callable[[], None]] = []
    batch: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = []
    size = 0
    for off, src in job.host:
        for part_off, part in _pieces(off, src, piece):
            batch.append((_as_c_bytes(staging, part_off, part), part))
            size += part.nbytes
            if size >= piece:
                tasks.append(_copier(batch))
                batch, size = [], 0
    if batch:
        tasks.append(_copier(batch))
    if job.nbytes <= piece or cfg.threads == 1:
        tasks.extend(_packer(pinned, run) for run in job.runs)
        return tasks
    for run in job.runs:
        # A large run is packed by several host threads, consecutive leaves up to a piece each.
        start, end, first = run.offset, run.offset, 0
        for k, t in enumerate(run.leaves):
            size = t.numel() * t.element_size()
            if k > first and end - start + size > piece:
                tasks.append(_packer(pinned, _part(run, start, end, first, k)))
                start, first = end, k
            end += size
        tasks.append(_packer(pinned, _part(run, start, end, first, len(run.leaves))))
    return tasks


def _part(run: _Run, start: int, end: int, first: int, stop: int) -> _Run:
    return _Run(start, end - start, run.dtype, run.leaves[first:stop], run.shape, run.slots[first:stop])


def _packer(dst: torch.Tensor, run: _Run) -> Callable[[], None]:
    def task() -> None:
        _pack(dst, run)

    return task


def _pieces(off: int, src: np.ndarray[Any, Any], piece: int) -> Iterator[tuple[int, np.ndarray[Any, Any]]]:
    if src.nbytes <= piece:
        yield off, src
        return
    for block in _blocks(src, piece):
        yield off, block
        off += block.nbytes


def _copier(pairs: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]) -> Callable[[], None]:
    def run() -> None:
        for dst, src in pairs:
            np.copyto(dst, src, casting="no")  # NumPy drops the GIL for the copy

    return run


def _run_uploads(jobs: list[_Job], backend: Backend, device: torch.device, cfg: TransferConfig) -> None:
    ring = _Ring(backend, len(jobs), cfg)
    width = len(ring.bufs)
    pending: deque[int] = deque()  # jobs being filled, not yet on the wire, in order

    def issue(j: int) -> None:
        slot = j % width
        ring.wait_work(slot)
        job = jobs[j]
        backend.copy(job.dev, ring.bufs[slot][: job.nbytes])
        ring.events[slot] = backend.record(device)

    try:
        for j, job in enumerate(jobs):
            slot = j % width
            while pending and (pending[0] <= j - width or all(f.done() for f in ring.work[pending[0] % width])):
                issue(pending.popleft())
            event = ring.events[slot]
            while event is not None and not event.query():
                # Waiting for the buffer's last copy to leave it: meanwhile, put fills that
                # finish on the wire at once, so the copy engine never waits on this thread.
                ready = ring.work[pending[0] % width] if pending else []
                if pending and all(f.done() for f in ready):
                    issue(pending.popleft())
                elif ready:
                    wait_futures(ready, timeout=_POLL_S)
                else:
                    event.synchronize()  # the buffer's last copy has left it
                    break
            tasks = _fill_tasks(job, ring.views[slot], ring.bufs[slot], cfg)
            ring.work[slot] = _submit(tasks, job.nbytes, cfg, backend, device)
            pending.append(j)
        while pending:
            issue(pending.popleft())
    finally:
        ring.close()


# --- device to host ---------------------------------------------------------------------------


def _host_bytes(nbytes: int) -> np.ndarray[Any, Any]:
    # NumPy's allocator asks for huge pages on large buffers (see alloc.py).
    return np.empty(nbytes, np.uint8)


def _download_jobs(
    items: Sequence[tuple[torch.Tensor, Transfer]], backend: Backend, cfg: TransferConfig
) -> tuple[list[_Job], list[torch.Tensor]]:
    jobs: list[_Job] = []
    slots: list[torch.Tensor | None] = [None] * len(items)
    groups: dict[int, list[int]] = {}
    for n, (t, tr) in enumerate(items):
        if tr.route == "packed":
            groups.setdefault(tr.group, []).append(n)
            continue
        t = _resolved(t)
        order = _memory_order(t)
        if order is None:
            # Gathered on the device as same-size integers: every device has those kernels.
            t = t.view(wire_dtype(t.dtype)).contiguous().view(t.dtype)
            order = list(range(t.dim()))
        flat = t.detach().permute(order).reshape(-1).view(torch.uint8)
        host = _host_bytes(flat.numel())
        shape = [t.shape[i] for i in order]
        slots[n] = torch.from_numpy(host).view(t.dtype).view(shape).permute(_inverse(order))
        for start in range(0, host.size, cfg.chunk_bytes):
            chunk = host[start : start + cfg.chunk_bytes]
            jobs.append(_Job(chunk.size, flat[start : start + chunk.size], [(0, chunk)]))
    for members in groups.values():
        total, runs = _layout(items, members)
        dev = backend.empty(total, items[members[0]][1].source)
        for run in runs:  # packed on the device, one kernel per run
            _pack(dev, run)
        host = _host_bytes(total)
        jobs.append(_Job(total, dev, [(0, host)]))
        whole = torch.from_numpy(host)
        for run in runs:  # the results: views of the group's host allocation
            _unpack(whole, run, slots)
    results = [s for s in slots if s is not None]
    assert len(results) == len(items)
    return jobs, results


def _drain_tasks(
    job: _Job, staging: np.ndarray[Any, Any], event: Event, cfg: TransferConfig
) -> list[Callable[[], None]]:
    piece = _piece(cfg)
    tasks: list[Callable[[], None]] = []
    for off, dst in job.host:
        for start in range(0, dst.size, piece):
            part = dst[start : start + piece]
            tasks.append(_drainer(event, part, staging[off + start : off + start + part.size]))
    return tasks


def _drainer(event: Event, dst: np.ndarray[Any, Any], src: np.ndarray[Any, Any]) -> Callable[[], None]:
    def run() -> None:
        event.synchronize()  # the bytes are in the staging buffer only once the copy is done
        np.copyto(dst, src, casting="no")

    return run


def _run_downloads(jobs: list[_Job], backend: Backend, device: torch.device, cfg: TransferConfig) -> None:
    ring = _Ring(backend, len(jobs), cfg)
    width = len(ring.bufs)
    try:
        for j, job in enumerate(jobs):
            slot = j % width
            ring.wait_work(slot)  # the buffer's bytes have been copied out
            backend.copy(ring.bufs[slot][: job.nbytes], job.dev)
            event = backend.record(device)
            ring.events[slot] = event
            tasks = _drain_tasks(job, ring.views[slot], event, cfg)
            ring.work[slot] = _submit(tasks, job.nbytes, cfg, backend, device)
        for slot in range(width):
            ring.wait_work(slot)
    finally:
        ring.close()


# --- the entry point --------------------------------------------------------------------------


def move(items: Sequence[tuple[torch.Tensor, Transfer]], non_blocking: bool | None) -> list[torch.Tensor]:
    """Carry out the planned transfers of one call; results in the items' order.

    Args:
        items: (tensor, its planned transfer). Host tensors for host-to-device, device
            tensors for device-to-host and device-to-device.
        non_blocking: ``None`` and ``False``: every copy has finished when this returns (with
            ``False`` each direct copy also blocks as it goes, staged and packed ones are
            waited for together), unless :func:`deferred_wait` hands that last wait to the
            caller; ``True``: host-to-device copies may still be on the wire when this returns
            (ordered on the device's current stream; their sources are kept alive until they
            have finished). Device-to-host results are always complete on return.
    """
    cfg = current()
    _inflight.prune()
    results: list[torch.Tensor | None] = [None] * len(items)
    batches: dict[int, list[int]] = {}  # by lane: one direction, source and target each
    for n, (_, tr) in enumerate(items):
        batches.setdefault(tr.lane, []).append(n)
    for members in batches.values():
        first = items[members[0]][1]
        direction = first.direction
        device = first.source if direction == "d2h" else first.device
        backend = backend_for(device.type)
        staged = [n for n in members if items[n][1].route in ("staged", "packed")]  # through the engine
        # With nothing staged, None's guarantee (every copy done on return) is each direct copy
        # blocking as it goes: no event to record and wait for at the end.
        blocking = direction == "d2h" or non_blocking is False or (non_blocking is None and not staged)
        sources: list[torch.Tensor] = []
        for n in members:
            t, tr = items[n]
            if tr.route != "staged" and tr.route != "packed":
                results[n] = _direct(t, tr, backend, non_blocking=not blocking)
                sources.append(t)
        if staged:
            assert backend is not None
            sub = [items[n] for n in staged]
            if direction == "h2d":
                jobs, outs = _upload_jobs(sub, backend, cfg)
                _run_uploads(jobs, backend, device, cfg)
            else:
                jobs, outs = _download_jobs(sub, backend, cfg)
                _run_downloads(jobs, backend, device, cfg)
            for n, out in zip(staged, outs, strict=True):
                results[n] = out
        if backend is None or not backend.staging or direction == "d2h":
            continue
        if non_blocking is True:
            if sources:  # copies that may still read them: torch's allocator protects only its own blocks
                _inflight.hold(backend.record(device), sources)
        elif not _inflight.deferred() and (staged or not blocking):
            backend.record(device).synchronize()
    done = [r for r in results if r is not None]
    assert len(done) == len(items)
    return done


def _direct(t: torch.Tensor, tr: Transfer, backend: Backend | None, *, non_blocking: bool) -> torch.Tensor:
    if t.requires_grad:
        t = t.detach()  # a copy is new data, not a step in the caller's graph
    if backend is None:
        return t.to(tr.device, non_blocking=non_blocking)
    return backend.move(t, tr.device, non_blocking)
