"""The transfer engine's own Python cost per leaf, measurable without a GPU.

A packed batch to or from a GPU costs the copy (bytes / link speed, plus a fixed latency) and
the engine's Python work per leaf: gathering, views, rebuilding the container. The second
part decides the "many small leaves" targets, and it does not need a GPU to measure: this
script installs a backend whose "device" is host memory and whose copies happen at once, and
uses tiny leaves (16 bytes), so what is timed is almost only that Python work.

Run: ``python benchmarks/bench_overhead.py`` (about 15 s). It prints, per leaf, tensorbridge's
time and the time of the host-only loop every user writes (``torch.from_numpy(x).clone()`` /
``t.clone().numpy()``), which does the same per-leaf Python work minus any packing; on a GPU
a per-leaf ``.to("cuda")`` adds a copy of ~15-20 us to each iteration of that loop.

Every case goes through the public calls (``to_tensor(..., device="cuda")``, ``to_numpy``), so
it measures the whole pipeline: walk, plans, routes, the engine's packed route, the rebuild.
"Device" tensors going back are host tensors that say they are on ``cuda:0``, at no extra
cost per torch call.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import tensorbridge as tb
from tensorbridge.transfer.devices import install_backend


class _Done:
    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        return None


_CUDA0 = torch.device("cuda", 0)


class _OnDevice(torch.Tensor):
    """Host memory that says it is on ``cuda:0``; torch calls on it cost what they cost on a plain tensor."""

    __torch_function__ = torch._C._disabled_torch_function_impl  # type: ignore[assignment]

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return _CUDA0

    @property
    def is_cpu(self) -> bool:  # type: ignore[override]
        return False

    def numpy(self, *, force: bool = False) -> Any:
        raise TypeError("can't convert cuda:0 device type tensor to numpy")


def _on_device(a: np.ndarray[Any, Any]) -> torch.Tensor:
    return torch.from_numpy(a).clone().as_subclass(_OnDevice)


class _Immediate:
    """The CUDA backend protocol with host memory and copies that finish at once."""

    type = "cuda"
    staging = True

    def available(self) -> bool:
        return True

    def device_count(self) -> int:
        return 1

    def resolve(self, device: torch.device) -> torch.device:
        return torch.device("cuda", 0)

    def unsupported(self, dtype: torch.dtype) -> str | None:
        return None

    def is_pinned(self, t: torch.Tensor) -> bool:
        return False

    def empty_pinned(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8)

    def empty(self, nbytes: int, device: torch.device) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8)

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        dst.copy_(src)

    def record(self, device: torch.device) -> _Done:
        return _Done()

    def move(self, t: torch.Tensor, device: torch.device, non_blocking: bool) -> torch.Tensor:
        return t.clone()

    def empty_host_cache(self) -> None:
        return None


def per_call(fn: Callable[[], Any], rounds: int) -> float:
    """Median seconds per call over ``rounds`` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _model(layers: int) -> dict[str, np.ndarray[Any, Any]]:
    """A small model's weights: per layer a (64, 64) float32 weight (16 KiB) and a (64,) bias."""
    rng = np.random.default_rng(1)
    out = {}
    for i in range(layers):
        out[f"layer{i}.weight"] = rng.random((64, 64), dtype=np.float32)
        out[f"layer{i}.bias"] = rng.random(64, dtype=np.float32)
    return out


def main() -> None:
    backend = _Immediate()
    old = install_backend(backend)
    # The "device" copies stand in for DMA, which costs no host CPU: one intra-op thread keeps
    # torch's thread team from turning them into noise on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n = 256
        arrays = {f"k{i}": np.random.default_rng(i).random(4, dtype=np.float32) for i in range(n)}
        on_device = {k: _on_device(a) for k, a in arrays.items()}
        tensors = [torch.from_numpy(a).clone() for a in arrays.values()]
        one = np.random.default_rng(0).random(1024, dtype=np.float32)  # 4 KiB
        model = _model(50)  # 100 arrays, 833 KiB: one packed group each way
        model_on_device = {k: _on_device(a) for k, a in model.items()}
        model_tensors = {k: torch.from_numpy(a).clone() for k, a in model.items()}
        m = len(model)
        # Checked before they are timed: every case gives back its values.
        for src, dst in [(arrays, tb.to_tensor(arrays, device="cuda")), (model, tb.to_tensor(model, device="cuda"))]:
            assert all(np.array_equal(dst[k].numpy(), a) for k, a in src.items())
        for src, back in [(arrays, tb.to_numpy(on_device)), (model, tb.to_numpy(model_on_device))]:
            assert all(type(back[k]) is np.ndarray and np.array_equal(back[k], a) for k, a in src.items())

        def trip() -> None:
            tb.to_tensor(model, device="cuda")
            tb.to_numpy(model_on_device)

        def trip_base() -> None:
            {k: torch.from_numpy(v).clone() for k, v in model.items()}
            {k: t.clone().numpy() for k, t in model_tensors.items()}

        rows = []
        for _ in range(3):  # alternate candidate and baseline, three times
            up = per_call(lambda: tb.to_tensor(arrays, device="cuda"), 50)
            up_base = per_call(lambda: {k: torch.from_numpy(v).clone() for k, v in arrays.items()}, 50)
            down = per_call(lambda: tb.to_numpy(on_device), 50)
            down_base = per_call(lambda: [t.clone().numpy() for t in tensors], 50)
            lone = per_call(lambda: tb.to_tensor(one, device="cuda"), 2000)
            lone_base = per_call(lambda: torch.from_numpy(one).clone(), 2000)
            rt = per_call(trip, 100)
            rt_base = per_call(trip_base, 100)
            rows.append((up, up_base, down, down_base, lone, lone_base, rt, rt_base))
        up, up_base, down, down_base, lone, lone_base, rt, rt_base = (
            statistics.median(c) for c in zip(*rows, strict=True)
        )
        print(f"tensorbridge {tb.__version__}, torch {torch.__version__}, numpy {np.__version__}; no GPU involved")
        print("| case | tensorbridge | host-only loop | ratio |")
        print("|---|---|---|---|")
        print(
            f"| {n} leaves of 16 B to the (immediate) device, per leaf | {up / n * 1e6:.2f} us "
            f"| {up_base / n * 1e6:.2f} us | {up / up_base:.2f}x |"
        )
        print(
            f"| {n} leaves of 16 B back to NumPy (packed), per leaf | {down / n * 1e6:.2f} us "
            f"| {down_base / n * 1e6:.2f} us | {down / down_base:.2f}x |"
        )
        print(
            f"| one 4 KiB array, extra latency over the bare copy | {(lone - lone_base) * 1e6:+.2f} us "
            f"| {lone_base * 1e6:.2f} us | {lone / lone_base:.2f}x |"
        )
        print(
            f"| {m} arrays of a model (64x64 and 64 float32) in a dict to the device and back, per leaf "
            f"| {rt / m * 1e6:.2f} us | {rt_base / m * 1e6:.2f} us | {rt / rt_base:.2f}x |"
        )
    finally:
        torch.set_num_threads(threads)
        assert old is not None
        install_backend(old)
        tb.release_pinned()


if __name__ == "__main__":
    main()
