"""A fake CUDA backend that runs the transfer engine on a machine without a GPU.

"Device" memory is host memory in a tensor subclass whose ``.device`` says ``cuda:N``, so
the planner and the engine treat it as device memory. What makes it a useful stand-in for
checking synchronization:

- copies do not happen when they are queued: a worker thread per device runs them later, in
  order (a CUDA stream), each after an optional random delay;
- events complete only when the worker reaches them;
- fresh device memory is filled with 0xAB garbage, so a result read before its copy has
  landed is visibly wrong;
- pinned buffers are tracked, so tests can see how much pinned memory is alive.
"""

from __future__ import annotations

import queue
import random
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import torch

GARBAGE = 0xAB


class FakeCudaTensor(torch.Tensor):
    """Host memory posing as device memory (subclasses fix the device index).

    A torch operation on it runs at once on the host, so, as on a real stream, it first
    waits for the work queued before it (the copies that fill its inputs).
    """

    backend: ClassVar[FakeCuda | None] = None

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if FakeCudaTensor.backend is not None and getattr(func, "__name__", "") not in _METADATA:
            FakeCudaTensor.backend.drain()
        return super().__torch_function__(func, types, args, kwargs or {})


# Operations that only look at or re-describe metadata: on a real device they queue nothing.
_METADATA = frozenset(
    {
        "__get__",  # properties: shape, dtype, device, requires_grad, T, real, imag...
        "__getitem__",
        "__len__",
        "view",
        "permute",
        "size",
        "stride",
        "dim",
        "numel",
        "element_size",
        "is_contiguous",
        "data_ptr",
        "untyped_storage",
        "storage_offset",
        "detach",
        "is_conj",
        "is_neg",
        "is_pinned",
        "requires_grad_",
        "as_subclass",
    }
)

_CLASSES: dict[int, type[FakeCudaTensor]] = {}


def fake_class(index: int) -> type[FakeCudaTensor]:
    if index not in _CLASSES:
        device = torch.device("cuda", index)
        _CLASSES[index] = type(f"FakeCuda{index}", (FakeCudaTensor,), {"device": property(lambda self: device)})
    return _CLASSES[index]


def plain(t: torch.Tensor) -> torch.Tensor:
    """The same memory as a plain tensor (no waiting: tests look at memory as it is)."""
    with torch._C.DisableTorchFunctionSubclass():
        return t.as_subclass(torch.Tensor)


def on_fake(t: torch.Tensor, index: int = 0) -> torch.Tensor:
    """Put a host tensor "on" fake device ``index`` (a copy)."""
    return plain(t).clone().as_subclass(fake_class(index))


class FakeEvent:
    """Completes when the stream reaches it; a waiting host thread may wake up late (``lag``)."""

    def __init__(self, lag: float = 0.0) -> None:
        self._done = threading.Event()
        self.lag = lag

    def query(self) -> bool:
        return self._done.is_set()

    def synchronize(self) -> None:
        if not self._done.wait(60):
            raise AssertionError("fake event never completed: a deadlock?")
        if self.lag:
            time.sleep(self.lag)  # the stream runs on meanwhile

    def set(self) -> None:
        self._done.set()


class _Stream:
    """Runs queued work in order on one thread, like a CUDA stream."""

    def __init__(self) -> None:
        self.work: queue.Queue[Callable[[], None]] = queue.Queue()
        self.lock = threading.Lock()
        self.pending = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def put(self, fn: Callable[[], None]) -> None:
        with self.lock:
            self.pending += 1
        self.work.put(fn)

    def _run(self) -> None:
        while True:
            fn = self.work.get()
            try:
                fn()
            finally:
                with self.lock:
                    self.pending -= 1


class FakeCuda:
    """The backend protocol of ``tensorbridge.transfer.devices``, on host memory."""

    type = "cuda"
    staging = True

    def __init__(self, devices: int = 2, delay: float = 0.0, seed: int = 0) -> None:
        self.devices = devices
        self.delay = delay
        self.rng = random.Random(seed)
        self.streams = [_Stream() for _ in range(devices)]
        self.current = 0
        self.lock = threading.Lock()
        self.pinned: dict[int, int] = {}  # data_ptr -> nbytes of live pinned buffers
        self.pinned_allocs = 0
        self.copies = 0
        self.moves = 0
        self.cache_empties = 0
        self.fail_copies = False

    # facts
    def available(self) -> bool:
        return True

    def device_count(self) -> int:
        return self.devices

    def resolve(self, device: torch.device) -> torch.device:
        return device if device.index is not None else torch.device("cuda", self.current)

    def unsupported(self, dtype: torch.dtype) -> str | None:
        return None

    def is_pinned(self, t: torch.Tensor) -> bool:
        ptr = t.data_ptr()
        with self.lock:
            return any(start <= ptr < start + n for start, n in self.pinned.items())

    # memory
    def empty_pinned(self, nbytes: int) -> torch.Tensor:
        t = torch.full((nbytes,), GARBAGE, dtype=torch.uint8)
        with self.lock:
            self.pinned[t.data_ptr()] = nbytes
            self.pinned_allocs += 1
        # Tied to the memory (the storage), not to this tensor object: views keep it pinned.
        weakref.finalize(t.untyped_storage(), self._forget, t.data_ptr())
        return t

    def _forget(self, ptr: int) -> None:
        with self.lock:
            self.pinned.pop(ptr, None)

    def live_pinned_bytes(self) -> int:
        with self.lock:
            return sum(self.pinned.values())

    def empty(self, nbytes: int, device: torch.device) -> torch.Tensor:
        return torch.full((nbytes,), GARBAGE, dtype=torch.uint8).as_subclass(fake_class(self._index(device)))

    def _index(self, device: torch.device) -> int:
        return self.current if device.index is None else device.index

    # work
    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        if self.fail_copies:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        fake = dst if isinstance(dst, FakeCudaTensor) else src
        assert isinstance(fake, FakeCudaTensor), "a copy with no device side"
        assert dst.numel() == src.numel() and dst.dtype == src.dtype, "copy between different sizes"
        pause = self.rng.uniform(0, self.delay) if self.delay else 0.0
        with self.lock:
            self.copies += 1

        def run() -> None:
            if pause:
                time.sleep(pause)
            plain(dst).copy_(plain(src))

        self.streams[fake.device.index or 0].put(run)

    def record(self, device: torch.device) -> FakeEvent:
        event = FakeEvent(self.rng.uniform(0, self.delay) if self.delay else 0.0)
        self.streams[self._index(device)].put(event.set)
        return event

    def sync(self, index: int | None = None) -> None:
        for i in range(self.devices) if index is None else [index]:
            self.record(torch.device("cuda", i)).synchronize()

    def drain(self) -> None:
        """Wait for queued work on every stream, if there is any."""
        for i, stream in enumerate(self.streams):
            if stream.pending:
                self.sync(i)

    def move(self, t: torch.Tensor, device: torch.device, non_blocking: bool) -> torch.Tensor:
        if self.fail_copies:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        with self.lock:
            self.moves += 1
        if isinstance(t, FakeCudaTensor):
            self.sync(t.device.index)
        if device.type == "cpu":
            return plain(t).clone()
        self.sync(self._index(device))
        return plain(t).clone().as_subclass(fake_class(self._index(device)))

    def empty_host_cache(self) -> None:
        self.cache_empties += 1


def bits_of(t: Any) -> bytes:
    """The raw bytes of a (fake device or host) tensor or array, in C order."""
    if isinstance(t, torch.Tensor):
        t = plain(t).detach().resolve_conj().resolve_neg().contiguous()
        return bytes(t.view(-1).view(torch.uint8).numpy().tobytes()) if t.numel() else b""
    import numpy as np

    return bytes(np.ascontiguousarray(t).tobytes())
