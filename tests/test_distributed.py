"""DTensors <-> NumPy across processes: gather, local shards, scatter, streamed saves (gloo, 2 and 4 ranks).

The multi-process checks run in ``dist_ranks.py`` (spawned here, with bounded timeouts); each
rank records the checks it passed. The arithmetic of where shards lie is checked here against
torch's own, in one process.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import tensorbridge as tb
from tensorbridge.errors import UnsupportedError

pytestmark = pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch without gloo")

SCRIPT = Path(__file__).with_name("dist_ranks.py")


def _ranks(scenario: str, nprocs: int, folder: Path, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Run ``scenario`` on ``nprocs`` gloo ranks; every rank's result (each must have passed)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), scenario, str(nprocs), str(folder), str(timeout_s)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    results = []
    for r in range(nprocs):
        path = folder / f"rank{r}.json"
        assert path.exists(), f"rank {r} wrote nothing; stderr: {done.stderr[-3000:]}"
        result = json.loads(path.read_text())
        assert result["ok"], f"rank {r}: {result['error']}"
        results.append(result)
    assert done.returncode == 0, done.stderr[-3000:]
    return results


MATRIX_CHECKS = [
    "gather dst=0",
    "gather dst=last, dst=None",
    "local zero-copy, explain offsets",
    "default refuses",
    "mismatched keys raise everywhere",
    "different calls raise everywhere",
    "ragged from_local raises everywhere",
    "scatter src=0, src=None, dtype map",
    "one rank's bad argument raises everywhere",
    "bad placements refused",
    "save file and set",
    "save refused everywhere",
]


@pytest.mark.parametrize("nprocs", [2, 4])
def test_the_placement_matrix_on_every_rank(tmp_path: Path, nprocs: int) -> None:
    """Shard on each dim, uneven and empty shards, Replicate, Partial, bfloat16, bool, 0-d; 2-D meshes and
    strided shards on 4 ranks: every gather equals full_tensor(), bit for bit; scatter, save, refusals."""
    for result in _ranks("matrix", nprocs, tmp_path):
        checks = result["checks"]
        measured = ("scatter memory", "src=None from a memory map")
        expected = [*MATRIX_CHECKS, "sub-mesh replicas gather and scatter"] if nprocs == 4 else MATRIX_CHECKS
        assert sorted(c for c in checks if not c.startswith(measured)) == sorted(expected)
        assert all(any(c.startswith(m) for c in checks) for m in measured)


def test_an_fsdp2_model_saves_equal_to_torchs_recipe(tmp_path: Path) -> None:
    """tb.save to one file and to a set, and the command on the ranks' DCP checkpoint, all equal
    (tensorbridge diff, and torch.equal) to get_model_state_dict(full_state_dict=True) + save_file."""
    _ranks("fsdp", 2, tmp_path)
    from safetensors.torch import load_file

    theirs = load_file(str(tmp_path / "torch.safetensors"))
    converted = tmp_path / "from_dcp.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "tensorbridge", "convert", str(tmp_path / "dcp"), str(converted)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for ours in (tmp_path / "tb.safetensors", tmp_path / "tb_set", converted):
        proc = subprocess.run(
            [sys.executable, "-m", "tensorbridge", "diff", str(ours), str(tmp_path / "torch.safetensors")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        back = tb.load(ours, to="tensor")
        assert sorted(back) == sorted(theirs)
        assert all(torch.equal(back[k], theirs[k]) for k in theirs)
    assert len(list((tmp_path / "tb_set").glob("*.safetensors"))) > 1


def test_a_gather_only_one_rank_calls_errors_within_the_timeout(tmp_path: Path) -> None:
    results = _ranks("one_calls", 2, tmp_path, timeout_s=3.0)
    took = float(results[1]["checks"][0].split()[2])
    assert took < 15, results[1]
    assert "rank 1 gave up waiting for every rank" in results[1]["checks"][1]


# --- in one process -------------------------------------------------------------------------


@pytest.mark.parametrize("mesh_shape", [(2,), (3,), (4,), (2, 2), (2, 3)])
def test_shard_boxes_match_torchs_own_arithmetic(mesh_shape: tuple[int, ...]) -> None:
    """Every rank's block, for every Shard/Replicate combination, as torch computes it (uneven sizes too)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset

    from tensorbridge.distributed.placements import Layout, placement_spec

    ranks = tuple(range(int(np.prod(mesh_shape))))
    kinds = [Replicate(), Shard(0), Shard(1)]
    for shape in [(7, 5), (2, 9), (1, 1), (0, 3)]:
        for placements in itertools.product(kinds, repeat=len(mesh_shape)):
            lay = Layout(shape, "float32", mesh_shape, ranks, tuple(placement_spec(p) for p in placements))
            for coord in itertools.product(*map(range, mesh_shape)):
                local, offset = _compute_local_shape_and_global_offset(shape, mesh_shape, list(coord), placements)
                offsets, sizes = lay.box(coord)
                assert sizes == tuple(local), (shape, placements, coord)
                if all(sizes):
                    assert offsets == tuple(offset), (shape, placements, coord)


def test_the_options_are_checked_before_anything() -> None:
    t = torch.ones(2)
    with pytest.raises(UnsupportedError, match="shards must be one of"):
        tb.to_numpy(t, shards="all")
    with pytest.raises(UnsupportedError, match="dst must be a rank"):
        tb.to_numpy(t, shards="gather", dst=-1)
    with pytest.raises(UnsupportedError, match="dst must be a rank"):
        tb.to_numpy(t, shards="gather", dst=True)
    with pytest.raises(UnsupportedError, match="placements= describes DTensors"):
        tb.to_tensor(np.ones(2), placements=["x"])
    with pytest.raises(UnsupportedError, match="unknown option"):
        tb.explain(t, to="tensor", shards="local")
    # without a process group nothing is sharded: gather converts as usual
    assert tb.to_numpy({"t": t}, shards="gather")["t"].tolist() == [1.0, 1.0]


def test_save_refuses_bad_shards_options(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError, match="shards must be"):
        tb.save({"a": np.ones(2)}, tmp_path / "a.safetensors", shards="local")
    with pytest.raises(UnsupportedError, match="dst must be one rank"):
        tb.save({"a": np.ones(2)}, tmp_path / "a.safetensors", shards="gather", dst=None)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())
    # without a process group nothing is sharded: a plain save
    tb.save({"a": np.ones(2)}, tmp_path / "a.safetensors", shards="gather")
    assert tb.load(tmp_path / "a.safetensors")["a"].tolist() == [1.0, 1.0]


def test_importing_tensorbridge_imports_nothing_distributed() -> None:
    code = textwrap.dedent(
        """
        import sys, torch
        before = {m for m in sys.modules if m.startswith("torch.distributed")}
        import numpy as np, tensorbridge as tb
        tb.to_numpy({"a": torch.ones(2)}); tb.to_tensor(np.ones(2)); tb.explain(torch.ones(2), to="numpy")
        new = {m for m in sys.modules if m.startswith(("torch.distributed", "tensorbridge.distributed"))} - before
        print(sorted(new))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_a_one_process_dcp_checkpoint_converts_equal_to_get_model_state_dict(tmp_path: Path) -> None:
    import warnings

    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.LayerNorm(4)).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... single process"
        dcp.save(model.state_dict(), checkpoint_id=str(tmp_path / "ckpt"), no_dist=True)
    proc = subprocess.run(
        [sys.executable, "-m", "tensorbridge", "convert", str(tmp_path / "ckpt"), str(tmp_path / "o.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    ours, theirs = load_file(str(tmp_path / "o.safetensors")), get_model_state_dict(model)
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
