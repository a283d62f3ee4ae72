"""The transfer engine on the CPU, through a fake CUDA backend whose copies land late.

Small settings (4 KiB chunks) make tiny arrays take every route: staged in many chunks,
packed in several groups, pinned. Copies run on a worker thread after random delays and
device memory starts as garbage, so a missing synchronization shows up as wrong bytes.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensorbridge as tb
from tensorbridge.plan.routes import PACK_ALIGN, pack_layout, route_for
from tensorbridge.transfer.config import TransferConfig
from tensorbridge.transfer.devices import install_backend
from tensorbridge.transfer.pinned import POOL, PinnedPool

from .fakegpu import GARBAGE, FakeCuda, FakeCudaTensor, FakeEvent, bits_of, on_fake, plain
from .helpers import EXACT_ROWS, bits, random_bits, run_threads
from .test_roundtrip import LAYOUTS, make

SMALL = {"chunk_bytes": 4096, "ring": 3, "pinned_cap_bytes": 4 * 4096, "threads": 3, "small_max_bytes": 512}


@pytest.fixture
def gpu() -> Iterator[FakeCuda]:
    yield from _installed(FakeCuda(devices=2, delay=0.0005, seed=1))


def _installed(fake: FakeCuda) -> Iterator[FakeCuda]:
    before = tb.configure_transfers()
    tb.configure_transfers(**SMALL)
    old = install_backend(fake)
    FakeCudaTensor.backend = fake
    try:
        yield fake
    finally:
        FakeCudaTensor.backend = None
        assert old is not None
        install_backend(old)
        tb.release_pinned()
        tb.configure_transfers(**dataclasses.asdict(before))


def _route(plan: Any) -> Any:
    return next(s.arg for s in plan.steps if s.kind in ("to_device", "to_host"))


# --- the planner, pure -----------------------------------------------------------------------

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize(
    ("nbytes", "pinned", "staging", "route", "chunks"),
    [
        (0, False, True, "direct", 1),
        (512, False, True, "small", 1),
        (513, False, True, "staged", 1),
        (4096 * 3 + 1, False, True, "staged", 4),
        (4096 * 3 + 1, True, True, "pinned", 1),
        (4096 * 3 + 1, False, False, "direct", 1),
    ],
)
def test_route_for_one_leaf(nbytes: int, pinned: bool, staging: bool, route: str, chunks: int) -> None:
    cfg = TransferConfig(**SMALL)  # type: ignore[arg-type]
    tr = route_for(CPU, CUDA, nbytes, torch.uint8, pinned=pinned, staging=staging, cfg=cfg)
    assert (tr.route, tr.chunks, tr.direction) == (route, chunks, "h2d")
    back = route_for(CUDA, CPU, nbytes, torch.uint8, pinned=pinned, staging=staging, cfg=cfg)
    assert back.direction == "d2h" and back.route != "pinned"  # pinned is about host sources only
    assert route_for(CUDA, torch.device("cuda", 1), nbytes, torch.uint8, pinned=False, staging=True, cfg=cfg).route == (
        "direct"
    )


def test_pack_layout_aligns_every_element() -> None:
    rng = random.Random(3)
    dtypes = [torch.uint8, torch.int16, torch.int32, torch.int64, torch.complex128]
    members = [(d, d.itemsize * rng.randint(0, 9)) for d in rng.choices(dtypes, k=200)]
    offsets, total = pack_layout(members)
    spans = sorted((off, off + n) for off, (_, n) in zip(offsets, members, strict=True))
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), "packed leaves overlap"
    assert all(off % d.itemsize == 0 for off, (d, _) in zip(offsets, members, strict=True))
    assert total == max(end for _, end in spans)
    assert total <= sum(n for _, n in members) + PACK_ALIGN * len(dtypes)


def test_packing_needs_enough_small_leaves(gpu: FakeCuda) -> None:
    few = {f"x{i}": np.ones(4, np.float32) for i in range(3)}
    assert {_route(p).route for p in tb.explain(few, device="cuda").plans} == {"direct"}
    many = {f"x{i}": np.ones(100, np.float32) for i in range(100)}
    plans = tb.explain(many, device="cuda").plans
    trs = [_route(p) for p in plans]
    assert {t.route for t in trs} == {"packed"}
    assert all(t.group_bytes <= SMALL["chunk_bytes"] for t in trs)
    assert len({t.group for t in trs}) == -(-100 * 400 // 4000) or len({t.group for t in trs}) > 1
    assert sum(1 for t in trs if t.group == 0) == trs[0].group_leaves


def test_explain_shows_each_route(gpu: FakeCuda) -> None:
    pinned = torch.empty(3000, dtype=torch.float32)
    gpu.pinned[pinned.data_ptr()] = pinned.numel() * 4  # pretend torch pinned it
    data = {
        "big": np.zeros(3000, np.float32),
        "pinned": pinned,
        "empty": np.zeros((0, 3), np.float32),
        **{f"s{i}": np.zeros(8, np.int64) for i in range(5)},
    }
    text = str(tb.explain(data, device="cuda:1"))
    assert "data['big']" in text and "staged: 11.7 KiB in 3 chunk(s) of 4.0 KiB" in text
    assert "pinned: 11.7 KiB already page-locked" in text
    assert "direct: 0 B, torch's own copy of an empty leaf" in text
    assert "packed: 64 B with 4 other leaves" in text and "share one device allocation" in text
    assert "to cuda:1" in text and "cuda:0" not in text


def test_device_index_is_resolved_and_checked(gpu: FakeCuda) -> None:
    gpu.current = 1
    assert "to cuda:1" in str(tb.explain(np.zeros(3), device="cuda"))
    t = tb.to_tensor(np.arange(3.0), device="cuda")
    assert t.device == torch.device("cuda", 1)
    with pytest.raises(tb.DeviceError, match=r"device cuda:2 does not exist \(this machine has 2 CUDA devices\)"):
        tb.to_tensor({"x": np.zeros(3)}, device="cuda:2")


class _FakeMps(FakeCuda):
    type = "mps"
    staging = False

    def unsupported(self, dtype: torch.dtype) -> str | None:
        from tensorbridge.transfer.devices import MpsBackend

        return MpsBackend().unsupported(dtype)


def test_mps_refuses_float64_with_the_fix() -> None:
    fake = _FakeMps(devices=1)
    old = install_backend(fake)
    try:
        with pytest.raises(tb.DeviceError, match=r"at data\['w'\]: MPS has no float64 support.*dtype=torch.float32"):
            tb.to_tensor({"w": np.zeros(2)}, device="mps")
        plan = tb.explain(np.zeros(2, np.float32), device="mps")
        assert "direct" in str(plan)  # unified memory: no staging
        plan64 = tb.explain(np.zeros(2), device="mps", dtype=torch.float32)
        assert plan64.plans[0].error is None
    finally:
        assert old is not None
        install_backend(old)


def test_without_cuda_the_error_says_so() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(tb.DeviceError, match=r"CUDA is not available.*install a CUDA build"):
        tb.to_tensor({"x": np.zeros(2)}, device="cuda", non_blocking=True)
    with pytest.raises(tb.UnsupportedError, match="non_blocking must be None, True or False"):
        tb.to_tensor(np.zeros(2), device="cpu", non_blocking="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("src", "dst", "cast_first"),
    [(np.float64, torch.float32, True), (np.int32, torch.float64, False), (np.float32, torch.int32, True)],
)
def test_casts_run_where_the_data_is_smaller(gpu: FakeCuda, src: Any, dst: torch.dtype, cast_first: bool) -> None:
    a = np.arange(1000).astype(src)
    plan = tb.explain(a, device="cuda", dtype=dst).plans[0]
    kinds = [s.kind for s in plan.steps]
    assert (kinds.index("cast") < kinds.index("to_device")) == cast_first
    assert _route(plan).nbytes == 1000 * (dst.itemsize if cast_first else a.itemsize)
    t = tb.to_tensor(a, device="cuda", dtype=dst)
    assert t.dtype is dst and plain(t).tolist() == torch.from_numpy(a).to(dst).tolist()
    back = tb.explain(t, to="numpy", dtype=np.float16).plans[0]
    kinds = [s.kind for s in back.steps]
    assert kinds.index("cast") < kinds.index("to_host")  # narrowing on the device
    with pytest.raises(tb.ValueRangeError, match="does not fit"):
        tb.to_tensor(np.array([1e300, 1.0]), device="cuda", dtype=torch.float32)


# --- round trips ---------------------------------------------------------------------------


@given(
    row=st.sampled_from(EXACT_ROWS),
    shape=st.lists(st.integers(0, 40), min_size=0, max_size=3).map(tuple),
    layout=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**16),
    non_blocking=st.sampled_from([None, False, True]),
)
def test_round_trip_through_the_fake_gpu(
    row: tb.dtypes.DtypeRow, shape: tuple[int, ...], layout: str, seed: int, non_blocking: bool | None
) -> None:
    for fake in _installed(FakeCuda(devices=2, delay=0.0002, seed=seed)):
        a = make(row, shape, layout, seed)
        many = [make(row, shape, layout, seed + k) for k in range(5)]
        data = {"one": a, "many": many}
        out = tb.to_tensor(data, device="cuda:1", non_blocking=non_blocking)
        if non_blocking:
            fake.sync()
        for src, t in [(a, out["one"]), *zip(many, out["many"], strict=True)]:
            assert isinstance(t, FakeCudaTensor) and t.device == torch.device("cuda", 1)
            assert t.dtype is row.torch and tuple(t.shape) == np.shape(src)
            assert bits_of(t) == bits(np.asarray(src))
        back = tb.to_numpy(out, non_blocking=non_blocking)
        for src, arr in [(a, back["one"]), *zip(many, back["many"], strict=True)]:
            assert type(arr) is np.ndarray and arr.dtype == row.numpy
            assert bits(arr) == bits(np.asarray(src))
        assert tb.transfer_stats().lent_bytes == 0


def test_large_arrays_are_staged_in_chunks_and_keep_their_layout(gpu: FakeCuda) -> None:
    a = np.asfortranarray(np.random.default_rng(0).standard_normal((70, 50)))  # 28 KB: 7 chunks
    plan = tb.explain(a, device="cuda").plans[0]
    assert _route(plan).route == "staged" and _route(plan).chunks == 7
    t = tb.to_tensor(a, device="cuda")
    assert t.stride() == (1, 70), "a dense Fortran array keeps its strides, as torch's .to() does"
    assert bits_of(t) == bits(a)
    assert gpu.copies == 7 and gpu.moves == 0
    back = tb.to_numpy(t)
    assert back.flags.f_contiguous and np.array_equal(back, a)
    odd = np.random.default_rng(1).standard_normal((40, 60, 3))[::-1, 5:50:2, ::-2].astype(">f8")
    assert bits_of(tb.to_tensor(odd, device="cuda")) == bits(odd)


def test_small_leaves_share_one_device_allocation_per_group(gpu: FakeCuda) -> None:
    arrays = [np.full(16, i, np.float32) for i in range(40)]  # 64 B each: one 4 KiB group
    out = tb.to_tensor(arrays, device="cuda")
    assert gpu.copies == 1, "one copy for the whole group"
    ptrs = {plain(t).untyped_storage().data_ptr() for t in out}
    assert len(ptrs) == 1
    assert [plain(t)[0].item() for t in out] == list(range(40))
    back = tb.to_numpy({"x": out})["x"]
    assert gpu.copies == 2
    assert [int(b[0]) for b in back] == list(range(40))
    back[0][:] = -1  # each array is writable; its neighbours do not change
    assert back[1][0] == 1


def test_many_groups_cycle_through_a_small_ring(gpu: FakeCuda) -> None:
    arrays = {f"k{i}": random_bits(EXACT_ROWS[i % len(EXACT_ROWS)], (i % 7, 3), seed=i) for i in range(300)}
    out = tb.to_tensor(arrays, device="cuda")
    for k, a in arrays.items():
        assert bits_of(out[k]) == bits(a), k
    back = tb.to_numpy(out)
    for k, a in arrays.items():
        assert back[k].dtype == a.dtype and bits(back[k]) == bits(a), k
    assert POOL.stats().peak_bytes <= SMALL["pinned_cap_bytes"]


def test_device_tensors_with_lazy_bits_grad_and_odd_strides_come_back(gpu: FakeCuda) -> None:
    z = on_fake(torch.tensor([1 + 2j, 3 - 4j] * 200, dtype=torch.complex64))
    w = on_fake(torch.arange(2000.0).reshape(40, 50)).requires_grad_(True)
    out = tb.to_numpy({"conj": z.conj(), "neg_imag": z.conj().imag, "grad": w, "t": w.detach().T, "cut": w[::3, 1:]})
    assert out["conj"][:2].tolist() == [1 - 2j, 3 + 4j]
    assert out["neg_imag"][:2].tolist() == [-2.0, 4.0]
    assert np.array_equal(out["grad"], np.arange(2000.0).reshape(40, 50))
    assert out["t"].flags.f_contiguous and np.array_equal(out["t"], out["grad"].T)
    assert np.array_equal(out["cut"], out["grad"][::3, 1:])


def test_tensor_moves_between_devices_and_back_to_the_host(gpu: FakeCuda) -> None:
    t = tb.to_tensor(np.arange(6.0), device="cuda:0")
    on1 = tb.to_tensor(t, device="cuda:1")
    assert on1.device == torch.device("cuda", 1) and plain(on1).tolist() == list(range(6))
    host = tb.to_tensor({"x": on1}, device="cpu", dtype=torch.float32)["x"]
    assert type(host) is torch.Tensor and host.dtype is torch.float32 and host.tolist() == list(range(6))
    assert tb.to_tensor(t, device="cuda") is t, "already there: returned as it is"


def test_non_blocking_true_returns_before_the_copy_lands(gpu: FakeCuda) -> None:
    gate = threading.Event()
    gpu.streams[0].put(gate.wait)  # the stream is busy until the gate opens
    a = np.arange(3000, dtype=np.float32)
    t = tb.to_tensor(a, device="cuda", non_blocking=True)
    a[:] = -1  # the source may be reused at once: its bytes are already staged
    assert (plain(t).view(torch.uint8)[:4] == GARBAGE).all(), "nothing has landed yet"
    gate.set()
    gpu.sync()
    assert plain(t).tolist() == list(range(3000))
    assert tb.transfer_stats().lent_bytes == 0, "buffers went back, with their events, while in flight"
    b = tb.to_tensor(np.ones(3000, np.float32), device="cuda")  # reuses those buffers after their events
    assert plain(b).sum().item() == 3000


def test_to_numpy_never_returns_early(gpu: FakeCuda) -> None:
    t = tb.to_tensor(np.arange(5000.0), device="cuda")
    gpu.sync()
    gate = threading.Event()
    gpu.streams[0].put(gate.wait)
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(tb.to_numpy(t, non_blocking=True)))
    worker.start()
    worker.join(0.2)
    assert worker.is_alive() and not done, "to_numpy returned before the copy ran"
    gate.set()
    worker.join(30)
    assert np.array_equal(done[0], np.arange(5000.0))


# --- the pool ------------------------------------------------------------------------------


def test_pool_is_bounded_and_never_lends_a_buffer_in_flight() -> None:
    fake = FakeCuda(devices=1)
    pool = PinnedPool()
    before = tb.configure_transfers()
    tb.configure_transfers(chunk_bytes=4096, pinned_cap_bytes=2 * 4096, ring=4)
    try:
        cfg = tb.configure_transfers()
        ring = pool.borrow(fake, 4, cfg)
        assert len(ring) == 2, "the cap allows two buffers"
        got: list[list[torch.Tensor]] = []
        waiter = threading.Thread(target=lambda: got.append(pool.borrow(fake, 1, cfg)))
        waiter.start()
        waiter.join(0.1)
        assert waiter.is_alive(), "at the cap, a borrower holding nothing waits"
        pending = FakeEvent()
        pool.give_back(ring[0], pending)
        waiter.join(0.1)
        assert waiter.is_alive(), "a buffer whose copy is in flight is not lent out"
        pending.set()
        waiter.join(5)
        assert got and got[0][0] is ring[0]
        assert pool.stats().held_bytes == 2 * 4096 and pool.stats().lent_bytes == 2 * 4096
        tb.configure_transfers(pinned_cap_bytes=4096)
        pool.give_back(ring[1], None)
        pool.give_back(got[0][0], None)
        assert pool.stats().held_bytes == 4096, "buffers over a lowered cap are dropped as they come back"
        tb.configure_transfers(chunk_bytes=8192, pinned_cap_bytes=8192)
        new = pool.borrow(fake, 1, tb.configure_transfers())
        assert new[0].numel() == 8192 and pool.stats().held_bytes == 8192, "a new chunk size replaces old buffers"
        pool.give_back(new[0], None)
        pool.release()
        assert pool.stats().held_bytes == 0 and fake.cache_empties == 1
    finally:
        tb.configure_transfers(**dataclasses.asdict(before))


def test_many_threads_round_trip_within_the_cap(gpu: FakeCuda) -> None:

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(25):
            row = EXACT_ROWS[int(rng.integers(len(EXACT_ROWS)))]
            sizes = rng.integers(0, 900, size=int(rng.integers(1, 12)))
            data = [random_bits(row, (int(n),), seed=int(rng.integers(1 << 30))) for n in sizes]
            device = f"cuda:{int(rng.integers(2))}"
            out = tb.to_numpy(tb.to_tensor(data, device=device, non_blocking=bool(rng.integers(2))))
            for a, b in zip(data, out, strict=True):
                assert bits(a) == bits(b)

    run_threads(work, 8, 120)
    stats = tb.transfer_stats()
    assert stats.peak_bytes <= SMALL["pinned_cap_bytes"] and stats.lent_bytes == 0
    tb.release_pinned()
    assert tb.transfer_stats().held_bytes == 0
    import gc

    gc.collect()
    assert gpu.live_pinned_bytes() == 0, "every pinned buffer was freed"


def test_a_failed_copy_is_a_device_error_and_returns_the_buffers(gpu: FakeCuda) -> None:
    gpu.fail_copies = True
    with pytest.raises(tb.DeviceError, match=r"transfer at data\['x'\]: copying 12000 bytes from cpu to cuda:0 failed"):
        tb.to_tensor({"x": np.zeros(3000, np.float32)}, device="cuda")
    assert tb.transfer_stats().lent_bytes == 0
    gpu.fail_copies = False
    assert plain(tb.to_tensor(np.ones(3000, np.float32), device="cuda")).sum().item() == 3000


def test_an_error_in_any_leaf_is_raised_before_anything_moves(gpu: FakeCuda) -> None:
    with pytest.raises(tb.UnsupportedError, match=r"data\['bad'\]"):
        tb.to_tensor({"ok": np.zeros(3000), "bad": np.array(["text"])}, device="cuda")
    assert gpu.copies == 0 and gpu.moves == 0


def test_a_lone_small_array_is_planned_once_per_kind(gpu: FakeCuda) -> None:
    a = np.arange(10.0)
    first = tb.to_tensor(a, device="cuda:1")
    made = tb.plan_cache_info().plans_made
    moves = gpu.moves
    again = tb.to_tensor(np.arange(10.0), device="cuda:1")
    assert tb.plan_cache_info().plans_made == made, "the same kind of leaf reuses its plan"
    assert gpu.moves == moves + 1, "torch's own copy, the route the planner gives a lone small leaf"
    assert again.device == first.device == torch.device("cuda", 1)
    assert plain(again).tolist() == plain(first).tolist() == a.tolist()
    with pytest.raises(tb.DeviceError, match="cuda:7 does not exist"):
        tb.to_tensor(a, device="cuda:7")
    with pytest.raises(tb.DeviceError, match="cuda:7 does not exist"):
        tb.to_tensor(a, device="cuda:7")  # an error is never cached as a plan
    ro = np.arange(10.0)
    ro.flags.writeable = False
    assert plain(tb.to_tensor(ro, device="cuda:1")).tolist() == ro.tolist()  # planned: not the fast path


def test_the_tutorials_gpu_round_trip(gpu: FakeCuda) -> None:
    # Tutorial 2: torch.from_numpy(x).to("cuda"), then x.to("cpu").numpy() and
    # x.detach().to("cpu").numpy(); through tensorbridge it is one call each way.
    x = np.eye(3)
    t = tb.to_tensor(x, device="cuda")
    assert t.device == torch.device("cuda", 0) and t.dtype is torch.float64
    assert np.array_equal(tb.to_numpy(t), x)
    g = tb.to_tensor(x, device="cuda", requires_grad=True)
    assert g.requires_grad and np.array_equal(tb.to_numpy(g), x)


FAST_LAYOUTS = ["c", "fortran", "reversed", "step", "transpose", "readonly", "zero_d"]


def _allocation(x: Any) -> int:
    """Where the allocation that holds ``x`` starts (a device tensor, or a host array and its bases)."""
    if isinstance(x, torch.Tensor):
        return int(plain(x).untyped_storage().data_ptr())
    while isinstance(x.base, np.ndarray):
        x = x.base
    if isinstance(x.base, torch.Tensor):  # an array made by Tensor.numpy(): the tensor's storage
        return int(x.base.untyped_storage().data_ptr())
    return int(x.ctypes.data) if x.base is None else id(x.base)


def _partition(xs: list[Any]) -> list[int]:
    """For each item, the index of the first item sharing its allocation (an empty item: its own)."""
    sizes = [x.numel() if isinstance(x, torch.Tensor) else x.size for x in xs]
    owners = [_allocation(x) if size else ("empty", n) for n, (x, size) in enumerate(zip(xs, sizes, strict=True))]
    return [owners.index(o) for o in owners]


def _device_bits(t: torch.Tensor) -> bytes:
    """``bits_of`` a copy with canonical strides (torch's own copy keeps odd strides of size-1 axes)."""
    return bytes(bits_of(plain(t).clone(memory_format=torch.contiguous_format)))


def _planned_partition(trs: list[Any]) -> list[int]:
    """The same, as the plans say: packed leaves of one group together, every other leaf alone."""
    keys = [("group", tr.group) if tr.route == "packed" else ("alone", n) for n, tr in enumerate(trs)]
    return [keys.index(k) for k in keys]


@given(
    rows=st.lists(st.sampled_from(EXACT_ROWS), min_size=4, max_size=60),
    layouts=st.lists(st.sampled_from(FAST_LAYOUTS), min_size=60, max_size=60),
    shapes=st.lists(st.tuples(st.integers(0, 8), st.integers(1, 32)), min_size=60, max_size=60),
    non_blocking=st.sampled_from([None, False, True]),
)
def test_packed_groups_are_exactly_the_planned_ones_both_ways(
    rows: list[tb.dtypes.DtypeRow], layouts: list[str], shapes: list[tuple[int, int]], non_blocking: bool | None
) -> None:
    for fake in _installed(FakeCuda(devices=1, delay=0.0001)):
        tb.configure_transfers(small_max_bytes=1024)  # up to 4 KiB: packed, or staged in one chunk
        arrays = [make(row, shapes[i], layouts[i], i) for i, row in enumerate(rows)]
        trs = [_route(p) for p in tb.explain(arrays, device="cuda").plans]
        packed = {tr.group for tr in trs if tr.route == "packed"}
        staged = [tr for tr in trs if tr.route == "staged"]
        assert all(tr.chunks == 1 for tr in staged) and all(tr.route in ("packed", "staged", "direct") for tr in trs)
        out = tb.to_tensor(arrays, device="cuda", non_blocking=non_blocking)
        # One copy per packed group and per other leaf: staged ones here take one chunk,
        # direct ones (empty leaves, too few small leaves) are torch's own copy.
        assert fake.copies == len(packed) + len(staged)
        assert fake.moves == len(trs) - len(staged) - sum(tr.route == "packed" for tr in trs)
        if non_blocking:
            fake.sync()
        assert _partition(out) == _planned_partition(trs)
        for row, a, t in zip(rows, arrays, out, strict=True):
            assert isinstance(t, FakeCudaTensor) and t.dtype is row.torch
            assert tuple(t.shape) == a.shape and _device_bits(t) == bits(np.asarray(a))
        assert tb.transfer_stats().lent_bytes == 0

        back_trs = [_route(p) for p in tb.explain(out, to="numpy").plans]
        copies, moves = fake.copies, fake.moves
        back = tb.to_numpy(out, non_blocking=non_blocking)
        back_packed = {tr.group for tr in back_trs if tr.route == "packed"}
        back_staged = sum(tr.route == "staged" for tr in back_trs)
        assert fake.copies - copies == len(back_packed) + back_staged
        assert fake.moves - moves == sum(tr.route == "direct" for tr in back_trs)
        assert _partition(back) == _planned_partition(back_trs)
        for a, b in zip(arrays, back, strict=True):
            assert type(b) is np.ndarray and b.dtype == a.dtype and b.shape == a.shape
            assert bits(b) == bits(np.asarray(a))
        assert tb.transfer_stats().lent_bytes == 0


def test_packed_runs_gather_odd_leaves_both_ways(gpu: FakeCuda) -> None:
    # Host tensors and device tensors that are not plain C-ordered memory, in one packed group:
    # strided, transposed, 0-d, lazily conjugated or negated, requiring grad, dtypes packed
    # as integer bits, and runs of mixed dtypes of one element size.
    z = torch.tensor([1 + 2j, 3 - 4j, 5 + 6j], dtype=torch.complex64)
    base = torch.arange(24.0).reshape(4, 6)
    host = {
        "conj": z.conj(),
        "neg": z.conj().imag,
        "grad": base.clone().requires_grad_(True),
        "t": base.T,
        "cut": base[::2, 1::2],
        "zero_d": torch.tensor(7, dtype=torch.int32),
        "u16": torch.arange(5, dtype=torch.int32).to(torch.uint16),
        "bf16": base[0].to(torch.bfloat16),
        "i32": torch.arange(3, dtype=torch.int32),
        "f32": torch.ones(3),
    }
    want = {k: v.detach().resolve_conj().resolve_neg().contiguous() for k, v in host.items()}
    trs = {k: _route(p) for k, p in zip(host, tb.explain(host, device="cuda").plans, strict=True)}
    assert {tr.route for tr in trs.values()} == {"packed"} and {tr.group for tr in trs.values()} == {0}
    out = tb.to_tensor(host, device="cuda")
    assert gpu.copies == 1 and len({_allocation(t) for t in out.values()}) == 1
    for k, t in out.items():
        assert t.dtype is want[k].dtype and t.shape == want[k].shape and bits_of(t) == bits_of(want[k]), k
    on_device = {k: on_fake(v.detach()) for k, v in host.items()}
    odd = {
        "conj": on_device["conj"].conj(),
        "neg": on_device["conj"].conj().imag,
        "grad": on_fake(base).requires_grad_(True),
        "t": on_fake(base).T,
        "cut": on_fake(base)[::2, 1::2],
        **{k: on_device[k] for k in ("zero_d", "u16", "bf16", "i32", "f32")},
    }
    copies = gpu.copies
    back = tb.to_numpy(odd)
    assert gpu.copies == copies + 1 and len({_allocation(a) for a in back.values()}) == 1
    expect = {**want, "conj": z, "neg": z.imag}  # the device tensors were conjugated twice
    for k, a in back.items():
        assert a.shape == tuple(expect[k].shape) and bits(a) == bits_of(expect[k]), k
    assert tb.transfer_stats().lent_bytes == 0


def test_large_packed_groups_are_packed_by_several_host_threads() -> None:
    fake = FakeCuda(devices=1, delay=0.0002)
    for _ in _installed(fake):
        # 64 KiB groups through 16 KiB pieces: each run is packed in parts, on host threads.
        tb.configure_transfers(chunk_bytes=1 << 16, pinned_cap_bytes=1 << 18, small_max_bytes=8192, threads=4)
        rng = np.random.default_rng(5)
        arrays = [
            rng.random((8, 64 + i % 3)).astype(np.float32) if i % 5 else rng.integers(0, 9, 700).astype(np.int64)
            for i in range(60)
        ]
        trs = [_route(p) for p in tb.explain(arrays, device="cuda").plans]
        assert {tr.route for tr in trs} == {"packed"} and max(tr.group_bytes for tr in trs) > 1 << 15
        out = tb.to_tensor(arrays, device="cuda")
        assert fake.copies == len({tr.group for tr in trs})
        assert _partition(out) == _planned_partition(trs)
        assert all(bits_of(t) == bits(a) for a, t in zip(arrays, out, strict=True))
        back = tb.to_numpy(out)
        assert all(bits(b) == bits(a) for a, b in zip(arrays, back, strict=True))
        assert tb.transfer_stats().lent_bytes == 0


def test_a_failing_packed_copy_returns_the_buffers_both_ways(gpu: FakeCuda) -> None:
    arrays = {f"k{i}": np.full((3, 4), i, np.float32) for i in range(20)}
    out = tb.to_tensor(arrays, device="cuda")
    gpu.fail_copies = True
    with pytest.raises(tb.DeviceError, match=r"data \(20 leaves packed together\)"):
        tb.to_tensor(arrays, device="cuda")
    assert tb.transfer_stats().lent_bytes == 0
    with pytest.raises(tb.DeviceError, match=r"data \(20 leaves packed together\)"):
        tb.to_numpy(out)
    assert tb.transfer_stats().lent_bytes == 0
    gpu.fail_copies = False
    back = tb.to_numpy(out)
    assert all(np.array_equal(back[k], a) for k, a in arrays.items())


def test_device_leaves_of_exact_tensor_type_are_converted_together() -> None:
    # Regression: an exact torch.Tensor off the CPU used to be converted leaf by leaf (its
    # refused .numpy() fell through to per-leaf planning), so nothing was ever packed.
    # A meta tensor is an exact Tensor off the CPU on any machine.
    with pytest.raises(tb.UnsupportedError, match=r"data\['m'\]: meta tensor"):
        tb.to_numpy({"x": torch.ones(2), "m": torch.empty(3, device="meta")})


def test_failures_on_the_fast_paths_are_conversion_errors_too(gpu: FakeCuda) -> None:
    tb.to_tensor(np.zeros(2), device="cuda")  # the device is checked and remembered
    gpu.fail_copies = True
    with pytest.raises(tb.DeviceError, match=r"transfer at data: copying 16 bytes from cpu to cuda:0 failed"):
        tb.to_tensor(np.zeros(2), device="cuda")
    with pytest.raises(tb.DeviceError, match=r"data \(10 leaves packed together\).*illegal memory access"):
        tb.to_tensor([np.zeros(2)] * 10, device="cuda")
    assert tb.transfer_stats().lent_bytes == 0
    gpu.fail_copies = False
    out = tb.to_tensor([np.zeros(2)] * 10, device="cuda")
    gpu.fail_copies = True
    with pytest.raises(tb.DeviceError, match=r"data \(10 leaves packed together\): copying 160 bytes from cuda:0"):
        tb.to_numpy(out)
