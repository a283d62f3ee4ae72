"""Selective casts: ``dtype=`` as a mapping from source dtype to target dtype.

``to_tensor(batch, dtype={np.float64: torch.float32})`` casts only the leaves whose dtype is a
key; every other leaf converts as it is. Keys and values take every spelling
:func:`~tensorbridge.torch_dtype` / :func:`~tensorbridge.numpy_dtype` accept, and are
normalized once, when the call's options are: a source dtype is matched by its table row, so
``np.float64``, ``">f8"``, ``"double"`` and ``torch.float64`` are one key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from .dtypes import numpy_dtype, row_for_numpy, torch_dtype
from .errors import UnsupportedError

__all__ = ["DtypeMap", "leaf_dtype", "normalize_dtype_map"]

T = TypeVar("T", torch.dtype, np.dtype[Any])
Source = torch.dtype | np.dtype[Any]


@dataclass(frozen=True)
class DtypeMap(Generic[T]):
    """A normalized ``dtype=`` mapping.

    Attributes:
        by_torch: targets keyed by torch dtype (every key that names a table row).
        by_numpy: targets keyed by native NumPy dtype, for source dtypes torch lacks (longdouble).
    """

    by_torch: Mapping[torch.dtype, T]
    by_numpy: Mapping[np.dtype[Any], T]

    def target(self, source: Source) -> T | None:
        """Return the target for a leaf of dtype ``source``, or ``None`` when it is not a key."""
        if isinstance(source, torch.dtype):
            return self.by_torch.get(source)
        row = row_for_numpy(source)
        if row is not None and row.exact:
            return self.by_torch.get(row.torch)
        return self.by_numpy.get(source.newbyteorder("=") if source.byteorder not in "=|" else source)

    def __str__(self) -> str:
        pairs: list[tuple[Source, Source]] = [*self.by_torch.items(), *self.by_numpy.items()]
        return "{" + ", ".join(f"{_name(k)}: {_name(v)}" for k, v in pairs) + "}"


def _name(dt: Source) -> str:
    return str(dt).removeprefix("torch.") if isinstance(dt, torch.dtype) else str(dt)


def _spelled(x: object) -> str:
    """A dtype spelling as a person wrote it: ``np.float64`` rather than ``<class 'numpy.float64'>``."""
    if isinstance(x, type):
        return f"{x.__module__.replace('numpy', 'np')}.{x.__qualname__}".removeprefix("builtins.")
    return repr(x)


def _bad(what: str, cause: str, err: UnsupportedError | None = None) -> UnsupportedError:
    detail = f" ({err.cause})" if err is not None and err.cause else ""
    return UnsupportedError(
        what,
        "dtype",
        f"{cause}{detail}",
        "Map source dtypes to targets, e.g. dtype={np.float64: torch.float32}; both sides take any dtype spelling",
    )


def _source_key(spelling: object, what: str) -> Source:
    try:
        return torch_dtype(spelling)
    except UnsupportedError:
        pass  # a NumPy dtype torch lacks (longdouble) can still be a source
    try:
        return numpy_dtype(spelling)
    except UnsupportedError as err:
        raise _bad(what, f"the dtype mapping's key {_spelled(spelling)} names no dtype", err) from err


def normalize_dtype_map(mapping: Mapping[Any, Any], what: str, target: Callable[[object], T]) -> DtypeMap[T]:
    """Normalize a ``dtype=`` mapping; ``target`` normalizes (and checks) each value.

    Raises:
        UnsupportedError: a key or value that names no dtype, a value the direction cannot
            produce, or two spellings of one source dtype mapped to different targets.

    Example:
        >>> import numpy as np, torch
        >>> m = normalize_dtype_map({np.float64: "float32"}, "to_tensor", torch_dtype)
        >>> m.target(np.dtype(">f8")), m.target(torch.float32)
        (torch.float32, None)
    """
    by_torch: dict[torch.dtype, T] = {}
    by_numpy: dict[np.dtype[Any], T] = {}
    for spelling, value in mapping.items():
        key = _source_key(spelling, what)
        if value is None:
            raise _bad(what, f"the dtype mapping's value for {_spelled(spelling)} is None")
        try:
            tgt = target(value)
        except UnsupportedError as err:
            why = f"the dtype mapping's value {_spelled(value)} for {_spelled(spelling)} is not a {what} target"
            raise _bad(what, why, err) from err
        table: dict[Any, T] = by_torch if isinstance(key, torch.dtype) else by_numpy
        if key in table and table[key] != tgt:
            raise _bad(what, f"the dtype mapping gives {_name(key)} two targets, {_name(table[key])} and {_name(tgt)}")
        table[key] = tgt
    return DtypeMap(by_torch, by_numpy)


def leaf_dtype(x: object) -> Source | None:
    """The dtype a mapping is matched against: a tensor's or array's, or another library's ``.dtype``.

    ``None`` when the leaf has none that normalizes (a buffer, a DataFrame): such a leaf is
    matched by the dtype of what it is adopted as.
    """
    try:
        dt: object = getattr(x, "dtype", None)
    except Exception:  # a property that fails: no dtype to match
        return None
    if isinstance(dt, (torch.dtype, np.dtype)):
        return dt
    if dt is None or callable(dt):
        return None
    try:
        found: np.dtype[Any] = np.dtype(dt)  # type: ignore[call-overload]  # JAX's and SciPy's dtypes
    except TypeError:  # a pandas extension dtype, say
        return None
    return found
