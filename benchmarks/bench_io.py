"""File conversion: throughput against the direct library way, and peak memory against the largest tensor.

For each case a file of several float32 tensors is converted by ``tensorbridge convert`` and by
the obvious direct code (``safetensors.numpy.load_file`` + ``np.savez``, ``dict(np.load(...))`` +
``save_file``...), each in a fresh Python process, alternating, so that each one's peak resident
memory is its own. Printed: the time ratio (direct / tensorbridge; >= 0.8x is the target) and how
far each one's resident memory peaked above where it stood when the conversion began (Linux:
the peak is reset through ``/proc/self/clear_refs``; memory-mapped file pages count), next to the
largest tensor (tensorbridge's target: the largest tensor plus a small constant).

Run: ``python benchmarks/bench_io.py`` (8 x 64 MiB tensors, about a minute; needs the
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
    import numpy as np, safetensors.numpy as st, tensorbridge as tb
    from tensorbridge.io.convert import convert

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
    elif job == "st2npz":
        np.savez(dst, **st.load_file(src))
    elif job == "npz2st":
        with np.load(src) as z:
            st.save_file({k: z[k] for k in z.files}, dst)
    elif job == "st2st":
        st.save_file(st.load_file(src), dst)
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
    st.save_file(arrays, src_st)
    np.savez(src_npz, **arrays)
    del arrays
    cases = [
        ("safetensors -> npz", src_st, "out.npz", "st2npz", "safetensors.numpy.load_file + np.savez"),
        ("npz -> safetensors", src_npz, "out.safetensors", "npz2st", "np.load + safetensors.numpy.save_file"),
        ("safetensors -> safetensors", src_st, "out2.safetensors", "st2st", "load_file + save_file"),
    ]
    print(f"{n} float32 tensors of {mib} MiB ({n * mib} MiB); largest tensor {largest >> 20} MiB")
    print("| case | direct way | tensorbridge | speed ratio (direct / tb time) | peak growth: direct | tb |")
    print("|---|---|---|---|---|---|")
    for name, src, out, job, what in cases:
        dst = os.path.join(folder, out)
        direct, ours = [], []
        for _ in range(args.rounds):
            direct.append(child(job, src, dst))
            ours.append(child("tb", src, dst))
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
