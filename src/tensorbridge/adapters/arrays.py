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

Planning calls no producer: the buffer protocol and a plain ``__array_interface__`` dict are
views made without the producer (a *free* adoption, viewed while planning, so the plan of what
follows is known); ``__dlpack__``, ``__array__`` and a computed ``__array_interface__`` property
(PIL's reads the pixels) are called when the conversion runs, and what they hand over is
planned then. A producer that fails, fails the conversion, not ``explain()``.
"""

from __future__ import annotations

import array
import inspect
from collections.abc import Callable
from typing import Any, Final

import numpy as np
import torch

from ..errors import UnsupportedError
from ..plan.core import ToNumpyOptions, ToTensorOptions
from .base import Adoption

__all__ = ["ADAPTER", "as_numpy"]

_BUFFERS: Final = (bytes, bytearray, memoryview, array.array)
# DLPack device types that are host memory (kDLCPU, kDLCUDAHost pinned, kDLROCMHost).
_HOST_DEVICES: Final = frozenset({1, 3, 11})
# Libraries whose arrays are immutable: exported read-only (their DLPack capsules say so).
_IMMUTABLE: Final = frozenset({"jax", "jaxlib"})
_VIEW: Final = "a view of its memory"
_INTERFACE: Final = "__array_interface__"


def _on_host(obj: Any) -> bool:
    try:
        device_type = int(obj.__dlpack_device__()[0])
    except Exception:  # a producer that cannot say where it lives is not viewed through DLPack
        return False
    return device_type in _HOST_DEVICES


def _has_interface(obj: Any) -> bool:
    try:
        return hasattr(obj, "__array_interface__")
    except Exception:  # a property that raises: that route is not there
        return False


def _plain_interface(obj: Any) -> bool:
    """Whether ``__array_interface__`` is a plain dict (metadata), not a property that computes it."""
    try:
        return isinstance(inspect.getattr_static(obj, "__array_interface__"), dict)
    except AttributeError:
        return False


def _routes(obj: Any) -> list[str]:
    """The routes that apply to ``obj``, in order, from its type and metadata only."""
    cls = type(obj)
    routes = ["buffer protocol"] if isinstance(obj, _BUFFERS) else []
    if _has_interface(obj):
        routes.append("__array_interface__")
    if hasattr(cls, "__dlpack__") and _on_host(obj):
        routes.append("DLPack")
    if hasattr(cls, "__array__"):
        routes.append("__array__")
    return routes


def _route(obj: Any, route: str) -> np.ndarray[Any, Any]:
    if route == "buffer protocol":
        return np.asarray(memoryview(obj))
    if route == "DLPack":
        return np.from_dlpack(obj)
    return np.asarray(obj)  # __array_interface__ (NumPy reads it before __array__), or __array__


# What each route raises when it does not apply to this producer: the next one is tried.
_FAILURES: Final = {
    "buffer protocol": (TypeError, ValueError),
    "__array_interface__": (TypeError, ValueError),
    "DLPack": (TypeError, ValueError, RuntimeError, BufferError),  # NumPy lacks bfloat16/float8 in DLPack
    "__array__": (TypeError, ValueError, RuntimeError),
}


def _first_that_works(
    obj: Any, routes: list[str], tried: list[str], path: str, what: str
) -> tuple[np.ndarray[Any, Any], str]:
    for route in routes:
        try:
            return _route(obj, route), route
        except _FAILURES[route] as err:
            tried.append(f"{route}: {err}")
    raise _no_route(obj, tried, path, what)


def _no_route(obj: Any, tried: list[str], path: str, what: str) -> UnsupportedError:
    cls = type(obj)
    return UnsupportedError(
        what,
        path,
        f"{cls.__module__}.{cls.__qualname__} could not be viewed as an array ({'; '.join(tried) or 'no route'})",
        "Convert it to a NumPy array or a tensor first",
    )


def as_numpy(obj: Any, path: str, what: str) -> tuple[np.ndarray[Any, Any], str]:
    """View ``obj`` as a NumPy array by the first route that works; return it and the route.

    This calls the producer (``__dlpack__``, ``__array__``) where the route needs it: the
    adapter calls it only when the conversion runs.

    Raises:
        UnsupportedError: (TypeError) no route works; the message says what each route said.

    Example:
        >>> a, route = as_numpy(bytearray(b"ab"), "data", "to_numpy")
        >>> a.tolist(), route
        ([97, 98], 'buffer protocol')
    """
    return _first_that_works(obj, _routes(obj), [], path, what)


def _kind(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}".removeprefix("builtins.")


def _why(obj: Any, a: np.ndarray[Any, Any], route: str) -> str:
    ro = ", read-only" if not a.flags.writeable else ""
    return f"{_kind(obj)} through {route}: {_VIEW}{ro}"


def _why_deferred(obj: Any, route: str) -> str:
    """What a route that calls the producer will do, said before calling it."""
    if route == "__array__":
        return f"{_kind(obj)} through __array__: as the producer hands it over"
    immutable = type(obj).__module__.partition(".")[0] in _IMMUTABLE
    ro = ", read-only (JAX arrays are immutable)" if immutable else ""
    return f"{_kind(obj)} through {route}: {_VIEW}{ro}"


def _handing(a: np.ndarray[Any, Any]) -> Callable[[], np.ndarray[Any, Any]]:
    """The ``run`` of a view made while planning: it hands the view over."""
    return lambda: a


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
        return _has_interface(obj)  # NumPy reads this one from the object: it may be an instance attribute

    def _adopt(self, obj: Any, path: str, what: str) -> Adoption:
        routes, tried, source = _routes(obj), [], type(obj).__qualname__
        # Views made without the producer: made now, so the plan of what follows is known.
        while routes and (routes[0] == "buffer protocol" or (routes[0] == _INTERFACE and _plain_interface(obj))):
            route = routes.pop(0)
            try:
                a = _route(obj, route)
            except _FAILURES[route] as err:
                tried.append(f"{route}: {err}")
                continue
            return Adoption("adopt", _why(obj, a, route), _handing(a), source=source, free=True)
        if not routes:
            raise _no_route(obj, tried, path, what)
        return Adoption(
            "adopt",
            _why_deferred(obj, routes[0]),
            lambda: _first_that_works(obj, routes, list(tried), path, what)[0],
            source=source,
        )

    def to_tensor(self, obj: Any, opts: ToTensorOptions, path: str) -> Adoption:
        return self._adopt(obj, path, "to_tensor")

    def to_numpy(self, obj: Any, opts: ToNumpyOptions, path: str) -> Adoption:
        return self._adopt(obj, path, "to_numpy")


ADAPTER: Final = _Arrays()
