"""``tb.prefetch`` on the CPU, and on a fake CUDA backend whose copies land late.

The fake's streams are threads that run queued work in order; a "kernel" of the consumer is a
read queued on the device's default stream. Device memory starts as garbage and side-stream
copies can be stalled behind a gate, so a batch handed out before its copies are done (a
missing stream wait) shows up as wrong bytes, deterministically.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

import tensorbridge as tb
from tensorbridge.transfer.devices import install_backend

from .fakegpu import FakeCuda, FakeCudaTensor, bits_of, plain

SMALL = {"chunk_bytes": 4096, "ring": 3, "pinned_cap_bytes": 4 * 4096, "threads": 2, "small_max_bytes": 512}


@pytest.fixture
def gpu() -> Iterator[FakeCuda]:
    before = tb.configure_transfers()
    tb.configure_transfers(**SMALL)
    fake = FakeCuda(devices=1, delay=0.002, seed=3)
    old = install_backend(fake)
    FakeCudaTensor.backend = fake
    try:
        yield fake
    finally:
        fake.drain()
        FakeCudaTensor.backend = None
        assert old is not None
        install_backend(old)
        tb.release_pinned()
        tb.configure_transfers(**dataclasses.asdict(before))


def _batch(k: int) -> dict[str, Any]:
    """Many small leaves (packed), one large leaf (staged in chunks), and a label."""
    rng = np.random.default_rng(k)
    return {
        **{f"f{i}": rng.random(16, dtype=np.float32) for i in range(6)},
        "image": rng.integers(0, 255, (3, 40, 40), dtype=np.uint8),
        "label": np.int64(k),
    }


class _Gate:
    """Holds every copy of the side stream until opened: stalled copies."""

    def __init__(self, fake: FakeCuda) -> None:
        self.open = threading.Event()
        made = fake.new_stream

        def new_stream(device: torch.device) -> Any:
            s = made(device)
            s.put(lambda: self.open.wait(30))
            return s

        fake.new_stream = new_stream  # type: ignore[method-assign]


def _read_on_consumer_stream(fake: FakeCuda, batch: dict[str, Any], into: list[dict[str, bytes]]) -> None:
    """A consumer kernel: reads the batch's bytes when the default stream reaches it."""
    fake.streams[0].put(lambda: into.append({k: bits_of(plain(v)) for k, v in batch.items()}))


def test_on_the_cpu_each_batch_is_converted_in_order_with_its_containers() -> None:
    class Pair(NamedTuple):
        x: Any
        y: Any

    batches = [Pair(np.full(3, k), (np.float32(k), "name")) for k in range(4)]
    got = list(tb.prefetch(batches, "cpu"))
    assert [type(b) for b in got] == [Pair] * 4
    assert [b.x.tolist() for b in got] == [[k] * 3 for k in range(4)]
    assert type(got[2].y) is tuple and got[2].y[1] == "name" and got[2].y[0].dtype is torch.float32


def test_a_cuda_device_on_a_cpu_only_torch_is_a_device_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this torch has CUDA")
    with pytest.raises(tb.DeviceError, match=r"prefetch at device: device cuda was asked for but CUDA is not"):
        tb.prefetch([_batch(0)], "cuda")


@pytest.mark.parametrize("depth", [0, -1, True, 1.5, "2"])
def test_depth_must_be_a_positive_int(depth: object) -> None:
    with pytest.raises(tb.UnsupportedError, match="depth must be an int of at least 1"):
        tb.prefetch([], "cpu", depth=depth)  # type: ignore[arg-type]


def test_each_iter_is_a_new_pass_and_len_is_the_loaders() -> None:
    p = tb.prefetch([np.arange(2), np.arange(3)], "cpu", dtype=torch.float32)
    assert len(p) == 2
    first = [b.tolist() for b in p]
    assert first == [b.tolist() for b in p] == [[0.0, 1.0], [0.0, 1.0, 2.0]]
    assert next(iter(p)).dtype is torch.float32
    with pytest.raises(TypeError):
        len(tb.prefetch(iter([]), "cpu"))


def test_the_consumer_never_sees_a_batch_before_its_copies_are_done(gpu: FakeCuda) -> None:
    tb.configure_transfers(pinned_cap_bytes=1 << 20)  # room for every batch in flight: the host never waits
    gate = _Gate(gpu)
    expected = [_batch(k) for k in range(5)]
    seen: list[dict[str, bytes]] = []
    it = iter(tb.prefetch(expected, "cuda", depth=2))
    first = next(it)  # the host does not wait for stalled copies
    assert first["image"].device == torch.device("cuda", 0)
    _read_on_consumer_stream(gpu, first, seen)
    time.sleep(0.05)
    assert seen == []  # the consumer's stream waits for the side stream's event
    gate.open.set()
    for batch in it:
        _read_on_consumer_stream(gpu, batch, seen)
    gpu.sync(0)
    assert len(seen) == 5
    for k, snap in enumerate(seen):
        assert snap == {key: bits_of(torch.from_numpy(np.asarray(v))) for key, v in expected[k].items()}, k
    assert gpu.side_streams and gpu.recorded_streams >= 5 * len(expected[0])


def test_without_the_stream_wait_the_test_would_see_garbage(gpu: FakeCuda, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: a prefetcher that skips the wait hands out unfilled memory."""
    tb.configure_transfers(pinned_cap_bytes=1 << 20)
    gate = _Gate(gpu)
    monkeypatch.setattr(gpu, "wait_event", lambda event, device: None)
    seen: list[dict[str, bytes]] = []
    batch = next(iter(tb.prefetch([_batch(0)], "cuda")))
    _read_on_consumer_stream(gpu, batch, seen)
    gpu.streams[0].put(lambda: None)
    time.sleep(0.05)
    gate.open.set()
    gpu.sync(0)
    assert seen and seen[0]["image"] != bits_of(torch.from_numpy(_batch(0)["image"]))


def test_stalled_copies_with_the_pinned_pool_full_make_the_producer_wait(gpu: FakeCuda) -> None:
    """With pinned memory capped below what the batches in flight need, moving the next batch waits for
    staging buffers to come back: the pool stays bounded, and every batch still arrives whole."""
    gate = _Gate(gpu)
    opener = threading.Timer(0.2, gate.open.set)
    opener.start()
    expected = [_batch(k) for k in range(4)]
    seen: list[dict[str, bytes]] = []
    start = time.perf_counter()
    for batch in tb.prefetch(expected, "cuda", depth=2):
        _read_on_consumer_stream(gpu, batch, seen)
        assert tb.transfer_stats().held_bytes <= SMALL["pinned_cap_bytes"]
    assert time.perf_counter() - start >= 0.15  # it waited for the stalled copies
    gpu.sync(0)
    opener.join()
    for k, snap in enumerate(seen):
        assert snap == {key: bits_of(torch.from_numpy(np.asarray(v))) for key, v in expected[k].items()}, k


def test_depth_bounds_the_batches_in_flight(gpu: FakeCuda) -> None:
    pulled: list[int] = []

    def source() -> Iterator[dict[str, Any]]:
        for k in range(6):
            pulled.append(k)
            yield _batch(k)

    it = iter(tb.prefetch(source(), "cuda", depth=2))
    next(it)
    assert len(pulled) == 3  # the one handed out, and two behind it
    next(it)
    assert len(pulled) == 4
    assert len(list(it)) == 4 and len(pulled) == 6


def test_a_loader_error_comes_after_the_batches_before_it(gpu: FakeCuda) -> None:
    def source() -> Iterator[dict[str, Any]]:
        yield _batch(0)
        yield _batch(1)
        yield _batch(2)
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for batch in tb.prefetch(source(), "cuda", depth=3):
            got.append(int(batch["label"].item()))  # an operation: ordered on its stream
    assert got == [0, 1, 2]
    assert tb.transfer_stats().held_bytes == 0  # the pass ended: its pinned buffers were freed


def test_a_conversion_error_in_the_middle_of_an_epoch(gpu: FakeCuda) -> None:
    batches = [_batch(0), _batch(1), {"x": np.ma.masked_array([1.0, 2.0], mask=[0, 1])}, _batch(3)]
    got = []
    with pytest.raises(tb.UnsupportedError, match=r"data\['x'\]: a masked array's mask would be lost"):
        for batch in tb.prefetch(batches, "cuda", depth=2):
            got.append(int(batch["label"].item()))  # an operation: ordered on its stream
    assert got == [0, 1]


def test_closing_early_waits_for_the_copies_and_frees_the_pool(gpu: FakeCuda) -> None:
    closed = []

    def source() -> Iterator[dict[str, Any]]:
        try:
            for k in range(100):
                yield _batch(k)
        finally:
            closed.append(True)

    it = iter(tb.prefetch(source(), "cuda", depth=3))
    next(it)
    assert tb.transfer_stats().held_bytes > 0  # staging buffers of the batches in flight
    it.close()  # type: ignore[attr-defined]
    assert closed == [True]
    assert tb.transfer_stats().held_bytes == 0
    gpu.drain()
    gc.collect()
    assert gpu.live_pinned_bytes() == 0


def test_the_prefetcher_closes_its_passes_as_a_context_manager(gpu: FakeCuda) -> None:
    with tb.prefetch([_batch(k) for k in range(10)], "cuda") as p:
        next(iter(p))
        assert tb.transfer_stats().held_bytes > 0
    assert tb.transfer_stats().held_bytes == 0


def test_collated_batches_keep_their_containers_on_the_device(gpu: FakeCuda) -> None:
    @dataclasses.dataclass(frozen=True)
    class Sample:
        image: np.ndarray[Any, Any]
        label: int

    samples = [Sample(np.full((2, 3), k, np.uint8)[:, ::-1], k) for k in range(8)]
    loader = [tb.collate(samples[:4]), tb.collate(samples[4:])]
    got = list(tb.prefetch(loader, "cuda"))
    gpu.sync(0)
    assert [type(b) for b in got] == [Sample, Sample]
    assert got[1].image.device == torch.device("cuda", 0)
    assert plain(got[1].label).tolist() == [4, 5, 6, 7]
    assert plain(got[1].image)[:, 0, 0].tolist() == [4, 5, 6, 7]


def test_a_pinned_batch_is_one_page_locked_allocation_and_moves_whole(gpu: FakeCuda) -> None:
    samples = [{"x": np.full(3, k, np.float32)[::-1], "y": k, "name": str(k)} for k in range(4)]
    batch = tb.Collate(pin_memory=True)(samples)
    assert gpu.is_pinned(batch["x"]) and gpu.is_pinned(batch["y"]) and batch["name"] == ["0", "1", "2", "3"]
    assert batch["x"].untyped_storage().data_ptr() == batch["y"].untyped_storage().data_ptr()
    assert gpu.pinned_allocs == 1
    moved = next(iter(tb.prefetch([batch], "cuda")))
    assert moved["y"].tolist() == [0, 1, 2, 3] and moved["x"].device == torch.device("cuda", 0)


# --- on a real GPU -------------------------------------------------------------------------------


@pytest.mark.cuda
def test_on_cuda_every_batch_is_whole_when_the_consumer_stream_uses_it() -> None:
    expected = [_batch(k) for k in range(12)]
    sums = []
    for batch in tb.prefetch(expected, "cuda", depth=3):
        torch.cuda._sleep(1_000_000)  # type: ignore[attr-defined]  # a busy consumer: copies overlap it
        sums.append({k: v.double().sum() for k, v in batch.items()})
    torch.cuda.synchronize()
    for k, got in enumerate(sums):
        assert {key: float(v.item()) for key, v in got.items()} == {
            key: float(np.asarray(v, np.float64).sum()) for key, v in expected[k].items()
        }
    assert tb.transfer_stats().held_bytes == 0


@pytest.mark.cuda
def test_on_cuda_a_pinned_batch_is_one_page_locked_allocation() -> None:
    batch = tb.collate([{"x": np.full(3, k, np.float32), "y": k} for k in range(4)], pin_memory=True)
    assert batch["x"].is_pinned() and batch["y"].is_pinned()
    assert batch["x"].untyped_storage().data_ptr() == batch["y"].untyped_storage().data_ptr()
    moved = next(iter(tb.prefetch([batch], "cuda")))
    assert moved["y"].tolist() == [0, 1, 2, 3]
