"""The pool of pinned staging buffers: bounded, shared by all threads, never reused mid-copy.

Page-locked memory is slow to allocate (about a second per GiB) and scarce, so the transfer
engine does not pin whole arrays: it borrows a few fixed-size buffers (``chunk_bytes`` each)
from this pool and gives them back with the event of the last copy that reads or writes them.
A buffer is handed out again only after that event has completed.

Bounds: the pool never holds more than ``pinned_cap_bytes``. One transfer borrows its whole
ring at once, blocking only while it holds nothing, so transfers in several threads cannot
deadlock each other: when the pool is at its cap, a transfer gets the buffers that are free
(at least one) and pipelines through fewer of them.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import torch

from ..errors import OutOfMemoryError
from .config import TransferConfig, current
from .devices import Backend, Event

__all__ = ["POOL", "PinnedPool", "PoolStats"]


@dataclass(frozen=True)
class PoolStats:
    """What the staging pool holds.

    Attributes:
        held_bytes: pinned bytes the pool owns now (free and lent out).
        lent_bytes: pinned bytes lent to transfers in progress.
        peak_bytes: the most ``held_bytes`` has been since the pool was last released.
        cap_bytes: the configured cap.
        buffers: buffers owned now.
    """

    held_bytes: int
    lent_bytes: int
    peak_bytes: int
    cap_bytes: int
    buffers: int


class PinnedPool:
    """Fixed-size pinned buffers, lent out in rings and returned with an event."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._free: deque[tuple[torch.Tensor, Event | None]] = deque()
        self._held = 0
        self._lent = 0
        self._peak = 0
        self._count = 0
        self._cap = current().pinned_cap_bytes
        self._backend: Backend | None = None

    def borrow(self, backend: Backend, want: int, cfg: TransferConfig) -> list[torch.Tensor]:
        """Lend between 1 and ``want`` buffers of ``cfg.chunk_bytes``; their earlier copies have finished.

        Blocks only while the caller holds no buffer of this pool and all of them are lent out.

        Raises:
            OutOfMemoryError: pinned memory could not be allocated.
        """
        taken: list[tuple[torch.Tensor | None, Event | None]] = []
        with self._cond:
            self._cap = cfg.pinned_cap_bytes
            if self._backend is not backend:  # a new backend (tests swap them): old buffers are not its own
                self._drop_free_locked()
                self._backend = backend
            while len(taken) < want:
                # Only the first buffer may be one still on the wire: a caller that already has
                # one pipelines through fewer rather than wait for another transfer's copy.
                got = self._take_locked(cfg.chunk_bytes, in_flight_ok=not taken)
                if got is not None:
                    taken.append(got)
                elif taken:
                    break
                else:
                    self._cond.wait()
        out: list[torch.Tensor] = []
        try:
            for buf, event in taken:
                if buf is None:  # a reserved slot: allocate outside the lock, it is slow
                    buf = self._allocate(backend, cfg.chunk_bytes)
                elif event is not None:
                    event.synchronize()
                out.append(buf)
        except BaseException:
            with self._cond:
                missing = len(taken) - len(out)
                self._held -= missing * cfg.chunk_bytes
                self._lent -= missing * cfg.chunk_bytes
                self._count -= missing
                self._cond.notify_all()
            for buf in out:
                self.give_back(buf, None)
            raise
        return out

    def _take_locked(self, size: int, *, in_flight_ok: bool) -> tuple[torch.Tensor | None, Event | None] | None:
        for _ in range(len(self._free)):
            buf, event = self._free[0]
            if buf.numel() != size:  # chunk_bytes changed since this buffer was made
                self._free.popleft()
                self._held -= buf.numel()
                self._count -= 1
                continue
            if event is None or event.query():
                self._free.popleft()
                self._lent += size
                return buf, None
            self._free.rotate(-1)
        if self._held + size <= self._cap:
            self._held += size
            self._lent += size
            self._count += 1
            self._peak = max(self._peak, self._held)
            return None, None
        if self._free and in_flight_ok:  # the oldest buffer still on the wire: the caller waits for its event
            buf, event = self._free.popleft()
            self._lent += size
            return buf, event
        return None

    def _allocate(self, backend: Backend, size: int) -> torch.Tensor:
        try:
            return backend.empty_pinned(size)
        except RuntimeError as err:
            raise OutOfMemoryError(
                "pinned staging",
                "transfer",
                f"allocating {size} bytes of pinned host memory failed ({err})",
                "Lower tb.configure_transfers(pinned_cap_bytes=...), or free pinned memory",
            ) from err

    def give_back(self, buf: torch.Tensor, event: Event | None) -> None:
        """Return a buffer; ``event`` completes when the last copy that uses it has finished."""
        size = buf.numel()
        with self._cond:
            self._cap = current().pinned_cap_bytes
            self._lent -= size
            if self._held > self._cap or self._backend is None:
                self._held -= size  # over a lowered cap: torch frees it once its copies are done
                self._count -= 1
            else:
                self._free.append((buf, event))
            self._cond.notify_all()

    def release(self) -> None:
        """Free every buffer not lent out, once its last copy has finished, and return cached pinned memory."""
        with self._cond:
            free = list(self._free)
            self._drop_free_locked()
            self._peak = self._held
            backend = self._backend
        for _, event in free:
            if event is not None:
                event.synchronize()
        del free
        if backend is not None:
            backend.empty_host_cache()

    def _drop_free_locked(self) -> None:
        for buf, _ in self._free:
            self._held -= buf.numel()
        self._count -= len(self._free)
        self._free.clear()

    def stats(self) -> PoolStats:
        """Return what the pool holds now."""
        with self._cond:
            return PoolStats(self._held, self._lent, self._peak, current().pinned_cap_bytes, self._count)


POOL = PinnedPool()
