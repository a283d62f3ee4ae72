"""Peak memory of large checkpoint conversions: tensorbridge against the direct torch/safetensors way.

Each measurement runs in a fresh Python process (this script with ``--child``), so each peak is
its own. The child imports everything and does its setup (for FSDP2: the process group and the
sharded model) first, then resets its peak resident size (``/proc/self/clear_refs`` = 5 resets
``VmHWM`` to the current ``VmRSS``), notes ``VmRSS``, runs the job and reports
``VmHWM - VmRSS before``: the peak rise, in MiB. What counts is the whole resident set: anonymous
memory plus the file pages the process has mapped and touched (a memory-mapped safetensors shard
that is read counts once per touched page, as it does in ``top``); pages that only sit in the
page cache after a ``write()`` do not. ``ru_maxrss`` is only the fallback where ``clear_refs``
cannot be written: it cannot be reset, so it holds the peak of the imports and setup, and Linux
carries it across fork + exec (a child of a parent holding 500 MiB starts at ru_maxrss 510 MiB).

Rows (ratio = tensorbridge rise / baseline rise, so < 1 means tensorbridge needs less):

  1. hf-merge: a sharded Hugging Face safetensors set (4 shards + ``model.safetensors.index.json``)
     -> one file: ``tensorbridge convert DIR out.safetensors`` vs ``safetensors.torch.load_file``
     of every shard + ``save_file``. Target: tensorbridge's rise <= 2x the largest tensor.
  2. hf-split: one safetensors file -> a set: ``tensorbridge convert --max-shard-size`` vs
     ``load_file`` + a greedy split + ``save_file`` per shard + the index. Target: <= 2x.
  3. dcp: a ``torch.distributed.checkpoint`` directory (saved in one process, ``no_dist=True``)
     -> one safetensors file: ``tensorbridge convert`` vs ``format_utils.dcp_to_torch_save``.
     Target: <= 3x the largest tensor.
  4. fsdp: two gloo ranks on 127.0.0.1, each holding the same model of ``nn.Linear`` layers under
     FSDP2 ``fully_shard`` (CPU): ``tb.save(model.state_dict(), path, shards="gather", dst=0)``
     on every rank vs ``get_model_state_dict(full_state_dict=True, cpu_offload=True)`` then
     ``save_file`` on rank 0. Targets: rank 0 <= 3x the largest parameter, rank 1 <= 1.1x its
     largest shard.

Every output is read back and compared tensor by tensor (names, dtypes, shapes, values) with the
tensors that were written, so a wrong result fails the run. Exit status: 1 when a result is
wrong or a child failed; 0 otherwise, also when a memory target is missed (marked MISS).

Run: ``python benchmarks/bench_scale.py`` (about 200 MiB of tensors per case) or ``--quick``
(about 40 MiB); ``--only hf-merge,dcp`` runs some rows only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Final, cast

import torch

CASES: Final = ("hf-merge", "hf-split", "dcp", "fsdp")
TARGETS: Final = {"hf-merge": 2.0, "hf-split": 2.0, "dcp": 3.0, "fsdp-0": 3.0, "fsdp-1": 1.1}
# Shares of the total in each layer's weight (rows x COLS float32); layer 0 is the largest.
SHARES: Final = (0.2, 0.12, 0.1, 0.1, 0.08, 0.08, 0.07, 0.06, 0.05, 0.05, 0.04, 0.03, 0.02)
COLS: Final = 1024
MIB: Final = 1 << 20


def layer_shapes(total_mib: int) -> list[tuple[int, int]]:
    """(rows, COLS) of each weight; rows even, so both FSDP2 ranks hold equal halves."""
    return [(max(2, round(s * total_mib * MIB / 4 / COLS) // 2 * 2), COLS) for s in SHARES]


def make_tensors(total_mib: int) -> dict[str, torch.Tensor]:
    """The seeded state dict of rows 1-3: weights, biases, a bfloat16 and an int64 tensor."""
    gen = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    for i, (rows, cols) in enumerate(layer_shapes(total_mib)):
        out[f"layers.{i}.weight"] = torch.randn(rows, cols, generator=gen)
        out[f"layers.{i}.bias"] = torch.randn(rows, generator=gen)
    out["norm.weight"] = torch.randn(4096, generator=gen).to(torch.bfloat16)
    out["step"] = torch.arange(8, dtype=torch.int64)
    return out


def make_model(total_mib: int) -> torch.nn.Sequential:
    """The seeded module of row 4 (the same weight shapes as make_tensors)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(*(torch.nn.Linear(cols, rows) for rows, cols in layer_shapes(total_mib)))


def load_any(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, a Hugging Face set directory or a .pt file."""
    from safetensors.torch import load_file

    if os.path.isdir(path):
        with open(os.path.join(path, "model.safetensors.index.json")) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return {k: v for s in shards for k, v in load_file(os.path.join(path, s)).items()}
    if path.endswith(".pt"):
        loaded: dict[str, torch.Tensor] = torch.load(path, weights_only=True)
        return loaded
    return load_file(path)


def differences(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> list[str]:
    """What differs between two state dicts (empty when names, dtypes, shapes and values agree)."""
    if got.keys() != want.keys():
        return [f"names differ: {sorted(got.keys() ^ want.keys())[:5]}"]
    bad = []
    for k, w in want.items():
        g = got[k]
        if g.dtype != w.dtype or g.shape != w.shape:
            bad.append(f"{k}: {g.dtype}{list(g.shape)}, expected {w.dtype}{list(w.shape)}")
        elif not torch.equal(g, w):
            bad.append(f"{k}: values differ")
    return bad


def write_set(tensors: dict[str, torch.Tensor], folder: str, n: int) -> None:
    """A Hugging Face set of n shards (tensors dealt round-robin) and its index."""
    from safetensors.torch import save_file

    os.makedirs(folder)
    names = [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    weight_map = {key: names[i % n] for i, key in enumerate(tensors)}
    for name in names:
        save_file({k: v for k, v in tensors.items() if weight_map[k] == name}, os.path.join(folder, name))
    total = sum(t.nbytes for t in tensors.values())
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


# ---------------------------------------------------------------------------------------------- child


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def measure(job: Callable[[], object]) -> dict[str, float]:
    """Run job; return its peak resident rise in KiB and its seconds (see the module docstring)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        reset = True
    except OSError:  # no clear_refs: ru_maxrss (KiB on Linux), which holds the setup's peak too
        reset = False
    base = _status_kib("VmRSS:")
    t0 = time.perf_counter()
    job()
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM:") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rise_kib": peak - base, "seconds": seconds}


def tb_convert(*argv: str) -> None:
    from tensorbridge.cli import main

    rc = main(["convert", *argv, "--quiet", "--force"])
    if rc != 0:
        raise SystemExit(f"tensorbridge convert {' '.join(argv)} exited {rc}")


def split_baseline(src: str, dst: str, max_bytes: int) -> None:
    """load_file + a greedy split + save_file per shard + the index, as a script would do it."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(src)
    groups: list[list[str]] = [[]]
    size = 0
    for k, v in tensors.items():
        if groups[-1] and size + v.nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(k)
        size += v.nbytes
    os.makedirs(dst, exist_ok=True)
    weight_map = {}
    for i, keys in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({k: tensors[k] for k in keys}, os.path.join(dst, name))
        weight_map.update(dict.fromkeys(keys, name))
    total = sum(v.nbytes for v in tensors.values())
    with open(os.path.join(dst, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def child(job: str, src: str, dst: str, extra: str) -> dict[str, float]:
    """One measurement, in this fresh process: job is 'tb-<case>' or 'base-<case>'."""
    import safetensors.torch as stt
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    import tensorbridge as tb

    if job == "tb-merge":
        return measure(lambda: tb_convert(src, dst))
    if job == "base-merge":
        return measure(lambda: stt.save_file(load_any(src), dst))
    if job == "tb-split":
        return measure(lambda: tb_convert(src, dst, "--max-shard-size", extra))
    if job == "base-split":
        return measure(lambda: split_baseline(src, dst, int(extra)))
    if job == "tb-dcp":
        return measure(lambda: tb_convert(src, dst))
    if job == "base-dcp":
        return measure(lambda: dcp_to_torch_save(src, dst))
    # fsdp: extra = "rank,port,total_mib"; each rank writes its own figures
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    rank, port, total_mib = (int(x) for x in extra.split(","))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        mesh = init_device_mesh("cpu", (2,))
        model = make_model(total_mib)
        for layer in model:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        dist.barrier()

        def base() -> None:
            full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if rank == 0:
                stt.save_file(cast("dict[str, torch.Tensor]", full), dst)

        def ours() -> None:
            tb.save(model.state_dict(), dst, shards="gather", dst=0)

        result = measure(ours if job == "tb-fsdp" else base)
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------- parent


def run_child(job: str, src: str, dst: str, extra: str = "") -> dict[str, float]:
    if os.path.isdir(dst):
        shutil.rmtree(dst)
    elif os.path.exists(dst):
        os.unlink(dst)
    argv = [sys.executable, os.path.abspath(__file__), "--child", job, src, dst, extra]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{job} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run_ranks(job: str, dst: str, total_mib: int) -> list[dict[str, float]]:
    """Both FSDP2 ranks, each a fresh process; their figures, rank 0 first."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if os.path.exists(dst):
        os.unlink(dst)
    script = os.path.abspath(__file__)
    procs = [
        subprocess.Popen(
            [sys.executable, script, "--child", job, "-", dst, f"{rank},{port},{total_mib}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=300)
            if p.returncode != 0:
                raise RuntimeError(f"{job} rank exited {p.returncode}:\n{err[-3000:]}")
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about 40 MiB of tensors per case instead of 200")
    parser.add_argument("--only", help=f"comma-separated cases: {','.join(CASES)}")
    parser.add_argument("--child", nargs=4, metavar=("JOB", "SRC", "DST", "EXTRA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    only = args.only.split(",") if args.only else list(CASES)
    if unknown := set(only) - set(CASES):
        parser.error(f"unknown case(s) {sorted(unknown)}; choose from {','.join(CASES)}")
    total_mib = 40 if args.quick else 200
    shard_bytes = (10 if args.quick else 50) * 1000**2
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    tensors = make_tensors(total_mib)
    largest = max(t.nbytes for t in tensors.values())
    total = sum(t.nbytes for t in tensors.values())
    print(f"{len(tensors)} tensors, {total / MIB:.0f} MiB; largest tensor {largest / MIB:.1f} MiB")
    rows: list[tuple[str, str, str, str, str, str, str]] = []
    failed = False
    folder = tempfile.mkdtemp(prefix="tb-bench-scale-")

    def row(name: str, key: str, ours: float | None, base: float, unit: int, unit_name: str, bad: list[str]) -> None:
        nonlocal failed
        failed |= bool(bad)
        ours_s = "n/a" if ours is None else f"{ours / 1024:.1f}"
        ratio = "n/a" if ours is None else f"{ours / max(base, 1):.2f}x"
        multiple = "n/a" if ours is None else f"{ours * 1024 / unit:.2f}x"
        ok = "WRONG" if bad else "n/a" if ours is None else "yes" if ours * 1024 <= TARGETS[key] * unit else "MISS"
        target = f"<= {TARGETS[key]}x {unit_name}"
        rows.append((name, ours_s, f"{base / 1024:.1f}", ratio, multiple, target, ok))
        for line in bad:
            print(f"  {name}: WRONG {line}", file=sys.stderr)

    def seconds(ours: dict[str, float], base: dict[str, float]) -> None:
        print(f"  time: tensorbridge {ours['seconds']:.2f} s, baseline {base['seconds']:.2f} s")

    try:
        for case in only:
            print(f"-- {case}", flush=True)
            if case == "hf-merge":
                src, out_tb, out_base = (os.path.join(folder, n) for n in ("set", "tb.safetensors", "b.safetensors"))
                write_set(tensors, src, 4)
                t, b = run_child("tb-merge", src, out_tb), run_child("base-merge", src, out_base)
                bad = differences(load_any(out_tb), tensors) + differences(load_any(out_base), tensors)
                seconds(t, b)
                row("HF set merge", case, t["rise_kib"], b["rise_kib"], largest, "largest tensor", bad)
            elif case == "hf-split":
                src, out_tb, out_base = (os.path.join(folder, n) for n in ("one.safetensors", "tb-set", "b-set"))
                save_file(tensors, src)
                t = run_child("tb-split", src, out_tb, str(shard_bytes))
                b = run_child("base-split", src, out_base, str(shard_bytes))
                bad = differences(load_any(out_tb), tensors) + differences(load_any(out_base), tensors)
                n_tb = len([n for n in os.listdir(out_tb) if n.endswith(".safetensors")])
                print(f"  tensorbridge wrote {n_tb} shards of <= {shard_bytes} bytes")
                seconds(t, b)
                row("HF set split", case, t["rise_kib"], b["rise_kib"], largest, "largest tensor", bad)
            elif case == "dcp":
                src, out_tb, out_base = (os.path.join(folder, n) for n in ("dcp", "tb-dcp.safetensors", "b.pt"))
                dcp_save(dict(tensors), checkpoint_id=src, no_dist=True)
                t, b = run_child("tb-dcp", src, out_tb), run_child("base-dcp", src, out_base)
                bad = differences(load_any(out_tb), tensors) + differences(load_any(out_base), tensors)
                seconds(t, b)
                row("DCP -> safetensors", case, t["rise_kib"], b["rise_kib"], largest, "largest tensor", bad)
            elif case == "fsdp":
                want = make_model(total_mib).state_dict()
                big = max(v.nbytes for v in want.values())
                b_ranks = run_ranks("base-fsdp", os.path.join(folder, "b-fsdp.safetensors"), total_mib)
                bad = differences(load_any(os.path.join(folder, "b-fsdp.safetensors")), want)
                t_ranks = run_ranks("tb-fsdp", os.path.join(folder, "tb-fsdp.safetensors"), total_mib)
                bad += differences(load_any(os.path.join(folder, "tb-fsdp.safetensors")), want)
                seconds(t_ranks[0], b_ranks[0])
                for rank, unit, what in ((0, big, "largest param"), (1, big // 2, "largest shard")):
                    ours = t_ranks[rank]["rise_kib"]
                    row(f"FSDP2 -> safetensors, rank {rank}", f"fsdp-{rank}", ours, b_ranks[rank]["rise_kib"], unit,
                        what, bad if rank == 0 else [])  # fmt: skip
    except Exception as exc:  # a child that failed: report it, print the table so far, exit 1
        print(f"ERROR: {exc}", file=sys.stderr)
        failed = True
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    header = ("case", "tensorbridge MiB", "baseline MiB", "ratio (tb/baseline)", "tb / largest tensor", "target", "ok")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print("peak resident rise per process (VmHWM - VmRSS before the job); targets are on tensorbridge's rise")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
