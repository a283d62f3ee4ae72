"""Containers come back whole: every map of a ChainMap, every container's instance state, the
state of UserDict subclasses, pytree registrations (torch's and optree's), TensorDicts, and a
clear refusal for modules and for registrations that cannot be walked."""

from __future__ import annotations

import collections
import copy
import dataclasses
import subprocess
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any, NamedTuple

import attrs
import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree

import tensorbridge as tb
from tensorbridge.tree import format_path, iter_leaves

# --- 1. ChainMap, map by map ---------------------------------------------------------------


def test_chainmap_keeps_every_map_and_the_shadowed_values() -> None:
    a, b = np.zeros(1), np.ones(1)
    cm = collections.ChainMap({"x": a}, {"x": b, "y": b})
    out = tb.to_tensor(cm)
    assert type(out) is collections.ChainMap and len(out.maps) == 2
    assert out.maps[0]["x"].tolist() == [0.0]
    assert out.maps[1]["x"].tolist() == [1.0] and out.maps[1]["y"].tolist() == [1.0]
    assert out["x"].tolist() == [0.0]  # lookups still see the first map first
    back = tb.to_numpy(out)
    assert type(back) is collections.ChainMap and isinstance(back.maps[1]["x"], np.ndarray)
    assert cm.maps[1]["x"] is b  # the caller's maps are untouched


class Scoped(collections.ChainMap[str, Any]):
    def __init__(self, name: str, *maps: Any) -> None:
        super().__init__(*maps)
        self.name = name


def test_chainmap_subclass_keeps_its_type_its_state_and_its_maps_types() -> None:
    inner = collections.OrderedDict([("w", np.ones(2))])
    cm = Scoped("layer", {"x": np.zeros(1)}, inner, {})
    out = tb.to_tensor({"cm": cm})["cm"]
    assert type(out) is Scoped and out.name == "layer" and len(out.maps) == 3
    assert type(out.maps[1]) is collections.OrderedDict and isinstance(out.maps[1]["w"], torch.Tensor)
    assert out.maps[2] == {} and out.maps is not cm.maps


def test_chainmap_key_paths_name_the_map() -> None:
    cm = collections.ChainMap({}, {"x": np.array(["text"])})
    with pytest.raises(tb.UnsupportedError) as info:
        tb.to_tensor({"env": cm})
    assert info.value.path == "data['env'].maps[1]['x']"


# --- 2. instance state, for every container kind -------------------------------------------


class TaggedList(list[Any]):
    pass


class TaggedTuple(tuple[Any, ...]):
    pass


class TaggedDeque(collections.deque[Any]):
    pass


class TaggedDict(dict[str, Any]):
    pass


class TaggedPoint(NamedTuple):
    x: Any
    y: Any


class TaggedPointSub(TaggedPoint):
    pass  # a namedtuple subclass without __slots__ = () has a __dict__


class SlottedList(list[Any]):
    __slots__ = ("__private", "tag")


class ReadOnlyView(collections.abc.Mapping[str, Any]):
    def __init__(self, data: Any = None) -> None:
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


@dataclasses.dataclass
class WithExtra:
    x: Any


@attrs.define(slots=False)
class AttrsWithExtra:
    x: Any


def _make_containers() -> list[tuple[str, Any]]:
    a = np.ones(2)
    made: list[tuple[str, Any]] = [
        ("list subclass", TaggedList([a])),
        ("tuple subclass", TaggedTuple((a,))),
        ("deque subclass", TaggedDeque([a], maxlen=3)),
        ("dict subclass", TaggedDict(k=a)),
        ("namedtuple subclass", TaggedPointSub(a, 1)),
        ("UserDict", collections.UserDict({"k": a})),
        ("UserList", collections.UserList([a])),
        ("immutable Mapping", ReadOnlyView({"k": a})),
        ("dataclass", WithExtra(a)),
        ("attrs", AttrsWithExtra(a)),
    ]
    for _, obj in made:
        obj.tag = "train"
    return made


@pytest.mark.parametrize("kind", [k for k, _ in _make_containers()])
@pytest.mark.parametrize("direction", ["to_tensor", "to_numpy"])
def test_every_container_kind_keeps_its_instance_attributes(kind: str, direction: str) -> None:
    obj = dict(_make_containers())[kind]
    if direction == "to_numpy":
        obj = tb.to_tensor(obj)
        assert obj.tag == "train", "to_tensor lost the attribute"
    out = getattr(tb, direction)({"nested": [obj]})["nested"][0]
    assert type(out) is type(obj) and out is not obj
    assert out.tag == "train"
    leaves = [x for _, x in iter_leaves(out, lambda x: isinstance(x, (np.ndarray, torch.Tensor)))]
    assert leaves and all(isinstance(x, np.ndarray if direction == "to_numpy" else torch.Tensor) for x in leaves)


def test_simple_namespace_attributes_are_children() -> None:
    import types

    ns = types.SimpleNamespace(images=np.ones(2), meta={"id": 3})
    out = tb.to_tensor({"ns": ns})["ns"]
    assert type(out) is types.SimpleNamespace and out is not ns and out.meta == {"id": 3}
    assert isinstance(out.images, torch.Tensor) and isinstance(ns.images, np.ndarray)
    with pytest.raises(tb.UnsupportedError) as info:
        tb.to_tensor(types.SimpleNamespace(text=np.array(["x"])))
    assert info.value.path == "data.text"


def test_deque_subclass_keeps_maxlen_and_state() -> None:
    d = TaggedDeque([np.ones(1)], maxlen=3)
    d.tag = "t"
    out = tb.to_tensor(d)
    assert out.maxlen == 3 and out.tag == "t"


def test_slots_are_kept_private_ones_too() -> None:
    s = SlottedList([np.ones(1)])
    s.tag = "t"
    s._SlottedList__private = 5  # type: ignore[attr-defined]
    out = tb.to_tensor(s)
    assert type(out) is SlottedList and out.tag == "t" and out._SlottedList__private == 5  # type: ignore[attr-defined]
    unset = SlottedList([np.ones(1)])
    assert not hasattr(tb.to_tensor(unset), "tag")  # an unset slot stays unset


def test_list_subclass_with_its_own_constructor_is_refilled() -> None:
    class Batch(list[Any]):
        def __init__(self, items: Any, split: str) -> None:
            super().__init__(items)
            self.split = split

    out = tb.to_tensor(Batch([np.ones(1), np.zeros(1)], "val"))
    assert type(out) is Batch and out.split == "val" and isinstance(out[1], torch.Tensor)


def test_rebuilt_state_does_not_alias_the_callers_mutable_attributes() -> None:
    d = TaggedDict(k=np.ones(1))
    d.tag = ["a"]  # type: ignore[attr-defined]
    out = tb.to_tensor(d)
    out.tag.append("b")  # type: ignore[attr-defined]
    assert d.tag == ["a"]  # type: ignore[attr-defined]


# --- 3. mutable mappings: shallow copy and item assignment ---------------------------------


class Encoding:
    """A stand-in for a tokenizers Encoding: opaque state the container must keep."""

    n_sequences = 2


class FakeBatchEncoding(collections.UserDict[str, Any]):
    """Shaped like transformers' BatchEncoding: state set in __init__, data in .data, attribute access."""

    def __init__(
        self,
        data: Any = None,
        encoding: list[Encoding] | None = None,
        tensor_type: str | None = None,
        prepend_batch_axis: bool = False,
        n_sequences: int | None = None,
    ) -> None:
        super().__init__(data)
        self._encodings = encoding
        if n_sequences is None and encoding:
            n_sequences = encoding[0].n_sequences
        self._n_sequences = n_sequences

    @property
    def n_sequences(self) -> int | None:
        return self._n_sequences

    @property
    def encodings(self) -> list[Encoding] | None:
        return self._encodings

    def __getattr__(self, item: str) -> Any:
        try:
            return self.data[item]
        except KeyError:
            raise AttributeError(item) from None


def test_batch_encoding_like_keeps_its_state_and_converts_every_item() -> None:
    ids = np.arange(6).reshape(2, 3)
    mask = np.ones((2, 3), dtype=np.int64)
    enc = [Encoding(), Encoding()]
    be = FakeBatchEncoding({"input_ids": ids, "attention_mask": mask}, encoding=enc)
    out = tb.to_tensor(be)
    assert type(out) is FakeBatchEncoding
    assert out.n_sequences == 2 and out.encodings == enc and out.encodings[0] is enc[0]
    assert set(out.data) == {"input_ids", "attention_mask"} and out.data is not be.data
    assert isinstance(out.input_ids, torch.Tensor) and out["attention_mask"].dtype is torch.int64
    # the caller's mapping is untouched
    assert be.data["input_ids"] is ids and be["attention_mask"] is mask and be.encodings is enc
    back = tb.to_numpy(out)
    assert type(back) is FakeBatchEncoding and back.n_sequences == 2 and isinstance(back["input_ids"], np.ndarray)


class Store(MutableMapping[str, Any]):
    """Items in an attribute, no __copy__: a shallow copy would share them, so it must be constructed."""

    def __init__(self, data: Any = None) -> None:
        self._store = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._store[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._store[key] = value

    def __delitem__(self, key: str) -> None:
        del self._store[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)


class CopyableStore(Store):
    def __copy__(self) -> CopyableStore:  # shares _store, as a careless __copy__ would
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new


class IndexedDict(collections.UserDict[str, Any]):
    """Its __setitem__ also writes to another attribute, which a shallow copy shares."""

    def __init__(self, data: Any = None) -> None:
        self.order: list[str] = []
        super().__init__(data)

    def __setitem__(self, key: str, value: Any) -> None:
        self.order.append(key)
        super().__setitem__(key, value)


class FrozenDict(dict[str, Any]):
    def __setitem__(self, key: str, value: Any) -> None:
        raise TypeError("frozen")

    def __copy__(self) -> FrozenDict:
        return FrozenDict(self)


@pytest.mark.parametrize(
    "make",
    [
        lambda a: TaggedDict(k=a, j=a),
        lambda a: collections.OrderedDict(k=a, j=a),
        lambda a: collections.defaultdict(list, k=a, j=a),
        lambda a: collections.Counter(k=a, j=a),
        lambda a: collections.UserDict(k=a, j=a),
        lambda a: FakeBatchEncoding({"k": a, "j": a}),
        lambda a: Store({"k": a, "j": a}),
        lambda a: CopyableStore({"k": a, "j": a}),
        lambda a: IndexedDict({"k": a, "j": a}),
        lambda a: FrozenDict(k=a, j=a),
    ],
    ids=[
        "dict-sub",
        "OrderedDict",
        "defaultdict",
        "Counter",
        "UserDict",
        "BatchEncoding",
        "Store",
        "CopyableStore",
        "IndexedDict",
        "FrozenDict",
    ],
)
def test_mutable_mappings_are_never_mutated_and_come_back_with_exactly_the_converted_items(make: Any) -> None:
    a = np.ones(1)
    m = make(a)
    before = copy.deepcopy(vars(m)) if hasattr(m, "__dict__") else None
    out = tb.to_tensor(m)
    assert type(out) is type(m) and out is not m
    assert list(out) == ["k", "j"] and all(isinstance(out[k], torch.Tensor) for k in out)
    assert list(m) == ["k", "j"] and m["k"] is a and m["j"] is a
    if before is not None:
        assert vars(m).keys() == before.keys()
        for name, value in vars(m).items():
            if isinstance(value, (list, dict)):
                assert len(value) == len(before[name])


def test_defaultdict_subclass_keeps_factory_and_state() -> None:
    class Counts(collections.defaultdict[str, Any]):
        pass

    c = Counts(list, {"k": np.ones(1)})
    c.tag = "t"  # type: ignore[attr-defined]
    out = tb.to_tensor(c)
    assert type(out) is Counts and out.default_factory is list and out.tag == "t"  # type: ignore[attr-defined]


def test_mapping_whose_constructor_builds_other_keys_still_raises() -> None:
    class Renaming(ReadOnlyView):
        def __init__(self, data: Any = None) -> None:
            super().__init__({f"new_{k}": v for k, v in dict(data or {}).items()})

    with pytest.raises(tb.StructureError, match="did not rebuild the same keys"):
        tb.to_tensor(Renaming({"a": np.ones(1)}))


# --- 4. torch pytree registrations ---------------------------------------------------------


class _Pair:
    def __init__(self, first: Any, second: Any, label: str = "") -> None:
        self.first, self.second, self.label = first, second, label


def _register_torch(cls: type, *, keys: bool) -> None:
    def flatten(p: Any) -> tuple[list[Any], Any]:
        return [p.first, p.second], p.label

    def unflatten(kids: Any, label: Any) -> Any:
        return cls(*kids, label)

    def with_keys(p: Any) -> tuple[list[tuple[Any, Any]], Any]:
        return [(pytree.GetAttrKey("first"), p.first), (pytree.GetAttrKey("second"), p.second)], p.label

    pytree.register_pytree_node(cls, flatten, unflatten, flatten_with_keys_fn=with_keys if keys else None)


def test_torch_pytree_classes_are_walked_both_ways() -> None:
    class Pair(_Pair):
        pass

    _register_torch(Pair, keys=True)
    out = tb.to_tensor({"p": Pair(np.ones(2), [np.zeros(1)], "lbl")})["p"]
    assert type(out) is Pair and out.label == "lbl"
    assert isinstance(out.first, torch.Tensor) and isinstance(out.second[0], torch.Tensor)
    back = tb.to_numpy(out)
    assert type(back) is Pair and isinstance(back.first, np.ndarray) and isinstance(back.second[0], np.ndarray)


def test_torch_pytree_key_paths_use_its_keys_else_indices() -> None:
    class Keyed(_Pair):
        pass

    class Plain(_Pair):
        pass

    _register_torch(Keyed, keys=True)
    _register_torch(Plain, keys=False)
    bad = np.array(["text"])
    with pytest.raises(tb.UnsupportedError) as keyed:
        tb.to_tensor({"k": Keyed(np.ones(1), bad)})
    assert keyed.value.path == "data['k'].second"
    with pytest.raises(tb.UnsupportedError) as plain:
        tb.to_tensor([Plain(np.ones(1), bad)])
    assert plain.value.path == "data[0][1]"


def test_a_pytree_registration_after_a_first_conversion_counts() -> None:
    class Late(_Pair):
        pass

    a = np.ones(1)
    first = tb.to_tensor({"x": Late(a, a)})  # not registered yet: a leaf, passed through
    assert isinstance(first["x"].first, np.ndarray)
    _register_torch(Late, keys=False)
    second = tb.to_tensor({"x": Late(a, a)})
    assert isinstance(second["x"].first, torch.Tensor)
    assert isinstance(tb.to_tensor(Late(a, a), dtype=torch.float32).first, torch.Tensor)


def test_a_pytree_node_that_cannot_be_walked_is_a_structure_error_with_the_fix() -> None:
    class Broken(_Pair):
        pass

    def flatten(p: Any) -> tuple[list[Any], Any]:
        raise RuntimeError("no children today")

    pytree.register_pytree_node(Broken, flatten, lambda kids, ctx: Broken(*kids))
    with pytest.raises(tb.StructureError) as info:
        tb.to_tensor({"b": Broken(np.ones(1), 1)})
    assert str(info.value) == (
        "container walk at data['b']: Broken could not be taken apart by its torch.utils._pytree registration "
        "(RuntimeError: no children today). Fix its torch.utils._pytree registration, or register the type with "
        "tensorbridge.register_container."
    )

    class NoRebuild(_Pair):
        pass

    def refuse(kids: Any, ctx: Any) -> Any:
        raise ValueError("read-only")

    pytree.register_pytree_node(NoRebuild, lambda p: ([p.first], None), refuse)
    with pytest.raises(tb.StructureError, match=r"at data\[0\]: NoRebuild could not be rebuilt by its torch"):
        tb.to_numpy([NoRebuild(torch.ones(1), None)])


def test_a_pytree_unflatten_that_converts_the_leaves_back_is_refused() -> None:
    class Coercing(_Pair):
        pass

    def unflatten(kids: Any, ctx: Any) -> Any:
        return Coercing(*(torch.as_tensor(k) for k in kids))  # makes tensors of whatever it gets

    pytree.register_pytree_node(Coercing, lambda p: ([p.first, p.second], None), unflatten)
    assert isinstance(tb.to_tensor(Coercing(np.ones(1), np.ones(1))).first, torch.Tensor)
    with pytest.raises(tb.StructureError) as info:
        tb.to_numpy({"c": Coercing(torch.ones(1), torch.ones(1))})
    assert str(info.value).startswith(
        "container rebuild at data['c']: Coercing could not be rebuilt by its torch.utils._pytree registration from "
        "its converted items (its unflatten turned the ndarray given as child 0 into a Tensor)."
    )


def test_torch_own_registrations_still_convert() -> None:
    values, indices = torch.ones(3, 2).max(dim=1)
    out = tb.to_numpy(torch.ones(3, 2).max(dim=1))
    assert type(out).__name__ == "max" and isinstance(out.values, np.ndarray)
    assert np.array_equal(out.indices, indices.numpy()) and np.array_equal(out.values, values.numpy())
    assert tb.to_tensor(torch.Size([2, 3])) == torch.Size([2, 3])


def test_register_container_comes_before_a_pytree_registration() -> None:
    class Both(_Pair):
        pass

    _register_torch(Both, keys=False)
    tb.register_container(
        Both, lambda p: ([p.first], ["first"], p), lambda orig, p, kids: Both(kids[0], "mine"), key_style="attr"
    )
    out = tb.to_tensor(Both(np.ones(1), np.ones(1)))
    assert isinstance(out.first, torch.Tensor) and out.second == "mine"


# --- 4b. optree registrations, by namespace ------------------------------------------------


def test_optree_namespaces_must_be_named_and_then_are_walked() -> None:
    optree = pytest.importorskip("optree")

    class Node(_Pair):
        pass

    optree.register_pytree_node(
        Node,
        lambda n: ((n.first, n.second), n.label, ("first", "second")),
        lambda label, kids: Node(*kids, label),
        namespace="tb-test-walked",
    )
    data = {"n": Node(np.ones(1), np.zeros(2), "L")}
    with pytest.raises(tb.StructureError) as info:
        tb.to_tensor(data)
    assert str(info.value) == (
        "container walk at data['n']: Node is registered with optree in namespace 'tb-test-walked', which "
        "tensorbridge was not told to consult, so its arrays would not be reached. Call "
        "tensorbridge.register_optree_namespace('tb-test-walked') before converting, or register the type with "
        "tensorbridge.register_container."
    )
    tb.register_optree_namespace("tb-test-walked")
    out = tb.to_tensor(data)["n"]
    assert type(out) is Node and out.label == "L" and isinstance(out.second, torch.Tensor)
    assert isinstance(tb.to_numpy(out).first, np.ndarray)
    with pytest.raises(tb.UnsupportedError) as bad:
        tb.to_tensor(Node(np.ones(1), np.array(["s"])))
    assert bad.value.path == "data['second']"


def test_optree_attribute_entries_print_as_attributes_and_late_registrations_count() -> None:
    optree = pytest.importorskip("optree")

    class Late(_Pair):
        pass

    tb.register_optree_namespace("tb-test-late")
    a = np.ones(1)
    assert isinstance(tb.to_tensor([Late(a, a)])[0].first, np.ndarray)  # a leaf so far
    optree.register_pytree_node(
        Late,
        lambda n: ((n.first, n.second), None, ("first", "second")),
        lambda _, kids: Late(*kids),
        path_entry_type=optree.GetAttrEntry,
        namespace="tb-test-late",
    )
    assert isinstance(tb.to_tensor([Late(a, a)])[0].first, torch.Tensor)
    with pytest.raises(tb.UnsupportedError) as info:
        tb.to_tensor([Late(a, np.array(["s"]))])
    assert info.value.path == "data[0].second"


def test_optree_builtin_kinds_stay_tensorbridges_own() -> None:
    pytest.importorskip("optree")
    dd: collections.defaultdict[str, Any] = collections.defaultdict(int, {"k": np.ones(1)})
    out = tb.to_tensor({"dd": dd, "none": None, "nt": TaggedPoint(np.ones(1), None)})
    assert out["none"] is None and out["dd"].default_factory is int and isinstance(out["nt"].x, torch.Tensor)


def test_register_optree_namespace_checks_its_argument() -> None:
    with pytest.raises(tb.UnsupportedError, match="is not a namespace"):
        tb.register_optree_namespace("")
    with pytest.raises(TypeError):
        tb.register_optree_namespace(3)  # type: ignore[arg-type]


def test_pytree_support_imports_neither_optree_nor_tensordict() -> None:
    code = (
        "import sys, numpy as np, collections, tensorbridge as tb\n"
        "tb.register_optree_namespace('x')\n"
        "tb.to_numpy(tb.to_tensor({'a': collections.ChainMap({'x': np.ones(1)}), 'b': collections.UserDict()}))\n"
        "bad = [m for m in ('optree', 'tensordict') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- 5. TensorDict -------------------------------------------------------------------------


@pytest.fixture
def td_mod() -> Any:
    return pytest.importorskip("tensordict")


def test_tensordict_to_numpy_is_a_nested_dict_of_arrays_bfloat16_too(td_mod: Any) -> None:
    td = td_mod.TensorDict(
        {"obs": torch.arange(6.0).reshape(2, 3), "nested": {"w": torch.ones(2, dtype=torch.bfloat16)}},
        batch_size=[2],
    )
    out = tb.to_numpy(td)
    assert type(out) is dict and type(out["nested"]) is dict
    assert out["obs"].tolist() == [[0, 1, 2], [3, 4, 5]] and np.shares_memory(out["obs"], td["obs"].numpy())
    assert out["nested"]["w"].dtype.name == "bfloat16" and out["nested"]["w"].astype(np.float32).tolist() == [1, 1]
    assert list(out) == ["obs", "nested"]


def test_tensordict_to_tensor_stays_a_tensordict(td_mod: Any) -> None:
    td = td_mod.TensorDict({"a": torch.ones(4, 2), "n": {"b": torch.zeros(4)}}, batch_size=[4], device="cpu")
    td.refine_names("N")
    td.lock_()
    out = tb.to_tensor({"td": td})["td"]
    assert type(out) is td_mod.TensorDict and out is not td
    assert out.batch_size == torch.Size([4]) and out.device == torch.device("cpu") and out.names == ["N"]
    assert out.is_locked and out["a"] is td["a"] and isinstance(out["n"], td_mod.TensorDict)
    half = tb.to_tensor(td, dtype=torch.float16)
    assert half["a"].dtype is torch.float16 and half["n", "b"].dtype is torch.float16 and td["a"].dtype is torch.float32


def test_tensordict_moved_to_a_device_is_bound_to_that_device(td_mod: Any) -> None:
    td = td_mod.TensorDict({"a": torch.ones(2), "n": {"b": torch.zeros(2)}, "e": {}}, batch_size=[2], device="cpu")
    out = tb.to_tensor(td, device="meta")
    assert out.device == torch.device("meta") and out["a"].device.type == "meta"
    assert out["n"].device == torch.device("meta") and out["n", "b"].device.type == "meta"
    free = td_mod.TensorDict({"a": torch.ones(2)}, batch_size=[2])
    assert tb.to_tensor(free, device="meta").device is None  # no device before, none after


def test_tensordict_from_arrays_and_back(td_mod: Any) -> None:
    arrays = {"a": np.ones((2, 2), dtype=np.float32)}
    td = td_mod.TensorDict(tb.to_tensor(arrays), batch_size=[2])
    assert tb.to_numpy(td)["a"].tolist() == [[1, 1], [1, 1]]


def test_tensordict_non_tensor_entries_and_empty_ones(td_mod: Any) -> None:
    td = td_mod.TensorDict({"a": torch.ones(2), "empty": {}}, batch_size=[2])
    td.set_non_tensor("name", "episode-1")
    td.set_non_tensor("meta", [1, 2])
    out = tb.to_numpy(td)
    assert out == {"a": out["a"], "empty": {}, "name": "episode-1", "meta": [1, 2]}
    back = tb.to_tensor(td)
    assert isinstance(back, td_mod.TensorDict) and back["name"] == "episode-1" and back["meta"] == [1, 2]
    assert list(back.keys()) == ["a", "empty", "name", "meta"]
    nothing = td_mod.TensorDict(batch_size=[3])  # nothing to convert: it stays what it is
    assert isinstance(tb.to_numpy(nothing), td_mod.TensorDict) and tb.to_tensor(nothing).batch_size == (3,)


def test_other_tensordict_kinds_are_refused_with_the_fix(td_mod: Any) -> None:
    stack = td_mod.LazyStackedTensorDict.lazy_stack([td_mod.TensorDict({"a": torch.ones(2)}) for _ in range(2)])
    with pytest.raises(tb.UnsupportedError) as info:
        tb.to_numpy({"s": stack})
    assert str(info.value) == (
        "container walk at data['s']: a LazyStackedTensorDict is not a plain TensorDict, which is the kind "
        "tensorbridge rebuilds. Convert td.to_tensordict() instead."
    )
    assert tb.to_numpy({"s": stack.to_tensordict()})["s"]["a"].shape == (2, 2)


def test_tensorclass_goes_to_tensors_and_refuses_arrays_with_the_fix(td_mod: Any) -> None:
    @td_mod.tensorclass
    class Obs:
        x: torch.Tensor
        name: str

    obs = Obs(torch.ones(2, 3), "cam", batch_size=[2])
    half = tb.to_tensor({"o": obs}, dtype=torch.float16)["o"]
    assert type(half) is Obs and half.x.dtype is torch.float16 and half.name == "cam" and obs.x.dtype is torch.float32
    with pytest.raises(tb.UnsupportedError) as info:
        tb.to_numpy({"o": obs})
    assert str(info.value) == (
        "container rebuild at data['o']: Obs is a tensorclass, which holds tensors only: it would turn the arrays back "
        "into tensors. Convert tc.to_tensordict() instead, which becomes a dict of arrays."
    )
    plain = tb.to_numpy(obs.to_tensordict())
    assert isinstance(plain["x"], np.ndarray) and plain["name"] == "cam"


def test_tensordict_explain_lists_its_leaves(td_mod: Any) -> None:
    td = td_mod.TensorDict({"a": torch.ones(2), "n": {"b": torch.zeros(2)}}, batch_size=[2])
    assert [p.path for p in tb.explain(td, to="numpy").plans] == ["data['a']", "data['n']['b']"]


# --- 6. torch.nn.Module is refused wherever it is -------------------------------------------

_MODULE_FIX = (
    "Linear is a torch.nn.Module, not data: its parameters and buffers would come back unconverted. "
    "Convert model.state_dict() (parameters and buffers) or dict(model.named_parameters()) instead."
)


@pytest.mark.parametrize("verb", ["to_tensor", "to_numpy", "explain"])
@pytest.mark.parametrize(("wrap", "path"), [(lambda m: m, "data"), (lambda m: {"model": [1, m]}, "data['model'][1]")])
def test_modules_are_refused_with_the_fix(verb: str, wrap: Any, path: str) -> None:
    model = torch.nn.Linear(2, 2)
    with pytest.raises(tb.UnsupportedError) as info:
        getattr(tb, verb)(wrap(model))
    assert str(info.value) == f"container walk at {path}: {_MODULE_FIX}"
    assert isinstance(info.value, TypeError)


def test_module_containers_are_modules_too_and_the_fix_works() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    for obj in (model, torch.nn.ParameterDict({"w": torch.nn.Parameter(torch.ones(1))})):
        with pytest.raises(tb.UnsupportedError, match=r"is a torch.nn.Module, not data"):
            tb.to_numpy({"m": obj})
    assert set(tb.to_numpy(model.state_dict())) == {"0.weight", "0.bias"}
    assert isinstance(tb.to_numpy(dict(model.named_parameters()))["0.weight"], np.ndarray)


# --- 7. the key styles, as documented -------------------------------------------------------


def test_key_styles_print_as_documented() -> None:
    assert format_path(((((), "item", "images"), "index", 3), "attr", "mask")) == "data['images'][3].mask"
    assert format_path(((), "entry", pytree.MappingKey("k"))) == "data['k']"
    doc = tb.register_container.__doc__ or ""
    for style, shown in (("item", "data['images']"), ("index", "data[3]"), ("attr", "data.mask")):
        assert f'``"{style}"``' in doc and shown in doc
