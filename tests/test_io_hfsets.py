"""Hugging Face sharded safetensors sets in the command: read, written, diffed, and hostile indexes refused."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import tensorbridge as tb
from tensorbridge.files import format_for
from tensorbridge.files.hf_sets import MAX_INDEX_BYTES, SafetensorsSetFormat, parse_size

from .helpers import one_line_error
from .helpers import run_cli as run

INDEX = "model.safetensors.index.json"


def tensors() -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(0)
    return {
        "model.embed.weight": rng.standard_normal((8, 4)).astype(np.float32),
        "model.layers.0.w": rng.standard_normal((4, 4)).astype(np.float16),
        "model.layers.0.b": np.arange(4, dtype=np.int64),
        "model.layers.1.w": rng.standard_normal((4, 4)).astype(np.float32),
        "lm_head.weight": rng.standard_normal((8, 4)).astype(np.float32),
    }


def hf_set(folder: Path, shards: list[list[str]], data: dict[str, np.ndarray[Any, Any]] | None = None) -> Path:
    """A set as transformers writes it: save_file per shard, then the index by hand."""
    data = tensors() if data is None else data
    folder.mkdir()
    n = len(shards)
    weight_map = {}
    for k, names in enumerate(shards, 1):
        shard = f"model-{k:05d}-of-{n:05d}.safetensors"
        save_file({name: data[name] for name in names}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, shard))
    total = sum(data[n].nbytes for names in shards for n in names)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return folder


SHARDS = [["model.embed.weight", "model.layers.0.w", "model.layers.0.b"], ["model.layers.1.w", "lm_head.weight"]]


def test_a_transformers_set_converts_to_one_file(tmp_path: Path) -> None:
    folder = hf_set(tmp_path / "set", SHARDS)
    for src in (folder, folder / INDEX):
        dst = tmp_path / f"one-{src.name}.safetensors"
        code, out, err = run("convert", str(src), str(dst), "--verify")
        assert code == 0, err
        assert "5 arrays" in out
        back = load_file(str(dst))
        want = tensors()
        names = [e.name for e in format_for(str(dst)).read(str(dst)).entries]
        assert set(names[:3]) == set(SHARDS[0]) and set(names[3:]) == set(SHARDS[1])  # shard order
        assert all(np.array_equal(back[n], want[n]) and back[n].dtype == want[n].dtype for n in want)


def test_one_file_splits_into_shards_that_read_back_equal(tmp_path: Path) -> None:
    save_file(tensors(), str(tmp_path / "one.safetensors"), metadata={"format": "pt"})
    dst = tmp_path / "out"
    code, _, err = run("convert", str(tmp_path / "one.safetensors"), str(dst), "--max-shard-size", "200", "--verify")
    assert code == 0, err
    index = json.loads((dst / INDEX).read_text())
    want = tensors()
    assert index["metadata"] == {"total_size": sum(a.nbytes for a in want.values())}
    shards = sorted(p.name for p in dst.iterdir() if p.name != INDEX)
    n = len(shards)
    assert n > 1 and shards == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    assert sorted(index["weight_map"]) == sorted(want) and set(index["weight_map"].values()) == set(shards)
    for shard in shards:
        part = load_file(str(dst / shard))
        assert sum(a.nbytes for a in part.values()) <= 200 or len(part) == 1
        for name, a in part.items():
            assert index["weight_map"][name] == shard and np.array_equal(a, want[name])
    assert run("diff", str(dst), str(tmp_path / "one.safetensors")) == (0, "no differences\n", "")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_tensor_larger_than_the_limit_gets_a_shard_of_its_own(tmp_path: Path) -> None:
    data = {"a": np.zeros(10, np.uint8), "big": np.zeros(1000, np.uint8), "b": np.zeros(10, np.uint8)}
    tb.save(data, tmp_path / "one.safetensors")  # keeps the order (safetensors.numpy sorts the names)
    code, _, err = run("convert", str(tmp_path / "one.safetensors"), str(tmp_path / "out"), "--max-shard-size", "100")
    assert code == 0, err
    weight_map = json.loads((tmp_path / "out" / INDEX).read_text())["weight_map"]
    assert weight_map == {
        "a": "model-00001-of-00003.safetensors",
        "big": "model-00002-of-00003.safetensors",
        "b": "model-00003-of-00003.safetensors",
    }


def test_sets_diff_and_inspect_like_files(tmp_path: Path) -> None:
    folder = hf_set(tmp_path / "set", SHARDS)
    save_file(tensors(), str(tmp_path / "one.safetensors"), metadata={"format": "pt"})
    assert run("diff", str(folder), str(tmp_path / "one.safetensors")) == (0, "no differences\n", "")
    assert run("diff", str(folder / INDEX), str(folder))[0] == 0
    code, out, err = run("inspect", str(folder), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["format"] == "safetensors-set" and len(doc["arrays"]) == 5 and doc["metadata"] == {"format": "pt"}
    changed = tensors()
    changed["lm_head.weight"] = changed["lm_head.weight"] + 1
    save_file(changed, str(tmp_path / "two.safetensors"), metadata={"format": "pt"})
    code, out, _ = run("diff", str(folder), str(tmp_path / "two.safetensors"))
    assert code == 1 and out.startswith("lm_head.weight: values"), out


def test_a_set_round_trips_through_a_set(tmp_path: Path) -> None:
    folder = hf_set(tmp_path / "set", SHARDS)
    code, _, err = run("convert", str(folder), str(tmp_path / "again"), "--verify", "--strip-prefix", "model.")
    assert code == 0, err
    archive = format_for(str(tmp_path / "again")).read(str(tmp_path / "again"))
    names = [e.name for e in archive.entries]
    assert sorted(names) == ["embed.weight", "layers.0.b", "layers.0.w", "layers.1.w", "lm_head.weight"]
    assert sorted(os.listdir(tmp_path / "again")) == ["model-00001-of-00001.safetensors", INDEX]
    want = tensors()
    assert all(
        np.array_equal(e.load(), want[e.name if e.name == "lm_head.weight" else "model." + e.name])
        for e in archive.entries
    )
    code, _, err = run("convert", str(folder), str(tmp_path / "x"), "--strip-prefix", "model.", "--only", "lm_*")
    assert code == 0, err


def test_a_tensor_in_two_shards_is_named(tmp_path: Path) -> None:
    folder = hf_set(tmp_path / "set", SHARDS)
    data = tensors()
    save_file({n: data[n] for n in [*SHARDS[0], "lm_head.weight"]}, str(folder / "model-00001-of-00002.safetensors"))
    code, _, err = run("inspect", str(folder))
    one_line_error(code, err)
    assert "holds tensor 'lm_head.weight', which the index maps to 'model-00002-of-00002.safetensors'" in err
    assert "(a tensor in two shards)" in err and str(folder / INDEX) in err


def test_a_nested_checkpoint_keeps_its_nesting_in_a_set(tmp_path: Path) -> None:
    data = {"enc": {"w": np.ones(3, np.float32), "layers": [np.zeros(2), np.ones(2)]}, "step": 7}
    tb.save(data, tmp_path / "ckpt.safetensors")
    code, _, err = run("convert", str(tmp_path / "ckpt.safetensors"), str(tmp_path / "out"), "--max-shard-size", "16")
    assert code == 0, err
    back = tb.load(tmp_path / "out")
    assert back["step"] == 7 and back["enc"]["layers"][1].tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("mangle", "words"),
    [
        (lambda ix: ix["weight_map"].update({"lm_head.weight": "../model-00002-of-00002.safetensors"}), "not a shard"),
        (lambda ix: ix["weight_map"].update({"lm_head.weight": "/etc/passwd.safetensors"}), "not a shard file name"),
        (lambda ix: ix["weight_map"].update({"lm_head.weight": "a\\b.safetensors"}), "not a shard file name"),
        (lambda ix: ix["weight_map"].update({"lm_head.weight": "gone.safetensors"}), "is not a file in"),
        (lambda ix: ix["weight_map"].update({"ghost": "model-00001-of-00002.safetensors"}), "does not hold it"),
        (lambda ix: ix["weight_map"].pop("lm_head.weight"), "which the index does not list"),
        (
            lambda ix: ix["weight_map"].update({"lm_head.weight": "model-00001-of-00002.safetensors"}),
            "does not hold it",
        ),
        (lambda ix: ix.update({"extra": 1}), "unexpected key 'extra'"),
        (lambda ix: ix.pop("weight_map"), "no 'weight_map'"),
        (lambda ix: ix["metadata"].update({"total_size": "big"}), "is not a byte count"),
        (lambda ix: ix["weight_map"].update({"lm_head.weight": 3}), "not a shard file name"),
    ],
)
def test_hostile_indexes_are_one_line_errors(tmp_path: Path, mangle: Any, words: str) -> None:
    folder = hf_set(tmp_path / "set", SHARDS)
    index = json.loads((folder / INDEX).read_text())
    mangle(index)
    (folder / INDEX).write_text(json.dumps(index))
    for argv in (
        ["convert", str(folder), str(tmp_path / "out.safetensors")],
        ["inspect", str(folder / INDEX)],
        ["diff", str(folder), str(folder / "model-00001-of-00002.safetensors")],
    ):
        code, _, err = run(*argv)
        one_line_error(code, err)
        assert words in err and str(folder / INDEX) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (b"[1, 2]", "a JSON list, not an object"),
        (b'"weight_map"', "a JSON str, not an object"),
        (b"{not json", "not UTF-8 JSON"),
        (b'{"weight_map": {}, "weight_map": {}}', "appears twice"),
        (b'{"weight_map": {"a": NaN}}', "NaN"),
        (b"\xff\xfe{}", "not UTF-8 JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not"),
    ],
)
def test_malformed_index_json_is_one_line(tmp_path: Path, text: bytes, words: str) -> None:
    folder = hf_set(tmp_path / "set", SHARDS)
    (folder / INDEX).write_bytes(text)
    code, _, err = run("inspect", str(folder))
    one_line_error(code, err)
    assert words in err, err


def test_a_huge_index_is_refused_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = hf_set(tmp_path / "set", SHARDS)
    with open(folder / INDEX, "r+b") as f:
        f.truncate(MAX_INDEX_BYTES + 1)  # sparse: no disk spent
    monkeypatch.setattr(json, "loads", lambda *a, **k: pytest.fail("the index was parsed"))
    code, _, err = run("inspect", str(folder))
    one_line_error(code, err)
    assert f"over the {MAX_INDEX_BYTES}" in err


def test_a_directory_without_an_index_is_not_a_set(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    save_file({"w": np.ones(2, np.float32)}, str(tmp_path / "d" / "model.safetensors"))
    code, _, err = run("inspect", str(tmp_path / "d"))
    one_line_error(code, err)
    assert "it is a directory, not a tensor file" in err and "Give the file inside it" in err
    assert str(tmp_path / "d" / "model.safetensors") in err


def test_from_safetensors_on_a_set_is_one_line_not_errno(tmp_path: Path) -> None:
    folder = hf_set(tmp_path / "set", SHARDS)
    code, _, err = run("convert", str(folder), str(tmp_path / "o.npz"), "--from", "safetensors")
    one_line_error(code, err)
    assert "it is a directory (a sharded safetensors set or a DCP checkpoint), not a safetensors file" in err


def test_an_existing_destination_directory_is_refused_without_force(tmp_path: Path) -> None:
    save_file(tensors(), str(tmp_path / "one.safetensors"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.safetensors").write_bytes(b"precious")
    code, _, err = run("convert", str(tmp_path / "one.safetensors"), str(tmp_path / "out"))
    one_line_error(code, err)
    assert "the destination exists (a directory)" in err and "--force" in err
    assert os.listdir(tmp_path / "out") == ["keep.safetensors"]
    # --force replaces a directory holding only a set's files ...
    code, _, err = run("convert", str(tmp_path / "one.safetensors"), str(tmp_path / "out"), "--force")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "out")) == ["model-00001-of-00001.safetensors", INDEX]
    # ... but never one holding anything else.
    (tmp_path / "out" / "config.json").write_text("{}")
    code, _, err = run("convert", str(tmp_path / "one.safetensors"), str(tmp_path / "out"), "--force")
    one_line_error(code, err)
    assert "config.json" in err and "config.json" in os.listdir(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.safetensors", "out"]


def test_a_failed_write_leaves_no_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_file(tensors(), str(tmp_path / "one.safetensors"))
    real = SafetensorsSetFormat.write

    def write(self: Any, path: str, *args: Any) -> None:
        real(self, path, *args)
        raise OSError(28, "No space left on device", os.path.join(path, INDEX))

    monkeypatch.setattr(SafetensorsSetFormat, "write", write)
    code, _, err = run("convert", str(tmp_path / "one.safetensors"), str(tmp_path / "out"), "--max-shard-size", "100")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "No space left on device" in err and ".tmp" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.safetensors"]


def test_an_interrupted_write_leaves_no_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_file(tensors(), str(tmp_path / "one.safetensors"))

    def write(self: Any, path: str, *args: Any) -> None:
        (Path(path) / "model-00001-of-00002.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(SafetensorsSetFormat, "write", write)
    code, _, err = run("convert", str(tmp_path / "one.safetensors"), str(tmp_path / "out"))
    assert code == 130 and "interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.safetensors"]


@pytest.mark.parametrize("bad", ["5XB", "-1", "0", "GB", "1e9", ""])
def test_a_bad_max_shard_size_is_one_line(tmp_path: Path, bad: str) -> None:
    save_file(tensors(), str(tmp_path / "one.safetensors"))
    code, _, err = run("convert", str(tmp_path / "one.safetensors"), str(tmp_path / "out"), f"--max-shard-size={bad}")
    one_line_error(code, err)
    assert "--max-shard-size" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.safetensors"]


def test_max_shard_size_with_another_format_is_refused(tmp_path: Path) -> None:
    save_file(tensors(), str(tmp_path / "one.safetensors"))
    code, _, err = run("convert", str(tmp_path / "one.safetensors"), str(tmp_path / "o.npz"), "--max-shard-size", "1GB")
    one_line_error(code, err)
    code, _, err = run(
        "convert", str(tmp_path / "one.safetensors"), str(tmp_path / "o"), "--max-shard-size", "1GB", "--to", "npz"
    )
    one_line_error(code, err)
    assert "writes a sharded set" in err


def test_sizes() -> None:
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MB") == 5 * 10**8 and parse_size("2GiB") == 2 << 30
    assert parse_size("512mib") == 512 << 20 and parse_size("123") == 123 and parse_size(" 1 KB ") == 1000


def test_strip_prefix_refuses_to_merge_two_names(tmp_path: Path) -> None:
    tb.save({"model.w": np.ones(1), "w": np.zeros(1)}, tmp_path / "a.safetensors")
    code, _, err = run("convert", str(tmp_path / "a.safetensors"), str(tmp_path / "b.npz"), "--strip-prefix", "model.")
    one_line_error(code, err)
    assert "makes 'model.w' and 'w' both 'w'" in err


def test_an_index_file_is_no_destination(tmp_path: Path) -> None:
    save_file(tensors(), str(tmp_path / "one.safetensors"))
    code, _, err = run("convert", str(tmp_path / "one.safetensors"), str(tmp_path / INDEX))
    one_line_error(code, err)
    assert "names an index file" in err and sorted(p.name for p in tmp_path.iterdir()) == ["one.safetensors"]


def test_save_and_load_a_set_through_the_api(tmp_path: Path) -> None:
    tb.save({"a": np.arange(3.0), "b": np.ones(2, np.float32)}, f"{tmp_path}/out/")
    assert sorted(os.listdir(tmp_path / "out")) == ["model-00001-of-00001.safetensors", INDEX]
    back = tb.load(tmp_path / "out")
    assert list(back) == ["a", "b"] and back["a"].tolist() == [0.0, 1.0, 2.0]
