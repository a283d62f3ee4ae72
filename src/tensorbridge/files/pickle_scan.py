"""An iterative, data-free pass over a torch.save pickle, run before ``torch.load`` sees it.

``torch.load(weights_only=True)`` refuses to import code, but it still builds whatever the
allowed globals make: a tuple nested a million levels deep (hashing it as a dict key overflows
the C stack), ``torch.FloatTensor(n)`` or ``UntypedStorage(n)`` (uninitialised memory),
``bytearray(n)`` (n bytes from a few bytes of file), views past the end of their storage. This
module runs the same opcodes over stand-ins (no tensor, no data, no recursion) and refuses,
with :class:`FileFormatError`, anything tensorbridge would not read safely:

* **Opcodes**: only those torch's weights-only unpickler reads, at most :data:`MAX_OPS`; the
  pickle itself at most ``base.MAX_HEADER_BYTES``.
* **Nesting**: containers (tuple, list, dict, set, and MARK frames) at most ``MAX_DEPTH`` deep;
  a container changed after it was put in another one (how cycles are pickled) is refused too,
  so every depth is final when it is computed.
* **Size**: at most :data:`MAX_ITEMS` container items (argument tuples a call consumed are
  given back); byte strings only from stored text (``bytearray(n)`` is refused).
* **Calls**: only the ones ``torch.save`` writes (the ``_rebuild_*`` functions, OrderedDict,
  set, complex, torch.Size, ...); tensor and storage constructors are refused, since what they
  return holds no stored bytes. Globals outside torch's own namespaces stay opaque: torch.load
  refuses them unless the process allowlisted them.
* **Storages**: every reference (``persistent_load``) is checked at once by ``on_storage``
  against the bytes the file holds for it, and every tensor view (offset + the furthest element
  its shape and strides reach) must lie inside its storage. A view may repeat its storage's
  bytes (zero or overlapping strides) by at most :data:`MAX_REPEAT` times plus :data:`REPEAT_SLACK`
  bytes: the command would materialise it.
"""

from __future__ import annotations

import functools
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import torch

from .base import MAX_HEADER_BYTES, bad_file

__all__ = ["MAX_DEPTH", "MAX_ITEMS", "MAX_OPS", "Storage", "Tensor", "scan"]

#: Deeper nesting is refused (checkpoints nest < 10; torch.save's own pickler stops near 1000).
MAX_DEPTH: Final = 100
#: Opcodes per pickle: torch.save writes about 25 per tensor, so this is ~300,000 tensors.
MAX_OPS: Final = 8_000_000
#: Container items alive at once (and tree nodes after loading): each costs ``flatten`` ~250 bytes.
MAX_ITEMS: Final = 2_000_000
#: A tensor may repeat its storage's bytes this often (zero or overlapping strides), plus the slack.
MAX_REPEAT: Final = 8
REPEAT_SLACK: Final = 1 << 20
_MAX_DIM: Final = 1 << 62
_SHORT_TEXT: Final = 1024  # longer strings are only counted: nothing needs their value


@dataclass(frozen=True, slots=True)
class Storage:
    """A storage the pickle refers to: its key, element size and bytes."""

    key: str
    dtype: torch.dtype | None  # None: an UntypedStorage (bytes)
    nbytes: int


@dataclass(frozen=True, slots=True)
class Tensor:
    """A tensor the pickle rebuilds: how many bytes it holds (logically)."""

    nbytes: int


class _Box:
    """A container the pickle builds: what it is, how deep it nests, how many items it holds."""

    __slots__ = ("consumed", "depth", "items", "kind", "sealed", "size")

    def __init__(self, kind: str, depth: int = 1, items: tuple[Any, ...] | list[Any] | None = None) -> None:
        self.kind, self.depth, self.items = kind, depth, items
        self.size = 0 if items is None else len(items)
        self.sealed = self.consumed = False


@dataclass(frozen=True, slots=True)
class _Global:
    name: str


@dataclass(frozen=True, slots=True)
class _Bytes:
    n: int


@dataclass(frozen=True, slots=True)
class _Text:
    n: int  # a string too long to keep


class _Opaque:
    """What an unknown (not torch-owned) global makes: torch.load decides whether it may."""


_OPAQUE: Final = _Opaque()
_TORCH_OWNED: Final = ("torch.", "builtins.", "collections.", "_codecs.")
_LATIN1: Final = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "utf-8", "utf8"})


def _depth(value: Any) -> int:
    return value.depth if isinstance(value, _Box) else 0


def _dtype(name: str) -> torch.dtype | None:
    if not name.startswith("torch."):
        return None
    value = getattr(torch, name[6:], None)
    return value if isinstance(value, torch.dtype) else None


def _storage_dtype(name: str) -> torch.dtype | None:
    """The dtype of a storage class global; None for UntypedStorage; KeyError: not a storage class."""
    if name in ("torch.UntypedStorage", "torch.storage.UntypedStorage"):
        return None
    return _storage_dtypes()[name]


def _is_storage_class(name: str) -> bool:
    return name in ("torch.UntypedStorage", "torch.storage.UntypedStorage") or name in _storage_dtypes()


@functools.cache
def _storage_dtypes() -> dict[str, torch.dtype]:
    """``torch.FloatStorage`` -> torch.float32, ... (the classes torch.save names in storage ids)."""
    table: dict[str, torch.dtype] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is "deprecated": these classes still name dtypes
        for attr in dir(torch):
            cls = getattr(torch, attr)
            if attr.endswith("Storage") and isinstance(cls, type) and issubclass(cls, torch.storage.TypedStorage):
                dtype = getattr(cls, "dtype", None)
                if isinstance(dtype, torch.dtype):
                    table[f"torch.{attr}"] = dtype
    return table


class _Scanner:
    def __init__(self, path: str, on_storage: Callable[[Storage], None], keep_lists: bool) -> None:
        self.path, self.on_storage, self.keep_lists = path, on_storage, keep_lists
        self.items = 0

    # ------------------------------------------------------------ refusals

    def bad(self, why: str) -> Exception:
        return bad_file(self.path, why)

    def too_deep(self) -> Exception:
        return bad_file(
            self.path,
            f"its containers nest more than {MAX_DEPTH} levels deep (or contain themselves)",
            "Save a flatter structure, e.g. a state dict of tensors",
        )

    def refuse_call(self, name: str, why: str) -> Exception:
        return bad_file(self.path, f"refused: its pickle calls {name}, {why}", "Save plain tensors, e.g. a state dict")

    # ------------------------------------------------------------ containers

    def insert(self, box: Any, children: list[Any] | tuple[Any, ...], kinds: tuple[str, ...]) -> None:
        if not isinstance(box, _Box) or box.kind not in kinds:
            what = type(box).__name__ if not isinstance(box, _Box) else box.kind
            raise self.bad(f"its pickle adds items to a {what}, which torch.load does not allow")
        if box.sealed:
            raise self.too_deep()  # changed after being used: how a cycle is pickled
        for child in children:
            if child is box:
                raise self.too_deep()
            self.seal(child)
            box.depth = max(box.depth, _depth(child) + 1)
        if box.depth > MAX_DEPTH:
            raise self.too_deep()
        box.size += len(children)
        if self.keep_lists and box.items is not None and isinstance(box.items, list):
            box.items.extend(children)
        self.count(len(children))

    def seal(self, value: Any) -> None:
        if isinstance(value, _Box):
            value.sealed = True

    def count(self, n: int) -> None:
        self.items += n
        if self.items > MAX_ITEMS:
            raise bad_file(
                self.path,
                f"its pickle builds more than {MAX_ITEMS} container items",
                "Save fewer, larger tensors (a state dict) instead of many small values",
            )

    def tuple_of(self, items: list[Any]) -> _Box:
        for child in items:
            self.seal(child)
        depth = 1 + max((_depth(c) for c in items), default=0)
        if depth > MAX_DEPTH:
            raise self.too_deep()
        self.count(len(items))
        return _Box("tuple", depth, tuple(items))

    def args_of(self, value: Any, name: str) -> tuple[Any, ...]:
        if not isinstance(value, _Box) or value.kind != "tuple" or value.items is None:
            raise self.bad(f"its pickle calls {name} with arguments that are not a tuple")
        if not value.consumed:  # a call consumes its arguments: their items are given back, once
            value.consumed = True
            self.items -= value.size
        return tuple(value.items)

    # ------------------------------------------------------------ values

    def ints(self, value: Any, what: str) -> tuple[int, ...]:
        items = value.items if isinstance(value, _Box) and value.kind in ("tuple", "size") else None
        if items is None or len(items) > 64 or not all(type(v) is int and 0 <= v <= _MAX_DIM for v in items):
            raise self.bad(f"a tensor's {what} is not a tuple of at most 64 non-negative integers")
        return tuple(items)

    def view(self, storage: Any, offset: Any, size: Any, stride: Any, dtype: torch.dtype | None) -> Tensor:
        """A tensor over ``storage``: inside it, and repeating its bytes at most MAX_REPEAT times."""
        if not isinstance(storage, Storage):
            raise self.bad("a tensor's data is not a storage record of the file (it would be uninitialised memory)")
        dtype = storage.dtype if dtype is None else dtype
        if dtype is None:
            raise self.bad(f"storage {storage.key!r} is untyped but its tensor names no dtype")
        shape, strides = self.ints(size, "shape"), self.ints(stride, "stride")
        if type(offset) is not int or not 0 <= offset <= _MAX_DIM or len(shape) != len(strides):
            raise self.bad(f"a view of storage {storage.key!r} has a bad offset or shape/stride lengths")
        numel = 1
        for d in shape:
            numel *= d
        span = 0 if numel == 0 else (offset + sum((d - 1) * s for d, s in zip(shape, strides, strict=True)) + 1)
        span *= dtype.itemsize
        if span > storage.nbytes:
            raise self.bad(
                f"a tensor of shape {list(shape)} (strides {list(strides)}, offset {offset}) reaches byte {span} "
                f"of storage {storage.key!r}, which holds {storage.nbytes}"
            )
        nbytes = numel * dtype.itemsize
        if nbytes > MAX_REPEAT * span + REPEAT_SLACK:
            raise bad_file(
                self.path,
                f"a tensor of shape {list(shape)} and strides {list(strides)} repeats the {span} bytes it views "
                f"{nbytes // max(span, 1)} times (zero or overlapping strides); reading it would make {nbytes} bytes",
                f"Save t.contiguous() (or t.clone()) instead of an expanded view, within {MAX_REPEAT} times its data",
            )
        return Tensor(nbytes)

    def pid(self, value: Any, legacy: bool) -> Storage:
        items = value.items if isinstance(value, _Box) and value.kind == "tuple" else None
        if items is None or len(items) != (6 if legacy else 5) or items[0] != "storage":
            raise self.bad("its pickle refers to stored data by an id that is not a ('storage', ...) tuple")
        _, kind, key, location, numel, *view = items
        if not isinstance(kind, _Global) or not _is_storage_class(kind.name):
            raise self.bad(f"its pickle refers to storage {key!r} with a bad storage type")
        if type(key) is not str or type(location) is not str:
            raise self.bad(f"its pickle refers to storage {key!r} with a key or location that is not a string")
        dtype = _storage_dtype(kind.name)
        if view and view[0] is not None:
            raise self.bad(f"storage {key!r} is a storage view, which torch.save has not written since torch 1.0")
        if type(numel) is not int or not 0 <= numel <= _MAX_DIM:
            raise self.bad(f"storage {key!r} claims {numel!r} elements")
        storage = Storage(key, dtype, numel * (1 if dtype is None else dtype.itemsize))
        self.on_storage(storage)
        return storage

    # ------------------------------------------------------------ calls

    def call(self, func: Any, args: tuple[Any, ...]) -> Any:
        if isinstance(func, _Opaque) or (isinstance(func, _Global) and not func.name.startswith(_TORCH_OWNED)):
            return _OPAQUE  # torch.load refuses it unless this process allowlisted it
        name = func.name if isinstance(func, _Global) else type(func).__name__
        n = len(args)
        if name.startswith("torch._utils._rebuild_tensor") or name == "torch._utils._rebuild_qtensor":
            if name.endswith("_v3"):
                dtype = _dtype(args[6].name) if n in (7, 8) and isinstance(args[6], _Global) else None
                if dtype is None:
                    raise self.bad(f"its pickle calls {name} without a dtype")
                return self.view(args[0], args[1], args[2], args[3], dtype)
            if n >= 4 and isinstance(args[0], Storage) and args[0].dtype is None:
                raise self.bad(f"its pickle calls {name} over untyped storage {args[0].key!r}")
            if n < 4:
                raise self.bad(f"its pickle calls {name} with {n} arguments")
            return self.view(args[0], args[1], args[2], args[3], None)
        if name in ("torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state") or (
            name == "torch.nn.parameter.Parameter" and n
        ):
            if not n or not isinstance(args[0], Tensor):
                raise self.bad(f"its pickle calls {name} without a tensor")
            return args[0]
        if name == "torch.nn.parameter.Parameter":
            return Tensor(0)  # Parameter(): empty
        if name == "torch._tensor._rebuild_from_type_v2":
            if n != 4 or not isinstance(args[0], _Global) or not args[0].name.startswith("torch._utils._rebuild"):
                raise self.bad(f"its pickle calls {name} with unexpected arguments")
            return self.call(args[0], self.args_of(args[2], args[0].name))
        if name in ("torch._utils._rebuild_sparse_tensor", "torch._utils._rebuild_nested_tensor"):
            return Tensor(0)  # made of tensors already checked; tensorbridge refuses the result by name
        if name == "torch._utils._rebuild_meta_tensor_no_storage":
            return Tensor(0)  # no data at all; refused by name as a meta tensor
        if name == "torch.Size":
            return _Box("size", 2, self.ints(args[0] if n == 1 else None, "torch.Size"))
        if name in ("torch.device", "torch.serialization._get_layout"):
            if not 1 <= n <= 2 or not all(type(a) in (str, int) for a in args):
                raise self.bad(f"its pickle calls {name} with unexpected arguments")
            return _OPAQUE
        if name in ("collections.OrderedDict", "collections.Counter", "builtins.set"):
            if n > 1 or (n == 1 and not isinstance(args[0], _Box)):
                raise self.bad(f"its pickle calls {name} with unexpected arguments")
            box = _Box({"builtins.set": "set"}.get(name, "dict"), max(1, _depth(args[0]) if n else 1))
            box.size = args[0].size if n else 0
            self.count(box.size)
            return box
        if name == "builtins.complex":
            if not 1 <= n <= 2 or not all(type(a) in (int, float) for a in args):
                raise self.bad(f"its pickle calls {name} with unexpected arguments")
            return 0j
        if name == "_codecs.encode":
            if n != 2 or type(args[0]) is not str or type(args[1]) is not str or args[1].lower() not in _LATIN1:
                raise self.bad(f"its pickle calls {name} with unexpected arguments")
            return _Bytes(len(args[0]) * (1 if "8" not in args[1] else 4))
        if name == "builtins.bytearray":
            if n == 0:
                return _Bytes(0)
            if n == 1 and isinstance(args[0], _Bytes):
                return args[0]
            if n == 1 and isinstance(args[0], _Box) and args[0].kind == "list":
                return _Bytes(args[0].size)
            if n == 2 and isinstance(args[0], (str, _Text)) and isinstance(args[1], str):
                return _Bytes(len(args[0]) if isinstance(args[0], str) else args[0].n)
            raise self.refuse_call(name, "which would make bytes the file does not hold (bytearray(n) is n zeros)")
        if _is_storage_class(name) or name.endswith(
            ("Tensor", "Storage", "_from_cpu_tensor", "_from_numpy", "_rebuild_wrapper_subclass")
        ):
            raise self.refuse_call(
                name, "which makes a tensor or storage from no stored bytes: it would hold uninitialised memory"
            )
        raise self.refuse_call(name, "which torch.save does not write")


_I4: Final = struct.Struct("<i")
_U4: Final = struct.Struct("<I")
_H2: Final = struct.Struct("<H")
_D8: Final = struct.Struct(">d")


def scan(
    buf: bytes | memoryview,
    pos: int,
    path: str,
    on_storage: Callable[[Storage], None],
    *,
    legacy: bool = False,
    keep_lists: bool = False,
) -> tuple[int, Any]:
    """Run the pickle starting at ``buf[pos]`` over stand-ins; return where it ends and its value.

    The value is a stand-in (a :class:`Tensor`, a scalar, a container with only its size; with
    ``keep_lists`` lists keep their items, for torch's legacy list of storage keys).

    Raises:
        FileFormatError: (ValueError) the pickle is malformed, or builds what is refused above.

    Example:
        >>> import pickle
        >>> data = pickle.dumps({"epoch": 3}, protocol=2)
        >>> scan(data, 0, "f.pt", print)[0] == len(data)
        True
    """
    s = _Scanner(path, on_storage, keep_lists)
    end = min(len(buf), pos + MAX_HEADER_BYTES)
    stack: list[Any] = []
    frames: list[list[Any]] = []
    memo: dict[int, Any] = {}
    ops = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > end:
            raise s.bad("its pickle is truncated (or longer than allowed)")
        chunk = bytes(buf[pos : pos + n])
        pos += n
        return chunk

    def pop() -> Any:
        if not stack:
            raise s.bad(f"its pickle is malformed (an opcode at byte {pos - 1} finds too little on the stack)")
        return stack.pop()

    def pop_mark() -> list[Any]:
        nonlocal stack
        if not frames:
            raise s.bad(f"its pickle is malformed (no MARK before byte {pos - 1})")
        items, stack = stack, frames.pop()
        return items

    def text(raw: bytes) -> Any:
        if len(raw) > _SHORT_TEXT:
            return _Text(len(raw))
        try:
            return raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as err:
            raise s.bad("its pickle holds a string that is not UTF-8") from err

    while True:
        ops += 1
        if ops > MAX_OPS:
            raise bad_file(
                path, f"its pickle has more than {MAX_OPS} opcodes", "Save fewer, larger tensors (a state dict)"
            )
        if pos >= end:
            raise s.bad("its pickle is truncated (or longer than allowed)")
        op = buf[pos]
        pos += 1
        if op == 0x80:  # PROTO
            take(1)
        elif op == 0x2E:  # STOP
            return pos, pop()
        elif op == 0x28:  # MARK
            if len(frames) >= MAX_DEPTH:
                raise s.too_deep()
            frames.append(stack)
            stack = []
        elif op in (0x71, 0x72):  # BINPUT, LONG_BINPUT
            key = take(1)[0] if op == 0x71 else _U4.unpack(take(4))[0]
            if not stack:
                raise s.bad("its pickle is malformed (a memo put with an empty stack)")
            memo[key] = stack[-1]
            s.count(1)
        elif op in (0x68, 0x6A):  # BINGET, LONG_BINGET
            key = take(1)[0] if op == 0x68 else _U4.unpack(take(4))[0]
            if key not in memo:
                raise s.bad(f"its pickle is malformed (memo entry {key} is never stored)")
            stack.append(memo[key])
        elif op == 0x4E:  # NONE
            stack.append(None)
        elif op in (0x88, 0x89):  # NEWTRUE, NEWFALSE
            stack.append(op == 0x88)
        elif op == 0x4A:  # BININT
            stack.append(_I4.unpack(take(4))[0])
        elif op == 0x4B:  # BININT1
            stack.append(take(1)[0])
        elif op == 0x4D:  # BININT2
            stack.append(_H2.unpack(take(2))[0])
        elif op == 0x8A:  # LONG1
            stack.append(int.from_bytes(take(take(1)[0]), "little", signed=True))
        elif op == 0x47:  # BINFLOAT
            stack.append(_D8.unpack(take(8))[0])
        elif op == 0x58:  # BINUNICODE
            stack.append(text(take(_U4.unpack(take(4))[0])))
        elif op == 0x55:  # SHORT_BINSTRING
            stack.append(text(take(take(1)[0])))
        elif op == 0x63:  # GLOBAL
            module, name = _line(take, s), _line(take, s)
            module, name = _compat_name(module, name)
            stack.append(_Global(f"{module}.{name}"))
        elif op == 0x29:  # EMPTY_TUPLE
            stack.append(_Box("tuple", 1, ()))
        elif op == 0x74:  # TUPLE
            items = pop_mark()  # first: it rebinds ``stack``
            stack.append(s.tuple_of(items))
        elif op in (0x85, 0x86, 0x87):  # TUPLE1..3
            n = op - 0x84
            if len(stack) < n:
                raise s.bad("its pickle is malformed (a tuple of missing items)")
            items = stack[-n:]
            del stack[-n:]
            stack.append(s.tuple_of(items))
        elif op == 0x5D:  # EMPTY_LIST
            stack.append(_Box("list", 1, [] if keep_lists else None))
        elif op in (0x7D, 0x8F):  # EMPTY_DICT, EMPTY_SET
            stack.append(_Box("dict" if op == 0x7D else "set"))
        elif op == 0x61:  # APPEND
            item = pop()
            s.insert(stack[-1] if stack else None, [item], ("list",))
        elif op == 0x65:  # APPENDS
            items = pop_mark()
            s.insert(stack[-1] if stack else None, items, ("list",))
        elif op == 0x73:  # SETITEM
            value, key = pop(), pop()
            s.insert(stack[-1] if stack else None, [key, value], ("dict",))
        elif op == 0x75:  # SETITEMS
            items = pop_mark()
            if len(items) % 2:
                raise s.bad("its pickle is malformed (SETITEMS with an odd number of items)")
            s.insert(stack[-1] if stack else None, items, ("dict",))
        elif op == 0x51:  # BINPERSID
            stack.append(s.pid(pop(), legacy))
        elif op == 0x52:  # REDUCE
            args = pop()
            func = pop()
            name = func.name if isinstance(func, _Global) else "an object"
            stack.append(s.call(func, s.args_of(args, name)))
        elif op == 0x81:  # NEWOBJ
            args = pop()
            cls = pop()
            name = cls.name if isinstance(cls, _Global) else "an object"
            stack.append(s.call(cls, s.args_of(args, name)))
        elif op == 0x62:  # BUILD
            state = pop()
            target = stack[-1] if stack else None
            if not (isinstance(target, _Opaque) or (isinstance(target, _Box) and target.kind == "dict")):
                raise s.bad("its pickle sets the state of an object torch.load only builds for dicts")
            s.seal(state)
            if isinstance(target, _Box) and _depth(state) + 1 > MAX_DEPTH:
                raise s.too_deep()
        else:
            raise s.bad(f"its pickle uses opcode {bytes([op])!r} at byte {pos - 1}, which torch.load does not read")


def _line(take: Callable[[int], bytes], s: _Scanner) -> str:
    out = bytearray()
    while len(out) < 256:
        c = take(1)
        if c == b"\n":
            return out.decode("utf-8", "replace")
        out += c
    raise s.bad("its pickle names a global longer than 256 characters")


def _compat_name(module: str, name: str) -> tuple[str, str]:
    """Python 2 names, mapped as torch's unpickler maps them (``__builtin__`` is ``builtins``)."""
    from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING

    if (module, name) in NAME_MAPPING:
        return NAME_MAPPING[(module, name)]
    return IMPORT_MAPPING.get(module, module), name
