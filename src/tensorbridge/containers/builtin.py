"""The standard library's containers, dataclasses and attrs classes, and how each keeps its state.

``SimpleNamespace`` is a container too: its attributes are its children.

Instance state (``__dict__`` and ``__slots__``: a list subclass's ``tag``, a state dict's
``_metadata``, a tokenizer output's ``_encodings``) always comes back, by one of two means:

* mutable containers whose constructor may want other arguments (dict subclasses, list
  subclasses with an ``__init__`` of their own, ``UserDict``/``UserList``, mappings that
  define ``__copy__``, dataclasses, attrs classes) are shallow-copied with :func:`copy.copy`
  and the copy is refilled with the converted items, as torch's ``default_collate`` does, so
  their ``__init__`` never reruns and whatever it set stays; a mutable built-in container the
  copy shares with the original (a list attribute) is copied too, so that refilling cannot
  reach the original;
* the others (tuples, namedtuples, deques, immutable mappings, OrderedDict, defaultdict, and
  list subclasses with list's constructor) are built with their constructor and then given
  the original's state by :func:`carry_state`.

Either way the caller's container is never mutated, and a rebuild that did not end up with
exactly the converted items raises instead of being handed back.
"""

from __future__ import annotations

import collections
import copy as _copy
import dataclasses
import types
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, Final

from .spec import ContainerSpec

__all__ = ["builtin_rule", "carry_state", "dict_spec", "list_spec", "tuple_spec"]

_MISSING: Final = object()


# --- instance state ------------------------------------------------------------------------


# Asked on every rebuild of a stateful container; a class's slots never change.
_SLOTS: dict[type, tuple[str, ...]] = {}


def _slot_names(cls: type) -> tuple[str, ...]:
    try:
        return _SLOTS[cls]
    except KeyError:
        names = _SLOTS[cls] = _find_slots(cls)
        return names


def _find_slots(cls: type) -> tuple[str, ...]:
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{klass.__name__.lstrip('_')}{name}"  # a private slot is stored mangled
            if name not in names:
                names.append(name)
    return tuple(names)


def carry_state(orig: Any, new: Any, *, overwrite: bool) -> None:
    """Give ``new`` the instance state (``__dict__`` entries and set slots) of ``orig``.

    ``overwrite=True`` copies all of it: for containers whose items live outside the instance
    state (dict, list, tuple, deque subclasses). ``overwrite=False`` only fills in what ``new``
    lacks: for mappings that may keep their items in an attribute (``UserDict.data``), which
    the constructor or ``__copy__`` already made anew and must not be replaced by the original's.
    """
    state = getattr(orig, "__dict__", None)
    if state:
        target = new.__dict__
        if overwrite:
            target.update(state)
        else:
            for name, value in state.items():
                target.setdefault(name, value)
    for name in _slot_names(type(orig)):
        value = getattr(orig, name, _MISSING)
        if value is not _MISSING and (overwrite or getattr(new, name, _MISSING) is _MISSING):
            object.__setattr__(new, name, value)


def _has_state(cls: type) -> bool:
    return bool(cls.__dictoffset__) or bool(_slot_names(cls))


# --- mappings ------------------------------------------------------------------------------


def _flatten_mapping(m: Mapping[Any, Any]) -> tuple[list[Any], list[Any], list[Any]]:
    # One pass over items() pairs each value with its key, whatever order a Mapping's
    # keys() and values() would give separately; the keys travel as aux to the rebuild.
    pairs = list(m.items())
    keys = [k for k, _ in pairs]
    return [v for _, v in pairs], keys, keys


def _flatten_dict(d: dict[Any, Any]) -> tuple[list[Any], list[Any], list[Any]]:
    # An exact dict's keys() and values() are in one order (it cannot override them).
    keys = list(d)
    return list(d.values()), keys, keys


def _unflatten_dict(orig: Any, keys: list[Any], kids: list[Any]) -> Any:
    return dict(zip(keys, kids, strict=True))


def _check_keys(new: Any, orig: Any, keys: list[Any]) -> Any:
    # A subclass whose constructor takes other arguments can build an empty or different
    # mapping without complaint; never hand that back as the converted data.
    if len(new) != len(keys) or any(k not in new for k in keys):
        raise TypeError(f"{type(orig).__name__}(dict) did not rebuild the same keys")
    return new


def _construct_mapping(cls: type) -> Callable[[Any, list[Any], list[Any]], Any]:
    # Items of a dict subclass live in the dict itself, so all its attributes can be copied;
    # another mapping may keep them in one, which its constructor has just filled.
    overwrite = issubclass(cls, dict)
    stateful = _has_state(cls)

    def unflatten(orig: Any, keys: list[Any], kids: list[Any]) -> Any:
        items = dict(zip(keys, kids, strict=True))
        factory = (orig.default_factory,) if isinstance(orig, collections.defaultdict) else ()
        new = type(orig)(*factory, items)
        if stateful:
            carry_state(orig, new, overwrite=overwrite)
        return _check_keys(new, orig, keys)

    return unflatten


def _copies_storage(cls: type) -> bool:
    """Whether ``copy.copy`` of an instance gives one whose items can be set without touching the original.

    True for dict subclasses (the copy is a new dict), ``UserDict`` (its ``__copy__`` copies
    ``.data``) and mappings that define ``__copy__`` themselves. A plain ``MutableMapping``
    keeping its items in an attribute would share that attribute with its shallow copy, so
    assigning to the copy would write into the caller's mapping: those are constructed.
    """
    return issubclass(cls, (dict, collections.UserDict)) or getattr(cls, "__copy__", None) is not None


# Mutable built-in containers a shallow copy shares with its original; writing items into the
# copy may write into one of them too (a subclass's __setitem__ keeping an index, say).
_SHELLS: Final = (dict, list, set, bytearray, collections.deque)


def _shallow_clone(orig: Any, *, carry: bool) -> Any:
    """``copy.copy(orig)``, with its own copy of each mutable built-in container attribute it shared.

    Then nothing done to the clone through its own methods (a ``__setitem__`` that also keeps
    an index, a ``UserDict`` whose ``__copy__`` shares ``.data``) reaches the original's
    containers. ``carry`` first copies all the instance state over, for dict and list
    subclasses, whose ``__copy__`` may drop it (defaultdict's calls the constructor).
    """
    clone = _copy.copy(orig)
    if clone is orig:
        raise TypeError(f"copy.copy gave back the {type(orig).__name__} itself")
    if carry:
        carry_state(orig, clone, overwrite=True)
    state, theirs = getattr(clone, "__dict__", None), getattr(orig, "__dict__", None)
    if state and theirs:
        for name, value in list(state.items()):
            if isinstance(value, _SHELLS) and theirs.get(name) is value:
                state[name] = _copy.copy(value)
    for name in _slot_names(type(orig)):
        value = getattr(clone, name, _MISSING)
        if isinstance(value, _SHELLS) and getattr(orig, name, _MISSING) is value:
            object.__setattr__(clone, name, _copy.copy(value))
    return clone


def _refill_mapping(cls: type) -> Callable[[Any, list[Any], list[Any]], Any]:
    construct = _construct_mapping(cls)
    carry = issubclass(cls, dict) and _has_state(cls)

    def unflatten(orig: Any, keys: list[Any], kids: list[Any]) -> Any:
        try:
            clone = _shallow_clone(orig, carry=carry)
            for key, kid in zip(keys, kids, strict=True):
                clone[key] = kid
            return _check_keys(clone, orig, keys)
        except Exception:  # a read-only mapping, an odd __copy__: the constructor may still do
            return construct(orig, keys, kids)

    return unflatten


def _flatten_chainmap(cm: collections.ChainMap[Any, Any]) -> tuple[list[Any], list[str], None]:
    # Each map is a child of its own, so shadowed keys (a later map's 'x') are converted too;
    # the key prints as an attribute, data.maps[1]['x'], since data[1] would be a lookup of 1.
    maps = list(cm.maps)
    return maps, [f"maps[{i}]" for i in range(len(maps))], None


def _unflatten_chainmap(orig: Any, aux: Any, kids: list[Any]) -> Any:
    # __new__, not the constructor (a subclass's may take other arguments); the state then
    # brings every attribute, and maps is replaced by the converted maps.
    cls: Any = type(orig)
    new = cls.__new__(cls)
    carry_state(orig, new, overwrite=True)
    new.maps = kids
    return new


# --- sequences -----------------------------------------------------------------------------


def _flatten_seq(s: Iterable[Any]) -> tuple[list[Any], range, None]:
    kids = list(s)
    return kids, range(len(kids)), None


def _unflatten_list(orig: Any, aux: Any, kids: list[Any]) -> Any:
    return kids


def _unflatten_tuple(orig: Any, aux: Any, kids: list[Any]) -> Any:
    return tuple(kids)


def _check_len(new: Any, orig: Any, kids: list[Any]) -> Any:
    if len(new) != len(kids):
        raise TypeError(f"{type(orig).__name__} rebuilt with {len(new)} items instead of {len(kids)}")
    return new


def _refill_list(cls: type) -> Callable[[Any, Any, list[Any]], Any]:
    carry = issubclass(cls, list) and _has_state(cls)
    construct = _construct(cls, _build_seq, overwrite=issubclass(cls, list))
    if issubclass(cls, list) and cls.__init__ is list.__init__ and cls.__new__ is list.__new__:
        return construct  # list's own constructor: the same result, without copying the items first

    def unflatten(orig: Any, aux: Any, kids: list[Any]) -> Any:
        try:
            clone = _shallow_clone(orig, carry=carry)
            clone[:] = kids
            return _check_len(clone, orig, kids)
        except Exception:  # a read-only list subclass: the constructor may still do
            return construct(orig, aux, kids)

    return unflatten


def _construct(
    cls: type, build: Callable[[Any, list[Any]], Any], *, overwrite: bool = True
) -> Callable[[Any, Any, list[Any]], Any]:
    stateful = _has_state(cls)

    def unflatten(orig: Any, aux: Any, kids: list[Any]) -> Any:
        new = build(orig, kids)
        if stateful:
            carry_state(orig, new, overwrite=overwrite)
        return _check_len(new, orig, kids)

    return unflatten


def _build_seq(orig: Any, kids: list[Any]) -> Any:
    return type(orig)(kids)


def _build_namedtuple(orig: Any, kids: list[Any]) -> Any:
    return type(orig)(*kids)


def _build_deque(orig: Any, kids: list[Any]) -> Any:
    return type(orig)(kids, maxlen=orig.maxlen)


# --- dataclasses and attrs -----------------------------------------------------------------


def _flatten_fields(names: tuple[str, ...]) -> Callable[[Any], tuple[list[Any], tuple[str, ...], None]]:
    def flatten(obj: Any) -> tuple[list[Any], tuple[str, ...], None]:
        return [getattr(obj, n) for n in names], names, None

    return flatten


def _unflatten_fields(orig: Any, aux: Any, kids: list[Any]) -> Any:
    # A shallow copy keeps non-field state and init=False fields; object.__setattr__ works for
    # frozen dataclasses and slotted attrs classes alike, and __init__/__post_init__ do not rerun.
    new = _copy.copy(orig)
    for name, value in zip(_field_names(type(orig)), kids, strict=True):
        object.__setattr__(new, name, value)
    return new


def _field_names(cls: type) -> tuple[str, ...]:
    if dataclasses.is_dataclass(cls):
        return tuple(f.name for f in dataclasses.fields(cls))
    return tuple(a.name for a in cls.__attrs_attrs__)  # type: ignore[attr-defined]  # attrs class


def _flatten_namespace(ns: types.SimpleNamespace) -> tuple[list[Any], list[str], list[str]]:
    names = list(vars(ns))
    return [getattr(ns, n) for n in names], names, names


def _unflatten_namespace(orig: Any, names: list[str], kids: list[Any]) -> Any:
    new = _copy.copy(orig)  # every attribute is a child, and is replaced below
    for name, value in zip(names, kids, strict=True):
        setattr(new, name, value)
    return new


# --- the rules -----------------------------------------------------------------------------

dict_spec: Final = ContainerSpec(dict, _flatten_dict, _unflatten_dict, "item")
list_spec: Final = ContainerSpec(list, _flatten_seq, _unflatten_list, "index")
tuple_spec: Final = ContainerSpec(tuple, _flatten_seq, _unflatten_tuple, "index")
# Exact standard types whose constructor rebuilds them faithfully (OrderedDict's attributes,
# a state dict's _metadata, are carried): no copy to refill.
_CONSTRUCTED: Final = (collections.OrderedDict, collections.defaultdict)


def builtin_rule(cls: type) -> ContainerSpec | None:
    """The rule for a standard-library container, dataclass or attrs class, or ``None``."""
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        names = tuple(cls._fields)
        return ContainerSpec(cls, _flatten_fields(names), _construct(cls, _build_namedtuple), "attr")
    if issubclass(cls, collections.ChainMap):
        return ContainerSpec(cls, _flatten_chainmap, _unflatten_chainmap, "attr")
    if issubclass(cls, Mapping):
        mutable = issubclass(cls, MutableMapping) and cls not in _CONSTRUCTED and _copies_storage(cls)
        unflatten = _refill_mapping(cls) if mutable else _construct_mapping(cls)
        return ContainerSpec(cls, _flatten_mapping, unflatten, "item")
    if issubclass(cls, collections.deque):
        return ContainerSpec(cls, _flatten_seq, _construct(cls, _build_deque), "index")
    if issubclass(cls, (list, collections.UserList)):
        return ContainerSpec(cls, _flatten_seq, _refill_list(cls), "index")
    if issubclass(cls, tuple):
        return ContainerSpec(cls, _flatten_seq, _construct(cls, _build_seq), "index")
    if issubclass(cls, types.SimpleNamespace):
        return ContainerSpec(cls, _flatten_namespace, _unflatten_namespace, "attr")
    if dataclasses.is_dataclass(cls) or hasattr(cls, "__attrs_attrs__"):
        return ContainerSpec(cls, _flatten_fields(_field_names(cls)), _unflatten_fields, "attr")
    return None
