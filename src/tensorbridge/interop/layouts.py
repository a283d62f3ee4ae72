"""Special tensor kinds: quantized and nested tensors convert by choice; DTensor and fake tensors are refused.

This module is the adapter for them: it recognizes the leaves, refuses those whose memory is not
their values, and hands the conversions to one module per kind.

- **Quantized tensors and QuantizedArray** (``quantized.py``): ``to_numpy`` needs a choice,
  ``quantized='dequantize'`` or ``quantized='int'`` (a ``QuantizedArray``). ``to_tensor`` keeps a
  quantized tensor quantized (device moves by torch's ``.to()``, ``copy=True`` clones), refuses
  ``dtype=`` and ``requires_grad``, and rebuilds one from a ``QuantizedArray`` (codes copied, bit-exact).
- **Nested tensors** (``nested.py``): ``to_numpy`` gives a list of arrays, one per component;
  ``nested_tensor`` builds one back. ``to_tensor`` keeps it nested (device moves, ``copy=True``,
  ``dtype=`` checked per component).
- **DTensor and fake tensors** are refused both ways, with the fix.

Sparse tensors are ``sparse.py``'s; meta tensors keep the planner's error. Nothing here imports
``torch.distributed``: DTensor and FakeTensor are recognized through ``sys.modules``.
"""

from __future__ import annotations

from typing import Any, Final

import torch

from ..errors import DeviceError, UnsupportedError
from ..plan.core import ToNumpyOptions, ToTensorOptions, describe_tensor
from ..plan.transfer import needs_device, resolve_device
from ._special import _refuse_copy, _torch_notices_muted
from .base import Adopted, finished
from .detect import is_instance
from .nested import _nested_to_numpy, _rebuild_nested

# QuantizedArray is imported by name (not through the module): pickles made when it was defined
# here name it tensorbridge.interop.layouts.QuantizedArray, and still load.
from .quantized import _CODES, QuantizedArray, _quantized_array_to_numpy, _quantized_to_numpy, _rebuild

__all__ = ["ADAPTER"]


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
            "Call t.full_tensor() to gather the whole tensor, or t.to_local() for this rank's shard",
        )


# --- to_tensor on special tensors -------------------------------------------------------------


def _keep_special(t: torch.Tensor, opts: ToTensorOptions, path: str, *, copied: bool, why: str) -> Adopted:
    """``to_tensor`` on a quantized or nested tensor: it stays what it is; the options torch can honour apply."""
    kind = "quantized" if t.is_quantized else "nested"
    notes = [why]
    out = t
    if opts.dtype is not None and opts.dtype != t.dtype:
        if t.is_quantized:
            raise UnsupportedError(
                "to_tensor",
                path,
                f"dtype={opts.dtype} asks to cast a quantized ({t.dtype}) tensor: its codes mean something "
                "only with their scale and zero point",
                "Dequantize first (t.dequantize(), or tb.to_numpy(x, quantized='dequantize')), then cast; "
                "or drop dtype= to keep it quantized",
            )
        if opts.copy is False:
            _refuse_copy("to_tensor", path, f"casting to {opts.dtype} makes new components")
        out, copied = _rebuild_nested(out, opts.dtype, path), True
        notes.append(f"each component cast to {str(opts.dtype).removeprefix('torch.')} (checked)")
    if opts.device is not None:
        device = resolve_device(opts.device, path, "to_tensor", _CODES.get(out.dtype, out.dtype))
        if needs_device(device, out.device):
            if opts.copy is False:
                _refuse_copy("to_tensor", path, f"the tensor must be copied from {out.device} to {device}")
            out = _torch_op(out, lambda x: x.to(device), path, f"moving to {device}", "Convert it on the CPU instead")
            copied = True
            notes.append(f"moved to {device} by torch's own .to() (the transfer engine handles plain tensors only)")
    if opts.pin_memory and out.device.type == "cpu":
        if opts.copy is False:
            _refuse_copy("to_tensor", path, "pinning copies into page-locked memory")
        out, copied = (
            _torch_op(out, lambda x: x.pin_memory(), path, "pinning host memory", "Drop pin_memory=True"),
            True,
        )
        notes.append("pinned by torch's own .pin_memory()")
    if opts.copy is True and not copied:
        out, copied = _torch_op(out, lambda x: x.clone(), path, "copying", "Drop copy=True"), True
        notes.append("copy=True asks for fresh memory")
    if opts.requires_grad and not out.requires_grad:
        if t.is_quantized or not (out.is_floating_point() or out.is_complex()):
            raise UnsupportedError(
                "to_tensor",
                path,
                f"requires_grad=True needs a float or complex tensor, not a {kind} {out.dtype} one",
                "Dequantize first (t.dequantize())" if t.is_quantized else "Pass dtype=torch.float32 as well",
            )
        out = out.detach().requires_grad_(True)
        notes.append("a new leaf tensor that requires grad")
    return finished(out, "; ".join(notes), copied=copied, source=describe_tensor(t))


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

    def to_tensor(self, obj: Any, opts: ToTensorOptions, path: str) -> Adopted:
        if isinstance(obj, QuantizedArray):
            if opts.copy is False:
                _refuse_copy("to_tensor", path, "torch copies the codes to rebuild a quantized tensor")
            why = f"the quantized tensor rebuilt from its codes and parameters ({obj.qscheme}), codes copied"
            return _keep_special(_rebuild(obj, "to_tensor", path), opts, path, copied=True, why=why)
        _refuse_unbacked(obj, "to_tensor", path)
        why = f"a {'quantized' if obj.is_quantized else 'nested'} tensor stays one: returned as it is"
        return _keep_special(obj, opts, path, copied=False, why=why)

    def to_numpy(self, obj: Any, opts: ToNumpyOptions, path: str) -> Adopted:
        if isinstance(obj, QuantizedArray):
            return _quantized_array_to_numpy(obj, opts, path)
        _refuse_unbacked(obj, "to_numpy", path)
        if obj.is_quantized:
            return _quantized_to_numpy(obj, opts, path)
        return _nested_to_numpy(obj, opts, path)


ADAPTER: Final = _Layouts()
