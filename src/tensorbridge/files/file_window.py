"""A byte window of a file, read as a file of its own: what a DCP chunk is inside its data file.

A :class:`Window` names bytes ``[offset, offset + length)`` of a file. :meth:`Window.open` gives a
read-only, seekable file object whose position 0 is ``offset`` and whose end is the window's end:
reads stop there (as at the end of a file) and seeks are relative to the window, so a zip
directory or pickle inside the window can never reach the bytes around it. :meth:`Window.mapped`
maps the window read-only as a memoryview. Both check that the file still holds the whole window
(it may have been truncated since it was measured) and raise
:class:`~tensorbridge.errors.FileFormatError` where it does not.
"""

from __future__ import annotations

import io
import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .base import bad_file

__all__ = ["Window", "WindowFile"]


@dataclass(frozen=True)
class Window:
    """Bytes ``[offset, offset + length)`` of the file at ``path``; ``what`` names them in errors.

    Example:
        >>> import os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "data.bin")
        ...     with open(path, "wb") as f:
        ...         _ = f.write(b"headPAYLOADtail")
        ...     with Window(path, 4, 7).open() as f:
        ...         print(f.read(), f.seek(0, os.SEEK_END), f.read())
        b'PAYLOAD' 7 b''
    """

    path: str
    offset: int
    length: int
    what: str = "the window"

    def _check(self, size: int) -> None:
        if self.offset < 0 or self.length < 0 or self.offset + self.length > size:
            raise bad_file(
                self.path,
                f"{self.what} ends past the end of the file, at byte {self.offset + self.length} of {size} "
                "(it is truncated)",
            )

    def open(self) -> WindowFile:
        """The window as a read-only binary file object, positioned at its start.

        Raises:
            FileFormatError: (ValueError) the file no longer holds the whole window.
            OSError: the file cannot be opened.
        """
        raw = open(self.path, "rb", buffering=0)  # noqa: SIM115 (owned by the WindowFile)
        try:
            self._check(os.fstat(raw.fileno()).st_size)
        except BaseException:
            raw.close()
            raise
        return WindowFile(raw, self.offset, self.length)

    @contextmanager
    def mapped(self) -> Iterator[memoryview]:
        """The window mapped read-only, as a memoryview released on exit (empty for an empty window).

        Raises:
            FileFormatError: (ValueError) the file no longer holds the whole window.

        Example:
            >>> import os, tempfile
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     path = os.path.join(tmp, "data.bin")
            ...     with open(path, "wb") as f:
            ...         _ = f.write(b"headPAYLOADtail")
            ...     with Window(path, 4, 7).mapped() as view:
            ...         print(bytes(view[:3]), len(view))
            b'PAY' 7
        """
        with open(self.path, "rb") as f:
            self._check(os.fstat(f.fileno()).st_size)
            if not self.length:
                yield memoryview(b"")
                return
            skip = self.offset % mmap.ALLOCATIONGRANULARITY
            with mmap.mmap(f.fileno(), skip + self.length, access=mmap.ACCESS_READ, offset=self.offset - skip) as m:
                view = memoryview(m)[skip:]
                try:
                    yield view
                finally:
                    view.release()


class WindowFile(io.RawIOBase):
    """A read-only file object over one window of an open file (see :meth:`Window.open`)."""

    def __init__(self, raw: io.FileIO, offset: int, length: int) -> None:
        super().__init__()
        self._raw, self._start, self._length, self._pos = raw, offset, length, 0

    def readable(self) -> bool:  # noqa: D102 (io.RawIOBase)
        return True

    def seekable(self) -> bool:  # noqa: D102
        return True

    def tell(self) -> int:  # noqa: D102
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:  # noqa: D102
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence ({whence})")
        if base + offset < 0:
            raise OSError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:  # noqa: D102 (reads nothing past the window's end)
        with memoryview(buffer) as view, view.cast("B") as out:
            n = max(0, min(len(out), self._length - self._pos))
            if not n:
                return 0
            self._raw.seek(self._start + self._pos)
            got = self._raw.readinto(out[:n]) or 0
            self._pos += got
            return got

    def close(self) -> None:  # noqa: D102
        if not self.closed:
            self._raw.close()
        super().close()
