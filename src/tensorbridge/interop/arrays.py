"""Anything NumPy can view: buffers, ``__array_interface__``, CPU DLPack producers, ``__array__``.

Every such leaf becomes a NumPy array first, a view of the producer's memory wherever the
producer allows, and the ordinary planner takes it from there. That one route is what makes
the DLPack defects found with torch 2.13 unreachable:

- ``torch.from_dlpack`` of a NumPy-like producer with a negative stride aborts the process:
  here NumPy imports it (``np.from_dlpack`` handles negative strides), then tensorbridge copies.
- ``torch.from_dlpack`` aliases read-only memory without a word: NumPy keeps the producer's
  read-only flag (JAX arrays, ``bytes``), so the planner copies unless ``copy=False``.
- A JAX array is immutable; a tensor sharing its memory would let writes reach it. JAX
  exports read-only, so it is copied by default; ``copy=False`` shares it (writes undefined,
  as for any read-only array).

Which route a producer takes, in order: the buffer protocol for ``bytes``/``bytearray``/
``memoryview``/``array.array`` (shape, strides and format kept, zero-copy); then
``__array_interface__`` (zero-copy); then ``__dlpack__`` on a CPU device (zero-copy); then
``__array__`` (HDF5 and Zarr datasets read their data, PIL copies the pixels, xarray hands
over its array: the producer decides).
"""

from __future__ import annotations

import array
from typing import Any, Final

import numpy as np
import torch

from ..errors import UnsupportedError
from ..plan.core import ToNumpyOptions, ToTensorOptions
from .base import Adopted, adopted

__all__ = ["ADAPTER", "as_numpy"]

_BUFFERS: Final = (bytes, bytearray, memoryview, array.array)
# DLPack device types that are host memory (kDLCPU, kDLCUDAHost pinned, kDLROCMHost).
_HOST_DEVICES: Final = frozenset({1, 3, 11})


def _on_host(obj: Any) -> bool:
    try:
        device_type = int(obj.__dlpack_device__()[0])
    except Exception:  # a producer that cannot say where it lives is not viewed through DLPack
        return False
    return device_type in _HOST_DEVICES


def as_numpy(obj: Any, path: str, what: str) -> tuple[np.ndarray[Any, Any], str]:
    """View ``obj`` as a NumPy array by the first route that works; return it and the route.

    Raises:
        UnsupportedError: (TypeError) no route works; the message says what each route said.

    Example:
        >>> a, route = as_numpy(bytearray(b"ab"), "data", "to_numpy")
        >>> a.tolist(), route
        ([97, 98], 'buffer protocol')
    """
    tried = []
    if isinstance(obj, _BUFFERS):
        try:
            return np.asarray(memoryview(obj)), "buffer protocol"
        except (TypeError, ValueError) as err:
            tried.append(f"buffer protocol: {err}")
    cls = type(obj)
    if hasattr(obj, "__array_interface__"):
        try:
            return np.asarray(obj), "__array_interface__"
        except (TypeError, ValueError) as err:
            tried.append(f"__array_interface__: {err}")
    if hasattr(cls, "__dlpack__") and _on_host(obj):
        try:
            return np.from_dlpack(obj), "DLPack"
        except (TypeError, ValueError, RuntimeError, BufferError) as err:
            tried.append(f"DLPack: {err}")  # NumPy lacks bfloat16/float8 in DLPack: __array__ next
    if hasattr(cls, "__array__"):
        try:
            return np.asarray(obj), "__array__"
        except (TypeError, ValueError, RuntimeError) as err:
            tried.append(f"__array__: {err}")
    raise UnsupportedError(
        what,
        path,
        f"{cls.__module__}.{cls.__qualname__} could not be viewed as an array ({'; '.join(tried) or 'no route'})",
        "Convert it to a NumPy array or a tensor first",
    )


def _why(obj: Any, a: np.ndarray[Any, Any], route: str) -> str:
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}".removeprefix("builtins.")
    view = "a view of its memory" if route != "__array__" else "as the producer hands it over"
    ro = ", read-only" if not a.flags.writeable else ""
    return f"{kind} through {route}: {view}{ro}"


class _Arrays:
    name = "arrays"

    def claims(self, obj: object) -> bool:
        if isinstance(obj, _BUFFERS):
            return True
        if isinstance(obj, (torch.Tensor, np.ndarray, np.generic)):  # they export every protocol themselves
            return False
        cls = type(obj)
        if hasattr(cls, "__dlpack__") or hasattr(cls, "__array__"):
            return True
        try:  # NumPy reads this one from the object: it may be an instance attribute
            return hasattr(obj, "__array_interface__")
        except Exception:  # a property that raises: not an array
            return False

    def _adopt(self, obj: Any, path: str, what: str) -> Adopted:
        a, route = as_numpy(obj, path, what)
        return adopted(a, _why(obj, a, route), copied=False, source=type(obj).__qualname__)

    def to_tensor(self, obj: Any, opts: ToTensorOptions, path: str) -> Adopted:
        return self._adopt(obj, path, "to_tensor")

    def to_numpy(self, obj: Any, opts: ToNumpyOptions, path: str) -> Adopted:
        return self._adopt(obj, path, "to_numpy")


ADAPTER: Final = _Arrays()
