"""What each opcode of a torch.save pickle may build: the checks of the pickle scan.

``_Scanner`` holds the checks :func:`~tensorbridge.files.pickle_scan.scan` calls as it runs the
opcodes: containers (nesting, items, a container changed after it was used), tensor views
(inside their storage, repeating its bytes at most ``MAX_REPEAT`` times), storage ids, and the
calls torch.save writes (everything else is refused, or left opaque for ``torch.load`` to refuse).
The refusals are listed in ``pickle_scan.py``'s module docs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import torch

from .base import bad_file
from .pickle_standins import (
    _MAX_DIM,
    _OPAQUE,
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_REPEAT,
    REPEAT_SLACK,
    Storage,
    Tensor,
    _Box,
    _Bytes,
    _depth,
    _dtype,
    _Global,
    _is_storage_class,
    _Opaque,
    _storage_dtype,
    _Text,
)

_TORCH_OWNED: Final = ("torch.", "builtins.", "collections.", "_codecs.")
_LATIN1: Final = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "utf-8", "utf8"})


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
