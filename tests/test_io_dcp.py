"""torch.distributed.checkpoint (DCP) directories: read by the command, checked against hostile metadata."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)

from tensorbridge.errors import FileFormatError
from tensorbridge.files import format_for, is_set_path
from tensorbridge.files.dcp_files import DCP, is_dcp_dir

from .helpers import one_line_error
from .helpers import run_cli as run


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "layer.weight": torch.randn(3, 5, generator=g).t(),  # non-contiguous
        "layer.bias": torch.randn(7, generator=g).to(torch.bfloat16),
        "scale": torch.tensor(2.5, dtype=torch.float64),  # 0-d
        "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
    }


def save_dcp(folder: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... single process"
        dcp.save({"model": state(), "step": 7}, checkpoint_id=str(folder), no_dist=True)
    return folder


def test_a_dcp_directory_converts_bit_exact(tmp_path: Path) -> None:
    ckpt = save_dcp(tmp_path / "ckpt")
    code, _, err = run("convert", f"{ckpt}/", str(tmp_path / "out.safetensors"))
    assert code == 0, err
    got = load_file(str(tmp_path / "out.safetensors"))
    want = {f"model.{k}": v for k, v in state().items()}
    assert set(got) == set(want)  # the non-tensor "step" is skipped
    for name, t in want.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
        bits = got[name].reshape(-1).view(torch.uint8)
        assert torch.equal(bits, t.contiguous().reshape(-1).view(torch.uint8)), name


def test_inspect_and_diff_list_the_tensors(tmp_path: Path) -> None:
    ckpt = save_dcp(tmp_path / "ckpt")
    code, out, err = run("inspect", str(ckpt))
    assert code == 0, err
    assert "(dcp)" in out
    for line in ("model.layer.weight  float32        [5, 3]", "model.layer.bias    bfloat16       [7]", "[]"):
        assert line in out, out
    assert run("convert", str(ckpt), str(tmp_path / "o.safetensors"))[0] == 0
    code, out, err = run("diff", str(ckpt), str(tmp_path / "o.safetensors"))
    assert code == 0 and "no differences" in out, out + err


def test_a_dcp_directory_is_no_set(tmp_path: Path) -> None:
    ckpt = save_dcp(tmp_path / "ckpt")
    assert is_dcp_dir(str(ckpt)) and not is_set_path(str(ckpt)) and not is_set_path(f"{ckpt}/")
    assert format_for(f"{ckpt}/").name == "dcp"
    assert format_for(str(tmp_path / "new")).name == "safetensors-set"
    # Writing one is tests/test_io_dcp_write.py's: here, DCP to DCP keeps the tensors (not the "step").
    code, _, err = run("convert", "--to", "dcp", str(save_dcp(tmp_path / "b")), str(tmp_path / "x"))
    assert code == 0, err
    assert [e.name for e in DCP.read(str(tmp_path / "x")).entries] == [e.name for e in DCP.read(str(ckpt)).entries]


@pytest.mark.parametrize("module, name", [("os", "system"), ("builtins", "eval"), ("torch", "load")])
def test_a_metadata_pickle_importing_code_is_refused(tmp_path: Path, module: str, name: str) -> None:
    ckpt = save_dcp(tmp_path / "ckpt")
    marker = tmp_path / "ran"
    arg = f"open({str(marker)!r}, 'w')" if name == "eval" else f"touch {marker}"
    (ckpt / ".metadata").write_bytes(
        b"\x80\x02c" + f"{module}\n{name}\n".encode() + pickle.dumps(arg, protocol=2)[2:-1] + b"\x85R."
    )
    for cmd in (["inspect", str(ckpt)], ["convert", str(ckpt), str(tmp_path / "o.safetensors")]):
        code, _, err = run(*cmd)
        one_line_error(code, err)
        assert f"{module}.{name}" in err, err
    assert not marker.exists()


def test_deeply_nested_metadata_is_refused(tmp_path: Path) -> None:
    ckpt = save_dcp(tmp_path / "ckpt")
    (ckpt / ".metadata").write_bytes(b"\x80\x02" + b")" + b"\x85" * 100_000 + b".")
    code, _, err = run("inspect", str(ckpt))
    one_line_error(code, err)
    assert "levels deep" in err


def test_a_truncated_data_file_is_one_line(tmp_path: Path) -> None:
    ckpt = save_dcp(tmp_path / "ckpt")
    data = ckpt / "__0_0.distcp"
    data.write_bytes(data.read_bytes()[:-100])
    for cmd in (["inspect", str(ckpt)], ["convert", str(ckpt), str(tmp_path / "o.safetensors")]):
        code, _, err = run(*cmd)
        one_line_error(code, err)
        assert "__0_0.distcp" in err and "truncated" in err, err


def rewrite(ckpt: Path, change: Any) -> None:
    md = pickle.loads((ckpt / ".metadata").read_bytes())  # our own test file
    change(md)
    (ckpt / ".metadata").write_bytes(pickle.dumps(md))


def test_offsets_beyond_the_file_are_one_line(tmp_path: Path) -> None:
    ckpt = save_dcp(tmp_path / "ckpt")

    def far(md: Metadata) -> None:
        for info in md.storage_data.values():
            info.offset += 10**9

    rewrite(ckpt, far)
    code, _, err = run("convert", str(ckpt), str(tmp_path / "o.safetensors"))
    one_line_error(code, err)
    assert "claims bytes" in err, err


def test_a_relative_path_leaving_the_directory_is_refused(tmp_path: Path) -> None:
    ckpt = save_dcp(tmp_path / "ckpt")

    def away(md: Metadata) -> None:
        for info in md.storage_data.values():
            info.relative_path = "../__0_0.distcp"

    rewrite(ckpt, away)
    code, _, err = run("inspect", str(ckpt))
    one_line_error(code, err)


def sharded(folder: Path, chunks: list[tuple[tuple[int, int], tuple[int, int]]]) -> torch.Tensor:
    """A DCP directory with one 4x6 tensor stored as the given (offsets, sizes) chunks, as ranks write it."""
    folder.mkdir()
    full = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    storage: dict[MetadataIndex, _StorageInfo] = {}
    metas = []
    with open(folder / "__0_0.distcp", "wb") as f:
        for offsets, sizes in chunks:
            piece = full[offsets[0] : offsets[0] + sizes[0], offsets[1] : offsets[1] + sizes[1]].clone()
            start = f.tell()
            torch.save(piece, f)
            storage[MetadataIndex("w", offsets)] = _StorageInfo("__0_0.distcp", start, f.tell() - start)
            metas.append(ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes)))
    props = TensorProperties(dtype=torch.float32)
    md = Metadata({"w": TensorStorageMetadata(props, torch.Size([4, 6]), metas)}, storage_data=storage)
    (folder / ".metadata").write_bytes(pickle.dumps(md))
    return full


def test_sharded_chunks_are_put_together(tmp_path: Path) -> None:
    full = sharded(tmp_path / "ck", [((0, 0), (2, 6)), ((2, 0), (2, 4)), ((2, 4), (2, 2))])
    (entry,) = DCP.read(str(tmp_path / "ck")).entries
    assert np.array_equal(entry.load(), full.numpy())
    # the same through torch's own reader
    got = {"w": torch.zeros(4, 6)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(got, checkpoint_id=str(tmp_path / "ck"), no_dist=True)
    assert torch.equal(got["w"], full)


@pytest.mark.parametrize(
    "chunks, words",
    [
        ([((0, 0), (2, 6))], "missing"),
        ([((0, 0), (3, 6)), ((2, 0), (2, 6))], "overlap"),
        ([((0, 0), (4, 6)), ((3, 0), (2, 6))], "outside"),
    ],
)
def test_chunks_that_do_not_cover_the_tensor_are_refused(tmp_path: Path, chunks: Any, words: str) -> None:
    sharded(tmp_path / "ck", chunks)
    code, _, err = run("inspect", str(tmp_path / "ck"))
    one_line_error(code, err)
    assert words in err, err


def test_a_chunk_that_is_not_a_torch_save_payload_is_one_line(tmp_path: Path) -> None:
    sharded(tmp_path / "ck", [((0, 0), (4, 6))])
    data = tmp_path / "ck" / "__0_0.distcp"
    data.write_bytes(b"\0" * os.path.getsize(data))
    code, _, err = run("convert", str(tmp_path / "ck"), str(tmp_path / "o.safetensors"))
    one_line_error(code, err)
    assert "chunk [0, 0] of 'w'" in err, err


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch without gloo")
def test_a_checkpoint_of_two_ranks_reads_whole(tmp_path: Path) -> None:
    script = Path(__file__).with_name("dcp_two_ranks.py")
    folder = tmp_path / "two"
    done = subprocess.run(
        [sys.executable, str(script), str(folder)], capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(os.listdir(folder)) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    entries = {e.name: e for e in DCP.read(str(folder)).entries}
    assert np.array_equal(entries["model.w"].load(), np.arange(24, dtype=np.float32).reshape(4, 6))
    assert entries["model.b"].load().astype(np.float32).tolist() == [1.0, 1.0, 1.0]
    code, _, err = run("convert", str(folder), str(tmp_path / "o.safetensors"))
    assert code == 0, err
    assert torch.equal(load_file(str(tmp_path / "o.safetensors"))["model.w"], torch.arange(24.0).reshape(4, 6))


def test_two_chunks_assemble_into_private_writable_memory(tmp_path: Path) -> None:
    full = sharded(tmp_path / "ck", [((0, 0), (2, 6)), ((2, 0), (2, 6))])
    data = (tmp_path / "ck" / "__0_0.distcp").read_bytes()
    (entry,) = DCP.read(str(tmp_path / "ck")).entries
    got = entry.load()
    assert np.array_equal(got, full.numpy()) and got.flags.writeable
    got[...] = -1  # the file is not changed
    assert (tmp_path / "ck" / "__0_0.distcp").read_bytes() == data
    assert np.array_equal(entry.load(), full.numpy())


def test_a_single_chunk_is_read_in_place_into_private_memory(tmp_path: Path) -> None:
    full = sharded(tmp_path / "ck", [((0, 0), (4, 6))])
    (entry,) = DCP.read(str(tmp_path / "ck")).entries
    got = entry.load()
    assert np.array_equal(got, full.numpy()) and got.flags.writeable and got.flags.c_contiguous
    got[0, 0] = 99.0
    assert entry.load()[0, 0] == 0.0


def test_a_chunk_truncated_by_the_end_of_the_file_names_the_chunk(tmp_path: Path) -> None:
    sharded(tmp_path / "ck", [((0, 0), (2, 6)), ((2, 0), (2, 6))])
    (entry,) = DCP.read(str(tmp_path / "ck")).entries  # checked whole here, then truncated
    data = tmp_path / "ck" / "__0_0.distcp"
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(FileFormatError) as caught:
        entry.load()
    assert "chunk [2, 0] of 'w'" in str(caught.value) and "truncated" in str(caught.value), caught.value


def _central_entry(payload: bytes, name: bytes) -> int:
    """Where the zip directory entry of member ``name`` starts in a torch.save payload."""
    at = payload.find(b"PK\x01\x02")
    while at >= 0:
        n = int.from_bytes(payload[at + 28 : at + 30], "little")
        if payload[at + 46 : at + 46 + n].endswith(name):
            return at
        at = payload.find(b"PK\x01\x02", at + 1)
    raise AssertionError(f"no member {name!r}")


@pytest.mark.parametrize("claim", ["offset", "size"])
def test_a_chunk_whose_zip_reaches_outside_its_window_is_one_line(tmp_path: Path, claim: str) -> None:
    """Chunk 0's zip names bytes that lie in the file, past its window (in chunk 1): refused."""
    sharded(tmp_path / "ck", [((0, 0), (2, 6)), ((2, 0), (2, 6))])
    md = pickle.loads((tmp_path / "ck" / ".metadata").read_bytes())  # our own test file
    first = md.storage_data[MetadataIndex("w", (0, 0))].length
    path = tmp_path / "ck" / "__0_0.distcp"
    data = bytearray(path.read_bytes())
    at = _central_entry(bytes(data[:first]), b"/data/0")
    if claim == "offset":  # the member's local header: chunk 1's own, past the window
        second = _central_entry(bytes(data[first:]), b"/data/0")
        header = int.from_bytes(data[first + second + 42 : first + second + 46], "little")
        data[at + 42 : at + 46] = (first + header).to_bytes(4, "little")
    else:  # the member's size: past the window's end
        data[at + 20 : at + 28] = (first * 2).to_bytes(4, "little") * 2
    path.write_bytes(bytes(data))
    code, _, err = run("convert", str(tmp_path / "ck"), str(tmp_path / "o.safetensors"))
    one_line_error(code, err)
    assert "chunk [0, 0] of 'w'" in err, err
    assert not (tmp_path / "o.safetensors").exists()


_PEAK_CHILD = """
import os, sys, warnings
warnings.simplefilter("ignore")
from tensorbridge.cli import main
small, big, out = sys.argv[1:]
assert main(["convert", small, out, "--quiet", "--force"]) == 0  # imports everything first
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
def kib(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))
base = kib("VmRSS:")
assert main(["convert", big, out, "--quiet", "--force"]) == 0
print(kib("VmHWM:") - base)
"""


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _can_reset_peak(), reason="needs a writable /proc/self/clear_refs")
def test_converting_a_checkpoint_holds_about_one_tensor(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.ones(4)}, checkpoint_id=str(tmp_path / "small"), no_dist=True)
        dcp.save({"w": torch.randn(8 << 20)}, checkpoint_id=str(tmp_path / "big"), no_dist=True)  # 32 MiB
    argv = [str(tmp_path / n) for n in ("small", "big", "o.safetensors")]
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_CHILD, *argv], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rise_mib = int(done.stdout.split()[-1]) / 1024
    assert rise_mib < 1.5 * 32, f"peak rise {rise_mib:.1f} MiB for a 32 MiB tensor"
