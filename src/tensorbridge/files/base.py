"""What every file format reads and writes: named arrays, read lazily, plus how they nest.

A file is read as an :class:`Archive`: its entries (name, dtype, shape, byte size) come from the
header alone, and each entry's data is read only when :meth:`Entry.load` is called, memory-mapped
where the format allows. Writers take entries one at a time, so a conversion holds at most one
tensor in memory (plus what the format itself needs).

Arrays are NumPy arrays throughout; bfloat16 and float8 are ``ml_dtypes`` arrays, so every dtype
of ``tensorbridge.ROWS`` travels through every format.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import FileFormatError, StructureError

__all__ = ["Archive", "Entry", "Format", "bad_file", "check_size"]

# The most bytes a header may claim before anything is allocated for it (safetensors allows
# 100 MB; nothing legitimate comes close).
MAX_HEADER_BYTES = 100 << 20


@dataclass(frozen=True)
class Entry:
    """One named array in a file.

    Attributes:
        name: the flat name (nested containers use dotted names, see ``structure.py``).
        dtype: the NumPy dtype it loads as (ml_dtypes for bfloat16/float8).
        shape: its shape.
        load: reads the data (a memory map where the format allows); called at most once per use.
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray[Any, Any]] = field(repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        """Bytes of data."""
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


@dataclass
class Archive:
    """A file's contents, before any data is read.

    Attributes:
        entries: the arrays, in file order.
        structure: how the entries nest (``structure.py``), or None for a flat set of names.
        extra: format-specific metadata to carry along (safetensors ``__metadata__``), str -> str.
    """

    entries: list[Entry]
    structure: Any = None
    extra: dict[str, str] = field(default_factory=dict)


class Format(Protocol):
    """One file format: a reader and a streaming writer.

    A format whose files are directories (a sharded set, ``hf_sets.py``) also has a class
    attribute ``directory = True``: ``read``/``write`` are then given a directory (``write`` an
    empty one that ``set_output.py`` puts in place), and ``steps.py`` looks the attribute up with
    ``getattr(fmt, "directory", False)``.
    """

    name: str
    suffixes: tuple[str, ...]
    keeps_metadata: bool
    """Whether the file has room for ``Archive.extra`` (string metadata) and keeps it."""

    def read(self, path: str) -> Archive:
        """Read the header(s) of ``path``, validating them; load no data.

        Raises:
            FileFormatError: the file is malformed, truncated, or claims more data than it holds.
        """
        ...

    def write(self, path: str, entries: Sequence[Entry], structure: Any, extra: dict[str, str]) -> None:
        """Write the entries to a new file at ``path``, loading and writing one entry at a time.

        ``structure`` is the nesting record (``structure.py``) to keep in the file's metadata
        (None: a flat set of names); ``extra`` is format metadata to carry over where the format
        has room for it. Peak memory: one entry's data plus a small constant.

        Raises:
            UnsupportedError: the format cannot hold an entry (a dtype, a name, several arrays in .npy).
        """
        ...


def bad_file(
    path: str, why: str, fix: str = "Check that the file is complete and of the format its suffix says"
) -> FileFormatError:
    """The error for a malformed file."""
    return FileFormatError("reading", os.fspath(path), why, fix)


def check_size(path: str, claimed: int, available: int, what: str) -> None:
    """Refuse a header that claims more bytes than the file holds (before allocating them)."""
    if claimed < 0 or claimed > available:
        raise bad_file(path, f"{what} claims {claimed} bytes but the file holds only {available}")


def load_for_writing(path: str, entry: Entry) -> np.ndarray[Any, Any]:
    """Load an entry for a writer: the array it declared (dtype up to byte order, and shape), or an error.

    Every writer checks this one rule, so a header written from the declarations always matches
    the bytes that follow it.

    Raises:
        StructureError: (ValueError) the entry loads as something else than it declared.

    Example:
        >>> e = Entry("w", np.dtype(">f4"), (2,), lambda: np.zeros(2, "<f4"))
        >>> load_for_writing("w.npy", e).tolist()
        [0.0, 0.0]
    """
    data = entry.load()
    if (
        not isinstance(data, np.ndarray)
        or data.shape != entry.shape
        or data.dtype.newbyteorder("=") != entry.dtype.newbyteorder("=")
    ):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise StructureError(
            "writing",
            path,
            f"array {entry.name!r} was declared {entry.dtype} {entry.shape} but loaded as {got}",
            "Make the entry's dtype and shape match its data",
        )
    return data


def clipped(text: str, limit: int = 160) -> str:
    """``text`` cut to ``limit`` characters (with ``...``), so a hostile value cannot flood a message.

    Example:
        >>> clipped("x" * 200, 10)
        'xxxxxxx...'
    """
    return text if len(text) <= limit else text[: limit - 3] + "..."
