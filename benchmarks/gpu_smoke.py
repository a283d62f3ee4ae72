#!/usr/bin/env python
"""Smoke round trips through tensorbridge's public API on every transfer route, checked bit for bit.

Run on a GPU machine (the first stage of ``benchmarks/gpu_check.sh``), or without one:

    python benchmarks/gpu_smoke.py          # real CUDA device (cuda:current)
    python benchmarks/gpu_smoke.py --fake   # no GPU: the fake backend of tests/fakegpu.py

Every combination of

- direction and route: host -> device through ``staged``, ``packed``, ``direct`` (a few small
  leaves, and a lone one) and ``pinned``; device -> host through ``staged``, ``packed`` and
  ``direct`` (``pinned`` is a host-source route only: there is no device -> host ``pinned``);
- ``non_blocking``: None (no option: the fast paths where they apply), False, True;
- stream: the current stream, and a new side stream made current (real CUDA only: the fake
  backend has one stream per device)

runs once, with a long kernel queued first on that stream (``torch.cuda._sleep``: the copies
queue behind it, so a missing wait shows as wrong bytes) and the caching allocator's free
blocks for that stream filled with garbage (a result landing in a block that already holds the
expected bytes would hide a missing wait). Every case draws its data from its own seed. The
route ``tb.explain`` planned is printed and must be the one the case is about.

Checks: uploads with ``non_blocking=True`` are read on the same stream (ordered after the
copies); blocking uploads must leave the stream idle and are read on another stream with no
synchronization; downloads are compared as soon as ``to_numpy`` returns, in every mode.
In fake mode the fake backend's copies land late (a random delay on a worker thread) and fresh
"device" memory is 0xAB garbage, which plays the part of the busy stream and the garbage caches.

Exit status: 0 when every case is exact, 1 otherwise; without CUDA and without ``--fake``: a
message, 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

import tensorbridge as tb

REPO: Final = Path(__file__).resolve().parent.parent
# Small settings (as in tests/test_cuda.py): tiny arrays take every route, through many chunks.
SMALL: Final = {"chunk_bytes": 4096, "ring": 3, "pinned_cap_bytes": 4 * 4096, "threads": 3, "small_max_bytes": 512}
NON_BLOCKING: Final = (None, False, True)
BUSY_CYCLES: Final = 100_000_000  # ~50 ms of torch.cuda._sleep at 2 GHz
GARBAGE_SIZES: Final = (64 << 20, 16 << 20, 4 << 20, 1 << 20, 256 << 10, 64 << 10, 16 << 10, 4 << 10, 512)
GARBAGE_MAX_BLOCKS: Final = 1024  # per size

Array = np.ndarray[Any, Any]


def bits(a: Array) -> bytes:
    """Values' bytes in logical C order, native byte order."""
    native = a.astype(a.dtype.newbyteorder("="), copy=False) if not a.dtype.isnative else a
    return np.ascontiguousarray(native).tobytes()


def rand(dtype: Any, shape: tuple[int, ...], seed: int) -> Array:
    """Random bit patterns of ``dtype`` (NaN payloads included)."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    return np.random.default_rng(seed).integers(0, 256, n * dt.itemsize, dtype=np.uint8).view(dt).reshape(shape)


def leaves(x: Any) -> list[Any]:
    """The leaves of the dicts and lists built here, in walk order."""
    if isinstance(x, dict):
        return [leaf for v in x.values() for leaf in leaves(v)]
    if isinstance(x, list):
        return [leaf for v in x for leaf in leaves(v)]
    return [x]


def routes(explanation: tb.Explanation) -> list[str]:
    """The transfer route of each leaf's plan (leaves with no transfer left out)."""
    out = []
    for plan in explanation.plans:
        for step in plan.steps:
            if step.kind in ("to_device", "to_host"):
                out.append(step.arg.route)
    return out


# --- the device side --------------------------------------------------------------------------------


@dataclass
class Side:
    """What the cases need from the device side: real CUDA or the fake backend."""

    fake: bool
    device: torch.device
    streams: tuple[str, ...]
    stream: Callable[[str], Any]  # kind -> the stream under test (None in fake mode)
    on_stream: Callable[[Any], contextlib.AbstractContextManager[Any]]
    busy: Callable[[], None]
    garbage: Callable[[Any, int], None]
    idle: Callable[[], bool]
    sync: Callable[[], None]
    put: Callable[[Array], torch.Tensor]  # a host array on the device (setup)
    pinned: Callable[[Array], torch.Tensor]  # a page-locked host tensor holding the array
    read_ordered: Callable[[torch.Tensor], bytes]  # bytes, read after the work queued on the stream
    read_elsewhere: Callable[[torch.Tensor], bytes]  # bytes, read with no ordering or waiting
    describe: str


def _cuda_bits(t: torch.Tensor) -> bytes:
    t = t.detach().resolve_conj().resolve_neg()
    if t.is_complex():
        t = torch.view_as_real(t)
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    host = t.view(ints[t.element_size()]).cpu().contiguous()
    return bytes(host.reshape(-1).view(torch.uint8).numpy().tobytes())


def _cuda_garbage(stream: Any, seed: int) -> None:
    """Fill the caching allocator's free blocks for ``stream`` with garbage (see tests/test_cuda.py)."""
    device = stream.device
    pattern = 0xA0 | (seed & 0x0F)
    held: list[torch.Tensor] = []
    with torch.cuda.device(device), torch.cuda.stream(stream):
        for size in GARBAGE_SIZES:
            for _ in range(GARBAGE_MAX_BLOCKS):
                reserved = torch.cuda.memory_reserved(device)
                block = torch.empty(size, dtype=torch.uint8, device=device)
                if torch.cuda.memory_reserved(device) > reserved:  # no cached block of this size left
                    del block
                    torch.cuda.empty_cache()  # frees only that new segment: the garbage is held
                    break
                block.fill_(pattern)
                held.append(block)
        stream.synchronize()
        held.clear()
    stream.synchronize()


def cuda_side() -> Side:
    dev = torch.device("cuda", torch.cuda.current_device())

    def stream(kind: str) -> Any:
        return torch.cuda.Stream(dev) if kind == "side" else torch.cuda.current_stream(dev)

    def on_stream(s: Any) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext() if s == torch.cuda.current_stream(dev) else torch.cuda.stream(s)

    def read_elsewhere(t: torch.Tensor) -> bytes:
        other = torch.cuda.Stream(t.device)
        if other == torch.cuda.current_stream(t.device):
            other = torch.cuda.Stream(t.device)
        with torch.cuda.stream(other):
            return _cuda_bits(t)

    def pinned(a: Array) -> torch.Tensor:
        p = torch.empty(a.shape, dtype=torch.from_numpy(a).dtype, pin_memory=True)
        p.copy_(torch.from_numpy(a))
        return p

    return Side(
        fake=False,
        device=dev,
        streams=("current", "side"),
        stream=stream,
        on_stream=on_stream,
        busy=lambda: torch.cuda._sleep(BUSY_CYCLES),
        garbage=_cuda_garbage,
        idle=lambda: bool(torch.cuda.current_stream(dev).query()),
        sync=lambda: torch.cuda.current_stream(dev).synchronize(),
        put=lambda a: torch.from_numpy(a).to(dev),
        pinned=pinned,
        read_ordered=_cuda_bits,
        read_elsewhere=read_elsewhere,
        describe=f"{torch.cuda.get_device_name(dev)} ({dev}), torch {torch.__version__}, CUDA {torch.version.cuda}",
    )


@contextlib.contextmanager
def fake_side() -> Iterator[Side]:
    """The fake CUDA backend installed as benchmarks/bench_transfer.py --fake installs it; restored on exit."""
    sys.path.insert(0, str(REPO))
    from tests.fakegpu import FakeCuda, FakeCudaTensor, bits_of, on_fake

    from tensorbridge.transfer.devices import install_backend

    fake = FakeCuda(devices=1, delay=0.0005, seed=1)  # copies land late, in order, on a worker thread
    keep: list[torch.Tensor] = []  # the fake forgets a pinned buffer when its tensor dies

    def pinned(a: Array) -> torch.Tensor:
        keep.append(fake.empty_pinned(a.nbytes))
        p = keep[-1].view(torch.from_numpy(a).dtype).view(a.shape)
        p.copy_(torch.from_numpy(a))
        return p

    old = install_backend(fake)
    FakeCudaTensor.backend = fake
    try:
        yield Side(
            fake=True,
            device=torch.device("cuda", 0),
            streams=("current",),
            stream=lambda kind: None,
            on_stream=lambda s: contextlib.nullcontext(),
            busy=lambda: None,  # the fake's copies are late anyway
            garbage=lambda s, seed: None,  # fresh fake device memory is 0xAB garbage
            idle=lambda: not any(st.pending for st in fake.streams),
            sync=fake.sync,
            put=lambda a: on_fake(torch.from_numpy(np.ascontiguousarray(a))),
            pinned=pinned,
            read_ordered=lambda t: (fake.sync(), bits_of(t))[1],
            read_elsewhere=bits_of,  # memory as it is now: no waiting
            describe=f"FAKE backend (tests/fakegpu.py: host memory, late copies), torch {torch.__version__}",
        )
    finally:
        FakeCudaTensor.backend = None
        if old is not None:
            install_backend(old)


# --- the cases ----------------------------------------------------------------------------------


UPLOADS: Final = ("staged", "packed", "direct", "lone", "pinned")
DOWNLOADS: Final = ("staged", "packed", "direct", "lone")
ROUTE_OF: Final = {"staged": "staged", "packed": "packed", "direct": "direct", "lone": "direct", "pinned": "pinned"}


def upload_data(side: Side, kind: str, seed: int) -> Any:
    if kind == "staged":  # pageable, larger than small_max_bytes: chunks through the ring
        return {
            "c": rand(np.float32, (20, 250), seed),
            "fortran": np.asfortranarray(rand(np.float64, (30, 40), seed + 1)),
            "swapped": rand(np.int16, (60, 50), seed + 2).astype(">i2")[::-1],
        }
    if kind == "packed":  # many small leaves: one pinned buffer and one copy per group
        return [rand(dt, (n,), seed + 10 + n) for n in range(1, 13) for dt in (np.float32, np.uint8, np.complex128)]
    if kind == "direct":  # too few small leaves to pack
        return {"a": rand(np.float32, (100,), seed), "b": rand(np.int8, (7, 3), seed + 1)}
    if kind == "lone":
        return rand(np.float32, (100,), seed)
    assert kind == "pinned"
    return {
        "tensor": side.pinned(rand(np.float32, (3000,), seed)),
        "view": side.pinned(rand(np.int64, (2000,), seed + 1)).numpy(),
    }


def download_pairs(kind: str, y: torch.Tensor, ref: Array) -> dict[str, tuple[torch.Tensor, Array]]:
    """(device tensor, the array it must become): views of ``y``, whose host twin is ``ref``."""
    if kind == "staged":
        return {"flat": (y, ref), "strided": (y[::3], ref[::3])}
    if kind == "packed":
        return {f"i{k}": (y[40 * k : 40 * k + 40], ref[40 * k : 40 * k + 40]) for k in range(8)}
    if kind == "direct":
        return {"a": (y[:10], ref[:10]), "b": (y[100:150], ref[100:150])}
    assert kind == "lone"
    return {"lone": (y[1000:1010], ref[1000:1010])}


def source_bits(x: Any) -> bytes:
    return bits(x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x))


def upload_case(side: Side, kind: str, nb: bool | None, stream_kind: str, seed: int) -> str:
    data = upload_data(side, kind, seed)
    planned = routes(tb.explain(data, device=side.device))
    if set(planned) != {ROUTE_OF[kind]}:
        raise AssertionError(f"planned {planned}, expected {ROUTE_OF[kind]} only")
    expected = [source_bits(src) for src in leaves(data)]
    s = side.stream(stream_kind)
    side.garbage(s, seed)
    with side.on_stream(s):
        side.busy()
        out = tb.to_tensor(data, device=side.device, non_blocking=nb)
        if nb:
            got = [side.read_ordered(t) for t in leaves(out)]
        else:
            if not side.idle():
                raise AssertionError(f"non_blocking={nb} returned before its copies had finished")
            got = [side.read_elsewhere(t) for t in leaves(out)]
        side.sync()
    for i, (t, want, have) in enumerate(zip(leaves(out), expected, got, strict=True)):
        if t.device != side.device:
            raise AssertionError(f"leaf {i} on {t.device}")
        if have != want:
            raise AssertionError(f"leaf {i}: the bytes differ from the input")
    if [side.read_elsewhere(t) for t in leaves(out)] != expected:
        raise AssertionError("after a synchronization the bytes differ")
    return f"{len(planned)} x {planned[0]}"


def download_case(side: Side, kind: str, nb: bool | None, stream_kind: str, seed: int) -> str:
    host = np.random.default_rng(seed).integers(0, 1 << 40, 12_000, dtype=np.int64)
    offset = 1 + seed % 1000
    base = side.put(host)
    ref = host * 3 + offset  # differs per case: reused host memory cannot hold it already
    side.sync()
    s = side.stream(stream_kind)
    side.garbage(s, seed)
    with side.on_stream(s):
        side.busy()
        y = base * 3 + offset  # queued after the busy kernel
        pairs = download_pairs(kind, y, ref)
        data: Any = {k: t for k, (t, _) in pairs.items()}
        if kind == "lone":
            data = data["lone"]
        planned = routes(tb.explain(data, to="numpy"))
        if set(planned) != {ROUTE_OF[kind]}:
            raise AssertionError(f"planned {planned}, expected {ROUTE_OF[kind]} only")
        out = tb.to_numpy(data, non_blocking=nb)
        for (key, (_, want)), arr in zip(pairs.items(), leaves(out), strict=True):  # at once, no sync of ours
            if type(arr) is not np.ndarray or arr.dtype != want.dtype or arr.shape != want.shape:
                raise AssertionError(f"{key}: got {type(arr).__name__} {getattr(arr, 'dtype', '?')}")
            if bits(arr) != bits(want):
                raise AssertionError(f"{key}: the bytes differ from the reference")
        side.sync()
    return f"{len(planned)} x {planned[0]}"


def run(side: Side) -> int:
    print(f"gpu_smoke: {side.describe}")
    before = tb.configure_transfers()
    tb.configure_transfers(**{**dataclasses.asdict(tb.TransferConfig()), **SMALL})
    failures = 0
    count = 0
    seed = 1000
    start = time.perf_counter()
    try:
        for direction, kinds, case in (("h2d", UPLOADS, upload_case), ("d2h", DOWNLOADS, download_case)):
            for kind in kinds:
                for nb in NON_BLOCKING:
                    for stream_kind in side.streams:
                        seed += 100
                        count += 1
                        label = f"{direction} {kind:<7} non_blocking={nb!s:<5} stream={stream_kind:<7}"
                        try:
                            got = case(side, kind, nb, stream_kind, seed)
                        except Exception as err:  # reported; the other cases still run
                            failures += 1
                            print(f"FAIL {label} {type(err).__name__}: {err}", flush=True)
                            traceback.print_exc()
                        else:
                            print(f"ok   {label} tb.explain: {got}", flush=True)
        stats = tb.transfer_stats()
        if stats.lent_bytes:
            failures += 1
            print(f"FAIL pinned staging buffers still lent after the run: {stats}")
    finally:
        side.sync()
        tb.configure_transfers(**dataclasses.asdict(before))
        tb.release_pinned()
    print(
        f"gpu_smoke: {max(0, count - failures)}/{count} cases exact"
        f"{' (FAKE backend)' if side.fake else ''}, {time.perf_counter() - start:.1f} s"
        + ("" if failures == 0 else f"; {failures} FAILED")
    )
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fake", action="store_true", help="no GPU: the fake backend of tests/fakegpu.py")
    args = parser.parse_args()
    if args.fake:
        with fake_side() as side:
            return run(side)
    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device (pass --fake for the fake backend)")
        return 2
    return run(cuda_side())


if __name__ == "__main__":
    sys.exit(main())
