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

__all__ = ["MAX_DEPTH", "Bail", "fast_to_numpy", "fast_to_tensor"]

MAX_DEPTH: Final = 64
_ndarray = np.ndarray
_Tensor = torch.Tensor
_from_numpy = torch.from_numpy
# Leaves both walkers hand back untouched (exact types only: subclasses take the general path).
_PLAIN: Final = frozenset({type(None), bool, int, float, complex, str, bytes})


class Bail(Exception):
    """The input needs the general walker."""


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
