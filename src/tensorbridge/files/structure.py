"""Nested containers <-> flat dotted names, with a JSON record that brings the nesting back.

Flat formats (.npz, .safetensors) hold named arrays only. A nested state dict
``{"encoder": {"layers": [w0, w1]}, "step": 3}`` is written as ``encoder.layers.0`` and
``encoder.layers.1``, and the file's own metadata keeps a JSON record of the nesting (which
containers, which keys, the non-array leaves such as ``step``), so converting back gives the same
containers. A file without that record reads as a flat dict of its names.

Record grammar: ``{"t": name}`` an array; ``{"v": value}`` a JSON value (int, float, str, bool,
None); ``{"dict": [[key, rec], ...]}``, ``{"odict": [...]}`` (OrderedDict), ``{"list": [rec, ...]}``,
``{"tuple": [...]}``. Keys are str or int.

A record read from a file is untrusted. It is bounded before it is parsed (:func:`loads`: at most
:data:`MAX_RECORD_BYTES`, and no more bytes and JSON values than the file's own names can account
for, see :func:`record_budget`), then checked against the arrays the file actually holds
(:func:`validate`, iteratively, at most :data:`MAX_DEPTH` levels): every array is named exactly
once, and each name is the dotted path the record itself gives it, so a record cannot swap two
arrays, hide one or invent one. Names are at most :data:`MAX_NAME_BYTES` in every format (the most a
``.npz`` member name can hold), and a file holds at most :data:`MAX_ARRAYS` arrays.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Collection, Hashable, Sequence
from typing import Any, Final

import numpy as np
import torch

from ..containers.builtin import builtin_rule, dict_spec, list_spec, tuple_spec
from ..errors import FileFormatError, StructureError, UnsupportedError
from ..tree import ContainerSpec, Path, fold
from .base import clipped

__all__ = [
    "MAX_ARRAYS",
    "MAX_DEPTH",
    "MAX_NAME_BYTES",
    "MAX_RECORD_BYTES",
    "ROOT_NAME",
    "dumps",
    "flatten",
    "json_values",
    "loads",
    "prune",
    "record_budget",
    "unflatten",
    "validate",
    "writable",
]

#: The name of a lone array (not inside any container) in formats that need a name.
ROOT_NAME: Final = "data"
#: The most arrays one file may hold. The largest single checkpoints (a DeepSeek-V3-size MoE merged
#: into one file) hold about 92,000 tensors, shards a few thousand; each array costs about 1 KB of
#: Python objects while reading (a zip directory entry, a header, an Entry), so this bounds that
#: to about 150 MB however the file is built.
MAX_ARRAYS: Final = 1 << 17
#: The most UTF-8 bytes of an array name: a zip member name is at most 65,535 bytes, and ``.npz``
#: appends ``.npy``. Every name tensorbridge reads can so be written to every format.
MAX_NAME_BYTES: Final = 65_535 - 4
#: The deepest nesting a record may have (as ``torch_files.MAX_DEPTH``; checkpoints nest < 10).
MAX_DEPTH: Final = 100
#: The most bytes a nesting record may have, whatever the file's names allow (see record_budget).
MAX_RECORD_BYTES: Final = 64 << 20
# What a record may spend beyond what its arrays account for (the values, e.g. {"epoch": 3}), and
# per array: bytes (the name twice, as key and as "t", plus syntax) and JSON values.
_RECORD_BASE_BYTES: Final = 1 << 20
_RECORD_BASE_VALUES: Final = 1 << 16
_RECORD_VALUES_PER_ARRAY: Final = 16
_VALUES: Final = (int, float, str, bool, type(None))
_KINDS: Final = frozenset({"t", "v", "dict", "odict", "list", "tuple"})
_ARRAYS: Final = (np.ndarray, np.generic, torch.Tensor)
_LEAVES: Final = (*_ARRAYS, *_VALUES)
# How tensorbridge.tree's walk says that a container contains itself.
_CYCLE: Final = "contains itself (a reference cycle)"


def flatten(obj: Any) -> tuple[list[tuple[str, Any]], Any]:
    """Return the arrays/tensors of ``obj`` with their dotted names, and the nesting record.

    The walk is :func:`tensorbridge.tree.fold`'s. A file holds dict, OrderedDict, list and tuple
    containers (subclasses as what they subclass, a namedtuple's items by position); any other
    container is refused before its items are reached, as are keys other than str and int,
    nesting deeper than :data:`MAX_DEPTH` (as :func:`validate`) and reference cycles.

    Raises:
        UnsupportedError: (TypeError) what a file cannot hold, at its dotted name.

    Example:
        >>> import numpy as np
        >>> leaves, rec = flatten({"enc": [np.zeros(1), np.ones(2)], "step": 3})
        >>> [name for name, _ in leaves], rec["dict"][1]
        (['enc.0', 'enc.1'], ['step', {'v': 3}])
    """
    leaves: list[tuple[str, Any]] = []
    seen: set[str] = set()
    # One frame per container being walked, outermost first (see _Frame). fold calls enter or
    # leaf once per item, in order, so an item's name is its container's name and the next key.
    frames: list[_Frame] = []

    def enter(x: Any, spec: ContainerSpec, path: Path, depth: int) -> bool:
        if isinstance(x, _LEAVES):
            return False  # a leaf to a file, whatever else may take it apart
        name = frames[-1].next_name(path) if depth else ""
        if depth > MAX_DEPTH:
            raise _too_deep(name)
        kind = _kind(x)
        if kind is None:
            raise _cannot_store(x, name)
        frames.append(_Frame(name if depth else None, kind, _own_keys(x, spec, kind, name)))
        return True

    def leaf(x: Any, path: Path, depth: int) -> Any:
        name = frames[-1].next_name(path) if depth else ""
        if depth > MAX_DEPTH:
            raise _too_deep(name)
        if isinstance(x, _ARRAYS):
            name = name or ROOT_NAME
            if name in seen:
                raise UnsupportedError(
                    "flattening",
                    name,
                    f"two arrays would both be named {name!r} (a key contains a dot?)",
                    "Rename the keys so that their dotted paths differ",
                )
            seen.add(name)
            leaves.append((name, x))
            return {"t": name}
        if isinstance(x, _VALUES):
            return {"v": x}
        raise _cannot_store(x, name)

    def node(orig: Any, spec: ContainerSpec, keys: Sequence[Hashable], aux: Any, results: list[Any], path: Path) -> Any:
        frame = frames.pop()
        if frame.kind in ("list", "tuple"):
            return {frame.kind: results}
        own = keys if frame.keys is None else frame.keys
        return {frame.kind: [[k, r] for k, r in zip(own, results, strict=True)]}

    try:
        rec = fold(obj, leaf, node, enter=enter)
    except StructureError as err:
        if not err.cause.endswith(_CYCLE):
            raise
        at = frames[-1].name or ROOT_NAME  # the container entered again
        raise UnsupportedError("flattening", at, err.cause, "Break the cycle before saving") from err
    return leaves, rec


class _Frame:
    """A container :func:`flatten` is walking, and how many of its items have been named.

    ``name`` is its dotted name (None at the root), ``kind`` its record kind, ``keys`` its own keys
    where the tree's are not (None: the tree's keys, or positions for the list and tuple kinds).
    """

    __slots__ = ("count", "keys", "kind", "name")

    def __init__(self, name: str | None, kind: str, keys: list[Any] | None) -> None:
        self.name, self.kind, self.keys, self.count = name, kind, keys, 0

    def next_name(self, path: Path) -> str:
        """The dotted name of the next item (at ``path`` in the tree), after checking its key."""
        i = self.count
        self.count = i + 1
        if self.kind in ("list", "tuple"):
            key: Any = i  # by position, a namedtuple's items too
        else:
            key = path[2] if self.keys is None else self.keys[i]
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                shown = self.name or ROOT_NAME
                raise UnsupportedError("flattening", shown, f"key {key!r} is not a str or int", "Use str keys")
        return str(key) if self.name is None else f"{self.name}.{key!s}"


def _kind(x: Any) -> str | None:
    """The record kind a container is stored as (a subclass as what it subclasses), or None."""
    if isinstance(x, dict):
        return "odict" if isinstance(x, collections.OrderedDict) else "dict"
    if isinstance(x, list):
        return "list"
    if isinstance(x, tuple):
        return "tuple"
    return None


# Per container rule other than those for exact dict, list and tuple: whether it is tensorbridge's
# own rule for mappings or sequences, which takes a container apart into its own items in order,
# a mapping's keyed by its own keys. Rules are few: one per type, new ones only as types are
# registered.
_OWN_ITEMS: dict[ContainerSpec, bool] = {}


def _own_keys(x: Any, spec: ContainerSpec, kind: str, name: str) -> list[Any] | None:
    """The keys to name the items of ``x`` by, None where the tree's are its own (or it is a list or tuple).

    A rule other than tensorbridge's own (a namedtuple's, a torch pytree registration of a dict
    or tuple subclass) must take ``x`` apart into its own items, in order; else it is refused.
    """
    if spec is dict_spec or spec is list_spec or spec is tuple_spec:
        return None
    trusted = _OWN_ITEMS.get(spec)
    if trusted is None:
        builtin = builtin_rule(type(x))
        trusted = builtin is not None and spec.flatten is builtin.flatten
        if len(_OWN_ITEMS) > 256:  # types made on the fly; the answer is cheap to find again
            _OWN_ITEMS.clear()
        _OWN_ITEMS[spec] = trusted
    if trusted:
        return None
    mapping = kind in ("dict", "odict")
    pairs = list(x.items()) if mapping else list(enumerate(x))
    try:
        kids = spec.flatten(x)[0]
        agrees = len(kids) == len(pairs) and all(a is b for a, (_, b) in zip(kids, pairs, strict=True))
    except Exception:  # a rule that cannot take it apart does not take it apart into its items
        agrees = False
    if not agrees:
        raise UnsupportedError(
            "flattening",
            name or ROOT_NAME,
            f"a {type(x).__qualname__} cannot be stored in a tensor file: {spec.origin or 'its registration'} "
            f"takes it apart into other items than those of the {kind} it is",
            f"Convert it to a plain {'dict' if mapping else kind} first",
        )
    return [k for k, _ in pairs] if mapping else None


def _too_deep(name: str) -> UnsupportedError:
    return UnsupportedError(
        "flattening",
        name or ROOT_NAME,
        f"the containers nest more than {MAX_DEPTH} levels deep, more than a tensor file's nesting record may",
        "Save a flatter structure, e.g. a dict of arrays",
    )


def _cannot_store(x: Any, name: str) -> UnsupportedError:
    return UnsupportedError(
        "flattening",
        name or ROOT_NAME,
        f"a {type(x).__qualname__} cannot be stored in a tensor file",
        "Keep only arrays, tensors, numbers, strings and dict/list/tuple containers",
    )


def unflatten(rec: Any, arrays: dict[str, Any], where: str = "file") -> Any:
    """Rebuild the containers of ``rec`` around ``arrays`` (name -> array).

    Raises:
        FileFormatError: (ValueError) the record is malformed or names an array that is missing.

    Example:
        >>> unflatten({"dict": [["a", {"t": "a"}], ["n", {"v": 1}]]}, {"a": 5})
        {'a': 5, 'n': 1}
    """

    def build(r: Any) -> Any:
        if not isinstance(r, dict) or len(r) != 1:
            raise _bad(where, f"a nesting record entry is {r!r}")
        ((kind, body),) = r.items()
        if kind == "t":
            if body not in arrays:
                raise _bad(where, f"the nesting record names array {body!r}, which the file does not hold")
            return arrays[body]
        if kind == "v":
            if not isinstance(body, _VALUES):
                raise _bad(where, f"a value in the nesting record is {body!r}")
            return body
        if kind in ("dict", "odict"):
            if not isinstance(body, list) or not all(isinstance(p, list) and len(p) == 2 for p in body):
                raise _bad(where, "a dict in the nesting record is not a list of [key, value] pairs")
            pairs = [(k, build(v)) for k, v in body]
            return collections.OrderedDict(pairs) if kind == "odict" else dict(pairs)
        if kind in ("list", "tuple"):
            if not isinstance(body, list):
                raise _bad(where, f"a {kind} in the nesting record is not a list")
            items = [build(v) for v in body]
            return items if kind == "list" else tuple(items)
        raise _bad(where, f"unknown kind {kind!r} in the nesting record")

    return build(rec)


def prune(rec: Any, keep: set[str]) -> Any:
    """The record without the arrays not in ``keep`` (containers and values stay).

    Every array keeps its name: a list or tuple that loses an item before a kept one becomes a
    dict keyed by the original indices (``{1: w}``, not ``[w]``, whose item would be named ``.0``).
    ``rec`` is a record :func:`validate` accepted (readers check theirs), so at most
    :data:`MAX_DEPTH` levels deep.

    Example:
        >>> prune({"dict": [["a", {"t": "a"}], ["b", {"t": "b"}]]}, {"b"})
        {'dict': [['b', {'t': 'b'}]]}
        >>> prune({"list": [{"t": "0"}, {"t": "1"}]}, {"1"})
        {'dict': [[1, {'t': '1'}]]}
    """
    if rec is None:
        return None
    gone = object()

    def walk(r: Any) -> Any:
        ((kind, body),) = r.items()
        if kind == "t":
            return r if body in keep else gone
        if kind in ("dict", "odict"):
            pairs = [[k, walk(v)] for k, v in body]
            return {kind: [p for p in pairs if p[1] is not gone]}
        if kind in ("list", "tuple"):
            items = [walk(v) for v in body]
            kept = [i for i in items if i is not gone]
            if gone in items[: len(kept)]:  # an item moved to a lower index: keep the indices as keys
                return {"dict": [[i, v] for i, v in enumerate(items) if v is not gone]}
            return {kind: kept}
        return r

    out = walk(rec)
    return None if out is gone else out


_FIX: Final = (
    "The file's nesting record does not match its arrays; convert it without the record (remove the "
    "__tensorbridge__.json member or the tensorbridge.structure metadata) to read the arrays by their "
    "flat names, or convert from the source again"
)


def _bad(where: str, why: str) -> FileFormatError:
    return FileFormatError("reading", where, why, _FIX)


def dumps(rec: Any) -> str:
    """The record as compact JSON."""
    return json.dumps(rec, separators=(",", ":"), allow_nan=True)


def json_values(text: str | bytes) -> int:
    """An upper bound on the values and keys ``json.loads(text)`` creates, counted without parsing.

    Every JSON value or key but the first follows one of ``, : [ {`` (those inside strings only
    make the bound larger), so this bounds what parsing spends before anything is spent.

    Example:
        >>> json_values('{"a": [1, 2], "b": "x,y"}')
        8
    """
    if isinstance(text, str):
        return 1 + text.count(",") + text.count(":") + text.count("[") + text.count("{")
    return 1 + text.count(b",") + text.count(b":") + text.count(b"[") + text.count(b"{")


def record_budget(names: Collection[str] | None) -> tuple[int, int]:
    """The most bytes and JSON values a nesting record for these array names may have.

    A record names each array once as a ``"t"`` and once more at most as a key, plus a little
    syntax; what remains is a fixed allowance for values and containers. ``None``: the fixed caps.

    Example:
        >>> record_budget(["w"])
        (1048642, 65552)
    """
    if names is None:
        return MAX_RECORD_BYTES, _RECORD_BASE_VALUES + _RECORD_VALUES_PER_ARRAY * MAX_ARRAYS
    nbytes = _RECORD_BASE_BYTES + sum(2 * len(n.encode("utf-8", "surrogatepass")) + 64 for n in names)
    return min(nbytes, MAX_RECORD_BYTES), _RECORD_BASE_VALUES + _RECORD_VALUES_PER_ARRAY * len(names)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:  # json.loads would keep the last in silence
            raise ValueError(f"the key {key!r} appears twice in an object")
        obj[key] = value
    return obj


def loads(text: str, where: str = "file", names: Collection[str] | None = None) -> Any:
    """Parse a record within :func:`record_budget`; a damaged or oversized one raises :class:`FileFormatError`.

    Example:
        >>> loads('{"t": "w"}', names=["w"])
        {'t': 'w'}
    """
    max_bytes, max_values = record_budget(names)
    if len(text) > max_bytes:  # characters: at most its UTF-8 bytes
        raise _bad(where, f"the nesting record is {len(text)} characters, more than the {max_bytes} its arrays allow")
    values = json_values(text)
    if values > max_values:
        raise _bad(where, f"the nesting record holds up to {values} JSON values, more than the {max_values} allowed")
    try:
        return json.loads(text, object_pairs_hook=_unique)
    except (ValueError, RecursionError) as err:
        raise _bad(where, f"the nesting record is not valid JSON ({_short(err)})") from err


def validate(rec: Any, names: Collection[str], where: str = "file") -> None:
    """Check a parsed record against the names a file holds, iteratively, before anything uses it.

    The grammar (module docs), at most :data:`MAX_DEPTH` levels; dict keys str or int, none twice;
    every name in ``names`` referenced by exactly one ``{"t": name}``, and that name the dotted path
    of keys leading to it (``ROOT_NAME`` at the top), as :func:`flatten` writes it.

    Raises:
        FileFormatError: (ValueError) the record is malformed or does not match ``names``.

    Example:
        >>> validate({"dict": [["a", {"t": "a"}], ["b", {"t": "b"}]]}, ["a", "b"])
        >>> validate({"dict": [["a", {"t": "b"}], ["b", {"t": "a"}]]}, ["a", "b"])
        Traceback (most recent call last):
        ...
        tensorbridge.errors.FileFormatError: reading at file: the nesting record puts array 'a' at 'b'...
    """
    present = set(names)
    seen: set[str] = set()
    # (record, dotted path, depth); the path is None at the top, where a lone array is ROOT_NAME
    stack: list[tuple[Any, str | None, int]] = [(rec, None, 0)]
    while stack:
        r, at, depth = stack.pop()
        shown = ROOT_NAME if at is None else repr(at)
        if depth > MAX_DEPTH:
            raise _bad(where, f"the nesting record is deeper than {MAX_DEPTH} levels")
        if not isinstance(r, dict) or len(r) != 1 or next(iter(r)) not in _KINDS:
            raise _bad(where, f"the nesting record entry at {shown} is {_short(r)}, not one of {sorted(_KINDS)}")
        ((kind, body),) = r.items()
        if kind == "t":
            expected = at or ROOT_NAME
            if not isinstance(body, str) or body not in present:
                raise _bad(where, f"the nesting record names array {_short(body)}, which the file does not hold")
            if body in seen:
                raise _bad(where, f"the nesting record names array {body!r} twice")
            if body != expected:
                raise _bad(where, f"the nesting record puts array {_short(body)} at {_short(expected)}")
            seen.add(body)
        elif kind == "v":
            if not isinstance(body, _VALUES):
                raise _bad(where, f"a value in the nesting record at {shown} is {_short(body)}")
        elif kind in ("dict", "odict"):
            if not isinstance(body, list) or not all(isinstance(p, list) and len(p) == 2 for p in body):
                raise _bad(where, f"a dict in the nesting record at {shown} is not a list of [key, value] pairs")
            keys: set[tuple[type, Any]] = set()
            for k, v in body:
                bad_type = not isinstance(k, (str, int)) or isinstance(k, bool)
                if bad_type or (type(k), k) in keys:
                    why = "is not a str or int" if bad_type else "appears twice"
                    raise _bad(where, f"the key {_short(k)} of a dict in the nesting record at {shown} {why}")
                keys.add((type(k), k))
                stack.append((v, str(k) if at is None else f"{at}.{k}", depth + 1))
        else:
            if not isinstance(body, list):
                raise _bad(where, f"a {kind} in the nesting record at {shown} is not a list")
            stack.extend((v, str(i) if at is None else f"{at}.{i}", depth + 1) for i, v in enumerate(body))
    missing = [n for n in names if n not in seen]
    if missing:
        raise _bad(where, f"the nesting record does not name {len(missing)} of the arrays ({_short(missing[:3])})")


def writable(path: str, names: Sequence[str], rec: Any) -> str | None:
    """The record as JSON for a file of these names (None for None), after the checks a reader makes.

    A writer calls this before creating the file, so that it never writes what it would refuse
    to read back.

    Raises:
        UnsupportedError: (TypeError) more than :data:`MAX_ARRAYS` names, a name over
            :data:`MAX_NAME_BYTES`, or a record over its :func:`record_budget`.
        StructureError: (ValueError) the record does not match the names (:func:`validate`).

    Example:
        >>> writable("m.npz", ["w"], {"dict": [["w", {"t": "w"}]]})
        '{"dict":[["w",{"t":"w"}]]}'
    """
    if len(names) > MAX_ARRAYS:
        raise UnsupportedError(
            "writing", path, f"{len(names)} arrays, more than the {MAX_ARRAYS} a file may hold", "Split them over files"
        )
    for name in names:
        size = len(name.encode("utf-8", "surrogatepass"))
        if size > MAX_NAME_BYTES:
            raise UnsupportedError(
                "writing",
                path,
                f"the array name {_short(name)} is {size} bytes in UTF-8, more than the {MAX_NAME_BYTES} a file "
                "may hold (a zip member name holds at most 65,535)",
                "Rename the array",
            )
    if rec is None:
        return None
    try:
        validate(rec, names, where=path)
    except FileFormatError as err:
        raise StructureError(
            "writing", path, err.cause, "Pass structure=None for a flat set of names, or the record flatten() gives"
        ) from err
    text = dumps(rec)
    max_bytes, max_values = record_budget(names)
    size, values = len(text.encode("utf-8")), json_values(text)
    if size > max_bytes or values > max_values:
        raise UnsupportedError(
            "writing",
            path,
            f"the nesting record would be {size} bytes with up to {values} JSON values, more than the "
            f"{max_bytes} bytes and {max_values} values a reader accepts for {len(names)} arrays",
            "Keep fewer non-array values in the containers, or pass structure=None for a flat set of names",
        )
    return text


def _short(value: object) -> str:
    return clipped(repr(value), 80)
