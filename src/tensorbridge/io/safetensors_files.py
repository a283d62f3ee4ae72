"""Stub: safetensors (being written)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import UnsupportedError
from .base import Archive, Entry

__all__ = ["SAFETENSORS"]


class _Stub:
    def __init__(self, name: str, suffixes: tuple[str, ...]) -> None:
        self.name = name
        self.suffixes = suffixes

    def read(self, path: str) -> Archive:
        raise UnsupportedError("reading", path, f"{self.name} is not supported yet", "Wait for it")

    def write(self, path: str, entries: Sequence[Entry], structure: Any, extra: dict[str, str]) -> None:
        raise UnsupportedError("writing", path, f"{self.name} is not supported yet", "Wait for it")


SAFETENSORS = _Stub("safetensors", (".safetensors",))
