"""Nested containers -> arrays with dotted names, and the nesting record (:func:`flatten`).

The walk is :func:`tensorbridge.tree.fold`'s; what a file can hold (dict, OrderedDict, list and
tuple containers, str and int keys, arrays, tensors and JSON values) is decided here, before
anything is written. Reading a record back is ``structure.py``'s (``unflatten``).
"""

from __future__ import annotations

import collections
from collections.abc import Hashable, Sequence
from typing import Any, Final

import numpy as np
import torch

from ..containers.builtin import builtin_rule, dict_spec, list_spec, tuple_spec
from ..errors import StructureError, UnsupportedError
from ..tree import ContainerSpec, Path, fold
from .structure_record import _VALUES, MAX_DEPTH, ROOT_NAME

__all__ = ["flatten"]

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
