#!/usr/bin/env python
"""Core performance report for tensorbridge: is it as fast as the hand-written baseline?

Run:  python benchmarks/bench_core.py            (full, ~1-3 minutes)
      python benchmarks/bench_core.py --quick    (smoke test, < 30 s: small sizes, few repeats)

Every case times tensorbridge and its baseline(s) in the same process, interleaved: each round
runs every candidate once (alternating the order between rounds), each run being a
``timeit`` of ``number`` calls (calibrated so a run lasts long enough for microsecond ops).
The reported time per call is the minimum over rounds, which is the least noise-sensitive
estimate on a shared machine. Where a case has several baselines, the fastest one is used.

Ratio column, per kind of target:
  * "time <= X"   : tensorbridge time / baseline time, printed "1.12x time of baseline".
  * "faster >= X" : baseline time / tensorbridge time, printed "250x faster".
  * "speed >= X"  : best baseline time / tensorbridge time, printed "0.95x speed of best"
                    (1.0 = as fast as the fastest baseline; > 1 = faster).

Sections: 1-3 small zero-copy calls, 4 large copies into fresh memory, 5-6 per-leaf costs of the
hard cases (100 leaves of one kind in a dict, tensorbridge against the obvious dict comprehension,
time reported per leaf; 6 repeats 5 with a no-op ``dtype=``), 7 stacking.

Every tensorbridge result is checked once before it is timed (values, and whether it shares
memory with its input). A wrong result or an exception is reported as a failing row ("not
timed: ...") instead of stopping the run.

The exit status is always 0: this is a report. Failing targets are listed at the end.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import sys
import timeit
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
import torch
import torch.utils.data

import tensorbridge as tb

warnings.filterwarnings("ignore")  # torch.tensor(list_of_ndarrays) warns that it is slow; we know.


# --- timing ---------------------------------------------------------------------------------


def _calibrate(fn: Callable[[], Any], min_run_s: float) -> int:
    """Smallest number (1, 2, 5, 10, 20, ...) of calls for which one timeit run lasts min_run_s."""
    timer = timeit.Timer(fn)
    number = 1
    while True:
        for mult in (1, 2, 5):
            n = number * mult
            if timer.timeit(n) >= min_run_s:
                return n
        number *= 10


def measure(
    cands: dict[str, Callable[[], Any]], *, rounds: int, min_run_s: float, number: int | None = None
) -> dict[str, float]:
    """Return the per-call time (s) of each candidate: min over interleaved rounds."""
    for fn in cands.values():  # warm up (first-call caches, allocator, page tables)
        fn()
    if number is None:
        number = max(_calibrate(fn, min_run_s) for fn in cands.values())
    timers = {name: timeit.Timer(fn) for name, fn in cands.items()}
    names = list(cands)
    best = {name: float("inf") for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            t = timers[name].timeit(number) / number
            best[name] = min(best[name], t)
        if number == 1:
            gc.collect()
    return best


# --- report ---------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the report."""

    case: str
    tb_s: float
    base_s: float
    base_name: str
    kind: str  # "time", "faster" or "speed"
    target: float
    others: dict[str, float] = field(default_factory=dict)  # every baseline's time, for details
    error: str = ""  # set when tensorbridge's result was wrong or it raised: the row fails, untimed

    @property
    def ratio(self) -> float:
        """tb/baseline time for "time" targets, baseline/tb time (a speedup) otherwise."""
        if self.kind == "time":
            return self.tb_s / self.base_s
        return self.base_s / self.tb_s

    @property
    def passed(self) -> bool:
        """Whether the target is met."""
        if self.error:
            return False
        return self.ratio <= self.target if self.kind == "time" else self.ratio >= self.target

    def ratio_text(self) -> str:
        """The ratio, with its meaning spelled out."""
        if self.error:
            return f"not timed: {self.error}"
        r = self.ratio
        if self.kind == "time":
            return f"{r:.2f}x time of baseline"
        if self.kind == "faster":
            return f"{r:,.0f}x faster" if r >= 10 else f"{r:.2f}x faster"
        return f"{r:.2f}x speed of best"

    def target_text(self) -> str:
        """The target, with its meaning spelled out."""
        return {
            "time": f"time <= {self.target:g}x",
            "faster": f"faster >= {self.target:g}x",
            "speed": f"speed >= {self.target:g}x",
        }[self.kind]


def fmt_time(s: float) -> str:
    if s != s:  # NaN: not measured
        return "n/a"
    if s < 1e-6:
        return f"{s * 1e9:.0f} ns"
    if s < 1e-3:
        return f"{s * 1e6:.2f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def print_table(rows: list[Row]) -> None:
    print("| case | tensorbridge | baseline | ratio | target | pass |")
    print("|---|---:|---:|---:|---|:---:|")
    for r in rows:
        print(
            f"| {r.case} | {fmt_time(r.tb_s)} | {fmt_time(r.base_s)} ({r.base_name}) | {r.ratio_text()} "
            f"| {r.target_text()} | {'PASS' if r.passed else '**FAIL**'} |"
        )


def print_details(rows: list[Row]) -> None:
    print("\nAll baselines (per call, min over rounds):")
    for r in rows:
        if len(r.others) > 1:
            parts = ", ".join(f"{n}: {fmt_time(t)}" for n, t in sorted(r.others.items(), key=lambda kv: kv[1]))
            print(f"  - {r.case}: {parts}")


def header() -> None:
    print("## tensorbridge core benchmark\n")
    print(
        f"- python {platform.python_version()} ({platform.python_implementation()}), {platform.machine()}, "
        f"{platform.system()} {platform.release()}"
    )
    print(f"- tensorbridge {tb.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    print(
        f"- CPUs: os.cpu_count()={os.cpu_count()}, usable={len(os.sched_getaffinity(0))}, "
        f"torch.get_num_threads()={torch.get_num_threads()}"
    )
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            print(f"- transparent hugepages: {f.read().strip()}")
    except OSError:
        pass
    print()


# --- cases ----------------------------------------------------------------------------------


def make_batch() -> tuple[dict[str, Any], list[np.ndarray]]:
    """A realistic collated-by-hand batch: 65 small array leaves in lists/tuples, plus an int and a str."""
    rng = np.random.default_rng(0)
    n = 16
    batch: dict[str, Any] = {
        "images": [rng.random((3, 8, 8), dtype=np.float32) for _ in range(n)],  # 16
        "masks": tuple(rng.integers(0, 2, (8, 8), dtype=np.uint8) for _ in range(n)),  # 16
        "targets": [
            (rng.random(4, dtype=np.float32), rng.integers(0, 10, (1,), dtype=np.int64)) for _ in range(n)
        ],  # 32
        "labels": rng.integers(0, 10, (n,), dtype=np.int64),  # 1
        "epoch": 3,
        "split": "train",
    }
    leaves = [*batch["images"], *batch["masks"], *(x for pair in batch["targets"] for x in pair), batch["labels"]]
    assert len(leaves) == 65
    return batch, leaves


def small_cases(rows: list[Row], quick: bool) -> None:
    rounds = 7 if quick else 25
    min_run = 0.005 if quick else 0.02

    # 1. one small array, zero-copy path.
    x = np.arange(16, dtype=np.float32)
    assert tb.to_tensor(x).data_ptr() == x.ctypes.data
    t = measure(
        {
            "tb": lambda: tb.to_tensor(x),
            "from_numpy": lambda: torch.from_numpy(x),
            "as_tensor": lambda: torch.as_tensor(x),
        },
        rounds=rounds,
        min_run_s=min_run,
    )
    rows.append(
        Row("1. to_tensor(float32 (16,)) vs torch.from_numpy", t["tb"], t["from_numpy"], "from_numpy", "time", 1.3)
    )
    rows.append(
        Row(
            "1r. to_tensor(float32 (16,)) vs torch.as_tensor (reference: must beat)",
            t["tb"],
            t["as_tensor"],
            "as_tensor",
            "time",
            1.0,
        )
    )

    # 2. small CPU tensor to NumPy.
    ts = torch.arange(16, dtype=torch.float32)
    t = measure({"tb": lambda: tb.to_numpy(ts), "numpy": lambda: ts.numpy()}, rounds=rounds, min_run_s=min_run)
    rows.append(Row("2. to_numpy(float32 tensor (16,)) vs t.numpy()", t["tb"], t["numpy"], "t.numpy()", "time", 1.3))

    # 3. a batch dict of 65 small arrays nested in lists/tuples.
    batch, leaves = make_batch()
    out = tb.to_tensor(batch)
    assert out["split"] == "train" and out["epoch"] == 3 and isinstance(out["masks"], tuple)
    assert out["targets"][0][1].data_ptr() == batch["targets"][0][1].ctypes.data
    from_numpy = torch.from_numpy
    default_convert = torch.utils.data.default_convert
    t = measure(
        {
            "tb": lambda: tb.to_tensor(batch),
            "loop": lambda: [from_numpy(a) for a in leaves],
            "default_convert": lambda: default_convert(batch),
        },
        rounds=rounds,
        min_run_s=min_run,
    )
    rows.append(
        Row(
            "3a. to_tensor(batch: 65 arrays in dict/list/tuple) vs from_numpy loop over flat leaves",
            t["tb"],
            t["loop"],
            "from_numpy loop",
            "time",
            1.3,
        )
    )
    rows.append(
        Row(
            "3b. to_tensor(batch: 65 arrays) vs default_convert(batch)",
            t["tb"],
            t["default_convert"],
            "default_convert",
            "faster",
            3.0,
        )
    )


def big_case(
    rows: list[Row],
    case: str,
    tb_fn: Callable[[], Any],
    baselines: dict[str, Callable[[], Any]],
    rounds: int,
    check: Callable[[Any], None],
) -> None:
    check(tb_fn())
    for fn in baselines.values():
        check(fn())
    t = measure({"tb": tb_fn, **baselines}, rounds=rounds, min_run_s=0.0, number=1)
    tb_s = t.pop("tb")
    best = min(t, key=t.__getitem__)
    rows.append(Row(case, tb_s, t[best], best, "speed", 0.9, others=t))
    gc.collect()


def _fresh_check(src: np.ndarray, expect: np.ndarray) -> Callable[[Any], None]:
    """A check: the result is a tensor in fresh memory (not overlapping src) equal to expect."""

    def check(out: Any) -> None:
        assert isinstance(out, torch.Tensor), type(out)
        assert not np.shares_memory(out.numpy(), src), "result shares memory with the input"
        assert out.shape == expect.shape and torch.equal(out, torch.from_numpy(expect))

    return check


def _case_neg_channels(rows: list[Row], nbytes: int, rounds: int) -> None:
    # 4a. negative strides: BGR -> RGB view of an image batch (N, H, W, 3) float32.
    n = nbytes // (224 * 224 * 3 * 4)
    img = np.random.default_rng(1).random((n, 224, 224, 3), dtype=np.float32)
    a = img[..., ::-1]
    fn = torch.from_numpy
    big_case(
        rows,
        f"4a. to_tensor(img[..., ::-1]) float32 {a.shape} {nbytes >> 20} MB, copy",
        lambda: tb.to_tensor(a),
        {
            "from_numpy(np.ascontiguousarray(a))": lambda: fn(np.ascontiguousarray(a)),
            "from_numpy(a.copy())": lambda: fn(a.copy()),
            "from_numpy(np.flip(a,-1)).flip(-1)": lambda: fn(np.flip(a, -1)).flip(-1),
        },
        rounds,
        _fresh_check(img, np.ascontiguousarray(a)),
    )


def _case_neg_rows(rows: list[Row], nbytes: int, rounds: int) -> None:
    # 4a2. negative strides on the outer axis of a 2-D array: rows reversed.
    m = np.random.default_rng(2).random((nbytes // 4 // 4096, 4096), dtype=np.float32)
    a = m[::-1]
    fn = torch.from_numpy
    big_case(
        rows,
        f"4a2. to_tensor(m[::-1]) float32 {m.shape} {nbytes >> 20} MB, copy",
        lambda: tb.to_tensor(a),
        {
            "from_numpy(np.ascontiguousarray(a))": lambda: fn(np.ascontiguousarray(a)),
            "from_numpy(np.flip(a,0)).flip(0)": lambda: fn(np.flip(a, 0)).flip(0),
        },
        rounds,
        _fresh_check(m, np.ascontiguousarray(a)),
    )


def _case_big_endian(rows: list[Row], nbytes: int, rounds: int) -> None:
    # 4b. big-endian float32.
    a = np.random.default_rng(3).random(nbytes // 4, dtype=np.float32).astype(">f4")
    fn = torch.from_numpy
    big_case(
        rows,
        f"4b. to_tensor(>f4) ({a.size},) {nbytes >> 20} MB, copy",
        lambda: tb.to_tensor(a),
        {
            "from_numpy(a.astype('<f4'))": lambda: fn(a.astype("<f4")),
            "from_numpy(a.byteswap().view('<f4'))": lambda: fn(a.byteswap().view(a.dtype.newbyteorder())),
        },
        rounds,
        _fresh_check(a, a.astype("<f4")),
    )


def _cast_case(
    rows: list[Row], label: str, a: np.ndarray, np_dtype: Any, torch_dtype: torch.dtype, rounds: int
) -> None:
    """A 256 MB cast into fresh memory, against NumPy's astype and torch's .to()."""
    fn = torch.from_numpy
    big_case(
        rows,
        label,
        lambda: tb.to_tensor(a, dtype=torch_dtype),
        {
            f"from_numpy(a.astype({np.dtype(np_dtype).name}))": lambda: fn(a.astype(np_dtype)),
            f"from_numpy(a).to({torch_dtype})": lambda: fn(a).to(torch_dtype),
        },
        rounds,
        _fresh_check(a, a.astype(np_dtype)),
    )


def _case_narrowing(rows: list[Row], nbytes: int, rounds: int) -> None:
    # 4c. narrowing cast float64 -> float32 (checked by tensorbridge: values must fit).
    a = np.random.default_rng(4).standard_normal(nbytes // 8)
    _cast_case(rows, f"4c. to_tensor(float64 {nbytes >> 20} MB, dtype=float32)", a, np.float32, torch.float32, rounds)


def _case_widening(rows: list[Row], nbytes: int, rounds: int) -> None:
    # 4d. widening cast int32 -> float64 (no check needed).
    a = np.random.default_rng(5).integers(-(1 << 31), (1 << 31) - 1, nbytes // 4, dtype=np.int32)
    _cast_case(rows, f"4d. to_tensor(int32 {nbytes >> 20} MB, dtype=float64)", a, np.float64, torch.float64, rounds)


def big_cases(rows: list[Row], quick: bool) -> None:
    """Copying paths, each result in fresh memory; every baseline also returns a tensor in fresh memory."""
    nbytes = (16 if quick else 256) << 20
    rounds = 5 if quick else 7
    for case in (_case_neg_channels, _case_neg_rows, _case_big_endian, _case_narrowing, _case_widening):
        case(rows, nbytes, rounds)
        gc.collect()


# --- per-leaf costs of the hard cases ---------------------------------------------------------

N_LEAVES = 100


def _bits(x: Any) -> np.ndarray:
    """A NumPy view of a tensor's memory (bfloat16 seen as uint16), or the array itself."""
    if isinstance(x, np.ndarray):
        return x
    x = x.detach()
    if x.dtype == torch.bfloat16:
        x = x.view(torch.uint16)
    return x.numpy()


def _same_leaf(out: Any, ref: Any) -> None:
    """Assert out has ref's type, dtype, shape and (bit-exact) values."""
    assert type(out) is type(ref), f"{type(out).__name__}, expected {type(ref).__name__}"
    assert out.dtype == ref.dtype, f"dtype {out.dtype}, expected {ref.dtype}"
    assert tuple(out.shape) == tuple(ref.shape), f"shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
    if isinstance(ref, torch.Tensor):
        assert torch.equal(out, ref), "values differ"
    else:
        assert out.tobytes() == ref.tobytes(), "values differ"


def _leaf_check(src: dict[str, Any], ref: dict[str, Any], shares: bool) -> Callable[[Any], None]:
    """A check: a dict with src's keys whose leaves equal ref's and share memory with src's iff shares."""
    for k, v in ref.items():  # the hand-written baseline itself must do what the row says
        assert np.shares_memory(_bits(v), _bits(src[k])) == shares, f"hand-written {k}: shares != {shares}"

    def check(out: Any) -> None:
        assert isinstance(out, dict), f"{type(out).__name__}, expected dict"
        assert list(out) == list(src), "keys differ"
        for k, v in out.items():
            _same_leaf(v, ref[k])
            if np.shares_memory(_bits(v), _bits(src[k])) != shares:
                raise AssertionError(f"{k}: {'copied' if shares else 'shares memory with the input'}")

    return check


def _error_text(e: BaseException) -> str:
    """One short table-safe line for an exception."""
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0] if lines else ''}".replace("|", "/")
    return text if len(text) <= 100 else text[:97] + "..."


def leaf_case(
    rows: list[Row],
    case: str,
    tb_fn: Callable[[], Any],
    base_name: str,
    base_fn: Callable[[], Any],
    check: Callable[[Any], None],
    *,
    rounds: int,
    min_run_s: float,
) -> None:
    """Time tb_fn against base_fn, both converting N_LEAVES leaves, and report the time per leaf."""
    try:
        check(tb_fn())
    except Exception as e:  # report, don't stop: the library may be mid-rewrite
        t = measure({"base": base_fn}, rounds=rounds, min_run_s=min_run_s)
        rows.append(Row(case, float("nan"), t["base"] / N_LEAVES, base_name, "time", 1.5, error=_error_text(e)))
        return
    t = measure({"tb": tb_fn, "base": base_fn}, rounds=rounds, min_run_s=min_run_s)
    rows.append(Row(case, t["tb"] / N_LEAVES, t["base"] / N_LEAVES, base_name, "time", 1.5))


def _leaf_inputs() -> dict[str, tuple[dict[str, Any], bool]]:
    """The inputs of rows a-f, each with whether its result shares memory with it (as the hand-written's does)."""
    rng = np.random.default_rng(10)
    g = torch.Generator().manual_seed(10)
    n = N_LEAVES
    readonly = {f"a{i:02d}": rng.random(4096, dtype=np.float32) for i in range(n)}  # 16 KiB each
    for a in readonly.values():
        a.flags.writeable = False
    return {
        "a": ({f"layer{i:02d}.weight": torch.nn.Parameter(torch.randn(64, generator=g)) for i in range(n)}, True),
        "b": ({f"layer{i:02d}.weight": torch.randn(64, generator=g).bfloat16() for i in range(n)}, True),
        "c": ({f"img{i:02d}": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)[:, :, ::-1] for i in range(n)}, False),
        "d": (readonly, False),
        "e": ({f"a{i:02d}": rng.random(4096, dtype=np.float32).astype(">f4") for i in range(n)}, False),
        "f": ({f"a{i:02d}": rng.random(4096, dtype=np.float32).astype(ml_dtypes.bfloat16) for i in range(n)}, True),
    }


def _dtype_text(dtype: Any) -> str:
    """How the dtype is written in code: np.float32, ml_dtypes.bfloat16, torch.uint8."""
    if isinstance(dtype, torch.dtype):
        return str(dtype)
    return f"{'np' if dtype.__module__ == 'numpy' else dtype.__module__}.{dtype.__name__}"


def leaf_cases(rows: list[Row], quick: bool) -> None:
    """5a-5g: 100 leaves of one hard kind in a dict vs the obvious dict comprehension; 6a-6f: with a no-op dtype=."""
    rounds = 7 if quick else 25
    min_run = 0.005 if quick else 0.02
    inputs = _leaf_inputs()
    fn = torch.from_numpy
    asc = np.ascontiguousarray
    u16 = np.uint16
    bf16_np = ml_dtypes.bfloat16
    # Each: (row letter, the leaves, hand-written text, hand-written function, the leaves' own dtype for 6).
    specs: list[tuple[str, str, str, Callable[[dict[str, Any]], dict[str, Any]], Any]] = [
        (
            "a",
            "requires-grad Parameter float32 (64,)",
            "{k: v.detach().numpy()}",
            lambda d: {k: v.detach().numpy() for k, v in d.items()},
            np.float32,
        ),
        (
            "b",
            "bfloat16 tensor (64,)",
            "{k: v.view(uint16).numpy().view(bfloat16)}",
            lambda d: {k: v.view(torch.uint16).numpy().view(bf16_np) for k, v in d.items()},
            bf16_np,
        ),
        (
            "c",
            "img[:, :, ::-1] uint8 (64,64,3)",
            "{k: from_numpy(ascontiguousarray(v))}",
            lambda d: {k: fn(asc(v)) for k, v in d.items()},
            torch.uint8,
        ),
        (
            "d",
            "read-only float32 16 KiB",
            "{k: from_numpy(v.copy())}",
            lambda d: {k: fn(v.copy()) for k, v in d.items()},
            torch.float32,
        ),
        (
            "e",
            ">f4 16 KiB",
            "{k: from_numpy(v.astype('<f4'))}",
            lambda d: {k: fn(v.astype("<f4")) for k, v in d.items()},
            torch.float32,
        ),
        (
            "f",
            "ml_dtypes bfloat16 16 KiB",
            "{k: from_numpy(v.view(uint16)).view(torch.bfloat16)}",
            lambda d: {k: fn(v.view(u16)).view(torch.bfloat16) for k, v in d.items()},
            torch.bfloat16,
        ),
    ]
    for section in ("5", "6"):
        for kind, label, base_text, base, own_dtype in specs:
            d, shares = inputs[kind]
            convert = tb.to_numpy if kind in "ab" else tb.to_tensor
            if section == "6":  # dtype= the leaves' own: a no-op option
                tb_fn = functools.partial(convert, d, dtype=own_dtype)
                args = f"{label}, dtype={_dtype_text(own_dtype)}"
            else:
                tb_fn = functools.partial(convert, d)
                args = label
            leaf_case(
                rows,
                f"{section}{kind}. {convert.__name__}({args}) x{N_LEAVES} in a dict, per leaf, vs {base_text}",
                tb_fn,
                "hand-written",
                functools.partial(base, d),
                _leaf_check(d, base(d), shares),
                rounds=rounds,
                min_run_s=min_run,
            )
        if section == "5":
            # 5g: plain float32 leaves with a no-op dtype=: the option must cost neither a copy nor much time.
            rng = np.random.default_rng(11)
            d = {f"a{i:02d}": rng.random(1024, dtype=np.float32) for i in range(N_LEAVES)}  # 4 KiB each
            plain = lambda d: {k: fn(v) for k, v in d.items()}  # noqa: E731
            leaf_case(
                rows,
                f"5g. to_tensor(float32 4 KiB, dtype=torch.float32) x{N_LEAVES} in a dict, per leaf, "
                "vs {k: from_numpy(v)}",
                functools.partial(tb.to_tensor, d, dtype=torch.float32),
                "hand-written",
                functools.partial(plain, d),
                _leaf_check(d, plain(d), True),
                rounds=rounds,
                min_run_s=min_run,
            )


def stack_case(rows: list[Row], quick: bool) -> None:
    n = 100 if quick else 1000
    rng = np.random.default_rng(2)
    items = [rng.random((64, 64), dtype=np.float32) for _ in range(n)]
    out = tb.stack(items)
    assert out.shape == (n, 64, 64) and torch.equal(out, torch.from_numpy(np.stack(items)))
    # torch.tensor walks every element in Python: one call is slow, so time it a few times only.
    t = measure(
        {"tb": lambda: tb.stack(items), "torch.tensor": lambda: torch.tensor(items)}, rounds=3, min_run_s=0.0, number=1
    )
    t_tb = measure({"tb": lambda: tb.stack(items)}, rounds=5 if quick else 15, min_run_s=0.01)["tb"]
    rows.append(
        Row(
            f"7. stack({n} x float32 (64,64)) vs torch.tensor(list)",
            min(t["tb"], t_tb),
            t["torch.tensor"],
            "torch.tensor",
            "faster",
            100.0,
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (< 30 s), for CI smoke tests")
    args = parser.parse_args()
    header()
    print(f"mode: {'quick' if args.quick else 'full'}; times are per call, min over interleaved rounds\n", flush=True)
    start = timeit.default_timer()
    rows: list[Row] = []
    small_cases(rows, args.quick)
    big_cases(rows, args.quick)
    leaf_cases(rows, args.quick)
    stack_case(rows, args.quick)
    print_table(rows)
    print_details(rows)
    failed = [r for r in rows if not r.passed]
    print(f"\nTargets: {len(rows) - len(failed)}/{len(rows)} pass")
    if args.quick:
        print(
            "  (quick mode is a smoke test: its 16 MB copies reuse heap memory instead of page-faulting fresh\n"
            "   memory, a different regime; the copy targets (case 4) are defined by the full 256 MB run)"
        )
    for r in failed:
        print(f"  FAIL {r.case}: {r.ratio_text()} (target {r.target_text()})")
    print(f"\nelapsed: {timeit.default_timer() - start:.1f} s")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
