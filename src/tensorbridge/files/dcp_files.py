"""torch.distributed.checkpoint (DCP) directories: read (one lazily loaded entry per tensor) and written.

A DCP directory holds ``.metadata`` (a pickle of DCP's ``Metadata``, read without running code
by ``dcp_metadata.py``) and ``__<rank>_<n>.distcp`` data files. Each tensor is stored as one or
more chunks (one per rank that held a shard of it); each chunk is a complete ``torch.save``
payload at an (offset, length) of a data file.

**Reading.** :meth:`DcpFormat.read` reads only the metadata and checks it against the files: every
chunk's bytes lie inside its file, and the chunks of a tensor lie inside it and cover it exactly
(no gap, no overlap), declaring at most ``MAX_REPEAT`` times the bytes they store. An entry's
:meth:`~tensorbridge.files.base.Entry.load` reads each chunk in place, as the byte window
(``file_window.Window``) of its data file that it is, with tensorbridge's own safe torch.save
reader (``PT.read_window``: every check of a .pt file, inside the window; then
``torch.load(weights_only=True)``), then puts the chunks together. A tensor of one chunk is the
array torch read, not a copy, so peak memory is about one tensor; every result is private,
writable memory, not a map of the file. Entry names are the flattened names DCP keeps (``model.layer.weight``).

**Not read.** Values DCP stores as pickled bytes (an ``int`` step, optimizer hyperparameters:
``BytesStorageMetadata``) are skipped: only tensors are entries, and ``tensorbridge inspect``
does not list the others. Chunks stored through storage extensions (compression) are refused.

**Writing** (:meth:`DcpFormat.write`, ``tensorbridge convert model.safetensors ckpt --to dcp``,
``tb.save(data, "ckpt", format="dcp")``) goes through torch's own writer: ``dcp.save(...,
storage_writer=FileSystemWriter(dir, single_file_per_rank=False), no_dist=True)`` in this one
process, no process group. It is planned from ``meta`` tensors (shape and dtype only), and a
planner loads each entry only when torch asks for its data, as a tensor sharing the entry's
memory (a memory map of the source where it has one: no copy). torch keeps every tensor of a data
file alive until that file is complete, so each tensor gets a data file of its own
(``__0_<K>.distcp``): peak memory is one tensor, not the model. ``set_output.py`` writes the
directory privately and renames it into place, as for a sharded set.

What a written checkpoint holds: one tensor per entry, keyed by the entry's name (the dotted
name, ``model.layer.weight``: what DCP itself makes of a nested state dict, so
``dcp.load(model.state_dict(), ...)`` finds them); ``dcp_to_torch_save`` gives back a flat dict
of those names. Not kept: tensorbridge's nesting record (``structure.py``: lists, tuples,
non-tensor leaves such as a step counter) and string metadata (``__metadata__``): DCP has no
place for either. Every dtype torch has is kept (bfloat16, the float8 kinds, bool, complex,
unsigned); NumPy dtypes without a torch counterpart (strings, structured) are refused, naming
the array. ``--max-shard-size`` does not apply (it splits a sharded safetensors set) and is refused.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np
import torch

from ..dtypes import row_for_numpy, row_for_torch
from ..errors import ConversionError, UnsupportedError
from .base import Archive, Entry, bad_file, load_for_writing
from .dcp_metadata import METADATA_NAME, DcpChunk, DcpTensor, read_metadata
from .file_window import Window
from .pickle_standins import MAX_REPEAT, REPEAT_SLACK

__all__ = ["DCP", "DcpFormat", "is_dcp_dir"]

#: The most chunks one tensor may have (one per rank that holds a shard; checked pairwise).
MAX_CHUNKS: Final = 4096


def is_dcp_dir(path: str) -> bool:
    """Whether ``path`` is a DCP checkpoint: a directory holding ``.metadata`` and no Hugging Face index.

    Example:
        >>> import tempfile
        >>> is_dcp_dir(tempfile.gettempdir())
        False
    """
    path = os.fspath(path)
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, METADATA_NAME)):
        return False
    from .hf_sets import find_index

    return find_index(path) is None


def _volume(sizes: Sequence[int]) -> int:
    n = 1
    for d in sizes:
        n *= d
    return n


def _check_cover(path: str, t: DcpTensor) -> None:
    """The chunks lie inside the tensor and cover it exactly: no gap, no overlap."""
    if len(t.chunks) > MAX_CHUNKS:
        raise bad_file(path, f"{t.name!r} has {len(t.chunks)} chunks, more than the {MAX_CHUNKS} read")
    for c in t.chunks:
        if len(c.offsets) != len(t.shape) or len(c.sizes) != len(t.shape):
            raise bad_file(path, f"a chunk of {t.name!r} has {len(c.sizes)} dimensions, the tensor {len(t.shape)}")
        if any(o + s > d for o, s, d in zip(c.offsets, c.sizes, t.shape, strict=True)):
            raise bad_file(
                path,
                f"chunk at {list(c.offsets)} of size {list(c.sizes)} reaches outside {t.name!r} "
                f"of shape {list(t.shape)}",
            )
    live = [c for c in t.chunks if _volume(c.sizes)]
    for i, a in enumerate(live):
        for b in live[i + 1 :]:
            if all(
                ao < bo + bs and bo < ao + as_
                for ao, as_, bo, bs in zip(a.offsets, a.sizes, b.offsets, b.sizes, strict=True)
            ):
                raise bad_file(path, f"chunks at {list(a.offsets)} and {list(b.offsets)} of {t.name!r} overlap")
    covered = sum(_volume(c.sizes) for c in live)
    if covered != _volume(t.shape):
        raise bad_file(
            path, f"the chunks of {t.name!r} hold {covered} of its {_volume(t.shape)} elements (the rest is missing)"
        )


def _read_chunk(directory: str, t: DcpTensor, c: DcpChunk, dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    """One chunk's torch.save payload, read in place by tensorbridge's safe .pt reader (``PT.read_window``).

    The array is the tensor torch read into memory, shared, not copied (private and writable), unless
    it views only part of its storage: then it is copied, so that no unused bytes stay alive.
    """
    from .torch_files import PT

    src = os.path.join(directory, c.file)
    where = f"chunk {list(c.offsets)} of {t.name!r} (bytes {c.offset}..{c.offset + c.length})"
    try:
        entries = PT.read_window(Window(src, c.offset, c.length, where)).entries
        if len(entries) != 1 or entries[0].name != "data":
            raise bad_file(src, f"{where} holds {len(entries)} arrays, not one tensor")
        arr = np.asarray(entries[0].load())
    except ConversionError as err:
        if err.path != src or err.cause.startswith(where):
            raise
        raise bad_file(src, f"{where} is not a readable torch.save payload ({err.cause})") from err
    if arr.dtype != dtype or arr.shape != c.sizes:
        raise bad_file(
            src, f"{where} holds {arr.dtype} {list(arr.shape)}, but the metadata declares {dtype} {list(c.sizes)}"
        )
    if not (arr.flags.c_contiguous and arr.flags.writeable and _owns_its_memory(arr)):
        arr = np.array(arr, order="C", copy=True)
    return arr


def _owns_its_memory(arr: np.ndarray[Any, Any]) -> bool:
    """Whether ``arr`` views a whole torch storage (so sharing it keeps no other bytes alive)."""
    base: Any = arr
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return isinstance(base, torch.Tensor) and base.untyped_storage().nbytes() == arr.nbytes


def _loader(directory: str, t: DcpTensor, dtype: np.dtype[Any]) -> Callable[[], np.ndarray[Any, Any]]:
    def load() -> np.ndarray[Any, Any]:
        if len(t.chunks) == 1:
            return _read_chunk(directory, t, t.chunks[0], dtype)
        out = np.empty(t.shape, dtype)
        for c in t.chunks:
            if _volume(c.sizes):
                box = tuple(slice(o, o + s) for o, s in zip(c.offsets, c.sizes, strict=True))
                out[box] = _read_chunk(directory, t, c, dtype)
        return out

    return load


class DcpFormat:
    """DCP checkpoint directories (see the module docstring): read and written."""

    name: str = "dcp"
    suffixes: tuple[str, ...] = ()
    keeps_metadata: bool = False
    directory: bool = True

    def read(self, path: str) -> Archive:
        """Read a DCP directory's metadata and check it against its data files; load no data.

        Raises:
            FileFormatError: (ValueError) the metadata is hostile or malformed, or claims bytes or
                chunks the files do not hold.
            UnsupportedError: (TypeError) a tensor's dtype has no NumPy counterpart.

        Example:
            >>> import tempfile, torch, warnings
            >>> import torch.distributed.checkpoint as dcp
            >>> folder = tempfile.mkdtemp()
            >>> with warnings.catch_warnings():
            ...     warnings.simplefilter("ignore")
            ...     _ = dcp.save({"model": {"w": torch.ones(2, 3)}}, checkpoint_id=folder, no_dist=True)
            >>> archive = DCP.read(folder)
            >>> [(e.name, e.dtype.name, e.shape) for e in archive.entries], float(archive.entries[0].load().sum())
            ([('model.w', 'float32', (2, 3))], 6.0)
        """
        path = os.fspath(path)
        tensors, _skipped = read_metadata(path)
        sizes: dict[str, int] = {}
        entries = []
        for t in tensors:
            stored = 0
            for c in t.chunks:
                if c.file not in sizes:
                    src = os.path.join(path, c.file)
                    if not os.path.isfile(src):
                        raise bad_file(path, f"{t.name!r} is stored in {c.file!r}, which the directory does not hold")
                    sizes[c.file] = os.path.getsize(src)
                if c.offset + c.length > sizes[c.file]:
                    raise bad_file(
                        os.path.join(path, c.file),
                        f"a chunk of {t.name!r} claims bytes {c.offset}..{c.offset + c.length}, but the file holds "
                        f"only {sizes[c.file]}",
                        "The checkpoint is truncated or its .metadata belongs to another one",
                    )
                stored += c.length
            _check_cover(path, t)
            row = row_for_torch(t.dtype)
            if row is None:
                raise UnsupportedError(
                    "reading",
                    path,
                    f"{t.name!r} has dtype {t.dtype}, which NumPy cannot hold",
                    "Leave it out with --only",
                )
            if _volume(t.shape) * row.numpy.itemsize > MAX_REPEAT * stored + REPEAT_SLACK:
                raise bad_file(path, f"{t.name!r} of shape {list(t.shape)} claims far more bytes than its chunks store")
            entries.append(Entry(t.name, row.numpy, t.shape, _loader(path, t, row.numpy)))
        return Archive(entries, None, {})

    def write(self, path: str, entries: Sequence[Entry], structure: Any, extra: dict[str, str]) -> None:
        """Write ``entries`` as a DCP checkpoint into the empty directory ``path``, through torch's writer.

        One data file per tensor, each entry loaded only when torch writes it (see the module
        docstring). ``structure`` and ``extra`` are not kept: DCP has no place for them.

        Raises:
            UnsupportedError: (TypeError) an entry's dtype has no torch counterpart, or this torch
                has no ``torch.distributed``.

        Example:
            >>> import tempfile, warnings
            >>> import torch.distributed.checkpoint as dcp
            >>> folder = tempfile.mkdtemp()
            >>> w = np.arange(6, dtype=np.float32).reshape(2, 3)
            >>> DCP.write(folder, [Entry("model.w", w.dtype, w.shape, lambda: w)], None, {})
            >>> got = {"model": {"w": torch.zeros(2, 3)}}
            >>> with warnings.catch_warnings():
            ...     warnings.simplefilter("ignore")
            ...     dcp.load(got, checkpoint_id=folder, no_dist=True)
            >>> got["model"]["w"].tolist()
            [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
        """
        path = os.fspath(path)
        try:
            from torch.distributed.checkpoint.api import CheckpointException
            from torch.distributed.checkpoint.filesystem import FileSystemWriter
            from torch.distributed.checkpoint.state_dict_saver import save
        except ImportError as err:
            raise UnsupportedError(
                "writing", path, f"this torch has no torch.distributed.checkpoint ({err})",
                "Use a torch build with torch.distributed, or write .safetensors or a set",
            ) from err  # fmt: skip
        shapes: dict[str, torch.Tensor] = {}
        for e in entries:
            row = row_for_numpy(e.dtype)
            if row is None:
                raise UnsupportedError(
                    "writing", path, f"array {e.name!r} has dtype {e.dtype}, which torch (and so DCP) cannot hold",
                    "Leave it out with --only, or write .npz",
                )  # fmt: skip
            shapes[e.name] = torch.empty(e.shape, dtype=row.torch, device="meta")
        planner = _loading_planner(path, {e.name: e for e in entries})
        writer = FileSystemWriter(path, single_file_per_rank=False, sync_files=False)  # set_output syncs
        try:
            with warnings.catch_warnings():
                # "torch.distributed is disabled, unavailable or uninitialized, assuming ... single process"
                warnings.filterwarnings("ignore", module=r"torch\.distributed")
                save(shapes, storage_writer=writer, planner=planner, no_dist=True)
        except CheckpointException as err:  # torch wraps what failed in it (a BaseException): raise that itself
            failures = [exc for exc, _trace in err.failures.values()]
            if failures:
                raise failures[0] from None
            raise


def _loading_planner(path: str, entries: dict[str, Entry]) -> Any:
    """The default save planner of torch, planned from meta tensors; each entry is loaded when torch asks for it.

    Made here, not at import, so that reading a checkpoint never imports ``torch.distributed``.
    """
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
    from torch.distributed.checkpoint.planner import WriteItem

    from ..api import to_tensor

    class LoadingPlanner(DefaultSavePlanner):
        def resolve_data(self, write_item: WriteItem) -> torch.Tensor:
            data = load_for_writing(path, entries[write_item.index.fqn])
            # Shared, not copied: torch.save only reads it (a read-only memory map stays one).
            tensor: torch.Tensor = to_tensor(data, copy=False)
            return tensor

    return LoadingPlanner()


DCP: Final = DcpFormat()
