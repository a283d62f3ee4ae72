"""Writing a destination file safely: checked first, written privately, put in place atomically.

``convert`` never writes through a name someone else can change under it:

1. :func:`check_destination` refuses, before any data is read or written, a destination that is
   a directory, that exists (a dangling symbolic link included) without ``force``, whose
   directory is missing, not a directory or not writable, or whose name the file system cannot
   encode. Every message names the user's path, never a temporary one.
2. :class:`Output` creates the new file exclusively in the destination's directory (held open by
   a directory descriptor): on Linux an unnamed ``O_TMPFILE`` file, which no other process can
   reach and which vanishes with the process, even on SIGKILL; elsewhere a fresh name opened
   ``O_CREAT | O_EXCL | O_NOFOLLOW``, which is kept (never unlinked and reopened). The file is
   held open throughout, and writers are handed ``/proc/self/fd/N`` where the system has it: a
   path that opens the held file itself, whatever is planted at any name meanwhile.
3. :meth:`Output.commit` links the held file into place with ``link()``, which fails if the
   destination exists by then (another conversion finished first, a symlink was planted); only
   ``force`` replaces, with ``rename()``.

Without ``/proc`` (macOS, BSD) the writers must open the temporary name, so a name swapped under
them is detected before commit (its inode is no longer the held file's) but only after they wrote
through it: writers that accept an open file would close that gap.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import stat
import sys
from collections.abc import Iterator
from types import TracebackType

from ..errors import StructureError

__all__ = ["Output", "check_destination", "shown"]

#: Where ``/proc/self/fd/N`` opens the held file itself (None: no such directory here).
PROC_FD: str | None = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else None
#: Whether to try an unnamed ``O_TMPFILE`` file first (Linux; not every file system has it).
USE_TMPFILE = hasattr(os, "O_TMPFILE")

_DIR_FD = os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_TAMPERED = "was removed or replaced while it was being written (another process changed the directory)"
_WHO = "Check who else writes to that directory, then convert again"


def shown(path: str) -> str:
    r"""``path`` as text any terminal can print: undecodable bytes as ``\xff`` escapes.

    Example:
        >>> shown(os.fsdecode(b"\xff.npz"))
        '\\xff.npz'
    """
    try:
        raw = os.fsencode(path)
    except UnicodeError:  # a lone surrogate that did not come from the file system
        return path.encode("utf-8", "backslashreplace").decode("ascii")
    return raw.decode(sys.getfilesystemencoding(), "backslashreplace")


def _refuse(dst: str, why: str, fix: str) -> StructureError:
    return StructureError("convert", shown(dst), why, fix)


def check_destination(dst: str, *, force: bool) -> str:
    """Refuse a destination that cannot or may not be written; return its directory.

    Raises:
        StructureError: (ValueError) the destination is a directory, exists without ``force``, sits
            in a directory that is missing, not a directory or not writable, or has a name the
            file system cannot encode.

    Example:
        >>> import tempfile
        >>> check_destination(os.path.join(tempfile.mkdtemp(), "missing", "x.npz"), force=True)
        Traceback (most recent call last):
        ...
        tensorbridge.errors.StructureError: convert at ...x.npz: its directory ...missing does not exist...
    """
    try:
        os.fsencode(dst)
    except UnicodeError as err:
        raise _refuse(dst, f"the name cannot be encoded for the file system ({err})", "Pick another name") from err
    if not os.path.basename(dst):
        raise _refuse(dst, "the destination names a directory, not a file", "Give a file name, e.g. out.safetensors")
    folder = os.path.dirname(os.path.abspath(dst))
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        raise _refuse(
            dst, f"its directory {shown(folder)} does not exist", "Create it first, or pick another name"
        ) from None
    except NotADirectoryError:
        raise _refuse(dst, f"{shown(folder)} is not a directory", "Pick a destination inside a directory") from None
    except PermissionError:
        raise _refuse(
            dst, f"its directory {shown(folder)} cannot be reached (permission denied)", "Pick another name"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(dst, f"{shown(folder)} is not a directory", "Pick a destination inside a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _refuse(
            dst, f"files cannot be created in {shown(folder)} (permission denied)", "Pick a directory you may write"
        )
    try:
        here = os.lstat(dst)
    except FileNotFoundError:
        return folder
    if stat.S_ISDIR(here.st_mode):
        raise _refuse(dst, "it is a directory", f"Give a file name inside it, e.g. {shown(os.path.join(dst, 'out'))}")
    if not force:
        why = "the destination exists"
        if stat.S_ISLNK(here.st_mode):
            kind = "a symbolic link" if os.path.exists(dst) else "a dangling symbolic link"
            why += f" ({kind} to {shown(os.readlink(dst))})"
        raise _refuse(dst, why, "Pass --force to replace it, or pick another name")
    return folder


_HELD = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and SIGHUP for a few system calls that must not be split (a name made and recorded).

    The signal is delivered, and raises, right after: nothing is lost, only nothing is left behind.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _umask() -> int:
    """The process umask, read without changing it where the system allows."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)  # elsewhere the only way to read it is to set it (and put it back at once)
    os.umask(old)
    return old


class Output:
    """The new file for ``dst``: created exclusively beside it, held open, linked into place by :meth:`commit`.

    Use it as a context manager: leaving it uncommitted (an error, a signal) removes the file.

    Attributes:
        path: the path writers and readers should open: ``/proc/self/fd/N`` (the held file
            itself, immune to renames and planted links) where the system has it, else the
            temporary name.

    Example:
        >>> import tempfile
        >>> dst = os.path.join(tempfile.mkdtemp(), "x.bin")
        >>> with Output(dst, force=False) as out:
        ...     with open(out.path, "wb") as f:
        ...         _ = f.write(b"data")
        ...     out.commit()
        >>> with open(dst, "rb") as f:
        ...     f.read()
        b'data'
    """

    def __init__(self, dst: str, *, force: bool) -> None:
        folder = check_destination(dst, force=force)
        self.dst, self.force = dst, force
        self._base = os.path.basename(dst)
        self._dir_fd: int | None = None
        self._fd = -1
        self._name: str | None = None  # the temporary name, if the file has one
        self._extra: str | None = None  # the second name ``force`` renames over ``dst``, until it is renamed
        self._done = False
        try:
            if _DIR_FD:
                self._dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
            self._create(folder)
        except BaseException:
            self._discard()
            raise
        st = os.fstat(self._fd)
        self._id = (st.st_dev, st.st_ino)
        if PROC_FD is not None:
            self.path = f"{PROC_FD}/{self._fd}"
        else:
            assert self._name is not None
            self.path = self._at(self._name)

    def _at(self, name: str) -> str:
        """``name`` as an absolute path (for messages and systems without ``dir_fd``)."""
        return os.path.join(os.path.dirname(os.path.abspath(self.dst)), name)

    def _open(self, name: str, flags: int) -> int:
        if self._dir_fd is not None:
            return os.open(name, flags, 0o600, dir_fd=self._dir_fd)
        return os.open(self._at(name), flags, 0o600)

    def _create(self, folder: str) -> None:
        try:
            if USE_TMPFILE and PROC_FD is not None:
                with contextlib.suppress(OSError):  # not every file system has O_TMPFILE: use a name
                    self._fd = self._open(".", os.O_TMPFILE | os.O_RDWR | _CLOEXEC)
                    return
            while True:
                name = self._fresh()
                with _signals_held():  # a name made is a name recorded, so that it is removed
                    try:
                        self._fd = self._open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC)
                    except FileExistsError:
                        continue
                    self._name = name
                return
        except OSError as err:
            why = err.strerror or str(err)
            raise _refuse(
                self.dst, f"a file cannot be created in {shown(folder)} ({why})", "Pick another directory"
            ) from err

    def _fresh(self) -> str:
        """A new temporary name: hidden, random, and short enough for any file system (255 bytes)."""
        return f".{self._base[:100]}.{secrets.token_hex(6)}.tmp"

    def _is_ours(self, name: str) -> bool:
        """Whether ``name`` is still the held file (not renamed away, not replaced by a link)."""
        try:
            st = os.lstat(name, dir_fd=self._dir_fd) if self._dir_fd is not None else os.lstat(self._at(name))
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == self._id

    def size(self) -> int:
        """How many bytes the file being written holds now (what a progress display shows)."""
        return os.fstat(self._fd).st_size

    def commit(self) -> None:
        """Put the written file at ``dst``: only if ``dst`` still does not exist, unless ``force``.

        Raises:
            StructureError: ``dst`` appeared meanwhile (without ``force``), became a directory,
                or the temporary name was removed or replaced while the writer used it.
        """
        if hasattr(os, "fchmod"):
            os.fchmod(self._fd, 0o666 & ~_umask())  # what a plain open() would have created
        os.fsync(self._fd)  # the data is on disk before the name is: no empty file after a crash
        if PROC_FD is None and (self._name is None or not self._is_ours(self._name)):
            raise _refuse(self.dst, f"the temporary file {_TAMPERED}", _WHO)
        source = self.path if PROC_FD is not None else self._at(self._name or "")
        try:
            self._link(source, self._base)
        except FileExistsError:
            if not self.force:
                raise _refuse(
                    self.dst,
                    "the destination exists now (it appeared while converting)",
                    "Pass --force to replace it, or pick another name",
                ) from None
            self._replace(source)
        except FileNotFoundError as err:  # the held file lost its last name: it cannot be linked again
            raise _refuse(self.dst, f"the temporary file {_TAMPERED}", _WHO) from err
        except OSError as err:
            raise _refuse(
                self.dst, f"the file cannot be put in place ({err.strerror or err})", "Check the directory"
            ) from err
        self._done = True
        if self._dir_fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._dir_fd)

    def _link(self, source: str, name: str) -> None:
        # follow_symlinks=True: link the file /proc/self/fd/N points at, not the magic link itself.
        if self._dir_fd is not None:
            os.link(source, name, dst_dir_fd=self._dir_fd, follow_symlinks=True)
        elif PROC_FD is not None:
            os.link(source, self._at(name), follow_symlinks=True)
        else:
            os.link(source, self._at(name))  # the temporary name, checked to be the held file just before

    def _replace(self, source: str) -> None:
        """``force``: link the file under a fresh name, then rename that over ``dst``."""
        while True:
            name = self._fresh()
            with _signals_held():  # the extra name is removed even if a signal comes now
                try:
                    self._link(source, name)
                except FileExistsError:
                    continue
                self._extra = name
                break
        try:
            if self._dir_fd is not None:
                os.replace(name, self._base, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            else:
                os.replace(self._at(name), self.dst)
        except OSError as err:
            if err.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise _refuse(self.dst, "it is a directory", "Give a file name inside it") from None
            raise

    def _unlink(self, name: str) -> None:
        with contextlib.suppress(OSError):
            if self._dir_fd is not None:
                os.unlink(name, dir_fd=self._dir_fd)
            else:
                os.unlink(self._at(name))

    def _discard(self) -> None:
        """Close everything; remove the temporary names that are still the held file."""
        for name in (self._name, self._extra):
            if name is not None and self._is_ours(name):
                self._unlink(name)
        self._name = self._extra = None
        for fd in (self._fd, self._dir_fd):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd, self._dir_fd = -1, None

    def __enter__(self) -> Output:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._discard()
