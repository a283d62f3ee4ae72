"""What the pickle scan builds instead of objects: stand-ins that hold no data, and the limits they keep.

:func:`~tensorbridge.files.pickle_scan.scan` runs a torch.save pickle over these: a
:class:`Storage` for each storage the pickle refers to, a :class:`Tensor` for each tensor it
rebuilds (its byte count only), a ``_Box`` for each container (its kind, depth and size), and
small records for globals, byte strings and long strings. The checks that build them are in
``pickle_rules.py``; the opcodes that call those checks in ``pickle_scan.py``.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any, Final

import torch

__all__ = ["MAX_DEPTH", "MAX_ITEMS", "MAX_REPEAT", "REPEAT_SLACK", "Storage", "Tensor"]

#: Deeper nesting is refused (checkpoints nest < 10; torch.save's own pickler stops near 1000).
MAX_DEPTH: Final = 100
#: Container items alive at once (and tree nodes after loading): each costs ``flatten`` ~250 bytes.
MAX_ITEMS: Final = 2_000_000
#: A tensor may repeat its storage's bytes this often (zero or overlapping strides), plus the slack.
MAX_REPEAT: Final = 8
REPEAT_SLACK: Final = 1 << 20
_MAX_DIM: Final = 1 << 62


@dataclass(frozen=True, slots=True)
class Storage:
    """A storage the pickle refers to: its key, element size and bytes."""

    key: str
    dtype: torch.dtype | None  # None: an UntypedStorage (bytes)
    nbytes: int


@dataclass(frozen=True, slots=True)
class Tensor:
    """A tensor the pickle rebuilds: how many bytes it holds (logically)."""

    nbytes: int


class _Box:
    """A container the pickle builds: what it is, how deep it nests, how many items it holds."""

    __slots__ = ("consumed", "depth", "items", "kind", "sealed", "size")

    def __init__(self, kind: str, depth: int = 1, items: tuple[Any, ...] | list[Any] | None = None) -> None:
        self.kind, self.depth, self.items = kind, depth, items
        self.size = 0 if items is None else len(items)
        self.sealed = self.consumed = False


@dataclass(frozen=True, slots=True)
class _Global:
    name: str


@dataclass(frozen=True, slots=True)
class _Bytes:
    n: int


@dataclass(frozen=True, slots=True)
class _Text:
    n: int  # a string too long to keep


class _Opaque:
    """What an unknown (not torch-owned) global makes: torch.load decides whether it may."""


_OPAQUE: Final = _Opaque()


def _depth(value: Any) -> int:
    return value.depth if isinstance(value, _Box) else 0


def _dtype(name: str) -> torch.dtype | None:
    if not name.startswith("torch."):
        return None
    value = getattr(torch, name[6:], None)
    return value if isinstance(value, torch.dtype) else None


def _storage_dtype(name: str) -> torch.dtype | None:
    """The dtype of a storage class global; None for UntypedStorage; KeyError: not a storage class."""
    if name in ("torch.UntypedStorage", "torch.storage.UntypedStorage"):
        return None
    return _storage_dtypes()[name]


def _is_storage_class(name: str) -> bool:
    return name in ("torch.UntypedStorage", "torch.storage.UntypedStorage") or name in _storage_dtypes()


@functools.cache
def _storage_dtypes() -> dict[str, torch.dtype]:
    """``torch.FloatStorage`` -> torch.float32, ... (the classes torch.save names in storage ids)."""
    table: dict[str, torch.dtype] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is "deprecated": these classes still name dtypes
        for attr in dir(torch):
            cls = getattr(torch, attr)
            if attr.endswith("Storage") and isinstance(cls, type) and issubclass(cls, torch.storage.TypedStorage):
                dtype = getattr(cls, "dtype", None)
                if isinstance(dtype, torch.dtype):
                    table[f"torch.{attr}"] = dtype
    return table
