"""One leaf position of a batch: what it becomes (planned first), then one copy into the result.

:func:`plan` looks at a column (every sample's value at one key path) and decides, before any
memory is allocated, what the batch holds there: a tensor of a known shape, dtype and device,
or, for strings and ``None``, a list. :func:`fill` then writes the column straight into its
result in one copy: ``np.concatenate``/``np.stack`` with ``out=`` for NumPy arrays (through a
NumPy view of the result, so bfloat16/float8, big-endian, negative strides and read-only
arrays all cost one pass), ``torch.stack(out=)`` for tensors. The result never shares memory
with a sample (a batch of one is a copy too), and nothing is cast or promoted unless a
``dtype`` asks for it, and then only with the checked casts of ``tensorbridge.ops.cast``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NoReturn

import numpy as np
import torch

from ..dtype_map import DtypeMap
from ..dtypes import row_for_numpy, row_for_torch
from ..errors import ConversionError, StructureError, UnsupportedError, ValueRangeError
from ..ops.alloc import host_empty
from ..ops.cast import cast_tensor
from ..ops.execute import reversed_into
from ..options import ToTensorOptions, tensor_options
from ..pipeline import convert
from ..tree import Path, format_path, spec_for

__all__ = ["Column", "describe", "fill", "plan"]

Kind = Literal["arrays", "tensors", "list"]

_ARRAYS: Final = frozenset({np.ndarray, np.memmap})
_TENSORS: Final = frozenset({torch.Tensor, torch.nn.Parameter})
_TEXT: Final = (str, bytes, type(None))
# Python numbers stack as default_collate stacks them: each type to one dtype, never mixed.
_NUMBERS: Final[dict[type, np.dtype[Any]]] = {
    bool: np.dtype(np.bool_),
    int: np.dtype(np.int64),
    float: np.dtype(np.float64),
    complex: np.dtype(np.complex128),
}
_CPU: Final = torch.device("cpu")
_RAGGED_FIX: Final = "Pad or resize them to one shape, or use tb.nested_tensor for ragged data"


class Name:
    """Names sample ``i``'s value of one column in messages: ``samples[3]['image']``."""

    __slots__ = ("path", "root", "what")

    def __init__(self, what: str, root: str, path: Path) -> None:
        self.what, self.root, self.path = what, root, path

    def __call__(self, i: int) -> str:
        return format_path(self.path, f"{self.root}[{i}]")


@dataclass(slots=True)
class Column:
    """What one leaf position of the batch becomes.

    Attributes:
        kind: ``"arrays"`` (NumPy values, stacked through a NumPy view), ``"tensors"``
            (``torch.stack``), or ``"list"`` (strings and ``None``, passed through).
        values: the column's values, as they are stacked (arrays, or tensors).
        shape: the batch leaf's shape (the stacked axis first).
        dtype: the dtype the values are stacked in.
        target: the batch leaf's dtype (``dtype`` unless a checked cast follows).
        device: where the batch leaf lives.
        name: the column's key path in sample ``i``.
    """

    kind: Kind
    values: Sequence[Any]
    shape: tuple[int, ...] = ()
    dtype: torch.dtype = torch.uint8
    target: torch.dtype = torch.uint8
    device: torch.device = _CPU
    name: Name = None  # type: ignore[assignment]  # set by plan

    @property
    def nbytes(self) -> int:
        """The bytes of the batch leaf (0 for a list)."""
        return 0 if self.kind == "list" else math.prod(self.shape) * self.target.itemsize


def plan(
    values: Sequence[Any], path: Path, opts: ToTensorOptions, root: str, *, text: bool, what: str = "collate"
) -> Column:
    """Decide what the column ``values`` (sample ``i``'s value at ``path`` is ``values[i]``) becomes.

    ``root`` names the samples in messages (``samples`` gives ``samples[3]['image']``), ``what``
    the operation;
    ``text`` lets columns of strings and ``None`` through as lists.

    Raises:
        StructureError: (ValueError) values of different shapes, dtypes, devices or kinds.
        UnsupportedError: (TypeError) a value that is not an array, tensor, number or string,
            or one ``to_tensor`` refuses (a masked array, a string array).
        ValueRangeError: (ValueError) a Python int beyond int64.
    """
    name = Name(what, root, path)
    kinds = set(map(type, values))
    head = values[0]
    if kinds <= _ARRAYS or (len(kinds) == 1 and isinstance(head, np.generic) and not isinstance(head, _TEXT)):
        row = row_for_numpy(head.dtype)
        if row is not None and row.exact:
            return _arrays(values, opts, name)
    elif kinds <= _TENSORS:
        return _tensors(values, opts, name)
    elif len(kinds) == 1 and type(head) in _NUMBERS:
        return _arrays(_numbers(values, name), opts, name, numbers=True)
    elif kinds <= _NUMBERS.keys():
        i = next(i for i, v in enumerate(values) if type(v) is not type(head))
        raise StructureError(
            name.what,
            name(i),
            f"is {describe(values[i])} where {name(0)} is {describe(head)}",
            f"Make them one type in the dataset ({type(values[i]).__name__}(x) for every sample, say): "
            "a batch of Python numbers is never promoted",
        )
    elif text and all(isinstance(v, _TEXT) for v in values):
        return Column("list", values, name=name)
    elif text and isinstance(head, _TEXT):  # a string or None first, then something else
        i = next(i for i, v in enumerate(values) if not isinstance(v, _TEXT))
        _kinds_differ(values, i, name)
    elif kinds <= _ARRAYS | _TENSORS and _on_cpu(values):
        return _tensors([_as_tensor(v) for v in values], opts, name)
    # Each value converted on its own, with the casts of ``dtype`` applied: none is left to do.
    return _tensors(_each(values, opts, name, text=text), _DEFAULT, name)


def _on_cpu(values: Sequence[Any]) -> bool:
    return all(v.device.type == "cpu" for v in values if isinstance(v, torch.Tensor))


def _as_tensor(v: Any) -> Any:
    """A NumPy array as a tensor over its memory (read only: it is copied into the batch next)."""
    if isinstance(v, torch.Tensor):
        return v
    row = row_for_numpy(v.dtype)
    if row is None or not row.exact or not v.flags.writeable or not v.dtype.isnative or min(v.strides, default=0) < 0:
        return convert(v, _DEFAULT)  # the pipeline's copy: byte order, strides, read-only memory
    return row.share_as_tensor(v)


_DEFAULT: Final = tensor_options()


def _target(opts: ToTensorOptions, source: torch.dtype | np.dtype[Any]) -> torch.dtype | None:
    if opts.dtype is not None:
        return opts.dtype
    m: DtypeMap[torch.dtype] | None = opts.dtype_map
    return None if m is None else m.target(source)


def _arrays(values: Any, opts: ToTensorOptions, name: Name, *, numbers: bool = False) -> Column:
    """An array column: NumPy values, or one array made from a column of Python numbers."""
    head = values[0]
    source = head.dtype
    row = row_for_numpy(source)
    assert row is not None
    dtype = row.torch
    target = _target(opts, source) or dtype
    if (
        (opts.dtype is not None or opts.dtype_map is not None)  # a cast asked for, even to the first's own dtype
        and not numbers
        and not all(_same_dtype(v.dtype, source) for v in values)
    ):  # a cast, and several dtypes: each value is cast to what its own dtype asks for
        return _tensors(_each(values, opts, name, text=False), _DEFAULT, name)
    return Column("arrays", values, (len(values), *head.shape), dtype, target, name=name)


def _tensors(values: Sequence[Any], opts: ToTensorOptions, name: Name) -> Column:
    head = values[0]
    if head.layout is not torch.strided or head.is_quantized:
        raise UnsupportedError(
            name.what,
            name(0),
            f"{'quantized' if head.is_quantized else head.layout} tensors cannot be stacked into one batch",
            "Densify or dequantize them in the dataset, or collate that field with your own collate_fn",
        )
    # Shapes and layouts are left to torch.stack, which refuses any difference (see fill): one
    # attribute less per sample. A dtype or device torch.stack would take (promoting, copying).
    if len({(t.dtype, t.device) for t in values}) > 1:
        _refuse_layouts(values, name)
        if (opts.dtype is not None or opts.dtype_map is not None) and len({(t.shape, t.device) for t in values}) == 1:
            # Several dtypes and a cast: each value cast to what its own dtype asks for (a
            # mapping may leave some as they are, or send them to different dtypes: checked next).
            values = [_cast_one(t, opts, name, i) for i, t in enumerate(values)]
            opts = _DEFAULT
        if len({(t.shape, t.dtype, t.device) for t in values}) > 1:
            _mismatch(values, name)
    head = values[0]
    target = _target(opts, head.dtype) or head.dtype
    return Column("tensors", values, (len(values), *head.shape), head.dtype, target, head.device, name)


def _refuse_layouts(values: Sequence[Any], name: Name) -> None:
    """Raise for the first tensor that is not dense (samples[0]'s is: see _tensors)."""
    odd = next((i for i, t in enumerate(values) if t.layout is not torch.strided or t.is_quantized), None)
    if odd is not None:
        t = values[odd]
        raise UnsupportedError(
            name.what,
            name(odd),
            f"is a {'quantized' if t.is_quantized else t.layout} tensor where {name(0)} is a dense one",
            "Densify or dequantize them in the dataset, or collate that field with your own collate_fn",
        )


def _cast_one(t: torch.Tensor, opts: ToTensorOptions, name: Name, i: int) -> torch.Tensor:
    target = _target(opts, t.dtype) or t.dtype
    return t if t.dtype == target else cast_tensor(t.detach(), target, name(i))


def _numbers(values: Sequence[Any], name: Name, first: int = 0) -> np.ndarray[Any, Any]:
    """One array of Python numbers of one type (``values`` are samples ``first``, ``first + 1``...)."""
    dt = _NUMBERS[type(values[0])]
    try:
        return np.array(values, dtype=dt)
    except OverflowError:
        i = next(i for i, v in enumerate(values) if not -(2**63) <= v < 2**63)
        raise ValueRangeError(
            name.what,
            name(first + i),
            f"{values[i]} does not fit int64",
            "Keep the values within int64, or pass them as floats",
        ) from None


def _each(values: Sequence[Any], opts: ToTensorOptions, name: Name, *, text: bool) -> list[Any]:
    """Every value through ``to_tensor`` (other libraries' objects, odd arrays); each must become a tensor."""
    leaf_opts = opts if opts.dtype is not None or opts.dtype_map is not None else _DEFAULT
    out = []
    leaf_head = spec_for(type(values[0])) is None
    for i, v in enumerate(values):
        if leaf_head and spec_for(type(v)) is not None:  # a container where samples[0] has a leaf
            _kinds_differ(values, i, name)
        if type(v) in _NUMBERS:  # as default_collate stacks it (int -> int64): to_tensor leaves it be
            v = _numbers([v], name, i).reshape(())
        try:
            t = convert(v, leaf_opts)
        except ConversionError as err:
            raise type(err)(name.what, name(i) + err.path.removeprefix("data"), err.cause, err.fix) from err
        if not isinstance(t, torch.Tensor):
            if text and isinstance(v, _TEXT):
                _kinds_differ(values, i, name)
            raise UnsupportedError(
                name.what,
                name(i),
                f"{type(v).__qualname__} is not an array or tensor",
                "Pass NumPy arrays, tensors, numbers or strings (np.asarray(x) in the dataset), "
                "or register the type with tensorbridge.register_container",
            )
        out.append(t)
    return out


def _kinds_differ(values: Sequence[Any], i: int, name: Name) -> NoReturn:
    fix = (
        "Give every sample the same structure"
        if spec_for(type(values[i])) is not None
        else "Give every sample a value of one kind there (fill missing ones with a placeholder)"
    )
    raise StructureError(name.what, name(i), f"is {describe(values[i])} where {name(0)} is {describe(values[0])}", fix)


def describe(v: object) -> str:
    """A value's kind in messages: ``None``, ``an array of dtype float32``, ``a dict``."""
    if v is None:
        return "None"
    if isinstance(v, np.ndarray):
        return f"an array of dtype {_dtype_name(v.dtype)}"
    if isinstance(v, torch.Tensor):
        return f"a tensor of dtype {_dtype_name(v.dtype)}"
    kind = type(v).__qualname__
    return f"{'an' if kind[0] in 'aeiouAEIOU' else 'a'} {kind}"


def _dtype_name(dt: torch.dtype | np.dtype[Any]) -> str:
    if isinstance(dt, torch.dtype):
        return str(dt).removeprefix("torch.")
    row = row_for_numpy(dt)
    return row.name if row is not None and row.exact else str(dt)


def _mismatch(values: Sequence[Any], name: Name) -> None:
    """Raise for the first value whose shape, dtype or device differs from the first value's (if there is one)."""
    head = values[0]
    first = name(0)
    for i, v in enumerate(values):
        if tuple(v.shape) != tuple(head.shape):
            raise StructureError(
                name.what,
                name(i),
                f"shape {tuple(v.shape)} differs from {first}'s shape {tuple(head.shape)}",
                _RAGGED_FIX,
            )
        if not _same_dtype(v.dtype, head.dtype):
            raise StructureError(
                name.what,
                name(i),
                f"dtype {_dtype_name(v.dtype)} differs from {first}'s {_dtype_name(head.dtype)}",
                "Pass dtype= to cast them all (checked), e.g. dtype=torch.float32, "
                "or a mapping such as dtype={np.float64: torch.float32}",
            )
        if isinstance(v, torch.Tensor) and v.device != head.device:
            raise StructureError(
                name.what,
                name(i),
                f"is on {v.device} where {first} is on {head.device}",
                "Move them to one device first",
            )


def _same_dtype(a: torch.dtype | np.dtype[Any], b: torch.dtype | np.dtype[Any]) -> bool:
    """Equal dtypes, NumPy's in either byte order (a byte swap changes no value)."""
    if isinstance(a, np.dtype) and isinstance(b, np.dtype):
        return bool(a.newbyteorder("=") == b.newbyteorder("="))
    return a == b


# --- execution: one copy per column ------------------------------------------------------------


def fill(col: Column, out: torch.Tensor | None) -> Any:
    """Write ``col`` into ``out`` (a tensor of ``col.shape``/``col.target``, or None: fresh memory).

    Raises:
        StructureError: (ValueError) values whose shapes or dtypes differ.
        ValueRangeError: (ValueError) a ``dtype`` cast that would change a value.
    """
    if col.kind == "list":
        return list(col.values)
    cast = col.target is not col.dtype
    dst = out if out is not None and not cast else _empty(col)
    try:
        if col.kind == "tensors":
            with torch.no_grad():  # a batch is data: the copy is not a step in a graph (nor needs detach()es)
                torch.stack(col.values, out=dst)  # type: ignore[arg-type]  # a tuple of tensors is fine
        else:
            _stack_arrays(col, dst)
    except (ValueError, TypeError, RuntimeError) as err:  # NotImplementedError (a sparse value) is a RuntimeError
        _mismatch(col.values, col.name)
        if col.kind == "tensors":
            _refuse_layouts(col.values, col.name)
        raise StructureError(  # a failure none of the checks names: still named, never raw
            col.name.what,
            col.name(0),
            f"the column could not be stacked ({type(err).__name__}: {err})",
            "Give every sample values of one shape, dtype, layout and device there",
        ) from err
    if not cast:
        return dst
    casted = _cast(col, dst)
    if out is None:
        return casted
    out.copy_(casted)
    return out


def _empty(col: Column) -> torch.Tensor:
    if col.device.type == "cpu":
        return host_empty(col.shape, col.dtype)
    return torch.empty(col.shape, dtype=col.dtype, device=col.device)


def _stack_arrays(col: Column, dst: torch.Tensor) -> None:
    row = row_for_torch(dst.dtype)
    assert row is not None
    view = row.share_as_array(dst)
    values = col.values
    head = values[0]
    if isinstance(values, np.ndarray):  # Python numbers, already one array
        view[...] = values
        return
    # One shape everywhere (checked here: a flat concatenate checks only the total size) and a
    # C-ordered first value: one flat concatenate, without np.stack's per-value views. A later
    # value in another order is still right (NumPy flattens it in C order first).
    if view.flags.c_contiguous and head.flags.c_contiguous and len({v.shape for v in values}) == 1:
        np.concatenate(values, axis=None, out=view.reshape(-1), casting="equiv")
    elif head.nbytes >= _FLIP_MIN_BYTES and _reversed_axis(head) is not None and len({v.shape for v in values}) == 1:
        _stack_reversed(values, dst, view)
    else:
        np.stack(values, out=view, casting="equiv")


# A reversed short inner axis (``img[..., ::-1]`` of HWC images) NumPy copies element by
# element, at well under 1 GB/s; ops.execute.reversed_into (the pipeline's flip copy) is 4-5x
# faster. It is called per value, so only for values large enough to pay for its torch calls.
_FLIP_MIN_BYTES: Final = 1 << 14


def _reversed_axis(a: np.ndarray[Any, Any]) -> int | None:
    """The one axis longer than 1 that ``a`` walks backwards, if there is exactly one."""
    backwards = [ax for ax, s in enumerate(a.strides) if s < 0 and a.shape[ax] > 1]
    return backwards[0] if len(backwards) == 1 else None


def _stack_reversed(values: Sequence[Any], dst: torch.Tensor, view: np.ndarray[Any, Any]) -> None:
    """Values of one shape (checked), most with one reversed axis: each gathered back in order by torch."""
    row = row_for_torch(dst.dtype)
    assert row is not None
    for i, v in enumerate(values):
        ax = _reversed_axis(v)
        if ax is None or v.dtype != view.dtype:  # another layout, byte order or dtype: NumPy's copy
            np.copyto(view[i], v, casting="equiv")
        else:
            reversed_into(v, ax, row, dst[i])


def _cast(col: Column, stacked: torch.Tensor) -> torch.Tensor:
    try:
        return cast_tensor(stacked, col.target, col.name(0))
    except ValueRangeError:
        for i in range(stacked.shape[0]):  # name the sample whose value does not fit
            cast_tensor(stacked[i], col.target, col.name(i))
        raise
