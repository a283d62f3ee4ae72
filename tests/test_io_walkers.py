"""What the two container walks of the file formats promise: ``structure.flatten`` and ``torch_files._check_tree``.

Both are folds over ``tensorbridge.tree`` (the one walker). These pin the record and the order of
names, which containers a file can hold and the error for the others (cycles and nesting deeper
than a reader accepts included), and the item, depth and byte budgets a loaded ``.pt`` object is
held to, containers included.
"""

from __future__ import annotations

import collections
import dataclasses
import time
import types
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

import tensorbridge as tb
from tensorbridge.errors import FileFormatError, UnsupportedError
from tensorbridge.files import structure
from tensorbridge.files.pickle_scan import MAX_DEPTH
from tensorbridge.files.structure import ROOT_NAME, flatten
from tensorbridge.files.torch_files import PT, _check_tree

_FIX = "Keep only arrays, tensors, numbers, strings and dict/list/tuple containers"


class Pair(NamedTuple):
    first: Any
    second: Any


@dataclasses.dataclass
class Box:
    item: Any


class Tagged(list):  # type: ignore[type-arg]
    pass


class Odd(collections.OrderedDict):  # type: ignore[type-arg]
    pass


# ------------------------------------------------------------------------------ flatten: record


def test_names_follow_the_containers_depth_first_in_their_own_order() -> None:
    a, b, c, d, e = (np.full(1, i) for i in range(5))
    obj = {"z": [a, {"y": b, "x": (c, 7)}], "m": collections.OrderedDict([("q", d), ("p", None)]), "k": e}
    leaves, rec = flatten(obj)
    assert [n for n, _ in leaves] == ["z.0", "z.1.y", "z.1.x.0", "m.q", "k"]
    assert [v for _, v in leaves] == [a, b, c, d, e]  # the objects themselves, not copies
    assert rec == {
        "dict": [
            [
                "z",
                {
                    "list": [
                        {"t": "z.0"},
                        {"dict": [["y", {"t": "z.1.y"}], ["x", {"tuple": [{"t": "z.1.x.0"}, {"v": 7}]}]]},
                    ]
                },
            ],
            ["m", {"odict": [["q", {"t": "m.q"}], ["p", {"v": None}]]}],
            ["k", {"t": "k"}],
        ]
    }
    structure.validate(rec, [n for n, _ in leaves])  # what a reader checks accepts what flatten writes


def test_empty_containers_are_kept_in_the_record() -> None:
    leaves, rec = flatten({"a": {}, "b": [], "c": (), "d": [[], {}]})
    assert leaves == []
    assert rec == {
        "dict": [
            ["a", {"dict": []}],
            ["b", {"list": []}],
            ["c", {"tuple": []}],
            ["d", {"list": [{"list": []}, {"dict": []}]}],
        ]
    }
    assert flatten([]) == ([], {"list": []})


def test_subclasses_are_stored_as_the_container_they_subclass_with_positional_names() -> None:
    w, v = torch.zeros(1), np.ones(1)
    leaves, rec = flatten(
        {"pair": Pair(w, v), "tag": Tagged([w]), "dd": collections.defaultdict(list, {"k": v}), "odd": Odd(k=3)}
    )
    assert [n for n, _ in leaves] == ["pair.0", "pair.1", "tag.0", "dd.k"]  # a namedtuple's items by position
    assert rec["dict"] == [
        ["pair", {"tuple": [{"t": "pair.0"}, {"t": "pair.1"}]}],
        ["tag", {"list": [{"t": "tag.0"}]}],
        ["dd", {"dict": [["k", {"t": "dd.k"}]]}],
        ["odd", {"odict": [["k", {"v": 3}]]}],
    ]
    assert flatten(torch.Size([2, 3]))[1] == {"tuple": [{"v": 2}, {"v": 3}]}


def test_leaves_are_arrays_tensors_and_json_values() -> None:
    scalar, param = np.float32(2), torch.nn.Parameter(torch.ones(1))
    leaves, rec = flatten([scalar, param, True, 1.5, "s", None, -(2**70)])
    assert leaves == [("0", scalar), ("1", param)]
    assert rec["list"][2:] == [{"v": True}, {"v": 1.5}, {"v": "s"}, {"v": None}, {"v": -(2**70)}]
    lone = np.zeros(2)
    assert flatten(lone) == ([(ROOT_NAME, lone)], {"t": ROOT_NAME})
    assert flatten(3) == ([], {"v": 3})
    assert [n for n, _ in flatten({0: np.zeros(1), "1": {2: np.ones(1)}})[0]] == ["0", "1.2"]


# ---------------------------------------------------------------------------- flatten: refusals


@pytest.mark.parametrize(
    "container",
    [
        Box(np.zeros(1)),
        collections.deque([np.zeros(1)]),
        collections.UserDict(a=np.zeros(1)),
        collections.UserList([np.zeros(1)]),
        collections.ChainMap({"a": np.zeros(1)}),
        types.SimpleNamespace(a=np.zeros(1)),
        types.MappingProxyType({"a": np.zeros(1)}),
        {np.float64(1)},
        frozenset(),
        torch.nn.Linear(1, 1),
        b"bytes",
        1j,
    ],
    ids=lambda c: type(c).__name__,
)
def test_other_containers_and_leaves_are_refused_at_their_own_path(container: Any) -> None:
    with pytest.raises(UnsupportedError) as info:
        flatten({"model": [0, {"x": container}]})
    err = info.value
    assert (err.what, err.path) == ("flattening", "model.1.x")
    assert err.cause == f"a {type(container).__qualname__} cannot be stored in a tensor file"
    assert err.fix == _FIX


def test_a_refused_container_is_refused_before_its_items() -> None:
    with pytest.raises(UnsupportedError) as info:
        flatten({"a": Box({"deeper": {1, 2}})})  # the set inside is never reached
    assert (info.value.path, info.value.cause) == ("a", "a Box cannot be stored in a tensor file")
    with pytest.raises(UnsupportedError) as info:
        flatten(Box(np.zeros(1)))
    assert info.value.path == ROOT_NAME


@pytest.mark.parametrize("key", [1.5, True, None, (1, 2), b"k"], ids=repr)
def test_keys_must_be_str_or_int(key: Any) -> None:
    with pytest.raises(UnsupportedError) as info:
        flatten({"opt": {"ok": np.zeros(1), key: np.ones(1)}})
    err = info.value
    assert (err.what, err.path, err.cause, err.fix) == (
        "flattening",
        "opt",
        f"key {key!r} is not a str or int",
        "Use str keys",
    )
    with pytest.raises(UnsupportedError, match=r"^flattening at data: key 1\.5 is not a str or int"):
        flatten({1.5: 0})


def test_two_arrays_with_one_dotted_name_are_refused() -> None:
    with pytest.raises(UnsupportedError) as info:
        flatten({"a.b": np.zeros(1), "a": {"b": np.ones(1)}})
    err = info.value
    assert (err.path, err.cause) == ("a.b", "two arrays would both be named 'a.b' (a key contains a dot?)")
    with pytest.raises(UnsupportedError, match="both be named '0'"):
        flatten({0: np.zeros(1), "0": np.ones(1)})
    # values are not arrays: a value and an array may share a dotted name
    assert [n for n, _ in flatten({"a.b": 1, "a": {"b": np.ones(1)}})[0]] == ["a.b"]


# ------------------------------------------------------------------------- _check_tree: budgets


def _nest(leaf: Any, levels: int) -> Any:
    for _ in range(levels):
        leaf = [leaf]
    return leaf


def test_every_item_counts_containers_included() -> None:
    obj = [[], {"a": [], "b": ()}]  # 5 items: the root, the two in it, and the two in the dict
    _check_tree(obj, "f.pt", 5, 1 << 30)
    with pytest.raises(UnsupportedError) as info:
        _check_tree(obj, "f.pt", 4, 1 << 30)
    err = info.value
    assert (err.what, err.path) == ("reading", "f.pt")
    assert err.cause == "its containers refer to each other so often that they expand to more than 4 items"
    assert err.fix == "Save each container once, e.g. a state dict of tensors"


def test_shared_empty_containers_that_expand_are_refused_quickly() -> None:
    bomb: Any = []
    for _ in range(21):
        bomb = [bomb, bomb]  # 2**22 - 1 containers and not one leaf
    start = time.perf_counter()
    with pytest.raises(UnsupportedError, match="expand to more than 100000 items"):
        _check_tree(bomb, "f.pt", 100_000, 1 << 30)
    assert time.perf_counter() - start < 5


def test_a_file_of_shared_empty_lists_is_refused(tmp_path: Path) -> None:
    bomb: Any = []
    for _ in range(20):
        bomb = [bomb, bomb]  # about 2 million lists in a file of a few kB
    torch.save(bomb, tmp_path / "bomb.pt")
    assert (tmp_path / "bomb.pt").stat().st_size < 10_000
    with pytest.raises(UnsupportedError, match="expand to more than"):
        PT.read(str(tmp_path / "bomb.pt"))


@pytest.mark.parametrize("leaf", [torch.ones(1), None, []], ids=["tensor", "value", "empty list"])
def test_nesting_is_bounded_at_max_depth(leaf: Any) -> None:
    _check_tree(_nest(leaf, MAX_DEPTH), "f.pt", 10**6, 1 << 30)
    with pytest.raises(UnsupportedError) as info:
        _check_tree({"deep": _nest(leaf, MAX_DEPTH)}, "f.pt", 10**6, 1 << 30)
    err = info.value
    assert (err.what, err.path) == ("reading", "f.pt")
    assert err.cause == f"its containers nest more than {MAX_DEPTH} levels deep (or contain themselves)"
    assert err.fix == "Save a flatter structure, e.g. a state dict of tensors"


def test_a_container_that_contains_itself_is_refused_as_too_deep() -> None:
    loop: list[Any] = [torch.ones(1)]
    loop.append({"again": loop})
    with pytest.raises(UnsupportedError, match=f"nest more than {MAX_DEPTH} levels deep \\(or contain themselves\\)"):
        _check_tree(loop, "f.pt", 10**6, 1 << 30)


def test_tensor_bytes_count_under_every_name() -> None:
    t = torch.ones(2)  # 8 bytes
    _check_tree({"a": t, "b": [t]}, "f.pt", 100, 16)
    with pytest.raises(FileFormatError) as info:
        _check_tree({"a": t, "b": [t, (t,)]}, "f.pt", 100, 16)
    err = info.value
    assert (err.what, err.path) == ("reading", "f.pt")
    assert err.cause.startswith("its tensors, counted under every name they have, hold more than 16 bytes (8 times")
    assert err.fix == "Save each tensor once, under one name, without expanded views"
    # sparse and meta tensors hold no bytes of the file; they are refused later, by name
    _check_tree([torch.eye(50).to_sparse(), torch.empty(10**6, device="meta")], "f.pt", 100, 16)


def test_containers_other_than_those_a_file_holds_count_as_one_item_unwalked() -> None:
    bomb: Any = []
    for _ in range(21):
        bomb = [bomb, bomb]
    _check_tree({"box": Box(bomb), "model": torch.nn.Linear(1, 1)}, "f.pt", 3, 1 << 30)  # flatten refuses them
    with pytest.raises(UnsupportedError, match="expand to more than 3 items"):
        _check_tree(torch.Size([1, 2, 3]), "f.pt", 3, 1 << 30)  # a tuple (walked by its pytree registration)


def test_nesting_far_deeper_than_max_depth_is_refused_without_recursion() -> None:
    with pytest.raises(UnsupportedError, match=f"nest more than {MAX_DEPTH} levels deep"):
        _check_tree(_nest(torch.ones(1), 100_000), "f.pt", 10**6, 1 << 30)


# ------------------------------------------------------------- flatten: cycles, depth, rules


def test_a_cycle_is_refused_at_the_dotted_name_of_the_container_met_again() -> None:
    loop: list[Any] = [np.zeros(1)]
    loop.append({"again": loop})
    with pytest.raises(UnsupportedError) as info:
        flatten({"model": loop})
    err = info.value
    assert (err.what, err.path) == ("flattening", "model.1.again")
    assert err.cause == "the list contains itself (a reference cycle)"
    assert err.fix == "Break the cycle before saving"
    me: dict[str, Any] = {}
    me["me"] = me
    with pytest.raises(UnsupportedError, match=r"^flattening at me: the dict contains itself"):
        flatten(me)


@pytest.mark.parametrize("leaf", [np.ones(1), 3, []], ids=["array", "value", "empty list"])
def test_nesting_is_bounded_as_a_reader_bounds_the_record(leaf: Any) -> None:
    leaves, rec = flatten(_nest(leaf, structure.MAX_DEPTH))  # items at depth MAX_DEPTH at most
    structure.validate(rec, [n for n, _ in leaves])
    with pytest.raises(UnsupportedError) as info:
        flatten({"deep": _nest(leaf, structure.MAX_DEPTH)})
    err = info.value
    assert (err.what, err.path) == ("flattening", "deep" + ".0" * structure.MAX_DEPTH)
    assert err.cause.startswith(f"the containers nest more than {structure.MAX_DEPTH} levels deep")
    with pytest.raises(UnsupportedError, match="nest more than"):
        flatten(_nest(leaf, 100_000))  # no RecursionError, however deep


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pt"])
def test_save_refuses_a_cycle_and_deep_nesting_as_what_a_file_cannot_hold(tmp_path: Path, suffix: str) -> None:
    loop: list[Any] = [np.zeros(1)]
    loop.append({"again": loop})
    target = tmp_path / f"f{suffix}"
    with pytest.raises(UnsupportedError, match=r"^saving at .*: at 1\.again: the list contains itself \(a reference"):
        tb.save(loop, target)
    with pytest.raises(UnsupportedError, match=r"^saving at .*: at m(\.0)+: the containers nest more than 100 levels"):
        tb.save({"m": _nest(np.zeros(1), 1000)}, target)
    assert not target.exists()


def test_items_are_named_by_their_containers_keys_and_positions_not_by_tree_paths() -> None:
    a, b = np.zeros(1), np.ones(1)
    leaves, rec = flatten(torch.max(torch.ones(2, 2), 0))  # a torch.return_types structseq, tuple by position
    assert [n for n, _ in leaves] == ["0", "1"]
    assert rec == {"tuple": [{"t": "0"}, {"t": "1"}]}
    leaves, rec = flatten({"": a, "x": {"": {"y": b}}})  # the dotted join of the keys, empty ones too
    assert [n for n, _ in leaves] == [ROOT_NAME, "x..y"]
    structure.validate(rec, [n for n, _ in leaves])


def test_a_registered_dict_subclass_is_stored_by_its_own_keys_if_its_rule_gives_its_items() -> None:
    class Agrees(dict):  # type: ignore[type-arg]
        pass

    class Reverses(dict):  # type: ignore[type-arg]
        pass

    tb.register_container(
        Agrees, lambda m: (list(m.values()), [f"k{i}" for i in range(len(m))], None), lambda o, aux, kids: kids
    )
    tb.register_container(Reverses, lambda m: (list(m.values())[::-1], list(m)[::-1], None), lambda o, aux, kids: kids)
    w = np.zeros(1)
    assert flatten({"a": Agrees(w=w, n=1)}) == (
        [("a.w", w)],
        {"dict": [["a", {"dict": [["w", {"t": "a.w"}], ["n", {"v": 1}]]}]]},
    )
    with pytest.raises(UnsupportedError) as info:
        flatten({"r": Reverses(w=w, bad={1, 2})})  # refused before its items
    err = info.value
    assert (err.path, err.fix) == ("r", "Convert it to a plain dict first")
    assert err.cause.startswith(f"a {Reverses.__qualname__} cannot be stored in a tensor file: its registration takes")


def test_a_sparse_dok_matrix_is_an_array_to_the_tree_and_is_refused_whole() -> None:
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(UnsupportedError, match=r"^flattening at s: a dok_array cannot be stored in a tensor file"):
        flatten({"s": sparse.dok_array((2, 2))})  # not an empty dict
