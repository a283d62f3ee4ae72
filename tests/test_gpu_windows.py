"""Windows where a copy or a kernel is still running when a call has returned (issue 12).

Each fix has a test on the fake backend (``fakegpu.py``: late copies, pinned blocks reused once
freed, counted device operations and host waits, per-thread device selection) and a test on a
real GPU, marked ``cuda`` (skipped without one, see conftest.py), written so that it fails
without the fix: ``torch.cuda._sleep`` keeps the stream busy so that the window stays open.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch

import tensorbridge as tb
from tensorbridge.adapters import devices as adapters_devices
from tensorbridge.transfer import inflight, staging
from tensorbridge.transfer.config import TransferConfig

from .fakegpu import FakeCuda, bits_of, on_fake
from .test_transfer import _installed

# GPU clock cycles for torch.cuda._sleep: ~50 ms on an H100, far longer than the host side below.
BUSY = 100_000_000


@pytest.fixture
def gpu() -> Iterator[FakeCuda]:
    yield from _installed(FakeCuda(devices=2, delay=0.0005, seed=12))


def _routes(x: Any, **kw: Any) -> list[str]:
    return [s.arg.route for p in tb.explain(x, **kw).plans for s in p.steps if s.kind in ("to_device", "to_host")]


def _pattern(n: int, seed: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).integers(0, 200, n, dtype=np.uint8)  # never the fake's GARBAGE/POISON


# --- 1. the sources of non_blocking=True copies stay alive until the copies have landed ----------


def _view_at_offset(gpu: FakeCuda, data: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    block = gpu.empty_pinned(data.size + 4096)  # torch's allocator owns the block, not the view
    view = block.numpy()[4096:]
    view[:] = data
    return view


def _foreign(gpu: FakeCuda, data: np.ndarray[Any, Any]) -> torch.Tensor:
    t = gpu.foreign_pinned(data.size)  # pinned by another library: no copy protects it
    t.numpy()[:] = data
    return t


@pytest.mark.parametrize("make", [_view_at_offset, _foreign], ids=["numpy_view_at_offset", "foreign_pinned"])
def test_a_dropped_pinned_source_is_kept_until_its_copy_has_landed(
    gpu: FakeCuda, make: Callable[[FakeCuda, np.ndarray[Any, Any]], Any]
) -> None:
    data = _pattern(3 * 4096, 1)
    assert _routes(make(gpu, data), device="cuda") == ["pinned"]
    # The plan cache keeps the first leaf of a kind it planned alive (through the plan's
    # description): one conversion of another source with these options goes first.
    tb.to_tensor(make(gpu, data), device="cuda", non_blocking=True)
    gpu.sync()
    src = make(gpu, data)
    gate = threading.Event()
    gpu.streams[0].put(gate.wait)  # the copy queues behind this
    out = tb.to_tensor(src, device="cuda", non_blocking=True)
    del src  # the caller's last reference: the block is reused unless tensorbridge holds it
    gc.collect()
    gate.set()
    gpu.sync()
    assert bits_of(out) == data.tobytes()
    assert inflight.held() >= 1, "let go only on a later call"
    tb.to_tensor(_foreign(gpu, data), device="cuda", non_blocking=True)  # a later call lets the first go
    assert inflight.held() == 1
    tb.release_pinned()
    assert inflight.held() == 0


def test_held_sources_are_bounded(gpu: FakeCuda) -> None:
    data = _pattern(4096, 2)
    outs = [tb.to_tensor(_foreign(gpu, data), device="cuda", non_blocking=True) for _ in range(100)]
    assert inflight.held() <= 64
    gpu.sync()
    assert all(bits_of(o) == data.tobytes() for o in outs)


# --- 2. blocking calls return after their device-side steps, not only after their copies -----------


@pytest.mark.parametrize("non_blocking", [None, False])
@pytest.mark.parametrize("shape", ["lone", "container"])
def test_a_blocking_call_returns_with_its_device_cast_done(
    gpu: FakeCuda, non_blocking: bool | None, shape: str
) -> None:
    a = np.arange(3000, dtype=np.int32)
    data: Any = a if shape == "lone" else {"big": a, "small": np.arange(8, dtype=np.int32)}
    plan = tb.explain(data, dtype=torch.float64, device="cuda").plans[0]
    kinds = [s.kind for s in plan.steps]
    assert kinds.index("cast") > kinds.index("to_device"), "the cast runs on the device, after the copy"
    out = tb.to_tensor(data, dtype=torch.float64, device="cuda", non_blocking=non_blocking)
    assert gpu.unsettled() == [], "a device operation was queued after the last wait"
    t = out if shape == "lone" else out["big"]
    assert t.dtype is torch.float64 and bits_of(t) == a.astype(np.float64).tobytes()


def test_non_blocking_true_does_not_wait_for_the_cast(gpu: FakeCuda) -> None:
    out = tb.to_tensor(np.arange(3000, dtype=np.int32), dtype=torch.float64, device="cuda", non_blocking=True)
    assert gpu.unsettled() == [0]
    gpu.sync()
    assert bits_of(out) == np.arange(3000, dtype=np.float64).tobytes()


# --- 3. the CUDA array interface's stream ---------------------------------------------------------


class _Cai:
    """A producer that only has the CUDA array interface (v3), like Numba's device arrays."""

    def __init__(self, **extra: Any) -> None:
        self.extra = extra

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {"shape": (4,), "typestr": "<f4", "data": (0, False), "version": 3, **self.extra}


@pytest.mark.parametrize(
    ("extra", "waits"),
    [({"stream": 12345}, [12345]), ({"stream": 1}, [1]), ({"stream": 2}, [2]), ({"stream": None}, []), ({}, [])],
    ids=["a_stream", "legacy_default", "per_thread_default", "none", "no_key"],
)
def test_the_producers_stream_is_waited_for(
    gpu: FakeCuda, monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], waits: list[int]
) -> None:
    # torch.as_tensor cannot import a CUDA array on this CPU-only torch: the fake device stands in.
    monkeypatch.setattr(adapters_devices, "_as_tensor", lambda obj: on_fake(torch.arange(4.0), 1))
    t = tb.to_tensor(_Cai(**extra))
    assert gpu.wait_streams == [(s, torch.device("cuda", 1)) for s in waits]
    assert t.device == torch.device("cuda", 1) and bits_of(t) == bits_of(torch.arange(4.0))


def test_stream_zero_is_refused(gpu: FakeCuda, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapters_devices, "_as_tensor", lambda obj: on_fake(torch.arange(4.0), 0))
    with pytest.raises(tb.DeviceError, match=r"stream=0 .*nonzero stream handle"):
        tb.to_tensor({"x": _Cai(stream=0)})
    assert gpu.wait_streams == []


# --- 4. the copy threads select the transfer's device --------------------------------------------


class _Spy:
    """The copy threads, with each task checked: which device it had selected when it finished."""

    def __init__(self, pool: ThreadPoolExecutor, gpu: FakeCuda, seen: list[int | None]) -> None:
        self.pool, self.gpu, self.seen = pool, gpu, seen

    def submit(self, fn: Callable[..., None], *args: Any) -> Future[None]:
        def task() -> None:
            self.gpu.deselect()  # a thread's selection from an earlier task does not count
            fn(*args)
            self.seen.append(self.gpu.current_selection())

        return self.pool.submit(task)


def test_every_copy_thread_task_runs_on_the_transfers_device(gpu: FakeCuda, monkeypatch: pytest.MonkeyPatch) -> None:
    tb.configure_transfers(chunk_bytes=1 << 16, pinned_cap_bytes=1 << 18, threads=3, small_max_bytes=512)
    seen: list[int | None] = []
    real = staging.threads
    monkeypatch.setattr(staging, "threads", lambda cfg: _Spy(real(cfg), gpu, seen))
    a = np.random.default_rng(3).standard_normal(1 << 17)  # 1 MiB: staged, in pieces for the threads
    assert _routes(a, device="cuda:1") == ["staged"]
    t = tb.to_tensor(a, device="cuda:1")
    assert len(seen) > 1, "the uploads ran on the copy threads"
    uploads = len(seen)
    back = tb.to_numpy(t)
    assert len(seen) > uploads, "the downloads ran on the copy threads"
    assert set(seen) == {1}
    assert bits_of(back) == a.tobytes()


# --- on a real GPU --------------------------------------------------------------------------------


def _busy(device: Any, cycles: int = BUSY) -> None:
    with torch.cuda.device(device):
        torch.cuda._sleep(cycles)


@pytest.fixture
def defaults() -> Iterator[None]:
    before = tb.configure_transfers()
    tb.configure_transfers(**{k: getattr(TransferConfig(), k) for k in TransferConfig.__dataclass_fields__})
    try:
        yield
    finally:
        torch.cuda.synchronize()
        tb.configure_transfers(**{k: getattr(before, k) for k in TransferConfig.__dataclass_fields__})
        tb.release_pinned()


@pytest.mark.cuda
def test_cuda_a_dropped_pinned_view_is_not_reused_mid_copy(defaults: None) -> None:
    n = 16 << 20
    data = _pattern(n, 4)
    block = torch.empty(n + 4096, dtype=torch.uint8, pin_memory=True)
    view = block.numpy()[4096:]  # not a block of torch's host allocator: torch records no event for it
    view[:] = data
    del block
    other = torch.empty(n + 4096, dtype=torch.uint8, pin_memory=True).numpy()[4096:]
    assert _routes(other, device="cuda") == ["pinned"]
    # The plan cache keeps the first leaf of a kind it planned alive: another one goes first.
    tb.to_tensor(other, device="cuda", non_blocking=True)
    torch.cuda.synchronize()
    del other
    _busy("cuda")  # the copy waits behind this on the stream
    out = tb.to_tensor(view, device="cuda", non_blocking=True)
    del view
    gc.collect()
    # Without the fix the block is free now, and these allocations get it (torch's allocator
    # reuses a freed block of the same size at once) and overwrite it before the copy runs.
    reused = [torch.zeros(n + 4096, dtype=torch.uint8, pin_memory=True) for _ in range(4)]
    torch.cuda.synchronize()
    assert bytes(out.cpu().numpy().tobytes()) == data.tobytes()
    del reused


@pytest.mark.cuda
@pytest.mark.parametrize("non_blocking", [None, False])
@pytest.mark.parametrize("shape", ["lone", "container"])
def test_cuda_a_blocking_call_returns_with_its_cast_done(defaults: None, non_blocking: bool | None, shape: str) -> None:
    a = np.arange(128 << 20, dtype=np.int32)  # a cast of 1.5 GiB of traffic: far longer than the return
    data: Any = a if shape == "lone" else {"big": a, "small": np.arange(8, dtype=np.int32)}
    kinds = [s.kind for s in tb.explain(data, dtype=torch.float64, device="cuda").plans[0].steps]
    assert kinds.index("cast") > kinds.index("to_device")
    out = tb.to_tensor(data, dtype=torch.float64, device="cuda", non_blocking=non_blocking)
    assert torch.cuda.current_stream().query(), "the call returned with the cast still running"
    t = out if shape == "lone" else out["big"]
    with torch.cuda.stream(torch.cuda.Stream()):  # another stream: sees only finished work
        got = t[-4:].cpu().tolist()
    assert got == [float(x) for x in a[-4:]]


class _CudaCai:
    """A device array exporting only ``__cuda_array_interface__`` v3, with the stream it was written on."""

    def __init__(self, t: torch.Tensor, stream: int | None) -> None:
        self.t, self.stream = t, stream

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        cai = dict(self.t.__cuda_array_interface__)
        cai["stream"] = self.stream
        return cai


@pytest.mark.cuda
def test_cuda_the_producers_stream_is_waited_for() -> None:
    base = torch.zeros(1 << 20, device="cuda")
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        _busy("cuda")
        base.fill_(7.0)  # written on the producer's stream, after ~50 ms
    t = tb.to_tensor(_CudaCai(base, side.cuda_stream))
    assert t.data_ptr() == base.data_ptr()
    ok = bool((t == 7.0).all().item())  # on the current stream: after the producer's work only if it waited
    torch.cuda.synchronize()
    assert ok, "the current stream read the memory before the producer's stream wrote it"


_ONLY_GPU1 = textwrap.dedent(
    """
    import numpy as np, torch, tensorbridge as tb
    torch.cuda.set_device(1)
    tb.configure_transfers(chunk_bytes=1 << 20, threads=4)
    a = np.random.default_rng(0).standard_normal(8 << 20)
    t = tb.to_tensor(a, device="cuda:1")
    assert (tb.to_numpy(t) == a).all()
    print("context on GPU 0:", torch._C._cuda_hasPrimaryContext(0))
    """
)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_a_process_on_gpu1_opens_no_context_on_gpu0() -> None:
    run = subprocess.run([sys.executable, "-c", _ONLY_GPU1], capture_output=True, text=True, timeout=300, check=True)
    assert "context on GPU 0: False" in run.stdout, run.stdout + run.stderr
