"""Tensor files: one module per format, and the table that picks a format by suffix.

| format | suffixes | module |
|---|---|---|
| NumPy array | ``.npy`` | ``npy_files.py`` |
| NumPy archive | ``.npz`` | ``npz_files.py``, ``npz_zip.py``, ``npz_records.py`` |
| torch.save | ``.pt``, ``.pth``, ``.bin`` | ``torch_files.py``; reading ``pickle_*.py``, writing ``pt_*.py`` |
| safetensors | ``.safetensors`` | ``safetensors_files.py`` |
| Hugging Face sharded safetensors set | a directory, ``.index.json`` | ``hf_sets.py``, ``set_output.py`` |
| torch.distributed.checkpoint (DCP) | a directory with ``.metadata`` | ``dcp_files.py``, ``dcp_metadata.py`` |

A path names a sharded set (format ``safetensors-set``) when it ends with ``.index.json`` or
with ``/``, is an existing directory (one named like a file, ``out.npz``, only if it holds an
index), or does not exist yet and has no suffix at all: ``tensorbridge convert model.pt out``
writes the directory ``out``. An existing directory holding ``.metadata`` and no index is a DCP
checkpoint (format ``dcp``), not a set. A new DCP checkpoint is written when the format is named
(``--to dcp``, ``tb.save(..., format="dcp")``), or by ``convert --force`` over an existing one: one
``__0_<K>.distcp`` data file per tensor and ``.metadata``, by torch's own ``dcp.save``, keyed by
the entries' dotted names (the nesting record and string metadata are not kept).
"""

from __future__ import annotations

import os
from typing import Final

from ..errors import UnsupportedError
from .base import Archive, Entry, Format

__all__ = ["FORMATS", "Archive", "Entry", "Format", "format_for", "is_set_path"]


def _formats() -> dict[str, Format]:
    from . import dcp_files, hf_sets, npy_files, npz_files, safetensors_files, torch_files

    table: dict[str, Format] = {}
    sets = (hf_sets.SAFETENSORS_SET, dcp_files.DCP)
    for fmt in (npy_files.NPY, npz_files.NPZ, torch_files.PT, safetensors_files.SAFETENSORS, *sets):
        table[fmt.name] = fmt
    return table


FORMATS: Final = _formats()


def format_for(path: str, override: str | None = None) -> Format:
    """The format named ``override``, or the one ``path``'s suffix says (a directory: a sharded set).

    Raises:
        UnsupportedError: (TypeError) an unknown format name or suffix.

    Example:
        >>> format_for("model.safetensors").name, format_for("model.safetensors.index.json").name
        ('safetensors', 'safetensors-set')
    """
    if override is not None:
        fmt = FORMATS.get(override.lower().lstrip("."))
        if fmt is None:
            raise UnsupportedError("format", override, f"unknown format {override!r}", f"Use one of {sorted(FORMATS)}")
        return fmt
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    from .dcp_files import is_dcp_dir

    if is_dcp_dir(path):
        return FORMATS["dcp"]
    if is_set_path(path):
        return FORMATS["safetensors-set"]
    for fmt in FORMATS.values():
        if suffix in fmt.suffixes:
            return fmt
    raise UnsupportedError(
        "format",
        os.fspath(path),
        f"the suffix {suffix or '(none)'!r} names no format tensorbridge knows",
        "Use .npy, .npz, .pt/.pth/.bin or .safetensors, a directory for a sharded set, or name the format "
        "with --from/--to (dcp: a torch.distributed.checkpoint directory)",
    )


def is_set_path(path: str) -> bool:
    """Whether ``path`` names a sharded set: a directory, ``*.index.json``, ``.../``, or a new path without suffix.

    A directory whose name has a file format's suffix (``out.npz``) is a set only if it holds an index.

    Example:
        >>> is_set_path("out/"), is_set_path("no-such-dir-here"), is_set_path("w.npz")
        (True, True, False)
    """
    path = os.fspath(path)
    from .dcp_files import is_dcp_dir

    if is_dcp_dir(path):  # a DCP checkpoint (.metadata, no index) is no set
        return False
    if path.endswith(("/", os.sep)) or path.lower().endswith(".index.json"):
        return True
    suffix = os.path.splitext(path)[1].lower()
    if os.path.isdir(path):  # a directory named like a file (out.npz/) is a set only if it holds an index
        from .hf_sets import find_index

        named_as_file = any(suffix in fmt.suffixes for fmt in FORMATS.values())
        return not named_as_file or find_index(path) is not None
    return not suffix and not os.path.lexists(path)
