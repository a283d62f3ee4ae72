""".npy and .npz: round trips for every dtype row, files from plain NumPy, lazy loading, hostile input."""

from __future__ import annotations

import ast
import io
import itertools
import os
import struct
import time
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tensorbridge as tb
from tensorbridge.dtypes import DtypeRow, is_ml_dtype
from tensorbridge.errors import FileFormatError, StructureError, UnsupportedError
from tensorbridge.files import format_for, structure
from tensorbridge.files.base import Archive, Entry, Format
from tensorbridge.files.npy_files import NPY
from tensorbridge.files.npz_files import NPZ, RECORD_MEMBER

from .helpers import EXACT_ROWS, bits, random_bits

FORMATS = [NPY, NPZ]
SHAPES = {"0d": (), "empty": (0,), "3x4": (3, 4), "fortran": (3, 4), "3d": (2, 0, 3)}
REFUSED = (FileFormatError, UnsupportedError)


def entry(name: str, a: np.ndarray[Any, Any]) -> Entry:
    return Entry(name, a.dtype, a.shape, lambda: a)


def write(fmt: Format, path: Path, arrays: dict[str, np.ndarray[Any, Any]], rec: Any = None) -> Path:
    fmt.write(str(path), [entry(n, a) for n, a in arrays.items()], rec, {})
    return path


def loaded(archive: Archive) -> dict[str, np.ndarray[Any, Any]]:
    return {e.name: e.load() for e in archive.entries}


def plain(row: DtypeRow, a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """What plain NumPy loads turned back into the row's dtype, as the module docs say."""
    return a[row.name].view(row.numpy) if is_ml_dtype(row.numpy) else a


def refused(fn: Callable[[], Any], exc: type[Exception] | tuple[type[Exception], ...], match: str = "") -> str:
    """``fn`` raises ``exc`` (never MemoryError, never a hang), matching ``match``; returns the message."""
    start = time.perf_counter()
    with pytest.raises(exc, match=match or None) as info:
        fn()
    assert time.perf_counter() - start < 5, "refusing took too long"
    return str(info.value)


def read_all(fmt: Format, path: Path) -> None:
    for e in fmt.read(str(path)).entries:
        e.load()


# ----------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("layout", list(SHAPES))
@pytest.mark.parametrize("row", EXACT_ROWS, ids=lambda r: r.name)
def test_every_row_round_trips_bit_exactly(tmp_path: Path, fmt: Format, layout: str, row: DtypeRow) -> None:
    a = random_bits(row, SHAPES[layout], seed=3)
    if layout == "fortran":
        a = np.asfortranarray(a)
    path = write(fmt, tmp_path / f"x.{fmt.name}", {structure.ROOT_NAME: a})
    (e,) = fmt.read(str(path)).entries
    assert (e.name, e.dtype, e.shape, e.nbytes) == (structure.ROOT_NAME, row.numpy, a.shape, a.nbytes)
    back = e.load()
    assert back.dtype == row.numpy and back.shape == a.shape and bits(back) == bits(a)
    assert not back.flags.writeable
    if a.size:
        assert isinstance(back, np.memmap)
    if layout == "fortran":
        assert back.flags.f_contiguous and not back.flags.c_contiguous
    # Plain NumPy reads the file without pickles; bfloat16/float8 as the documented structured uint.
    if fmt is NPY:
        raw = np.load(path, allow_pickle=False)
    else:
        with np.load(path, allow_pickle=False) as npz:
            raw = npz[structure.ROOT_NAME]
    if is_ml_dtype(row.numpy):
        assert raw.dtype == np.dtype([(row.name, f"u{row.numpy.itemsize}")])
    assert bits(plain(row, raw)) == bits(a)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_big_endian_and_strided_inputs(tmp_path: Path, fmt: Format) -> None:
    big = np.arange(12, dtype=">f8").reshape(3, 4)
    strided = np.arange(40, dtype=np.int16).reshape(4, 10)[::-1, ::3]
    for i, a in enumerate([big, strided, big.T[::2]]):
        path = write(fmt, tmp_path / f"{i}.{fmt.name}", {structure.ROOT_NAME: a})
        (e,) = fmt.read(str(path)).entries
        back = e.load()
        assert back.dtype == a.dtype and back.dtype.byteorder == a.dtype.byteorder  # the stored byte order
        np.testing.assert_array_equal(back, a)


def test_ml_dtypes_with_a_big_endian_carrier_read_as_values(tmp_path: Path) -> None:
    np.save(tmp_path / "be.npy", np.array([0x3FC0, 0xC000], dtype=[("bfloat16", ">u2")]))
    (e,) = NPY.read(str(tmp_path / "be.npy")).entries
    assert e.dtype == np.dtype(ml_dtypes.bfloat16)
    assert e.load().tolist() == [1.5, -2.0]


def test_lookalike_structured_dtypes_stay_structured(tmp_path: Path) -> None:
    for descr in (
        [("bfloat16", "<u1")],
        [("bfloat16", "<f2")],
        [("nobody", "<u2")],
        [("bfloat16", "<u2"), ("x", "u1")],
    ):
        a = np.zeros(2, descr)
        np.save(tmp_path / "s.npy", a)
        assert NPY.read(str(tmp_path / "s.npy")).entries[0].dtype == a.dtype


def test_plain_numpy_void_ml_dtypes_stay_void(tmp_path: Path) -> None:
    # np.save alone keeps no trace of bfloat16: the bytes come back as void, as in np.load.
    np.save(tmp_path / "v.npy", np.ones(3, ml_dtypes.bfloat16))
    assert NPY.read(str(tmp_path / "v.npy")).entries[0].dtype == np.dtype("V2")


def test_npy_write_needs_exactly_one_array(tmp_path: Path) -> None:
    two = {"a": np.ones(1), "b": np.ones(1)}
    refused(lambda: write(NPY, tmp_path / "x.npy", two), UnsupportedError, r"holds one array.*Use \.npz")
    refused(lambda: write(NPY, tmp_path / "x.npy", {}), UnsupportedError, "0 were given")


# ----------------------------------------------------------------------------------- nesting


def test_nesting_record_round_trips(tmp_path: Path) -> None:
    data = {
        "enc": {"layers": [np.ones((2, 2)), np.zeros(3, ml_dtypes.bfloat16)]},
        "step": 3,
        "name": "run",
        "t": (1.5,),
    }
    leaves, rec = structure.flatten(data)
    path = write(NPZ, tmp_path / "n.npz", dict(leaves), rec)
    archive = NPZ.read(str(path))
    assert archive.structure == rec
    back = structure.unflatten(archive.structure, loaded(archive))
    assert back["step"] == 3 and back["name"] == "run" and back["t"] == (1.5,)
    assert back["enc"]["layers"][1].dtype == np.dtype(ml_dtypes.bfloat16)
    with np.load(path) as npz:
        assert structure.loads(npz[RECORD_MEMBER].decode()) == rec  # a non-.npy member: its bytes


def test_flat_or_missing_records_are_not_written(tmp_path: Path) -> None:
    arrays = {"a": np.ones(2), "b.c": np.zeros(1)}
    flat = {"dict": [[n, {"t": n}] for n in arrays]}
    for rec in (None, flat):
        path = write(NPZ, tmp_path / "f.npz", arrays, rec)
        assert RECORD_MEMBER not in zipfile.ZipFile(path).namelist()
        assert NPZ.read(str(path)).structure is None
    lone = write(NPZ, tmp_path / "lone.npz", {"data": np.ones(1)}, {"t": "data"})
    assert NPZ.read(str(lone)).structure == {"t": "data"}  # a lone array, not a dict of one


def test_npy_keeps_a_lone_array(tmp_path: Path) -> None:
    path = write(NPY, tmp_path / "w.npy", {"w": np.ones(2)}, {"dict": [["w", {"t": "w"}]]})
    archive = NPY.read(str(path))
    assert archive.structure == {"t": structure.ROOT_NAME} and archive.entries[0].name == structure.ROOT_NAME


def test_member_names(tmp_path: Path) -> None:
    ok = {"a/b": np.ones(1), "ünïcødé": np.ones(2), "x.npy": np.ones(3), ".hidden": np.ones(4)}
    archive = NPZ.read(str(write(NPZ, tmp_path / "ok.npz", ok)))
    assert [e.name for e in archive.entries] == list(ok)
    with np.load(tmp_path / "ok.npz") as npz:
        assert npz.files == list(ok)
    for bad in ["", "a\0b", "/abs", "a/../b", "a//b", "./a", "a\\b", "\ud800"]:
        msg = refused(lambda bad=bad: write(NPZ, tmp_path / "bad.npz", {bad: np.ones(1)}), UnsupportedError)
        assert "Rename the array" in msg
    dup = [entry("a", np.ones(1)), entry("a", np.ones(1))]
    refused(lambda: NPZ.write(str(tmp_path / "d.npz"), dup, None, {}), UnsupportedError, "appears twice")


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_unstorable_dtypes_are_refused_before_writing(tmp_path: Path, fmt: Format) -> None:
    bad: list[np.ndarray[Any, Any]] = [np.array([{}, 1], dtype=object), np.zeros(2, [("o", object)])]
    bad.append(np.zeros(2, ml_dtypes.int4))
    if hasattr(np.dtypes, "StringDType"):
        bad.append(np.array(["a"], dtype=np.dtypes.StringDType()))
    for a in bad:
        path = tmp_path / f"o.{fmt.name}"
        refused(lambda a=a, path=path: write(fmt, path, {"o": a}), UnsupportedError, "Cast it")
        assert not path.exists()


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_an_entry_that_loads_otherwise_than_declared(tmp_path: Path, fmt: Format) -> None:
    liar = Entry("x", np.dtype(np.float32), (2,), lambda: np.ones(3, np.float32))
    refused(lambda: fmt.write(str(tmp_path / f"l.{fmt.name}"), [liar], None, {}), StructureError, "declared")


def test_other_dtypes_are_stored_natively(tmp_path: Path) -> None:
    arrays = {"s": np.array([b"ab", b"c"]), "u": np.array(["é"]), "t": np.array(["2024-01-01"], "M8[D]")}
    arrays["r"] = np.zeros(2, [("x", "<f4"), ("y", ">i2", (2,))])
    archive = NPZ.read(str(write(NPZ, tmp_path / "o.npz", arrays)))
    for name, back in loaded(archive).items():
        assert back.dtype == arrays[name].dtype and back.tobytes() == arrays[name].tobytes()


def test_format_table_names_both() -> None:
    assert format_for("a.npy") is NPY and format_for("a.NPZ") is NPZ
    assert (NPY.name, NPY.suffixes, NPZ.name, NPZ.suffixes) == ("npy", (".npy",), "npz", (".npz",))


# ----------------------------------------------------------------------------------- files from plain NumPy


def test_files_written_by_plain_numpy(tmp_path: Path) -> None:
    arrays = {
        "zero_d": np.array(2.5),
        "empty": np.zeros((0, 3), np.int32),
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "big_endian": np.arange(5, dtype=">u4"),
        "strided": np.arange(20, dtype=np.int8)[::-3],
        "complex": np.array([1 + 2j, -3j], dtype=np.complex64),
        "bool": np.array([[True], [False]]),
    }
    for name, a in arrays.items():
        np.save(tmp_path / f"{name}.npy", a)
        (e,) = NPY.read(str(tmp_path / f"{name}.npy")).entries
        back = e.load()
        assert back.dtype == a.dtype and back.shape == a.shape and bits(back) == bits(a)
        assert back.flags.f_contiguous == a.flags.f_contiguous or name == "strided"
    np.savez(tmp_path / "s.npz", **arrays)
    np.savez_compressed(tmp_path / "c.npz", **arrays)
    for npz in ("s.npz", "c.npz"):
        archive = NPZ.read(str(tmp_path / npz))
        assert [e.name for e in archive.entries] == list(arrays) and archive.structure is None
        for name, back in loaded(archive).items():
            assert back.dtype == arrays[name].dtype and bits(back) == bits(arrays[name])
            assert isinstance(back, np.memmap) == (npz == "s.npz" and back.size > 0)
    empty = tmp_path / "none.npz"
    np.savez(empty)
    assert NPZ.read(str(empty)).entries == []


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_every_npy_version(tmp_path: Path, version: tuple[int, int]) -> None:
    a = np.zeros(2, [("é" if version == (3, 0) else "e", "<f4"), ("n", "<i8")])
    a["n"] = [5, -6]
    with open(tmp_path / "v.npy", "wb") as f:
        np.lib.format.write_array(f, a, version=version)
    (e,) = NPY.read(str(tmp_path / "v.npy")).entries
    assert e.dtype == a.dtype and e.load().tobytes() == a.tobytes()


def test_deflated_members_check_their_crc(tmp_path: Path) -> None:
    raw = npz_bytes(compress=True, a=np.arange(1000, dtype=np.int64))
    _, cd, _ = central(raw)
    (tmp_path / "crc.npz").write_bytes(patch(raw, cd + 16, "<I", 12345))  # the CRC-32 in the directory
    archive = NPZ.read(str(tmp_path / "crc.npz"))  # headers only: the CRC is not reached yet
    refused(lambda: loaded(archive), FileFormatError, "cannot be decompressed.*CRC")
    (tmp_path / "bad.npz").write_bytes(raw[: cd - 40] + bytes(20) + raw[cd - 20 :])  # damaged DEFLATE data
    refused(lambda: read_all(NPZ, tmp_path / "bad.npz"), FileFormatError)


def test_real_all_zero_arrays_are_not_taken_for_zip_bombs(tmp_path: Path) -> None:
    zeros = np.zeros(2_000_000)
    np.savez_compressed(tmp_path / "z.npz", z=zeros)
    info = zipfile.ZipFile(tmp_path / "z.npz").getinfo("z.npy")
    assert info.file_size / info.compress_size > 1000  # DEFLATE's best case, nearly
    assert not loaded(NPZ.read(str(tmp_path / "z.npz")))["z"].any()


# ----------------------------------------------------------------------------------- laziness


@pytest.fixture
def big_npy(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "big.npy"
    m = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(50_000_000,))  # 200 MB, sparse
    m[-1] = 7.0
    m.flush()
    del m
    yield path


def traced_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reading_a_200_mb_npy_allocates_nothing_big(big_npy: Path) -> None:
    archive, peak = traced_peak(lambda: NPY.read(str(big_npy)))
    assert peak < 1 << 20 and archive.entries[0].nbytes == 200_000_000
    data, peak = traced_peak(archive.entries[0].load)
    assert peak < 1 << 20 and isinstance(data, np.memmap) and not data.flags.writeable
    assert data[-1] == 7.0 and data.shape == (50_000_000,)


def test_stored_npz_members_are_memory_mapped_and_aligned(tmp_path: Path, big_npy: Path) -> None:
    source = np.load(big_npy, mmap_mode="r")[:16_000_000]  # 64 MB, written straight from the map
    path = tmp_path / "big.npz"
    NPZ.write(str(path), [entry("x", np.ones(3, np.uint8)), entry("big", source)], None, {})
    archive, peak = traced_peak(lambda: NPZ.read(str(path)))
    assert peak < 1 << 20
    big, peak = traced_peak(archive.entries[1].load)
    assert peak < 1 << 20 and isinstance(big, np.memmap) and big.shape == (16_000_000,)
    assert big.ctypes.data % 64 == 0, "data aligned in the file"
    del big, source


def test_deflated_members_allocate_one_array(tmp_path: Path) -> None:
    a = np.arange(4_000_000, dtype=np.int64)  # 32 MB
    np.savez_compressed(tmp_path / "c.npz", a=a)
    archive = NPZ.read(str(tmp_path / "c.npz"))
    back, peak = traced_peak(archive.entries[0].load)
    assert peak < a.nbytes + (8 << 20)  # the array, and a few chunks of zipfile's
    np.testing.assert_array_equal(back, a)


def test_a_file_changed_after_reading_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones(10))
    archive = NPY.read(str(tmp_path / "x.npy"))
    np.save(tmp_path / "x.npy", np.ones(5))
    refused(archive.entries[0].load, FileFormatError, "not the")


# ----------------------------------------------------------------------------------- hostile input


def npy_bytes(a: np.ndarray[Any, Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def npy_with_header(text: str, data: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    raw = text.encode("latin1")
    length = struct.pack("<H" if version == (1, 0) else "<I", len(raw))
    return np.lib.format.magic(*version) + length + raw + data


def test_truncated_at_every_byte(tmp_path: Path) -> None:
    for fmt, whole in [(NPY, npy_bytes(np.arange(6, dtype=np.int16))), (NPZ, npz_bytes(a=np.arange(3), b=np.ones(2)))]:
        path = tmp_path / f"t.{fmt.name}"
        for n in range(len(whole)):
            path.write_bytes(whole[:n])
            refused(lambda path=path, fmt=fmt: read_all(fmt, path), FileFormatError)


@pytest.mark.parametrize(
    ("contents", "match"),
    [
        (b"", "magic"),
        (b"PK\x03\x04" + bytes(200), "magic"),
        (b"\x93NUMPY\x04\x00" + bytes(100), "version 4.0"),
        (b"\x93NUMPY\x01\x00\xff\xff{}", "header of the file claims 65535 bytes but the file holds only 2"),
        (b"\x93NUMPY\x02\x00\xff\xff\xff\xff{}", "more than the limit"),
        (npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (10**12,), }"), "not a valid"),
        (npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }"), "claims 8000"),
        (npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (0, 2**40, 2**40), }"), "not a valid"),
        (
            npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (0, 1099511627776, 1099511627776)}"),
            "too",
        ),
        (npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (-1,), }"), "non-negative"),
        (npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (True,), }", bytes(8)), "non-negative"),
        (npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (2.0,), }"), "not a valid"),
        (npy_with_header("{'descr': '<f8', 'fortran_order': 0, 'shape': (), }"), "not a valid"),
        (npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (), 'x': 1}"), "not a valid"),
        (npy_with_header("{'descr': 'V0', 'fortran_order': False, 'shape': (9,), }"), "no bytes"),
        (npy_with_header("{'descr': ('<f8', (2,)), 'fortran_order': False, 'shape': (), }", bytes(16)), "subarray"),
        (npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (1" + ",1" * 70 + "), }"), "dimensions"),
        (npy_with_header("{'descr': '<i8', 'fortran_order': False, 'shape': (1L,), }", bytes(8)), "not as NumPy"),
        (npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (" + "9" * 5000 + ",), }"), ""),
        (npy_with_header("-" * 9000 + "1"), "not a valid"),
        (npy_with_header("(" * 5000 + ")" * 5000), "not a valid"),
        (npy_with_header("[" * 3000 + "]" * 3000, version=(2, 0)), "not a valid"),
        (npy_with_header(" " * 20_000, version=(2, 0)), "10000"),
        (npy_with_header("import os", version=(3, 0)), "not a valid"),
        (b"\x93NUMPY\x03\x00\x02\x00\x00\x00\xff\xfe", "not UTF-8"),
        (os.urandom(300), ""),
    ],
)
def test_malformed_npy_files(tmp_path: Path, contents: bytes, match: str) -> None:
    (tmp_path / "m.npy").write_bytes(contents)
    refused(lambda: read_all(NPY, tmp_path / "m.npy"), REFUSED, match)


def test_object_arrays_are_never_unpickled(tmp_path: Path) -> None:
    np.save(tmp_path / "o.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    refused(lambda: NPY.read(str(tmp_path / "o.npy")), UnsupportedError, "pickle.*allow_pickle=True")
    np.savez(tmp_path / "o.npz", ok=np.ones(1), o=np.zeros(2, [("x", object)]))
    refused(lambda: NPZ.read(str(tmp_path / "o.npz")), UnsupportedError, "Python objects")


def npz_bytes(compress: bool = False, **arrays: np.ndarray[Any, Any]) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    return buf.getvalue()


def central(raw: bytes) -> tuple[int, int, int]:
    """The end-of-central-directory offset, and the central directory's offset and size."""
    eocd = raw.rindex(b"PK\x05\x06")
    size, offset = struct.unpack("<II", raw[eocd + 12 : eocd + 20])
    return eocd, offset, size


def patch(raw: bytes, at: int, fmt: str, value: int) -> bytes:
    return raw[:at] + struct.pack(fmt, value) + raw[at + struct.calcsize(fmt) :]


def test_zip_bombs_are_refused(tmp_path: Path) -> None:
    raw = npz_bytes(compress=True, a=np.zeros(1000))
    _, cd, _ = central(raw)
    bomb = patch(raw, cd + 24, "<I", 0xFFFF_FFF0)  # the uncompressed size: 4 GB from a few bytes
    (tmp_path / "bomb.npz").write_bytes(bomb)
    refused(lambda: NPZ.read(str(tmp_path / "bomb.npz")), FileFormatError, "zip bomb")
    # Many names for the same bytes: each one small, together as large as one likes.
    raw = npz_bytes(a=np.zeros(100))
    eocd, cd, size = central(raw)
    directory = raw[cd : cd + size]
    aliases = directory + directory.replace(b"a.npy", b"b.npy")
    tail = raw[eocd : eocd + 8] + struct.pack("<HHII", 2, 2, len(aliases), cd) + raw[eocd + 20 :]
    (tmp_path / "overlap.npz").write_bytes(raw[:cd] + aliases + tail)
    refused(lambda: NPZ.read(str(tmp_path / "overlap.npz")), FileFormatError, "overlap")


def test_malformed_zips(tmp_path: Path) -> None:
    cases: dict[str, tuple[bytes, type[Exception], str]] = {}
    cases["random"] = (os.urandom(400), FileFormatError, "not a valid zip")
    cases["npy, not npz"] = (npy_bytes(np.ones(3)), FileFormatError, "not a valid zip")
    raw = npz_bytes(a=np.ones(3))
    _, cd, _ = central(raw)
    cases["encrypted"] = (patch(raw, cd + 8, "<H", 1), UnsupportedError, "encrypted")
    cases["huge shape"] = (
        _zip({"a.npy": npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (10000000000,), }")}),
        FileFormatError,
        "data of member 'a.npy' .* claims 80000000000 bytes",
    )
    cases["not npy"] = (_zip({"a.npy": npy_bytes(np.ones(1)), "notes.txt": b"hi"}), UnsupportedError, "notes.txt")
    cases["directory"] = (_zip({"d/": b""}), UnsupportedError, "not a .npy")
    cases["bzip2"] = (_zip({"a.npy": npy_bytes(np.ones(1))}, zipfile.ZIP_BZIP2), UnsupportedError, "method 12")
    cases["bad record"] = (_zip({RECORD_MEMBER: b"{nope"}), FileFormatError, "nesting record")
    cases["binary record"] = (_zip({RECORD_MEMBER: b"\xff"}), FileFormatError, "not UTF-8")
    cases["bad member"] = (_zip({"a.npy": b"\x93NUMPY"}), FileFormatError, "member 'a.npy'")
    for name, (contents, exc, match) in cases.items():
        path = tmp_path / f"{name}.npz"
        path.write_bytes(contents)
        refused(lambda path=path: read_all(NPZ, path), exc, match)


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


# ----------------------------------------------------------------------------------- fuzzing

_FUZZ_BASES = {
    "npy": (NPY, npy_bytes(np.arange(12, dtype=np.float32).reshape(3, 4))),
    "npy-f": (NPY, npy_bytes(np.asfortranarray(np.ones((2, 3), ">i2")))),
    "npz": (NPZ, npz_bytes(a=np.arange(4, dtype=np.int16), b=np.ones((2, 2), np.float16))),
    "npz-deflated": (NPZ, npz_bytes(compress=True, a=np.arange(4, dtype=np.int16), b=np.zeros(3))),
}
_counter = itertools.count()


def _mutations(size: int) -> st.SearchStrategy[list[tuple[int, int]]]:
    return st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), min_size=1, max_size=8)


def _mutated(base: bytes, changes: list[tuple[int, int]]) -> bytes:
    raw = bytearray(base)
    for at, value in changes:
        raw[at] = value
    return bytes(raw)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _fuzz_one(fmt: Format, contents: bytes, where: Path) -> None:
    path = where / f"{next(_counter)}.{fmt.name}"  # a fresh file: earlier memory maps stay valid
    path.write_bytes(contents)
    try:
        archive = fmt.read(str(path))
        for e in archive.entries:
            a = e.load()
            assert a.dtype == e.dtype and a.shape == e.shape and a.nbytes == e.nbytes
            assert e.nbytes <= 1100 * len(contents)
            del a
    except REFUSED:
        pass
    finally:
        path.unlink()


@pytest.mark.parametrize("base", ["npy", "npy-f"])
@given(data=st.data())
def test_fuzzed_npy_headers_are_refused_or_read_correctly(fuzz_dir: Path, base: str, data: st.DataObject) -> None:
    fmt, raw = _FUZZ_BASES[base]
    changes = data.draw(_mutations(128))  # the header: magic, version, length, dict, padding
    _fuzz_one(fmt, _mutated(raw, changes), fuzz_dir)


@pytest.mark.parametrize("base", ["npz", "npz-deflated"])
@given(data=st.data())
def test_fuzzed_npz_files_are_refused_or_read_correctly(fuzz_dir: Path, base: str, data: st.DataObject) -> None:
    fmt, raw = _FUZZ_BASES[base]
    changes = data.draw(_mutations(len(raw)))  # zip headers, .npy headers and directory alike
    _fuzz_one(fmt, _mutated(raw, changes), fuzz_dir)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused(fuzz_dir: Path, contents: bytes) -> None:
    for fmt in FORMATS:
        _fuzz_one(fmt, contents, fuzz_dir)


def test_the_header_literal_is_never_evaluated_beyond_literals(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    with pytest.raises(ValueError):
        ast.literal_eval(code)  # the premise: literal_eval refuses calls
    (tmp_path / "x.npy").write_bytes(npy_with_header(code))
    refused(lambda: NPY.read(str(tmp_path / "x.npy")), FileFormatError, "not a valid")
    assert not marker.exists()


def test_tb_rows_are_all_covered() -> None:
    ml_rows = {row.name for row in tb.ROWS if is_ml_dtype(row.numpy)}
    assert {"bfloat16", "float8_e4m3fn", "float8_e5m2"} <= ml_rows
