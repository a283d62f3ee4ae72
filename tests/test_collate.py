"""tb.collate and tb.Collate: what torch's default_collate gets wrong, done right.

Containers keep their types, every dtype and layout stacks bit for bit into fresh memory,
nothing is promoted or dropped silently (each refusal names the sample and the key path),
and the options (dtype casts, shared and pinned memory) behave as documented. Where it is
cheap and stable, a test also records what default_collate does instead.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import pickle
import types
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import attrs
import ml_dtypes
import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import default_collate

import tensorbridge as tb

from .helpers import EXACT_ROWS, bits, random_bits

# The module, not the function of the same name that tensorbridge.batch exports.
collate_module = importlib.import_module("tensorbridge.batch.collate")


def f32(*values: float) -> np.ndarray[Any, Any]:
    return np.array(values, dtype=np.float32)


def shares(t: torch.Tensor, a: np.ndarray[Any, Any] | torch.Tensor) -> bool:
    """Whether the tensor's memory overlaps ``a``'s (a NumPy array or a CPU tensor)."""
    other = a.numpy() if isinstance(a, torch.Tensor) else a
    return bool(np.shares_memory(tb.to_numpy(t), other))


def leaves(batch: Any) -> list[torch.Tensor]:
    return [leaf for _, leaf in tb.tree.iter_leaves(batch, lambda x: isinstance(x, torch.Tensor))]


# --- 1. containers keep their types --------------------------------------------------------


class Point(NamedTuple):
    xy: np.ndarray[Any, Any]
    label: int


@dataclasses.dataclass
class Item:
    image: np.ndarray[Any, Any]
    label: int
    name: str = "item"


@dataclasses.dataclass(frozen=True)
class FrozenItem:
    image: np.ndarray[Any, Any]
    label: int


@attrs.define
class AttrsItem:
    image: np.ndarray[Any, Any]
    label: int


@attrs.frozen
class FrozenAttrsItem:
    image: np.ndarray[Any, Any]
    label: int


class ReadOnlyMap(Mapping[str, Any]):
    """A Mapping that is neither a dict nor registered anywhere."""

    def __init__(self, items: dict[str, Any]) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class Registered:
    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b


tb.register_container(
    Registered, lambda r: ((r.a, r.b), ("a", "b"), None), lambda r, aux, kids: Registered(*kids), key_style="attr"
)


class PytreeNode:
    def __init__(self, x: Any, y: Any) -> None:
        self.x, self.y = x, y


pytree.register_pytree_node(PytreeNode, lambda p: ([p.x, p.y], None), lambda kids, ctx: PytreeNode(*kids))


def test_tuples_stay_tuples_and_lists_stay_lists() -> None:
    a = f32(1, 2)
    out = tb.collate([(a, 1), (a * 2, 2)])
    assert type(out) is tuple and len(out) == 2
    assert out[0].tolist() == [[1, 2], [2, 4]] and out[0].dtype is torch.float32
    assert out[1].tolist() == [1, 2] and out[1].dtype is torch.int64
    assert type(default_collate([(a, 1), (a * 2, 2)])) is list  # default_collate turns tuples into lists
    listed = tb.collate([[a, 1], [a, 2]])
    assert type(listed) is list and listed[1].tolist() == [1, 2]


def test_namedtuples_keep_their_type() -> None:
    out = tb.collate([Point(f32(0, 1), 3), Point(f32(2, 3), 4)])
    assert type(out) is Point
    assert out.xy.tolist() == [[0, 1], [2, 3]] and out.label.tolist() == [3, 4]


@pytest.mark.parametrize("cls", [Item, FrozenItem], ids=["dataclass", "frozen"])
def test_dataclasses_keep_type_and_fields(cls: type) -> None:
    out = tb.collate([cls(image=f32(1), label=5), cls(image=f32(2), label=6)])
    assert type(out) is cls
    assert out.image.tolist() == [[1], [2]] and out.image.dtype is torch.float32
    assert out.label.tolist() == [5, 6]
    if cls is Item:
        assert out.name == ["item", "item"]  # a str field passes through as a list
    with pytest.raises(TypeError, match="dicts or lists"):  # default_collate refuses dataclasses
        default_collate([cls(image=f32(1), label=5)])


@pytest.mark.parametrize("cls", [AttrsItem, FrozenAttrsItem], ids=["define", "frozen"])
def test_attrs_classes_keep_type_and_fields(cls: type) -> None:
    out = tb.collate([cls(image=f32(1, 2), label=0), cls(image=f32(3, 4), label=1)])
    assert type(out) is cls
    assert out.image.tolist() == [[1, 2], [3, 4]] and out.label.tolist() == [0, 1]


def test_every_mapping_keeps_its_type() -> None:
    a = f32(1)
    od = tb.collate([collections.OrderedDict(x=a, y=1), collections.OrderedDict(x=a, y=2)])
    assert type(od) is collections.OrderedDict and list(od) == ["x", "y"] and od["y"].tolist() == [1, 2]

    dd = tb.collate([collections.defaultdict(list, x=a), collections.defaultdict(list, x=a * 2)])
    assert type(dd) is collections.defaultdict and dd.default_factory is list
    assert dd["x"].tolist() == [[1], [2]]

    m = tb.collate([ReadOnlyMap({"x": a, "y": 1}), ReadOnlyMap({"y": 2, "x": a * 3})])
    assert type(m) is ReadOnlyMap and list(m) == ["x", "y"]
    assert m["x"].tolist() == [[1], [3]] and m["y"].tolist() == [1, 2]

    proxy = tb.collate([types.MappingProxyType({"x": a}), types.MappingProxyType({"x": a})])
    assert type(proxy) is types.MappingProxyType and proxy["x"].tolist() == [[1], [1]]

    ud = tb.collate([collections.UserDict(x=1), collections.UserDict(x=2)])
    assert type(ud) is collections.UserDict and ud["x"].tolist() == [1, 2]


def test_registered_and_pytree_containers_keep_their_types() -> None:
    reg = tb.collate([Registered(f32(1), 1), Registered(f32(2), 2)])
    assert type(reg) is Registered and reg.a.tolist() == [[1], [2]] and reg.b.tolist() == [1, 2]
    with pytest.raises(tb.StructureError, match=r"at samples\[1\]\.a: shape \(2,\) differs from samples\[0\]\.a's"):
        tb.collate([Registered(f32(1), 1), Registered(f32(1, 2), 2)])

    node = tb.collate([PytreeNode(f32(1), 1), PytreeNode(f32(2), 2)])
    assert type(node) is PytreeNode and node.x.tolist() == [[1], [2]] and node.y.tolist() == [1, 2]


def test_a_type_registered_with_pytree_after_a_collate_is_a_container_at_once() -> None:
    class Late:
        def __init__(self, x: Any, y: Any) -> None:
            self.x, self.y = x, y

    with pytest.raises(tb.UnsupportedError, match=r"at samples\[0\]: .*Late is not an array or tensor"):
        tb.collate([Late(f32(1), 1)] * 2)  # a leaf, until registered
    pytree.register_pytree_node(Late, lambda p: ([p.x, p.y], None), lambda kids, ctx: Late(*kids))
    try:
        out = tb.collate([Late(f32(1), 1), Late(f32(2), 2)])
        assert type(out) is Late and out.x.tolist() == [[1], [2]] and out.y.tolist() == [1, 2]
    finally:
        pytree._deregister_pytree_node(Late)


def test_nested_containers_keep_every_type() -> None:
    def sample(i: int) -> dict[str, Any]:
        return {"a": [Point(f32(i), i), (FrozenItem(f32(i, i), i), {"deep": i * 1.5})], "n": "s"}

    out = tb.collate([sample(0), sample(1), sample(2)])
    assert type(out) is dict and type(out["a"]) is list and type(out["a"][0]) is Point
    assert type(out["a"][1]) is tuple and type(out["a"][1][0]) is FrozenItem and type(out["a"][1][1]) is dict
    assert out["a"][0].xy.tolist() == [[0], [1], [2]] and out["a"][0].label.tolist() == [0, 1, 2]
    assert out["a"][1][0].image.tolist() == [[0, 0], [1, 1], [2, 2]]
    assert out["a"][1][1]["deep"].tolist() == [0.0, 1.5, 3.0] and out["a"][1][1]["deep"].dtype is torch.float64
    assert out["n"] == ["s", "s", "s"]


# --- 2. bfloat16 and float8 -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_bfloat16_and_float8_columns_are_bit_exact(name: str) -> None:
    if not hasattr(torch, name):
        pytest.skip(f"torch {torch.__version__} lacks {name}")
    row = next(r for r in EXACT_ROWS if r.name == name)
    assert row.numpy == np.dtype(getattr(ml_dtypes, name))
    arrays = [random_bits(row, (2, 3), seed=i) for i in range(3)]
    out = tb.collate({"x": a} for a in arrays)["x"]
    assert out.dtype is getattr(torch, name) and out.shape == (3, 2, 3)
    assert out.view(torch.uint8).numpy().tobytes() == bits(np.stack(arrays))
    with pytest.raises(TypeError, match=r"can't convert np.ndarray of type ml_dtypes"):
        default_collate(arrays)


# --- 3. strides, byte order, read-only memory, fresh memory -----------------------------------


def test_negative_strides_stack_with_the_right_values() -> None:
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    flipped = [img[..., ::-1], (img + 1)[..., ::-1]]
    out = tb.collate(flipped)
    assert out.dtype is torch.uint8 and out.tolist() == [f.tolist() for f in flipped]
    assert not shares(out, img)
    with pytest.raises(ValueError, match="negative"):
        default_collate(flipped)


@pytest.mark.parametrize("spelling", [">f4", ">i8"])
def test_big_endian_values_stack_into_native_order(spelling: str) -> None:
    values = [(np.arange(4) * (i + 1)).astype(spelling) for i in range(3)]
    values.append((np.arange(4) * 4).astype(spelling.replace(">", "<")))  # either order in one column
    assert values[0].dtype.byteorder == ">" and values[3].dtype.isnative
    out = tb.collate(values)
    native = np.dtype(spelling).newbyteorder("=")
    assert out.dtype is tb.torch_dtype(native) and out.tolist() == [
        [0, 1, 2, 3],
        [0, 2, 4, 6],
        [0, 3, 6, 9],
        [0, 4, 8, 12],
    ]
    assert tb.to_numpy(out).dtype == native and tb.to_numpy(out).dtype.isnative
    with pytest.raises(ValueError, match="byte order"):
        default_collate(values[:1])


def test_read_only_arrays_are_copied_without_a_warning() -> None:
    a = np.arange(3.0)
    a.flags.writeable = False
    for samples in ([a, a], [a]):  # a batch of one is a copy too
        out = tb.collate(samples)  # filterwarnings=error: no "not writable" warning
        assert out.dtype is torch.float64 and out.tolist() == [[0, 1, 2]] * len(samples)
        assert not shares(out, a)
        out[0, 0] = 42.0
        assert a.tolist() == [0, 1, 2]


def test_a_batch_of_one_is_fresh_memory() -> None:
    a, t = np.arange(4, dtype=np.int32), torch.arange(4)
    out = tb.collate([{"a": a, "t": t, "flip": a[::-1]}])
    assert out["a"].tolist() == [[0, 1, 2, 3]] and out["t"].tolist() == [[0, 1, 2, 3]]
    assert out["flip"].tolist() == [[3, 2, 1, 0]]
    assert not shares(out["a"], a) and not shares(out["t"], t) and not shares(out["flip"], a)
    assert out["t"].untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
    out["a"][0, 0] = 9
    out["t"][0, 0] = 9
    assert a[0] == 0 and t[0] == 0


# --- 4. tensors: grad, Parameters, mixed with arrays ------------------------------------------


def test_tensors_that_require_grad_are_copied_into_a_batch_without_grad() -> None:
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    out = tb.collate([w, w * 3])
    assert out.tolist() == [[1, 2], [3, 6]] and not out.requires_grad and out.grad_fn is None
    assert default_collate([w, w * 3]).requires_grad  # default_collate keeps the graph


def test_parameters_stack_into_a_plain_tensor() -> None:
    p = torch.nn.Parameter(torch.tensor([0.5, 1.5]))
    out = tb.collate([{"p": p}, {"p": p}])["p"]
    assert type(out) is torch.Tensor and not out.requires_grad
    assert out.tolist() == [[0.5, 1.5], [0.5, 1.5]] and not shares(out, p.detach())


def test_arrays_and_tensors_mix_in_one_column() -> None:
    ro = f32(4, 5)
    ro.flags.writeable = False
    column = [f32(0, 1), torch.tensor([2.0, 3.0]), ro, f32(7, 6)[::-1], torch.tensor([8.0, 9.0], requires_grad=True)]
    out = tb.collate(column)
    assert out.dtype is torch.float32 and not out.requires_grad
    assert out.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    first_tensor = tb.collate([torch.zeros(2, dtype=torch.bfloat16), np.ones(2, ml_dtypes.bfloat16)])
    assert first_tensor.dtype is torch.bfloat16 and first_tensor.tolist() == [[0, 0], [1, 1]]
    with pytest.raises(tb.StructureError, match=r"samples\[1\]: dtype float32 differs from samples\[0\]'s float64"):
        tb.collate([np.ones(2), torch.ones(2)])


def test_tensors_on_different_devices_are_refused() -> None:
    with pytest.raises(tb.StructureError, match=r"at samples\[1\]: is on meta where samples\[0\] is on cpu"):
        tb.collate([torch.ones(2), torch.ones(2, device="meta")])
    with pytest.raises(tb.StructureError, match=r"at samples\[1\]: is on meta where samples\[0\] is on cpu"):
        tb.collate([f32(1, 2), torch.ones(2, device="meta")])


def test_sparse_tensors_are_refused_naming_the_sample() -> None:
    with pytest.raises(tb.UnsupportedError, match=r"at samples\[0\]: torch.sparse_coo tensors cannot be stacked"):
        tb.collate([torch.ones(2).to_sparse()] * 2)
    with pytest.raises(tb.UnsupportedError, match=r"at samples\[1\]: is a torch.sparse_coo tensor where samples\[0\]"):
        tb.collate([torch.ones(2), torch.ones(2, dtype=torch.float64).to_sparse()], dtype=torch.float32)


# --- 5. nothing changes silently --------------------------------------------------------------


def test_different_dtypes_are_refused_with_the_fix() -> None:
    with pytest.raises(tb.StructureError, match=r"at samples\[1\]\['x'\]: dtype float64 differs") as info:
        tb.collate([{"x": f32(1)}, {"x": np.ones(1)}])
    assert "dtype=" in str(info.value) and "dtype={np.float64: torch.float32}" in str(info.value)
    with pytest.raises(tb.StructureError, match=r"at samples\[1\]\['x'\]: dtype float32 differs .* int64"):
        tb.collate([{"x": np.ones(1, np.int64)}, {"x": f32(1)}])
    assert default_collate([f32(1), np.ones(1)]).dtype is torch.float64  # default_collate promotes silently


@pytest.mark.parametrize("kind", ["arrays", "tensors", "mixed"])
def test_a_dtype_mapping_casts_the_mapped_dtype_of_a_mixed_column(kind: str) -> None:
    first: Any = f32(1.5, 2)
    second: Any = np.array([3.25, -4.0])
    if kind != "arrays":
        second = torch.from_numpy(second)
    if kind == "tensors":
        first = torch.from_numpy(first)
    for samples in ([first, second], [second, first]):
        out = tb.collate([{"x": v} for v in samples], dtype={np.float64: torch.float32})["x"]
        assert out.dtype is torch.float32
        assert out.tolist() == [[float(v) for v in s] for s in samples]


def test_a_dtype_mapping_applies_once_per_value() -> None:
    chain = {np.float64: torch.float32, np.float32: torch.float16}
    assert tb.collate([np.ones(1), np.ones(1)], dtype=chain).dtype is torch.float32
    # float64 -> float32 and float32 -> float16: two dtypes, refused (never float64 -> float16).
    for samples in ([np.ones(1), f32(1)], [torch.ones(1, dtype=torch.float64), torch.ones(1)]):
        with pytest.raises(tb.StructureError, match=r"samples\[1\]: dtype float16 differs from samples\[0\]'s float32"):
            tb.collate(samples, dtype=chain)
    with pytest.raises(tb.StructureError, match=r"samples\[1\]: dtype int64 differs from samples\[0\]'s float32"):
        tb.collate([f32(1), np.ones(1, np.int64)], dtype={np.float64: torch.float32})


def test_checked_casts_name_the_sample_whose_value_does_not_fit() -> None:
    with pytest.raises(tb.ValueRangeError, match=r"at samples\[1\]\['x'\]: value 1e\+300 does not fit float32"):
        tb.collate([{"x": f32(1, 2)}, {"x": np.array([1, 1e300])}], dtype={np.float64: torch.float32})
    with pytest.raises(tb.ValueRangeError, match=r"at samples\[2\]\['x'\]: value 300 does not fit uint8"):
        tb.collate([{"x": np.array([1, 2])}, {"x": np.array([3, 4])}, {"x": np.array([5, 300])}], dtype=torch.uint8)
    with pytest.raises(tb.ValueRangeError, match=r"at samples\[1\]: value 300 does not fit uint8"):
        tb.collate([1, 300], dtype=torch.uint8)
    fits = tb.collate([{"x": np.array([1, 2])}, {"x": np.array([3, 255])}], dtype=torch.uint8)["x"]
    assert fits.dtype is torch.uint8 and fits.tolist() == [[1, 2], [3, 255]]


def test_an_extra_key_is_refused_naming_the_sample_and_the_key() -> None:
    samples = [{"x": 1}, {"x": 2}, {"x": 3, "y": 4}]
    with pytest.raises(tb.StructureError, match=r"at samples\[2\]: has key 'y' that samples\[0\] lacks"):
        tb.collate(samples)
    assert default_collate(samples).keys() == {"x"}  # default_collate drops it silently


def test_a_missing_key_is_refused_not_a_key_error() -> None:
    samples = [{"x": 1, "y": 2}, {"x": 3, "y": 4}, {"x": 5}]
    with pytest.raises(tb.StructureError, match=r"at samples\[2\]: lacks key 'y' that samples\[0\] has") as info:
        tb.collate(samples)
    assert not isinstance(info.value, KeyError)
    with pytest.raises(KeyError):
        default_collate(samples)
    with pytest.raises(
        tb.StructureError, match=r"samples\[1\]\['m'\]: lacks key 'b' .* has key 'c' that samples\[0\]\['m'\]"
    ):
        tb.collate([{"m": {"a": 1, "b": 2}}, {"m": {"a": 1, "c": 2}}])
    with pytest.raises(tb.StructureError, match=r"at samples\[1\]: lacks key 'y' that samples\[0\] has"):
        tb.collate([ReadOnlyMap({"x": 1, "y": 2}), ReadOnlyMap({"x": 1})])


def test_keys_in_another_order_are_fine() -> None:
    out = tb.collate([{"x": 1, "y": f32(1)}, {"y": f32(2), "x": 2}])
    assert list(out) == ["x", "y"] and out["x"].tolist() == [1, 2] and out["y"].tolist() == [[1], [2]]


def test_different_lengths_are_refused() -> None:
    with pytest.raises(tb.StructureError, match=r"at samples\[1\]\['a'\]: has 1 item where samples\[0\]\['a'\] has 2"):
        tb.collate([{"a": [1, 2]}, {"a": [1]}])
    with pytest.raises(tb.StructureError, match=r"at samples\[2\]: has 3 items where samples\[0\] has 2"):
        tb.collate([(1, 2), (1, 2), (1, 2, 3)])


def test_different_shapes_are_refused_naming_the_nested_path() -> None:
    good = {"image": f32(1, 2), "meta": [{"box": np.zeros((2, 2))}]}
    bad = {"image": f32(1, 2, 3), "meta": [{"box": np.zeros((2, 2))}]}
    with pytest.raises(
        tb.StructureError,
        match=r"at samples\[3\]\['image'\]: shape \(3,\) differs from samples\[0\]\['image'\]'s shape \(2,\)",
    ) as info:
        tb.collate([good, good, good, bad])
    assert "tb.nested_tensor" in str(info.value)
    deep_bad = {"image": f32(1, 2), "meta": [{"box": np.zeros((2, 3))}]}
    with pytest.raises(tb.StructureError, match=r"at samples\[1\]\['meta'\]\[0\]\['box'\]: shape \(2, 3\)"):
        tb.collate([good, deep_bad])
    with pytest.raises(tb.StructureError, match=r"at samples\[1\]: shape \(3,\) differs"):
        tb.collate([torch.ones(2), torch.ones(3)])


def test_different_container_types_are_refused() -> None:
    with pytest.raises(tb.StructureError, match=r"at samples\[1\]: is a list where samples\[0\] is a tuple"):
        tb.collate([(1,), [1]])
    with pytest.raises(tb.StructureError, match=r"at samples\[1\]\['x'\]: is None where samples\[0\]\['x'\] is a dict"):
        tb.collate([{"x": {"y": 1}}, {"x": None}])
    with pytest.raises(
        tb.StructureError, match=r"at samples\[1\]: is a list where samples\[0\] is an array of dtype float32"
    ):
        tb.collate([f32(1), [f32(1)]])
    with pytest.raises(tb.StructureError, match=r"at samples\[1\]: is a tuple where samples\[0\] is an int"):
        tb.collate([1, (1, 2)])


def test_a_masked_array_is_refused() -> None:
    masked = np.ma.masked_array([1, 2], mask=[0, 1])
    with pytest.raises(tb.UnsupportedError, match=r"at samples\[1\]\['m'\]: a masked array's mask would be lost"):
        tb.collate([{"m": np.array([1, 2])}, {"m": masked}])
    with pytest.raises(tb.UnsupportedError, match=r"at samples\[0\]: a masked array's mask"):
        tb.collate([masked, masked])
    assert default_collate([masked]).tolist() == [[1, 2]]  # default_collate drops the mask


def test_none_passes_through_but_never_mixes_with_arrays() -> None:
    out = tb.collate([{"x": None, "y": 1}, {"x": None, "y": 2}])
    assert out["x"] == [None, None] and out["y"].tolist() == [1, 2]
    with pytest.raises(TypeError, match="NoneType"):
        default_collate([None, None])
    with pytest.raises(
        tb.StructureError, match=r"at samples\[1\]\['x'\]: is None where samples\[0\]\['x'\] is an array"
    ):
        tb.collate([{"x": f32(1)}, {"x": None}])
    with pytest.raises(
        tb.StructureError,
        match=r"at samples\[2\]\['x'\]: is an array of dtype float32 where samples\[0\]\['x'\] is None",
    ):
        tb.collate([{"x": None}, {"x": None}, {"x": f32(1)}])
    with pytest.raises(
        tb.StructureError, match=r"at samples\[1\]: is None where samples\[0\] is a tensor of dtype int64"
    ):
        tb.collate([torch.ones(1, dtype=torch.int64), None])


def test_strings_pass_through_as_lists() -> None:
    out = tb.collate([{"s": "a", "n": np.str_("x"), "b": b"\x00"}, {"s": "b", "n": np.str_("y"), "b": b"\x01"}])
    assert type(out["s"]) is list and out["s"] == ["a", "b"]
    assert out["n"] == ["x", "y"] and all(type(v) is np.str_ for v in out["n"])
    assert out["b"] == [b"\x00", b"\x01"]
    with pytest.raises(tb.StructureError, match=r"at samples\[1\]: is an int where samples\[0\] is a str"):
        tb.collate(["a", 1])
    with pytest.raises(tb.StructureError, match=r"at samples\[1\]: is a str where samples\[0\] is an int"):
        tb.collate([1, "a"])


def test_python_numbers_stack_to_one_dtype_each() -> None:
    cases = [
        ([1, -2], torch.int64),
        ([0.5, 2.0], torch.float64),
        ([True, False], torch.bool),
        ([1j, 2.0 + 0j], torch.complex128),
    ]
    for values, dtype in cases:
        out = tb.collate(values)
        assert out.dtype is dtype and out.tolist() == values
    with pytest.raises(tb.StructureError, match=r"at samples\[1\]: is a float where samples\[0\] is an int"):
        tb.collate([1, 2.5])
    assert default_collate([1, 2.5]).dtype is torch.float32  # default_collate promotes silently
    with pytest.raises(tb.StructureError, match=r"at samples\[2\]: is a bool where samples\[0\] is an int"):
        tb.collate([1, 2, True])
    with pytest.raises(tb.ValueRangeError, match=r"at samples\[1\]: 9223372036854775808 does not fit int64"):
        tb.collate([1, 2**63])
    with pytest.raises(tb.ValueRangeError, match=r"at samples\[1\]: -9223372036854775809 does not fit int64"):
        tb.collate([np.int64(1), -(2**63) - 1])
    assert tb.collate([2**63 - 1, -(2**63)]).tolist() == [2**63 - 1, -(2**63)]
    mixed = tb.collate([1, np.int64(2)])  # a Python int is int64, as a NumPy int64 is
    assert mixed.dtype is torch.int64 and mixed.tolist() == [1, 2]


def test_numpy_scalars_stack_to_their_dtype() -> None:
    cases: list[tuple[list[Any], torch.dtype]] = [
        ([np.float32(1.5), np.float32(-2)], torch.float32),
        ([np.int16(3), np.int16(-4)], torch.int16),
        ([np.uint8(255), np.uint8(0)], torch.uint8),
        ([np.bool_(True), np.bool_(False)], torch.bool),
    ]
    for values, dtype in cases:
        out = tb.collate(values)
        assert out.dtype is dtype and out.shape == (2,) and out.tolist() == [v.item() for v in values]
    bf = tb.collate([ml_dtypes.bfloat16(1.5), ml_dtypes.bfloat16(-3)])
    assert bf.dtype is torch.bfloat16 and bf.tolist() == [1.5, -3]
    with pytest.raises(tb.StructureError, match=r"at samples\[1\]: dtype float64 differs from samples\[0\]'s float32"):
        tb.collate([np.float32(1), np.float64(2)])
    with pytest.raises(tb.StructureError, match=r"at samples\[1\]: dtype float32 differs from samples\[0\]'s int64"):
        tb.collate([1, np.float32(2)])


# --- 6. Collate, and where the memory comes from ----------------------------------------------


def test_collate_pickles_compares_and_hashes() -> None:
    fn = tb.Collate(dtype={np.float64: torch.float32})
    back = pickle.loads(pickle.dumps(fn))
    assert type(back) is tb.Collate and back == fn and hash(back) == hash(fn)
    assert tb.Collate(dtype={"float64": "float32"}) == fn  # one mapping, spelled another way
    assert hash(tb.Collate(dtype="float32")) == hash(tb.Collate(dtype=torch.float32))
    assert fn != tb.Collate() and tb.Collate() != tb.Collate(shared=True)
    samples = [{"x": np.ones(2), "id": 1}, {"x": np.zeros(2), "id": 2}]
    a, b = fn(samples), back(samples)
    assert a["x"].dtype is b["x"].dtype is torch.float32 and torch.equal(a["x"], b["x"])
    assert a["id"].dtype is torch.int64 and a["id"].tolist() == b["id"].tolist() == [1, 2]


def test_collate_repr() -> None:
    assert repr(tb.Collate()) == "tb.Collate(dtype=None, pin_memory=False, shared=None)"
    assert (
        repr(tb.Collate(dtype=torch.float32, shared=True))
        == "tb.Collate(dtype=torch.float32, pin_memory=False, shared=True)"
    )


def test_bad_options_are_refused_up_front() -> None:
    with pytest.raises(tb.UnsupportedError, match="pin_memory must be True or False, not 1"):
        tb.Collate(pin_memory=1)  # type: ignore[arg-type]
    with pytest.raises(tb.UnsupportedError, match="shared must be None, True or False, not 'yes'"):
        tb.Collate(shared="yes")  # type: ignore[arg-type]
    with pytest.raises(tb.UnsupportedError, match="'nope' names no dtype"):
        tb.Collate(dtype="nope")
    with pytest.raises(tb.UnsupportedError, match="cannot be both pinned and shared"):
        tb.Collate(pin_memory=True, shared=True)
    with pytest.raises(tb.UnsupportedError, match="cannot be both pinned and shared"):
        tb.collate([f32(1)], pin_memory=True, shared=True)
    with pytest.raises(tb.UnsupportedError, match="pin_memory must be True or False"):
        tb.collate([f32(1)], pin_memory="yes")  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="pins where CUDA is available")
def test_pin_memory_without_cuda_raises_with_the_fix() -> None:
    with pytest.raises(tb.DeviceError, match=r"pin_memory=True needs CUDA.*Pass pin_memory=False; tb.prefetch") as info:
        tb.collate([f32(1)], pin_memory=True)
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(tb.DeviceError, match="pin_memory=True needs CUDA"):
        tb.Collate(pin_memory=True)([f32(1)])


def test_shared_batches_are_one_shared_segment() -> None:
    samples = [
        {"x": f32(i, i), "y": i, "t": torch.full((3,), i), "s": "s", "bf": np.ones(1, ml_dtypes.bfloat16)}
        for i in range(3)
    ]
    out = tb.collate(samples, shared=True)
    assert out["s"] == ["s", "s", "s"]
    assert out["x"].tolist() == [[0, 0], [1, 1], [2, 2]] and out["y"].tolist() == [0, 1, 2]
    assert out["t"].tolist() == [[0] * 3, [1] * 3, [2] * 3] and out["bf"].dtype is torch.bfloat16
    tensors = leaves(out)
    assert len(tensors) == 4 and all(t.is_shared() for t in tensors)
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1
    # Each leaf is its own region of the segment: writing one changes no other.
    out["x"].fill_(7)
    assert out["y"].tolist() == [0, 1, 2] and out["t"][0].tolist() == [0, 0, 0]
    cast = tb.collate(samples, shared=True, dtype={np.float32: torch.float64})["x"]
    assert cast.is_shared() and cast.dtype is torch.float64 and cast.tolist() == [[0, 0], [1, 1], [2, 2]]


def test_main_process_batches_are_private_fresh_memory() -> None:
    samples = [{"x": f32(1), "y": 2}] * 2
    for out in (tb.collate(samples), tb.collate(samples, shared=False), tb.Collate()(samples)):
        assert not any(t.is_shared() for t in leaves(out))
        assert out["x"].untyped_storage().data_ptr() != out["y"].untyped_storage().data_ptr()


def test_in_a_worker_the_default_is_shared_and_pinning_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collate_module, "in_worker", lambda: True)
    out = tb.collate([{"x": f32(1), "y": 2}] * 2)
    assert all(t.is_shared() for t in leaves(out))
    assert not tb.collate([f32(1)], shared=False).is_shared()
    with pytest.raises(tb.DeviceError, match="in a DataLoader worker process"):
        tb.collate([f32(1)], pin_memory=True)


# --- 7. edge cases ----------------------------------------------------------------------------


def test_zero_size_and_zero_dimensional_arrays() -> None:
    empty = tb.collate([np.ones((0, 3), np.float32)] * 2)
    assert empty.shape == (2, 0, 3) and empty.dtype is torch.float32
    scalars = tb.collate([np.array(1.5), np.array(-2.0)])
    assert scalars.shape == (2,) and scalars.dtype is torch.float64 and scalars.tolist() == [1.5, -2.0]


def test_empty_containers() -> None:
    assert tb.collate([{}, {}]) == {}
    assert tb.collate([(), ()]) == ()
    out = tb.collate([{"a": {}, "b": [], "c": 1}, {"a": {}, "b": [], "c": 2}])
    assert out["a"] == {} and out["b"] == [] and out["c"].tolist() == [1, 2]


def test_bare_arrays_and_tensors_are_samples_too() -> None:
    out = tb.collate([np.arange(3), np.arange(3) + 3])
    assert type(out) is torch.Tensor and out.dtype is torch.int64 and out.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert tb.collate([torch.ones(1), torch.zeros(1)]).tolist() == [[1], [0]]


def test_deep_nesting_needs_no_recursion() -> None:
    def deep(i: int) -> Any:
        x: Any = np.array([i])
        for _ in range(3000):
            x = [x]
        return x

    out = tb.collate([deep(1), deep(2)])
    for _ in range(3000):
        assert type(out) is list and len(out) == 1
        out = out[0]
    assert out.tolist() == [[1], [2]]


def test_a_self_referencing_container_is_refused() -> None:
    d: dict[str, Any] = {"x": 1}
    d["self"] = d
    with pytest.raises(tb.StructureError, match=r"at samples\[0\]\['self'\]: the dict contains itself"):
        tb.collate([d, d])
    cyc: list[Any] = []
    cyc.append(cyc)
    with pytest.raises(tb.StructureError, match=r"at samples\[0\]\[0\]: the list contains itself"):
        tb.collate([cyc])
    # A cycle in a later sample only: its structure differs from the first's.
    with pytest.raises(
        tb.StructureError, match=r"at samples\[1\]\[0\]\[0\]: is a list where samples\[0\]\[0\]\[0\] is an int"
    ):
        tb.collate([[[1]], cyc])


def test_no_samples_are_refused() -> None:
    for empty in ([], (), iter([])):
        with pytest.raises(tb.StructureError, match="at samples: there are no samples"):
            tb.collate(empty)


def test_a_generator_of_samples_works() -> None:
    out = tb.collate({"x": f32(i), "i": i} for i in range(3))
    assert out["x"].tolist() == [[0], [1], [2]] and out["i"].tolist() == [0, 1, 2]


def test_other_objects_are_refused_naming_the_sample() -> None:
    with pytest.raises(tb.UnsupportedError, match=r"at samples\[1\]\['o'\]: object is not an array or tensor"):
        tb.collate([{"o": np.ones(1)}, {"o": object()}])
    with pytest.raises(tb.UnsupportedError, match=r"at samples\[0\]: dtype <U1 is not supported"):
        tb.collate([np.array(["a"]), np.array(["b"])])


# --- 8. bit for bit, every dtype --------------------------------------------------------------


def _rows() -> list[Any]:
    rows = []
    for row in EXACT_ROWS:
        try:
            np.zeros(1, row.numpy)
        except (TypeError, ValueError):
            continue
        rows.append(row)
    return rows


ROWS = _rows()


LAYOUTS = ["c", "flip", "fortran", "readonly", "tensor", "swapped"]


@settings(max_examples=50)
@given(
    row=st.sampled_from(ROWS),
    shape=st.lists(st.integers(0, 4), max_size=3).map(tuple),
    layouts=st.lists(st.sampled_from(LAYOUTS), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_collate_equals_np_stack_bit_for_bit(row: Any, shape: tuple[int, ...], layouts: list[str], seed: int) -> None:
    """Random bits (NaN payloads, -0.0) of every dtype, each sample in its own memory layout."""
    arrays = [random_bits(row, shape, seed=seed + i) for i in range(len(layouts))]
    values: list[Any] = []
    for a, layout in zip(arrays, layouts, strict=True):
        if layout == "flip" and a.ndim:
            a = a[..., ::-1].copy()[..., ::-1]  # the same values, negative strides
        elif layout == "fortran" and a.ndim:
            a = np.asfortranarray(a)
        elif layout == "readonly":
            a = a.copy()
            a.flags.writeable = False
        elif layout == "swapped" and a.dtype.itemsize > 1 and a.dtype.kind in "iufc":
            a = a.astype(a.dtype.newbyteorder("S"))  # the same values in the other byte order
        values.append(row.share_as_tensor(a) if layout == "tensor" else a)
    out = tb.collate(values)
    assert out.dtype is row.torch and out.shape == (len(values), *shape) and out.is_contiguous()
    assert out.reshape(-1).view(torch.uint8).numpy().tobytes() == bits(np.stack(arrays))
    assert not any(np.shares_memory(tb.to_numpy(out), a) for a in arrays)


# --- 9. tb.stack shares the column code -------------------------------------------------------


def test_stack_uses_the_same_checks_with_its_own_names() -> None:
    assert tb.stack([1, np.int64(2)]).tolist() == [1, 2]
    with pytest.raises(tb.StructureError, match=r"stack at data\[1\]: dtype float32 differs from data\[0\]'s float64"):
        tb.stack([np.ones(1), f32(1)])
    out = tb.stack([np.ones(2), f32(1, 2)], dtype={np.float64: torch.float32})
    assert out.dtype is torch.float32 and out.tolist() == [[1, 1], [1, 2]]
    with pytest.raises(tb.UnsupportedError, match=r"stack at data\[1\]: str is not an array"):
        tb.stack([np.ones(2), "x"])


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.float32, np.bool_, np.complex128, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ">f4"]
)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_large_values_with_a_reversed_axis_are_copied_exactly(dtype: Any, axis: int) -> None:
    """Values of 16 KiB and more with one reversed axis take torch's index_select: same bytes as np.stack."""
    rng = np.random.default_rng(axis)
    bases = [rng.integers(0, 255, (64, 48, 3), dtype=np.uint8).astype(dtype) for _ in range(5)]
    flip = tuple(slice(None, None, -1) if ax == axis else slice(None) for ax in range(3))
    values = [b[flip] for b in bases]
    values[1] = np.ascontiguousarray(values[1])  # one value in another layout
    values[2] = values[2].copy()[flip][flip]  # reversed twice: positive strides over a copy
    ro = bases[3].copy()[flip]
    ro.flags.writeable = False
    values[3] = ro  # read-only: NumPy's copy, never shared
    got = tb.collate(values)
    want = np.stack([np.asarray(v, np.dtype(dtype).newbyteorder("=")) for v in values])
    assert got.shape == want.shape
    out = tb.to_numpy(got)  # a view of the batch
    assert bits(out) == bits(want)
    assert not any(np.shares_memory(out, v) for v in values)


def test_a_reversed_column_with_another_dtype_or_shape_is_refused() -> None:
    big = np.zeros((64, 48, 3), np.uint8)[..., ::-1]
    with pytest.raises(tb.StructureError, match=r"samples\[1\]: dtype float32 differs"):
        tb.collate([big, big.astype(np.float32)[..., ::-1]])
    with pytest.raises(tb.StructureError, match=r"samples\[1\]: shape \(64, 48, 2\) differs"):
        tb.collate([big, big[..., :2]])


@pytest.mark.parametrize("kind", ["arrays", "tensors", "mixed"])
def test_the_fix_the_refusal_names_works_when_the_target_is_the_first_values_dtype(kind: str) -> None:
    """dtype=torch.float32 on [float32, float64] casts each value (it was refused: the first needs no cast)."""
    first: Any = f32(1.5, 2)
    second: Any = np.array([3.25, 1e300])
    if kind != "arrays":
        second = torch.from_numpy(second)
    if kind == "tensors":
        first = torch.from_numpy(first)
    with pytest.raises(tb.ValueRangeError, match=r"samples\[1\]\['x'\]: value 1e\+300 does not fit float32"):
        tb.collate([{"x": first}, {"x": second}], dtype=torch.float32)
    second[1] = -4.0
    for samples in ([first, second], [second, first]):
        out = tb.collate([{"x": v} for v in samples], dtype=torch.float32)["x"]
        assert out.dtype is torch.float32
        assert out.tolist() == [[float(v) for v in s] for s in samples]
