from __future__ import annotations

import collections
import dataclasses
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import attrs
import numpy as np
import pytest
import torch

import tensorbridge as tb


class Point(NamedTuple):
    x: Any
    y: Any


@dataclasses.dataclass
class Sample:
    image: Any
    label: Any
    note: str = "n"


@dataclasses.dataclass(frozen=True)
class Frozen:
    a: Any
    b: Any = dataclasses.field(default=None)
    c: int = dataclasses.field(default=0, init=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Slotted:
    a: Any


@attrs.define
class AttrsBox:
    x: Any
    y: Any


@attrs.frozen
class AttrsFrozen:
    x: Any


def test_containers_keep_their_types() -> None:
    arr = np.ones(2)
    dd: collections.defaultdict[str, Any] = collections.defaultdict(list, {"a": arr})
    data = {
        "od": collections.OrderedDict([("z", arr), ("a", arr)]),
        "dd": dd,
        "list": [arr, (arr, arr)],
        "nt": Point(arr, 3),
        "deque": collections.deque([arr], maxlen=4),
        "dc": Sample(arr, np.int64(3)),
        "frozen": Frozen(arr),
        "slotted": Slotted(arr),
        "attrs": AttrsBox(arr, [arr]),
        "attrs_frozen": AttrsFrozen(arr),
    }
    out = tb.to_tensor(data)
    assert type(out["od"]) is collections.OrderedDict and list(out["od"]) == ["z", "a"]
    assert type(out["dd"]) is collections.defaultdict and out["dd"].default_factory is list
    assert type(out["list"][1]) is tuple
    assert type(out["nt"]) is Point and out["nt"].y == 3
    assert type(out["deque"]) is collections.deque and out["deque"].maxlen == 4
    assert type(out["dc"]) is Sample and out["dc"].note == "n"
    assert isinstance(out["dc"].label, torch.Tensor)
    assert type(out["frozen"]) is Frozen and isinstance(out["frozen"].a, torch.Tensor)
    assert isinstance(out["slotted"].a, torch.Tensor)
    assert isinstance(out["attrs"].y[0], torch.Tensor)
    assert isinstance(out["attrs_frozen"].x, torch.Tensor)
    back = tb.to_numpy(out)
    assert isinstance(back["attrs"].x, np.ndarray) and isinstance(back["nt"].x, np.ndarray)


def test_callers_containers_are_not_mutated() -> None:
    arr = np.ones(2)
    inner = [arr]
    sample = Sample(arr, inner)
    data = {"s": sample, "t": (inner,)}
    out = tb.to_tensor(data)
    assert data["s"] is sample and sample.image is arr and sample.label is inner and inner[0] is arr
    assert out["s"] is not sample and out["t"][0] is not inner


def test_deep_nesting_needs_no_recursion() -> None:
    data: Any = np.ones(1)
    for _ in range(sys.getrecursionlimit() * 3):
        data = [data]
    out = tb.to_tensor(data)
    depth = 0
    while isinstance(out, list):
        out = out[0]
        depth += 1
    assert depth == sys.getrecursionlimit() * 3 and isinstance(out, torch.Tensor)


def test_cycles_raise_structure_error() -> None:
    data: list[Any] = [np.ones(1)]
    data.append({"back": data})
    with pytest.raises(tb.StructureError, match="contains itself") as info:
        tb.to_tensor(data)
    assert info.value.path == "data[1]['back']"
    assert isinstance(info.value, ValueError)


def test_shared_subtrees_are_not_cycles() -> None:
    shared = [np.ones(1)]
    out = tb.to_tensor({"a": shared, "b": shared})
    assert torch.equal(out["a"][0], out["b"][0])


def test_key_paths_in_errors() -> None:
    batch = {"images": [np.ones(1)] * 3 + [np.array(["bad"])]}
    with pytest.raises(tb.UnsupportedError) as info:
        tb.to_tensor(batch)
    assert str(info.value).startswith("to_tensor at data['images'][3]: dtype <U3")
    with pytest.raises(tb.UnsupportedError) as info2:
        tb.to_tensor(Sample(np.ones(1), Point(1, np.array([object()]))))
    assert info2.value.path == "data.label.y"


def test_register_container() -> None:
    class Box:
        def __init__(self, items: list[Any], tag: str) -> None:
            self.items, self.tag = items, tag

    tb.register_container(
        Box, lambda b: (b.items, range(len(b.items)), b.tag), lambda orig, tag, kids: Box(kids, tag), key_style="index"
    )
    out = tb.to_tensor({"box": Box([np.ones(1), np.zeros(1)], "t")})
    assert type(out["box"]) is Box and out["box"].tag == "t"
    assert isinstance(out["box"].items[1], torch.Tensor)
    with pytest.raises(TypeError):
        tb.register_container("not a type", len, len)  # type: ignore[arg-type]


class PickyView(Mapping[str, Any]):
    """An immutable mapping whose constructor wants other arguments: nothing to refill, no way to build."""

    def __init__(self, required: int, data: Any = None) -> None:
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def test_unrebuildable_mapping_is_a_structure_error() -> None:
    with pytest.raises(tb.StructureError, match="register_container"):
        tb.to_tensor(PickyView(1, {"a": np.ones(1)}))


def test_mutable_mapping_with_a_picky_constructor_is_refilled_not_rebuilt() -> None:
    class Picky(collections.UserDict[str, Any]):
        def __init__(self, required: int, data: Any = None) -> None:
            super().__init__(data or {})
            self.required = required

    out = tb.to_tensor(Picky(1, {"a": np.ones(1)}))
    assert type(out) is Picky and out.required == 1 and isinstance(out["a"], torch.Tensor)


def test_sets_and_strings_are_leaves_that_pass_through() -> None:
    data = {"s": "abc", "fs": frozenset({1}), "set": {2}}
    assert tb.to_tensor(data) == data  # bytes are buffers since issue 4: see test_interop.py


def test_import_loads_no_optional_framework() -> None:
    code = (
        "import sys, tensorbridge; optional = ('attrs', 'jax', 'pandas', 'scipy', 'cupy', 'optree', 'tensordict'); "
        "bad = [m for m in optional if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_state_dict_round_trip_keeps_metadata_and_loads() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    sd = model.state_dict()
    arrays = tb.to_numpy(sd)
    assert type(arrays) is type(sd) and list(arrays) == list(sd)
    assert arrays._metadata == sd._metadata  # type: ignore[attr-defined]
    assert isinstance(arrays["0.weight"], np.ndarray)
    back = tb.to_tensor(arrays)
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    fresh.load_state_dict(back)
    assert torch.equal(fresh[0].weight, model[0].weight)
    assert fresh[1].num_batches_tracked.dtype is torch.int64


def test_errors_pickle_and_rebuild_from_text() -> None:
    import pickle

    with pytest.raises(tb.UnsupportedError) as info:
        tb.to_tensor({"k": np.array(["x"])})
    err = info.value
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is type(err) and str(again) == str(err) and again.path == "data['k']"
    rebuilt = type(err)(str(err))  # what torch's DataLoader does with a worker's exception
    assert isinstance(rebuilt, TypeError) and str(rebuilt) == str(err)
    assert type(rebuilt)(str(rebuilt)).args == rebuilt.args
    assert str(pickle.loads(pickle.dumps(rebuilt))) == str(err)


def test_key_with_a_broken_repr_does_not_hide_the_error() -> None:
    class Key:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

        def __hash__(self) -> int:
            return 1

    with pytest.raises(tb.UnsupportedError, match=r"data\[<Key object>\]"):
        tb.to_tensor({Key(): np.array(["x"])})


def test_container_that_cannot_be_taken_apart_is_a_structure_error() -> None:
    class Broken(dict):  # type: ignore[type-arg]
        def items(self):  # type: ignore[no-untyped-def,override]
            raise OSError("backing store gone")

    with pytest.raises(tb.StructureError, match=r"at data\['b'\]: Broken could not be taken apart \(OSError"):
        tb.to_tensor({"b": Broken(a=np.ones(1))})
