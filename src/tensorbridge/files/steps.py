"""The steps every job on tensor files takes: check the source, read it guarded, select, cast, write atomically.

``convert.py`` (the command) and ``files.py`` (``tb.load`` / ``tb.save`` / ``tb.open``) are both
made of these, so a file one accepts the other accepts, and one refuses with the same words.
The readers are called in one place (:func:`read_archive`), which turns anything they raise on a
malformed file into ``FileFormatError``, and written files go through ``output.py`` in one place
(:func:`write_archive`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

import numpy as np

from ..dtypes import numpy_dtype, row_for_numpy
from ..errors import ConversionError, FileFormatError, StructureError, UnsupportedError
from . import structure
from .base import Archive, Entry, Format, bad_file, clipped
from .output import Output, shown
from .set_output import SetOutput

__all__ = ["cast_floating", "check_source", "floating_target", "read_archive", "select", "write_archive"]

#: What a reader may raise that says something about the machine, not about the file.
_NOT_THE_FILE: Final = (ConversionError, OSError, MemoryError)
_FILES: Final = "Give the path of a .npy, .npz, .pt/.pth/.bin or .safetensors file"


# ----------------------------------------------------------------------------------- reading


def _short(err: BaseException) -> str:
    return clipped(f"{type(err).__name__}: {err}")


def check_source(path: str, what: str) -> None:
    """Refuse a source that is missing, a directory or unreadable, naming it (before its suffix is looked at).

    A directory is accepted only as a sharded safetensors set: one that holds its index (``hf_sets.py``),
    or as a DCP checkpoint: one that holds ``.metadata`` (``dcp_files.py``).

    Raises:
        FileFormatError: (ValueError) ``path`` is missing, a directory without a set's index, or cannot be read.

    Example:
        >>> import tempfile
        >>> check_source(tempfile.gettempdir(), "diff")
        Traceback (most recent call last):
        ...
        tensorbridge.errors.FileFormatError: diff at ...: it is a directory, not a tensor file...
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileFormatError(
            what, shown(path), "the file does not exist (No such file or directory)", "Check the path"
        ) from None
    except NotADirectoryError:
        raise FileFormatError(what, shown(path), "a part of the path is not a directory", "Check the path") from None
    except PermissionError:
        raise FileFormatError(
            what, shown(path), "the file cannot be reached (permission denied)", "Check the path"
        ) from None
    except (UnicodeError, ValueError) as err:
        raise FileFormatError(what, shown(path), f"the name is not a valid path ({err})", "Check the path") from err
    if stat.S_ISDIR(st.st_mode):
        from .dcp_files import is_dcp_dir
        from .hf_sets import INDEX_NAME, find_index

        if find_index(path) is None and not is_dcp_dir(path):
            raise FileFormatError(
                what,
                shown(path),
                f"it is a directory, not a tensor file (it holds no {INDEX_NAME})",
                _directory_fix(path),
            )
    if not os.access(path, os.R_OK):
        raise FileFormatError(what, shown(path), "the file cannot be read (permission denied)", "Check its permissions")


def _directory_fix(path: str) -> str:
    """What to do with a directory that is not a sharded set: name its lone tensor file, if it has one."""
    try:
        files = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    except OSError:
        files = []
    if len(files) == 1:
        return f"Give the file inside it: {shown(os.path.join(path, files[0]))}"
    if files:
        return f"It holds {len(files)} .safetensors files but no index: give one of them, or write the index"
    return _FILES + ", a sharded set's directory, or a torch.distributed.checkpoint directory (with .metadata)"


def read_archive(fmt: Format, path: str) -> Archive:
    """``fmt.read(path)``, the one call of a reader: what a malformed file makes it raise becomes FileFormatError.

    The entries' ``load`` is guarded the same way, since a reader reads the data lazily. Check
    the path first with :func:`check_source`.

    Raises:
        FileFormatError: (ValueError) the file is malformed, truncated or hostile.
        UnsupportedError: (TypeError) the file holds what tensorbridge never reads (pickled objects).

    Example:
        >>> import tempfile
        >>> from tensorbridge.files import format_for
        >>> path = os.path.join(tempfile.mkdtemp(), "cut.npy")
        >>> with open(path, "wb") as f:
        ...     _ = f.write(b"garbage")
        >>> read_archive(format_for(path), path)
        Traceback (most recent call last):
        ...
        tensorbridge.errors.FileFormatError: reading at ...cut.npy: the file does not start with the .npy magic...
    """
    if os.path.isdir(path) and not getattr(fmt, "directory", False):
        raise bad_file(
            path,
            f"it is a directory (a sharded safetensors set or a DCP checkpoint), not a {fmt.name} file",
            "Leave out --from/--format, or give one of the files inside it",
        )
    try:
        archive = fmt.read(path)
    except _NOT_THE_FILE:
        raise
    except Exception as err:  # a reader's unforeseen failure on a hostile file: still a bad file, not a bug report
        raise bad_file(path, f"it is not a readable {fmt.name} file ({_short(err)})") from err
    return Archive([_guarded(e, path) for e in archive.entries], archive.structure, archive.extra)


def _guarded(e: Entry, path: str) -> Entry:
    def load() -> np.ndarray[Any, Any]:
        try:
            return e.load()
        except _NOT_THE_FILE:
            raise
        except Exception as err:
            raise bad_file(path, f"array {e.name!r} cannot be read ({_short(err)})") from err

    return Entry(e.name, e.dtype, e.shape, load)


def select(archive: Archive, only: Sequence[str] | None, path: str) -> tuple[list[Entry], Any]:
    """The entries whose names match one of the shell patterns ``only`` (all without), and their pruned record.

    Raises:
        StructureError: (ValueError) no name matches.

    Example:
        >>> w = Entry("enc.w", np.dtype("f4"), (2,), lambda: np.zeros(2, "f4"))
        >>> [e.name for e in select(Archive([w]), ["enc.*"], "m.npz")[0]]
        ['enc.w']
    """
    if not only:
        return list(archive.entries), archive.structure
    kept = [e for e in archive.entries if any(fnmatch.fnmatchcase(e.name, pat) for pat in only)]
    if not kept:
        raise StructureError(
            "selecting",
            path,
            f"no array name matches {list(only)} (the file holds {len(archive.entries)})",
            "List the names with `tensorbridge inspect` or tb.open(path).entries; patterns use shell wildcards "
            "(encoder.*)",
        )
    return kept, structure.prune(archive.structure, {e.name for e in kept})


# ----------------------------------------------------------------------------------- casting


def _is_floating(dt: np.dtype[Any]) -> bool:
    """Real floating point: NumPy's float kinds and the table's others (bfloat16, the float8 kinds)."""
    row = row_for_numpy(dt)
    return dt.kind == "f" or (row is not None and row.torch.is_floating_point)


def floating_target(dtype: object, path: str, what: str = "convert") -> np.dtype[Any]:
    """``dtype`` as the NumPy dtype floating-point arrays are cast to; it must be floating point.

    Raises:
        UnsupportedError: (TypeError) ``dtype`` is not a floating-point dtype (or no dtype at all).

    Example:
        >>> floating_target("bfloat16", "m.npz")
        dtype(bfloat16)
    """
    target = numpy_dtype(dtype)
    if not _is_floating(target):
        raise UnsupportedError(
            what,
            path,
            f"dtype {target} is not a floating-point dtype; the cast applies to floating-point arrays only "
            "(as nn.Module.to(dtype) does), keeping integer, bool and complex ones",
            "Pass a floating-point dtype such as float32, float16 or bfloat16",
        )
    return target


def cast_floating(entries: list[Entry], target: np.dtype[Any]) -> tuple[list[Entry], int]:
    """Cast the floating-point entries to ``target`` as they load (checked); integer, bool and complex ones are kept.

    Returns:
        The entries, and how many of them are cast.

    Example:
        >>> w = Entry("w", np.dtype("f8"), (1,), lambda: np.ones(1))
        >>> entries, cast = cast_floating([w], floating_target("bfloat16", "m.npz"))
        >>> cast, entries[0].load().dtype
        (1, dtype(bfloat16))
    """
    from ..api import to_numpy

    def loader(e: Entry) -> Callable[[], np.ndarray[Any, Any]]:
        def load() -> np.ndarray[Any, Any]:
            # A checked cast: a value that does not fit raises, naming the array.
            out: np.ndarray[Any, Any] = to_numpy({e.name: e.load()}, dtype=target)[e.name]
            return out

        return load

    cast = [Entry(e.name, target, e.shape, loader(e)) if _is_floating(e.dtype) else e for e in entries]
    return cast, sum(_is_floating(e.dtype) for e in entries)


# ----------------------------------------------------------------------------------- writing


def _renamed(err: Exception, tmp: str, dst: str) -> Exception:
    """``err`` with the temporary path it names replaced by the user's destination."""
    if tmp not in str(err):
        return err
    dst = shown(dst)
    if isinstance(err, ConversionError):
        if not err.path:
            return type(err)(str(err).replace(tmp, dst))
        parts = (err.path, err.cause, err.fix)
        return type(err)(err.what, *(part.replace(tmp, dst) for part in parts))
    if isinstance(err, OSError) and err.errno is not None and err.strerror:
        return type(err)(err.errno, f"writing {dst}: {err.strerror}")
    return type(err)(str(err).replace(tmp, dst))


def write_archive(
    dst: str,
    fmt: Format,
    entries: Sequence[Entry],
    nesting: Any,
    extra: dict[str, str],
    *,
    force: bool,
    check: Callable[[str], None] | None = None,
    written: Callable[[int], None] | None = None,
) -> None:
    """Write the entries into a new file put at ``dst`` only when complete (``output.py``).

    A format that writes a directory (a sharded set, ``hf_sets.py``; a DCP checkpoint,
    ``dcp_files.py``) is written into a new directory beside ``dst``, renamed into place when
    complete (``set_output.py``).

    ``check(path)`` runs on the written file before it is put in place (``convert --verify``).
    ``written(nbytes)`` is called from a helper thread every :data:`POLL_SECONDS` while the
    writer runs, with the file's size: progress within one large tensor, whatever the format.
    Errors name ``dst``, never the temporary file.

    Raises:
        StructureError: (ValueError) ``dst`` exists without ``force`` (or appeared meanwhile), or
            cannot be created.

    Example:
        >>> import tempfile
        >>> from tensorbridge.files.npy_files import NPY
        >>> dst = os.path.join(tempfile.mkdtemp(), "z.npy")
        >>> z = Entry("z", np.dtype("u1"), (2,), lambda: np.zeros(2, "u1"))
        >>> write_archive(dst, NPY, [z], None, {}, force=False)
        >>> np.load(dst).tolist()
        [0, 0]
    """
    # A sharded set or a DCP checkpoint is a directory, put in place as a whole; every other format one file.
    opened = SetOutput if getattr(fmt, "directory", False) else Output
    with opened(dst, force=force) as out:
        try:
            with _watching(out, written):
                fmt.write(out.path, entries, nesting, extra)
            if check is not None:
                check(out.path)
        except (ConversionError, OSError) as err:
            raise _renamed(err, out.path, dst) from err
        out.commit()


#: How often ``write_archive`` reports the growing file's size to ``written``.
POLL_SECONDS: Final = 0.1


@contextlib.contextmanager
def _watching(out: Output | SetOutput, written: Callable[[int], None] | None) -> Iterator[None]:
    """Report ``out``'s size to ``written`` from a helper thread until the block ends."""
    if written is None:
        yield
        return
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(POLL_SECONDS):
            written(out.size())

    watcher = threading.Thread(target=poll, name="tensorbridge-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
