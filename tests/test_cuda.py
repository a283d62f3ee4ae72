"""GPU paths and the transfer engine on a real device. Marked ``cuda``: skipped without CUDA (see conftest.py).

The transfer tests mirror ``test_transfer.py`` (the same engine on a fake backend). Small settings
(4 KiB chunks) make tiny arrays take every route: staged through a ring of pinned buffers, packed,
pinned, direct. Each test first checks with ``explain()`` that the routes it means to exercise are
the ones planned, so it cannot quietly test one route only. ``torch.cuda._sleep`` keeps a stream
busy so that copies queue behind it: a missing synchronization then shows up as wrong bytes, read
on another stream or by the host.

A wait that is missing can also go unseen when the memory a result lands in already holds the
expected bytes: a block the caching allocator hands back from an earlier case, host memory malloc
reuses. So each parametrized case draws its data from its own seed (``case_seed``: derived from
the case's id), the device-to-host reference differs per case, and before a case the free
blocks cached for the stream under test are filled with garbage (``_garbage_caches``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

import tensorbridge as tb
from tensorbridge.plan.routes import Transfer

from .helpers import EXACT_ROWS, bits, random_bits, run_threads
from .test_roundtrip import LAYOUTS, make

pytestmark = pytest.mark.cuda

SMALL = {"chunk_bytes": 4096, "ring": 3, "pinned_cap_bytes": 4 * 4096, "threads": 3, "small_max_bytes": 512}
NON_BLOCKING = [None, False, True]
# GPU clock cycles for torch.cuda._sleep: ~50 ms on an H100 (SM clock 1.6-2 GHz), far longer than
# the host side of any conversion below once its buffers exist.
BUSY = 100_000_000
TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
DEVICES = ["cuda:0", pytest.param("cuda:1", marks=TWO_GPUS)]
# Garbage for the caching allocator: block sizes from large to small (see _garbage_caches).
GARBAGE_SIZES = (256 << 20, 64 << 20, 16 << 20, 4 << 20, 1 << 20, 256 << 10, 64 << 10, 16 << 10, 4 << 10, 512)
GARBAGE_MAX_BLOCKS = 2048  # per size: bounds the time one fill takes
GARBAGE_MAX_BYTES = 8 << 30  # per fill

_ROW = {row.numpy: row for row in EXACT_ROWS}
_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


# --- settings --------------------------------------------------------------------------------


def _settings(**changes: int) -> Iterator[tb.TransferConfig]:
    """The default transfer settings with ``changes``; the settings before are restored afterwards."""
    before = tb.configure_transfers()
    config = tb.configure_transfers(**{**dataclasses.asdict(tb.TransferConfig()), **changes})
    tb.release_pinned()  # peak_bytes counts from here
    try:
        yield config
    finally:
        _sync_all()
        tb.configure_transfers(**dataclasses.asdict(before))
        tb.release_pinned()


@pytest.fixture
def small() -> Iterator[tb.TransferConfig]:
    yield from _settings(**SMALL)


@pytest.fixture
def defaults() -> Iterator[tb.TransferConfig]:
    yield from _settings()


@pytest.fixture
def case_seed(request: pytest.FixtureRequest) -> int:
    """A seed of this case's own, from its id (its parametrization): no two cases share their data."""
    callspec = getattr(request.node, "callspec", None)
    case_id = f"{request.node.originalname}[{callspec.id if callspec is not None else ''}]"
    return zlib.crc32(case_id.encode()) & 0x3FFF_FFFF  # leaves room for the offsets the tests add


# --- device helpers --------------------------------------------------------------------------


def _busy(device: Any, cycles: int = BUSY) -> None:
    """Queue a kernel that spins for ``cycles`` GPU clock cycles on ``device``'s current stream."""
    with torch.cuda.device(device):
        torch.cuda._sleep(cycles)


def _idle(device: Any) -> bool:
    """Whether everything queued on ``device``'s current stream has finished."""
    return bool(torch.cuda.current_stream(device).query())


def _sync(device: Any) -> None:
    torch.cuda.current_stream(device).synchronize()


def _sync_all() -> None:
    for i in range(torch.cuda.device_count()):
        torch.cuda.synchronize(i)


def _stream_under_test(kind: str, device: Any) -> torch.cuda.Stream:
    """``current``: ``device``'s current stream; ``side``: a new stream."""
    if kind == "side":
        return torch.cuda.Stream(device)
    return torch.cuda.current_stream(device)


def _on_stream(stream: torch.cuda.Stream) -> contextlib.AbstractContextManager[Any]:
    """Make ``stream`` current, unless it already is (then leave the current device alone too)."""
    if stream == torch.cuda.current_stream(stream.device):
        return contextlib.nullcontext()
    return torch.cuda.stream(stream)


def _garbage_caches(stream: torch.cuda.Stream, seed: int) -> None:
    """Fill the free blocks torch's caching allocator holds for ``stream`` with garbage; they stay cached.

    A block freed by an earlier case may still hold the bytes this case expects. Blocks are cached
    per stream, so the fill runs on the stream under test: for each size, largest first, blocks
    are allocated (best fit: the cached ones) and filled until the allocator has to reserve new
    memory, which means no free block of that size is left. That new segment is handed back at
    once (``empty_cache`` while the garbage blocks are held frees only segments wholly unused),
    so repeated fills do not grow the cache. Then the garbage is freed: it stays cached, and the
    next allocations on this stream find it. Synchronized, so that the fill is done before the
    case queues anything.
    """
    device = stream.device
    pattern = 0xA0 | (seed & 0x0F)  # never 0 or 1 (bool data), differs between cases
    held: list[torch.Tensor] = []
    block: torch.Tensor | None = None
    total = 0
    with torch.cuda.device(device), torch.cuda.stream(stream):
        for size in GARBAGE_SIZES:
            for _ in range(GARBAGE_MAX_BLOCKS):
                if total + size > GARBAGE_MAX_BYTES:
                    break
                reserved = torch.cuda.memory_reserved(device)
                block = torch.empty(size, dtype=torch.uint8, device=device)
                if torch.cuda.memory_reserved(device) > reserved:  # the cache had no such block left
                    del block
                    torch.cuda.empty_cache()
                    break
                block.fill_(pattern)
                held.append(block)
                total += size
        stream.synchronize()
        held.clear()  # back to the cache, garbage inside
        block = None
    stream.synchronize()


def _pinned_empty(n: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(n, dtype=dtype, pin_memory=True)


def _to_device(t: torch.Tensor, device: Any) -> torch.Tensor:
    return t.to(device)


def _device_bits(t: torch.Tensor) -> bytes:
    """A tensor's bytes in C order, read by torch alone on the current stream (after the work queued there).

    The bits travel as same-size integers, so every dtype (uint16, float8...) takes the same kernels.
    """
    t = t.detach().resolve_conj().resolve_neg()
    if t.is_complex():
        t = torch.view_as_real(t)
    host = t.view(_INT[t.element_size()]).cpu().contiguous()
    return bytes(host.reshape(-1).view(torch.uint8).numpy().tobytes())


def _read_elsewhere(t: torch.Tensor) -> bytes:
    """A tensor's bytes read on a new stream, not ordered after the current one: only finished copies show."""
    current = torch.cuda.current_stream(t.device)
    other = torch.cuda.Stream(t.device)
    if other == current:
        other = torch.cuda.Stream(t.device)
    with torch.cuda.stream(other):
        return _device_bits(t)


def _storage_ptr(t: torch.Tensor) -> int:
    return int(t.untyped_storage().data_ptr())


# --- data helpers -------------------------------------------------------------------------------


def _rand(dtype: Any, shape: tuple[int, ...], seed: int) -> np.ndarray[Any, Any]:
    return random_bits(_ROW[np.dtype(dtype)], shape, seed)


def _route(plan: Any) -> Transfer | None:
    return next((s.arg for s in plan.steps if s.kind in ("to_device", "to_host")), None)


def _routes(explanation: tb.Explanation) -> list[str]:
    return [tr.route for tr in map(_route, explanation.plans) if tr is not None]


def _leaves(x: Any) -> list[Any]:
    """The leaves of the dicts/lists these tests build, in walk order (the order conversions keep)."""
    if isinstance(x, dict):
        return [leaf for v in x.values() for leaf in _leaves(v)]
    if isinstance(x, list):
        return [leaf for v in x for leaf in _leaves(v)]
    return [x]


def _source_bits(x: Any) -> bytes:
    if isinstance(x, torch.Tensor):
        return bits(x.numpy())
    return bits(np.asarray(x))


def _scribble(x: Any) -> None:
    """Overwrite a source after the call returned: the result must not change."""
    if isinstance(x, torch.Tensor):
        x.zero_()
    elif isinstance(x, np.ndarray) and x.flags.writeable:
        x[...] = 0


# --- the first GPU checks (kept) ----------------------------------------------------------------


@pytest.mark.parametrize("row", EXACT_ROWS, ids=lambda r: r.name)
def test_round_trip_through_the_gpu_is_bit_exact(row: tb.dtypes.DtypeRow) -> None:
    a = random_bits(row, (3, 4), seed=11)
    t = tb.to_tensor({"x": a}, device="cuda")["x"]
    assert t.is_cuda and t.dtype is row.torch
    back = tb.to_numpy(t)
    assert isinstance(back, np.ndarray) and back.dtype == row.numpy
    assert bits(back) == bits(a)
    assert not tb.explain(t, to="numpy").shares_memory


@pytest.mark.parametrize("layout", ["reversed", "big_endian", "readonly", "fortran"])
def test_layouts_reach_the_gpu(layout: str) -> None:
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    a = {
        "reversed": base[:, ::-1],
        "big_endian": base.astype(">f4"),
        "readonly": np.frombuffer(base.tobytes(), np.float32).reshape(3, 4),
        "fortran": np.asfortranarray(base),
    }[layout]
    t = tb.to_tensor(a, device="cuda")
    assert t.is_cuda and t.cpu().tolist() == np.asarray(a).tolist()


def test_cuda_tensor_bits_are_resolved_on_the_way() -> None:
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64, device="cuda")
    assert tb.to_numpy(z.conj()).tolist() == [1 - 2j, 3 + 4j]
    assert tb.to_numpy(z.conj().imag).tolist() == [-2.0, 4.0]
    g = torch.ones(2, device="cuda", requires_grad=True)
    assert tb.to_numpy(g).tolist() == [1.0, 1.0]
    bf = torch.tensor([1.5, -2.0], device="cuda").to(torch.bfloat16)
    assert tb.to_numpy(bf).astype(np.float32).tolist() == [1.5, -2.0]


def test_cast_before_the_copy_is_checked_on_the_gpu() -> None:
    t = torch.tensor([300.0], device="cuda")
    with pytest.raises(tb.ValueRangeError, match="300"):
        tb.to_numpy(t, dtype=np.uint8)
    ok = tb.to_tensor(np.array([1.0, 2.0]), dtype=torch.float32, device="cuda")
    assert ok.dtype is torch.float32 and ok.is_cuda


def test_pin_memory() -> None:
    t = tb.to_tensor(np.ones(1024, np.float32), pin_memory=True)
    assert t.is_pinned() and not t.is_cuda
    with pytest.raises(tb.CopyRefusedError):
        tb.to_tensor(np.ones(4), pin_memory=True, copy=False)


def test_missing_device_is_a_device_error() -> None:
    index = torch.cuda.device_count()
    with pytest.raises(tb.DeviceError, match="does not exist"):
        tb.to_tensor(np.ones(2), device=f"cuda:{index}")
    with pytest.raises(tb.DeviceError, match=rf"cuda:{index} does not exist"):
        tb.to_tensor({"x": np.ones(3000, np.float32), "y": [np.ones(4)] * 5}, device=f"cuda:{index}")
    plan = tb.explain(np.ones(2), device=f"cuda:{index}").plans[0]
    assert isinstance(plan.error, tb.DeviceError) and "does not exist" in str(plan.error)


# --- round trips through every route --------------------------------------------------------


def _expected_route(tr: Transfer) -> str:
    if tr.nbytes == 0:
        return "direct"
    return "staged" if tr.nbytes > SMALL["small_max_bytes"] else "packed"


@pytest.mark.parametrize("non_blocking", NON_BLOCKING)
@pytest.mark.parametrize("row", EXACT_ROWS, ids=lambda r: r.name)
def test_every_dtype_and_layout_round_trips_through_every_route(
    small: tb.TransferConfig, row: tb.dtypes.DtypeRow, non_blocking: bool | None, case_seed: int
) -> None:
    size = row.numpy.itemsize
    # 64 KiB leaves (16 chunks through a ring of 3) and 128 B leaves (packed, several groups).
    data = {
        layout: {
            "big": make(row, (32, 2048 // size), layout, case_seed + 10 * k),
            "many": [make(row, (4, max(1, 32 // size)), layout, case_seed + 1000 + 10 * k + j) for j in range(8)],
        }
        for k, layout in enumerate(LAYOUTS)
    }
    plans = tb.explain(data, device="cuda").plans
    trs = [_route(p) for p in plans]
    for plan, tr in zip(plans, trs, strict=True):
        assert tr is not None and tr.route == _expected_route(tr), str(plan)
    assert {tr.route for tr in trs if tr is not None} == {"staged", "packed", "direct"}
    assert max(tr.chunks for tr in trs if tr is not None) > SMALL["ring"], "buffers of the ring are reused"
    assert len({tr.group for tr in trs if tr is not None and tr.route == "packed"}) > 1

    sources = _leaves(data)
    expected = [bits(np.asarray(src)) for src in sources]
    device = torch.device("cuda", torch.cuda.current_device())
    _garbage_caches(torch.cuda.current_stream(device), case_seed)
    out = tb.to_tensor(data, device="cuda", non_blocking=non_blocking)
    # Blocking modes have waited: even a stream not ordered after the copies sees the data.
    read = _device_bits if non_blocking else _read_elsewhere
    for plan, src, want, t in zip(plans, sources, expected, _leaves(out), strict=True):
        assert isinstance(t, torch.Tensor) and t.device == device, plan.path
        assert t.dtype is row.torch and tuple(t.shape) == np.shape(src), plan.path
        assert read(t) == want, plan.path

    back = tb.to_numpy(out, non_blocking=non_blocking)
    for plan, src, want, arr in zip(plans, sources, expected, _leaves(back), strict=True):
        assert type(arr) is np.ndarray and arr.dtype == row.numpy, plan.path
        assert arr.shape == np.shape(src) and bits(arr) == want, plan.path
    stats = tb.transfer_stats()
    assert stats.lent_bytes == 0 and 0 < stats.peak_bytes <= SMALL["pinned_cap_bytes"]


@pytest.mark.parametrize("non_blocking", [None, True])
def test_megabyte_arrays_with_the_default_settings(
    defaults: tb.TransferConfig, non_blocking: bool | None, case_seed: int
) -> None:
    rng = np.random.default_rng(case_seed + 5)
    pinned = _pinned_empty(1 << 20, torch.float32)  # 4 MiB, page-locked
    pinned.copy_(torch.from_numpy(_rand(np.float32, (1 << 20,), case_seed + 1)))
    data = {
        "big": _rand(np.float32, (10 << 20,), case_seed + 2),  # 40 MiB: 3 chunks of 16 MiB
        "fortran": np.asfortranarray(rng.standard_normal((1024, 768))),  # 6 MiB, dense
        "reversed": rng.integers(0, 256, (1536, 2048), dtype=np.uint8)[:, ::-1],  # 3 MiB, negative strides
        "small": [_rand(np.float32, (2048,), case_seed + 10 + i) for i in range(64)],  # 8 KiB each: one group
        "pinned": pinned,
        "empty": np.zeros((0, 5), np.float32),
    }
    chunk = defaults.chunk_bytes
    routes = {p.path: _route(p) for p in tb.explain(data, device="cuda").plans}
    want_routes = {"big": "staged", "fortran": "staged", "reversed": "staged", "pinned": "pinned", "empty": "direct"}
    for key, route in want_routes.items():
        tr = routes[f"data['{key}']"]
        assert tr is not None and tr.route == route, key
    assert routes["data['big']"].chunks == -(-(40 << 20) // chunk) == 3  # type: ignore[union-attr]
    small_trs = [routes[f"data['small'][{i}]"] for i in range(64)]
    assert {(tr.route, tr.group, tr.group_leaves) for tr in small_trs if tr is not None} == {("packed", 0, 64)}

    sources = _leaves(data)
    expected = [_source_bits(src) for src in sources]
    _garbage_caches(torch.cuda.current_stream(), case_seed)
    out = tb.to_tensor(data, device="cuda", non_blocking=non_blocking)
    for src in sources:  # pageable sources may be reused at once; the pinned one once the copy is done
        if not (non_blocking and isinstance(src, torch.Tensor)):
            _scribble(src)
    read = _device_bits if non_blocking else _read_elsewhere
    for path, want, t in zip(routes, expected, _leaves(out), strict=True):
        assert t.device.type == "cuda" and read(t) == want, path
    assert out["fortran"].stride() == (1, 1024), "a dense Fortran array keeps its strides"

    back_routes = {p.path: _route(p) for p in tb.explain(out, to="numpy").plans}
    assert back_routes["data['big']"].route == "staged"  # type: ignore[union-attr]
    assert back_routes["data['pinned']"].route == "staged"  # type: ignore[union-attr]
    assert back_routes["data['small'][5]"].route == "packed"  # type: ignore[union-attr]
    back = tb.to_numpy(out, non_blocking=non_blocking)
    for path, want, arr in zip(routes, expected, _leaves(back), strict=True):
        assert type(arr) is np.ndarray and bits(arr) == want, path
    assert back["fortran"].flags.f_contiguous
    stats = tb.transfer_stats()
    assert stats.lent_bytes == 0
    assert 0 < stats.peak_bytes <= defaults.ring * chunk, "one transfer at a time holds at most one ring"


def test_a_thousand_random_round_trips_from_eight_threads(small: tb.TransferConfig) -> None:
    devices = [torch.device("cuda", i) for i in range(min(2, torch.cuda.device_count()))]
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(125):
            row = EXACT_ROWS[int(rng.integers(len(EXACT_ROWS)))]
            layout = LAYOUTS[int(rng.integers(len(LAYOUTS)))]
            shape = tuple(int(n) for n in rng.integers(0, 17, size=int(rng.integers(0, 4))))
            data = [make(row, shape, layout, int(rng.integers(1 << 30))) for _ in range(int(rng.integers(1, 9)))]
            device = devices[int(rng.integers(len(devices)))]
            nb_in, nb_out = (NON_BLOCKING[int(i)] for i in rng.integers(3, size=2))
            routes = _routes(tb.explain(data, device=device))
            expected = [bits(np.asarray(src)) for src in data]
            out = tb.to_tensor(data, device=device, non_blocking=nb_in)
            back = tb.to_numpy(out, non_blocking=nb_out)
            for src, want, t, arr in zip(data, expected, out, back, strict=True):
                assert t.device == device and t.dtype is row.torch and tuple(t.shape) == np.shape(src)
                assert type(arr) is np.ndarray and arr.dtype == row.numpy and arr.shape == np.shape(src)
                assert bits(arr) == want, (row.name, layout, shape, nb_in, nb_out, routes)
            k = int(rng.integers(len(data)))
            assert _device_bits(out[k]) == expected[k], (row.name, layout, shape, nb_in, routes)
            with lock:
                seen.update(routes)

    run_threads(work, 8, 180)
    assert sum(seen.values()) >= 1000 and {"staged", "packed", "direct"} <= set(seen), seen

    stats = tb.transfer_stats()
    print(f"\n{stats}, routes {dict(seen)}")
    host_stats = getattr(torch.cuda.memory, "host_memory_stats", None)
    if host_stats is not None:  # for information: torch's pinned allocator
        print({k: v for k, v in host_stats().items() if "bytes" in k or "alloc" in k})
    assert stats.cap_bytes == SMALL["pinned_cap_bytes"]
    assert 0 < stats.peak_bytes <= stats.cap_bytes and stats.lent_bytes == 0
    tb.release_pinned()
    after = tb.transfer_stats()
    assert after.held_bytes == 0 and after.buffers == 0


# --- synchronization: copies queued behind a busy stream ---------------------------------------


def _upload_data(route: str, seed: int) -> Any:
    """The inputs for ``route``, drawn from ``seed``."""
    if route == "staged":
        return {
            "c": _rand(np.float32, (20, 250), seed + 1),  # 20000 B: 5 chunks through a ring of 3
            "fortran": np.asfortranarray(_rand(np.float64, (30, 40), seed + 2)),
            "swapped": _rand(np.int16, (60, 50), seed + 3).astype(">i2")[::-1],
        }
    if route == "packed":  # plain small native arrays: tensorbridge may skip planning for these
        return [_rand(dt, (n,), seed + 10 + n) for n in range(1, 13) for dt in (np.float32, np.uint8, np.complex128)]
    if route == "packed_planned":  # a byte-swapped and a broadcast leaf: planned leaf by leaf
        return {
            "swapped": _rand(np.float64, (20,), seed + 4).astype(">f8"),
            "broadcast": np.broadcast_to(_rand(np.int32, (8,), seed + 5), (3, 8)),
            "rest": [_rand(np.int64, (k + 1, 3), seed + 20 + k) for k in range(6)],
        }
    if route == "direct":  # too few small leaves to pack
        return {
            "a": _rand(np.float32, (100,), seed + 6),
            "b": _rand(np.int8, (7, 3), seed + 7),
            "c": _rand(np.float64, (2,), seed + 8),
        }
    if route == "lone":  # one small array on its own
        return _rand(np.float32, (100,), seed + 9)
    assert route == "pinned"
    p = _pinned_empty(3000, torch.float32)
    p.copy_(torch.from_numpy(_rand(np.float32, (3000,), seed + 11)))
    q = _pinned_empty(2000, torch.int64)
    q.copy_(torch.from_numpy(_rand(np.int64, (2000,), seed + 12)))
    return {"tensor": p, "view": q.numpy()}


_UPLOAD_ROUTES = {
    "staged": "staged",
    "packed": "packed",
    "packed_planned": "packed",
    "direct": "direct",
    "lone": "direct",
    "pinned": "pinned",
}


@pytest.mark.parametrize("stream", ["current", "side"])
@pytest.mark.parametrize("non_blocking", NON_BLOCKING)
@pytest.mark.parametrize("data_kind", list(_UPLOAD_ROUTES))
@pytest.mark.parametrize("device", DEVICES)
def test_uploads_queued_behind_a_busy_stream_are_exact(
    small: tb.TransferConfig, device: str, data_kind: str, non_blocking: bool | None, stream: str, case_seed: int
) -> None:
    dev = torch.device(device)
    data = _upload_data(data_kind, case_seed)
    assert set(_routes(tb.explain(data, device=dev))) == {_UPLOAD_ROUTES[data_kind]}
    sources = _leaves(data)
    expected = [_source_bits(src) for src in sources]
    pinned_input = data_kind == "pinned"
    s = _stream_under_test(stream, dev)
    _garbage_caches(s, case_seed)
    with _on_stream(s):
        _busy(dev)
        out = tb.to_tensor(data, device=dev, non_blocking=non_blocking)
        if not (pinned_input and non_blocking):
            for src in sources:
                _scribble(src)
        if non_blocking:
            # Ordered on the current stream: later work there sees the data without a sync.
            got = [_device_bits(t) for t in _leaves(out)]
            _sync(dev)
        else:
            assert _idle(dev), "a blocking to_tensor returned before its copies had finished"
            got = [_read_elsewhere(t) for t in _leaves(out)]
    for t, want, have in zip(_leaves(out), expected, got, strict=True):
        assert t.device == dev
        assert have == want
    # After a synchronization, any stream sees the same bytes.
    assert [_read_elsewhere(t) for t in _leaves(out)] == expected
    assert tb.transfer_stats().lent_bytes == 0


def _download_data(route: str, y: torch.Tensor, ref: np.ndarray[Any, Any]) -> dict[str, Any]:
    """(tensor, the array it must become) pairs: views of ``y``, whose host twin is ``ref``."""
    if route == "staged":
        return {
            "flat": (y, ref),  # 96000 B: 24 chunks through a ring of 3
            "transposed": (y[:9600].view(96, 100).T, ref[:9600].reshape(96, 100).T),
            "strided": (y[::3], ref[::3]),
        }
    if route == "packed":  # contiguous small tensors: tensorbridge may skip planning for these
        pairs = {f"i{k}": (y[40 * k : 40 * k + 40], ref[40 * k : 40 * k + 40]) for k in range(6)}
        pairs |= {
            f"f{k}": (y[40 * k : 40 * k + 40].view(torch.float64), ref[40 * k : 40 * k + 40].view(np.float64))
            for k in range(6, 9)
        }
        pairs |= {"h": (y[400:440].view(torch.int16)[:100], ref[400:440].view(np.int16)[:100])}
        return pairs
    if route == "packed_planned":  # strided views: planned leaf by leaf
        return {f"s{k}": (y[k : k + 200 : 5], ref[k : k + 200 : 5]) for k in range(6)}
    if route == "direct":
        return {"a": (y[:10], ref[:10]), "b": (y[100:150].view(torch.float64), ref[100:150].view(np.float64))}
    assert route == "lone"
    return {"lone": (y[1000:1010], ref[1000:1010])}


_DOWNLOAD_ROUTES = {
    "staged": "staged",
    "packed": "packed",
    "packed_planned": "packed",
    "direct": "direct",
    "lone": "direct",
}


@pytest.mark.parametrize("stream", ["current", "side"])
@pytest.mark.parametrize("non_blocking", NON_BLOCKING)
@pytest.mark.parametrize("data_kind", list(_DOWNLOAD_ROUTES))
@pytest.mark.parametrize("device", DEVICES)
def test_to_numpy_never_returns_before_the_bytes_arrived(
    small: tb.TransferConfig, device: str, data_kind: str, non_blocking: bool | None, stream: str, case_seed: int
) -> None:
    dev = torch.device(device)
    # This case's own values: host memory reused from an earlier case cannot hold them already.
    host = np.random.default_rng(case_seed).integers(0, 1 << 40, 12_000, dtype=np.int64)
    offset = 1 + case_seed % 1000
    base = _to_device(torch.from_numpy(host), dev)
    ref = host * 3 + offset
    _sync(dev)  # base is ready: only what follows queues behind the sleep
    s = _stream_under_test(stream, dev)
    _garbage_caches(s, case_seed)
    with _on_stream(s):
        _busy(dev)
        y = base * 3 + offset  # runs after the sleep
        pairs = _download_data(data_kind, y, ref)
        data = {k: t for k, (t, _) in pairs.items()}
        if data_kind == "lone":
            data = data["lone"]
        assert set(_routes(tb.explain(data, to="numpy"))) == {_DOWNLOAD_ROUTES[data_kind]}
        out = tb.to_numpy(data, non_blocking=non_blocking)  # None: no options, so the fast paths where they apply
        # Compared at once, with no synchronization of ours.
        for (key, (_, want)), arr in zip(pairs.items(), _leaves(out), strict=True):
            assert type(arr) is np.ndarray and arr.dtype == want.dtype and arr.shape == want.shape, key
            assert bits(arr) == bits(want), key
    assert tb.transfer_stats().lent_bytes == 0


@pytest.mark.parametrize("route", ["staged", "pinned"])
def test_non_blocking_upload_returns_while_the_stream_is_busy(
    small: tb.TransferConfig, route: str, case_seed: int
) -> None:
    dev = torch.device("cuda", torch.cuda.current_device())
    if route == "pinned":
        src: Any = _pinned_empty(3000, torch.float32)
        src.copy_(torch.from_numpy(_rand(np.float32, (3000,), case_seed + 1)))
    else:
        src = _rand(np.float32, (3000,), case_seed + 1)  # 12000 B: 3 chunks, one per buffer of the ring
    assert _routes(tb.explain(src, device=dev)) == [route]
    # Warm up: the pool's buffers, a cached device block of this size, the copy threads.
    tb.to_tensor(src, device=dev)
    _sync(dev)
    expected = _source_bits(src)
    # The warm-up's block went back to the cache holding ``expected``: garbage over it (still cached).
    _garbage_caches(torch.cuda.current_stream(dev), case_seed)

    _busy(dev, 4 * BUSY)
    t = tb.to_tensor(src, device=dev, non_blocking=True)
    returned_early = not _idle(dev)
    if route == "staged":
        _scribble(src)  # already staged: reusing it cannot reach the copy
    _sync(dev)
    assert returned_early, "non_blocking=True waited for the busy stream"
    assert _read_elsewhere(t) == expected

    for non_blocking in (None, False):
        fresh = _rand(np.float32, (3000,), case_seed + 2 + int(non_blocking is None))
        if route == "pinned":
            src.copy_(torch.from_numpy(fresh))
        else:
            src = fresh
        _garbage_caches(torch.cuda.current_stream(dev), case_seed + 1)
        _busy(dev)
        t = tb.to_tensor(src, device=dev, non_blocking=non_blocking)
        assert _idle(dev), f"non_blocking={non_blocking} returned before its copies finished"
        assert _read_elsewhere(t) == bits(fresh)
    assert tb.transfer_stats().lent_bytes == 0


# --- pinned input, packed groups, casts ------------------------------------------------------


@pytest.mark.parametrize("non_blocking", NON_BLOCKING)
def test_pinned_input_goes_straight_over_the_link(
    small: tb.TransferConfig, non_blocking: bool | None, case_seed: int
) -> None:
    p = _pinned_empty(3000, torch.float32)
    p.copy_(torch.from_numpy(_rand(np.float32, (3000,), case_seed + 3)))
    pinned_by_tb = tb.to_tensor(_rand(np.int16, (5000,), case_seed + 4), pin_memory=True)
    assert pinned_by_tb.is_pinned()
    for i, src in enumerate((p, p.numpy(), p.numpy()[1000:], pinned_by_tb)):
        plan = tb.explain(src, device="cuda").plans[0]
        assert _route(plan).route == "pinned", str(plan)  # type: ignore[union-attr]
        assert "already page-locked" in str(plan)
        _garbage_caches(torch.cuda.current_stream(), case_seed + i)
        t = tb.to_tensor(src, device="cuda", non_blocking=non_blocking)
        if non_blocking:
            _sync(t.device)
        assert t.device.type == "cuda" and _read_elsewhere(t) == _source_bits(src)
    assert tb.transfer_stats().held_bytes == 0, "no staging buffer was needed"


def test_packed_leaves_share_one_allocation_per_group(small: tb.TransferConfig) -> None:
    arrays = {f"k{i}": random_bits(EXACT_ROWS[i % len(EXACT_ROWS)], (i % 7, 3), seed=i) for i in range(300)}
    groups: dict[int, list[str]] = {}
    group_bytes: dict[int, int] = {}
    for key, plan in zip(arrays, tb.explain(arrays, device="cuda").plans, strict=True):
        tr = _route(plan)
        assert tr is not None
        if tr.route == "packed":
            groups.setdefault(tr.group, []).append(key)
            group_bytes[tr.group] = tr.group_bytes
        else:
            assert tr.route == "direct" and tr.nbytes == 0, str(plan)
    assert len(groups) > 1 and all(b <= SMALL["chunk_bytes"] for b in group_bytes.values())

    out = tb.to_tensor(arrays, device="cuda")
    storages = set()
    for g, keys in groups.items():
        ptrs = {_storage_ptr(out[k]) for k in keys}
        assert len(ptrs) == 1, f"group {g} is spread over {len(ptrs)} allocations"
        storages |= ptrs
        assert out[keys[0]].untyped_storage().nbytes() == group_bytes[g]
        assert len({out[k].data_ptr() for k in keys}) == len(keys), "each leaf has its own bytes"
        assert all(out[k].data_ptr() % out[k].element_size() == 0 for k in keys), "aligned"
    assert len(storages) == len(groups), "one allocation per group"
    for k, a in arrays.items():
        assert _read_elsewhere(out[k]) == bits(a), k

    back_groups: dict[int, list[str]] = {}
    for key, plan in zip(out, tb.explain(out, to="numpy").plans, strict=True):
        tr = _route(plan)
        if tr is not None and tr.route == "packed":
            back_groups.setdefault(tr.group, []).append(key)
            group_bytes[tr.group] = tr.group_bytes
    assert len(back_groups) > 1
    back = tb.to_numpy(out)
    for k, a in arrays.items():
        assert back[k].dtype == a.dtype and bits(back[k]) == bits(a), k
    for g, keys in back_groups.items():  # views of one host allocation of the group's size
        starts = [back[k].__array_interface__["data"][0] for k in keys]
        ends = [s + back[k].nbytes for s, k in zip(starts, keys, strict=True)]
        assert max(ends) - min(starts) <= group_bytes[g], g
    first, second = back_groups[0][:2]
    kept = bits(back[second])
    back[first].view(np.uint8)[...] = 0xEE  # each array is writable; its neighbour does not change
    assert bits(back[second]) == kept


@pytest.mark.parametrize(
    ("src", "dst", "cast_first"),
    [(np.float64, torch.float32, True), (np.int32, torch.float64, False), (np.float32, torch.int32, True)],
)
def test_casts_run_where_the_data_is_smaller(
    small: tb.TransferConfig, src: Any, dst: torch.dtype, cast_first: bool
) -> None:
    rng = np.random.default_rng(7)
    a = (rng.integers(-(10**6), 10**6, 1000) if src is not np.float64 else rng.standard_normal(1000) * 1e3).astype(src)
    plan = tb.explain(a, device="cuda", dtype=dst).plans[0]
    kinds = [s.kind for s in plan.steps]
    assert (kinds.index("cast") < kinds.index("to_device")) == cast_first, kinds
    tr = _route(plan)
    assert tr is not None and tr.route == "staged"
    assert tr.nbytes == 1000 * (dst.itemsize if cast_first else a.itemsize)
    t = tb.to_tensor(a, device="cuda", dtype=dst)
    assert t.device.type == "cuda" and t.dtype is dst
    assert _device_bits(t) == bits(torch.from_numpy(a).to(dst).numpy())
    with pytest.raises(tb.ValueRangeError, match="does not fit"):
        tb.to_tensor(np.array([1e300, 1.0]), device="cuda", dtype=torch.float32)


def test_to_numpy_narrows_on_the_device_and_widens_on_the_host(small: tb.TransferConfig) -> None:
    x = np.random.default_rng(8).standard_normal(1000)
    t = _to_device(torch.from_numpy(x), "cuda")
    plan = tb.explain(t, to="numpy", dtype=np.float32).plans[0]
    kinds = [s.kind for s in plan.steps]
    assert kinds.index("cast") < kinds.index("to_host"), kinds
    assert _route(plan).nbytes == 4000  # type: ignore[union-attr]
    out = tb.to_numpy(t, dtype=np.float32)
    assert out.dtype == np.float32 and np.array_equal(out, x.astype(np.float32))

    h = _to_device(torch.from_numpy(x.astype(np.float16)), "cuda")
    plan = tb.explain(h, to="numpy", dtype=np.float32).plans[0]
    kinds = [s.kind for s in plan.steps]
    assert kinds.index("to_host") < kinds.index("cast"), kinds
    assert _route(plan).nbytes == 2000  # type: ignore[union-attr]
    wide = tb.to_numpy(h, dtype=np.float32)
    assert wide.dtype == np.float32 and np.array_equal(wide, x.astype(np.float16).astype(np.float32))


# --- more than one device ----------------------------------------------------------------------


@TWO_GPUS
def test_the_second_device_gets_its_own_copies(small: tb.TransferConfig) -> None:
    data = {"big": _rand(np.float32, (50, 100), 1), "many": [_rand(np.int16, (30,), k) for k in range(8)]}
    text = str(tb.explain(data, device="cuda:1"))
    assert "staged" in text and "packed" in text and "to cuda:1" in text and "cuda:0" not in text
    _busy("cuda:1")
    out = tb.to_tensor(data, device="cuda:1", non_blocking=True)
    for src, t in zip(_leaves(data), _leaves(out), strict=True):
        assert t.device == torch.device("cuda", 1)
        assert _device_bits(t) == bits(src)  # ordered on cuda:1's current stream
    on0 = tb.to_tensor(data["big"], device="cuda:0")
    plan = tb.explain(on0, device="cuda:1").plans[0]
    assert _route(plan).direction == "d2d" and "between devices" in str(plan)  # type: ignore[union-attr]
    on1 = tb.to_tensor(on0, device="cuda:1")
    assert on1.device == torch.device("cuda", 1) and _read_elsewhere(on1) == bits(data["big"])
    back = tb.to_numpy(out)
    assert all(bits(a) == bits(src) for src, a in zip(_leaves(data), _leaves(back), strict=True))


@TWO_GPUS
def test_cuda_without_an_index_is_the_current_device(small: tb.TransferConfig) -> None:
    before = torch.cuda.current_device()
    other = 1 - before if before < 2 else 0
    data = {"big": _rand(np.float64, (40, 40), 1), "many": [_rand(np.uint8, (50,), k) for k in range(6)]}
    torch.cuda.set_device(other)
    try:
        assert f"to cuda:{other}" in str(tb.explain(data, device="cuda"))
        out = tb.to_tensor(data, device="cuda")
        lone = tb.to_tensor(np.arange(3.0), device="cuda")
        assert lone.device == torch.device("cuda", other)
        for src, t in zip(_leaves(data), _leaves(out), strict=True):
            assert t.device == torch.device("cuda", other)
            assert _read_elsewhere(t) == bits(src)
    finally:
        torch.cuda.set_device(before)
    assert tb.to_tensor(np.arange(3.0), device="cuda").device == torch.device("cuda", before)
    assert tb.to_tensor(data, device="cuda")["big"].device == torch.device("cuda", before)
