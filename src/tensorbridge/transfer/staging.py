"""The host side of staged copies.

The copy threads, the ring of pinned buffers a transfer borrows, and the views that read and
write host memory in order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final

import numpy as np
import torch

from ..ops.blocks import blocks as _c_order_blocks
from ..plan.routes import wire_dtype
from .config import TransferConfig
from .devices import Backend, Event
from .pinned import POOL

__all__ = [
    "Ring",
    "as_c_bytes",
    "host_bits",
    "inverse",
    "memory_order",
    "piece",
    "pieces_of",
    "resolved",
    "submit",
    "threads",
]

# Fills and drains smaller than this (or than half a chunk) run on the calling thread: a
# thread hop costs more than copying them.
_INLINE_BYTES: Final = 1 << 20
# A job's host copy is split into one piece per host thread, each at least this size.
_MIN_PIECE: Final = 4096


# --- the shared thread pool -------------------------------------------------------------------

_executor: ThreadPoolExecutor | None = None
_executor_threads = 0
_executor_lock = threading.Lock()


def threads(cfg: TransferConfig) -> ThreadPoolExecutor:
    """The shared copy threads, (re)made for ``cfg.threads``."""
    global _executor, _executor_threads
    with _executor_lock:
        if _executor is None or _executor_threads != cfg.threads:
            if _executor is not None:
                _executor.shutdown(wait=False)  # its queued work still runs; new work goes to the new pool
            _executor = ThreadPoolExecutor(cfg.threads, thread_name_prefix="tensorbridge-copy")
            _executor_threads = cfg.threads
        return _executor


# --- host-side views --------------------------------------------------------------------------


def host_bits(t: torch.Tensor) -> np.ndarray[Any, Any]:
    """A NumPy view of a host tensor's bits, as same-size integers (complex128 as itself)."""
    bits: np.ndarray[Any, Any] = resolved(t).view(wire_dtype(t.dtype)).numpy()
    return bits


def resolved(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached, with lazy conjugate/negative bits applied (torch keeps them across ``.to()``)."""
    return t.detach().resolve_conj().resolve_neg()


def memory_order(t: torch.Tensor) -> list[int] | None:
    """The axis order that makes ``t`` C-contiguous, if it is dense with positive strides; else None."""
    if t.is_contiguous():
        return list(range(t.dim()))
    strides = t.stride()
    order = sorted(range(t.dim()), key=lambda i: (-strides[i], -t.shape[i]))
    return order if t.permute(order).is_contiguous() else None


def inverse(order: list[int]) -> list[int]:
    """The permutation that undoes ``order``."""
    inv = [0] * len(order)
    for i, axis in enumerate(order):
        inv[axis] = i
    return inv


def pieces_of(a: np.ndarray[Any, Any], limit: int) -> Iterator[np.ndarray[Any, Any]]:
    """Views of ``a`` that together cover it in C order, each at most ``limit`` bytes (or one element)."""
    if a.flags.c_contiguous:  # dense memory: plain byte ranges, cut anywhere
        flat = a.reshape(-1).view(np.uint8)
        for start in range(0, flat.size, limit):
            yield flat[start : start + limit]
    else:
        yield from _c_order_blocks(a, limit)


def as_c_bytes(buf: np.ndarray[Any, Any], off: int, like: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The C-ordered region of ``buf`` (uint8) at ``off`` shaped and typed like ``like``."""
    region: np.ndarray[Any, Any] = buf[off : off + like.nbytes].view(like.dtype).reshape(like.shape)
    return region


class Ring:
    """The pinned buffers one transfer borrowed, with each one's pending work."""

    def __init__(self, backend: Backend, jobs: int, cfg: TransferConfig) -> None:
        self.bufs = POOL.borrow(backend, min(cfg.ring, jobs), cfg)
        self.views = [b.numpy() for b in self.bufs]
        self.events: list[Event | None] = [None] * len(self.bufs)
        self.work: list[list[Future[None]]] = [[] for _ in self.bufs]

    def wait_work(self, slot: int) -> None:
        """Wait for the host copies that touch buffer ``slot``; re-raise their failure."""
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


def piece(cfg: TransferConfig) -> int:
    """The bytes one host thread copies at a time."""
    return max(_MIN_PIECE, cfg.chunk_bytes // cfg.threads)


def submit(
    tasks: list[Callable[[], None]], nbytes: int, cfg: TransferConfig, backend: Backend, device: torch.device
) -> list[Future[None]]:
    """Run ``tasks`` on the copy threads (or here, when they are too small to be worth a hop).

    Each task on a copy thread first selects ``device``: a CUDA call (an event wait) from a thread
    with no device selected would open a context on GPU 0, in processes that only use another GPU.
    """
    if nbytes < min(_INLINE_BYTES, cfg.chunk_bytes // 2) or cfg.threads == 1:
        for task in tasks:
            task()
        return []
    pool = threads(cfg)
    return [pool.submit(_on_device, backend, device, task) for task in tasks]


def _on_device(backend: Backend, device: torch.device, task: Callable[[], None]) -> None:
    backend.use(device)
    task()
