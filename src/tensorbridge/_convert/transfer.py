"""The transfer engine: carries out the host <-> device routes the planner chose.

Every copy is a *job*: bytes that go through one pinned staging buffer, one copy over the
link. A large leaf is one job per chunk; a packed group of small leaves is one job. Jobs run
through a ring of pinned buffers borrowed from the pool (``pinned.py``):

- host to device: host threads fill buffer k (a plain memcpy for dense memory, a strided
  gather for anything else) while buffers k-1, k-2... are on the wire; a buffer is refilled
  only after the event of its last copy has completed.
- device to host: the copy into buffer k is queued while host threads drain buffers k-1,
  k-2... into the new host array, each thread waiting for its buffer's event first.

All copies run on the current stream of the device, so later work on that stream sees the
data without any synchronization. Buffers go back to the pool with the event of their last
copy, so a ``non_blocking=True`` upload can return while its last chunks are on the wire.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import torch

from ..config import TransferConfig, current
from ..devices import Backend, Event, backend_for
from ..plan.transfer import Transfer, pack_groups, pack_layout, wire_dtype
from .blocks import blocks
from .pinned import POOL

__all__ = ["download_packed", "move", "upload_packed"]

# Fills and drains smaller than this (or than half a chunk) run on the calling thread: a
# thread hop costs more than copying them.
_INLINE_BYTES: Final = 1 << 20
# A job's host copy is split into one piece per host thread, each at least this size.
_MIN_PIECE: Final = 4096
# How often a thread waiting for a staging buffer looks at fills that may have finished.
_POLL_S: Final = 50e-6


@dataclass
class _Job:
    """One trip through a staging buffer.

    ``host`` lists (offset in the staging buffer, host array): the arrays to gather from
    (host to device) or the flat byte arrays to scatter into (device to host), in order.
    ``dev`` is the device byte range on the other side of the copy.
    """

    nbytes: int
    dev: torch.Tensor
    host: list[tuple[int, np.ndarray[Any, Any]]] = field(default_factory=list)
    # Host to device only: runs of flat byte arrays gathered back to back at an offset.
    runs: list[tuple[int, list[np.ndarray[Any, Any]]]] = field(default_factory=list)


# --- the shared thread pool -------------------------------------------------------------------

_executor: ThreadPoolExecutor | None = None
_executor_threads = 0
_executor_lock = threading.Lock()


def _threads(cfg: TransferConfig) -> ThreadPoolExecutor:
    global _executor, _executor_threads
    with _executor_lock:
        if _executor is None or _executor_threads != cfg.threads:
            if _executor is not None:
                _executor.shutdown(wait=False)  # its queued work still runs; new work goes to the new pool
            _executor = ThreadPoolExecutor(cfg.threads, thread_name_prefix="tensorbridge-copy")
            _executor_threads = cfg.threads
        return _executor


# --- host-side views --------------------------------------------------------------------------


def _host_bits(t: torch.Tensor) -> np.ndarray[Any, Any]:
    """A NumPy view of a host tensor's bits, as same-size integers (complex128 as itself)."""
    bits: np.ndarray[Any, Any] = _resolved(t).view(wire_dtype(t.dtype)).numpy()
    return bits


def _resolved(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached, with lazy conjugate/negative bits applied (torch keeps them across ``.to()``)."""
    return t.detach().resolve_conj().resolve_neg()


def _memory_order(t: torch.Tensor) -> list[int] | None:
    """The axis order that makes ``t`` C-contiguous, if it is dense with positive strides; else None."""
    if t.is_contiguous():
        return list(range(t.dim()))
    strides = t.stride()
    order = sorted(range(t.dim()), key=lambda i: (-strides[i], -t.shape[i]))
    return order if t.permute(order).is_contiguous() else None


def _inverse(order: list[int]) -> list[int]:
    inv = [0] * len(order)
    for i, axis in enumerate(order):
        inv[axis] = i
    return inv


def _blocks(a: np.ndarray[Any, Any], limit: int) -> Iterator[np.ndarray[Any, Any]]:
    """Views of ``a`` that together cover it in C order, each at most ``limit`` bytes (or one element)."""
    if a.flags.c_contiguous:  # dense memory: plain byte ranges, cut anywhere
        flat = a.reshape(-1).view(np.uint8)
        for start in range(0, flat.size, limit):
            yield flat[start : start + limit]
    else:
        yield from blocks(a, limit)


def _as_c_bytes(buf: np.ndarray[Any, Any], off: int, like: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The C-ordered region of ``buf`` (uint8) at ``off`` shaped and typed like ``like``."""
    region: np.ndarray[Any, Any] = buf[off : off + like.nbytes].view(like.dtype).reshape(like.shape)
    return region


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
        hosts = [_host_bits(items[n][0]) for n in members]
        offsets, total = pack_layout(
            [(wire_dtype(items[n][0].dtype), h.nbytes) for n, h in zip(members, hosts, strict=True)]
        )
        dev = backend.empty(total, items[members[0]][1].device)
        jobs.append(_Job(total, dev, list(zip(offsets, hosts, strict=True))))
        for n, off, h in zip(members, offsets, hosts, strict=True):
            t = items[n][0]
            slots[n] = dev[off : off + h.nbytes].view(t.dtype).view(t.shape)
    for s in slots:
        assert s is not None
        results.append(s)
    return jobs, results


def _fill_tasks(job: _Job, staging: np.ndarray[Any, Any], cfg: TransferConfig) -> list[Callable[[], None]]:
    """The host copies that fill ``staging`` for ``job``, in pieces for the host threads."""
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
    for off, parts in job.runs:
        # Consecutive parts are gathered by one host thread, up to a piece's worth each.
        start, end = off, off
        group: list[np.ndarray[Any, Any]] = []
        for part in parts:
            if group and end - start + part.size > piece:
                tasks.append(_gatherer(staging[start:end], group))
                start, group = end, []
            group.append(part)
            end += part.size
        if group:
            tasks.append(_gatherer(staging[start:end], group))
    return tasks


def _gatherer(dst: np.ndarray[Any, Any], parts: list[np.ndarray[Any, Any]]) -> Callable[[], None]:
    def run() -> None:
        np.concatenate(parts, out=dst)

    return run


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


class _Ring:
    """The pinned buffers one transfer borrowed, with each one's pending work."""

    def __init__(self, backend: Backend, jobs: int, cfg: TransferConfig) -> None:
        self.bufs = POOL.borrow(backend, min(cfg.ring, jobs), cfg)
        self.views = [b.numpy() for b in self.bufs]
        self.events: list[Event | None] = [None] * len(self.bufs)
        self.work: list[list[Future[None]]] = [[] for _ in self.bufs]

    def wait_work(self, slot: int) -> None:
        try:
            for f in self.work[slot]:
                f.result()
        finally:
            self.work[slot] = []

    def close(self) -> None:
        """Give the buffers back, after every host copy that touches them has finished."""
        for slot in range(len(self.bufs)):
            for f in self.work[slot]:
                f.exception()  # waits; a failure was already raised to the caller, or will be
            POOL.give_back(self.bufs[slot], self.events[slot])


def _piece(cfg: TransferConfig) -> int:
    return max(_MIN_PIECE, cfg.chunk_bytes // cfg.threads)


def _submit(tasks: list[Callable[[], None]], nbytes: int, cfg: TransferConfig) -> list[Future[None]]:
    if nbytes < min(_INLINE_BYTES, cfg.chunk_bytes // 2) or cfg.threads == 1:
        for task in tasks:
            task()
        return []
    pool = _threads(cfg)
    return [pool.submit(task) for task in tasks]


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
            ring.work[slot] = _submit(_fill_tasks(job, ring.views[slot], cfg), job.nbytes, cfg)
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
        tensors = [_resolved(items[n][0]) for n in members]
        wires = [wire_dtype(t.dtype) for t in tensors]
        offsets, total = pack_layout([(w, t.numel() * t.element_size()) for w, t in zip(wires, tensors, strict=True)])
        dev = backend.empty(total, items[members[0]][1].source)
        runs: dict[torch.dtype, list[int]] = {}
        for k, w in enumerate(wires):
            runs.setdefault(w, []).append(k)
        for w, ks in runs.items():
            start = offsets[ks[0]]
            end = offsets[ks[-1]] + tensors[ks[-1]].numel() * tensors[ks[-1]].element_size()
            # One kernel packs every leaf of one element size, as integers of that size.
            torch.cat([tensors[k].view(w).reshape(-1) for k in ks], out=dev[start:end].view(w))
        host = _host_bytes(total)
        jobs.append(_Job(total, dev, [(0, host)]))
        for k, n in enumerate(members):
            t = tensors[k]
            nbytes = t.numel() * t.element_size()
            slots[n] = torch.from_numpy(host[offsets[k] : offsets[k] + nbytes]).view(t.dtype).view(t.shape)
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
            ring.work[slot] = _submit(_drain_tasks(job, ring.views[slot], event, cfg), job.nbytes, cfg)
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
            waited for together); ``True``: host-to-device copies may still be on the wire when
            this returns (ordered on the device's current stream). Device-to-host results are
            always complete on return.
    """
    cfg = current()
    results: list[torch.Tensor | None] = [None] * len(items)
    batches: dict[tuple[str, torch.device], list[int]] = {}
    for n, (_, tr) in enumerate(items):
        batches.setdefault((tr.direction, tr.device if tr.direction != "d2h" else tr.source), []).append(n)
    for (direction, device), members in batches.items():
        backend = backend_for(device.type)
        staged = [n for n in members if items[n][1].route in ("staged", "packed")]
        for n in members:
            t, tr = items[n]
            if n in staged:
                continue
            wait = direction == "d2h" or non_blocking is False
            moved = _direct(t, tr, backend, non_blocking=not wait)
            results[n] = moved
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
        if direction != "d2h" and non_blocking is not True and backend is not None and backend.staging:
            backend.record(device).synchronize()
    done = [r for r in results if r is not None]
    assert len(done) == len(items)
    return done


def _direct(t: torch.Tensor, tr: Transfer, backend: Backend | None, *, non_blocking: bool) -> torch.Tensor:
    if backend is None:
        return t.detach().to(tr.device, non_blocking=non_blocking)
    return backend.move(t.detach(), tr.device, non_blocking)


# --- packed batches without plans (see _fastpath.py) ------------------------------------------
#
# Per-leaf Python calls cost more than the copies of small leaves, so a packed group is
# handled one dtype run at a time: one np.concatenate fills a run's bytes on the host, one
# torch.stack/cat packs it on the device, and unbind/split cut it into per-leaf views in C++.

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


def _runs(group: list[int], wires: Sequence[torch.dtype]) -> dict[torch.dtype, list[int]]:
    runs: dict[torch.dtype, list[int]] = {}
    for k in group:
        runs.setdefault(wires[k], []).append(k)
    return runs


def _split(run: torch.Tensor, shapes: list[torch.Size], numels: list[int]) -> Sequence[torch.Tensor]:
    """Cut a typed 1-D run into per-leaf views of the given shapes, in as few calls as possible."""
    first = shapes[0]
    if all(shape == first for shape in shapes):
        return run.view(len(shapes), *first).unbind(0)
    parts = torch.split(run, numels)
    return [p if len(shape) == 1 else p.view(shape) for p, shape in zip(parts, shapes, strict=True)]


def _c_bytes(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The bytes of ``a`` in C order: a view when ``a`` is C-contiguous, else a copy."""
    flat: np.ndarray[Any, Any] = (a if a.flags.c_contiguous else np.ascontiguousarray(a)).reshape(-1)
    return flat.view(np.uint8)


def upload_packed(
    arrays: Sequence[np.ndarray[Any, Any]],
    dtypes: Sequence[torch.dtype],
    device: torch.device,
    backend: Backend,
    non_blocking: bool | None,
) -> list[torch.Tensor]:
    """Small native-order host arrays to ``device``, packed as the planner packs them.

    The groups and offsets are those of :func:`~tensorbridge.plan.transfer.pack_groups` and
    :func:`~tensorbridge.plan.transfer.pack_layout` over the same leaves, so ``explain()``
    describes what this does. Each result is C-contiguous, a view of its group's allocation.
    """
    cfg = current()
    wires = [wire_dtype(d) for d in dtypes]
    members = [(w, a.nbytes) for w, a in zip(wires, arrays, strict=True)]
    jobs: list[_Job] = []
    results: list[torch.Tensor | None] = [None] * len(arrays)
    for group in pack_groups(members, cfg.chunk_bytes):
        offsets, total = pack_layout([members[k] for k in group])
        where = dict(zip(group, offsets, strict=True))
        dev = backend.empty(total, device)
        job = _Job(total, dev)
        for ks in _runs(group, wires).values():
            start = where[ks[0]]
            size = sum(members[k][1] for k in ks)
            # C-order bytes of each leaf (a view when the leaf is C-contiguous), one copy per run.
            job.runs.append((start, [_c_bytes(arrays[k]) for k in ks]))
            kinds = {dtypes[k] for k in ks}
            if len(kinds) == 1:
                typed = dev[start : start + size].view(dtypes[ks[0]])
                views = _split(typed, [torch.Size(arrays[k].shape) for k in ks], [arrays[k].size for k in ks])
                for k, v in zip(ks, views, strict=True):
                    results[k] = v
            else:
                for k in ks:
                    a = arrays[k]
                    results[k] = dev[where[k] : where[k] + a.nbytes].view(dtypes[k]).view(a.shape)
        jobs.append(job)
    _run_uploads(jobs, backend, device, cfg)
    if non_blocking is not True:
        backend.record(device).synchronize()
    done = [r for r in results if r is not None]
    assert len(done) == len(arrays)
    return done


def download_packed(
    tensors: Sequence[torch.Tensor], dtypes: Sequence[np.dtype[Any]], device: torch.device, backend: Backend
) -> list[np.ndarray[Any, Any]]:
    """Small contiguous device tensors to new host arrays, packed as the planner packs them.

    The arrays of one group are views of one host allocation.
    """
    cfg = current()
    wires = [wire_dtype(t.dtype) for t in tensors]
    members = [(w, t.numel() * t.element_size()) for w, t in zip(wires, tensors, strict=True)]
    jobs: list[_Job] = []
    unpack: list[tuple[np.ndarray[Any, Any], list[int], list[int]]] = []
    for group in pack_groups(members, cfg.chunk_bytes):
        offsets, total = pack_layout([members[k] for k in group])
        where = dict(zip(group, offsets, strict=True))
        dev = backend.empty(total, device)
        for ks in _runs(group, wires).values():
            start = where[ks[0]]
            size = sum(members[k][1] for k in ks)
            run = [tensors[k] for k in ks]
            kind = run[0].dtype
            if kind in _CAT_DTYPES and all(t.dtype == kind for t in run):
                shape = run[0].shape
                if all(t.shape == shape for t in run):
                    torch.stack(run, out=dev[start : start + size].view(kind).view(len(run), *shape))
                else:
                    torch.cat([t.view(-1) for t in run], out=dev[start : start + size].view(kind))
            else:
                # One kernel packs every leaf of one element size, as integers of that size.
                w = wires[ks[0]]
                torch.cat([t.view(w).view(-1) for t in run], out=dev[start : start + size].view(w))
        host = _host_bytes(total)
        jobs.append(_Job(total, dev, [(0, host)]))
        unpack.append((host, group, offsets))
    _run_downloads(jobs, backend, device, cfg)
    out: list[np.ndarray[Any, Any] | None] = [None] * len(tensors)
    for host, group, offsets in unpack:
        where = dict(zip(group, offsets, strict=True))
        for ks in _runs(group, wires).values():
            first = tensors[ks[0]]
            if all(dtypes[k] == dtypes[ks[0]] and tensors[k].shape == first.shape for k in ks):
                start = where[ks[0]]
                size = len(ks) * members[ks[0]][1]
                rows = host[start : start + size].view(dtypes[ks[0]]).reshape(len(ks), *first.shape)
                if first.dim():
                    for k, row in zip(ks, rows, strict=True):
                        out[k] = row
                else:  # iterating would give NumPy scalars, not 0-d arrays
                    for j, k in enumerate(ks):
                        out[k] = rows[j, ...]
            else:
                for k in ks:
                    dims = tuple(tensors[k].shape)
                    out[k] = host[where[k] : where[k] + members[k][1]].view(dtypes[k]).reshape(dims)
    done = [a for a in out if a is not None]
    assert len(done) == len(tensors)
    return done
