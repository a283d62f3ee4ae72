"""The one pipeline: explain equals what runs, options are checked once, plans are cached per kind of leaf."""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorbridge as tb
from tensorbridge.pipeline import run as pipeline_run
from tensorbridge.transfer.devices import install_backend

from .fakegpu import FakeCuda, FakeCudaTensor, bits_of, on_fake, plain
from .helpers import EXACT_ROWS, bits, run_threads
from .test_roundtrip import LAYOUTS, make

# --- explain and the conversion take the same routes, leaf by leaf ---------------------------


@pytest.fixture
def fake() -> Iterator[FakeCuda]:
    before = tb.configure_transfers()
    old = install_backend(gpu := FakeCuda(devices=1, delay=0.0))
    FakeCudaTensor.backend = gpu
    try:
        yield gpu
    finally:
        FakeCudaTensor.backend = None
        assert old is not None
        install_backend(old)
        tb.release_pinned()
        tb.configure_transfers(**dataclasses.asdict(before))


class _Recorder:
    """Wraps the engine's entry point: the routes and groups of what actually travels, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.routes: list[tuple[str, int, int]] = []
        real = pipeline_run.move

        def move(items: Any, non_blocking: Any) -> Any:
            self.routes += [(tr.route, tr.group, tr.nbytes) for _, tr in items]
            return real(items, non_blocking)

        monkeypatch.setattr(pipeline_run, "move", move)


def _explained(plans: tuple[tb.api.Plan, ...]) -> list[tuple[str, int, int]]:
    return [
        (s.arg.route, s.arg.group, s.arg.nbytes) for p in plans for s in p.steps if s.kind in ("to_device", "to_host")
    ]


_ARRAY_LAYOUTS = [name for name in LAYOUTS if name != "scalar"]
_CONTAINERS = ["dict", "list", "tuple", "deque", "nested"]


def _wrap(kind: str, leaves: list[Any]) -> Any:
    if kind == "dict":
        return {f"k{i}": x for i, x in enumerate(leaves)}
    if kind == "tuple":
        return tuple(leaves)
    if kind == "deque":
        return collections.deque(leaves)
    if kind == "nested":
        return {"a": leaves[: len(leaves) // 2], "b": (leaves[len(leaves) // 2 :], "text", None)}
    return list(leaves)


# The fake backend and the monkeypatched engine entry hold no per-example state; each example
# sets the transfer settings it needs.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    n=st.integers(1, 24),
    container=st.sampled_from(_CONTAINERS),
    chunk=st.sampled_from([4096, 8192, 16384]),
    small=st.sampled_from([0, 512, 8192, 65536, 1 << 20]),
    pack_min=st.integers(1, 8),
)
def test_explain_reports_the_routes_the_conversion_takes(
    fake: FakeCuda,
    monkeypatch: pytest.MonkeyPatch,
    data: st.DataObject,
    n: int,
    container: str,
    chunk: int,
    small: int,
    pack_min: int,
) -> None:
    # chunk_bytes < small_max_bytes on purpose: the small-leaf rule is min(small, chunk) everywhere.
    tb.configure_transfers(chunk_bytes=chunk, small_max_bytes=small, pack_min_leaves=pack_min, ring=2)
    rows = data.draw(st.lists(st.sampled_from(EXACT_ROWS), min_size=n, max_size=n))
    layouts = data.draw(st.lists(st.sampled_from(_ARRAY_LAYOUTS), min_size=n, max_size=n))
    sizes = data.draw(st.lists(st.integers(1, 3000), min_size=n, max_size=n))
    arrays = [make(row, (sizes[i],), layouts[i], i) for i, row in enumerate(rows)]
    tree = _wrap(container, arrays)
    recorder = _Recorder(monkeypatch)
    recorder.routes.clear()
    explained = _explained(tb.explain(tree, device="cuda").plans)
    out = tb.to_tensor(tree, device="cuda")
    assert recorder.routes == explained
    moved = tb.tree.iter_leaves(out, lambda x: isinstance(x, torch.Tensor))
    for a, (_, t) in zip(arrays, moved, strict=True):
        assert bits_of(t) == bits(np.asarray(a))
    # And back: every tensor is on the fake device now.
    recorder.routes.clear()
    explained_back = _explained(tb.explain(out, to="numpy").plans)
    back = tb.to_numpy(out)
    assert recorder.routes == explained_back
    for a, (_, b) in zip(arrays, tb.tree.iter_leaves(back, lambda x: isinstance(x, np.ndarray)), strict=True):
        assert bits(b) == bits(np.asarray(a))


def test_the_small_leaf_rule_is_one_rule(fake: FakeCuda, monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: with chunk_bytes below small_max_bytes, a 16 KiB array was explained as
    # staged and sent direct (api.py had its own "small" test).
    tb.configure_transfers(chunk_bytes=4096, small_max_bytes=1 << 20)
    a = np.arange(4096, dtype=np.float32)
    recorder = _Recorder(monkeypatch)
    (plan,) = tb.explain(a, device="cuda").plans
    out = tb.to_tensor(a, device="cuda")
    assert _explained((plan,)) == recorder.routes == [("staged", -1, 16384)]
    assert np.array_equal(plain(out).numpy(), a)


# --- options: validated once, the same way, on every route -----------------------------------

_BAD_TENSOR_OPTIONS = [
    {"dense": "yes"},
    {"non_blocking": "bad"},
    {"copy": "no"},
    {"requires_grad": "yes"},
    {"pin_memory": 1},
    {"datetime_unit": "h"},
    {"dtype": "nonsense"},
    {"dtype": {np.float64: "nonsense"}},
    {"device": "nowhere"},
]
_BAD_NUMPY_OPTIONS = [
    {"dense": "yes"},
    {"non_blocking": "bad"},
    {"quantized": "bogus"},
    {"copy": 0},
    {"datetime_unit": "h"},
    {"dtype": "nonsense"},
]


def _raised(fn: Any) -> tuple[type, str]:
    with pytest.raises(tb.ConversionError) as info:
        fn()
    return type(info.value), str(info.value)


@pytest.mark.parametrize("bad", _BAD_TENSOR_OPTIONS, ids=lambda o: next(iter(o)))
def test_invalid_to_tensor_options_raise_the_same_error_everywhere(fake: FakeCuda, bad: dict[str, Any]) -> None:
    a = np.zeros(3)
    device = {} if "device" in bad else {"device": "cuda"}
    seen = {
        _raised(lambda: tb.to_tensor(a, **bad)),
        _raised(lambda: tb.to_tensor({"a": a, "b": [a]}, **bad)),
        _raised(lambda: tb.to_tensor([a] * 10, **bad, **device)),
        _raised(lambda: tb.to_tensor("no arrays at all", **bad)),
        _raised(lambda: tb.explain({"a": a}, **bad)),
    }
    assert len(seen) == 1, seen


@pytest.mark.parametrize("bad", _BAD_NUMPY_OPTIONS, ids=lambda o: next(iter(o)))
def test_invalid_to_numpy_options_raise_the_same_error_everywhere(fake: FakeCuda, bad: dict[str, Any]) -> None:
    t = torch.zeros(3)
    seen = {
        _raised(lambda: tb.to_numpy(t, **bad)),
        _raised(lambda: tb.to_numpy({"t": t, "u": [t]}, **bad)),
        _raised(lambda: tb.to_numpy([on_fake(t)] * 10, **bad)),
        _raised(lambda: tb.explain({"t": t}, to="numpy", **bad)),
    }
    assert len(seen) == 1, seen


def test_explain_refuses_options_the_direction_does_not_take() -> None:
    with pytest.raises(tb.UnsupportedError, match=r"unknown option\(s\) \['quantized'\] for to='tensor'"):
        tb.explain(np.zeros(2), quantized="int")
    with pytest.raises(tb.UnsupportedError, match=r"unknown option\(s\) \['device'\] for to='numpy'"):
        tb.explain(torch.zeros(2), to="numpy", device="cpu")


# --- the plan cache ----------------------------------------------------------------------------


@pytest.fixture
def small_cache() -> Iterator[None]:
    before = tb.plan_cache_info().maxsize
    tb.configure_plan_cache(maxsize=8)
    try:
        yield
    finally:
        tb.configure_plan_cache(maxsize=before)


def test_one_plan_per_kind_of_leaf_within_a_call_and_across_calls() -> None:
    batch = {f"w{i}": np.zeros((4, 4), dtype=np.float16)[::-1] for i in range(50)}
    tb.to_tensor(batch)
    made = tb.plan_cache_info().plans_made
    for _ in range(3):
        tb.to_tensor(batch)
        tb.to_tensor({f"x{i}": v for i, v in enumerate(batch.values())})
    assert tb.plan_cache_info().plans_made == made


def test_the_cache_is_bounded(small_cache: None) -> None:
    dtypes = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16]
    for dt in dtypes:
        for layout in (np.zeros(4, dt), np.zeros((2, 4), dt)[:, ::-1], np.zeros((2, 4), dt)[::2]):
            tb.to_tensor({"x": layout})
    info = tb.plan_cache_info()
    assert info.maxsize == 8 and info.size <= 8


def test_the_bound_is_checked() -> None:
    with pytest.raises(ValueError, match="maxsize must be an int >= 0"):
        tb.configure_plan_cache(maxsize=-1)


def test_the_cache_is_shared_by_threads_without_mixing_kinds(small_cache: None) -> None:
    kinds = [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::-1],
        np.arange(12, dtype=">f4").reshape(3, 4),
        np.arange(12, dtype=np.int16).reshape(3, 4)[::2],
    ]
    readonly = np.arange(12, dtype=np.float64)
    readonly.flags.writeable = False
    kinds.append(readonly)
    errors: list[str] = []

    def work(k: int) -> None:
        for step in range(200):
            x = kinds[(k + step) % len(kinds)]
            out = tb.to_tensor({"x": x})["x"]
            if out.tolist() != x.tolist() or np.shares_memory(out.numpy(), x) != (x is kinds[0] or x is kinds[3]):
                errors.append(f"thread {k} step {step}: wrong result for {x.dtype} {x.strides}")

    run_threads(work, 4, 60)
    assert not errors


_ODD_ARRAYS = {
    "negative stride on a size-1 axis": lambda: np.zeros((1, 3), np.float32)[::-1],
    "empty with a negative stride": lambda: np.lib.stride_tricks.as_strided(
        np.zeros(3, np.float32), (0, 3), (12, -4), writeable=True
    ),
}


@pytest.mark.parametrize("name", sorted(_ODD_ARRAYS))
@pytest.mark.parametrize("first", ["odd", "plain"])
def test_an_odd_contiguous_array_never_reuses_or_gives_a_plain_kinds_plan(name: str, first: str) -> None:
    odd = _ODD_ARRAYS[name]()
    plain_array = np.zeros((1, 3), np.float32) if odd.size else np.zeros((0, 3), np.float32)
    assert odd.flags.c_contiguous and plain_array.flags.c_contiguous
    order = [odd, plain_array] if first == "odd" else [plain_array, odd]
    for x in order:
        out = tb.to_tensor({"x": x})["x"]
        assert out.shape == x.shape and np.shares_memory(out.numpy(), x) == (x.size > 0)
    assert "restride" in str(tb.explain(odd)) and "restride" not in str(tb.explain(plain_array))


@pytest.mark.parametrize("bit", ["neg", "conj"])
def test_a_tensor_with_a_lazy_bit_gets_its_own_plan(bit: str) -> None:
    z = torch.tensor([1 + 2j, 3 - 4j])
    lazy = z.conj().imag if bit == "neg" else z.conj()
    twin = torch.zeros(2) if bit == "neg" else torch.zeros(2, dtype=torch.complex64)
    for x in (twin, lazy, twin, lazy):
        out = tb.to_numpy({"x": x})["x"]
        assert out.tolist() == x.resolve_conj().resolve_neg().tolist()
    assert f"resolve {bit}" in str(tb.explain(lazy, to="numpy"))
    assert "resolve" not in str(tb.explain(twin, to="numpy"))


def _leaf_strategy() -> st.SearchStrategy[Any]:
    arrays = st.builds(
        lambda row, layout, n, seed: make(row, (n, 3), layout, seed),
        st.sampled_from(EXACT_ROWS),
        st.sampled_from(LAYOUTS),
        st.integers(1, 4),
        st.integers(0, 1000),
    )
    return arrays


def _summary(out: Any, inputs: list[Any]) -> list[tuple[Any, ...]]:
    leaves = tb.tree.iter_leaves(out, lambda x: isinstance(x, (torch.Tensor, np.ndarray)))
    rows = []
    for (_, y), x in zip(leaves, inputs, strict=True):
        host = plain(y).detach() if isinstance(y, torch.Tensor) else y
        arr = host.numpy() if isinstance(host, torch.Tensor) and host.dtype in (torch.float32, torch.int64) else None
        rows.append((type(y), y.dtype, tuple(y.shape), bits_of(y) if isinstance(y, torch.Tensor) else bits(y)))
        if arr is not None and isinstance(x, np.ndarray):
            rows[-1] += (np.shares_memory(arr, x),)
    return rows


@settings(max_examples=60, deadline=None)
@given(
    leaves=st.lists(_leaf_strategy(), min_size=1, max_size=8),
    options=st.sampled_from(
        [{}, {"copy": True}, {"dtype": torch.float32}, {"requires_grad": True, "dtype": torch.float64}]
    ),
)
def test_the_same_results_with_the_cache_off(leaves: list[Any], options: dict[str, Any]) -> None:
    before = tb.plan_cache_info().maxsize

    def convert() -> tuple[Any, ...]:
        explained = str(tb.explain(list(leaves), **options))
        try:
            out = tb.to_tensor(list(leaves), **options)
        except tb.ConversionError as err:  # a value that does not fit the cast: the same error each time
            return (type(err), str(err), explained)
        back = tb.to_numpy(out)
        return (_summary(out, leaves), explained, _summary(back, leaves), str(tb.explain(out, to="numpy")))

    try:
        cached = convert()
        again = convert()
        tb.configure_plan_cache(maxsize=0)
        uncached = convert()
    finally:
        tb.configure_plan_cache(maxsize=before)
    assert cached == again == uncached


def test_equal_options_of_different_types_are_different_options() -> None:
    # 1 == True == 1.0 in Python; as a fill value they differ (a bool column refuses 1).
    from tensorbridge.options import tensor_options

    assert tensor_options(na_value=1) is not tensor_options(na_value=True)
    assert tensor_options(na_value=1) is tensor_options(na_value=1)


def test_leaves_of_many_kinds_in_one_call_each_get_their_kinds_plan() -> None:
    base = np.arange(6, dtype=np.float32).reshape(2, 3)
    readonly = base.copy()
    readonly.flags.writeable = False
    spread = np.lib.stride_tricks.as_strided(base[0], (2, 3), (0, 4))  # a writable broadcast: shared
    batch = [base, base[:, ::-1], base.astype(">f4"), readonly, base.T, spread] * 3
    out = tb.to_tensor(batch)
    for x, y in zip(batch, out, strict=True):
        assert y.tolist() == x.tolist()
        assert np.shares_memory(y.numpy(), x) == (x is base or x is batch[4] or x is batch[5])
    plans = tb.explain(batch).plans
    assert [p.shares_memory for p in plans] == [np.shares_memory(y.numpy(), x) for x, y in zip(batch, out, strict=True)]


def test_a_thread_hammering_one_kind_sees_one_plan() -> None:
    a = np.zeros(8, np.int32)[::-1]
    tb.to_tensor(a)
    made = tb.plan_cache_info().plans_made
    barrier = threading.Barrier(3)

    def work(_: int) -> None:
        barrier.wait()
        for _ in range(100):
            tb.to_tensor({"a": a})

    run_threads(work, 3, 60)
    assert tb.plan_cache_info().plans_made == made


@pytest.mark.parametrize("first", ["dense", "special"])
@pytest.mark.parametrize("kind", ["sparse", "nested"])
def test_sparse_and_nested_tensors_never_share_a_dense_kinds_plan(kind: str, first: str) -> None:
    dense = torch.eye(3)
    special = dense.to_sparse() if kind == "sparse" else tb.nested_tensor([np.ones(2), np.ones(3)])
    order = [dense, special] if first == "dense" else [special, dense]
    for _ in range(2):
        for x in order:
            out = tb.to_numpy({"x": x})["x"]
            if x is dense:
                assert isinstance(out, np.ndarray) and np.shares_memory(out, dense.numpy())
            elif kind == "sparse":
                assert out.toarray().tolist() == dense.tolist()  # a SciPy sparse array
            else:
                assert [a.tolist() for a in out] == [[1.0, 1.0], [1.0, 1.0, 1.0]]
    assert "adopt" in str(tb.explain(special, to="numpy")) and "adopt" not in str(tb.explain(dense, to="numpy"))


def test_the_cache_keeps_no_leaf_alive() -> None:
    # A cached recipe is made from the first leaf of its kind; it must not hold on to it (a
    # large array would live as long as the process).
    import gc
    import weakref

    for make_leaf, convert in [
        (lambda: np.zeros((3, 5), dtype=np.float16)[:, ::-1], tb.to_tensor),
        (lambda: np.zeros(7, dtype=">i4"), tb.to_tensor),
        (lambda: torch.zeros(6, dtype=torch.bfloat16, requires_grad=False), tb.to_numpy),
    ]:
        tb.configure_plan_cache(maxsize=0)
        tb.configure_plan_cache(maxsize=4096)  # emptied: the next leaf is its kind's first
        first = make_leaf()
        ref = weakref.ref(first)
        out = convert({"x": first})
        del first, out
        gc.collect()
        assert ref() is None, "the plan cache keeps the first leaf of a kind alive"
