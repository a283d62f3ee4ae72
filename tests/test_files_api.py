"""tb.load / tb.save / tb.open: the Python API for tensor files."""

from __future__ import annotations

import collections
import itertools
import json
import os
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import tensorbridge as tb
from tensorbridge.dtypes import DtypeRow
from tensorbridge.files import convert as convert_job
from tensorbridge.files.npz_files import RECORD_MEMBER
from tensorbridge.files.safetensors_files import STRUCTURE_KEY

from .helpers import EXACT_ROWS, bits, quiet_tensor, random_bits

FORMATS = ["npy", "npz", "pt", "safetensors"]
NESTING_FORMATS = ["npz", "pt", "safetensors"]


def _leftovers(folder: Path, *keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def _tensor_bits(t: torch.Tensor) -> bytes:
    return bits(tb.to_numpy(t))


# ----------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(("first", "second"), list(itertools.product(FORMATS, FORMATS)))
@pytest.mark.parametrize("row", EXACT_ROWS, ids=lambda r: r.name)
def test_every_row_round_trips_through_every_format_pair(
    tmp_path: Path, row: DtypeRow, first: str, second: str
) -> None:
    a = random_bits(row, (3, 4), seed=len(row.name))
    tb.save(a, tmp_path / f"a.{first}")
    middle = tb.load(tmp_path / f"a.{first}")
    tb.save(middle, tmp_path / f"b.{second}")
    back = tb.load(tmp_path / f"b.{second}")
    assert isinstance(back, np.ndarray)
    assert back.dtype == row.numpy and back.shape == (3, 4)
    assert bits(back) == bits(a)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("row", EXACT_ROWS, ids=lambda r: r.name)
def test_tensors_save_and_load_as_tensors_bit_exact(tmp_path: Path, row: DtypeRow, fmt: str) -> None:
    t = tb.to_tensor(random_bits(row, (2, 5), seed=3))
    tb.save(t, tmp_path / f"t.{fmt}")
    back = tb.load(tmp_path / f"t.{fmt}", to="tensor")
    assert isinstance(back, torch.Tensor)
    assert back.dtype == row.torch and back.shape == (2, 5)
    assert _tensor_bits(back) == _tensor_bits(t)


def test_complex128_in_safetensors_reads_back_as_complex128(tmp_path: Path) -> None:
    z = np.array([1 + 2j, -0.0 - 1e300j, complex("nan+infj")], np.complex128)
    tb.save({"z": z}, tmp_path / "z.safetensors")
    back = tb.load(tmp_path / "z.safetensors")["z"]
    assert back.dtype == np.complex128 and bits(back) == bits(z)
    with tb.open(tmp_path / "z.safetensors") as f:
        assert [(e.name, e.dtype, e.shape) for e in f.entries] == [("z", np.dtype(np.complex128), (3,))]


def test_complex32_tensors_are_stored_widened_to_complex64(tmp_path: Path) -> None:
    t = quiet_tensor(torch.tensor, [1 + 2j, 0.5j], dtype=torch.complex32)
    tb.save({"c": t}, tmp_path / "c.npz")
    back = tb.load(tmp_path / "c.npz")["c"]
    assert back.dtype == np.complex64 and back.tolist() == [1 + 2j, 0.5j]


def test_byte_order_and_memory_order_are_kept(tmp_path: Path) -> None:
    a = np.asfortranarray(np.arange(6, dtype=">i4").reshape(2, 3))
    for fmt in FORMATS:
        tb.save(a, tmp_path / f"o.{fmt}")
        back = tb.load(tmp_path / f"o.{fmt}")
        assert back.tolist() == a.tolist(), fmt
        t = tb.load(tmp_path / f"o.{fmt}", to="tensor")
        assert t.dtype == torch.int32 and t.tolist() == a.tolist(), fmt


# ----------------------------------------------------------------------------------- nesting


def _checkpoint() -> Any:
    return {
        "model": collections.OrderedDict(
            [("enc.w", np.arange(6, dtype=np.float32).reshape(2, 3)), ("head", torch.ones(2, dtype=torch.bfloat16))]
        ),
        "layers": [np.zeros(1), (torch.arange(3), "relu", None)],
        "ids": {0: np.array([7], np.int64), 1: np.array([8], np.int64)},
        "epoch": 3,
        "lr": 0.5,
        "done": False,
        "name": "run-1",
    }


def _same(a: Any, b: Any) -> None:
    """Same containers (types and keys), same leaves (arrays by bits)."""
    assert type(a) is type(b) or (isinstance(a, np.ndarray) and isinstance(b, (np.ndarray, torch.Tensor))), (a, b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif isinstance(a, np.ndarray):
        assert bits(a) == bits(b if isinstance(b, np.ndarray) else tb.to_numpy(b))
    else:
        assert a == b


@pytest.mark.parametrize("fmt", NESTING_FORMATS)
def test_nesting_numbers_and_strings_are_kept(tmp_path: Path, fmt: str) -> None:
    ckpt = _checkpoint()
    tb.save(ckpt, tmp_path / f"c.{fmt}")
    back = tb.load(tmp_path / f"c.{fmt}")
    expected = tb.to_numpy(ckpt)
    _same(back, expected)
    assert isinstance(back["model"], collections.OrderedDict) and isinstance(back["layers"][1], tuple)
    tensors = tb.load(tmp_path / f"c.{fmt}", to="tensor")
    assert isinstance(tensors["model"]["head"], torch.Tensor) and tensors["model"]["head"].dtype == torch.bfloat16
    assert tensors["layers"][1][1:] == ("relu", None) and tensors["epoch"] == 3


@pytest.mark.parametrize(("first", "second"), list(itertools.product(NESTING_FORMATS, NESTING_FORMATS)))
def test_nesting_survives_every_pair_of_formats(tmp_path: Path, first: str, second: str) -> None:
    tb.save(_checkpoint(), tmp_path / f"a.{first}")
    tb.save(tb.load(tmp_path / f"a.{first}"), tmp_path / f"b.{second}")
    _same(tb.load(tmp_path / f"b.{second}"), tb.to_numpy(_checkpoint()))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_lone_array_loads_as_the_array_itself(tmp_path: Path, fmt: str) -> None:
    tb.save(np.arange(3), tmp_path / f"x.{fmt}")
    back = tb.load(tmp_path / f"x.{fmt}")
    assert isinstance(back, np.ndarray) and back.tolist() == [0, 1, 2]


def test_numpy_scalars_become_zero_dimensional_arrays(tmp_path: Path) -> None:
    tb.save({"s": np.float32(2.5)}, tmp_path / "s.npz")
    back = tb.load(tmp_path / "s.npz")["s"]
    assert isinstance(back, np.ndarray) and back.shape == () and back.dtype == np.float32 and back == 2.5


def test_a_flat_dict_is_written_without_a_record(tmp_path: Path) -> None:
    flat = {"a.b": np.ones(2), "c": np.zeros(1)}
    tb.save(flat, tmp_path / "f.npz")
    tb.save(flat, tmp_path / "f.safetensors")
    with np.load(tmp_path / "f.npz") as npz:
        assert sorted(npz.files) == ["a.b", "c"]  # no __tensorbridge__.json member
    with tb.open(tmp_path / "f.safetensors") as f:
        assert f.structure is None and STRUCTURE_KEY not in f.metadata
    for name in ("f.npz", "f.safetensors"):
        back = tb.load(tmp_path / name)
        assert list(back) == ["a.b", "c"] and back["a.b"].tolist() == [1.0, 1.0]


def test_files_of_other_tools_load_as_flat_dicts(tmp_path: Path) -> None:
    np.savez(tmp_path / "plain.npz", b=np.ones(2), a=np.zeros(3))
    back = tb.load(tmp_path / "plain.npz")
    assert list(back) == ["b", "a"] and back["a"].tolist() == [0.0, 0.0, 0.0]
    safetensors_torch = pytest.importorskip("safetensors.torch")
    safetensors_torch.save_file({"x.y": torch.ones(2)}, str(tmp_path / "hf.safetensors"), metadata={"format": "pt"})
    with tb.open(tmp_path / "hf.safetensors") as f:
        assert f.metadata == {"format": "pt"} and f.structure is None
        assert f.load(to="tensor")["x.y"].tolist() == [1.0, 1.0]


def test_a_nested_structure_is_refused_by_npy(tmp_path: Path) -> None:
    with pytest.raises(tb.UnsupportedError, match=r"n\.npy: a \.npy file holds one bare array.*Save to \.npz"):
        tb.save({"w": np.ones(1)}, tmp_path / "n.npy")
    assert _leftovers(tmp_path) == []


def test_leaves_a_file_cannot_hold_are_refused_naming_the_file_and_the_key(tmp_path: Path) -> None:
    with pytest.raises(tb.UnsupportedError, match=r"^saving at .*s\.npz: at opt: a set cannot be stored"):
        tb.save({"opt": {1, 2}}, tmp_path / "s.npz")
    with pytest.raises(tb.UnsupportedError, match=r"array 'm' is a masked array"):
        tb.save({"m": np.ma.masked_array([1, 2], mask=[False, True])}, tmp_path / "m.npz")
    with pytest.raises(tb.UnsupportedError, match=r"array 's' is a torch.sparse_coo tensor"):
        tb.save({"s": torch.eye(2).to_sparse()}, tmp_path / "s.pt")
    with pytest.raises(tb.UnsupportedError, match=r"s\.safetensors: .*'s'"):
        tb.save({"s": np.array(["a"])}, tmp_path / "s.safetensors")
    assert _leftovers(tmp_path) == []


def test_write_errors_name_the_destination_not_the_temporary_file(tmp_path: Path) -> None:
    with pytest.raises(tb.UnsupportedError) as info:
        tb.save({"s": np.array(["a"])}, tmp_path / "s.safetensors")
    assert str(tmp_path / "s.safetensors") in str(info.value) and "/proc/self/fd" not in str(info.value)


# ----------------------------------------------------------------------------------- only=


def test_only_keeps_the_matching_names_with_their_nesting(tmp_path: Path) -> None:
    tb.save({"enc": {"w": np.ones(2), "b": np.zeros(2)}, "dec": {"w": np.ones(1)}, "step": 5}, tmp_path / "m.npz")
    assert tb.load(tmp_path / "m.npz", only="enc.*")["enc"].keys() == {"w", "b"}
    picked = tb.load(tmp_path / "m.npz", only=["enc.w", "dec.*"])
    assert list(picked["enc"]) == ["w"] and list(picked["dec"]) == ["w"] and picked["step"] == 5
    with tb.open(tmp_path / "m.npz") as f:
        assert list(f.load(only="dec.w", to="tensor")["dec"]) == ["w"]


def test_only_that_matches_nothing_is_a_structure_error(tmp_path: Path) -> None:
    tb.save({"w": np.ones(2)}, tmp_path / "m.safetensors")
    with pytest.raises(tb.StructureError, match=r"m\.safetensors: no array name matches \['x\*'\].*tb\.open"):
        tb.load(tmp_path / "m.safetensors", only="x*")


# ----------------------------------------------------------------------------------- writing safely


def test_an_existing_destination_is_kept_unless_force(tmp_path: Path) -> None:
    dst = tmp_path / "w.npz"
    dst.write_bytes(b"precious")
    with pytest.raises(tb.StructureError, match=r"^save at .*w\.npz: the destination exists\. Pass force=True"):
        tb.save({"w": np.ones(2)}, dst)
    assert dst.read_bytes() == b"precious" and _leftovers(tmp_path) == ["w.npz"]
    tb.save({"w": np.ones(2)}, dst, force=True)
    assert tb.load(dst)["w"].tolist() == [1.0, 1.0] and _leftovers(tmp_path) == ["w.npz"]


def test_a_dangling_link_is_not_written_through(tmp_path: Path) -> None:
    (tmp_path / "w.npz").symlink_to(tmp_path / "elsewhere.npz")
    with pytest.raises(tb.StructureError, match="dangling symbolic link"):
        tb.save(np.ones(1), tmp_path / "w.npz")
    assert not (tmp_path / "elsewhere.npz").exists()


def test_a_failure_while_writing_leaves_nothing_behind(tmp_path: Path) -> None:
    dst = tmp_path / "big.safetensors"
    with pytest.raises(tb.ValueRangeError, match="float16"):
        tb.save({"ok": np.ones(2), "huge": np.array([1e300])}, dst, dtype="float16")
    assert _leftovers(tmp_path) == []
    dst.write_bytes(b"precious")
    with pytest.raises(tb.ValueRangeError):
        tb.save({"huge": np.array([1e300])}, dst, dtype="float16", force=True)
    assert dst.read_bytes() == b"precious" and _leftovers(tmp_path) == ["big.safetensors"]


def test_a_missing_directory_is_refused_before_any_data_is_touched(tmp_path: Path) -> None:
    with pytest.raises(tb.StructureError, match=r"its directory .*missing does not exist"):
        tb.save({"w": np.ones(1)}, tmp_path / "missing" / "w.npz")


def test_force_onto_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out.npz").mkdir()
    with pytest.raises(tb.StructureError, match=r"^save at .*out\.npz: it is a directory"):
        tb.save({"w": np.ones(1)}, tmp_path / "out.npz", force=True)
    assert _leftovers(tmp_path) == ["out.npz"] and _leftovers(tmp_path / "out.npz") == []


def test_dtype_casts_floating_point_arrays_only(tmp_path: Path) -> None:
    data = {"w": np.array([0.1, 2.0]), "ids": np.array([257, 1]), "c": np.array([1 + 2j], np.complex64)}
    tb.save(data, tmp_path / "b.safetensors", dtype="bfloat16")
    with tb.open(tmp_path / "b.safetensors") as f:
        assert {e.name: e.dtype.name for e in f.entries} == {"w": "bfloat16", "ids": "int64", "c": "complex64"}
    with pytest.raises(tb.UnsupportedError, match="dtype int8 is not a floating-point dtype"):
        tb.save(data, tmp_path / "i.npz", dtype="int8")
    assert _leftovers(tmp_path) == ["b.safetensors"]


def test_metadata_is_kept_in_safetensors_and_npz_and_refused_elsewhere(tmp_path: Path) -> None:
    tb.save({"w": np.ones(1)}, tmp_path / "m.safetensors", metadata={"format": "pt", "note": "é"})
    assert tb.open(tmp_path / "m.safetensors").metadata == {"format": "pt", "note": "é"}
    tb.save({"w": np.ones(1)}, tmp_path / "m.npz", metadata={"format": "pt"})
    assert tb.open(tmp_path / "m.npz").metadata == {"format": "pt"}
    for fmt in ("npy", "pt"):
        with pytest.raises(tb.UnsupportedError, match="has no room for metadata"):
            tb.save(np.ones(1), tmp_path / f"m.{fmt}", metadata={"a": "b"})
    with pytest.raises(tb.UnsupportedError, match="tensorbridge's own"):
        tb.save({"w": np.ones(1)}, tmp_path / "r.safetensors", metadata={STRUCTURE_KEY: "{}"})
    assert _leftovers(tmp_path) == ["m.npz", "m.safetensors"]


def test_format_overrides_the_suffix(tmp_path: Path) -> None:
    tb.save({"w": np.ones(1)}, tmp_path / "weights.data", format="safetensors")
    assert tb.load(tmp_path / "weights.data", format="safetensors")["w"].tolist() == [1.0]
    with pytest.raises(tb.UnsupportedError, match=r"'\.data' names no format.*with format="):
        tb.load(tmp_path / "weights.data")


def test_tensors_that_require_grad_are_saved_detached(tmp_path: Path) -> None:
    w = torch.ones(2, requires_grad=True)
    tb.save({"w": w * 2}, tmp_path / "g.pt")
    assert torch.load(tmp_path / "g.pt", weights_only=True)["w"].requires_grad is False


# ----------------------------------------------------------------------------------- hostile files


def _whole_file(fmt: str, tmp_path: Path) -> bytes:
    src = tmp_path / f"whole.{fmt}"
    tb.save(np.arange(40, dtype=np.float32) if fmt == "npy" else {"a": np.arange(40.0), "b": np.ones(3)}, src)
    return src.read_bytes()


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_files_are_file_format_errors_naming_the_path(tmp_path: Path, fmt: str) -> None:
    whole = _whole_file(fmt, tmp_path)
    cut = tmp_path / f"cut.{fmt}"
    step = 1 if fmt != "pt" else 7
    for n in range(0, len(whole), step):
        cut.write_bytes(whole[:n])
        with pytest.raises(tb.FileFormatError, match=r"^(reading|load) at .*cut\.\w+: ") as info:
            tb.load(cut)
        assert str(cut) in str(info.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_api_refuses_what_the_command_refuses_with_the_same_words(tmp_path: Path, fmt: str) -> None:
    whole = _whole_file(fmt, tmp_path)
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(tb.FileFormatError) as command:
        convert_job.inspect(str(cut))
    with pytest.raises(tb.FileFormatError) as api:
        tb.open(cut)
    got, want = api.value, command.value
    assert (got.path, got.cause, got.fix) == (want.path, want.cause, want.fix)


def test_missing_and_directory_paths_are_named(tmp_path: Path) -> None:
    with pytest.raises(tb.FileFormatError, match=r"^load at .*nope\.npz: the file does not exist"):
        tb.load(tmp_path / "nope.npz")
    with pytest.raises(tb.FileFormatError, match=r"^open at .*: it is a directory, not a tensor file"):
        tb.open(tmp_path)


def test_a_corrupt_nesting_record_is_refused(tmp_path: Path) -> None:
    tb.save({"a": [np.ones(1), np.zeros(1)]}, tmp_path / "r.npz")
    import zipfile

    with zipfile.ZipFile(tmp_path / "r.npz") as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    record = json.loads(members[RECORD_MEMBER])
    record["dict"][0][1]["list"].reverse()  # swap the two arrays
    with zipfile.ZipFile(tmp_path / "s.npz", "w") as zf:
        for name, raw in members.items():
            zf.writestr(name, json.dumps(record) if name == RECORD_MEMBER else raw)
    with pytest.raises(tb.FileFormatError, match="nesting record puts array"):
        tb.load(tmp_path / "s.npz")


def test_pickled_objects_are_never_loaded(tmp_path: Path) -> None:
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(tb.UnsupportedError, match="never loads"):
        tb.load(tmp_path / "o.npy")


def test_a_bad_to_is_refused(tmp_path: Path) -> None:
    tb.save(np.ones(1), tmp_path / "x.npy")
    with pytest.raises(tb.UnsupportedError, match="to must be 'numpy' or 'tensor', not 'jax'"):
        tb.load(tmp_path / "x.npy", to="jax")  # type: ignore[arg-type]


def test_strings_load_as_numpy_but_not_as_tensors(tmp_path: Path) -> None:
    tb.save({"s": np.array(["ab", "c"])}, tmp_path / "s.npz")
    assert tb.load(tmp_path / "s.npz")["s"].tolist() == ["ab", "c"]
    with pytest.raises(tb.UnsupportedError, match=r"^loading at .*s\.npz: array 's': "):
        tb.load(tmp_path / "s.npz", to="tensor")


# ----------------------------------------------------------------------------------- laziness


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """The address ranges of this process that map ``path`` (Linux)."""
    target = os.path.realpath(path)
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() == target:
                begin, end = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((begin, end))
    return ranges


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sparse_npy(path: Path, nbytes: int) -> None:
    """A valid .npy of ``nbytes`` zero bytes (float32) whose data the file system never stored."""
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(nbytes // 4,))
    big[-1] = 1.0
    del big


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")


@linux_only
def test_a_large_npy_loads_as_a_memory_map_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "big.npy"
    _sparse_npy(path, 512 << 20)
    before = _resident_bytes()
    a = tb.load(path)
    assert isinstance(a, np.memmap) and not a.flags.writeable and a.shape == (128 << 20,)
    assert float(a[-1]) == 1.0
    assert _resident_bytes() - before < 64 << 20
    with tb.open(path) as f:
        (entry,) = f.entries
        assert (entry.name, entry.nbytes) == ("data", 512 << 20)


@linux_only
@pytest.mark.parametrize("fmt", ["npy", "npz", "safetensors", "pt"])
def test_lazy_tensors_share_the_files_pages_copy_on_write(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"m.{fmt}"
    tb.save({"w": np.arange(1 << 16, dtype=np.float32)} if fmt != "npy" else np.arange(1 << 16, dtype=np.float32), path)
    loaded = tb.load(path, to="tensor")
    t = loaded if fmt == "npy" else loaded["w"]
    assert any(begin <= t.data_ptr() < end for begin, end in _mapped_ranges(path)), "the tensor is a copy"
    t[0] = -1.0  # copy-on-write: this process's page, never the file
    again = tb.load(path)
    assert float((again if fmt == "npy" else again["w"])[0]) == 0.0


@linux_only
def test_lazy_numpy_arrays_are_views_of_the_mapping(tmp_path: Path) -> None:
    tb.save({"w": np.arange(4096.0)}, tmp_path / "m.safetensors")
    w = tb.load(tmp_path / "m.safetensors")["w"]
    assert isinstance(w, np.memmap) and not w.flags.writeable
    assert any(begin <= w.ctypes.data < end for begin, end in _mapped_ranges(tmp_path / "m.safetensors"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_lazy_false_reads_into_fresh_writable_memory(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"x.{fmt}"
    tb.save(np.arange(4.0), path)
    a = tb.load(path, lazy=False)
    assert type(a) is np.ndarray and a.flags.writeable and a.flags.owndata
    a[0] = 9.0
    t = tb.load(path, to="tensor", lazy=False)
    t[1] = 9.0
    assert tb.load(path).tolist() == [0.0, 1.0, 2.0, 3.0]
    os.remove(path)
    assert a.tolist() == [9.0, 1.0, 2.0, 3.0] and t.tolist() == [0.0, 9.0, 2.0, 3.0]


def test_open_lists_entries_without_loading_them(tmp_path: Path) -> None:
    tb.save({"enc": {"w": np.ones((2, 3), np.float16)}, "step": 1}, tmp_path / "m.npz")
    with tb.open(tmp_path / "m.npz") as f:
        assert f.format == "npz" and len(f) == 1 and f.metadata == {}
        assert [(e.name, e.dtype.name, e.shape, e.nbytes) for e in f] == [("enc.w", "float16", (2, 3), 12)]
        assert f.structure == {"dict": [["enc", {"dict": [["w", {"t": "enc.w"}]]}], ["step", {"v": 1}]]}
        w = f.entries[0].load()
        assert "2 entries" not in repr(f) and "1 entries" in repr(f)
    assert f.closed and "closed" in repr(f)
    assert w.tolist() == [[1.0] * 3] * 2  # loaded before closing: still valid
    with pytest.raises(tb.FileFormatError, match="the file was closed"):
        f.load()


def test_an_entry_kept_past_close_refuses_to_load(tmp_path: Path) -> None:
    tb.save({"w": np.ones(2)}, tmp_path / "m.safetensors")
    with tb.open(tmp_path / "m.safetensors") as f:
        (entry,) = f.entries
    with pytest.raises(tb.FileFormatError, match=r"array 'w': the file was closed"):
        entry.load()


def test_a_file_that_shrinks_after_open_is_refused(tmp_path: Path) -> None:
    tb.save({"w": np.arange(1000.0)}, tmp_path / "m.safetensors")
    with tb.open(tmp_path / "m.safetensors") as f:
        with open(tmp_path / "m.safetensors", "r+b") as raw:
            raw.truncate(100)
        with pytest.raises(tb.FileFormatError, match="not the"):
            f.load()


def test_paths_may_be_str_or_pathlike(tmp_path: Path) -> None:
    tb.save({"w": np.ones(1)}, str(tmp_path / "a.npz"))
    assert tb.load(tmp_path / "a.npz")["w"].tolist() == [1.0]
    assert tb.load(str(tmp_path / "a.npz"))["w"].tolist() == [1.0]


def test_header_of_a_tensorbridge_safetensors_file_is_plain(tmp_path: Path) -> None:
    """Other readers see names, dtypes and shapes only: the nesting record is one metadata string."""
    tb.save({"enc": [np.ones(2, np.float32)], "step": 2}, tmp_path / "m.safetensors")
    raw = (tmp_path / "m.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert header["enc.0"]["dtype"] == "F32" and set(header["__metadata__"]) == {STRUCTURE_KEY}
