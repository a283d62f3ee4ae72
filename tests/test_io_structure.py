"""Hostile files (issue 10): bounded before they are spent, one line on stderr, exit 2; nesting records checked."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tensorbridge.cli import main
from tensorbridge.errors import FileFormatError, StructureError, UnsupportedError
from tensorbridge.files import format_for, structure
from tensorbridge.files.base import Entry
from tensorbridge.files.npz_files import NPZ, RECORD_MEMBER
from tensorbridge.files.safetensors_files import SAFETENSORS, STRUCTURE_KEY
from tensorbridge.files.safetensors_header import MAX_VALUES

# ----------------------------------------------------------------------------------- crafting


def npy_bytes(a: np.ndarray[Any, Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def safetensors_file(path: Path, header: dict[str, Any] | bytes, data: bytes = b"") -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def many_tensors(path: Path, n: int) -> Path:
    """A header of ``n`` zero-size tensors: about 58 bytes each, no data."""
    parts = [b'"t%d":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}' % i for i in range(n)]
    return safetensors_file(path, b"{" + b",".join(parts) + b"}")


def many_members(path: Path, n: int, declared: int | None = None) -> Path:
    """A zip whose directory lists ``n`` entries, all for one small stored member (zip64 end records)."""
    npy, name = npy_bytes(np.ones(1)), b"a.npy"
    crc = zlib.crc32(npy)
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0x21, crc, len(npy), len(npy), len(name), 0)
    central = struct.pack(
        "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0x21, crc, len(npy), len(npy), len(name), 0, 0, 0, 0, 0, 0
    )
    cd, at = (central + name) * n, len(local) + len(name) + len(npy)
    count = n if declared is None else declared
    eocd64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, len(cd), at)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, at + len(cd), 1)
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path.write_bytes(local + name + npy + cd + eocd64 + locator + eocd)
    return path


def npz_with_record(path: Path, record: bytes, arrays: dict[str, np.ndarray[Any, Any]] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, a in (arrays if arrays is not None else {"a": np.ones(1)}).items():
            zf.writestr(name + ".npy", npy_bytes(a))
        zf.writestr(RECORD_MEMBER, record)
    return path


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def refused_by_cli(*argv: str, cause: str) -> str:
    """Exit 2, exactly one line on stderr naming the cause, never 'unexpected'."""
    code, _, err = run(*argv)
    assert code == 2 and err.count("\n") == 1 and err.endswith("\n"), err
    assert "unexpected" not in err and cause in err, err
    return err


# ------------------------------------------------------------------- memory: a limited subprocess

_PEAK = textwrap.dedent(
    """
    import atexit, runpy, sys
    def peak():
        for line in open("/proc/self/status"):
            if line.startswith("VmPeak"):
                sys.stderr.write(line)
    atexit.register(peak)
    sys.argv = ["tensorbridge", *sys.argv[1:]]
    runpy.run_module("tensorbridge", run_name="__main__")
    """
)
_LIMITED = textwrap.dedent(
    """
    import resource, runpy, sys
    limit = int(sys.argv.pop(1))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.argv = ["tensorbridge", *sys.argv[1:]]
    runpy.run_module("tensorbridge", run_name="__main__")
    """
)
# Address space varies a little from run to run (allocator arenas, thread stacks).
_SLACK = 64 << 20
_PER_FILE_BYTE = 3  # the file's bytes, once read, plus what counting and refusing them needs


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> int:
    """The peak address space of a plain ``inspect`` of a small .npz (importing torch dominates)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("RLIMIT_AS and /proc/self/status: Linux only")
    small = tmp_path_factory.mktemp("baseline") / "small.npz"
    np.savez(small, a=np.ones(3))
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, "inspect", str(small)], capture_output=True, text=True, timeout=300, check=True
    )
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("VmPeak")]
    return int(line.split()[1]) * 1024


def inspect_limited(path: Path, baseline: int) -> str:
    """``python -m tensorbridge inspect`` under RLIMIT_AS = baseline + slack + a small multiple of the file size."""
    limit = baseline + _SLACK + _PER_FILE_BYTE * path.stat().st_size
    done = subprocess.run(
        [sys.executable, "-c", _LIMITED, str(limit), "inspect", str(path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert done.stderr.count("\n") == 1 and "unexpected" not in done.stderr, done.stderr[-2000:]
    return done.stderr


def test_the_limit_admits_a_plain_inspect(tmp_path: Path, baseline: int) -> None:
    """The limit the hostile files run under is enough for an honest file of the same kind."""
    path = tmp_path / "ok.npz"
    np.savez(path, a=np.ones(3))
    limit = baseline + _SLACK + _PER_FILE_BYTE * path.stat().st_size
    done = subprocess.run(
        [sys.executable, "-c", _LIMITED, str(limit), "inspect", str(path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_deflated_record_that_claims_too_much(tmp_path: Path, baseline: int) -> None:
    """A record of 30 MB of '[],' deflates to ~30 KB; it is refused from its declared size."""
    path = npz_with_record(tmp_path / "record.npz", b"[" + b"[]," * 10_000_000 + b"[]]")
    assert path.stat().st_size < 100_000
    err = inspect_limited(path, baseline)
    assert "the nesting record claims 30000004 bytes, more than the" in err


def test_a_deflated_record_within_its_bytes_but_not_its_values(tmp_path: Path, baseline: int) -> None:
    path = npz_with_record(tmp_path / "values.npz", b"[" + b"[]," * 300_000 + b"[]]")
    err = inspect_limited(path, baseline)
    assert "JSON values, more than the 65552 allowed" in err


def test_a_zip_directory_of_too_many_members(tmp_path: Path, baseline: int) -> None:
    """400,000 directory entries (20 MB) would cost zipfile about 300 MB of ZipInfo objects."""
    path = many_members(tmp_path / "dir.npz", 400_000)
    err = inspect_limited(path, baseline)
    assert f"lists 400000 members, more than the {structure.MAX_ARRAYS}" in err
    refused_by_cli("inspect", str(many_members(tmp_path / "cap.npz", structure.MAX_ARRAYS + 2)), cause="members")


def test_a_zip_directory_that_hides_members_from_its_end_record(tmp_path: Path) -> None:
    path = many_members(tmp_path / "lie.npz", 5000, declared=3)
    with pytest.raises(FileFormatError, match="holds other than the 3 members"):
        NPZ.read(str(path))


def test_a_safetensors_header_of_too_many_values(tmp_path: Path, baseline: int) -> None:
    """400,000 zero-size tensors (23 MB of header) are refused before the header is parsed."""
    path = many_tensors(tmp_path / "many.safetensors", 400_000)
    err = inspect_limited(path, baseline)
    assert f"JSON values, more than the {MAX_VALUES} allowed" in err


def test_a_safetensors_header_of_too_many_tensors(tmp_path: Path) -> None:
    path = many_tensors(tmp_path / "cap.safetensors", structure.MAX_ARRAYS + 1)
    refused_by_cli("inspect", str(path), cause=f"lists {structure.MAX_ARRAYS + 1} tensors, more than the")


# ------------------------------------------------------------------------------ nesting records

TWO = {
    "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
    "b": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]},
}


def with_record(tmp_path: Path, suffix: str, rec: Any) -> Path:
    text = rec if isinstance(rec, str) else json.dumps(rec)
    if suffix == ".npz":
        return npz_with_record(
            tmp_path / "r.npz", text.encode(), {"a": np.array([1], np.uint8), "b": np.array([2], np.uint8)}
        )
    return safetensors_file(tmp_path / "r.safetensors", {"__metadata__": {STRUCTURE_KEY: text}, **TWO}, b"\1\2")


def pairs(*items: tuple[Any, Any]) -> dict[str, Any]:
    return {"dict": [[k, v] for k, v in items]}


BAD_RECORDS = {
    "swapped": (pairs(("a", {"t": "b"}), ("b", {"t": "a"})), "puts array"),
    "twice": (pairs(("a", {"t": "a"}), ("b", {"t": "a"})), "the nesting record"),
    "missing": (pairs(("a", {"t": "a"})), "does not name 1 of the arrays (['b'])"),
    "invented": (pairs(("a", {"t": "a"}), ("b", {"t": "b"}), ("c", {"t": "c"})), "which the file does not hold"),
    "duplicate key": (pairs(("a", {"t": "a"}), ("a", {"v": 1}), ("b", {"t": "b"})), "appears twice"),
    "not a node": (pairs(("a", {"t": "a"}), ("b", 5)), "is 5, not one of"),
    "bool key": (pairs((True, {"t": "a"}), ("b", {"t": "b"})), "is not a str or int"),
    "nested under another name": (pairs(("x", pairs(("a", {"t": "a"}))), ("b", {"t": "b"})), "puts array 'a' at 'x.a'"),
    "list value": (pairs(("a", {"t": "a"}), ("b", {"t": "b"}), ("c", {"v": [1]})), "a value in the nesting record"),
    "two kinds": ('{"dict": [["a", {"t": "a"}], ["b", {"t": "b"}]], "list": []}', "not one of"),
    "duplicate JSON key": ('{"t": "a", "t": "b"}', "appears twice"),
    "deep": ('{"list": [' * 150 + '{"t": "a"}' + "]}" * 150, "deeper than 100 levels"),
    "very deep": ('{"list": [' * 2000 + "]}" * 2000, "not valid JSON"),
    "too many values": ('{"list": [' + "[]," * 40_000 + "[]]}", "JSON values, more than"),
}


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_a_record_that_does_not_match_the_file_is_refused(tmp_path: Path, suffix: str, case: str) -> None:
    rec, cause = BAD_RECORDS[case]
    path = with_record(tmp_path, suffix, rec)
    err = refused_by_cli("convert", str(path), str(tmp_path / "out.pt"), cause=cause)
    assert str(path) in err and "without the record" in err
    refused_by_cli("convert", str(path), str(tmp_path / "only.npz"), "--only", "a", cause=cause)
    refused_by_cli("inspect", str(path), cause=cause)
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "only.npz").exists()


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_a_matching_record_is_accepted(tmp_path: Path, suffix: str) -> None:
    path = with_record(tmp_path, suffix, pairs(("a", {"t": "a"}), ("b", {"t": "b"}), ("n", {"v": 3})))
    assert run("convert", str(path), str(tmp_path / "out.pt"), "--quiet")[0] == 0
    back = torch.load(tmp_path / "out.pt", weights_only=True)
    assert back["a"].tolist() == [1] and back["b"].tolist() == [2] and back["n"] == 3


def test_an_array_named_twice() -> None:
    with pytest.raises(FileFormatError, match="names array '1' twice"):
        structure.validate({"dict": [[1, {"t": "1"}], ["1", {"t": "1"}]]}, ["1"])


def test_validate_follows_flatten() -> None:
    state = {"enc": {"layers": [np.zeros(1), np.ones(1)], "w.x": np.zeros(2)}, "step": 3, "t": (np.ones(1),)}
    leaves, rec = structure.flatten(state)
    structure.validate(rec, [n for n, _ in leaves])
    lone, rec = structure.flatten(np.zeros(1))
    structure.validate(rec, [n for n, _ in lone])
    assert rec == {"t": structure.ROOT_NAME}


@pytest.mark.parametrize("kept", [{"l.0"}, {"l.1"}, {"l.3"}, {"l.0", "l.3"}, {"l.0", "l.1"}, {"x"}])
def test_prune_keeps_every_name(kept: set[str]) -> None:
    _, rec = structure.flatten({"l": [np.zeros(1), np.ones(1), 7, np.ones(2)], "x": np.zeros(3)})  # l.2 is 7
    pruned = structure.prune(rec, kept)
    structure.validate(pruned, sorted(kept))
    leaves2, _ = structure.flatten(structure.unflatten(pruned, {n: np.zeros(1) for n in kept}))
    assert sorted(n for n, _ in leaves2) == sorted(kept)


def test_only_on_a_list_item_keeps_its_name(tmp_path: Path) -> None:
    torch.save({"head": [torch.zeros(1), torch.ones(2)], "n": 1}, tmp_path / "c.pt")
    for dst in ("h.npz", "h.safetensors", "h.pt"):
        code, _, err = run("convert", str(tmp_path / "c.pt"), str(tmp_path / dst), "--only", "head.1", "--verify")
        assert code == 0, err
        archive = format_for(str(tmp_path / dst)).read(str(tmp_path / dst))
        assert [e.name for e in archive.entries] == ["head.1"]


@pytest.mark.parametrize("fmt", [NPZ, SAFETENSORS], ids=lambda f: f.name)
def test_writers_refuse_a_record_they_would_not_read_back(tmp_path: Path, fmt: Any) -> None:
    a = np.zeros(1)
    entries = [Entry("a", a.dtype, a.shape, lambda: a), Entry("b", a.dtype, a.shape, lambda: a)]
    with pytest.raises(StructureError, match="puts array"):
        fmt.write(str(tmp_path / "x"), entries, pairs(("a", {"t": "b"}), ("b", {"t": "a"})), {})
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("fmt", [NPZ, SAFETENSORS], ids=lambda f: f.name)
def test_writers_refuse_names_no_file_can_hold(tmp_path: Path, fmt: Any) -> None:
    a = np.zeros(1)
    name = "x" * (structure.MAX_NAME_BYTES + 1)
    with pytest.raises(UnsupportedError, match="more than the 65531"):
        fmt.write(str(tmp_path / "x"), [Entry(name, a.dtype, a.shape, lambda: a)], None, {})
    fmt.write(str(tmp_path / "ok"), [Entry(name[:-1], a.dtype, a.shape, lambda: a)], None, {})
    assert [e.name for e in fmt.read(str(tmp_path / "ok")).entries] == [name[:-1]]


def test_a_long_name_converted_to_npz(tmp_path: Path) -> None:
    """A 5 MB safetensors name: refused on reading, before any writer sees it."""
    path = safetensors_file(tmp_path / "n.safetensors", {"x" * 5_000_000: TWO["a"]}, b"\0")
    refused_by_cli("convert", str(path), str(tmp_path / "n.npz"), cause="is 5000000 bytes, more than the 65531")
    assert not (tmp_path / "n.npz").exists()


def test_record_budget_grows_with_the_names() -> None:
    small, _ = structure.record_budget(["a"])
    big, values = structure.record_budget([f"layer.{i}.weight" for i in range(1000)])
    assert small < big <= structure.MAX_RECORD_BYTES and values == 65536 + 16 * 1000
    with pytest.raises(FileFormatError, match="more than the"):
        structure.loads("[" + "0," * 70_000 + "0]", names=["a"])


# ------------------------------------------------------------------ data claimed vs data held


def _npy_claiming_more(path: Path) -> Path:
    path.write_bytes(npy_bytes(np.zeros(4))[:-8])
    return path


def _npz_claiming_more(path: Path, method: int) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        zf.writestr("a.npy", npy_bytes(np.zeros(4))[:-8])
    return path


CLAIMS = {
    "npy": (lambda d: _npy_claiming_more(d / "x.npy"), "claims 32 bytes but the file holds only 24"),
    "npz stored": (lambda d: _npz_claiming_more(d / "s.npz", zipfile.ZIP_STORED), "claims 32 bytes"),
    "npz deflated": (lambda d: _npz_claiming_more(d / "d.npz", zipfile.ZIP_DEFLATED), "claims 32 bytes"),
    "safetensors": (
        lambda d: safetensors_file(d / "x.safetensors", {"a": TWO["a"], "b": TWO["b"]}, b"\0"),
        "ends early",
    ),
    "safetensors [2**63, 0]": (
        lambda d: safetensors_file(
            d / "z.safetensors", {"a": {"dtype": "U8", "shape": [2**63, 0], "data_offsets": [0, 0]}}
        ),
        "below 2**63",
    ),
    "safetensors [2**62, 0] F32": (
        lambda d: safetensors_file(
            d / "y.safetensors", {"a": {"dtype": "F32", "shape": [2**62, 0], "data_offsets": [0, 0]}}
        ),
        "too large for any array",
    ),
}


@pytest.mark.parametrize("case", list(CLAIMS))
def test_a_header_claiming_more_than_the_file_holds(tmp_path: Path, case: str) -> None:
    make, cause = CLAIMS[case]
    path = make(tmp_path)
    refused_by_cli("inspect", str(path), cause=cause)
    refused_by_cli("convert", str(path), str(tmp_path / "out.pt"), cause=cause)
    assert not (tmp_path / "out.pt").exists()


# --- string metadata in .npz -----------------------------------------------------------------


def test_npz_keeps_string_metadata(tmp_path: Path) -> None:
    from tensorbridge.files.npz_files import METADATA_MEMBER

    w = np.eye(2)
    path = tmp_path / "m.npz"
    NPZ.write(str(path), [Entry("w", w.dtype, w.shape, lambda: w)], None, {"format": "pt", "ü": "x"})
    assert NPZ.read(str(path)).extra == {"format": "pt", "ü": "x"}
    with np.load(path) as npz:
        assert sorted(npz.files) == [METADATA_MEMBER, "w"]
    plain = tmp_path / "p.npz"
    NPZ.write(str(plain), [Entry("w", w.dtype, w.shape, lambda: w)], None, {})
    with np.load(plain) as npz:
        assert npz.files == ["w"]  # no metadata, no member


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"[1, 2]", "not one JSON object of strings"),
        (b'{"a": 1}', "not one JSON object of strings"),
        (b"{not json", "the metadata is not JSON"),
        (b'{"a": "' + b"x" * (1 << 20) + b'"}', "more than the 1048576 allowed"),
    ],
)
def test_npz_metadata_member_is_validated(tmp_path: Path, payload: bytes, message: str) -> None:
    from tensorbridge.files.npz_files import METADATA_MEMBER

    path = tmp_path / "bad.npz"
    np.savez(path, w=np.ones(2))
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(METADATA_MEMBER, payload)
    out, err = io.StringIO(), io.StringIO()
    assert main(["inspect", str(path)], out=out, err=err) == 2
    assert message in err.getvalue() and err.getvalue().count("\n") == 1, err.getvalue()
