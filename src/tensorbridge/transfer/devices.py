"""Device backends: the one place that talks to CUDA (or MPS) for facts, memory, copies and events.

The planner asks a backend facts (is it available, how many devices, is this memory pinned,
which dtypes it lacks); the transfer engine asks it for pinned and device memory, for
asynchronous copies on the current stream, and for events. Everything above this layer is
device-agnostic, so tests can install a fake backend (``tests/fakegpu.py``) whose "device"
memory is host memory and whose copies land late, on a worker thread, and run the whole
engine on a machine without a GPU.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Final, Protocol

import torch

__all__ = ["Backend", "Event", "backend_for", "backends_version", "install_backend"]


class Event(Protocol):
    """A marker on a device stream: done once every operation queued before it is done."""

    def query(self) -> bool:
        """Return whether the work before the event has finished."""
        ...

    def synchronize(self) -> None:
        """Block until the work before the event has finished."""
        ...


class Backend(Protocol):
    """What the planner and the transfer engine need from one device type."""

    type: str
    #: Whether the engine stages, packs and pipelines copies (False: torch's ``.to()`` only).
    staging: bool

    def available(self) -> bool:
        """Return whether this device type can be used at all."""
        ...

    def device_count(self) -> int:
        """Return how many devices of this type exist."""
        ...

    def resolve(self, device: torch.device) -> torch.device:
        """Return ``device`` with its index filled in (``cuda`` -> ``cuda:<current>``)."""
        ...

    def unsupported(self, dtype: torch.dtype) -> str | None:
        """Return why ``dtype`` cannot live on this device type, or None."""
        ...

    def is_pinned(self, t: torch.Tensor) -> bool:
        """Return whether the host tensor ``t`` is in page-locked memory."""
        ...

    def empty_pinned(self, nbytes: int) -> torch.Tensor:
        """Return ``nbytes`` of page-locked host memory as a uint8 tensor."""
        ...

    def empty(self, nbytes: int, device: torch.device) -> torch.Tensor:
        """Return ``nbytes`` of device memory as a uint8 tensor."""
        ...

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Queue ``dst.copy_(src)`` on the device side's current stream and return at once."""
        ...

    def record(self, device: torch.device) -> Event:
        """Return an event recorded on ``device``'s current stream."""
        ...

    def move(self, t: torch.Tensor, device: torch.device, non_blocking: bool) -> torch.Tensor:
        """Torch's own ``t.to(device)``."""
        ...

    def empty_host_cache(self) -> None:
        """Return cached pinned memory that no tensor uses to the system."""
        ...

    def use(self, device: torch.device) -> None:
        """Make ``device`` the calling thread's current device (engine threads call it first)."""
        ...

    def wait_stream(self, stream: int, device: torch.device) -> None:
        """Make ``device``'s current stream wait for the work queued so far on the raw stream handle ``stream``."""
        ...

    def new_stream(self, device: torch.device) -> Any:
        """Return a new stream on ``device``, for copies that overlap the current stream's work."""
        ...

    def on_stream(self, stream: Any) -> AbstractContextManager[Any]:
        """Within: ``stream`` is the calling thread's current stream (copies, events, allocations)."""
        ...

    def wait_event(self, event: Event, device: torch.device) -> None:
        """Make ``device``'s current stream wait for ``event`` (the host does not wait)."""
        ...

    def record_stream(self, t: torch.Tensor, device: torch.device) -> None:
        """Tell the allocator that ``device``'s current stream uses ``t`` (allocated on another stream)."""
        ...


class CudaBackend:
    """CUDA through torch: pinned memory from torch's host allocator, copies on the current stream."""

    type = "cuda"
    staging = True

    def available(self) -> bool:
        return torch.cuda.is_available()

    def device_count(self) -> int:
        return torch.cuda.device_count()

    def resolve(self, device: torch.device) -> torch.device:
        return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())

    def unsupported(self, dtype: torch.dtype) -> str | None:
        return None

    def is_pinned(self, t: torch.Tensor) -> bool:
        return bool(t.is_pinned())

    def empty_pinned(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def empty(self, nbytes: int, device: torch.device) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, device=device)

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        # The copy runs on the current stream of the CUDA side's device; torch also records it
        # with its pinned-memory allocator, so pinned blocks are never recycled mid-copy.
        dst.copy_(src, non_blocking=True)

    def record(self, device: torch.device) -> Event:
        # A blocking event: host threads waiting on it sleep instead of spinning on a core that
        # another thread needs for copying.
        event = torch.cuda.Event(blocking=True)  # type: ignore[no-untyped-call]  # torch leaves __init__ untyped
        event.record(torch.cuda.current_stream(device))
        return event

    def move(self, t: torch.Tensor, device: torch.device, non_blocking: bool) -> torch.Tensor:
        return t.to(device, non_blocking=non_blocking)

    def empty_host_cache(self) -> None:
        empty = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None)
        if empty is not None:  # torch >= 2.9; older versions keep the cache until exit
            empty()

    def use(self, device: torch.device) -> None:
        # A thread that makes a CUDA call with no device selected opens a context on GPU 0
        # (hundreds of MiB there, in every process that only uses another GPU).
        torch.cuda.set_device(device)

    def wait_stream(self, stream: int, device: torch.device) -> None:
        # 1 and 2 are the legacy and per-thread default streams: CUDA takes them as handles.
        producer = torch.cuda.ExternalStream(stream, device=device)  # type: ignore[no-untyped-call]  # untyped in torch
        torch.cuda.current_stream(device).wait_stream(producer)

    def new_stream(self, device: torch.device) -> Any:
        return torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]  # untyped in torch

    def on_stream(self, stream: Any) -> AbstractContextManager[Any]:
        return torch.cuda.stream(stream)

    def wait_event(self, event: Event, device: torch.device) -> None:
        torch.cuda.current_stream(device).wait_event(event)  # type: ignore[arg-type]  # a torch.cuda.Event

    def record_stream(self, t: torch.Tensor, device: torch.device) -> None:
        t.record_stream(torch.cuda.current_stream(device))


# float64 (and complex128, two of them) have no MPS kernels.
_MPS_LACKS: Final = frozenset({torch.float64, torch.complex128})


class MpsBackend:
    """Apple's MPS: unified memory, so no staging; some dtypes are missing."""

    type = "mps"
    staging = False

    def available(self) -> bool:
        return bool(torch.backends.mps.is_available())

    def device_count(self) -> int:
        return 1 if self.available() else 0

    def resolve(self, device: torch.device) -> torch.device:
        return torch.device("mps", 0) if device.index is None else device

    def unsupported(self, dtype: torch.dtype) -> str | None:
        if dtype in _MPS_LACKS:
            return f"MPS has no {str(dtype).removeprefix('torch.')} support"
        return None

    def is_pinned(self, t: torch.Tensor) -> bool:
        return False

    def empty_pinned(self, nbytes: int) -> torch.Tensor:
        raise AssertionError("MPS does not stage")

    def empty(self, nbytes: int, device: torch.device) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, device=device)

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        dst.copy_(src)

    def record(self, device: torch.device) -> Event:
        raise AssertionError("MPS does not stage")

    def move(self, t: torch.Tensor, device: torch.device, non_blocking: bool) -> torch.Tensor:
        return t.to(device, non_blocking=non_blocking)

    def empty_host_cache(self) -> None:
        return None

    def use(self, device: torch.device) -> None:
        return None

    def wait_stream(self, stream: int, device: torch.device) -> None:
        return None

    # MPS does not stage: there is no side stream to copy on, and nothing to wait for.
    def new_stream(self, device: torch.device) -> Any:
        return None

    def on_stream(self, stream: Any) -> AbstractContextManager[Any]:
        return nullcontext()

    def wait_event(self, event: Event, device: torch.device) -> None:
        return None

    def record_stream(self, t: torch.Tensor, device: torch.device) -> None:
        return None


_BACKENDS: dict[str, Backend] = {"cuda": CudaBackend(), "mps": MpsBackend()}


def backend_for(device_type: str) -> Backend | None:
    """Return the backend for a device type, or None (``cpu``, and types torch handles alone)."""
    return _BACKENDS.get(device_type)


def install_backend(backend: Backend) -> Backend | None:
    """Replace the backend for ``backend.type``; return the one it replaces (tests use this)."""
    old = _BACKENDS.get(backend.type)
    _BACKENDS[backend.type] = backend
    _VERSION[0] += 1
    return old


_VERSION: list[int] = [0]


def backends_version() -> int:
    """A number that changes whenever a backend is installed (plans depend on the backends)."""
    return _VERSION[0]
