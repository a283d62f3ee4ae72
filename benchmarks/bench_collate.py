#!/usr/bin/env python
"""Collate and prefetch report for tensorbridge: ``tb.collate`` against ``default_collate`` and its workarounds.

Run:  python benchmarks/bench_collate.py              (full, about a minute on 2 cores)
      python benchmarks/bench_collate.py --quick      (CI smoke run, < 60 s on 2 cores)
      python benchmarks/bench_collate.py --only 1,4   (some rows only: 1-7)

Rows (ratio = baseline time / tensorbridge time, so > 1 means tensorbridge is faster):

  1. 256 dict samples of 10 float32 (8,) arrays: ``tb.collate`` vs ``default_collate``; >= 3x.
  2. 256 namedtuple samples (three small arrays and an int): vs ``default_collate``, which also
     returns the namedtuple type (checked), so both build the same batch; >= 2x.
  3. 256 dataclass samples (the same fields): vs the usual workaround
     ``default_collate([dataclasses.asdict(s) for s in samples])`` (``default_collate`` refuses
     dataclasses); >= 2x. The details also show a shallow ``vars(s)`` workaround (no deepcopy).
  4. 64 (uint8 (3, 224, 224) image, int label) tuples: vs ``default_collate``; >= 1.0x. Also the
     copy bandwidth tensorbridge reaches (image bytes / tb time) as a share of this machine's
     memcpy bandwidth (``np.copyto`` of as many bytes between two preallocated buffers, timed in
     the same loop). tensorbridge writes into fresh memory, so that share includes page faults.
  5. Columns ``default_collate`` refuses, each vs the hand-written per-sample fix then
     ``default_collate``; each >= 1.5x:
     a. 64 big-endian ``>f4`` (3, 64, 64) + label: ``a.astype(a.dtype.newbyteorder('='))``;
     b. 64 ``ml_dtypes.bfloat16`` (3, 64, 64) + label:
        ``torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)``;
     c. 64 flipped uint8 images ``img[..., ::-1]`` (224, 224, 3) + label: ``np.ascontiguousarray(a)``.
  6. ``DataLoader(num_workers=2, batch_size=256)`` over a map-style Dataset of dict samples
     (10 float32 (8,) arrays; 8192 samples, 2048 with --quick), ``collate_fn=tb.collate`` vs the
     default collate, same settings (fork context on Linux, persistent_workers=False): batches
     per second over a full epoch (worker start included; the steady rate after the first batch
     is in the details); >= 1.0x.
  7. GPU only (``torch.cuda.is_available()``): 200 batches (50 with --quick) of 256 dict samples
     of 10 float32 (8,) arrays, ``tb.prefetch(DataLoader(ds, collate_fn=tb.collate,
     num_workers=2), "cuda")`` vs ``DataLoader(pin_memory=True, num_workers=2)`` and a per-leaf
     ``.to("cuda", non_blocking=True)``; each batch consumed by a small GPU op (the sum of every
     leaf), synchronized at the end; batches per second; >= 2x. Without CUDA: "unmeasured (no GPU)".

Method: every result is checked once before timing (every leaf ``torch.equal`` to the
baseline's, dtypes and shapes equal, and the container types where they should match), so a
wrong result cannot look fast: such a row is reported as ERROR instead. Rows 1-5: each
candidate is warmed up once, then timed with ``time.perf_counter`` around a calibrated number
of calls (a run lasts at least 50 ms, 10 ms with --quick); candidates are interleaved within
each round, the order flipping every round; the table shows the **best** (minimum) per-call
time over the rounds, the details the median too. Rows 6-7: one warm-up epoch per loader
(which is also the check), then 3 interleaved epochs each (2 with --quick), **best** shown.

The exit status is 0, also when targets are missed (this is a report: MISS); 1 when a row
raised or a result was wrong (ERROR, traceback on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple

import ml_dtypes
import numpy as np
import torch
import torch.utils.data
from torch.utils.data import DataLoader, default_collate

import tensorbridge as tb

ROWS: Final = ("1", "2", "3", "4", "5", "6", "7")
N_SAMPLES: Final = 256
N_LEAVES: Final = 10
LEAF_SHAPE: Final = (8,)
Array = np.ndarray[Any, Any]


# --- timing -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Per-call times of one candidate over the rounds."""

    best: float
    median: float


def _run(fn: Callable[[], Any], number: int) -> float:
    """Seconds per call of ``number`` back-to-back calls of ``fn``."""
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def _calibrate(fn: Callable[[], Any], min_run_s: float) -> int:
    """Smallest number of calls (1, 2, 5, 10, 20, ...) whose run lasts at least ``min_run_s``."""
    number = 1
    while True:
        for mult in (1, 2, 5):
            n = number * mult
            if _run(fn, n) * n >= min_run_s:
                return n
        number *= 10


def measure(cands: dict[str, Callable[[], Any]], *, rounds: int, min_run_s: float) -> dict[str, Stats]:
    """Best and median per-call time of each candidate over interleaved rounds (order flips each round)."""
    for fn in cands.values():  # warm-up: first-call caches, allocator, page tables
        fn()
    numbers = {name: _calibrate(fn, min_run_s) for name, fn in cands.items()}
    names = list(cands)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(_run(cands[name], numbers[name]))
        gc.collect()
    return {name: Stats(min(ts), statistics.median(ts)) for name, ts in times.items()}


# --- report -----------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: times per call (rows 1-5) or per batch (rows 6-7)."""

    case: str
    base_name: str
    target: float
    base_s: float = float("nan")
    tb_s: float = float("nan")
    unit: Literal["call", "batch"] = "call"
    skipped: str = ""  # set when the row could not be measured here (no GPU): neither PASS nor MISS
    error: str = ""  # set when the row raised or tensorbridge's result was wrong

    @property
    def ratio(self) -> float:
        """Baseline time / tensorbridge time (> 1: tensorbridge is faster)."""
        return self.base_s / self.tb_s

    @property
    def verdict(self) -> str:
        """PASS, MISS, ERROR or '-' (unmeasured)."""
        if self.error:
            return "ERROR"
        if self.skipped:
            return "-"
        return "PASS" if self.ratio >= self.target else "MISS"


def fmt_time(s: float) -> str:
    """A duration with a readable unit."""
    if s != s:  # NaN: not measured
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_value(row: Row, s: float) -> str:
    """A row's time as shown: per call, or batches per second for loader rows."""
    if row.unit == "batch":
        return "n/a" if s != s else f"{1 / s:,.1f} batch/s"
    return fmt_time(s)


def print_table(rows: list[Row]) -> None:
    """The report's one table."""
    print("| row | baseline | tensorbridge | ratio (baseline/tb) | target | result |")
    print("|---|---:|---:|---:|---:|:---:|")
    for r in rows:
        if r.error or r.skipped:
            ratio = r.error or r.skipped
            base, mine = "n/a", "n/a"
        else:
            ratio, base, mine = f"{r.ratio:.2f}x", fmt_value(r, r.base_s), fmt_value(r, r.tb_s)
        print(
            f"| {r.case} | {base} ({r.base_name}) | {mine} | {ratio} | >= {r.target:g}x | "
            f"{'**' + r.verdict + '**' if r.verdict in ('MISS', 'ERROR') else r.verdict} |"
        )


def header(quick: bool) -> None:
    """Versions, machine and mode."""
    print("## tensorbridge collate benchmark\n")
    print(
        f"- tensorbridge {tb.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"ml_dtypes {ml_dtypes.__version__}, python {platform.python_version()}"
    )
    print(
        f"- CPUs: os.cpu_count()={os.cpu_count()}, usable={len(os.sched_getaffinity(0))}, "
        f"torch.get_num_threads()={torch.get_num_threads()}; {platform.system()} {platform.release()} "
        f"{platform.machine()}"
    )
    print(
        f"- mode: {'quick' if quick else 'full'}; rows 1-5: best of {_rounds(quick)} interleaved rounds; "
        f"rows 6-7: best of {_epochs(quick)} interleaved epochs after one warm-up epoch\n",
        flush=True,
    )


def _rounds(quick: bool) -> int:
    """Rounds for the per-call rows."""
    return 5 if quick else 15


def _min_run(quick: bool) -> float:
    """Shortest timed run for the per-call rows, seconds."""
    return 0.01 if quick else 0.05


def _epochs(quick: bool) -> int:
    """Timed epochs per loader for rows 6 and 7."""
    return 2 if quick else 3


# --- checks -----------------------------------------------------------------------------------------


def _leaves(x: Any) -> Iterator[Any]:
    """The leaves of a batch in order: dict values, sequence items, dataclass fields."""
    if isinstance(x, dict):
        for v in x.values():
            yield from _leaves(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _leaves(v)
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        for f in dataclasses.fields(x):
            yield from _leaves(getattr(x, f.name))
    else:
        yield x


def assert_same(out: Any, ref: Any) -> None:
    """Assert the batch ``out`` holds ``ref``'s leaves: tensors of equal dtype, shape and values."""
    mine, theirs = list(_leaves(out)), list(_leaves(ref))
    assert len(mine) == len(theirs), f"{len(mine)} leaves, expected {len(theirs)}"
    for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        if isinstance(b, torch.Tensor):
            assert isinstance(a, torch.Tensor), f"leaf {i}: {type(a).__name__}, expected a tensor"
            assert a.dtype == b.dtype, f"leaf {i}: dtype {a.dtype}, expected {b.dtype}"
            assert a.shape == b.shape, f"leaf {i}: shape {tuple(a.shape)}, expected {tuple(b.shape)}"
            assert a.device == b.device, f"leaf {i}: on {a.device}, expected {b.device}"
            assert torch.equal(a, b), f"leaf {i}: values differ"
        else:
            assert a == b, f"leaf {i}: {a!r}, expected {b!r}"


# --- rows 1-5: one collate call ---------------------------------------------------------------------


class Sample(NamedTuple):
    """Row 2's sample."""

    image: Array
    mask: Array
    box: Array
    label: int


@dataclass
class DataSample:
    """Row 3's sample: Row 2's fields in a dataclass."""

    image: Array
    mask: Array
    box: Array
    label: int


def _fields(rng: np.random.Generator, i: int) -> dict[str, Any]:
    """Rows 2-3's fields: three small arrays and an int."""
    return {
        "image": rng.random((3, 4, 4), dtype=np.float32),
        "mask": rng.integers(0, 2, (4, 4), dtype=np.uint8),
        "box": rng.random(4, dtype=np.float32),
        "label": i % 10,
    }


def dict_samples(n: int, seed: int = 0) -> list[dict[str, Array]]:
    """``n`` dicts of ``N_LEAVES`` float32 arrays of ``LEAF_SHAPE``."""
    rng = np.random.default_rng(seed)
    return [{f"x{k}": rng.random(LEAF_SHAPE, dtype=np.float32) for k in range(N_LEAVES)} for _ in range(n)]


def call_row(
    rows: list[Row],
    quick: bool,
    case: str,
    target: float,
    tb_fn: Callable[[], Any],
    baselines: dict[str, Callable[[], Any]],
    check: Callable[[Any, Any], None] = assert_same,
    extra: dict[str, Callable[[], Any]] | None = None,
) -> dict[str, Stats]:
    """Check then time ``tb_fn`` against ``baselines`` (the first one is the row's); add the row."""
    ref = next(iter(baselines.values()))()
    check(tb_fn(), ref)
    for fn in list(baselines.values())[1:]:
        assert_same(fn(), ref)  # any other baseline builds the same batch
    t = measure({"tb": tb_fn, **baselines, **(extra or {})}, rounds=_rounds(quick), min_run_s=_min_run(quick))
    base = next(iter(baselines))
    rows.append(Row(case, base, target, t[base].best, t["tb"].best))
    return t


def details(label: str, t: dict[str, Stats]) -> str:
    """One line of the details: every candidate's best and median."""
    parts = ", ".join(f"{n}: best {fmt_time(s.best)}, median {fmt_time(s.median)}" for n, s in t.items())
    return f"{label}: {parts}"


def row1(rows: list[Row], notes: list[str], quick: bool) -> None:
    """Row 1: dict samples."""
    samples = dict_samples(N_SAMPLES)
    t = call_row(
        rows,
        quick,
        f"1. {N_SAMPLES} dicts of {N_LEAVES} float32 {LEAF_SHAPE}",
        3.0,
        lambda: tb.collate(samples),
        {"default_collate": lambda: default_collate(samples)},
    )
    notes.append(details("1", t))


def row2(rows: list[Row], notes: list[str], quick: bool) -> None:
    """Row 2: namedtuple samples; both collates return the namedtuple."""
    rng = np.random.default_rng(2)
    samples = [Sample(**_fields(rng, i)) for i in range(N_SAMPLES)]

    def check(out: Any, ref: Any) -> None:
        assert type(ref) is Sample, f"default_collate returned {type(ref).__name__}"
        assert type(out) is Sample, f"tb.collate returned {type(out).__name__}"
        assert_same(out, ref)

    t = call_row(
        rows,
        quick,
        f"2. {N_SAMPLES} namedtuples (3 small arrays + int)",
        2.0,
        lambda: tb.collate(samples),
        {"default_collate": lambda: default_collate(samples)},
        check,
    )
    notes.append(details("2", t))


def row3(rows: list[Row], notes: list[str], quick: bool) -> None:
    """Row 3: dataclass samples, against ``default_collate`` of ``asdict`` (and of a shallow ``vars``)."""
    rng = np.random.default_rng(3)
    samples = [DataSample(**_fields(rng, i)) for i in range(N_SAMPLES)]
    asdict = dataclasses.asdict

    def check(out: Any, ref: Any) -> None:
        assert type(out) is DataSample, f"tb.collate returned {type(out).__name__}"
        assert_same(out, ref)
        assert_same(default_collate([dict(vars(s)) for s in samples]), ref)  # the shallow variant too

    t = call_row(
        rows,
        quick,
        f"3. {N_SAMPLES} dataclasses (3 small arrays + int)",
        2.0,
        lambda: tb.collate(samples),
        {"default_collate(asdict)": lambda: default_collate([asdict(s) for s in samples])},
        check,
        extra={"default_collate(vars) (shallow, info)": lambda: default_collate([dict(vars(s)) for s in samples])},
    )
    notes.append(details("3", t))


def row4(rows: list[Row], notes: list[str], quick: bool) -> None:
    """Row 4: uint8 images and labels; tb's copy bandwidth against memcpy."""
    n = 64
    rng = np.random.default_rng(4)
    samples = [(rng.integers(0, 256, (3, 224, 224), dtype=np.uint8), i % 10) for i in range(n)]
    nbytes = n * samples[0][0].nbytes
    src, dst = np.ones(nbytes, np.uint8), np.zeros(nbytes, np.uint8)  # touched: no page faults when timed

    def check(out: Any, ref: Any) -> None:
        assert type(out) is tuple, f"tb.collate returned {type(out).__name__}"  # default_collate: a list
        assert_same(out, ref)

    t = call_row(
        rows,
        quick,
        f"4. {n} (uint8 (3, 224, 224), int) tuples",
        1.0,
        lambda: tb.collate(samples),
        {"default_collate": lambda: default_collate(samples)},
        check,
        extra={"memcpy": lambda: np.copyto(dst, src)},
    )
    tb_bw, mem_bw = nbytes / t["tb"].best, nbytes / t["memcpy"].best
    base_bw = nbytes / t["default_collate"].best
    notes.append(details("4", t))
    notes.append(
        f"4 bandwidth: images {nbytes / 1e6:.1f} MB; tb.collate {tb_bw / 1e9:.2f} GB/s = "
        f"{100 * tb_bw / mem_bw:.0f}% of memcpy ({mem_bw / 1e9:.2f} GB/s, np.copyto between preallocated "
        f"buffers); default_collate {base_bw / 1e9:.2f} GB/s = {100 * base_bw / mem_bw:.0f}%"
    )


def row5(rows: list[Row], notes: list[str], quick: bool) -> None:
    """Rows 5a-5c: big-endian, bfloat16 and flipped columns against the hand-written fixes."""
    n = 64
    rng = np.random.default_rng(5)
    fn = torch.from_numpy

    big = [(rng.random((3, 64, 64), dtype=np.float32).astype(">f4"), i % 10) for i in range(n)]
    t = call_row(
        rows,
        quick,
        f"5a. {n} (>f4 (3, 64, 64), int): big-endian",
        1.5,
        lambda: tb.collate(big),
        {
            "astype(native) + default_collate": lambda: default_collate(
                [(a.astype(a.dtype.newbyteorder("=")), y) for a, y in big]
            )
        },
    )
    notes.append(details("5a", t))

    bf16 = [(rng.random((3, 64, 64), dtype=np.float32).astype(ml_dtypes.bfloat16), i % 10) for i in range(n)]
    u16, bf = np.uint16, torch.bfloat16
    t = call_row(
        rows,
        quick,
        f"5b. {n} (bfloat16 (3, 64, 64), int): ml_dtypes",
        1.5,
        lambda: tb.collate(bf16),
        {
            "view as bfloat16 + default_collate": lambda: default_collate(
                [(fn(a.view(u16)).view(bf), y) for a, y in bf16]
            )
        },
    )
    notes.append(details("5b", t))

    flipped = [(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)[..., ::-1], i % 10) for i in range(n)]
    asc = np.ascontiguousarray
    t = call_row(
        rows,
        quick,
        f"5c. {n} (uint8 (224, 224, 3)[..., ::-1], int): flipped",
        1.5,
        lambda: tb.collate(flipped),
        {"ascontiguousarray + default_collate": lambda: default_collate([(asc(a), y) for a, y in flipped])},
    )
    notes.append(details("5c", t))


# --- rows 6-7: DataLoader epochs --------------------------------------------------------------------


class DictDataset(torch.utils.data.Dataset[dict[str, Array]]):
    """A map-style dataset of dicts of ``N_LEAVES`` float32 ``LEAF_SHAPE`` arrays (views of one block)."""

    def __init__(self, n: int, seed: int = 6) -> None:
        self.data = np.random.default_rng(seed).random((n, N_LEAVES, *LEAF_SHAPE), dtype=np.float32)
        self.keys = [f"x{k}" for k in range(N_LEAVES)]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Array]:
        row = self.data[i]
        return {k: row[j] for j, k in enumerate(self.keys)}


def loader(ds: torch.utils.data.Dataset[Any], workers: int = 2, **kw: Any) -> DataLoader[Any]:
    """The rows' loader settings: batches of 256, fork workers on Linux, not persistent."""
    if workers:
        kw.setdefault("multiprocessing_context", "fork" if sys.platform.startswith("linux") else None)
        kw["persistent_workers"] = False
    return DataLoader(ds, batch_size=N_SAMPLES, shuffle=False, num_workers=workers, **kw)


@dataclass
class Epoch:
    """One timed pass: its total time, and the time after the first batch arrived."""

    total_s: float
    after_first_s: float
    batches: int
    result: Any = None


def epoch(make: Callable[[], Iterable[Any]], consume: Callable[[Any], Any] = lambda b: None) -> Epoch:
    """Time one full pass over ``make()`` (the loader's worker start included), consuming each batch."""
    t0 = time.perf_counter()
    it = iter(make())
    t1 = t0
    n = 0
    last = None
    for batch in it:
        last = consume(batch)
        n += 1
        if n == 1:
            t1 = time.perf_counter()
    if isinstance(last, torch.Tensor) and last.device.type == "cuda":
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    return Epoch(t2 - t0, t2 - t1, n, last)


def interleaved_epochs(
    cands: dict[str, tuple[Callable[[], Iterable[Any]], Callable[[Any], Any]]], n: int
) -> dict[str, list[Epoch]]:
    """``n`` epochs of each candidate, interleaved (the order flips every round)."""
    names = list(cands)
    out: dict[str, list[Epoch]] = {name: [] for name in names}
    for r in range(n):
        for name in names if r % 2 == 0 else names[::-1]:
            make, consume = cands[name]
            out[name].append(epoch(make, consume))
            gc.collect()
    return out


def _epoch_details(label: str, runs: dict[str, list[Epoch]]) -> str:
    """Per candidate: best and median epoch rate, and the best steady rate after the first batch."""
    parts = []
    for name, eps in runs.items():
        rates = [e.batches / e.total_s for e in eps]
        steady = max((e.batches - 1) / e.after_first_s for e in eps if e.after_first_s > 0)
        parts.append(
            f"{name}: best {max(rates):,.1f} batch/s, median {statistics.median(rates):,.1f}, "
            f"steady after the first batch {steady:,.1f} batch/s"
        )
    return f"{label} ({eps[0].batches} batches per epoch): " + "; ".join(parts)


def _best_per_batch(eps: list[Epoch]) -> float:
    """Seconds per batch of the fastest epoch."""
    return min(e.total_s / e.batches for e in eps)


def row6(rows: list[Row], notes: list[str], quick: bool) -> None:
    """Row 6: a 2-worker DataLoader epoch, tb.collate against the default collate."""
    ds = DictDataset(2048 if quick else 8192)
    cands: dict[str, tuple[Callable[[], Iterable[Any]], Callable[[Any], Any]]] = {
        "tb": (lambda: loader(ds, collate_fn=tb.collate), lambda b: None),
        "default": (lambda: loader(ds), lambda b: None),
    }
    # Warm-up epoch of each, which is also the check: every batch equal.
    mine, theirs = list(loader(ds, collate_fn=tb.collate)), list(loader(ds))
    assert len(mine) == len(theirs) == -(-len(ds) // N_SAMPLES)
    for a, b in zip(mine, theirs, strict=True):
        assert type(a) is dict, f"tb.collate returned {type(a).__name__}"
        assert_same(a, b)
    del mine, theirs
    runs = interleaved_epochs(cands, _epochs(quick))
    rows.append(
        Row(
            f"6. DataLoader(num_workers=2) epoch, {len(ds)} dict samples",
            "default collate",
            1.0,
            _best_per_batch(runs["default"]),
            _best_per_batch(runs["tb"]),
            unit="batch",
        )
    )
    notes.append(_epoch_details("6", runs))


def _gpu_info() -> str:
    """The GPU's name, the driver version (from nvidia-smi, where there is one) and torch's CUDA."""
    name = torch.cuda.get_device_name()
    driver = "unknown"
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            res = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            driver = res.stdout.strip().splitlines()[0] if res.returncode == 0 and res.stdout.strip() else driver
        except (OSError, subprocess.SubprocessError):
            pass
    return f"GPU {name}, driver {driver}, torch CUDA {torch.version.cuda}"


def _gpu_sum(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The small GPU op that consumes a batch: the sum of every leaf (queued, not waited for)."""
    return torch.stack([v.sum() for v in batch.values()]).sum()


def row7(rows: list[Row], notes: list[str], quick: bool, device: str = "cuda") -> None:
    """Row 7: tb.prefetch over a tb.collate loader against pin_memory=True and per-leaf .to(non_blocking)."""
    case = "7. GPU loop: tb.prefetch + tb.collate vs pin_memory + .to()"
    base_name = "pin_memory=True + per-leaf .to(non_blocking)"
    if device == "cuda" and not torch.cuda.is_available():
        rows.append(Row(case, base_name, 2.0, skipped="unmeasured (no GPU)", unit="batch"))
        return
    pin = device == "cuda"
    if pin:
        notes.append(f"7: {_gpu_info()}")
    n_batches = 50 if quick else 200
    ds = DictDataset(n_batches * N_SAMPLES)

    def to_device(b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(device, non_blocking=True) for k, v in b.items()}

    # Check: three batches through each route, no workers, every leaf equal on the device.
    sub = torch.utils.data.Subset(ds, range(3 * N_SAMPLES))
    mine = list(tb.prefetch(loader(sub, 0, collate_fn=tb.collate), device))
    theirs = [to_device(b) for b in loader(sub, 0, pin_memory=pin)]
    assert len(mine) == len(theirs) == 3
    for a, b in zip(mine, theirs, strict=True):
        assert type(a) is dict, f"tb.prefetch returned {type(a).__name__}"
        assert_same(a, b)
    del mine, theirs

    cands: dict[str, tuple[Callable[[], Iterable[Any]], Callable[[Any], Any]]] = {
        "tb": (lambda: tb.prefetch(loader(ds, collate_fn=tb.collate), device), _gpu_sum),
        "baseline": (lambda: loader(ds, pin_memory=pin), lambda b: _gpu_sum(to_device(b))),
    }
    warm = {name: epoch(make, consume) for name, (make, consume) in cands.items()}
    assert warm["tb"].batches == warm["baseline"].batches == n_batches
    assert torch.equal(warm["tb"].result, warm["baseline"].result), "the last batch's sums differ"
    runs = interleaved_epochs(cands, _epochs(quick))
    rows.append(
        Row(
            f"{case} ({n_batches} batches){'' if pin else ' [on ' + device + ']'}",
            base_name,
            2.0,
            _best_per_batch(runs["baseline"]),
            _best_per_batch(runs["tb"]),
            unit="batch",
        )
    )
    notes.append(_epoch_details("7", runs))


# --- main -------------------------------------------------------------------------------------------

STEPS: Final[dict[str, Callable[[list[Row], list[str], bool], None]]] = {
    "1": row1,
    "2": row2,
    "3": row3,
    "4": row4,
    "5": row5,
    "6": row6,
    "7": row7,
}


def run(only: Sequence[str], quick: bool) -> tuple[list[Row], list[str]]:
    """Every selected row in order; one that raises becomes an ERROR row and the others still run."""
    rows: list[Row] = []
    notes: list[str] = []
    for key in only:
        print(f"running row {key} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            STEPS[key](rows, notes, quick)
        except Exception as err:  # reported: one broken row must not hide the others
            traceback.print_exc()
            lines = str(err).strip().splitlines()
            text = f"{type(err).__name__}: {lines[0] if lines else ''}".replace("|", "/")
            rows.append(Row(f"{key}. (traceback on stderr)", "-", 0.0, error=text[:120]))
        print(f"  row {key}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        gc.collect()
    return rows, notes


def main() -> int:
    """Parse the flags, run the rows, print the report; 1 if a row raised or was wrong."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller loaders (CI)")
    parser.add_argument("--only", metavar="ROWS", help="comma-separated rows to run, e.g. 1,4 (1-7)")
    args = parser.parse_args()
    only: list[str] = list(ROWS)
    if args.only is not None:
        only = [r.strip() for r in args.only.split(",") if r.strip()]
        if not only or not set(only) <= set(ROWS):
            parser.error(f"--only takes rows from {','.join(ROWS)}, got {args.only!r}")
        only = [r for r in ROWS if r in only]
    start = time.perf_counter()
    header(args.quick)
    rows, notes = run(only, args.quick)
    print_table(rows)
    if notes:
        print("\nDetails (per call for rows 1-5; ratios in the table use the best times):")
        for line in notes:
            print(f"  - {line}")
    measured = [r for r in rows if not r.skipped and not r.error]
    missed = [r for r in measured if r.verdict == "MISS"]
    errors = [r for r in rows if r.error]
    print(f"\nTargets: {len(measured) - len(missed)}/{len(measured)} pass")
    for r in missed:
        print(f"  MISS {r.case}: {r.ratio:.2f}x (target >= {r.target:g}x)")
    for r in errors:
        print(f"  ERROR {r.case}: {r.error}")
    if args.quick:
        print("  (quick mode: fewer rounds and smaller loaders; the full run defines the targets)")
    print(f"\nelapsed: {time.perf_counter() - start:.1f} s")
    sys.stdout.flush()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
