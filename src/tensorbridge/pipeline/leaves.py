"""Which leaves convert, and the plan for each: NumPy and plain tensors directly, others adopted first.

A leaf is a NumPy array or scalar, a tensor, or anything an adapter in
:mod:`tensorbridge.adapters` claims (buffers, DLPack and ``__array__`` producers, pandas, SciPy
sparse, quantized and nested tensors...). An adopted leaf's plan starts with the adoption
step (view or copy, and why), then continues with the ordinary plan of what adoption gave.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Final, TypeVar

import numpy as np
import torch

from ..adapters import adapter_for
from ..adapters.base import Adoption
from ..dtype_map import leaf_dtype
from ..errors import ConversionError, CopyRefusedError, OutOfMemoryError, UnsupportedError
from ..plan import (
    Plan,
    ToNumpyOptions,
    ToTensorOptions,
    describe_array,
    describe_tensor,
    plan_tensor_to_tensor,
    plan_to_numpy,
    plan_to_tensor,
)
from ..plan.core import Deferred, Step, Then

__all__ = ["describe_leaf", "is_leaf", "plan_leaf_to_numpy", "plan_leaf_to_tensor"]

_ndarray = np.ndarray
_generic = np.generic
_Tensor = torch.Tensor
# Leaves that never convert: checked first, so walking metadata costs nothing.
_INERT: Final = frozenset({type(None), bool, int, float, complex, str})


def _plain_tensor(t: torch.Tensor) -> bool:
    """A strided, unquantized, un-nested tensor of torch's own class or a subclass no adapter claims."""
    if t.layout != torch.strided or t.is_quantized or t.is_nested:
        return False
    return type(t) is _Tensor or adapter_for(t) is None


def is_leaf(x: object) -> bool:
    """Whether ``x`` converts (containers are walked, everything else passes through).

    A ``np.str_`` is a string, as ``str`` is (a file name in a batch): it passes through. A
    ``np.bytes_`` is ``bytes`` (its subclass) and converts as ``bytes`` does, to uint8.
    """
    if isinstance(x, (_ndarray, _generic, _Tensor)):
        return not isinstance(x, np.str_)
    return type(x) not in _INERT and adapter_for(x) is not None


def describe_leaf(x: Any) -> str:
    """Describe any leaf for plans and messages (type, dtype, shape, strides, flags)."""
    if isinstance(x, _Tensor):
        return describe_tensor(x)
    if isinstance(x, (_ndarray, _generic)):
        return describe_array(x)
    cls = type(x)
    bits = [f"{cls.__module__}.{cls.__qualname__}".removeprefix("builtins.")]
    for attr in ("dtype", "shape"):
        try:
            value = getattr(x, attr, None)
            if value is not None and not callable(value):
                bits.append(f"{attr} {tuple(value) if attr == 'shape' else value}")
        except Exception:  # describing must never fail (a nested tensor's shape raises, say)
            continue
    return " ".join(bits)


def _adoption_failed(x: Any, path: str, err: Exception) -> ConversionError:
    """The error for what an adapter or a producer raised while handing its data over."""
    if isinstance(err, ConversionError):
        return err
    if isinstance(err, MemoryError):
        why = f"{describe_leaf(x)} did not fit in memory ({err})"
        return OutOfMemoryError("adoption", path, why, "Convert a smaller piece")
    return UnsupportedError(
        "adoption",
        path,
        f"{describe_leaf(x)} could not be handed over ({type(err).__name__}: {err})",
        "Convert it to a NumPy array yourself first, and report the case to tensorbridge",
    )


def _guarded(x: Any, path: str, run: Callable[[], Any]) -> Callable[[], Any]:
    def guarded() -> Any:
        try:
            return run()
        except Exception as err:  # a library's own failure while handing over its data: named, never raw
            raise _adoption_failed(x, path, err) from err

    return guarded


def _adopted_plan(
    x: Any,
    path: str,
    copy: bool | None,
    adopt: Callable[[], Adoption],
    then: Callable[[Any, bool | None], Plan],
) -> Plan:
    try:
        got = adopt()
        # A free adoption is a view made without the producer: taken now, to plan what follows.
        value = got.run() if got.free else None
    except Exception as err:
        failed = _adoption_failed(x, path, err)
        return Plan(path, lambda: (describe_leaf(x), "?"), (), failed)
    source = got.source or describe_leaf(x)
    if got.kind == "adopt_copy" and copy is False:
        refused = CopyRefusedError(
            "conversion",
            path,
            f"copy=False, but adopting this leaf copies: {got.why}",
            "Pass copy=None to allow the copy",
        )
        return Plan(path, lambda: (source, "?"), (), refused)
    # Fresh memory from the adoption already satisfies copy=True: no second copy.
    then_copy = None if got.kind == "adopt_copy" and copy is True else copy
    if not got.free:  # deferred: the data work, and the plan of what it gives, at execution
        step = Step(got.kind, got.why, Deferred(_guarded(x, path, got.run)))
        if got.done:
            return Plan(path, lambda: (source, "its own result"), (step,))
        follow = Step(
            "then", "what it hands over is planned when it arrives", Then(lambda v: then(v, then_copy), then_copy)
        )
        return Plan(path, lambda: (source, "planned when the data arrives"), (step, follow))
    step = Step(got.kind, got.why, value)  # the executor hands the adopted value on
    if got.done:
        return Plan(path, lambda: (source, describe_leaf(value)), (step,))
    inner = then(value, then_copy)
    if inner.error is not None:
        return Plan(path, lambda: (source, inner.target), (), inner.error)
    return Plan(path, lambda: (source, inner.target), (step, *inner.steps))


_Options = TypeVar("_Options", ToTensorOptions, ToNumpyOptions)


def _for_leaf(opts: _Options, x: Any) -> _Options:
    """Resolve a ``dtype=`` mapping for this leaf: its target, or no cast when its dtype is not a key.

    A leaf with no dtype of its own (a buffer, a DataFrame) keeps the mapping: it is resolved
    against the dtype of what the leaf is adopted as.
    """
    if opts.dtype_map is None:
        return opts
    source = leaf_dtype(x)
    if source is None:
        return opts
    return dataclasses.replace(opts, dtype=opts.dtype_map.target(source), dtype_map=None)


def plan_leaf_to_tensor(x: Any, opts: ToTensorOptions, path: str) -> Plan:
    """Plan ``to_tensor`` for one leaf of any kind."""
    opts = _for_leaf(opts, x)
    if isinstance(x, _Tensor):
        if _plain_tensor(x):
            return plan_tensor_to_tensor(x, opts, path)
    elif isinstance(x, (_ndarray, _generic)) and not isinstance(x, np.bytes_):
        return plan_to_tensor(x, opts, path)
    adapter = adapter_for(x)
    if adapter is None:  # a special tensor no adapter claims: the planner's own rules and errors
        return plan_tensor_to_tensor(x, opts, path)
    return _adopted_plan(
        x, path, opts.copy, lambda: adapter.to_tensor(x, opts, path), lambda v, c: _next_tensor(v, opts, c, path)
    )


def _next_tensor(v: Any, opts: ToTensorOptions, copy: bool | None, path: str) -> Plan:
    opts = _for_leaf(opts, v)
    if copy != opts.copy:
        opts = dataclasses.replace(opts, copy=copy)
    if isinstance(v, _Tensor):
        return plan_tensor_to_tensor(v, opts, path)
    return plan_to_tensor(v, opts, path)


def _next_numpy(v: Any, opts: ToNumpyOptions, copy: bool | None, path: str) -> Plan:
    opts = _for_leaf(opts, v)
    return plan_to_numpy(v, opts if copy == opts.copy else dataclasses.replace(opts, copy=copy), path)


def plan_leaf_to_numpy(x: Any, opts: ToNumpyOptions, path: str) -> Plan:
    """Plan ``to_numpy`` for one leaf of any kind."""
    opts = _for_leaf(opts, x)
    if isinstance(x, _Tensor):
        if _plain_tensor(x):
            return plan_to_numpy(x, opts, path)
    elif isinstance(x, (_ndarray, _generic)) and not isinstance(x, np.bytes_):
        return plan_to_numpy(x, opts, path)
    adapter = adapter_for(x)
    if adapter is None:
        return plan_to_numpy(x, opts, path)
    return _adopted_plan(
        x,
        path,
        opts.copy,
        lambda: adapter.to_numpy(x, opts, path),
        lambda v, c: _next_numpy(v, opts, c, path),
    )
