"""The common case without planning: plain dicts, lists and tuples of writable arrays.

With no options, and only plain dicts/lists/tuples around writable arrays (or plain CPU
tensors, for ``to_numpy``), the inputs are exactly what ``torch.from_numpy`` and
``Tensor.numpy()`` convert correctly, so a small recursive walker does them at close to the
cost of a hand-written loop. On anything else (another container type, a read-only or
negatively strided array, a dtype torch lacks, nesting deeper than :data:`MAX_DEPTH`, which
also bounds cycles) it gives up with :class:`Bail` and the caller redoes the whole call
through the general walker, which plans every leaf. Giving up is safe: nothing here mutates
anything or has side effects.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import torch

from ._convert.execute import device_errors
from ._convert.transfer import download_packed, upload_packed
from .config import current
from .devices import backend_for, checked_device
from .dtypes import ROWS

__all__ = ["MAX_DEPTH", "Bail", "fast_from_device", "fast_to_device", "fast_to_numpy", "fast_to_tensor"]

MAX_DEPTH: Final = 64
_ndarray = np.ndarray
_Tensor = torch.Tensor
_from_numpy = torch.from_numpy
# Leaves both walkers hand back untouched (exact types only: subclasses take the general path).
_PLAIN: Final = frozenset({type(None), bool, int, float, complex, str})


class Bail(Exception):
    """The input needs the general walker."""


# The dtypes that convert exactly both ways (bfloat16/float8 through ml_dtypes included).
_TORCH_OF: Final = {row.numpy: row.torch for row in ROWS if row.exact}
_NUMPY_OF: Final = {row.torch: row.numpy for row in ROWS if row.exact}


def fast_to_tensor(obj: Any, depth: int = 0) -> Any:
    """Convert with ``torch.from_numpy`` only, or raise :class:`Bail`."""
    cls = type(obj)
    try:
        if cls is _ndarray:
            if obj.flags.writeable:
                return _from_numpy(obj)
            raise Bail
        if depth >= MAX_DEPTH:
            raise Bail
        # Array items are converted inline: a call per leaf would cost as much as from_numpy.
        if cls is dict:
            return {
                k: _from_numpy(v) if type(v) is _ndarray and v.flags.writeable else fast_to_tensor(v, depth + 1)
                for k, v in obj.items()
            }
        if cls is list or cls is tuple:
            out = [
                _from_numpy(v) if type(v) is _ndarray and v.flags.writeable else fast_to_tensor(v, depth + 1)
                for v in obj
            ]
            return out if cls is list else tuple(out)
    except (TypeError, ValueError):
        # from_numpy refused a leaf (negative strides, a dtype it lacks): the planner knows why.
        raise Bail from None
    if cls is _Tensor or cls in _PLAIN:
        return obj
    raise Bail


def fast_to_numpy(obj: Any, depth: int = 0) -> Any:
    """Convert with ``Tensor.numpy()`` only, or raise :class:`Bail`."""
    cls = type(obj)
    try:
        if cls is _Tensor:
            return obj.numpy()
        if depth >= MAX_DEPTH:
            raise Bail
        # Tensor items are converted inline, as in fast_to_tensor.
        if cls is dict:
            return {k: v.numpy() if type(v) is _Tensor else fast_to_numpy(v, depth + 1) for k, v in obj.items()}
        if cls is list or cls is tuple:
            out = [v.numpy() if type(v) is _Tensor else fast_to_numpy(v, depth + 1) for v in obj]
            return out if cls is list else tuple(out)
    except (TypeError, RuntimeError):
        # .numpy() refused a leaf (requires grad, bfloat16, a device...): the planner knows why.
        raise Bail from None
    if cls is _ndarray or cls in _PLAIN:
        return obj
    raise Bail


# --- many small leaves to and from a device ---------------------------------------------------
#
# A batch of small leaves in plain dicts/lists/tuples is exactly what the planner would pack
# (see plan/transfer.py): the same groups, the same offsets, the same copies. Doing it here
# skips ~20 us of planning per leaf, which would cost more than the copies save.


def _gather(obj: Any, accept: type, out: list[Any], depth: int) -> None:
    """Append the leaves of a plain container to ``out``, in walk order, or raise :class:`Bail`."""
    cls = type(obj)
    if isinstance(obj, accept) and (cls is _ndarray or accept is _Tensor):
        out.append(obj)
    elif cls in _PLAIN:
        return
    elif depth >= MAX_DEPTH:
        raise Bail
    elif cls is dict:
        for v in obj.values():
            _gather(v, accept, out, depth + 1)
    elif cls is list or cls is tuple:
        for v in obj:
            _gather(v, accept, out, depth + 1)
    else:
        raise Bail


def _rebuild(obj: Any, accept: type, results: Any, depth: int) -> Any:
    """The container of ``obj`` with each leaf replaced by the next result."""
    cls = type(obj)
    if isinstance(obj, accept) and (cls is _ndarray or accept is _Tensor):
        return next(results)
    if cls is dict:
        return {k: _rebuild(v, accept, results, depth + 1) for k, v in obj.items()}
    if cls is list:
        return [_rebuild(v, accept, results, depth + 1) for v in obj]
    if cls is tuple:
        return tuple(_rebuild(v, accept, results, depth + 1) for v in obj)
    return obj


_CPU: Final = torch.device("cpu")


def _many(leaves: list[Any]) -> str:
    return f"data ({len(leaves)} leaves packed together)"


def fast_to_device(obj: Any, device: object, non_blocking: bool | None) -> Any:
    """Pack a plain container of small native-order arrays onto a checked device, or raise :class:`Bail`."""
    checked = checked_device(device)
    if checked is None or not checked[0].staging:
        raise Bail
    backend, target = checked
    leaves: list[np.ndarray[Any, Any]] = []
    _gather(obj, _ndarray, leaves, 0)
    cfg = current()
    if len(leaves) < cfg.pack_min_leaves:
        raise Bail
    small = min(cfg.small_max_bytes, cfg.chunk_bytes)
    dtypes = []
    for a in leaves:
        dt = _TORCH_OF.get(a.dtype)
        if dt is None or not 0 < a.nbytes <= small or not (a.dtype.isnative or a.dtype.itemsize == 1):
            raise Bail  # a dtype torch lacks, an empty or large leaf, swapped bytes: the planner
        if not (a.flags.c_contiguous or a.flags.f_contiguous) and any(
            st == 0 and n > 1 for st, n in zip(a.strides, a.shape, strict=True)
        ):
            raise Bail  # a broadcast: the planner moves only its distinct values
        dtypes.append(dt)
    device = backend.resolve(target)
    with device_errors(_many(leaves), sum(a.nbytes for a in leaves), _CPU, device):
        results = upload_packed(leaves, dtypes, device, backend, non_blocking)
    return _rebuild(obj, _ndarray, iter(results), 0)


def fast_from_device(obj: Any) -> Any:
    """Bring a plain container of small contiguous device tensors to NumPy, or raise :class:`Bail`."""
    leaves: list[torch.Tensor] = []
    _gather(obj, _Tensor, leaves, 0)
    cfg = current()
    if len(leaves) < cfg.pack_min_leaves:
        raise Bail
    device = leaves[0].device
    backend = backend_for(device.type)
    if backend is None or not backend.staging:
        raise Bail
    small = min(cfg.small_max_bytes, cfg.chunk_bytes)
    dtypes = []
    for t in leaves:
        dt = _NUMPY_OF.get(t.dtype)
        if (
            dt is None
            or t.device != device
            or t.requires_grad
            or t.layout != torch.strided
            or t.is_conj()
            or t.is_neg()
            or not t.is_contiguous()
            or not 0 < t.numel() * t.element_size() <= small
        ):
            raise Bail  # the planner knows what each of these needs
        dtypes.append(dt)
    with device_errors(_many(leaves), sum(t.numel() * t.element_size() for t in leaves), device, _CPU):
        results = download_packed(leaves, dtypes, device, backend)
    return _rebuild(obj, _Tensor, iter(results), 0)
