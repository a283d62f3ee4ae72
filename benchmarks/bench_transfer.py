#!/usr/bin/env python
"""Host <-> GPU transfer report for tensorbridge: how close to the link, how much faster than torch.

Run on the GPU machine (from the repository root, with the dev venv active):

    python benchmarks/bench_transfer.py            # full: 1 GiB cases, about a minute on an H100
    python benchmarks/bench_transfer.py --quick    # 64 MiB cases, fewer repeats
    python benchmarks/bench_transfer.py --fake --quick   # no GPU: CI's smoke run (< 30 s on 2 cores)
    python benchmarks/bench_transfer.py --only 1,2,3,5   # only the big cases against the raw pinned copy

Cases, each timed against its baseline in the same loop:

  1. ceiling: a raw copy of the same bytes between a pinned host buffer and the device, each way
     (``dst.copy_(src, non_blocking=True)`` then ``torch.cuda.synchronize()``), in GB/s. Cases
     2, 3 and 5 time this copy again inside their own loops and compare against that. The H2D
     ceiling is checked against the PCIe link ``nvidia-smi`` reports (queried right after the
     copies, as an idle link may train down): below 0.6x of the link's raw bandwidth, or below
     10 GB/s when no link is reported, the machine is flagged SUSPECT (a degraded link, a GPU
     behind a busy switch, the far NUMA node, a loaded host). The link is printed either way.
  2. 1 GiB pageable float32 array -> GPU (staged route): >= 0.8x (aim 0.9x) of the H2D ceiling, and
     >= 1.5x faster than ``torch.from_numpy(x).to("cuda")``.
  3. a 1 GiB ``pin_memory=True`` tensor, and its ``.numpy()`` view -> GPU (pinned route): >= 0.95x
     of the ceiling.
  4. dict of 256 arrays of 16 KiB -> GPU (packed route): >= 5x (aim 10x) faster than a
     ``{k: torch.from_numpy(v).to("cuda")}`` loop.
  5. 1 GiB CUDA tensor -> new NumPy array (staged): >= 0.7x of the D2H ceiling; ratio against
     ``t.cpu().numpy()`` shown too.
  6. dict of 256 CUDA tensors of 16 KiB -> NumPy (packed): >= 5x faster than a
     ``{k: v.cpu().numpy()}`` loop.
  7. one 4 KiB array -> GPU: latency <= 1.25x of ``torch.from_numpy(x).to("cuda")``.
  8. 1 GiB float64 -> GPU as float32 (cast on the host, half the bytes on the wire) against
     ``torch.from_numpy(x64).to("cuda").float()``: informative, no target.

Method: every candidate is warmed up first (the first transfer allocates the pinned staging pool,
about a second per GiB, and torch's caches), then timed ``reps`` times with
``time.perf_counter`` around the call and a device synchronization before and after, baseline
and tensorbridge alternating within each round (the order flips every round). The table shows
medians; "details" lists the best times too. Every candidate's result is checked bit for bit
against the input on its first and its last timed call, so a fast wrong result shows as WRONG,
never as a win. Under the table, each case's route as planned (``tb.explain``) and what one
extra, untimed call asked of the CUDA backend: copies through pinned staging buffers, torch
``.to()`` calls, new pinned buffers (0 in steady state: the warm-up paid for them).

``--fake`` runs every case's tensorbridge path through the fake CUDA backend of the test suite
(``tests/fakegpu.py``: "device" memory is host memory, copies run on a worker thread) with
small sizes; baselines that need a real GPU become plain host copies. Its numbers are not GPU
figures: the run only shows that the script and every route still work and are bit-exact.

Exit status: 0, also when targets are missed (this is a report, the table says PASS or MISS);
1 when a result was wrong or a case failed. Without CUDA and without ``--fake``: a message, 0.
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
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from unittest import mock

import numpy as np
import torch

import tensorbridge as tb

KiB: Final = 1 << 10
MiB: Final = 1 << 20
GiB: Final = 1 << 30
REPO: Final = Path(__file__).resolve().parent.parent
NO_CUDA: Final = "no CUDA device: run on a GPU machine, or pass --fake for a smoke run"
# Raw PCIe bandwidth per lane and direction, GB/s, by generation (after line coding: 8b/10b up to
# Gen2, 128b/130b from Gen3; Gen6 counted like Gen5 doubled, less FLIT overhead).
PCIE_LANE_GBPS: Final = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.56}
# Pinned H2D copies reach 75-90% of the raw rate (Gen5 x16: ~50-55 of 63 GB/s); below this
# share of the link's raw rate the machine is suspect, whatever the GPU.
MIN_LINK_SHARE: Final = 0.6
# Without a reported link: below a Gen3 x16 link's usual ~12 GB/s is slow for any GPU of the
# last decade.
MIN_H2D_GBPS: Final = 10.0
# Case numbers --only accepts (1-8, see above).
CASES: Final = tuple(str(i) for i in range(1, 9))
# Fake mode: small chunks, so that a few MiB take every route through many chunks and groups,
# and two host threads (CI machines have two cores).
FAKE_CONFIG: Final = {
    "chunk_bytes": 256 * KiB,
    "ring": 3,
    "pinned_cap_bytes": 1 * MiB,
    "threads": 2,
    "small_max_bytes": 64 * KiB,
    "pack_min_leaves": 4,
}
FAKE_BANNER: Final = (
    "!!! FAKE MODE: 'device' memory is host memory and copies run on a Python thread (tests/fakegpu.py).\n"
    "!!! These numbers are NOT GPU figures and say nothing about performance. This run only checks\n"
    "!!! that every case's tensorbridge path runs and returns bit-exact results."
)

Array = np.ndarray[Any, Any]
Check = Callable[[Any], "str | None"]
Where = Literal["device", "host"]


# --- the device side: real CUDA, or the test suite's fake backend ---------------------------------


@dataclass(frozen=True)
class Device:
    """What the cases need from the device side, as plain functions.

    Attributes:
        fake: the fake backend (no targets apply).
        name: the GPU's name.
        info: header lines (GPU, driver, link).
        sync: wait for all queued device work.
        free: release cached device memory between cases.
        upload_naive: the baseline host -> device copy of a host tensor.
        up_name: how the table names it.
        naive_where: where the baseline's results live ("device"; None in fake mode: host copies).
        download_naive: the baseline device -> NumPy copy.
        down_name: how the table names it.
        put: a host array on the device (setup, never timed).
        pinned: ``(numel, dtype)`` -> a page-locked host tensor.
        empty: ``nbytes`` -> a uint8 device tensor.
        raw_copy: ``dst.copy_(src, non_blocking=True)`` between pinned host and device memory.
        to_host: a device (or host) tensor's values as a host array, for checks.
        target: the device conversions go to.
        bus: the GPU's PCI bus id (None: unknown, or fake).
    """

    fake: bool
    name: str
    info: list[str]
    sync: Callable[[], None]
    free: Callable[[], None]
    upload_naive: Callable[[torch.Tensor], torch.Tensor]
    up_name: str
    naive_where: Where | None
    download_naive: Callable[[torch.Tensor], Array]
    down_name: str
    put: Callable[[Array], torch.Tensor]
    pinned: Callable[[int, torch.dtype], torch.Tensor]
    empty: Callable[[int], torch.Tensor]
    raw_copy: Callable[[torch.Tensor, torch.Tensor], None]
    to_host: Callable[[torch.Tensor], Array]
    target: str = "cuda"
    bus: str | None = None  # the GPU's PCI bus id, for nvidia-smi -i


def _nvidia_smi(query: str, gpu: str | None = None) -> str | None:
    """One field from ``nvidia-smi --query-gpu`` (first GPU, or the one with this PCI bus id), or None."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    cmd = [exe, f"--query-gpu={query}", "--format=csv,noheader"]
    if gpu is not None:
        cmd += ["-i", gpu]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or "N/A" in lines[0] or "not" in lines[0].lower():
        return None
    return lines[0].strip()


@dataclass(frozen=True)
class Link:
    """A PCIe link as ``nvidia-smi`` reports it (generation and lane count, now and at most)."""

    gen: int
    gen_max: int
    width: int
    width_max: int

    @property
    def raw_gbps(self) -> float:
        """The raw rate, one direction, of the best link this GPU and slot can train to (GB/s)."""
        return PCIE_LANE_GBPS.get(self.gen_max, PCIE_LANE_GBPS[6]) * self.width_max

    def __str__(self) -> str:
        now = f"gen {self.gen} x{self.width}"
        best = f"gen {self.gen_max} x{self.width_max}"
        down = "" if (self.gen, self.width) == (self.gen_max, self.width_max) else " (below its max: trained down?)"
        return f"PCIe {now} now, max {best}{down}: {self.raw_gbps:.1f} GB/s raw per direction"


def pcie_link(bus: str | None) -> Link | None:
    """The GPU's PCIe link from ``nvidia-smi`` (this PCI bus id, else the first GPU), or None."""
    query = "pcie.link.gen.current,pcie.link.gen.max,pcie.link.width.current,pcie.link.width.max"
    text = (_nvidia_smi(query, bus) if bus else None) or _nvidia_smi(query)
    if text is None:
        return None
    try:
        gen, gen_max, width, width_max = (int(p.strip()) for p in text.split(","))
    except ValueError:
        return None
    if min(gen, gen_max, width, width_max) <= 0:
        return None
    return Link(gen, gen_max, width, width_max)


def h2d_floor(link: Link | None) -> tuple[float, str]:
    """The H2D ceiling (GB/s) below which the machine is suspect, and where the number comes from."""
    if link is None:
        return MIN_H2D_GBPS, "no PCIe link reported; any GPU"
    return MIN_LINK_SHARE * link.raw_gbps, f"{MIN_LINK_SHARE:g}x of gen {link.gen_max} x{link.width_max}"


def cuda_device() -> Device:
    index = torch.cuda.current_device()
    name = torch.cuda.get_device_name(index)
    props = torch.cuda.get_device_properties(index)
    pci = [getattr(props, a, None) for a in ("pci_domain_id", "pci_bus_id", "pci_device_id")]  # torch >= 2.2
    bus = f"{pci[0]:08X}:{pci[1]:02X}:{pci[2]:02X}.0" if all(isinstance(p, int) for p in pci) else None
    driver = _nvidia_smi("driver_version", bus) or _nvidia_smi("driver_version") or "unknown"
    link = pcie_link(bus)
    info = [
        f"GPU: {name} (cuda:{index} of {torch.cuda.device_count()}, {props.total_memory / GiB:.0f} GiB"
        + (f", PCI {bus}" if bus else "")
        + ")",
        f"driver {driver}, CUDA runtime (torch.version.cuda) {torch.version.cuda}",
    ]
    if link is not None:
        info.append(f"{link} (an idle link may show a lower gen; queried again after the ceiling copies)")
    else:
        info.append("PCIe link: not reported (no nvidia-smi, or no PCIe link to query)")

    def raw_copy(dst: torch.Tensor, src: torch.Tensor) -> None:
        dst.copy_(src, non_blocking=True)

    def free() -> None:
        gc.collect()
        torch.cuda.empty_cache()

    return Device(
        fake=False,
        name=name,
        info=info,
        sync=torch.cuda.synchronize,
        free=free,
        upload_naive=lambda t: t.to("cuda"),
        up_name='torch.from_numpy(x).to("cuda")',
        naive_where="device",
        download_naive=lambda t: t.cpu().numpy(),
        down_name="t.cpu().numpy()",
        put=lambda a: torch.from_numpy(a).to("cuda"),
        pinned=lambda n, dtype: torch.empty(n, dtype=dtype, pin_memory=True),
        empty=lambda n: torch.empty(n, dtype=torch.uint8, device="cuda"),
        raw_copy=raw_copy,
        to_host=lambda t: t.detach().cpu().numpy(),
        bus=bus,
    )


@contextmanager
def fake_device() -> Iterator[Device]:
    """The fake CUDA backend installed as tests/test_transfer.py installs it; restored on exit."""
    sys.path.insert(0, str(REPO))
    from tests.fakegpu import FakeCuda, FakeCudaTensor, on_fake, plain

    from tensorbridge.transfer.devices import install_backend

    def collect() -> None:
        gc.collect()

    fake = FakeCuda(devices=1, delay=0.0, seed=0)
    # The fake forgets a pinned buffer when its tensor object dies, even if a view keeps the
    # memory alive: keep the buffers themselves, so their views still count as pinned.
    keep: list[torch.Tensor] = []

    def pinned(n: int, dtype: torch.dtype) -> torch.Tensor:
        keep.append(fake.empty_pinned(n * dtype.itemsize))
        return keep[-1].view(dtype)

    before = tb.configure_transfers()
    tb.configure_transfers(**FAKE_CONFIG)
    old = install_backend(fake)
    FakeCudaTensor.backend = fake
    try:
        yield Device(
            fake=True,
            name="fake CUDA (tests/fakegpu.py, host memory)",
            info=["GPU: none. FAKE backend from tests/fakegpu.py: device memory is host memory"],
            sync=fake.sync,
            free=collect,
            upload_naive=lambda t: t.clone(),
            up_name="torch.from_numpy(x).clone() [fake: host copy]",
            naive_where=None,
            download_naive=lambda t: plain(t).clone().numpy(),
            down_name="t.clone().numpy() [fake: host copy]",
            put=lambda a: on_fake(torch.from_numpy(a)),
            pinned=pinned,
            empty=lambda n: fake.empty(n, torch.device("cuda", 0)),
            raw_copy=fake.copy,
            to_host=lambda t: plain(t).detach().numpy(),
        )
    finally:
        FakeCudaTensor.backend = None
        if old is not None:
            install_backend(old)
        tb.release_pinned()
        tb.configure_transfers(**dataclasses.asdict(before))


# --- checks -------------------------------------------------------------------------------------


def same_bits(got: Array, want: Array) -> bool:
    """Whether two arrays have the same dtype, shape and bytes (NaN payloads and -0.0 included)."""
    if got.dtype != want.dtype or got.shape != want.shape:
        return False
    g = np.ascontiguousarray(got).reshape(-1).view(np.uint8)
    w = np.ascontiguousarray(want).reshape(-1).view(np.uint8)
    if g.size % 8 == 0:  # fewer, wider comparisons: a 1 GiB check in a fraction of a second
        g, w = g.view(np.uint64), w.view(np.uint64)
    return bool(np.array_equal(g, w))


def expect_array(dev: Device, want: Array, where: Where | None) -> Check:
    """A check: the result is a device tensor ("device") or a NumPy array ("host") equal to ``want``."""

    def check(out: Any) -> str | None:
        if where == "device" and not (isinstance(out, torch.Tensor) and out.device.type == "cuda"):
            return f"expected a CUDA tensor, got {type(out).__name__} on {getattr(out, 'device', '?')}"
        if where == "host" and type(out) is not np.ndarray:
            return f"expected a numpy.ndarray, got {type(out).__name__}"
        got = out if isinstance(out, np.ndarray) else dev.to_host(out)
        if got.dtype != want.dtype or got.shape != want.shape:
            return f"got {got.dtype} {got.shape}, expected {want.dtype} {want.shape}"
        if not same_bits(got, want):
            g, w = (np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in (got, want))
            bad = np.flatnonzero(g != w)
            return f"{bad.size} of {g.size} bytes differ from the input, the first at byte {bad[0]}"
        return None

    return check


def expect_dict(dev: Device, want: dict[str, Array], where: Where | None) -> Check:
    """A check: a dict with ``want``'s keys, each value passing :func:`expect_array`."""
    leaves = {k: expect_array(dev, v, where) for k, v in want.items()}

    def check(out: Any) -> str | None:
        if not isinstance(out, dict) or out.keys() != want.keys():
            return f"expected a dict with the input's {len(want)} keys, got {type(out).__name__}"
        for key, leaf in leaves.items():
            problem = leaf(out[key])
            if problem is not None:
                return f"[{key!r}]: {problem}"
        return None

    return check


# --- timing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """The timed calls of one candidate, in seconds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        """The median call."""
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        """The fastest call."""
        return min(self.samples)


def timed(dev: Device, fn: Callable[[], Any]) -> tuple[float, Any]:
    """One call of ``fn`` with the device idle before and synchronized after."""
    dev.sync()
    start = time.perf_counter()
    out = fn()
    dev.sync()
    return time.perf_counter() - start, out


def measure(
    dev: Device,
    cands: dict[str, Callable[[], Any]],
    *,
    reps: int,
    warmup: int,
    checks: dict[str, Check],
    problems: list[str],
) -> dict[str, Timing]:
    """Warm up each candidate, then time ``reps`` interleaved rounds; check results on first and last calls."""

    def check(name: str, out: Any, when: str) -> None:
        if name in checks:
            problem = checks[name](out)
            if problem is not None:
                problems.append(f"{name} ({when}): {problem}")

    for name, fn in cands.items():
        for i in range(warmup):
            _, out = timed(dev, fn)
            if i == 0:
                check(name, out, "first call")
            del out
    names = list(cands)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            took, out = timed(dev, cands[name])
            samples[name].append(took)
            if r == reps - 1:
                check(name, out, "last timed call")
            del out  # freed before the next candidate runs: each one finds the same caches
    return {name: Timing(tuple(s)) for name, s in samples.items()}


# --- routes: planned, and what the backend was asked to do ----------------------------------------


def planned_routes(explanation: tb.Explanation) -> str:
    """The transfer routes ``tb.explain`` gives the leaves, e.g. ``packed x256 (18 groups)``."""
    routes: Counter[str] = Counter()
    groups: set[int] = set()
    chunks = 0
    for plan in explanation.plans:
        for step in plan.steps:
            if step.kind in ("to_device", "to_host"):
                routes[step.arg.route] += 1
                if step.arg.route == "packed":
                    groups.add(step.arg.group)
                if step.arg.route == "staged":
                    chunks += step.arg.chunks
    text = ", ".join(f"{route} x{n}" for route, n in routes.items()) or "no transfer"
    if groups:
        text += f" ({len(groups)} group{'s' * (len(groups) != 1)})"
    if chunks:
        text += f" ({chunks} chunks)"
    return text


@contextmanager
def backend_calls() -> Iterator[Counter[str]]:
    """Count the CUDA backend's copies, torch moves and pinned allocations (diagnostics; never around timing).

    ``copy`` is one copy through a pinned staging buffer (a staged chunk, a packed group),
    ``move`` one torch ``.to()`` (the direct and pinned routes), ``empty_pinned`` one new
    pinned buffer. The methods are patched on the installed backend object itself, so the
    pinned pool and the checked-device cache see the same backend.
    """
    from tensorbridge.transfer.devices import backend_for

    counts: Counter[str] = Counter()
    backend = backend_for("cuda")
    with ExitStack() as stack:
        if backend is not None:
            for name in ("copy", "move", "empty_pinned"):
                stack.enter_context(mock.patch.object(backend, name, _counting(getattr(backend, name), name, counts)))
        yield counts


def _counting(fn: Callable[..., Any], name: str, counts: Counter[str]) -> Callable[..., Any]:
    def spy(*args: Any) -> Any:
        counts[name] += 1
        return fn(*args)

    return spy


def executed_routes(dev: Device, fn: Callable[[], Any]) -> str:
    """What one untimed call of ``fn`` asks of the backend."""
    with backend_calls() as counts:
        timed(dev, fn)
    return (
        f"{counts['copy']} pinned-buffer copies, {counts['move']} torch .to(), "
        f"{counts['empty_pinned']} new pinned buffers"
    )


# --- the report ---------------------------------------------------------------------------------

Kind = Literal["ceiling", "of_ceiling", "faster", "time", "info"]


@dataclass
class Row:
    """One line of the table.

    ``kind`` says how ``ratio`` reads: "of_ceiling" ceiling time / tb time (share of the link's
    speed), "faster" baseline time / tb time, "time" tb time / baseline time, "info" a speedup
    with no target, "ceiling" the reference copy itself.
    """

    case: str
    kind: Kind
    tb_s: float
    nbytes: int = 0
    base_s: float | None = None
    base_name: str = ""
    target: float | None = None
    aim: float | None = None
    problems: list[str] = field(default_factory=list)
    suspect: bool = False
    error: bool = False
    target_note: str = ""  # a ceiling row's expectation (the link, the floor)

    @property
    def ratio(self) -> float | None:
        """See the class docstring."""
        if self.base_s is None or self.kind == "ceiling":
            return None
        return self.tb_s / self.base_s if self.kind == "time" else self.base_s / self.tb_s

    @property
    def passed(self) -> bool | None:
        """Whether the target is met (None: no target)."""
        r = self.ratio
        if r is None or self.target is None:
            return None
        return r <= self.target if self.kind == "time" else r >= self.target

    def aim_met(self) -> bool:
        """Whether the aim (a stricter target) is met too."""
        r = self.ratio
        return self.aim is None or r is None or r >= self.aim


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_bytes(n: int) -> str:
    if n >= GiB and n % GiB == 0:
        return f"{n // GiB} GiB"
    if n >= MiB:
        return f"{n / MiB:g} MiB"
    if n >= KiB:
        return f"{n / KiB:g} KiB"
    return f"{n} B"


def fmt_cell(s: float | None, nbytes: int, name: str = "") -> str:
    if s is None:
        return "-"
    text = fmt_time(s)
    if nbytes and s > 0:
        text += f", {nbytes / s / 1e9:.1f} GB/s"
    return f"{text} ({name})" if name else text


def ratio_text(row: Row) -> str:
    r = row.ratio
    if r is None:
        return "-"
    return {
        "of_ceiling": f"{r:.2f}x of ceiling",
        "faster": f"{r:.2f}x faster",
        "time": f"{r:.2f}x time",
        "info": f"{r:.2f}x faster",
        "ceiling": "-",
    }[row.kind]


def target_text(row: Row) -> str:
    if row.kind == "ceiling":
        return f"reference ({row.target_note})" if row.target_note else "reference"
    if row.target is None:
        return "informative"
    aim = f" (aim {row.aim:g}x)" if row.aim is not None else ""
    op = "<=" if row.kind == "time" else ">="
    what = {"of_ceiling": " of ceiling", "faster": " faster", "time": " time"}.get(row.kind, "")
    return f"{op} {row.target:g}x{what}{aim}"


def result_text(row: Row, dev: Device) -> str:
    if row.error:
        return "**ERROR**"
    if row.problems:
        return "**WRONG**"
    if dev.fake:
        return "n/a (fake)"
    if row.kind == "ceiling":
        return "**SUSPECT**" if row.suspect else "ref"
    passed = row.passed
    if passed is None:
        return "info"
    if not passed:
        return "**MISS**"
    return "PASS" if row.aim_met() else "PASS (below aim)"


def print_table(rows: list[Row], dev: Device) -> None:
    print("| case | baseline | tensorbridge | ratio | target | result |")
    print("|---|---:|---:|---:|---|:---:|")
    for r in rows:
        base = fmt_cell(r.base_s, r.nbytes, r.base_name)
        mine = "-" if r.error else fmt_cell(r.tb_s, r.nbytes)
        print(f"| {r.case} | {base} | {mine} | {ratio_text(r)} | {target_text(r)} | {result_text(r, dev)} |")


# --- the cases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How big and how often."""

    big: int
    leaf: int
    leaves: int
    tiny: int
    reps_big: int
    reps_small: int
    reps_tiny: int
    warmup: int


def sizes_for(fake: bool, quick: bool) -> Sizes:
    if fake:
        big = 4 * MiB if quick else 16 * MiB
        return Sizes(big, 16 * KiB, 256, 4 * KiB, 3 if quick else 5, 5 if quick else 10, 30 if quick else 100, 1)
    big = 64 * MiB if quick else 1 * GiB
    return Sizes(big, 16 * KiB, 256, 4 * KiB, 5 if quick else 7, 10 if quick else 30, 100 if quick else 300, 2)


@dataclass
class Bench:
    """State the cases share: the device, sizes, the big input and the ceiling's buffers."""

    dev: Device
    sz: Sizes
    rows: list[Row] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    x: Array | None = None  # pageable float32, sz.big bytes
    pinned: torch.Tensor | None = None  # a pin_memory=True float32 tensor holding x
    dst: torch.Tensor | None = None  # a uint8 device buffer of sz.big bytes
    small: dict[str, Array] = field(default_factory=dict)  # sz.leaves arrays of sz.leaf bytes

    def setup(self) -> None:
        """Make the inputs: x, its pinned copy, the device buffer, the small leaves."""
        sz = self.sz
        self.x = self.rng.random(sz.big // 4, dtype=np.float32)
        self.pinned = self.dev.pinned(sz.big // 4, torch.float32)
        self.pinned.numpy()[:] = self.x
        self.dst = self.dev.empty(sz.big)
        self.small = {f"a{i:03d}": self.rng.random(sz.leaf // 4, dtype=np.float32) for i in range(sz.leaves)}

    def shared(self) -> tuple[Array, torch.Tensor, torch.Tensor]:
        """x, pinned, dst (after setup)."""
        assert self.x is not None and self.pinned is not None and self.dst is not None, "setup() first"
        return self.x, self.pinned, self.dst

    def drop_shared(self) -> None:
        """Free the big shared buffers."""
        self.x = self.pinned = self.dst = None
        self.dev.free()

    def time(
        self,
        label: str,
        cands: dict[str, Callable[[], Any]],
        checks: dict[str, Check],
        *,
        reps: int,
        warmup: int | None = None,
    ) -> tuple[dict[str, Timing], list[str]]:
        """Measure, and keep every candidate's median and best for the details section."""
        problems: list[str] = []
        t = measure(
            self.dev,
            cands,
            reps=reps,
            warmup=self.sz.warmup if warmup is None else warmup,
            checks=checks,
            problems=problems,
        )
        parts = ", ".join(f"{n}: median {fmt_time(v.median)}, best {fmt_time(v.best)}" for n, v in t.items())
        self.details.append(f"{label} ({reps} rounds): {parts}")
        for p in problems:
            print(f"  WRONG RESULT in case {label}: {p}", file=sys.stderr)
        return t, problems

    def ceiling(self) -> None:
        """Raw pinned <-> device copies of sz.big bytes."""
        x, pinned, dst = self.shared()
        dev, n = self.dev, self.sz.big
        src = pinned.view(torch.uint8)
        t, problems = self.time(
            "1",
            {"h2d": lambda: dev.raw_copy(dst, src), "d2h": lambda: dev.raw_copy(src, dst)},
            {},
            reps=self.sz.reps_big,
        )
        dev.sync()
        if not same_bits(dev.to_host(dst), x.view(np.uint8)) or not same_bits(pinned.numpy(), x):
            problems.append("after the raw copies, the device buffer or the pinned buffer differs from the input")
        h2d_gbps = n / t["h2d"].median / 1e9
        note = ""
        suspect = False
        if not dev.fake:
            link = pcie_link(dev.bus)  # now, after the copies: the link is awake
            floor, why = h2d_floor(link)
            suspect = h2d_gbps < floor
            note = f"H2D >= {floor:.1f} GB/s: {why}"
            self.notes.append(
                f"Link right after the ceiling copies: {link if link is not None else 'not reported'}; "
                f"H2D ceiling {h2d_gbps:.1f} GB/s"
                + (f" = {h2d_gbps / link.raw_gbps:.2f}x of the raw rate" if link is not None else "")
                + f", floor {floor:.1f} GB/s ({why})"
            )
        self.rows.append(
            Row(
                f"1a. ceiling H2D: pinned -> device copy_ ({fmt_bytes(n)})",
                "ceiling",
                t["h2d"].median,
                nbytes=n,
                problems=problems,
                suspect=suspect,
                target_note=note,
            )
        )
        self.rows.append(
            Row(
                f"1b. ceiling D2H: device -> pinned copy_ ({fmt_bytes(n)})",
                "ceiling",
                t["d2h"].median,
                nbytes=n,
                problems=list(problems),
            )
        )
        if suspect:
            self.notes.append(
                f"NOTE: machine suspect: H2D ceiling {h2d_gbps:.1f} GB/s < {floor:.1f} GB/s ({why}) on "
                f"{dev.name} (a link trained down, a busy switch, the process on the far NUMA node, or a busy "
                "host?). The ratios against the ceiling still hold; absolute speeds are not this GPU's."
            )

    def pageable_up(self) -> None:
        """2: a pageable array to the GPU, against the H2D ceiling and torch's copy."""
        x, pinned, dst = self.shared()
        dev, n = self.dev, self.sz.big
        src = pinned.view(torch.uint8)
        cands: dict[str, Callable[[], Any]] = {
            "ceiling": lambda: dev.raw_copy(dst, src),
            "naive": lambda: dev.upload_naive(torch.from_numpy(x)),
            "tb": lambda: tb.to_tensor(x, device=dev.target),
        }
        checks = {"naive": expect_array(dev, x, dev.naive_where), "tb": expect_array(dev, x, "device")}
        t, problems = self.time("2", cands, checks, reps=self.sz.reps_big)
        what = f"{fmt_bytes(n)} pageable float32 -> GPU"
        self.rows.append(
            Row(
                f"2a. {what} vs H2D ceiling",
                "of_ceiling",
                t["tb"].median,
                nbytes=n,
                base_s=t["ceiling"].median,
                base_name="ceiling",
                target=0.8,
                aim=0.9,
                problems=problems,
            )
        )
        self.rows.append(
            Row(
                f"2b. {what} vs naive",
                "faster",
                t["tb"].median,
                nbytes=n,
                base_s=t["naive"].median,
                base_name=dev.up_name,
                target=1.5,
                problems=list(problems),
            )
        )
        self.routes.append(
            f"2: planned {planned_routes(tb.explain(x, device=dev.target))}; "
            f"executed {executed_routes(dev, cands['tb'])}"
        )

    def pinned_up(self) -> None:
        """3: a pinned tensor and its NumPy view to the GPU, against the H2D ceiling."""
        want, pinned, dst = self.shared()  # the pinned tensor holds x
        dev, n = self.dev, self.sz.big
        src = pinned.view(torch.uint8)
        view = pinned.numpy()
        cands: dict[str, Callable[[], Any]] = {
            "ceiling": lambda: dev.raw_copy(dst, src),
            "tb_tensor": lambda: tb.to_tensor(pinned, device=dev.target),
            "tb_numpy": lambda: tb.to_tensor(view, device=dev.target),
        }
        checks = {"tb_tensor": expect_array(dev, want, "device"), "tb_numpy": expect_array(dev, want, "device")}
        t, problems = self.time("3", cands, checks, reps=self.sz.reps_big)
        for sub, name, what in (("a", "tb_tensor", "pin_memory=True tensor"), ("b", "tb_numpy", "its .numpy() view")):
            mine = [p for p in problems if p.startswith(name)]
            self.rows.append(
                Row(
                    f"3{sub}. {fmt_bytes(n)} {what} -> GPU vs H2D ceiling",
                    "of_ceiling",
                    t[name].median,
                    nbytes=n,
                    base_s=t["ceiling"].median,
                    base_name="ceiling",
                    target=0.95,
                    problems=mine,
                )
            )
        self.routes.append(
            f"3a: planned {planned_routes(tb.explain(pinned, device=dev.target))}; "
            f"executed {executed_routes(dev, cands['tb_tensor'])}"
        )
        self.routes.append(
            f"3b: planned {planned_routes(tb.explain(view, device=dev.target))}; "
            f"executed {executed_routes(dev, cands['tb_numpy'])}"
        )

    def many_small_up(self) -> None:
        """4: many small arrays in a dict to the GPU, against a per-array loop."""
        dev, d = self.dev, self.small
        cands: dict[str, Callable[[], Any]] = {
            "naive": lambda: {k: dev.upload_naive(torch.from_numpy(v)) for k, v in d.items()},
            "tb": lambda: tb.to_tensor(d, device=dev.target),
        }
        checks = {"naive": expect_dict(dev, d, dev.naive_where), "tb": expect_dict(dev, d, "device")}
        t, problems = self.time("4", cands, checks, reps=self.sz.reps_small)
        n = sum(v.nbytes for v in d.values())
        self.rows.append(
            Row(
                f"4. dict of {len(d)} x {fmt_bytes(self.sz.leaf)} arrays -> GPU vs per-array loop",
                "faster",
                t["tb"].median,
                nbytes=n,
                base_s=t["naive"].median,
                base_name=f"{{k: {dev.up_name}}}",
                target=5.0,
                aim=10.0,
                problems=problems,
            )
        )
        self.routes.append(
            f"4: planned {planned_routes(tb.explain(d, device=dev.target))}; "
            f"executed {executed_routes(dev, cands['tb'])}"
        )

    def big_down(self) -> None:
        """5: a CUDA tensor to a new NumPy array, against the D2H ceiling and torch's copy."""
        x, pinned, _ = self.shared()
        dev, n = self.dev, self.sz.big
        on_dev = dev.put(x)
        dev.sync()
        src, pin = on_dev.view(torch.uint8), pinned.view(torch.uint8)
        cands: dict[str, Callable[[], Any]] = {
            "ceiling": lambda: dev.raw_copy(pin, src),
            "naive": lambda: dev.download_naive(on_dev),
            "tb": lambda: tb.to_numpy(on_dev),
        }
        checks = {"naive": expect_array(dev, x, "host"), "tb": expect_array(dev, x, "host")}
        t, problems = self.time("5", cands, checks, reps=self.sz.reps_big)
        what = f"{fmt_bytes(n)} CUDA float32 tensor -> NumPy"
        self.rows.append(
            Row(
                f"5a. {what} vs D2H ceiling",
                "of_ceiling",
                t["tb"].median,
                nbytes=n,
                base_s=t["ceiling"].median,
                base_name="ceiling",
                target=0.7,
                problems=problems,
            )
        )
        self.rows.append(
            Row(
                f"5b. {what} vs naive",
                "info",
                t["tb"].median,
                nbytes=n,
                base_s=t["naive"].median,
                base_name=dev.down_name,
                problems=list(problems),
            )
        )
        self.routes.append(
            f"5: planned {planned_routes(tb.explain(on_dev, to='numpy'))}; executed {executed_routes(dev, cands['tb'])}"
        )

    def many_small_down(self) -> None:
        """6: many small CUDA tensors in a dict to NumPy, against a per-tensor loop."""
        dev, d = self.dev, self.small
        on_dev = {k: dev.put(v) for k, v in d.items()}
        dev.sync()
        cands: dict[str, Callable[[], Any]] = {
            "naive": lambda: {k: dev.download_naive(v) for k, v in on_dev.items()},
            "tb": lambda: tb.to_numpy(on_dev),
        }
        checks = {"naive": expect_dict(dev, d, "host"), "tb": expect_dict(dev, d, "host")}
        t, problems = self.time("6", cands, checks, reps=self.sz.reps_small)
        n = sum(v.nbytes for v in d.values())
        self.rows.append(
            Row(
                f"6. dict of {len(d)} x {fmt_bytes(self.sz.leaf)} CUDA tensors -> NumPy vs per-tensor loop",
                "faster",
                t["tb"].median,
                nbytes=n,
                base_s=t["naive"].median,
                base_name=f"{{k: {dev.down_name}}}",
                target=5.0,
                problems=problems,
            )
        )
        self.routes.append(
            f"6: planned {planned_routes(tb.explain(on_dev, to='numpy'))}; executed {executed_routes(dev, cands['tb'])}"
        )

    def tiny_up(self) -> None:
        """7: the latency of one small array to the GPU."""
        dev = self.dev
        a = self.rng.random(self.sz.tiny // 4, dtype=np.float32)
        cands: dict[str, Callable[[], Any]] = {
            "naive": lambda: dev.upload_naive(torch.from_numpy(a)),
            "tb": lambda: tb.to_tensor(a, device=dev.target),
        }
        checks = {"naive": expect_array(dev, a, dev.naive_where), "tb": expect_array(dev, a, "device")}
        t, problems = self.time("7", cands, checks, reps=self.sz.reps_tiny, warmup=max(self.sz.warmup, 10))
        self.rows.append(
            Row(
                f"7. one {fmt_bytes(self.sz.tiny)} array -> GPU, latency",
                "time",
                t["tb"].median,
                nbytes=0,
                base_s=t["naive"].median,
                base_name=dev.up_name,
                target=1.25,
                problems=problems,
            )
        )
        self.routes.append(
            f"7: planned {planned_routes(tb.explain(a, device=dev.target))}; "
            f"executed {executed_routes(dev, cands['tb'])}"
        )

    def cast_up(self) -> None:
        """8: float64 to the GPU as float32, against copying then casting on the device."""
        dev, n = self.dev, self.sz.big
        x64 = self.rng.random(n // 8)
        want = x64.astype(np.float32)
        cands: dict[str, Callable[[], Any]] = {
            "naive": lambda: dev.upload_naive(torch.from_numpy(x64)).float(),
            "tb": lambda: tb.to_tensor(x64, device=dev.target, dtype=torch.float32),
        }
        checks = {"naive": expect_array(dev, want, dev.naive_where), "tb": expect_array(dev, want, "device")}
        t, problems = self.time("8", cands, checks, reps=self.sz.reps_big)
        naive = f"{dev.up_name.replace('(x)', '(x64)')}.float()"
        self.rows.append(
            Row(
                f"8. {fmt_bytes(n)} float64 -> GPU as float32",
                "info",
                t["tb"].median,
                nbytes=n,
                base_s=t["naive"].median,
                base_name=naive,
                problems=problems,
            )
        )
        self.routes.append(
            f"8: planned {planned_routes(tb.explain(x64, device=dev.target, dtype=torch.float32))}; "
            f"executed {executed_routes(dev, cands['tb'])}"
        )

    def run(self, only: frozenset[str] | None = None) -> None:
        """Every case in order (or those in ``only``); one that raises is reported as ERROR, the others still run."""
        self.setup()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("1. ceiling", self.ceiling),
            ("2. pageable -> GPU", self.pageable_up),
            ("3. pinned -> GPU", self.pinned_up),
            ("4. many small -> GPU", self.many_small_up),
            ("5. CUDA -> NumPy", self.big_down),
            ("6. many small CUDA -> NumPy", self.many_small_down),
            ("7. tiny -> GPU", self.tiny_up),
            ("8. float64 -> GPU float32", self.cast_up),
        ]
        for label, case in steps:
            if only is not None and label.split(".")[0] not in only:
                if label.startswith("5."):
                    self.drop_shared()
                continue
            print(f"running case {label} ...", file=sys.stderr, flush=True)
            try:
                case()
            except Exception as err:  # reported, and the run goes on: one broken case must not hide the others
                traceback.print_exc()
                why = f"raised {type(err).__name__}: {err}"
                self.rows.append(Row(f"{label} (traceback on stderr)", "info", 0.0, problems=[why], error=True))
            if label.startswith("5."):
                self.drop_shared()  # cases 1-5 share the big buffers
            self.dev.free()


# --- main ---------------------------------------------------------------------------------------


def header(dev: Device, sz: Sizes, quick: bool) -> None:
    print("## tensorbridge transfer benchmark\n")
    if dev.fake:
        print(FAKE_BANNER + "\n")
    for line in dev.info:
        print(f"- {line}")
    print(
        f"- tensorbridge {tb.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"numpy {np.__version__}, python {platform.python_version()}"
    )
    print(
        f"- CPUs: os.cpu_count()={os.cpu_count()}, usable={len(os.sched_getaffinity(0))}, "
        f"{platform.system()} {platform.release()} {platform.machine()}"
    )
    cfg = tb.configure_transfers()
    print(
        f"- transfer config: chunk {fmt_bytes(cfg.chunk_bytes)}, ring {cfg.ring}, pinned cap "
        f"{fmt_bytes(cfg.pinned_cap_bytes)}, threads {cfg.threads}, small <= {fmt_bytes(cfg.small_max_bytes)}, "
        f"pack from {cfg.pack_min_leaves} leaves"
    )
    print(
        f"- mode: {'fake ' if dev.fake else ''}{'quick' if quick else 'full'}: big cases {fmt_bytes(sz.big)}, "
        f"{sz.leaves} x {fmt_bytes(sz.leaf)} leaves, {sz.reps_big}/{sz.reps_small}/{sz.reps_tiny} rounds "
        "(big/small/tiny); times are medians, each call synchronized\n",
        flush=True,
    )


def print_pool(when: str) -> None:
    s = tb.transfer_stats()
    print(
        f"- pinned staging pool {when}: held {fmt_bytes(s.held_bytes)} of cap {fmt_bytes(s.cap_bytes)} "
        f"({s.buffers} buffers), lent {fmt_bytes(s.lent_bytes)}, peak {fmt_bytes(s.peak_bytes)}"
    )


def report(bench: Bench, quick: bool, start: float) -> int:
    dev, rows = bench.dev, bench.rows
    print_table(rows, dev)
    for note in bench.notes:
        print(f"\n{note}")
    print("\nRoutes (planned: tb.explain; executed: what one extra untimed call asked of the CUDA backend):")
    for line in bench.routes:
        print(f"  - {line}")
    print("\nDetails, per candidate (ceiling = raw pinned copy, naive = baseline, tb = tensorbridge):")
    for line in bench.details:
        print(f"  - {line}")
    print()
    print_pool("after the run")
    tb.release_pinned()
    print_pool("after tb.release_pinned()")
    wrong = [r for r in rows if r.problems or r.error]
    missed = [r for r in rows if r.passed is False]
    print()
    if dev.fake:
        print(FAKE_BANNER)
    else:
        targets = [r for r in rows if r.passed is not None]
        print(f"Targets: {len(targets) - len(missed)}/{len(targets)} pass")
        for r in missed:
            print(f"  MISS {r.case}: {ratio_text(r)} (target {target_text(r)})")
        if quick:
            print("  (quick mode: 64 MiB cases; the targets are defined by the full 1 GiB run)")
    for r in wrong:
        print(f"  {'ERROR' if r.error else 'WRONG'} {r.case}: {'; '.join(r.problems)}")
    print(f"\nelapsed: {time.perf_counter() - start:.1f} s")
    sys.stdout.flush()
    return 1 if wrong else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 MiB instead of 1 GiB, fewer rounds")
    parser.add_argument("--fake", action="store_true", help="no GPU: the fake backend of tests/fakegpu.py, small sizes")
    parser.add_argument(
        "--only",
        metavar="CASES",
        help="comma-separated case numbers to run, e.g. 1,2,3,5 (the big cases against the raw pinned copy)",
    )
    args = parser.parse_args()
    only = None
    if args.only is not None:
        only = frozenset(c.strip() for c in args.only.split(",") if c.strip())
        if not only or not only <= set(CASES):
            parser.error(f"--only takes case numbers from {','.join(CASES)}, got {args.only!r}")
    start = time.perf_counter()
    if args.fake:
        with fake_device() as dev:
            sz = sizes_for(True, args.quick)
            header(dev, sz, args.quick)
            bench = Bench(dev, sz)
            bench.run(only)
            return report(bench, args.quick, start)
    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    dev = cuda_device()
    sz = sizes_for(False, args.quick)
    header(dev, sz, args.quick)
    bench = Bench(dev, sz)
    bench.run(only)
    return report(bench, args.quick, start)


if __name__ == "__main__":
    sys.exit(main())
