"""A DCP checkpoint's ``.metadata`` pickle, read without running code: the tensors, their chunks and where each lies.

``torch.distributed.checkpoint`` pickles a ``Metadata`` object into ``<dir>/.metadata``. It is
never given to :mod:`pickle` as is: first a data-free pass over its opcodes (``pickletools``,
iteratively) refuses nesting deeper than ``MAX_DEPTH``; then a restricted unpickler resolves
only the globals DCP writes (its metadata classes, ``_StorageInfo``, torch dtypes, ``torch.Size``,
``torch.serialization._get_layout``, ``pathlib`` paths), each to a stand-in of this module, so no
torch code runs while it loads. Any other global (``os.system``, ``builtins.eval``) is refused with
:class:`FileFormatError` naming it, before anything is built. The file may hold at most
``MAX_METADATA_BYTES``. The stand-ins are then checked field by field into :class:`DcpTensor`.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from dataclasses import dataclass
from typing import Any, Final

import torch

from ..errors import FileFormatError
from .base import bad_file, clipped
from .pickle_standins import MAX_DEPTH

__all__ = ["MAX_METADATA_BYTES", "METADATA_NAME", "DcpChunk", "DcpTensor", "read_metadata"]

METADATA_NAME: Final = ".metadata"
#: The most bytes a ``.metadata`` file may hold (a 70B-parameter model sharded 1024 ways needs a few MB).
MAX_METADATA_BYTES: Final = 64 << 20
_DCP: Final = "torch.distributed.checkpoint.metadata"


class _Record:
    """A stand-in for one of DCP's dataclasses: keeps the state pickle gives it, runs nothing."""

    kind = "record"

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _record(kind: str) -> type[_Record]:
    return type(kind, (_Record,), {"kind": kind})


def _size(items: Any = ()) -> tuple[Any, ...]:
    return tuple(items)


def _text(*parts: Any) -> str:
    return "/".join(str(p) for p in parts)


def _same(value: Any) -> Any:
    return value


_ALLOWED: Final[dict[tuple[str, str], Any]] = {
    **{
        (_DCP, n): _record(n)
        for n in (
            "Metadata",
            "TensorStorageMetadata",
            "TensorProperties",
            "ChunkStorageMetadata",
            "BytesStorageMetadata",
            "MetadataIndex",
            "StorageMeta",
        )
    },
    (_DCP, "_MEM_FORMAT_ENCODING"): _same,
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _record("_StorageInfo"),
    ("torch", "Size"): _size,
    ("torch.serialization", "_get_layout"): _text,
    ("collections", "OrderedDict"): dict,
    **{("pathlib", n): _text for n in ("Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath")},
    **{("torch", n): v for n, v in vars(torch).items() if isinstance(v, torch.dtype)},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, path: str) -> None:
        super().__init__(io.BytesIO(data))
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise bad_file(
                self.path,
                f"refused: its pickle imports {clipped(f'{module}.{name}', 100)}, which a DCP checkpoint's metadata "
                "never holds",
                "Only read checkpoints you trust; this one would run code",
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise bad_file(self.path, "its pickle refers to external data, which DCP metadata never does")


def _check_depth(data: bytes, path: str) -> None:
    """Refuse containers nested deeper than MAX_DEPTH (hashing or comparing them would overflow the C stack)."""
    mark: Final = object()
    stack: list[Any] = []
    memo: dict[Any, list[int]] = {}
    mutators = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name == "MARK":
                stack.append(mark)
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name == "DUP":
                stack.append(stack[-1])
            elif name in ("POP", "POP_MARK", "STOP", "PROTO", "FRAME"):
                if name == "POP":
                    stack.pop()
                elif name == "POP_MARK":
                    while stack.pop() is not mark:
                        pass
            else:
                popped: list[list[int]] = []
                before = op.stack_before
                if pickletools.markobject in before:
                    while (item := stack.pop()) is not mark:
                        popped.append(item)
                    for _ in range(before.index(pickletools.markobject)):
                        popped.append(stack.pop())
                else:
                    for _ in before:
                        popped.append(stack.pop())
                if not op.stack_after:
                    continue
                if name in mutators:
                    cell = popped[-1]  # the container lies below its new items
                    cell[0] = max([cell[0]] + [c[0] + 1 for c in popped[:-1]])
                else:
                    cell = [max((c[0] for c in popped), default=0) + (1 if popped else 0)]
                if cell[0] > MAX_DEPTH:
                    raise bad_file(path, f"its pickle nests containers more than {MAX_DEPTH} levels deep")
                stack.append(cell)
    except FileFormatError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as err:
        raise bad_file(
            path, f"its pickle is malformed or truncated ({type(err).__name__}: {clipped(str(err))})"
        ) from err


@dataclass(frozen=True)
class DcpChunk:
    """One stored piece of a tensor: where it sits in the tensor and where its torch.save bytes lie."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    offset: int
    length: int


@dataclass(frozen=True)
class DcpTensor:
    """A tensor of the checkpoint as its metadata declares it."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    chunks: tuple[DcpChunk, ...]


def _fields(value: Any, kind: str, path: str, what: str) -> dict[str, Any]:
    state = getattr(value, "state", None) if isinstance(value, _Record) and value.kind == kind else None
    if not isinstance(state, dict):
        raise bad_file(path, f"its metadata's {clipped(what)} is not a {kind}")
    return state


def _ints(value: Any, path: str, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > 64 or not all(type(v) is int and 0 <= v < 1 << 62 for v in value):
        raise bad_file(path, f"its metadata's {clipped(what)} is not a tuple of non-negative integers")
    return value


def read_metadata(directory: str) -> tuple[list[DcpTensor], list[str]]:
    """The tensors a DCP directory's ``.metadata`` declares, and the names of its non-tensor values.

    Raises:
        FileFormatError: (ValueError) the pickle is too large, malformed, imports what DCP never
            writes, or declares something else than DCP's metadata.

    Example:
        >>> import tempfile, torch, warnings
        >>> import torch.distributed.checkpoint as dcp
        >>> folder = tempfile.mkdtemp()
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     _ = dcp.save({"w": torch.ones(2), "step": 3}, checkpoint_id=folder, no_dist=True)
        >>> tensors, others = read_metadata(folder)
        >>> [(t.name, t.shape, len(t.chunks)) for t in tensors], others
        ([('w', (2,), 1)], ['step'])
    """
    path = os.path.join(directory, METADATA_NAME)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_METADATA_BYTES:
            raise bad_file(path, f"it is {size} bytes, more than the {MAX_METADATA_BYTES} a DCP .metadata may hold")
        data = f.read(size)
    _check_depth(data, path)
    try:
        top = _Unpickler(data, path).load()
    except FileFormatError:
        raise
    except Exception as err:  # a hostile pickle can make the unpickler raise anything
        raise bad_file(path, f"its pickle cannot be read ({type(err).__name__}: {clipped(str(err))})") from err
    md = _fields(top, "Metadata", path, "top object")
    declared, stored = md.get("state_dict_metadata"), md.get("storage_data")
    if not isinstance(declared, dict) or not isinstance(stored, dict):
        raise bad_file(path, "its metadata has no state_dict_metadata or storage_data dict")
    where: dict[tuple[str, tuple[int, ...] | None], DcpChunk] = {}
    for key, info in stored.items():
        index = _fields(key, "MetadataIndex", path, "storage key")
        fields = _fields(info, "_StorageInfo", path, f"storage of {index.get('fqn')!r}")
        fqn, at = index.get("fqn"), index.get("offset")
        rel, offset, length = fields.get("relative_path"), fields.get("offset"), fields.get("length")
        if not isinstance(fqn, str) or not isinstance(rel, str) or type(offset) is not int or type(length) is not int:
            raise bad_file(path, f"its metadata stores {clipped(repr(fqn))} with a bad file, offset or length")
        if fields.get("transform_descriptors"):
            raise bad_file(
                path,
                f"{fqn!r} is stored through transforms {clipped(repr(fields['transform_descriptors']))} "
                "(compression or encryption), which tensorbridge does not read",
                "Save the checkpoint without storage extensions",
            )
        if rel != os.path.basename(rel) or rel in ("", ".", "..") or offset < 0 or length < 0:
            raise bad_file(
                path, f"its metadata stores {fqn!r} at {clipped(repr(rel))} (offset {offset}, length {length})"
            )
        chunk_at = None if at is None else _ints(at, path, f"offset of {fqn!r}")
        where[(fqn, chunk_at)] = DcpChunk((), (), rel, offset, length)
    tensors, others = [], []
    for name, item in declared.items():
        if not isinstance(name, str):
            raise bad_file(path, f"its metadata names a value by {clipped(repr(name))}, not a string")
        if isinstance(item, _Record) and item.kind == "BytesStorageMetadata":
            others.append(name)
            continue
        tsm = _fields(item, "TensorStorageMetadata", path, f"entry {name!r}")
        props = getattr(tsm.get("properties"), "state", None)
        if not isinstance(props, tuple) or len(props) < 2 or not isinstance(props[0], torch.dtype):
            raise bad_file(path, f"its metadata gives {name!r} no dtype")
        if props[1] != "torch.strided":
            raise bad_file(path, f"{name!r} has layout {clipped(str(props[1]))}; only dense tensors are read")
        shape = _ints(tsm.get("size"), path, f"size of {name!r}")
        chunks = []
        raw_chunks = tsm.get("chunks")
        if not isinstance(raw_chunks, list) or not raw_chunks:
            raise bad_file(path, f"its metadata gives {name!r} no chunks")
        for raw in raw_chunks:
            c = _fields(raw, "ChunkStorageMetadata", path, f"chunk of {name!r}")
            offsets, sizes = _ints(c.get("offsets"), path, f"chunk of {name!r}"), _ints(c.get("sizes"), path, name)
            stored_at = where.get((name, offsets))
            if stored_at is None:
                raise bad_file(path, f"chunk {list(offsets)} of {name!r} is stored in no file")
            chunks.append(DcpChunk(offsets, sizes, stored_at.file, stored_at.offset, stored_at.length))
        tensors.append(DcpTensor(name, props[0], shape, tuple(chunks)))
    return tensors, others
