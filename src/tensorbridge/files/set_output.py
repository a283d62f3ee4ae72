"""Writing a destination directory (a sharded set, a DCP checkpoint) safely: checked, written privately, renamed.

The rules are ``output.py``'s, for a directory:

1. :func:`check_set_destination` refuses, before any data is read, a destination whose parent is
   missing, not a directory or not writable, or whose name cannot be encoded (``output.py``'s
   checks); one that exists without ``force``; and, even with ``force``, one that is not a
   directory or holds anything but a set's files (``*.safetensors`` and ``*.index.json``) or a
   DCP checkpoint's (``.metadata`` and ``*.distcp``, ``dcp_files.py``, written the same way), so
   ``--force`` never deletes a ``config.json`` or a tokenizer.
2. :class:`SetOutput` makes a fresh private directory beside the destination
   (``tempfile.mkdtemp``: exclusive, mode 0700, a hidden random name); the writer fills it; an
   error or a signal removes it and everything in it.
3. :meth:`SetOutput.commit` syncs the files, gives the directory the usual permissions and
   renames it into place. Without ``force`` a destination that appeared meanwhile is kept
   (``rename()`` fails on a non-empty directory or a file; an empty directory made in that
   instant is the one thing it replaces). With ``force`` the old set is renamed aside first,
   the new one put in its place, then the old one removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import tempfile
from types import TracebackType

from ..errors import StructureError
from .output import _signals_held, _umask, check_destination, shown

__all__ = ["SetOutput", "check_set_destination"]


def _refuse(dst: str, why: str, fix: str) -> StructureError:
    return StructureError("convert", shown(dst), why, fix)


def _set_files_only(dst: str) -> str | None:
    """The first entry of directory ``dst`` that is not a set's or a DCP checkpoint's file (None: all are)."""
    for entry in sorted(os.scandir(dst), key=lambda e: e.name):
        is_set_file = entry.name.endswith((".safetensors", ".index.json", ".distcp")) or entry.name == ".metadata"
        if not is_set_file or not entry.is_file(follow_symlinks=False):
            return entry.name
    return None


def check_set_destination(dst: str, *, force: bool) -> str:
    """Refuse a set destination that cannot or may not be written; return its parent directory.

    Raises:
        StructureError: (ValueError) as :func:`output.check_destination` for the parent; ``dst``
            exists without ``force``; with ``force``, ``dst`` is not a directory or holds other
            files than a set's or a DCP checkpoint's.

    Example:
        >>> d = tempfile.mkdtemp()
        >>> check_set_destination(d, force=False)
        Traceback (most recent call last):
        ...
        tensorbridge.errors.StructureError: convert at ...: the destination exists (a directory). Pass --force...
    """
    dst = dst.rstrip("/" + os.sep) or dst
    if dst.lower().endswith(".index.json"):
        raise _refuse(
            dst, "it names an index file, not a directory", "Give the directory to write the set to, e.g. out/"
        )
    if not os.path.lexists(dst):
        return check_destination(dst, force=force)
    here = os.lstat(dst)
    if not stat.S_ISDIR(here.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(here.st_mode) else "a file"
        raise _refuse(dst, f"the destination exists ({kind}, not a directory)", "Pick another name for the set")
    if not force:
        raise _refuse(dst, "the destination exists (a directory)", "Pass --force to replace it, or pick another name")
    other = _set_files_only(dst)
    if other is not None:
        raise _refuse(
            dst,
            f"it holds {shown(other)!r}, which is not part of a sharded set or a DCP checkpoint, so --force does not "
            "replace it",
            "Pick another name, or remove the directory yourself",
        )
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _refuse(dst, f"files cannot be created in {shown(folder)} (permission denied)", "Pick another name")
    return folder


class SetOutput:
    """The new directory for ``dst``: made privately beside it, renamed into place by :meth:`commit`.

    Use it as a context manager: leaving it uncommitted (an error, a signal) removes the directory.

    Attributes:
        path: the private directory to write the set into.

    Example:
        >>> dst = os.path.join(tempfile.mkdtemp(), "out")
        >>> with SetOutput(dst, force=False) as out:
        ...     open(os.path.join(out.path, "a.safetensors"), "wb").close()
        ...     out.commit()
        >>> os.listdir(dst)
        ['a.safetensors']
    """

    def __init__(self, dst: str, *, force: bool) -> None:
        self.dst = dst.rstrip("/" + os.sep) or dst
        self.force = force
        folder = check_set_destination(self.dst, force=force)
        self._done = False
        base = os.path.basename(self.dst)[:100]
        try:
            with _signals_held():  # a directory made is a directory recorded, so that it is removed
                self.path = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=folder)
        except OSError as err:
            why = err.strerror or str(err)
            raise _refuse(
                self.dst, f"a directory cannot be made in {shown(folder)} ({why})", "Pick another directory"
            ) from err

    def size(self) -> int:
        """How many bytes the files written so far hold (what a progress display shows)."""
        total = 0
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.path):
                with contextlib.suppress(OSError):
                    total += entry.stat(follow_symlinks=False).st_size
        return total

    def commit(self) -> None:
        """Put the written directory at ``dst`` (replacing an old set only with ``force``).

        Raises:
            StructureError: ``dst`` appeared meanwhile (without ``force``), or cannot be replaced.
        """
        for entry in os.scandir(self.path):
            fd = os.open(entry.path, os.O_RDONLY)
            try:
                os.fsync(fd)  # the data is on disk before the name is
            finally:
                os.close(fd)
        os.chmod(self.path, 0o777 & ~_umask())  # what a plain mkdir() would have made
        old = None
        if self.force and os.path.lexists(self.dst):
            check_set_destination(self.dst, force=True)  # still a set and nothing else
            old = os.path.join(
                os.path.dirname(self.path), f".{os.path.basename(self.dst)[:100]}.{secrets.token_hex(6)}.old"
            )
            os.rename(self.dst, old)
        try:
            os.rename(self.path, self.dst)
        except OSError as err:
            if old is not None:
                with contextlib.suppress(OSError):
                    os.rename(old, self.dst)
            raise _refuse(
                self.dst,
                "the destination exists now (it appeared while converting)" if os.path.lexists(self.dst) else
                f"the directory cannot be put in place ({err.strerror or err})",
                "Pass --force to replace it, or pick another name",
            ) from None  # fmt: skip
        self._done = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def __enter__(self) -> SetOutput:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if not self._done:
            shutil.rmtree(self.path, ignore_errors=True)
