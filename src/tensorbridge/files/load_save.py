"""Tensor files from Python: :func:`load`, :func:`save` and :func:`open`, as the command reads and writes them.

The same readers, writers, checks and nesting records as ``tensorbridge convert`` (the format
table in ``files/__init__.py``; ``structure.py`` for the nesting), so a file the command accepts
loads here and one it refuses raises the same error, naming the same path.

**What comes back.** The nesting the file records (``structure.py``: dict, OrderedDict, list,
tuple, and the numbers, strings, bools and None among them), rebuilt around the arrays; a file
without a record (a ``.npz`` from ``np.savez``, a ``.safetensors`` from another tool) is a flat
dict of its names, in file order; a lone array (a ``.npy``, or a bare array saved to any format)
is that array itself.

**Lazy.** :func:`open` reads and validates the headers only: no data. ``lazy=True`` (the default
of :func:`load`) maps the data where the format allows, so pages are read when touched: NumPy
results are the readers' read-only ``np.memmap`` arrays (``.npy``, stored ``.npz`` members,
``.safetensors``) or torch's copy-on-write maps (``.pt`` zip files); ``to="tensor"`` results of
read-only maps are mapped again copy-on-write (``np.memmap(mode="c")``, as ``safetensors.torch``
does), since torch has no read-only tensors: writing to one changes this process's pages, never
the file. Compressed ``.npz`` members and legacy ``.pt`` files are read whole. ``lazy=False``
reads everything into fresh, writable memory now. Arrays outlive the file: closing a
:class:`TensorFile` drops its own references, and each map is released with its last array.

**Writing.** :func:`save` flattens the data (``structure.flatten``), checks the destination
before any data is touched, and streams one array at a time (``.pt``: torch.save needs them
all) into a new file created exclusively beside the destination, linked into place only when
complete (``output.py``): a failure leaves nothing behind, an existing file is kept unless
``force=True``.

Each step is the command's own (``steps.py``): the same source checks, guarded readers,
``only`` patterns, floating-point cast and atomic output, in the same words (``--force`` reads
``force=True`` here).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Literal

import numpy as np
import torch

from ..adapters.detect import is_instance
from ..dtypes import row_for_torch
from ..errors import ConversionError, FileFormatError, UnsupportedError
from . import format_for, is_set_path, structure
from .base import Archive, Entry, Format, bad_file
from .dcp_files import DCP, is_dcp_dir
from .hf_sets import DEFAULT_SHARD_SIZE, SAFETENSORS_SET, SafetensorsSetFormat, parse_size
from .output import check_destination, shown
from .set_output import check_set_destination
from .steps import cast_floating, check_source, floating_target, read_archive, select, write_archive

# open is left out, so a star import keeps the builtin; it is public all the same (tensorbridge.open).
__all__ = ["TensorFile", "load", "save"]

PathLike = str | os.PathLike[str]

#: The command's spellings in shared messages, and what a Python caller passes instead.
_PYTHON_WORDS: Final = (
    ("Pass --force to replace it", "Pass force=True to replace it"),
    ("name the format with --from/--to", "name the format with format="),
)


def _leaf_entry(name: str, leaf: Any, path: str, gathered: Callable[[Any], torch.Tensor] | None = None) -> Entry:
    """An entry for one array or tensor of the caller's data; its data is converted when it is written.

    ``gathered`` (``shards="gather"``, on the writing rank) assembles a DTensor when its entry is written.
    """
    from ..api import to_numpy

    def refuse(why: str, fix: str) -> UnsupportedError:
        return UnsupportedError("saving", shown(path), f"array {name!r} {why}", fix)

    if isinstance(leaf, torch.Tensor):
        if leaf.layout != torch.strided or leaf.is_nested:
            raise refuse(f"is a {leaf.layout} tensor", "Save t.to_dense() (t.to_padded_tensor(0.0) if nested)")
        if leaf.is_quantized:
            raise refuse(f"is a quantized tensor ({leaf.dtype})", "Save t.dequantize(), or t.int_repr() and its scale")
        if leaf.is_meta:
            raise refuse("is a meta tensor, which has no data", "Save a tensor with its data")
        row = row_for_torch(leaf.dtype)
        if row is None:
            raise refuse(f"has dtype {leaf.dtype}, which NumPy cannot hold", "Cast it to a dtype of tensorbridge.ROWS")
        if is_instance(leaf, "torch.distributed.tensor", "DTensor"):
            if gathered is None:
                raise refuse(
                    "is a DTensor, of which this rank may hold only a shard",
                    "Pass shards='gather' and call save on every rank (rank dst=0 writes the file)",
                )
            source = leaf
            return Entry(name, row.numpy, tuple(leaf.shape), lambda: to_numpy(gathered(source)))
        tensor = leaf.detach()

        def load() -> np.ndarray[Any, Any]:
            try:
                out: np.ndarray[Any, Any] = to_numpy(tensor)
            except UnsupportedError as err:
                raise refuse(err.cause, err.fix) from err
            return out

        return Entry(name, row.numpy, tuple(tensor.shape), load)
    if isinstance(leaf, np.ma.MaskedArray):
        raise refuse("is a masked array, and files keep no mask", "Save a.filled(value) and a.mask as two arrays")
    arr: np.ndarray[Any, Any] = np.asarray(leaf)
    return Entry(name, arr.dtype, arr.shape, lambda: arr)


# ----------------------------------------------------------------------------------- the API


@contextlib.contextmanager
def _python_words(what: str) -> Iterator[None]:
    """Errors of the command's shared steps, as a Python caller reads them: ``force=True``, not ``--force``."""
    try:
        yield
    except ConversionError as err:
        if not err.path:
            raise
        cause, fix = err.cause, err.fix
        for cli, python in _PYTHON_WORDS:
            cause, fix = cause.replace(cli, python), fix.replace(cli, python)
        name = what if err.what == "convert" else err.what
        if (name, cause, fix) == (err.what, err.cause, err.fix):
            raise
        raise type(err)(name, err.path, cause, fix) from err


def _patterns(only: str | Sequence[str] | None) -> Sequence[str] | None:
    return [only] if isinstance(only, str) else only


class TensorFile:
    """An open tensor file: its entries, nesting record and metadata, read from the headers alone.

    Use it as a context manager (or call :meth:`close`): entries cannot be loaded after it is
    closed; arrays loaded before stay valid (each keeps its own memory map).

    Attributes:
        path: the path as given.
        format: the format's name (``"npy"``, ``"npz"``, ``"pt"``, ``"safetensors"``).
        entries: the arrays in file order: ``name``, ``dtype`` (NumPy; ``ml_dtypes`` for bfloat16
            and float8), ``shape``, ``nbytes``, and ``load()``, which reads one array (a read-only
            memory map where the format allows).
        structure: the nesting record (``structure.py``), or None for a flat set of names.
        metadata: the format's other metadata, str -> str (a ``.safetensors`` ``__metadata__``).
    """

    def __init__(self, path: str, fmt: Format, archive: Archive) -> None:
        self.path, self.format = path, fmt.name
        self._open = True
        self.entries: tuple[Entry, ...] = tuple(self._while_open(e) for e in archive.entries)
        self.structure: Any = archive.structure
        self.metadata: dict[str, str] = dict(archive.extra)

    def _while_open(self, e: Entry) -> Entry:
        def load() -> np.ndarray[Any, Any]:
            if not self._open:
                raise FileFormatError(
                    "loading",
                    shown(self.path),
                    f"array {e.name!r}: the file was closed",
                    "Load it inside the `with` block",
                )
            return e.load()

        return Entry(e.name, e.dtype, e.shape, load)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return not self._open

    def load(
        self,
        *,
        to: Literal["numpy", "tensor"] = "numpy",
        lazy: bool = True,
        only: str | Sequence[str] | None = None,
    ) -> Any:
        """The file's data, nested as its record says; see :func:`load` for the arguments.

        Example:
            >>> import tempfile, numpy as np, tensorbridge as tb
            >>> path = os.path.join(tempfile.mkdtemp(), "m.npz")
            >>> np.savez(path, w=np.ones(2), b=np.zeros(1))
            >>> with tb.open(path) as f:
            ...     f.load(only="w")["w"].tolist()
            [1.0, 1.0]
        """
        with _python_words("load"):
            return self._load(to, lazy, _patterns(only))

    def _load(self, to: str, lazy: bool, only: Sequence[str] | None) -> Any:
        from ..api import to_tensor

        if to not in ("numpy", "tensor"):
            raise UnsupportedError("load", "to", f"to must be 'numpy' or 'tensor', not {to!r}", "Pass one of those")
        if not self._open:
            raise FileFormatError("loading", shown(self.path), "the file was closed", "Open it again with tb.open")
        entries, nesting = select(Archive(list(self.entries), self.structure), only, self.path)
        arrays: dict[str, Any] = {}
        for e in entries:
            data = e.load()
            try:
                if to == "numpy":
                    arrays[e.name] = data if lazy else np.array(data, copy=True)
                else:
                    arrays[e.name] = to_tensor(_copy_on_write(data, self.path)) if lazy else to_tensor(data, copy=True)
            except UnsupportedError as err:
                raise UnsupportedError("loading", shown(self.path), f"array {e.name!r}: {err.cause}", err.fix) from err
        if nesting is None:
            return arrays
        return structure.unflatten(nesting, arrays, where=self.path)

    def close(self) -> None:
        """Drop the file's entries; arrays already loaded stay valid."""
        self._open = False
        self.entries = ()

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.entries)} entries"
        return f"TensorFile({self.path!r}, format={self.format!r}, {state})"


def _copy_on_write(data: np.ndarray[Any, Any], path: str) -> np.ndarray[Any, Any]:
    """A read-only memory map of a file, mapped again copy-on-write (writes stay in this process); else ``data``."""
    if not isinstance(data, np.memmap) or data.flags.writeable or not isinstance(data.base, mmap.mmap):
        return data
    order: Literal["C", "F"] = "F" if data.flags.f_contiguous and not data.flags.c_contiguous else "C"
    try:
        return np.memmap(data.filename, data.dtype, "c", data.offset, data.shape, order)
    except (OSError, ValueError) as err:  # the file shrank or went away since its header was read
        raise bad_file(path, f"its data can no longer be mapped ({type(err).__name__}: {err})") from err


# Shadows the builtin in this module only (which never calls it): tb.open, as io.open and gzip.open.
def open(path: PathLike, *, format: str | None = None) -> TensorFile:
    """Open a tensor file: its headers are read and validated; no data is.

    Args:
        path: a ``.npy``, ``.npz``, ``.pt``/``.pth``/``.bin`` or ``.safetensors`` file.
        format: the format's name (``"npz"``...) when the suffix does not say it.

    Returns:
        A :class:`TensorFile`, to use as a context manager.

    Raises:
        FileFormatError: (ValueError) the file is missing, a directory, unreadable, malformed,
            truncated or hostile (the same checks as ``tensorbridge convert``).
        UnsupportedError: (TypeError) an unknown format, or what tensorbridge never reads (pickled objects).

    Example:
        >>> import tempfile, numpy as np, tensorbridge as tb
        >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
        >>> tb.save({"enc": {"w": np.eye(2, dtype=np.float32)}, "step": 7}, path)
        >>> with tb.open(path) as f:
        ...     [(e.name, e.dtype.name, e.shape, e.nbytes) for e in f.entries]
        [('enc.w', 'float32', (2, 2), 16)]
    """
    with _python_words("open"):
        return _open(os.fspath(path), format, "open")


def _open(path: str, fmt_name: str | None, what: str) -> TensorFile:
    check_source(path, what)
    fmt = format_for(path, fmt_name)
    return TensorFile(path, fmt, read_archive(fmt, path))


def load(
    path: PathLike,
    *,
    format: str | None = None,  # the command's --from, by name
    to: Literal["numpy", "tensor"] = "numpy",
    lazy: bool = True,
    only: str | Sequence[str] | None = None,
) -> Any:
    """Read a tensor file, checked as ``tensorbridge convert`` checks it, nested as it was saved.

    Args:
        path: a ``.npy``, ``.npz``, ``.pt``/``.pth``/``.bin`` or ``.safetensors`` file.
        format: the format's name when the suffix does not say it.
        to: ``"numpy"`` (arrays; bfloat16 and float8 as ``ml_dtypes``) or ``"tensor"`` (through
            :func:`tensorbridge.to_tensor`, sharing the mapped memory where it can).
        lazy: ``True``: memory-mapped where the format allows, read as pages are touched (NumPy
            arrays read-only; tensors copy-on-write). ``False``: read into fresh writable memory now.
        only: a shell pattern or several (``"encoder.*"``): keep the arrays whose dotted names match.

    Returns:
        The nesting the file records, rebuilt; a flat dict of names for a file without one; the
        array itself for a lone array (a ``.npy``).

    Raises:
        FileFormatError: (ValueError) the file is missing, unreadable, malformed, truncated or hostile.
        UnsupportedError: (TypeError) an unknown format, a dtype the target cannot hold, a bad ``to``.
        StructureError: (ValueError) no name matches ``only``.

    Example:
        >>> import tempfile, numpy as np, tensorbridge as tb
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
        >>> tb.save({"layers": [np.ones(2), np.zeros(1)], "epoch": 3}, path)
        >>> ckpt = tb.load(path, to="tensor")
        >>> ckpt["epoch"], ckpt["layers"][0]
        (3, tensor([1., 1.], dtype=torch.float64))
    """
    with _python_words("load"), _open(os.fspath(path), format, "load") as f:
        return f._load(to, lazy, _patterns(only))


def save(
    data: Any,
    path: PathLike,
    *,
    format: str | None = None,  # the command's --to, by name
    force: bool = False,
    dtype: object = None,
    metadata: Mapping[str, str] | None = None,
    max_shard_size: int | str | None = None,
    shards: str = "error",
    dst: int = 0,
) -> None:
    """Write arrays and tensors, nested in dicts, lists and tuples, to a new tensor file, atomically.

    Args:
        data: an array or tensor, or dict/OrderedDict/list/tuple containers of them, with
            numbers, strings, bools and None among them (kept in the nesting record; a ``.npy``
            holds one bare array). Tensors on any device are copied to the host one at a time.
        path: the file to write; its format comes from its suffix unless ``format`` says.
        format: the format's name when the suffix does not say it.
        force: replace an existing file (or symbolic link; never a directory).
        dtype: cast every floating-point array to this floating-point dtype (checked: a value that
            would become inf raises); integer, bool and complex arrays are kept.
        metadata: str -> str to keep in the file (``.safetensors`` and ``.npz``; the others have no room).
        max_shard_size: write a Hugging Face sharded set (``path`` a directory name) with shards of
            at most this many bytes (``"5GB"`` decimal, ``"4GiB"`` binary; a larger tensor gets a
            shard of its own). A ``path`` without suffix writes a set of 5 GB shards by default.
        shards: ``"gather"`` writes data holding DTensors (an FSDP2 ``state_dict()``) without
            holding it: every rank of the default process group calls ``save`` with its own
            shards; rank ``dst`` writes the file, receiving each DTensor from the ranks that
            hold its blocks only when the writer reaches it, so it holds one tensor at a time
            beyond the writer's buffers, and the other ranks send their shards as asked and
            return. The ranks first agree on what they hold, and a failure on ``dst`` (its
            destination exists, a disk error) raises on every rank, never a hang. ``"error"``
            (default) refuses DTensors.
        dst: the rank that writes, with ``shards="gather"``.

    Raises:
        StructureError: (ValueError) ``path`` exists without ``force``, is a directory, or its
            directory is missing or not writable (checked before any data is touched).
        UnsupportedError: (TypeError) what the format cannot hold: a dtype, a name, a leaf type,
            several arrays or containers in a ``.npy``, ``metadata`` for a format without room for it.
        DistributedError: (RuntimeError) with ``shards="gather"``, a rank did not call within the
            process group's timeout, or another rank failed (each rank raises).

    Example:
        >>> import tempfile, torch, tensorbridge as tb
        >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> tb.save({"w": torch.ones(2, dtype=torch.bfloat16)}, path, metadata={"format": "pt"})
        >>> tb.load(path, to="tensor")["w"], tb.open(path).metadata
        (tensor([1., 1.], dtype=torch.bfloat16), {'format': 'pt'})
    """
    if shards not in ("error", "gather"):
        raise UnsupportedError("saving", "shards", f"shards must be 'error' or 'gather', not {shards!r}", "Pass one")
    with _python_words("save"):
        where = os.fspath(path)
        if shards == "error":
            _save(data, where, format, force, dtype, metadata, max_shard_size)
            return
        _save_gathered(data, dst, where, format, force, dtype, metadata, max_shard_size)


def _save_gathered(
    data: Any,
    dst: int,
    path: str,
    fmt_name: str | None,
    force: bool,
    dtype: object,
    metadata: Mapping[str, str] | None,
    max_shard_size: int | str | None,
) -> None:
    """``save`` with ``shards="gather"``: every rank agrees, ``dst`` writes, the others answer its requests."""
    import torch.distributed as dist

    from ..distributed import Gathering

    if type(dst) is not int:
        raise UnsupportedError("saving", "dst", f"dst must be one rank (an int), not {dst!r}", "Pass dst=0")
    if not dist.is_initialized():  # without a process group nothing is sharded: a plain save
        _save(data, path, fmt_name, force, dtype, metadata, max_shard_size)
        return
    problem = None
    if dist.get_rank() == dst:
        try:
            _destination(path, fmt_name, force, max_shard_size)
        except ConversionError as err:
            problem = err
    g = Gathering.start("saving", data, dst, problem)
    if not g.receiving:
        g.serve()
        return
    by_id = {id(t): path for path, t in g.found.items()}
    with g.driving() as fetch:
        _save(data, path, fmt_name, force, dtype, metadata, max_shard_size, lambda t: fetch(by_id[id(t)]))


def _destination(path: str, fmt_name: str | None, force: bool, max_shard_size: int | str | None) -> Format:
    """Check where ``save`` writes before any data is touched; the format to write."""
    limit = None if max_shard_size is None else parse_size(max_shard_size)
    to_dcp = is_dcp_dir(path) if fmt_name is None else fmt_name.lower().lstrip(".") == DCP.name
    if limit is not None and to_dcp:
        raise UnsupportedError(
            "saving", shown(path), "max_shard_size splits a sharded safetensors set, and a DCP checkpoint is "
            "written as one data file per tensor", "Leave out max_shard_size, or write a set",
        )  # fmt: skip
    if limit is not None and fmt_name is None and not is_set_path(path):
        raise UnsupportedError(
            "saving", shown(path), "max_shard_size writes a sharded set (a directory), and this names a file",
            "Give a directory name without suffix, e.g. out/",
        )  # fmt: skip
    to_set = (is_set_path(path) if fmt_name is None else fmt_name.lower().lstrip(".") == SAFETENSORS_SET.name) or (
        limit is not None and fmt_name is None
    )
    if limit is not None and not to_set:
        raise UnsupportedError(
            "saving", shown(path), f"max_shard_size writes a sharded set, and format= says {fmt_name}",
            "Leave out format= (or pass format='safetensors-set')",
        )  # fmt: skip
    (check_set_destination if to_set or to_dcp else check_destination)(path, force=force)
    return SafetensorsSetFormat(limit or DEFAULT_SHARD_SIZE) if to_set else format_for(path, fmt_name)


def _save(
    data: Any,
    path: str,
    fmt_name: str | None,
    force: bool,
    dtype: object,
    metadata: Mapping[str, str] | None,
    max_shard_size: int | str | None = None,
    gathered: Callable[[Any], torch.Tensor] | None = None,
) -> None:
    fmt = _destination(path, fmt_name, force, max_shard_size)
    target = None if dtype is None else floating_target(dtype, path, "save")
    try:
        leaves, nesting = structure.flatten(data)
    except UnsupportedError as err:
        raise UnsupportedError("saving", shown(path), f"at {err.path}: {err.cause}", err.fix) from err
    entries = [_leaf_entry(name, leaf, path, gathered) for name, leaf in leaves]
    if fmt.name == "npy" and nesting != {"t": structure.ROOT_NAME}:
        raise UnsupportedError(
            "saving",
            shown(path),
            f"a .npy file holds one bare array, and the data is a {type(data).__qualname__} of {len(entries)}",
            "Save to .npz or .safetensors to keep names and nesting, or pass the array itself",
        )
    extra = dict(metadata or {})
    if extra and not fmt.keeps_metadata:
        raise UnsupportedError(
            "saving",
            shown(path),
            f"a .{fmt.name} file has no room for metadata",
            "Save to .safetensors or .npz to keep it",
        )
    if nesting == {"dict": [[e.name, {"t": e.name}] for e in entries]}:
        nesting = None  # a flat dict of names is what a file without a record reads as
    if target is not None:
        entries, _ = cast_floating(entries, target)
    write_archive(path, fmt, entries, nesting, extra, force=force)
