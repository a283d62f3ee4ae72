"""Tensor files: one module per format, and the table that picks a format by suffix.

| format | suffixes | module |
|---|---|---|
| NumPy array | ``.npy`` | ``npy_files.py`` |
| NumPy archive | ``.npz`` | ``npz_files.py``, ``npz_zip.py``, ``npz_records.py`` |
| torch.save | ``.pt``, ``.pth``, ``.bin`` | ``torch_files.py``; reading ``pickle_*.py``, writing ``pt_*.py`` |
| safetensors | ``.safetensors`` | ``safetensors_files.py`` |
"""

from __future__ import annotations

import os
from typing import Final

from ..errors import UnsupportedError
from .base import Archive, Entry, Format

__all__ = ["FORMATS", "Archive", "Entry", "Format", "format_for"]


def _formats() -> dict[str, Format]:
    from . import npy_files, npz_files, safetensors_files, torch_files

    table: dict[str, Format] = {}
    for fmt in (npy_files.NPY, npz_files.NPZ, torch_files.PT, safetensors_files.SAFETENSORS):
        table[fmt.name] = fmt
    return table


FORMATS: Final = _formats()


def format_for(path: str, override: str | None = None) -> Format:
    """The format named ``override``, or the one ``path``'s suffix says.

    Raises:
        UnsupportedError: (TypeError) an unknown format name or suffix.

    Example:
        >>> format_for("model.safetensors").name
        'safetensors'
    """
    if override is not None:
        fmt = FORMATS.get(override.lower().lstrip("."))
        if fmt is None:
            raise UnsupportedError("format", override, f"unknown format {override!r}", f"Use one of {sorted(FORMATS)}")
        return fmt
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    for fmt in FORMATS.values():
        if suffix in fmt.suffixes:
            return fmt
    raise UnsupportedError(
        "format",
        os.fspath(path),
        f"the suffix {suffix or '(none)'!r} names no format tensorbridge knows",
        "Use .npy, .npz, .pt/.pth/.bin or .safetensors, or name the format with --from/--to",
    )
