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

import struct
from collections.abc import Callable
from typing import Any, Final

from .base import MAX_HEADER_BYTES, bad_file
from .pickle_rules import _Scanner
from .pickle_standins import MAX_DEPTH, MAX_ITEMS, Storage, Tensor, _Box, _depth, _Global, _Opaque, _Text
from .pickle_standins import MAX_REPEAT as MAX_REPEAT
from .pickle_standins import REPEAT_SLACK as REPEAT_SLACK

__all__ = ["MAX_DEPTH", "MAX_ITEMS", "MAX_OPS", "Storage", "Tensor", "scan"]

#: Opcodes per pickle: torch.save writes about 25 per tensor, so this is ~300,000 tensors.
MAX_OPS: Final = 8_000_000
_SHORT_TEXT: Final = 1024  # longer strings are only counted: nothing needs their value


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
