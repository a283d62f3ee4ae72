"""torch.save files: bit-exact round trips, lazy zero-copy reads, and hostile or damaged files refused."""

from __future__ import annotations

import collections
import functools
import io
import os
import pickle
import re
import shlex
import struct
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorbridge as tb
from tensorbridge.dtypes import DtypeRow
from tensorbridge.errors import FileFormatError, StructureError, UnsupportedError
from tensorbridge.files import format_for, pickle_scan
from tensorbridge.files.base import Archive, Entry
from tensorbridge.files.pickle_scan import MAX_DEPTH, MAX_ITEMS
from tensorbridge.files.torch_files import PT

from .helpers import ANON_SAMPLER, EXACT_ROWS, bits, quiet_tensor, random_bits


def entry(name: str, arr: np.ndarray[Any, Any]) -> Entry:
    return Entry(name, arr.dtype, arr.shape, lambda: arr)


def loaded(archive: Archive) -> dict[str, np.ndarray[Any, Any]]:
    return {e.name: e.load() for e in archive.entries}


def save(obj: Any, path: Path, **kwargs: Any) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # complex32 is "experimental"
        torch.save(obj, path, **kwargs)
    return path


# ---------------------------------------------------------------- round trips


def test_the_format_table_finds_pt() -> None:
    for suffix in (".pt", ".pth", ".bin"):
        assert format_for(f"model{suffix}") is PT


LAYOUTS = ["c", "fortran", "zero_d", "empty"]


def make(row: DtypeRow, layout: str) -> np.ndarray[Any, Any]:
    if layout == "zero_d":
        return random_bits(row, ())
    if layout == "empty":
        return random_bits(row, (0, 3))
    a = random_bits(row, (3, 5), seed=7)
    return np.asfortranarray(a) if layout == "fortran" else a


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("row", EXACT_ROWS, ids=lambda r: r.name)
def test_every_exact_dtype_round_trips_bit_exactly(tmp_path: Path, row: DtypeRow, layout: str) -> None:
    arr = make(row, layout)
    PT.write(str(tmp_path / "a.pt"), [entry("x", arr)], None, {})
    # torch itself reads what was written, with the same bits
    back = torch.load(tmp_path / "a.pt", weights_only=True)["x"]
    assert back.dtype == row.torch and tuple(back.shape) == arr.shape
    assert bits(tb.to_numpy(back)) == bits(arr)
    if layout == "fortran":
        assert back.stride() == tuple(s // arr.itemsize for s in arr.strides)  # torch.save keeps strides
    # and PT reads it back, then writes it again (PT -> PT)
    archive = PT.read(str(tmp_path / "a.pt"))
    (e,) = archive.entries
    assert (e.name, e.dtype, e.shape) == ("x", row.numpy, arr.shape)
    assert bits(e.load()) == bits(arr)
    PT.write(str(tmp_path / "b.pt"), archive.entries, archive.structure, archive.extra)
    assert bits(loaded(PT.read(str(tmp_path / "b.pt")))["x"]) == bits(arr)


@pytest.mark.parametrize("row", EXACT_ROWS, ids=lambda r: r.name)
def test_tensors_saved_by_torch_read_bit_exactly(tmp_path: Path, row: DtypeRow) -> None:
    arr = random_bits(row, (4, 6), seed=3)
    t = tb.to_tensor(arr, copy=True)
    save({"t": t, "view": t.t()[1:3]}, tmp_path / "a.pt")
    got = loaded(PT.read(str(tmp_path / "a.pt")))
    assert bits(got["t"]) == bits(arr)
    assert bits(got["view"]) == bits(arr.T[1:3])


def test_complex32_reads_as_complex64(tmp_path: Path) -> None:
    z = quiet_tensor(torch.tensor([1 + 2j, -0.5j]).to, torch.complex32)
    save({"z": z}, tmp_path / "a.pt")
    (e,) = PT.read(str(tmp_path / "a.pt")).entries
    assert e.dtype == np.complex64
    assert e.load().tolist() == [1 + 2j, -0.5j]


def test_nested_checkpoint_keeps_containers_and_values(tmp_path: Path) -> None:
    w = torch.randn(3, 4)
    ckpt = {
        "epoch": 3,
        "lr": 0.5,
        "name": "run-1",
        "done": False,
        "note": None,
        "model": collections.OrderedDict([("enc.weight", w), ("enc.bias", torch.zeros(3, dtype=torch.bfloat16))]),
        "optim": {
            "state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.ones(3, 4)}},
            "groups": [{"betas": (0.9, 0.99)}],
        },
        "layers": [torch.arange(2), (torch.arange(3), 5)],
    }
    save(ckpt, tmp_path / "a.pt")
    archive = PT.read(str(tmp_path / "a.pt"))
    names = [e.name for e in archive.entries]
    assert names == [
        "model.enc.weight",
        "model.enc.bias",
        "optim.state.0.step",
        "optim.state.0.exp_avg",
        "layers.0",
        "layers.1.0",
    ]
    PT.write(str(tmp_path / "b.pt"), archive.entries, archive.structure, {})
    back = torch.load(tmp_path / "b.pt", weights_only=True)
    assert type(back["model"]) is collections.OrderedDict and list(back["model"]) == ["enc.weight", "enc.bias"]
    assert torch.equal(back["model"]["enc.weight"], w)
    assert back["model"]["enc.bias"].dtype == torch.bfloat16
    assert back["optim"]["state"][0]["step"].item() == 7.0 and list(back["optim"]["state"]) == [0]
    assert back["optim"]["groups"] == [{"betas": (0.9, 0.99)}]
    assert isinstance(back["layers"][1], tuple) and back["layers"][1][1] == 5
    assert {k: back[k] for k in ("epoch", "lr", "name", "done", "note")} == {
        "epoch": 3,
        "lr": 0.5,
        "name": "run-1",
        "done": False,
        "note": None,
    }


def test_a_bare_tensor_is_named_data_and_stays_bare(tmp_path: Path) -> None:
    save(torch.arange(5), tmp_path / "a.pt")
    archive = PT.read(str(tmp_path / "a.pt"))
    assert [e.name for e in archive.entries] == ["data"] and archive.structure == {"t": "data"}
    PT.write(str(tmp_path / "b.pt"), archive.entries, archive.structure, {})
    assert torch.equal(torch.load(tmp_path / "b.pt", weights_only=True), torch.arange(5))


def test_without_a_record_the_file_is_a_flat_dict(tmp_path: Path) -> None:
    a, b = np.arange(3.0), np.ones((2, 2), np.int8)
    PT.write(str(tmp_path / "a.pt"), [entry("enc.w", a), entry("b", b)], None, {"ignored": "metadata"})
    back = torch.load(tmp_path / "a.pt", weights_only=True)
    assert type(back) is dict and list(back) == ["enc.w", "b"]
    assert back["enc.w"].tolist() == a.tolist() and back["b"].dtype == torch.int8


def test_parameters_and_conjugates_read_as_plain_values(tmp_path: Path) -> None:
    z = torch.tensor([1 + 2j, 3 - 1j])
    # (torch.save refuses one storage viewed as two dtypes: the imaginary part views a copy)
    save({"p": torch.nn.Parameter(torch.ones(2)), "c": z.conj(), "n": z.clone().conj().imag}, tmp_path / "a.pt")
    got = loaded(PT.read(str(tmp_path / "a.pt")))
    assert got["p"].tolist() == [1.0, 1.0]
    assert got["c"].tolist() == [1 - 2j, 3 + 1j]
    assert got["n"].tolist() == [-2.0, 1.0]


# ---------------------------------------------------------------- tied weights, zero copy, memory


def test_tied_weights_keep_both_names_and_are_written_once(tmp_path: Path) -> None:
    w = torch.randn(64, 32)
    save({"embed.weight": w, "head.weight": w, "bias": torch.zeros(32)}, tmp_path / "a.pt")
    archive = PT.read(str(tmp_path / "a.pt"))
    got = loaded(archive)
    assert list(got) == ["embed.weight", "head.weight", "bias"]
    assert np.shares_memory(got["embed.weight"], got["head.weight"])  # one storage in the file
    PT.write(str(tmp_path / "b.pt"), archive.entries, archive.structure, {})
    with zipfile.ZipFile(tmp_path / "b.pt") as zf:
        assert len([n for n in zf.namelist() if "/data/" in n]) == 2  # the tied pair is stored once
    back = torch.load(tmp_path / "b.pt", weights_only=True)
    assert back["embed.weight"].data_ptr() == back["head.weight"].data_ptr()
    assert torch.equal(back["head.weight"], w)


def test_equal_values_in_different_memory_are_not_tied(tmp_path: Path) -> None:
    a, b = np.ones(4), np.ones(4)
    PT.write(str(tmp_path / "a.pt"), [entry("a", a), entry("b", b)], None, {})
    back = torch.load(tmp_path / "a.pt", weights_only=True)
    assert back["a"].data_ptr() != back["b"].data_ptr()


def test_entries_are_views_of_the_mapped_file_and_never_write_to_it(tmp_path: Path) -> None:
    save({"w": torch.zeros(1000)}, tmp_path / "a.pt")
    before = (tmp_path / "a.pt").read_bytes()
    (e,) = PT.read(str(tmp_path / "a.pt")).entries
    first, second = e.load(), e.load()
    assert np.shares_memory(first, second)  # both are views of the one mapped storage: no copy
    if first.flags.writeable:
        first[:] = 1.0  # copy-on-write pages
    assert (tmp_path / "a.pt").read_bytes() == before


def test_sources_that_need_a_copy_are_written_correctly(tmp_path: Path) -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    sources = {
        "big_endian": base.astype(">f4"),
        "reversed": base[::-1],
        "step": base[:, ::2],
        "readonly": np.frombuffer(base.tobytes(), np.float32).reshape(4, 6),
        "broadcast": np.broadcast_to(np.arange(6, dtype=np.float32), (1000, 6)),
    }
    PT.write(str(tmp_path / "a.pt"), [entry(k, v) for k, v in sources.items()], None, {})
    back = torch.load(tmp_path / "a.pt", weights_only=True)
    for k, v in sources.items():
        assert back[k].numpy().tolist() == v.tolist(), k
    assert (tmp_path / "a.pt").stat().st_size < 10_000  # strided views and broadcasts are stored compactly


_MEASURE = (
    """
import resource, sys, threading, time
from tensorbridge.files.torch_files import PT

start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
"""
    + ANON_SAMPLER
    + """
archive = PT.read(sys.argv[1])
PT.write(sys.argv[2], archive.entries, archive.structure, {})
done.set()
sampler.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 - start_rss, peak[0] - start_anon)
"""
)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_converting_200_mb_keeps_the_data_file_backed(tmp_path: Path) -> None:
    src = np.lib.format.open_memmap(tmp_path / "src.npy", mode="w+", dtype=np.float32, shape=(50_000_000,))
    src[::4096] = 1.0
    del src
    mapped = np.load(tmp_path / "src.npy", mmap_mode="r")
    PT.write(str(tmp_path / "in.pt"), [entry("w", mapped)], None, {})  # a read-only map: shared, not copied
    del mapped
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
        capture_output=True,
        text=True,
        check=True,
    )
    rss_mb, anon_mb = map(int, out.stdout.split())
    # Measured: rss +194 MB (the mapped input's pages, which the kernel may drop), anon +0-1 MB.
    # A copy of the data would add 200 MB of anonymous memory.
    assert rss_mb < 300, out.stdout
    assert anon_mb < 50, out.stdout
    back = torch.load(tmp_path / "out.pt", weights_only=True, mmap=True)["w"]
    assert back.shape == (50_000_000,) and back[::4096].sum().item() == len(range(0, 50_000_000, 4096))


# ---------------------------------------------------------------- legacy files


def test_a_legacy_file_round_trips_without_mmap(tmp_path: Path) -> None:
    ckpt = {"w": torch.randn(3, 4), "b": torch.ones(2, dtype=torch.bfloat16), "tied": None, "step": 9}
    ckpt["tied"] = ckpt["w"]
    save(ckpt, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(tmp_path / "old.pt")
    archive = PT.read(str(tmp_path / "old.pt"))
    got = loaded(archive)
    assert np.array_equal(got["w"], ckpt["w"].numpy()) and np.array_equal(got["tied"], got["w"])
    assert bits(got["b"]) == bits(tb.to_numpy(ckpt["b"]))
    PT.write(str(tmp_path / "new.pt"), archive.entries, archive.structure, {})
    back = torch.load(tmp_path / "new.pt", weights_only=True, mmap=True)
    assert back["step"] == 9 and torch.equal(back["tied"], ckpt["w"])


@pytest.mark.parametrize("cut", [3, 50, 0.5, -40, -1])
def test_a_truncated_legacy_file_is_refused(tmp_path: Path, cut: float) -> None:
    data = save({"w": torch.randn(100)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False).read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: int(cut * len(data)) if isinstance(cut, float) else cut])
    with pytest.raises(FileFormatError, match=r"^reading at .*cut\.pt: "):
        PT.read(str(tmp_path / "cut.pt"))


# ---------------------------------------------------------------- hostile files


class RunsCode:
    """Unpickling this runs a shell command: exactly what a hostile checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class NotATensor:
    def __init__(self) -> None:
        self.x = 1


def test_a_pickle_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    save({"w": torch.ones(2), "payload": RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(FileFormatError, match=r"refused for safety: it would import (posix|nt)\.system") as err:
        PT.read(str(tmp_path / "evil.pt"))
    assert "weights_only=True" in str(err.value) and "re-save" in str(err.value)
    assert not marker.exists()
    # the control: the file really is hostile, an unsafe load runs its command
    control = tmp_path / "control"
    save(RunsCode(control), tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists()


@pytest.mark.parametrize("payload", [NotATensor(), np.ones(3)], ids=["class", "numpy"])
def test_anything_that_needs_a_class_is_refused_for_safety(tmp_path: Path, payload: Any) -> None:
    save({"x": payload}, tmp_path / "a.pt")
    with pytest.raises(FileFormatError, match=r"refused for safety: it would import .*weights_only=True"):
        PT.read(str(tmp_path / "a.pt"))


def test_a_torchscript_archive_is_refused(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "ts.pt")
    with pytest.raises(FileFormatError, match="TorchScript archive"):
        PT.read(str(tmp_path / "ts.pt"))


@pytest.mark.parametrize("cut", [1, 4, 30, 200, 0.25, 0.5, 0.9, -22, -1])
def test_a_truncated_zip_is_refused(tmp_path: Path, cut: float) -> None:
    data = save({"w": torch.randn(1000), "b": torch.ones(3)}, tmp_path / "a.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: int(cut * len(data)) if isinstance(cut, float) else cut])
    with pytest.raises(FileFormatError, match=r"^reading at .*cut\.pt: .*\. Check that the file is complete"):
        PT.read(str(tmp_path / "cut.pt"))


@pytest.mark.parametrize("head", [b"", b"\x80\x02", b"PK\x03\x04", b"garbage"], ids=["empty", "pickle", "zip", "text"])
def test_random_bytes_are_refused(tmp_path: Path, head: bytes) -> None:
    for seed in range(5):
        data = head + np.random.default_rng(seed).bytes(2000) if head != b"" or seed else b""
        (tmp_path / "r.pt").write_bytes(data)
        with pytest.raises(FileFormatError, match=r"^reading at "):
            PT.read(str(tmp_path / "r.pt"))


def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        PT.read(str(tmp_path / "nope.pt"))


class _Storage:
    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


class _Tensor:
    def __init__(self, storage: _Storage, size: tuple[int, ...]) -> None:
        self.storage, self.size = storage, size

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.storage, 0, self.size, (1,), False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def forge(path: Path, obj: Any, records: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> Path:
    """A zip-based torch.save file whose pickle says what the test wants, records as given."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", compress) as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        for key, data in records.items():
            zf.writestr(f"archive/data/{key}", data)
        zf.writestr("archive/version", "3\n")
    return path


def test_a_forged_file_with_honest_sizes_reads(tmp_path: Path) -> None:
    data = np.arange(10, dtype=np.float32)
    forge(tmp_path / "ok.pt", {"w": _Tensor(_Storage("0", 10), (10,))}, {"0": data.tobytes()})
    assert loaded(PT.read(str(tmp_path / "ok.pt")))["w"].tolist() == data.tolist()


def test_a_storage_larger_than_its_record_is_refused(tmp_path: Path) -> None:
    # torch.load(mmap=True) would hand out the bytes of the records that follow, in silence
    data = np.arange(10, dtype=np.float32).tobytes()
    forge(tmp_path / "a.pt", {"w": _Tensor(_Storage("0", 40), (40,))}, {"0": data})
    with pytest.raises(FileFormatError, match="storage '0' claims 160 bytes but the file holds a record of 40 bytes"):
        PT.read(str(tmp_path / "a.pt"))


@pytest.mark.parametrize("numel", [10**9, 2**62 // 4])
def test_a_storage_larger_than_the_file_is_refused(tmp_path: Path, numel: int) -> None:
    forge(tmp_path / "a.pt", {"w": _Tensor(_Storage("0", numel), (numel,))}, {"0": b"\0" * 40})
    with pytest.raises(FileFormatError, match=f"claims {numel * 4} bytes but the file holds a record of 40 bytes"):
        PT.read(str(tmp_path / "a.pt"))


def test_a_compressed_record_is_refused_before_torch_inflates_it(tmp_path: Path) -> None:
    zeros = bytes(4 << 20)
    forge(tmp_path / "a.pt", {"w": _Tensor(_Storage("0", 1 << 20), (1 << 20,))}, {"0": zeros}, zipfile.ZIP_DEFLATED)
    assert (tmp_path / "a.pt").stat().st_size < 100_000
    with pytest.raises(FileFormatError, match="is compressed or encrypted"):
        PT.read(str(tmp_path / "a.pt"))


def test_duplicate_record_names_are_refused(tmp_path: Path) -> None:
    path = forge(tmp_path / "a.pt", {"w": _Tensor(_Storage("0", 1), (1,))}, {"0": b"\0" * 4})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr("archive/data/0", b"\1" * 4)
    with pytest.raises(FileFormatError, match="two records named 'archive/data/0'"):
        PT.read(str(path))


def test_self_containing_and_deep_containers_are_refused_without_recursion_errors(tmp_path: Path) -> None:
    loop: list[Any] = [torch.ones(1)]
    loop.append(loop)
    save(loop, tmp_path / "loop.pt")
    deep: Any = torch.ones(1)
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    save(deep, tmp_path / "deep.pt")
    for name in ("loop.pt", "deep.pt"):
        with pytest.raises(FileFormatError, match=f"nest more than {MAX_DEPTH} levels deep"):
            PT.read(str(tmp_path / name))


def test_shared_references_that_expand_exponentially_are_refused(tmp_path: Path) -> None:
    bomb: Any = [torch.ones(1)]
    for _ in range(40):
        bomb = [bomb, bomb]  # 2**40 leaves in a file of a few kB
    save(bomb, tmp_path / "bomb.pt")
    assert (tmp_path / "bomb.pt").stat().st_size < 10_000
    with pytest.raises(UnsupportedError, match="expand to more than"):
        PT.read(str(tmp_path / "bomb.pt"))


# ---------------------------------------------------------------- what NumPy cannot hold


def _quantized() -> torch.Tensor:
    return quiet_tensor(torch.quantize_per_tensor, torch.ones(3), 0.1, 0, torch.qint8)


def _nested() -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])


@pytest.mark.parametrize(
    ("make_leaf", "match"),
    [
        (lambda: torch.eye(3).to_sparse(), "entry 'model.x' is a sparse tensor"),
        (_quantized, "entry 'model.x' is a quantized tensor"),
        (_nested, "entry 'model.x' is a nested tensor"),
        (lambda: torch.empty(3, device="meta"), "entry 'model.x' is a meta tensor with no data"),
        (lambda: torch.zeros(2, dtype=torch.uint8).view(torch.bits8), "entry 'model.x' has dtype torch.bits8"),
        (lambda: torch.float16, "at model.x: a dtype cannot be stored"),
    ],
    ids=["sparse", "quantized", "nested", "meta", "bits8", "dtype_leaf"],
)
def test_what_numpy_cannot_hold_is_refused_naming_the_entry(tmp_path: Path, make_leaf: Any, match: str) -> None:
    save({"model": {"x": make_leaf(), "ok": torch.ones(1)}}, tmp_path / "a.pt")
    with pytest.raises(UnsupportedError, match=match):
        PT.read(str(tmp_path / "a.pt"))


# ---------------------------------------------------------------- writing: what the caller passes


def test_write_refuses_duplicate_names_and_entries_the_record_forgets(tmp_path: Path) -> None:
    a = np.ones(2)
    with pytest.raises(StructureError, match="two entries are named 'a'"):
        PT.write(str(tmp_path / "a.pt"), [entry("a", a), entry("a", a)], None, {})
    with pytest.raises(StructureError, match=r"1 entries \('b'\) are not in the nesting record"):
        PT.write(str(tmp_path / "a.pt"), [entry("a", a), entry("b", a)], {"dict": [["a", {"t": "a"}]]}, {})


def test_write_refuses_a_record_naming_a_missing_entry_or_nested_too_deep(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match="names array 'b'"):
        PT.write(str(tmp_path / "a.pt"), [entry("a", np.ones(1))], {"list": [{"t": "a"}, {"t": "b"}]}, {})
    deep: Any = {"t": "a"}
    for _ in range(5000):
        deep = {"list": [deep]}
    with pytest.raises(FileFormatError, match="deeper than"):
        PT.write(str(tmp_path / "a.pt"), [entry("a", np.ones(1))], deep, {})


def test_write_refuses_dtypes_torch_cannot_hold_naming_the_entry(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError, match=r"writing at .*: entry 'names'"):
        PT.write(str(tmp_path / "a.pt"), [entry("names", np.array(["a", "b"]))], None, {})


def test_write_failures_are_os_errors(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        PT.write(str(tmp_path / "missing-dir" / "a.pt"), [entry("a", np.ones(1))], None, {})


# ---------------------------------------------------------------- fuzzing


@functools.cache
def _valid_file(legacy: bool) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.pt"
        w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        ckpt = collections.OrderedDict(
            w=w, b=torch.ones(2, dtype=torch.bfloat16), tied=w, meta={"epoch": 3, "l": [1.5, None]}
        )
        torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
        return path.read_bytes()


@settings(max_examples=60, deadline=None)
@given(
    legacy=st.booleans(),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6),
    keep=st.one_of(st.none(), st.floats(0, 1)),
)
def test_damaged_files_only_ever_read_or_raise_a_refusal(
    legacy: bool, edits: list[tuple[float, int]], keep: float | None
) -> None:
    data = bytearray(_valid_file(legacy))
    for where, value in edits:
        data[int(where * len(data))] = value
    if keep is not None:
        data = data[: int(keep * len(data))]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fuzz.pt")
        with open(path, "wb") as f:
            f.write(data)
        try:
            archive = PT.read(path)
        except (FileFormatError, UnsupportedError):
            return  # refused with a message: all that may happen to a damaged file
        for e in archive.entries:
            arr = e.load()
            assert arr.dtype == e.dtype and arr.shape == e.shape


# ---------------------------------------------------------------- hostile pickles (issue 10)
# Each file is refused by the command with one line and exit status 2, leaving nothing behind,
# before torch.load builds anything from it.


def _op_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _op_str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw


def _op_int(n: int) -> bytes:
    return b"J" + n.to_bytes(4, "little", signed=True)


def _op_ints(values: list[int]) -> bytes:
    return b"(" + b"".join(_op_int(v) for v in values) + b"t"


def _op_storage(key: str, numel: int) -> bytes:
    return (
        b"("
        + _op_str("storage")
        + _op_global("torch", "FloatStorage")
        + _op_str(key)
        + _op_str("cpu")
        + _op_int(numel)
        + b"tQ"
    )


def _op_tensor(storage: bytes, size: list[int], stride: list[int], offset: int = 0) -> bytes:
    hooks = _op_global("collections", "OrderedDict") + b")R"
    args = b"(" + storage + _op_int(offset) + _op_ints(size) + _op_ints(stride) + b"\x89" + hooks + b"t"
    return _op_global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def raw_pt(path: Path, body: bytes, records: dict[str, bytes] | None = None) -> Path:
    """A zip-based torch.save file whose data.pkl is ``PROTO 2, body, STOP``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02" + body + b".")
        zf.writestr("archive/byteorder", "little")
        for key, data in (records or {}).items():
            zf.writestr(f"archive/data/{key}", data)
        zf.writestr("archive/version", "3\n")
    return path


def refused_by_the_command(tmp_path: Path, src: Path, match: str) -> None:
    from tensorbridge.cli import main

    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    for argv in (["inspect", str(src)], ["convert", str(src), str(out_dir / "o.npz")], ["diff", str(src), str(src)]):
        out, err = io.StringIO(), io.StringIO()
        assert main(argv, out=out, err=err) == 2, (argv, out.getvalue())
        message = err.getvalue()
        assert message.startswith("tensorbridge: error: reading at ") and message.count("\n") == 1, message
        assert re.search(match, message), message
    assert list(out_dir.iterdir()) == []


_DEEP = 1_000_000


@pytest.mark.parametrize(
    "body",
    [
        b"}" + b")" + b"\x85" * _DEEP + b"Ns",  # {((((...)))): None}: hashing the key overflowed the C stack
        _op_global("__builtin__", "set") + b"]" + b")" + b"\x85" * _DEEP + b"a\x85R",  # {((((...))))}
        b"(" * _DEEP,  # MARK frames
        # lists changed after being put in another (how a cycle is pickled): L0 = [L1], then L1.append(L2)...
        b"]" + b"".join(b"]r" + i.to_bytes(4, "little") + b"aj" + i.to_bytes(4, "little") for i in range(_DEEP // 10)),
    ],
    ids=["dict_key", "set", "marks", "mutated"],
)
def test_deep_pickles_are_refused_before_anything_recurses(tmp_path: Path, body: bytes) -> None:
    path = raw_pt(tmp_path / "deep.pt", body)
    assert path.stat().st_size > _DEEP
    refused_by_the_command(tmp_path, path, f"nest more than {MAX_DEPTH} levels deep")


@pytest.mark.parametrize(
    "body",
    [
        _op_global("torch", "FloatTensor") + _op_ints([1 << 20]) + b"R",
        _op_global("torch", "Tensor") + _op_ints([1 << 20]) + b"\x81",
        _op_global("torch.storage", "UntypedStorage") + _op_ints([1 << 20]) + b"R",
        _op_tensor(_op_global("torch.storage", "TypedStorage") + _op_ints([1 << 20]) + b"R", [1 << 20], [1]),
        _op_global("torch._utils", "_rebuild_wrapper_subclass") + _op_ints([1]) + b"R",
    ],
    ids=["legacy_constructor", "newobj", "untyped_storage", "typed_storage", "wrapper_subclass"],
)
def test_tensors_without_stored_bytes_are_refused(tmp_path: Path, body: bytes) -> None:
    # torch.load(weights_only=True) allows these and hands out uninitialised process memory
    path = raw_pt(tmp_path / "a.pt", b"}" + _op_str("w") + body + b"s")
    refused_by_the_command(tmp_path, path, r"refused: its pickle calls torch\.\S+, which makes a tensor or storage")


def test_a_storage_referenced_twice_is_checked_at_every_reference(tmp_path: Path) -> None:
    # torch keeps the first reference's size: 4000 bytes read from a 40-byte record and the next one
    first, second = _op_tensor(_op_storage("0", 1000), [1000], [1]), _op_tensor(_op_storage("0", 10), [10], [1])
    body = b"}(" + _op_str("a") + first + _op_str("b") + second + b"u"
    path = raw_pt(tmp_path / "a.pt", body, {"0": b"\1" * 40, "1": b"SECRET" * 1000})
    refused_by_the_command(tmp_path, path, "storage '0' claims 4000 bytes but the file holds a record of 40 bytes")
    # and a view past the end of its (honest) storage
    body = b"}" + _op_str("a") + _op_tensor(_op_storage("0", 10), [4], [3], offset=2) + b"s"
    path = raw_pt(tmp_path / "b.pt", body, {"0": b"\1" * 40})
    refused_by_the_command(tmp_path, path, "reaches byte 48 of storage '0', which holds 40")


def test_a_legacy_file_whose_storage_has_no_bytes_is_refused(tmp_path: Path) -> None:
    data = save({"w": torch.ones(3)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False).read_bytes()
    at = data.rindex(b"\x80\x02]q\x00")  # the last pickle: the list of storage keys torch fills
    (tmp_path / "empty.pt").write_bytes(data[:at] + pickle.dumps([], protocol=2))
    refused_by_the_command(tmp_path, tmp_path / "empty.pt", r"storages \('\d+'\) have no stored bytes")
    torch.load(tmp_path / "empty.pt", weights_only=True)  # the control: torch hands out the storage unfilled


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda p: raw_pt(
                p, b"}" + _op_str("w") + _op_global("__builtin__", "bytearray") + _op_ints([2**31 - 1]) + b"Rs"
            ),
            r"builtins\.bytearray, which would make bytes the file does not hold",
        ),
        (lambda p: save({"w": torch.zeros(1).expand(2**40)}, p), r"repeats the 4 bytes it views 1099511627776 times"),
        (lambda p: save({"w": torch.zeros(1).expand(2**28)}, p), r"repeats the 4 bytes it views"),
        (lambda p: save([None] * 5_000_000, p), f"more than {MAX_ITEMS} container items"),
        (lambda p: raw_pt(p, b"Nq\x00" + b"h\x00" * 100_000), "more than 50000 opcodes"),
        (lambda p: save({f"n{i}": torch.ones(1 << 18) for i in range(1)} | {"t": [None]}, p), None),
    ],
    ids=["bytearray", "expand_2_40", "expand_2_28", "nones", "opcodes", "control"],
)
def test_what_a_file_makes_tensorbridge_allocate_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: Any, match: str | None
) -> None:
    if match is not None and "opcodes" in match:
        monkeypatch.setattr(pickle_scan, "MAX_OPS", 50_000)  # the real limit (8M) takes seconds to reach
    path = make(tmp_path / "a.pt")
    if match is None:  # the control: an honest file of the same kind reads
        assert [e.name for e in PT.read(str(path)).entries] == ["n0"]
        return
    refused_by_the_command(tmp_path, path, match)


def test_names_that_repeat_one_tensor_are_bounded_by_the_file_size(tmp_path: Path) -> None:
    w = torch.ones(1 << 18)  # 1 MiB, referred to 100 times: 100 MiB to write or compare
    save({f"n{i}": w for i in range(100)}, tmp_path / "a.pt")
    refused_by_the_command(tmp_path, tmp_path / "a.pt", "counted under every name they have, hold more than")
    save({f"n{i}": w for i in range(4)}, tmp_path / "tied.pt")  # tied weights stay fine
    assert len(PT.read(str(tmp_path / "tied.pt")).entries) == 4


_LIMITED = """
import resource, subprocess, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
# ru_maxrss would report the forking parent's peak (a large pytest process): read VmHWM instead,
# reset to the current size where the kernel allows it.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
from tensorbridge.cli import main
code = main(["inspect", sys.argv[1]])
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print("peak", hwm // 1024, file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS bounds address space as measured on Linux")
@pytest.mark.parametrize("name", ["deep", "bytearray", "nones", "expand"])
def test_hostile_files_stay_within_a_memory_limit(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.pt"
    if name == "deep":
        raw_pt(path, b"}" + b")" + b"\x85" * _DEEP + b"Ns")
    elif name == "bytearray":
        raw_pt(path, b"}" + _op_str("w") + _op_global("__builtin__", "bytearray") + _op_ints([2**31 - 1]) + b"Rs")
    elif name == "nones":
        save([None] * 5_000_000, path)
    else:
        save({"w": torch.zeros(1).expand(2**40)}, path)
    # importing torch and tensorbridge maps ~650 MB of address space; 1.5 GiB leaves ~850 MB of room
    limit = (3 << 29) + 16 * path.stat().st_size
    run = subprocess.run(
        [sys.executable, "-c", _LIMITED, str(path), str(limit)], capture_output=True, text=True, timeout=120
    )
    lines = run.stderr.splitlines()
    assert run.returncode == 2, run.stderr[-2000:]
    assert len(lines) == 2 and lines[0].startswith("tensorbridge: error: reading at "), run.stderr[-2000:]
    assert int(lines[1].split()[1]) < 600, lines  # peak resident MB (torch alone takes ~240)


# ---------------------------------------------------------------- the streaming writer (pt_writer)


def _write_checkpoint(path: Path) -> tuple[Any, list[Entry], Any]:
    """A nested checkpoint of every exact dtype with a tied pair, written by PT.write from its leaves."""
    from tensorbridge.files.structure import flatten

    obj: Any = collections.OrderedDict(
        model={"w": torch.randn(3, 4), "layers": [torch.ones(2), (torch.arange(3), 7)]},
        **{row.name: tb.to_tensor(random_bits(row, (2, 3), seed=5), copy=True) for row in EXACT_ROWS},
        step=3,
    )
    obj["tied"] = obj["model"]["w"]
    leaves, record = flatten(obj)
    arrays: dict[int, np.ndarray[Any, Any]] = {}
    entries = []
    for name, leaf in leaves:
        arr = arrays.setdefault(id(leaf), tb.to_numpy(leaf))  # one array for the tied pair, as PT.read gives
        entries.append(entry(name, arr))
    PT.write(str(path), entries, record, {})
    return obj, entries, record


def test_the_pickle_is_the_one_torch_save_writes(tmp_path: Path) -> None:
    obj, _, _ = _write_checkpoint(tmp_path / "mine.pt")
    save(obj, tmp_path / "torch.pt")
    with zipfile.ZipFile(tmp_path / "torch.pt") as zf:
        theirs = zf.read("torch/data.pkl")
        their_names = {n.split("/", 1)[1] for n in zf.namelist()}
    with zipfile.ZipFile(tmp_path / "mine.pt") as zf:
        assert zf.read("archive/data.pkl") == theirs  # v2 and v3 rebuilds, storage ids, tie, containers
        assert {n.split("/", 1)[1] for n in zf.namelist()} == their_names
        assert zf.read("archive/version") == b"3\n" and zf.read("archive/.storage_alignment") == b"64"
        assert re.fullmatch(rb"\d{40}", zf.read("archive/.data/serialization_id"))
        assert zf.testzip() is None  # every CRC-32 right


@pytest.mark.parametrize("mmap", [False, True])
def test_torch_loads_it_safely_mapped_and_by_computed_offsets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mmap: bool
) -> None:
    from torch.utils.serialization import config

    obj, _, _ = _write_checkpoint(tmp_path / "a.pt")
    monkeypatch.setenv("TORCH_SERIALIZATION_DEBUG", "1")  # torch asserts each computed offset is the record's
    before = config.load.calculate_storage_offsets
    config.load.calculate_storage_offsets = True  # a config proxy: monkeypatch cannot set it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            back = torch.load(tmp_path / "a.pt", weights_only=True, mmap=mmap)
    finally:
        config.load.calculate_storage_offsets = before
    assert type(back) is collections.OrderedDict and list(back) == list(obj)
    assert back["step"] == 3 and back["model"]["layers"][1][1] == 7 and isinstance(back["model"]["layers"][1], tuple)
    assert back["tied"].data_ptr() == back["model"]["w"].data_ptr()
    for row in EXACT_ROWS:
        assert back[row.name].dtype == row.torch
        assert bits(tb.to_numpy(back[row.name])) == bits(tb.to_numpy(obj[row.name])), row.name


def test_records_are_aligned_as_torch_aligns_them(tmp_path: Path) -> None:
    _write_checkpoint(tmp_path / "a.pt")
    data = (tmp_path / "a.pt").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.pt") as zf:
        for info in zf.infolist():
            name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
            start = info.header_offset + 30 + name_len + extra_len
            assert start % 64 == 0, info.filename
            assert data[info.header_offset + 30 + name_len : info.header_offset + 32 + name_len] == b"FB"


def test_zip64_records_and_directory_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorbridge.files import pt_writer

    monkeypatch.setattr(pt_writer, "ZIP64_FROM", 100)  # every record, offset and the directory past "4 GiB"
    arrays = {f"w{i}": np.random.default_rng(i).standard_normal(40 + 30 * i).astype(np.float32) for i in range(4)}
    arrays["empty"] = np.zeros((0, 3), np.float32)
    PT.write(str(tmp_path / "a.pt"), [entry(k, v) for k, v in arrays.items()], None, {})
    with zipfile.ZipFile(tmp_path / "a.pt") as zf:
        assert zf.testzip() is None
    for mmap in (False, True):
        back = torch.load(tmp_path / "a.pt", weights_only=True, mmap=mmap)
        assert all(np.array_equal(back[k].numpy(), v) for k, v in arrays.items())
    assert all(np.array_equal(e.load(), arrays[e.name]) for e in PT.read(str(tmp_path / "a.pt")).entries)


def test_storages_are_written_in_the_order_the_record_names_them(tmp_path: Path) -> None:
    a, b = np.zeros(3, np.float32), np.ones(5, np.float32)
    record = {"dict": [["b", {"t": "b"}], ["a", {"t": "a"}]]}
    PT.write(str(tmp_path / "a.pt"), [entry("a", a), entry("b", b)], record, {})
    with zipfile.ZipFile(tmp_path / "a.pt") as zf:
        assert zf.getinfo("archive/data/0").file_size == b.nbytes  # b comes first in the record
    assert list(torch.load(tmp_path / "a.pt", weights_only=True)) == ["b", "a"]


def test_memory_freed_between_entries_is_never_taken_for_a_tie(tmp_path: Path) -> None:
    # Each load allocates a fresh array; the allocator hands the freed address out again, so the
    # same address, dtype and shape recur with different data.
    entries = [
        Entry(f"w{i}", np.dtype(np.float32), (1000,), functools.partial(np.full, 1000, i, np.float32)) for i in range(8)
    ]
    PT.write(str(tmp_path / "a.pt"), entries, None, {})
    back = torch.load(tmp_path / "a.pt", weights_only=True)
    assert [int(back[f"w{i}"][0]) for i in range(8)] == list(range(8))
    assert len({t.data_ptr() for t in back.values()}) == 8


_STREAM = """
import resource, sys
import numpy as np
from tensorbridge.files.base import Entry
from tensorbridge.files.torch_files import PT
n = 8 << 20  # 32 MiB of float32 per entry, 256 MiB in all, each made fresh when it is loaded
entries = [Entry(f"w{i}", np.dtype(np.float32), (n,), lambda i=i: np.full(n, i, np.float32)) for i in range(8)]
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
PT.write(sys.argv[1], entries, None, {})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 - start)
"""


def test_writing_holds_one_entry_at_a_time_not_the_model(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _STREAM, str(tmp_path / "a.pt")], capture_output=True, text=True, check=True
    )
    # torch.save needed all 256 MiB at once; streaming holds one 32 MiB entry plus a piece.
    assert int(out.stdout) < 100, out.stdout
    back = torch.load(tmp_path / "a.pt", weights_only=True, mmap=True)
    assert [int(back[f"w{i}"][-1]) for i in range(8)] == list(range(8))


def test_permuted_dense_memory_keeps_its_strides(tmp_path: Path) -> None:
    base = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    arr = base.transpose(2, 0, 1)  # dense, in no standard order
    PT.write(str(tmp_path / "a.pt"), [entry("p", arr)], None, {})
    back = torch.load(tmp_path / "a.pt", weights_only=True)["p"]
    assert back.stride() == tuple(s // 4 for s in arr.strides) and back.numpy().tolist() == arr.tolist()
