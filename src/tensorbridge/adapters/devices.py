"""Arrays that live on a GPU and say so through DLPack or ``__cuda_array_interface__`` (CuPy, JAX, Numba).

They become tensors on the same device without a copy: ``torch.from_dlpack`` (which performs
the DLPack stream handshake with torch's current stream) or, for producers that only have the
CUDA array interface, ``torch.as_tensor``. Guards, each a defect of the raw route:

- a negative stride makes ``torch.from_dlpack`` abort the whole process (torch 2.13): such
  producers are refused before torch sees them, with the fix;
- JAX arrays are immutable, and a tensor sharing their memory would let writes reach them: the
  tensor is a copy unless ``copy=False`` asks to share (writes then undefined).

Host-side producers are not claimed here: NumPy views them (``arrays.py``).

Planning reads only what the producer says about itself (``__dlpack_device__()``, the
``__cuda_array_interface__`` dict, ``strides``); the import (and JAX's copy) runs with the
conversion, and its failures are the conversion's.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import torch
from torch.utils.dlpack import from_dlpack

from ..errors import DeviceError, UnsupportedError
from ..plan.core import ToNumpyOptions, ToTensorOptions
from ..transfer.devices import backend_for
from .arrays import _on_host
from .base import Adoption

__all__ = ["ADAPTER"]

_IMMUTABLE: Final = frozenset({"jax", "jaxlib"})


def _strides(obj: Any) -> tuple[int, ...] | None:
    """The producer's strides if it states them (CUDA array interface, or a ``strides`` attribute)."""
    cai = getattr(obj, "__cuda_array_interface__", None)
    if isinstance(cai, dict) and cai.get("strides") is not None:
        return tuple(int(s) for s in cai["strides"])
    strides = getattr(obj, "strides", None)
    if isinstance(strides, tuple) and all(isinstance(s, int) for s in strides):
        return strides
    return None


def _import(obj: Any, path: str, what: str, copy: bool | None) -> Adoption:
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    strides = _strides(obj)
    if strides is not None and any(s < 0 for s in strides):
        raise UnsupportedError(
            what,
            path,
            f"{kind} has negative strides {strides}, and torch.from_dlpack aborts the process on those",
            "Make it contiguous on its device first (cupy.ascontiguousarray(x), or x.copy())",
        )
    dlpack = hasattr(type(obj), "__dlpack__")
    # A copy on the device: a tensor sharing the memory would let writes reach an immutable array.
    immutable = type(obj).__module__.partition(".")[0] in _IMMUTABLE and copy is not False

    def run() -> torch.Tensor:
        try:
            t = from_dlpack(obj) if dlpack else _as_tensor(obj)
            if not dlpack:
                _wait_for_producer(obj, t.device, kind)
        except (RuntimeError, TypeError, AssertionError, BufferError) as err:
            raise DeviceError(
                what,
                path,
                f"torch could not import {kind} from its device ({err})",
                "Check that this torch is built for that device (torch.cuda.is_available()), "
                "or move the data to the host",
            ) from err
        return t.clone() if immutable else t

    why = f"{kind} through {'DLPack' if dlpack else '__cuda_array_interface__'}"
    if immutable:
        return Adoption("adopt_copy", why + ", copied on its device: JAX arrays are immutable", run, source=kind)
    return Adoption("adopt", why + ": the same device memory, no copy", run, source=kind)


def _as_tensor(obj: Any) -> torch.Tensor:
    """Torch's import of a ``__cuda_array_interface__`` producer (no copy)."""
    return torch.as_tensor(obj)


def _wait_for_producer(obj: Any, device: torch.device, kind: str) -> None:
    """Order the current stream after the work the producer queued on its stream (CAI v3 ``stream``).

    Torch's import ignores ``stream``: without the wait, kernels on the current stream could read
    the memory before the producer's stream has written it. ``None`` (or no key): no wait is
    needed; 1 and 2: the legacy and per-thread default streams; 0 is disallowed by the protocol.
    """
    cai = obj.__cuda_array_interface__
    stream = cai.get("stream") if isinstance(cai, dict) else None
    if stream is None:
        return
    if isinstance(stream, bool) or not isinstance(stream, int) or stream == 0:
        raise TypeError(
            f"{kind} states stream={stream!r} in __cuda_array_interface__: the protocol wants None "
            "or a nonzero stream handle (1: legacy default stream, 2: per-thread default stream)"
        )
    backend = backend_for(device.type)
    if backend is not None:
        backend.wait_stream(stream, device)


class _Devices:
    name = "devices"

    def claims(self, obj: object) -> bool:
        if isinstance(obj, (torch.Tensor, np.ndarray)):  # they export both protocols; tensorbridge handles them
            return False
        cls = type(obj)
        if hasattr(cls, "__dlpack__") and hasattr(cls, "__dlpack_device__"):
            return not _on_host(obj)  # where the producer says it lives decides (JAX on CPU has a CAI property too)
        try:
            return hasattr(obj, "__cuda_array_interface__")
        except Exception:  # a property that raises: not a device array
            return False

    def to_tensor(self, obj: Any, opts: ToTensorOptions, path: str) -> Adoption:
        return _import(obj, path, "to_tensor", opts.copy)

    def to_numpy(self, obj: Any, opts: ToNumpyOptions, path: str) -> Adoption:
        # The tensor is a view of the device memory; the planner copies it to the host.
        return _import(obj, path, "to_numpy", False)


ADAPTER: Final = _Devices()
