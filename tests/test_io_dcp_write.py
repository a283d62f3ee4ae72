"""torch.distributed.checkpoint (DCP) directories as output: written by torch's writer, read back by torch and us."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

import tensorbridge as tb
from tensorbridge.files import dcp_files
from tensorbridge.files.dcp_files import DCP, is_dcp_dir

from .helpers import one_line_error
from .helpers import run_cli as run


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model.layer.weight": torch.randn(4, 3, generator=g).to(torch.bfloat16),
        "model.layer.bias": torch.randn(3, generator=g),
        "model.ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "model.mask": torch.tensor([True, False, True]),
        "model.f8": torch.randn(5, generator=g).to(torch.float8_e4m3fn),
        "scale": torch.tensor(2.5, dtype=torch.float64),  # 0-d
        "empty": torch.empty(0, 2, dtype=torch.int32),
    }


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bytes(a.contiguous().untyped_storage()) == bytes(b.contiguous().untyped_storage())


def source(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file(state(), str(path))
    return path


def written(tmp_path: Path, *args: str) -> Path:
    ckpt = tmp_path / "ckpt"
    code, out, err = run("convert", str(source(tmp_path)), str(ckpt), "--to", "dcp", *args)
    assert code == 0, err
    assert "model.safetensors -> " in out
    return ckpt


def quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... single process"
        return fn(*args, **kwargs)


def test_safetensors_to_dcp_and_back_is_bit_exact(tmp_path: Path) -> None:
    ckpt = written(tmp_path)
    assert is_dcp_dir(str(ckpt))
    names = sorted(os.listdir(ckpt))
    assert names == [".metadata", *(f"__0_{k}.distcp" for k in range(len(state())))]  # one data file per tensor
    code, _, err = run("convert", str(ckpt), str(tmp_path / "back.safetensors"))
    assert code == 0, err
    back = load_file(str(tmp_path / "back.safetensors"))
    assert set(back) == set(state())
    for name, t in state().items():
        assert same(back[name], t), name


def test_torch_loads_what_was_written(tmp_path: Path) -> None:
    ckpt = written(tmp_path)
    flat = {name: torch.zeros_like(t) for name, t in state().items()}
    quiet(dcp.load, flat, checkpoint_id=str(ckpt), no_dist=True)
    for name, t in state().items():
        assert same(flat[name], t), name
    # Keys are the dotted names, as DCP flattens a nested state dict: a model's state dict finds them.
    nested = {"model": {"layer": {"weight": torch.zeros(4, 3, dtype=torch.bfloat16)}}}
    quiet(dcp.load, nested, checkpoint_id=str(ckpt), no_dist=True)
    assert same(nested["model"]["layer"]["weight"], state()["model.layer.weight"])


def test_dcp_to_torch_save_reads_what_was_written(tmp_path: Path) -> None:
    ckpt = written(tmp_path)
    quiet(dcp_to_torch_save, str(ckpt), str(tmp_path / "all.pt"))
    got = torch.load(str(tmp_path / "all.pt"), weights_only=True)
    assert set(got) == set(state())
    for name, t in state().items():
        assert same(got[name], t), name


def test_inspect_and_diff_on_the_written_directory(tmp_path: Path) -> None:
    ckpt = written(tmp_path, "--verify")
    code, out, err = run("inspect", str(ckpt))
    assert code == 0, err
    assert "ckpt (dcp): 7 arrays" in out
    assert "model.layer.weight  bfloat16       [4, 3]" in out, out
    code, out, err = run("diff", str(tmp_path / "model.safetensors"), str(ckpt))
    assert code == 0 and "no differences" in out, out + err


def test_an_existing_destination_is_refused_without_force(tmp_path: Path) -> None:
    ckpt = written(tmp_path)
    before = {n: (ckpt / n).read_bytes() for n in os.listdir(ckpt)}
    code, _, err = run("convert", str(tmp_path / "model.safetensors"), str(ckpt), "--to", "dcp")
    one_line_error(code, err)
    assert "the destination exists (a directory)" in err and "--force" in err
    assert {n: (ckpt / n).read_bytes() for n in os.listdir(ckpt)} == before
    # --force replaces a DCP checkpoint (an existing one is written as DCP without --to) ...
    code, _, err = run("convert", str(tmp_path / "model.safetensors"), str(ckpt), "--force", "--only", "scale")
    assert code == 0, err
    assert sorted(os.listdir(ckpt)) == [".metadata", "__0_0.distcp"]
    # ... but never a directory holding anything else.
    (ckpt / "config.json").write_text("{}")
    code, _, err = run("convert", str(tmp_path / "model.safetensors"), str(ckpt), "--to", "dcp", "--force")
    one_line_error(code, err)
    assert "config.json" in err and "config.json" in os.listdir(ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "model.safetensors"]


def test_a_failed_write_leaves_no_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = source(tmp_path)
    real = dcp_files.load_for_writing
    calls = [0]

    def load(path: str, entry: Any) -> Any:
        calls[0] += 1
        if calls[0] == 3:  # after two data files are written
            raise OSError(28, "No space left on device", os.path.join(path, "__0_2.distcp"))
        return real(path, entry)

    monkeypatch.setattr(dcp_files, "load_for_writing", load)
    code, _, err = run("convert", str(src), str(tmp_path / "ckpt"), "--to", "dcp")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err  # an OSError keeps its errno
    assert "No space left on device" in err and ".tmp" not in err and "CheckpointException" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_an_interrupted_write_leaves_no_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = source(tmp_path)

    def load(path: str, entry: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(dcp_files, "load_for_writing", load)
    code, _, err = run("convert", str(src), str(tmp_path / "ckpt"), "--to", "dcp")
    assert code == 130 and "interrupted" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_strip_prefix_renames_and_max_shard_size_is_refused(tmp_path: Path) -> None:
    ckpt = written(tmp_path, "--strip-prefix", "model.")
    assert {e.name for e in DCP.read(str(ckpt)).entries} == {n.removeprefix("model.") for n in state()}
    code, _, err = run("convert", str(tmp_path / "model.safetensors"), str(tmp_path / "o"), "--to", "dcp",
                       "--max-shard-size", "1MB")  # fmt: skip
    one_line_error(code, err)
    assert "--max-shard-size" in err and "DCP" in err
    assert not os.path.lexists(tmp_path / "o")


def test_a_dtype_torch_cannot_hold_is_one_line(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", names=np.array(["a", "bc"]), w=np.ones(2))
    code, _, err = run("convert", str(tmp_path / "s.npz"), str(tmp_path / "ckpt"), "--to", "dcp")
    one_line_error(code, err)
    assert "'names'" in err and "<U2" in err and "--only" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]


def test_tb_save_writes_dcp_flat(tmp_path: Path) -> None:
    data = {"model": {"w": torch.ones(2, 2, dtype=torch.complex64), "b": torch.zeros(3, dtype=torch.uint16)}}
    tb.save(data, tmp_path / "ckpt", format="dcp")
    got = tb.load(tmp_path / "ckpt", to="tensor")
    assert set(got) == {"model.w", "model.b"}  # the nesting record is not kept: DCP's dotted names
    assert same(got["model.w"], data["model"]["w"]) and same(got["model.b"], data["model"]["b"])


def test_save_writes_and_replaces_a_dcp_checkpoint_only_with_force(tmp_path: Path) -> None:
    ckpt = tmp_path / "ck"
    tb.save({"w": np.ones(3, np.float32)}, ckpt, format="dcp")
    with pytest.raises(tb.StructureError, match="Pass force=True"):
        tb.save({"w": np.ones(3, np.float32)}, ckpt, format="dcp")
    tb.save({"w": np.zeros(3, np.float32)}, ckpt, format="dcp", force=True)
    assert tb.load(ckpt)["w"].tolist() == [0.0, 0.0, 0.0]
    tb.save({"w": np.full(3, 2.0, np.float32)}, ckpt, force=True)  # an existing checkpoint names its format
    assert tb.load(ckpt)["w"].tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(tb.UnsupportedError, match="max_shard_size splits"):
        tb.save({"w": np.ones(3, np.float32)}, tmp_path / "other", format="dcp", max_shard_size="1GB")
    assert sorted(os.listdir(tmp_path)) == ["ck"]
