"""A fake CUDA backend that runs the transfer engine on a machine without a GPU.

"Device" memory is host memory in a tensor subclass whose ``.device`` says ``cuda:N``, so
the planner and the engine treat it as device memory. What makes it a useful stand-in for
checking synchronization:

- copies do not happen when they are queued: a worker thread per device runs them later, in
  order (a CUDA stream), each after an optional random delay;
- events complete only when the worker reaches them;
- fresh device memory is filled with 0xAB garbage, so a result read before its copy has
  landed is visibly wrong;
- pinned buffers are tracked, so tests can see how much pinned memory is alive;
- ``move(non_blocking=True)`` from pinned memory lands late too. The fake's pinned memory
  behaves like torch's caching host allocator: once the last tensor over a block is gone, the
  block is "reused" (filled with ``POISON``), unless a late copy from the block *itself* is
  pending (torch records an event on the block then). A copy whose source only points into a
  block (a NumPy view at an offset, memory pinned by another library: ``foreign_pinned``) does
  not protect it, so a late copy reads poison if nobody kept its source alive;
- device operations are counted, and so are host waits on events recorded after them:
  ``unsettled()`` says whether a device operation may still be running (none waited for).
"""

from __future__ import annotations

import contextlib
import queue
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch

GARBAGE = 0xAB
POISON = 0xEE  # what a freed pinned block holds once it has been reused


class FakeCudaTensor(torch.Tensor):
    """Host memory posing as device memory (subclasses fix the device index).

    A torch operation on it runs at once on the host, so, as on a real stream, it first
    waits for the work queued before it (the copies that fill its inputs).
    """

    backend: ClassVar[FakeCuda | None] = None
    index: ClassVar[int] = 0

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        backend = FakeCudaTensor.backend
        if backend is not None and getattr(func, "__name__", "") not in _METADATA:
            backend.drain()
            backend.launched(t.index for t in types if isinstance(t, type) and issubclass(t, FakeCudaTensor))
        return super().__torch_function__(func, types, args, kwargs or {})


# Operations that only look at or re-describe metadata: on a real device they queue nothing.
_METADATA = frozenset(
    {
        "__get__",  # properties: shape, dtype, device, requires_grad, T, real, imag...
        "__getitem__",
        "__len__",
        "view",
        "unbind",  # views: no kernel on a device either
        "split",
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
        _CLASSES[index] = type(
            f"FakeCuda{index}", (FakeCudaTensor,), {"device": property(lambda self: device), "index": index}
        )
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

    def __init__(self, lag: float = 0.0, on_wait: Callable[[], None] | None = None) -> None:
        self._done = threading.Event()
        self.lag = lag
        self.on_wait = on_wait

    def query(self) -> bool:
        return self._done.is_set()

    def synchronize(self) -> None:
        if not self._done.wait(60):
            raise AssertionError("fake event never completed: a deadlock?")
        if self.lag:
            time.sleep(self.lag)  # the stream runs on meanwhile
        if self.on_wait is not None:
            self.on_wait()

    def set(self) -> None:
        self._done.set()


class _Stream:
    """Runs queued work in order on one thread, like a CUDA stream."""

    def __init__(self, index: int = 0) -> None:
        self.index = index
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
        self.streams = [_Stream(i) for i in range(devices)]  # each device's default stream
        self.side_streams: list[_Stream] = []
        self.on = threading.local()  # each thread's current stream, where one was made current
        self.recorded_streams = 0
        self.current = 0
        self.lock = threading.Lock()
        self.pinned: dict[int, int] = {}  # data_ptr -> nbytes of live pinned buffers
        self.pinned_allocs = 0
        self.copies = 0
        self.moves = 0
        self.cache_empties = 0
        self.fail_copies = False
        # pinned blocks: data_ptr -> (the memory, kept here, and whether torch's allocator owns it)
        self.blocks: dict[int, tuple[torch.Tensor, bool]] = {}
        self.handles: dict[int, weakref.ref[torch.UntypedStorage]] = {}  # the storage tensors over a block share
        self.kernels = [0] * devices  # device operations launched, per device
        self.settled = [0] * devices  # of those, how many a host wait has covered
        self.selected = threading.local()  # each thread's current device (``use``)
        self.wait_streams: list[tuple[int, torch.device]] = []

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
        return self._pinned(nbytes, owned=True)

    def foreign_pinned(self, nbytes: int) -> torch.Tensor:
        """Pinned memory torch's allocator does not own (another library pinned it): no copy protects it."""
        return self._pinned(nbytes, owned=False)

    def _pinned(self, nbytes: int, *, owned: bool) -> torch.Tensor:
        mem = torch.full((nbytes,), GARBAGE, dtype=torch.uint8)  # kept here: late copies never read freed memory
        t = torch.from_numpy(mem.numpy())  # its own storage: the tensors handed out, not the fake, keep it alive
        ptr = t.data_ptr()
        storage = t.untyped_storage()
        with self.lock:
            self.pinned[ptr] = nbytes
            self.pinned_allocs += 1
            self.blocks[ptr] = (mem, owned)
            self.handles[ptr] = weakref.ref(storage)
        # Tied to the memory (the storage), not to this tensor object: views keep it pinned.
        weakref.finalize(storage, self._forget, ptr)
        return t

    def _forget(self, ptr: int) -> None:
        with self.lock:
            self.pinned.pop(ptr, None)
            self.handles.pop(ptr, None)
            block = self.blocks.pop(ptr, None)
        if block is not None:
            block[0].fill_(POISON)  # another allocation got the block and wrote to it

    def _block_of(self, ptr: int) -> tuple[int, torch.Tensor, bool] | None:
        with self.lock:
            for start, (mem, owned) in self.blocks.items():
                if start <= ptr < start + mem.numel():
                    return start, mem, owned
        return None

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

        self.stream(fake.device.index or 0).put(run)

    def stream(self, index: int) -> _Stream:
        """The calling thread's current stream on device ``index``."""
        current = getattr(self.on, "stream", None)
        return current if current is not None and current.index == index else self.streams[index]

    def new_stream(self, device: torch.device) -> _Stream:
        s = _Stream(self._index(device))
        with self.lock:
            self.side_streams.append(s)
        return s

    @contextlib.contextmanager
    def on_stream(self, stream: _Stream) -> Iterator[_Stream]:
        before = getattr(self.on, "stream", None)
        self.on.stream = stream
        try:
            yield stream
        finally:
            self.on.stream = before

    def wait_event(self, event: FakeEvent, device: torch.device) -> None:
        def wait() -> None:
            if not event._done.wait(60):
                raise AssertionError("fake event never completed: a deadlock?")

        self.stream(self._index(device)).put(wait)

    def record_stream(self, t: torch.Tensor, device: torch.device) -> None:
        with self.lock:
            self.recorded_streams += 1

    def record(self, device: torch.device) -> FakeEvent:
        index = self._index(device)
        with self.lock:
            upto = self.kernels[index]

        def waited() -> None:
            with self.lock:
                self.settled[index] = max(self.settled[index], upto)

        event = FakeEvent(self.rng.uniform(0, self.delay) if self.delay else 0.0, waited)
        self.stream(index).put(event.set)
        return event

    def sync(self, index: int | None = None) -> None:
        for i in range(self.devices) if index is None else [index]:
            self.record(torch.device("cuda", i)).synchronize()

    def drain(self) -> None:
        """Wait for queued work on each device's current stream, if there is any (an operation's own ordering)."""
        # The calling thread's current streams only: as on a GPU, an operation is ordered after the
        # work of its own stream, not of a side stream it has not waited for.
        for stream in [self.stream(i) for i in range(self.devices)]:
            if stream.pending:
                event = FakeEvent()
                stream.put(event.set)
                event.synchronize()

    def launched(self, indices: Any) -> None:
        """A device operation on the devices ``indices`` (it runs at once here, but may not on a GPU)."""
        with self.lock:
            for i in set(indices):
                self.kernels[i] += 1

    def unsettled(self) -> list[int]:
        """The devices with an operation launched after the last host wait on them."""
        with self.lock:
            return [i for i in range(self.devices) if self.kernels[i] > self.settled[i]]

    def use(self, device: torch.device) -> None:
        self.selected.device = self._index(device)

    def current_selection(self) -> int | None:
        """The calling thread's device selected through ``use``, or None."""
        return getattr(self.selected, "device", None)

    def deselect(self) -> None:
        self.selected.device = None

    def wait_stream(self, stream: int, device: torch.device) -> None:
        with self.lock:
            self.wait_streams.append((stream, device))

    def move(self, t: torch.Tensor, device: torch.device, non_blocking: bool) -> torch.Tensor:
        if self.fail_copies:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        with self.lock:
            self.moves += 1
        if isinstance(t, FakeCudaTensor):
            self.sync(t.device.index)
        if device.type == "cpu":
            return plain(t).clone()
        if non_blocking and self.is_pinned(t):
            return self._late_upload(t, self._index(device))
        self.sync(self._index(device))
        return plain(t).clone().as_subclass(fake_class(self._index(device)))

    def _late_upload(self, t: torch.Tensor, index: int) -> torch.Tensor:
        """``t.to(cuda:index, non_blocking=True)`` from pinned memory: the copy reads the source when it runs."""
        src = plain(t).detach()
        out = torch.empty_like(src)
        out.untyped_storage().fill_(GARBAGE)
        keep = self._unprotected(src)
        pause = self.rng.uniform(0, self.delay) if self.delay else 0.0
        del src

        def run() -> None:
            if pause:
                time.sleep(pause)
            out.copy_(keep)

        self.stream(index).put(run)
        return out.as_subclass(fake_class(index))

    def _unprotected(self, src: torch.Tensor) -> torch.Tensor:
        """What a late copy from ``src`` reads: ``src`` itself (kept alive) when torch's allocator
        would protect it, else the same bytes through the block, not keeping the caller's tensors alive."""
        found = self._block_of(src.data_ptr())
        if found is None:
            return src
        start, mem, owned = found
        storage = src.untyped_storage()
        with self.lock:
            handle = self.handles.get(start)
        if owned and handle is not None and handle() is storage:
            return src  # the block itself: torch records an event on it, so it is not reused mid-copy
        offset = storage.data_ptr() - start
        if offset % src.element_size():
            return src
        at = src.storage_offset() + offset // src.element_size()
        return torch.empty(0, dtype=src.dtype).set_(mem.untyped_storage(), at, src.shape, src.stride())

    def empty_host_cache(self) -> None:
        self.cache_empties += 1


def bits_of(t: Any) -> bytes:
    """The raw bytes of a (fake device or host) tensor or array, in C order."""
    if isinstance(t, torch.Tensor):
        t = plain(t).detach().resolve_conj().resolve_neg()
        # Standard strides even on axes of size 1 (torch calls a (1,) tensor of stride 2 contiguous,
        # and its direct copies keep such strides): a bytes view needs them.
        t = torch.empty_like(t, memory_format=torch.contiguous_format).copy_(t)
        return bytes(t.view(-1).view(torch.uint8).numpy().tobytes()) if t.numel() else b""
    import numpy as np

    return bytes(np.ascontiguousarray(t).tobytes())
