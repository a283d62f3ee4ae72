"""torch.save files (``.pt``, ``.pth``, ``.bin``): read without running code, written one tensor at a time.

**Safety.** A torch.save file is a pickle, and unpickling can run any code. Files are read only
with ``torch.load(path, map_location="cpu", weights_only=True, mmap=True)``, never with
``weights_only=False``: a file that needs more (a pickled class, ``os.system``) is refused with
:class:`FileFormatError` before any of its code runs. Before torch parses a zip, its directory is
checked: no TorchScript archive, no duplicate names, every record stored (torch.save never
compresses; a compressed record could inflate without bound) and inside the file. Then, before
torch.load, its pickle is run once over stand-ins, iteratively (``pickle_scan``; ``pt_checks`` for
the two layouts): nesting over 100 levels, cycles, over 8 million opcodes or 2 million container
items, calls torch.save never writes (tensor and storage constructors, ``bytearray(n)``: memory
the file does not hold) are refused, and every storage reference must match the bytes its record
holds, every view lie inside its storage and repeat its bytes (zero strides) at most 8 times.
After loading, shared references that expand a small pickle into millions of items, and tensors
that under all their names hold over 8 times the file's size (plus 16 MiB), are refused. torch
bounds every storage by the file's size itself, so nothing past the end is ever read. Whatever a
damaged or hostile file makes torch raise becomes a :class:`FileFormatError`.

**Reading.** Zip files (torch >= 1.6) are memory-mapped: :meth:`Entry.load` is a zero-copy view of
the file's pages, copy-on-write (writing to it never reaches the file). Legacy files
(``_use_new_zipfile_serialization=False``) cannot be mapped: torch reads their data into memory
during :meth:`PT.read`, checking each record's size. :meth:`PT.read_window` reads a payload that is
a byte window of a larger file (a DCP chunk) with the same checks, inside the window, its data
into memory. Names are ``structure.flatten``'s dotted
paths, :attr:`Archive.structure` its record (OrderedDicts and ``{"epoch": 3}`` leaves included; a
bare tensor is ``data``). Tied weights (one storage, two names) keep both names; flat formats then
store the data twice. Sparse, quantized, nested and meta tensors, dtypes NumPy cannot hold and
leaves other than tensors, numbers, str, None and dict/list/tuple are refused with
:class:`UnsupportedError` naming the entry. ``torch.Size`` values come back as tuples.

**Writing** streams (``pt_writer.py``): each entry is loaded, written as one storage record of
torch.save's zip layout and dropped, the pickle last, so peak memory is one entry, not the model.
Entries that are the same view of the same memory (tied weights read from a .pt) are stored once.
``extra`` is dropped: a torch.save file has no place for metadata.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, Final, cast

import numpy as np
import torch

from ..api import to_numpy
from ..dtypes import row_for_numpy, row_for_torch
from ..errors import ConversionError, FileFormatError, StructureError, UnsupportedError
from ..tree import ContainerSpec, Path, fold
from . import pt_writer
from .base import Archive, Entry, bad_file
from .file_window import Window
from .pickle_scan import MAX_DEPTH, MAX_ITEMS, MAX_REPEAT
from .pt_checks import check_legacy, check_zip
from .structure import flatten

__all__ = ["PT"]

_ZIP_MAGIC: Final = b"PK\x03\x04"
_LOCAL_HEADER: Final = struct.Struct("<4s22xHH")  # signature, (versions, flags, sizes...), name and extra lengths
_CYCLE: Final = "contains itself (a reference cycle)"  # how tensorbridge.tree's walk says it
#: Tensors may hold (under all their names) MAX_REPEAT times the file's size, plus this.
MAX_TENSOR_SLACK: Final = 16 << 20
_SAFETY_FIX: Final = (
    "Only if you trust the file: load it with torch.load(path, weights_only=False) in trusted code and "
    "re-save its tensors as a state dict, e.g. torch.save(model.state_dict(), path)"
)
# What torch's weights-only unpickler says when it refuses a global or a call (the file is not
# malformed: it asks for code). Everything else it says means a damaged file.
_REFUSED: Final = re.compile(
    r"GLOBAL (\S+) (?:was not an allowed global|whose module \S+ is blocked)"
    r"|call reduce for unrecognized function (\S+)"
    r"|(Can only (?:build|create new object)[^\n]*)"
)


@dataclass(frozen=True)
class _Zip:
    """Where a zip-based torch.save file keeps its records (name -> data offset and size)."""

    prefix: str
    records: dict[str, tuple[int, int]]


class _PT:
    """The torch.save format (see the module docstring for what is checked and why)."""

    name: str = "pt"
    suffixes: tuple[str, ...] = (".pt", ".pth", ".bin")
    keeps_metadata: bool = False

    def read(self, path: str) -> Archive:
        """Load a torch.save file safely (``weights_only=True``), memory-mapped; copy no tensor data.

        Raises:
            FileFormatError: (ValueError) the file is damaged, not a torch.save file, or needs code
                to load (refused for safety).
            UnsupportedError: (TypeError) an entry tensorbridge cannot hold (sparse, quantized, ...).
            OSError: the file cannot be opened.

        Example:
            >>> import os, tempfile, torch
            >>> from tensorbridge.files.torch_files import PT
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     path = os.path.join(tmp, "ckpt.pt")
            ...     torch.save({"epoch": 3, "model": {"w": torch.ones(2, 3)}}, path)
            ...     archive = PT.read(path)
            ...     print([(e.name, e.dtype.name, e.shape) for e in archive.entries])
            ...     print(archive.entries[0].load().sum().item())
            [('model.w', 'float32', (2, 3))]
            6.0
        """
        path = os.fspath(path)
        return self._read(Window(path, 0, os.path.getsize(path), "its data"), whole=True)

    def read_window(self, window: Window) -> Archive:
        """Load a torch.save payload that is one byte window of a larger file, with every check of :meth:`read`.

        The window is read as a file of its own (``file_window.WindowFile``): its zip directory,
        records and pickle must lie inside it, and nothing around it is read. Its tensors are read
        into memory (torch cannot map part of a file), each entry's data once; errors name
        ``window.path``.

        Raises:
            FileFormatError: (ValueError) as for :meth:`read`, and where the file does not hold the
                whole window (it is truncated).
            UnsupportedError: (TypeError) an entry tensorbridge cannot hold.
            OSError: the file cannot be opened.

        Example:
            >>> import io, os, tempfile, torch
            >>> from tensorbridge.files.file_window import Window
            >>> payload = io.BytesIO()
            >>> torch.save(torch.arange(4.0), payload)
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     path = os.path.join(tmp, "blob.bin")
            ...     with open(path, "wb") as f:
            ...         _ = f.write(b"x" * 10 + payload.getvalue() + b"y" * 10)
            ...     (entry,) = PT.read_window(Window(path, 10, len(payload.getvalue()))).entries
            ...     print(entry.name, entry.load().tolist())
            data [0.0, 1.0, 2.0, 3.0]
        """
        return self._read(window, whole=False)

    def _read(self, src: Window, *, whole: bool) -> Archive:
        """PT.read of a whole file (memory-mapped where it is a zip) or of a window (read into memory)."""
        path, size = src.path, src.length
        with src.open() as f:
            head = f.read(512)
        layout: _Zip | None = None
        if head.startswith(_ZIP_MAGIC):
            layout = _zip_layout(src)
            budget = layout.records[f"{layout.prefix}/data.pkl"][1]
            check_zip(src, layout.prefix, layout.records)
        else:
            if _check_legacy_head(path, head):
                check_legacy(src)
            budget = size
        obj = _torch_load(src, mmap=whole and layout is not None, whole=whole)
        # Every item of a tree costs the pickle at least a byte; only shared references multiply.
        _check_tree(obj, path, min(4 * budget + 100_000, MAX_ITEMS), MAX_REPEAT * size + MAX_TENSOR_SLACK)
        try:
            leaves, record = flatten(obj)
        except UnsupportedError as err:
            raise UnsupportedError("reading", path, f"at {err.path}: {err.cause}", err.fix) from err
        entries = [_entry(name, leaf, path) for name, leaf in leaves]
        return Archive(entries, record, {})

    def write(self, path: str, entries: Sequence[Entry], structure: Any, extra: dict[str, str]) -> None:
        """Write the entries as torch.save would, one at a time, nested as ``structure`` says (None: a flat dict).

        ``extra`` is dropped (a torch.save file has no metadata). The file loads with
        ``torch.load(path, weights_only=True)``.

        Raises:
            StructureError: (ValueError) two entries share a name, or entries the record does not name.
            FileFormatError: (ValueError) the nesting record is malformed or names a missing entry.
            UnsupportedError: (TypeError) an entry's dtype torch cannot hold.
            OSError: the file cannot be written.

        Example:
            >>> import os, tempfile, numpy as np, torch
            >>> from tensorbridge.files.base import Entry
            >>> from tensorbridge.files.torch_files import PT
            >>> w = np.arange(6, dtype=np.float32).reshape(2, 3)
            >>> entry = Entry("model.w", w.dtype, w.shape, lambda: w)
            >>> record = {"dict": [["model", {"dict": [["w", {"t": "model.w"}]]}], ["epoch", {"v": 3}]]}
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     path = os.path.join(tmp, "ckpt.pt")
            ...     PT.write(path, [entry], record, {})
            ...     ckpt = torch.load(path, weights_only=True)
            >>> ckpt["epoch"], ckpt["model"]["w"].tolist()
            (3, [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
        """
        pt_writer.write(os.fspath(path), entries, structure)


PT: Final = _PT()
"""The torch.save format."""


def _short(message: str) -> str:
    """The gist of torch's message: one line, no terminal colours, boilerplate or final period."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", message).split(" This is an internal miniz error")[0]
    text = " ".join(text.split())
    return (text[:300] + "...") if len(text) > 300 else text.rstrip(".")


def _zip_layout(src: Window) -> _Zip:
    """Check a zip's directory before torch parses it; return where each record's data lies (in ``src``)."""
    path, size = src.path, src.length
    try:
        with src.open() as zfile, zipfile.ZipFile(zfile) as zf, src.open() as f:
            infos = zf.infolist()
            prefix = infos[0].filename.split("/")[0] if infos else ""
            if any(info.filename == f"{prefix}/constants.pkl" for info in infos):
                raise FileFormatError(
                    "reading",
                    path,
                    "it is a TorchScript archive (torch.jit.save), which holds code, not a torch.save file",
                    "Only if you trust it: load it with torch.jit.load in trusted code and torch.save its state_dict()",
                )
            records: dict[str, tuple[int, int]] = {}
            for info in infos:
                if info.filename in records:
                    raise bad_file(path, f"the zip archive holds two records named {info.filename!r}")
                if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                    raise bad_file(
                        path,
                        f"record {info.filename!r} is compressed or encrypted (method {info.compress_type}), "
                        "which torch.save never writes",
                    )
                f.seek(info.header_offset)
                signature, name_len, extra_len = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
                offset = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
                if signature != _ZIP_MAGIC or offset + info.file_size > size or info.file_size != info.compress_size:
                    raise bad_file(path, f"record {info.filename!r} lies outside the file (it is truncated)")
                records[info.filename] = (offset, info.file_size)
    except FileFormatError:
        raise
    except Exception as err:  # zipfile's own errors on a damaged archive are many (BadZipFile, struct.error...)
        why = f"it is not a complete zip archive ({type(err).__name__}: {_short(str(err))})"
        raise bad_file(path, f"{why}, so it is truncated or damaged") from err
    if f"{prefix}/data.pkl" not in records:
        raise bad_file(path, f"the zip archive has no {prefix}/data.pkl record, so it is no torch.save file")
    return _Zip(prefix, records)


def _check_legacy_head(path: str, head: bytes) -> bool:
    """A file that is not a zip must be a legacy torch.save pickle (True) or the even older tar."""
    if not head:
        raise bad_file(path, "the file is empty")
    is_pickle = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    if not is_pickle and head[257:262] != b"ustar":
        raise bad_file(path, f"it starts with {head[:8]!r}, neither a zip archive nor a legacy torch.save pickle")
    return is_pickle


def _torch_load(src: Window, *, mmap: bool, whole: bool) -> Any:
    """torch.load, weights only, of a whole file (by path) or of a window (a file object over it).

    Whatever a damaged or hostile file makes it raise is a FileFormatError.
    """
    path = src.path
    try:
        with warnings.catch_warnings():
            # torch warns about its own internals while rebuilding valid tensors (complex32 is
            # "experimental", TypedStorage "deprecated"); nothing a reader of the file can act on.
            warnings.simplefilter("ignore")
            if whole:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            with src.open() as f:
                return torch.load(cast(IO[bytes], f), map_location="cpu", weights_only=True, mmap=False)
    except FileFormatError:
        raise
    except Exception as err:  # untrusted bytes reach torch's parsers: any exception means a bad file
        raise _load_error(path, err) from err


def _load_error(path: str, err: Exception) -> ConversionError:
    message = str(err)
    refused = _REFUSED.search(message)
    if refused:
        what = refused.group(1) or refused.group(2)
        why = f"it would import {what}" if what else _short(refused.group(3))
        return FileFormatError(
            "reading",
            path,
            f"refused for safety: {why}, which torch.load(weights_only=True) does not allow",
            _SAFETY_FIX,
        )
    if "legacy .tar format" in message:
        why = "it is in the legacy .tar format of torch < 0.4, which torch.load(weights_only=True) does not allow"
        return FileFormatError("reading", path, f"refused for safety: {why}", _SAFETY_FIX)
    if re.search(r"must be imported to load (nested jagged tensors|DTensors)", message):
        return UnsupportedError(
            "reading",
            path,
            f"it holds tensors tensorbridge does not read ({_short(message.split(chr(10))[0].split('. ', 1)[-1])})",
            "Save plain tensors instead (t.to_padded_tensor(0.0) for nested, t.full_tensor() for DTensors)",
        )
    if message.startswith("Weights only load failed"):
        # The unpickler's own words sit between torch's advice on weights_only and a docs link.
        parts = [p for p in message.split("\n\n") if p.strip() and not p.startswith(("Weights only", "Check the doc"))]
        message = parts[0] if parts else message
    return bad_file(path, f"torch.load cannot read it ({type(err).__name__}: {_short(message)})")


def _check_tree(obj: Any, path: str, max_items: int, max_bytes: int) -> None:
    """Refuse nesting deeper than a nesting record may be, and shared references that expand without bound.

    Every item counts, containers included (a million shared empty lists hold no leaf), each
    before it is taken apart. Tensors count with every name they will have: the command writes
    (and diff compares) each. The dict, list and tuple containers a file holds are walked (by
    :func:`tensorbridge.tree.fold`); anything else is one item, which ``flatten`` then refuses.
    """
    count = nbytes = 0

    def spend(item: Any, depth: int) -> None:
        nonlocal count, nbytes
        count += 1
        if isinstance(item, torch.Tensor) and item.layout == torch.strided and not item.is_meta:
            nbytes += item.numel() * item.element_size()
            if nbytes > max_bytes:
                raise FileFormatError(
                    "reading",
                    path,
                    f"its tensors, counted under every name they have, hold more than {max_bytes} bytes "
                    f"({MAX_REPEAT} times the file's size plus {MAX_TENSOR_SLACK >> 20} MiB): the same data is "
                    "referred to again and again, or viewed with repeating strides",
                    "Save each tensor once, under one name, without expanded views",
                )
        if depth > MAX_DEPTH:
            raise too_deep()
        if count > max_items:
            raise UnsupportedError(
                "reading",
                path,
                f"its containers refer to each other so often that they expand to more than {max_items} items",
                "Save each container once, e.g. a state dict of tensors",
            )

    def enter(item: Any, spec: ContainerSpec, at: Path, depth: int) -> bool:
        if not isinstance(item, (dict, list, tuple)):
            return False  # one item, counted as a leaf
        spend(item, depth)
        return True

    def too_deep() -> UnsupportedError:
        return UnsupportedError(
            "reading",
            path,
            f"its containers nest more than {MAX_DEPTH} levels deep (or contain themselves)",
            "Save a flatter structure, e.g. a state dict of tensors",
        )

    try:
        fold(obj, lambda item, at, depth: spend(item, depth), lambda *_: None, enter=enter)
    except StructureError as err:
        if not err.cause.endswith(_CYCLE):  # the tree's words for a container that contains itself
            raise
        raise too_deep() from err


def _entry(name: str, leaf: Any, path: str) -> Entry:
    """An entry for one leaf, refusing what NumPy cannot hold."""

    def refuse(why: str, fix: str) -> UnsupportedError:
        return UnsupportedError("reading", path, f"entry {name!r} {why}", fix)

    if not isinstance(leaf, torch.Tensor):
        # NumPy arrays arrive only where this process allowlisted them (torch.serialization.add_safe_globals).
        arr = np.asarray(leaf)
        if row_for_numpy(arr.dtype) is None:
            raise refuse(f"is a NumPy array of dtype {arr.dtype}", "Save it as a tensor of a numeric dtype")
        return Entry(name, arr.dtype, arr.shape, lambda: arr)
    if leaf.is_nested:
        raise refuse("is a nested tensor", "Save t.to_padded_tensor(0.0), or each of t.unbind()")
    if type(leaf) not in (torch.Tensor, torch.nn.Parameter):
        raise refuse(f"is a {type(leaf).__qualname__}, a tensor subclass", "Save plain tensors instead")
    if leaf.layout != torch.strided:
        raise refuse(f"is a sparse tensor ({leaf.layout})", "Save t.to_dense(), or its indices and values")
    if leaf.is_quantized:
        raise refuse(f"is a quantized tensor ({leaf.dtype})", "Save t.dequantize(), or t.int_repr() and its scale")
    if leaf.device.type != "cpu":
        raise refuse(f"is a {leaf.device.type} tensor with no data", "Save the tensor with its data (on the CPU)")
    row = row_for_torch(leaf.dtype)
    if row is None:
        raise refuse(f"has dtype {leaf.dtype}, which NumPy cannot hold", "Save it as a NumPy-compatible dtype")
    tensor = leaf.detach()
    return Entry(name, row.numpy, tuple(tensor.shape), lambda: to_numpy(tensor))
