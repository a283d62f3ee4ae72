"""File conversion: throughput against the direct library way, and peak memory against the largest tensor.

For each case a file of several float32 tensors is converted by ``tensorbridge convert`` and by
the obvious direct code (``safetensors.numpy.load_file`` + ``np.savez``, ``dict(np.load(...))`` +
``save_file``, ``torch.save(torch.load(..., mmap=True))``...), and with ``--verify`` against the
direct code that writes, reads back and compares, each in a fresh Python process, alternating,
so that each one's peak resident memory is its own. Printed: the time ratio (direct /
tensorbridge; >= 0.8x is the target) and how far each one's resident memory peaked above where
it stood when the conversion began (Linux: the peak is reset through ``/proc/self/clear_refs``;
memory-mapped file pages count), next to the largest tensor (tensorbridge's target: the largest
tensor plus a small constant).

Run: ``python benchmarks/bench_io.py`` (8 x 64 MiB tensors, a few minutes; needs the
``safetensors`` package for its baselines) or ``--quick`` (8 x 4 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap

import numpy as np

_CHILD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np, safetensors.numpy as st, safetensors.torch as stt, tensorbridge as tb, torch
    from tensorbridge.files.convert import convert

    def same_np(a, b):
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    def same_torch(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key))

    job, src, dst = sys.argv[1:4]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident size (VmHWM) to the current one
    base = status("VmRSS:")
    t0 = time.perf_counter()
    if job == "tb":
        convert(src, dst, force=True)
    elif job == "tb-verify":
        convert(src, dst, force=True, verify=True)
    elif job == "st2npz":
        np.savez(dst, **st.load_file(src))
    elif job == "npz2st":
        with np.load(src) as z:
            st.save_file({k: z[k] for k in z.files}, dst)
    elif job == "st2st":
        st.save_file(st.load_file(src), dst)
    elif job == "st2st-verify":
        arrays = st.load_file(src)
        st.save_file(arrays, dst)
        assert same_np(arrays, st.load_file(dst))
    elif job == "st2pt":
        torch.save(stt.load_file(src), dst)
    elif job == "st2pt-verify":
        tensors = stt.load_file(src)
        torch.save(tensors, dst)
        assert same_torch(tensors, torch.load(dst, weights_only=True, mmap=True))
    elif job == "pt2pt":
        torch.save(torch.load(src, weights_only=True, mmap=True), dst)
    elif job == "pt2st":
        stt.save_file(torch.load(src, weights_only=True, mmap=True), dst)
    elif job == "idle":
        pass
    seconds = time.perf_counter() - t0
    peak = status("VmHWM:")
    print(json.dumps({"seconds": seconds, "base_kib": base, "peak_kib": peak}))
    """
)


def child(job: str, src: str, dst: str) -> dict[str, float]:
    """Run one conversion in a fresh interpreter; return its time and memory figures."""
    if os.path.exists(dst):
        os.unlink(dst)
    proc = subprocess.run([sys.executable, "-c", _CHILD, job, src, dst], capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 x 4 MiB instead of 8 x 64 MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--case", help="run only the cases whose name contains this text (e.g. 'pt')")
    args = parser.parse_args()
    try:
        import safetensors.numpy as st
    except ImportError:
        print("the safetensors package is needed for the baselines: pip install safetensors")
        return
    n, mib = 8, (4 if args.quick else 64)
    arrays = {
        f"layer{i}.weight": np.random.default_rng(i).standard_normal(mib << 18).astype(np.float32) for i in range(n)
    }
    largest = max(a.nbytes for a in arrays.values())
    folder = tempfile.mkdtemp(prefix="tb-bench-io-")
    src_st, src_npz = os.path.join(folder, "src.safetensors"), os.path.join(folder, "src.npz")
    src_pt = os.path.join(folder, "src.pt")
    st.save_file(arrays, src_st)
    np.savez(src_npz, **arrays)
    import torch

    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, src_pt)
    del arrays
    load_pt = "torch.load(mmap=True)"
    # (case, source, output, direct job, what the direct job does, tensorbridge job)
    cases = [
        ("safetensors -> npz", src_st, "out.npz", "st2npz", "safetensors.numpy.load_file + np.savez", "tb"),
        ("npz -> safetensors", src_npz, "out.safetensors", "npz2st", "np.load + safetensors.numpy.save_file", "tb"),
        ("safetensors -> safetensors", src_st, "out2.safetensors", "st2st", "load_file + save_file", "tb"),
        ("safetensors -> pt", src_st, "out.pt", "st2pt", "safetensors.torch.load_file + torch.save", "tb"),
        ("pt -> pt", src_pt, "out2.pt", "pt2pt", f"{load_pt} + torch.save", "tb"),
        ("pt -> safetensors", src_pt, "out3.safetensors", "pt2st", f"{load_pt} + safetensors.torch.save_file", "tb"),
        (
            "safetensors -> safetensors --verify",
            src_st,
            "out4.safetensors",
            "st2st-verify",
            "save_file + load_file + np.array_equal",
            "tb-verify",
        ),
        (
            "safetensors -> pt --verify",
            src_st,
            "out4.pt",
            "st2pt-verify",
            f"torch.save + {load_pt} + torch.equal",
            "tb-verify",
        ),
    ]
    print(f"{n} float32 tensors of {mib} MiB ({n * mib} MiB); largest tensor {largest >> 20} MiB")
    print("| case | direct way | tensorbridge | speed ratio (direct / tb time) | peak growth: direct | tb |")
    print("|---|---|---|---|---|---|")
    for name, src, out, job, what, our_job in cases:
        if args.case and args.case not in name:
            continue
        dst = os.path.join(folder, out)
        direct, ours = [], []
        for _ in range(args.rounds):
            direct.append(child(job, src, dst))
            ours.append(child(our_job, src, dst))
        t_direct = statistics.median(r["seconds"] for r in direct)
        t_ours = statistics.median(r["seconds"] for r in ours)
        m_direct = max(r["peak_kib"] - r["base_kib"] for r in direct)
        m_ours = max(r["peak_kib"] - r["base_kib"] for r in ours)
        print(
            f"| {name} | {what}: {t_direct * 1e3:.0f} ms | {t_ours * 1e3:.0f} ms | {t_direct / t_ours:.2f}x "
            f"| {m_direct / 1024:.0f} MiB | {m_ours / 1024:.0f} MiB ({m_ours * 1024 / largest:.2f}x largest tensor) |"
        )
    print("targets: speed ratio >= 0.8x; tensorbridge's peak about the largest tensor plus a small constant")


if __name__ == "__main__":
    main()
