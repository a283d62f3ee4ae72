"""``prefetch``: batches moved to the device ahead of the loop that uses them.

While the consumer works on batch k, batches k+1 ... k+depth are already on their way: each
is handed to the transfer engine (small leaves packed into one copy, large ones staged through
the bounded pinned pool) with ``non_blocking=True``, on a side stream, and an event is recorded
after its copies. When the consumer takes a batch, its current stream waits for that event
(the host does not wait) and the batch's memory is marked as used by that stream, so the
caching allocator never hands it to the side stream while the consumer still reads it.

No thread of our own: the copies are asynchronous already, and the loader (a DataLoader with
workers) produces batches in its own processes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Final

import torch

from ..errors import UnsupportedError
from ..options import ToTensorOptions, tensor_options
from ..pipeline import convert
from ..plan.devices import resolve_device
from ..transfer.devices import Backend, Event, backend_for
from ..transfer.public import release_pinned
from ..tree import iter_leaves

__all__ = ["Prefetch", "prefetch"]

_WHAT: Final = "prefetch"


def prefetch(batches: Iterable[Any], device: object, *, depth: int = 2, dtype: object = None) -> Prefetch:
    """Iterate over ``batches`` moved to ``device``, each one's copies overlapping the work on the one before.

    Wraps any iterable of batches (a ``DataLoader``, a list, a generator): every array and
    tensor in each batch is converted and moved as :func:`to_tensor` would, containers kept.
    The batch handed out is ready for work queued on the current stream; ``depth`` batches
    are in flight behind it, so pinned staging memory stays bounded by
    ``tb.configure_transfers(pinned_cap_bytes=...)``. An exception from the loader (or from a
    conversion) is raised after the batches that came before it; closing the iterator (or
    leaving the loop early, or the end of the epoch) waits for the copies in flight and frees
    the pinned buffers. Each ``iter()`` is a new pass over ``batches`` (one per epoch).

    Args:
        batches: the batches, e.g. ``DataLoader(..., collate_fn=tb.collate)``.
        device: where the batches go (``"cuda"``, ``"cuda:1"``, ``"cpu"``...).
        depth: how many batches move ahead of the one being used (at least 1).
        dtype: a cast on the way, as in :func:`to_tensor` (``{np.float64: torch.float32}``).

    Returns:
        A :class:`Prefetch`: iterable, with ``len()`` when ``batches`` has one.

    Raises:
        DeviceError: (RuntimeError) ``device`` does not exist (a CUDA device on a CPU-only torch).
        UnsupportedError: (TypeError) ``depth`` is not a positive int.

    Example:
        >>> import numpy as np, tensorbridge as tb
        >>> batches = [{"x": np.ones((2, 3))}, {"x": np.zeros((2, 3))}]
        >>> [b["x"].sum().item() for b in tb.prefetch(batches, "cpu")]
        [6.0, 0.0]
    """
    return Prefetch(batches, device, depth=depth, dtype=dtype)


class Prefetch:
    """The iterable :func:`prefetch` returns; each ``iter()`` is one pass over the batches.

    Example:
        >>> import numpy as np, tensorbridge as tb
        >>> p = tb.prefetch([np.arange(3)], "cpu")
        >>> len(p), [b.tolist() for b in p]
        (1, [[0, 1, 2]])
    """

    def __init__(self, batches: Iterable[Any], device: object, *, depth: int = 2, dtype: object = None) -> None:
        if type(depth) is not int or depth < 1:
            raise UnsupportedError(_WHAT, "depth", f"depth must be an int of at least 1, not {depth!r}", "Pass depth=2")
        opts = tensor_options(dtype=dtype, device=device, non_blocking=True)
        assert opts.device is not None
        self._device = resolve_device(opts.device, "device", _WHAT, torch.float32)
        self._opts: ToTensorOptions = tensor_options(dtype=dtype, device=self._device, non_blocking=True)
        backend = backend_for(self._device.type)
        self._backend: Backend | None = backend if backend is not None and backend.staging else None
        self._batches = batches
        self._depth = depth
        self._passes: list[Iterator[Any]] = []
        self._side: Any = None  # the side stream, made on first use

    def __len__(self) -> int:
        return len(self._batches)  # type: ignore[arg-type]  # a TypeError, as len() of the loader gives

    def __iter__(self) -> Iterator[Any]:
        it = self._pass()
        self._passes = [p for p in self._passes if p.gi_frame is not None]  # type: ignore[attr-defined]
        self._passes.append(it)
        return it

    def close(self) -> None:
        """Close every pass still open: wait for its copies in flight, free the pinned buffers."""
        for it in self._passes:
            it.close()  # type: ignore[attr-defined]
        self._passes.clear()

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pass(self) -> Iterator[Any]:
        source = iter(self._batches)
        queue: deque[tuple[Any, Event | None]] = deque()
        failed: Exception | None = None
        try:
            while True:
                while failed is None and len(queue) <= self._depth:
                    try:
                        batch = next(source)
                    except StopIteration:
                        break
                    except Exception as err:  # raised after the batches before it
                        failed = err
                        break
                    try:
                        queue.append(self._issue(batch))
                    except Exception as err:
                        failed = err
                        break
                if not queue:
                    break
                moved, event = queue.popleft()
                if event is not None:
                    self._hand_over(moved, event)
                yield moved
            if failed is not None:
                raise failed
        finally:
            for _, event in queue:  # closed early: the copies in flight still read pinned buffers
                if event is not None:
                    event.synchronize()
            queue.clear()
            close = getattr(source, "close", None)
            if callable(close):
                close()
            if self._backend is not None:
                release_pinned()

    def _issue(self, batch: Any) -> tuple[Any, Event | None]:
        """Queue ``batch``'s copies (on the side stream, where the device has streams)."""
        backend = self._backend
        if backend is None:
            return convert(batch, self._opts), None
        stream = self._stream()
        with backend.on_stream(stream):
            moved = convert(batch, self._opts)
            event = backend.record(self._device)
        return moved, event

    def _stream(self) -> Any:
        if self._side is None:
            assert self._backend is not None
            self._side = self._backend.new_stream(self._device)
        return self._side

    def _hand_over(self, moved: Any, event: Event) -> None:
        """The consumer's stream waits for the batch's copies; its memory is marked as in use there."""
        backend = self._backend
        assert backend is not None
        backend.wait_event(event, self._device)
        for _, t in iter_leaves(moved, _on_device):
            backend.record_stream(t, self._device)


def _on_device(x: object) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type != "cpu"
