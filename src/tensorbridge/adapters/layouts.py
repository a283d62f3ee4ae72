"""Special tensor kinds: quantized and nested tensors and DTensors convert by choice; fake tensors are refused.

This module is the adapter for them: it recognizes the leaves, refuses those whose memory is not
their values, and hands the conversions to one module per kind.

- **Quantized tensors and QuantizedArray** (``quantized.py``): ``to_numpy`` needs a choice,
  ``quantized='dequantize'`` or ``quantized='int'`` (a ``QuantizedArray``). ``to_tensor`` keeps a
  quantized tensor quantized (device moves by torch's ``.to()``, ``copy=True`` clones), refuses
  ``dtype=`` and ``requires_grad``, and rebuilds one from a ``QuantizedArray`` (codes copied, bit-exact).
- **Nested tensors** (``nested.py``): ``to_numpy`` gives a list of arrays, one per component;
  ``nested_tensor`` builds one back. ``to_tensor`` keeps it nested (device moves, ``copy=True``,
  ``dtype=`` checked per component).
- **DTensor**: ``to_numpy`` needs a choice, ``shards='local'`` (this rank's shard, zero-copy) or
  ``shards='gather'`` (``tensorbridge.distributed`` gathers before the conversion, so what the
  pipeline sees is a plain tensor; planned here only for ``explain``); ``to_tensor`` refuses it.
- **Fake tensors** are refused both ways, with the fix.

Sparse tensors are ``sparse.py``'s; meta tensors keep the planner's error. Nothing here imports
``torch.distributed`` (``tensorbridge.distributed`` only once a DTensor is seen): DTensor and
FakeTensor are recognized through ``sys.modules``.

Planning reads only metadata (dtype, device, layout, qscheme, the number of components); what
touches values (dequantizing, the codes, casts, ``.to()``, clones, rebuilding) runs with the
conversion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import torch

from ..errors import DeviceError, UnsupportedError
from ..plan.core import ToNumpyOptions, ToTensorOptions, describe_tensor
from ..plan.devices import needs_device, resolve_device
from ._special import _refuse_copy, _torch_notices_muted
from .base import Adoption
from .detect import is_instance
from .nested import _nested_to_numpy, _rebuild_nested

# QuantizedArray is imported by name (not through the module): pickles made when it was defined
# here name it tensorbridge.adapters.layouts.QuantizedArray, and still load.
from .quantized import _CODES, _QDTYPES, QuantizedArray, _quantized_array_to_numpy, _quantized_to_numpy, _rebuilder

__all__ = ["ADAPTER"]

_CPU: Final = torch.device("cpu")


# --- recognizing ----------------------------------------------------------------------------


def _is_fake(t: torch.Tensor) -> bool:
    return is_instance(t, "torch._subclasses.fake_tensor", "FakeTensor")


def _is_dtensor(t: torch.Tensor) -> bool:
    return is_instance(t, "torch.distributed.tensor", "DTensor")


def _refuse_unbacked(t: torch.Tensor, what: str, path: str) -> None:
    """Raise for tensors whose memory is not their values: fake tensors and DTensors."""
    if _is_fake(t):
        raise UnsupportedError(
            what,
            path,
            f"fake tensor ({str(t.dtype).removeprefix('torch.')}, shape {tuple(t.shape)}): "
            "fake tensors have a shape but no data",
            "Run the real computation outside torch._subclasses.fake_tensor.FakeTensorMode to get values",
        )
    if _is_dtensor(t):
        placements = ", ".join(repr(p) for p in getattr(t, "placements", ()))
        raise UnsupportedError(
            what,
            path,
            f"DTensor (global shape {tuple(t.shape)}, placements [{placements}]): exported through DLPack or "
            "NumPy it hands out its global shape over this rank's local memory, which may hold only its shard",
            "Pass shards='gather' (the full array on rank dst=0, None elsewhere; dst=None: on every rank) or "
            "shards='local' (this rank's shard, zero-copy) to to_numpy"
            if what == "to_numpy"
            else "Pass t.full_tensor() for the whole tensor or t.to_local() for this rank's shard; "
            "to_tensor(arrays, mesh=..., placements=...) makes DTensors from arrays",
        )


def _dtensor_to_numpy(t: Any, opts: ToNumpyOptions, path: str) -> Adoption | None:
    """A DTensor under ``shards='local'`` (its shard) or ``'gather'`` (planned only: ``api`` gathers first)."""
    shards = opts.interop.shards
    if shards == "error" or not _is_dtensor(t):
        return None
    import torch.distributed as dist

    from ..distributed import layout_words

    rank = dist.get_rank()
    if shards == "local":
        why = f"this rank's shard, zero-copy (to_local()): {layout_words(t, rank)}"
        return Adoption("adopt", why, t.to_local, source=f"DTensor {describe_tensor(t)}", free=True)
    dst = opts.interop.dst
    where = "every rank" if dst is None else f"rank {dst} (None on the other ranks)"
    why = f"gathered onto {where} one leaf at a time, before the conversion: {layout_words(t, rank)}"
    return Adoption("adopt_copy", why, t.full_tensor, source=f"DTensor {describe_tensor(t)}")


# --- to_tensor on special tensors -------------------------------------------------------------


@dataclass(frozen=True)
class _Special:
    """What planning knows of a quantized or nested tensor: its metadata, and how to get it."""

    quantized: bool
    dtype: torch.dtype
    device: torch.device
    requires_grad: bool
    source: str
    get: Callable[[], torch.Tensor]  # the tensor itself, or rebuilt (which runs with the conversion)
    as_is: bool = True  # ``get`` hands over the input itself


def _special(t: torch.Tensor) -> _Special:
    return _Special(t.is_quantized, t.dtype, t.device, t.requires_grad, describe_tensor(t), lambda: t)


def _keep_special(sp: _Special, opts: ToTensorOptions, path: str, *, copied: bool, why: str) -> Adoption:
    """``to_tensor`` on a quantized or nested tensor: it stays what it is; the options torch can honour apply.

    Decided from the metadata; the casts, moves and copies run with the conversion.
    """
    kind = "quantized" if sp.quantized else "nested"
    notes = [why]
    ops: list[Callable[[torch.Tensor], torch.Tensor]] = []
    dtype, device, grad = sp.dtype, sp.device, sp.requires_grad
    if opts.dtype is not None and opts.dtype != dtype:
        if sp.quantized:
            raise UnsupportedError(
                "to_tensor",
                path,
                f"dtype={opts.dtype} asks to cast a quantized ({dtype}) tensor: its codes mean something "
                "only with their scale and zero point",
                "Dequantize first (t.dequantize(), or tb.to_numpy(x, quantized='dequantize')), then cast; "
                "or drop dtype= to keep it quantized",
            )
        if opts.copy is False:
            _refuse_copy("to_tensor", path, f"casting to {opts.dtype} makes new components")
        target = opts.dtype
        ops.append(lambda x: _rebuild_nested(x, target, path))
        copied, dtype, grad = True, target, False
        notes.append(f"each component cast to {str(target).removeprefix('torch.')} (checked)")
    if opts.device is not None:
        to = resolve_device(opts.device, path, "to_tensor", _CODES.get(dtype, dtype))
        if needs_device(to, device):
            if opts.copy is False:
                _refuse_copy("to_tensor", path, f"the tensor must be copied from {device} to {to}")
            ops.append(
                lambda x: _torch_op(x, lambda y: y.to(to), path, f"moving to {to}", "Convert it on the CPU instead")
            )
            copied, device = True, to
            notes.append(f"moved to {to} by torch's own .to() (the transfer engine handles plain tensors only)")
    if opts.pin_memory and device.type == "cpu":
        if opts.copy is False:
            _refuse_copy("to_tensor", path, "pinning copies into page-locked memory")
        ops.append(
            lambda x: _torch_op(x, lambda y: y.pin_memory(), path, "pinning host memory", "Drop pin_memory=True")
        )
        copied = True
        notes.append("pinned by torch's own .pin_memory()")
    if opts.copy is True and not copied:
        ops.append(lambda x: _torch_op(x, lambda y: y.clone(), path, "copying", "Drop copy=True"))
        copied = True
        notes.append("copy=True asks for fresh memory")
    if opts.requires_grad and not grad:
        if sp.quantized or not (dtype.is_floating_point or dtype.is_complex):
            raise UnsupportedError(
                "to_tensor",
                path,
                f"requires_grad=True needs a float or complex tensor, not a {kind} {dtype} one",
                "Dequantize first (t.dequantize())" if sp.quantized else "Pass dtype=torch.float32 as well",
            )
        ops.append(lambda x: x if x.requires_grad else x.detach().requires_grad_(True))
        notes.append("a new leaf tensor that requires grad")

    def run() -> torch.Tensor:
        out = sp.get()
        for op in ops:
            out = op(out)
        return out

    return Adoption(
        "adopt_copy" if copied else "adopt",
        "; ".join(notes),
        run,
        done=True,
        source=sp.source,
        free=sp.as_is and not ops,
    )


def _torch_op(t: torch.Tensor, op: Any, path: str, doing: str, fix: str) -> torch.Tensor:
    try:
        with _torch_notices_muted():
            out: torch.Tensor = op(t)
            return out
    except (RuntimeError, NotImplementedError) as err:
        raise DeviceError("to_tensor", path, f"{doing} failed ({str(err).rstrip('.')})", fix) from err


# --- the adapter ----------------------------------------------------------------------------


class _Layouts:
    name = "layouts"

    def claims(self, obj: object) -> bool:
        if type(obj) is QuantizedArray:
            return True
        if not isinstance(obj, torch.Tensor):
            return False
        if _is_fake(obj) or _is_dtensor(obj):
            return True
        return not obj.is_meta and (obj.is_quantized or obj.is_nested)

    def to_tensor(self, obj: Any, opts: ToTensorOptions, path: str) -> Adoption:
        if isinstance(obj, QuantizedArray):
            if opts.copy is False:
                _refuse_copy("to_tensor", path, "torch copies the codes to rebuild a quantized tensor")
            why = f"the quantized tensor rebuilt from its codes and parameters ({obj.qscheme}), codes copied"
            get = _rebuilder(obj, "to_tensor", path)  # checks the fields now; torch rebuilds when converting
            rebuilt = _Special(True, _QDTYPES[obj.dtype], _CPU, False, repr(obj), get, as_is=False)
            return _keep_special(rebuilt, opts, path, copied=True, why=why)
        _refuse_unbacked(obj, "to_tensor", path)
        why = f"a {'quantized' if obj.is_quantized else 'nested'} tensor stays one: returned as it is"
        return _keep_special(_special(obj), opts, path, copied=False, why=why)

    def to_numpy(self, obj: Any, opts: ToNumpyOptions, path: str) -> Adoption:
        if isinstance(obj, QuantizedArray):
            return _quantized_array_to_numpy(obj, opts, path)
        sharded = _dtensor_to_numpy(obj, opts, path)
        if sharded is not None:
            return sharded
        _refuse_unbacked(obj, "to_numpy", path)
        if obj.is_quantized:
            return _quantized_to_numpy(obj, opts, path)
        return _nested_to_numpy(obj, opts, path)


ADAPTER: Final = _Layouts()
