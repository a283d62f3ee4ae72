"""The sources of copies still on the wire, kept alive until those copies have finished.

Torch's caching host allocator keeps a pinned block from reuse while a copy reads it only when
the copy's source *is* one of its blocks. A NumPy view into pinned memory at an offset
(``p.numpy()[4096:]``), or pinned memory from another library, is not: once the caller drops it,
the memory can be freed or reused while a ``non_blocking=True`` copy still reads it. So every
source of a copy that may still be running when :func:`~tensorbridge.transfer.engine.move`
returns is held here with an event recorded after its copy, and let go once the event has
completed (looked at on later calls, without waiting), or when :func:`settle` waits for it.

Also here: :func:`deferred_wait` and :func:`finish`, for callers that queue device work after
the copies of a blocking call and make the call's one final wait follow that work.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from ..plan.routes import Transfer
from .devices import Event, backend_for

__all__ = ["deferred", "deferred_wait", "finish", "held", "hold", "prune", "settle"]

# At most this many calls' sources are held; beyond, the oldest call's copies are waited for.
_LIMIT: Final = 64

_held: deque[tuple[Event, list[Any]]] = deque()
_lock = threading.Lock()


def hold(event: Event, refs: list[Any]) -> None:
    """Keep ``refs`` alive until ``event`` (recorded after the copies that read them) has completed."""
    oldest: tuple[Event, list[Any]] | None = None
    with _lock:
        _prune_locked()
        _held.append((event, refs))
        if len(_held) > _LIMIT:
            oldest = _held.popleft()
    if oldest is not None:
        oldest[0].synchronize()  # outside the lock: other threads' calls go on meanwhile


def prune() -> None:
    """Let go of the sources whose copies have finished (never waits)."""
    with _lock:
        _prune_locked()


def _prune_locked() -> None:
    if _held:
        kept = [(event, refs) for event, refs in _held if not event.query()]
        if len(kept) < len(_held):
            _held.clear()
            _held.extend(kept)


def settle() -> None:
    """Wait for every held copy and let go of its sources."""
    with _lock:
        waiting = list(_held)
        _held.clear()
    for event, _ in waiting:
        event.synchronize()


def held() -> int:
    """How many calls' sources are held now."""
    with _lock:
        return len(_held)


# --- the final wait, handed to the caller ------------------------------------------------------


class _Deferred(threading.local):
    on = False


_deferred = _Deferred()


@contextmanager
def deferred_wait(on: bool = True) -> Iterator[None]:
    """Within (in this thread): ``move`` skips the final wait of ``None``/``False`` for copies to a device.

    For a caller that queues more device work after the copies: it calls :func:`finish` with the
    same items after that work (one wait covers both), and keeps ``items`` alive until then.
    """
    before = _deferred.on
    _deferred.on = on
    try:
        yield
    finally:
        _deferred.on = before


def finish(items: Sequence[tuple[Any, Transfer]]) -> None:
    """The wait :func:`deferred_wait` skipped: all work queued so far on the items' targets is done."""
    for device in {tr.device for _, tr in items if tr.direction != "d2h"}:
        backend = backend_for(device.type)
        if backend is not None and backend.staging:
            backend.record(device).synchronize()


def deferred() -> bool:
    """Whether this thread is inside :func:`deferred_wait`."""
    return _deferred.on
