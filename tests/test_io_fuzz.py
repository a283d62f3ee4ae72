"""Issue 10: every reader, fed mutated files under a memory limit, keeps the command's promises.

Hypothesis mutates small valid files of each format (byte flips, truncations, insertions,
length fields made huge). One subprocess, under ``RLIMIT_AS``, runs ``inspect``, ``convert`` and
``diff`` on every mutant (one torch import for all of them) and reports per file: the exit
status (0, 1 or 2 only), the number of stderr lines on error (one), files left beside the
destination (none but DST on success), and how far resident memory rose (a small multiple of
the file's size, plus a fixed allowance for the interpreter's own caches).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorbridge as tb  # noqa: F401  # the formats below are tensorbridge's own writers
from tensorbridge.cli import main

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and RLIMIT_AS")

# What any run may add to resident memory beyond a multiple of the file: NumPy/torch caches
# warming up on the first real conversion.
FIXED_ALLOWANCE = 96 << 20
PER_BYTE = 16


def seeds(folder: Path) -> dict[str, bytes]:
    """One small valid file per format, written by the command itself from a nested checkpoint."""
    src = folder / "seed.pt"
    torch.save(
        {"w": torch.arange(12.0).reshape(3, 4), "b": torch.ones(4, dtype=torch.bfloat16), "n": [torch.tensor(7)]},
        src,
    )
    out = {".pt": src.read_bytes()}
    for suffix in (".npz", ".safetensors"):
        dst = folder / f"seed{suffix}"
        assert main(["convert", str(src), str(dst), "--quiet"]) == 0
        out[suffix] = dst.read_bytes()
    np.save(folder / "seed.npy", np.arange(6, dtype=np.float32))
    out[".npy"] = (folder / "seed.npy").read_bytes()
    return out


_RUNNER = textwrap.dedent(
    """
    import io, json, os, resource, sys
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from tensorbridge.cli import main

    def rss(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        return 0

    report = []
    for path in sys.argv[2:]:
        folder = os.path.dirname(path)
        for verb in ("inspect", "convert", "diff"):
            dst = os.path.join(folder, "out" + os.path.splitext(path)[1].replace(".npy", ".npz"))
            argv = {"inspect": ["inspect", path], "convert": ["convert", path, dst, "--quiet", "--force"],
                    "diff": ["diff", path, path]}[verb]
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            before = rss("VmRSS:")
            out, err = io.StringIO(), io.StringIO()
            code = main(argv, out=out, err=err)
            grew = rss("VmHWM:") - before
            left = sorted(n for n in os.listdir(folder) if n not in (os.path.basename(path), os.path.basename(dst)))
            report.append({"file": path, "verb": verb, "code": code, "err": err.getvalue(), "grew": grew, "left": left})
            if os.path.exists(dst):
                os.unlink(dst)
    print(json.dumps(report))
    """
)


def run_all(paths: list[Path]) -> list[dict[str, object]]:
    limit = (1536 << 20) + PER_BYTE * sum(p.stat().st_size for p in paths)
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(limit), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report: list[dict[str, object]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in edits:
        if not out:
            break
        at = where % len(out)
        if kind == "flip":
            out[at] ^= 1 << (value % 8)
        elif kind == "byte":
            out[at] = value % 256
        elif kind == "huge":  # a length or offset field made enormous
            out[at : at + 8] = (0xFFFFFFFF_FFFFFF00 | (value % 256)).to_bytes(8, "little")
        elif kind == "head":  # the leading length field (safetensors' header size, npy's magic)
            out[0:8] = (value * 0x1_0001_0001).to_bytes(8, "little")
        elif kind == "tail":  # inside a zip's end-of-central-directory record (entry counts, offsets)
            out[-1 - where % min(len(out), 22)] = value % 256
        elif kind == "cut":
            del out[at:]
        else:  # "insert"
            out[at:at] = bytes([value % 256]) * (1 + value % 64)
    return bytes(out)


EDITS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "byte", "huge", "head", "tail", "cut", "insert"]),
        st.integers(0, 1 << 20),
        st.integers(0, 1 << 16),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.lists(st.tuples(st.sampled_from([".pt", ".npz", ".safetensors", ".npy"]), EDITS), min_size=8, max_size=8))
def test_mutated_files_keep_the_commands_promises(
    tmp_path_factory: pytest.TempPathFactory, cases: list[tuple[str, list[tuple[str, int, int]]]]
) -> None:
    root = tmp_path_factory.mktemp("fuzz")
    valid = seeds(root)
    paths = []
    for i, (suffix, edits) in enumerate(cases):
        folder = root / f"case{i}"
        folder.mkdir()
        path = folder / f"x{suffix}"
        path.write_bytes(mutate(valid[suffix], edits))
        paths.append(path)
    for row in run_all(paths):
        size = Path(str(row["file"])).stat().st_size
        assert row["code"] in (0, 1, 2), row
        err = str(row["err"])
        if row["code"] == 2:
            assert err.count("\n") == 1 and err.startswith("tensorbridge: error: "), row
            assert "unexpected" not in err, row  # a malformed file is never "please report"
        assert row["left"] == [], row  # nothing but the source and DST
        assert int(str(row["grew"])) <= FIXED_ALLOWANCE + PER_BYTE * size, row
