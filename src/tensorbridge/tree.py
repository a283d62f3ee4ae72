"""Containers: a registry of how to take each container type apart and put it back together.

``map_leaves`` walks any nesting of registered containers without recursion (so depth is
bounded by memory, not by Python's recursion limit), calls a function on each leaf with a
lazily formatted key path, and rebuilds every container with its own type. The caller's
containers are never mutated.

Built in: every ``Mapping`` (dict, OrderedDict, defaultdict keeps its factory), list, tuple,
namedtuple, deque (keeps ``maxlen``), dataclass instances (frozen ones too) and attrs
classes (detected by their ``__attrs_attrs__``, so attrs is never imported). Register more
with :func:`register_container`.
"""

from __future__ import annotations

import collections
import copy as _copy
import dataclasses
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from .errors import StructureError, UnsupportedError

__all__ = ["ContainerSpec", "Path", "format_path", "map_leaves", "register_container"]

KeyStyle = Literal["item", "index", "attr"]
# A key path, built only as cheap nested tuples while walking and formatted on demand:
# () for the root, or (parent_path, style, key).
Path = tuple[Any, ...]
ROOT: Final[Path] = ()


@dataclass(frozen=True)
class ContainerSpec:
    """How one container type is flattened and rebuilt.

    Attributes:
        type: the container type (exact type; subclasses need their own entry or a rule).
        flatten: ``obj -> (children, keys, aux)``; ``keys`` name the children in key paths.
        unflatten: ``(obj, aux, children) -> new container`` of the same type.
        key_style: how keys print: ``"item"`` (``['k']``), ``"index"`` (``[0]``), ``"attr"`` (``.k``).
    """

    type: type
    flatten: Callable[[Any], tuple[Sequence[Any], Sequence[Hashable], Any]]
    unflatten: Callable[[Any, Any, list[Any]], Any]
    key_style: KeyStyle


_REGISTRY: dict[type, ContainerSpec] = {}
# Per-type answer of _spec_for: a spec, or None for "leaf or pass-through".
_CACHE: dict[type, ContainerSpec | None] = {}


def register_container(
    cls: type,
    flatten: Callable[[Any], tuple[Sequence[Any], Sequence[Hashable], Any]],
    unflatten: Callable[[Any, Any, list[Any]], Any],
    *,
    key_style: KeyStyle = "item",
) -> None:
    """Teach tensorbridge to walk into instances of ``cls``.

    Args:
        cls: the container type. Registration is for this exact type.
        flatten: returns ``(children, keys, aux)`` for an instance; ``aux`` is handed back to
            ``unflatten`` untouched.
        unflatten: ``(original, aux, converted_children) -> new instance``. It must not mutate
            ``original``.
        key_style: how the keys print in error messages and ``explain``.

    Raises:
        TypeError: if ``cls`` is not a class or a callable is missing.

    Example:
        >>> import numpy as np, tensorbridge as tb
        >>> class Pair:
        ...     def __init__(self, a, b):
        ...         self.a, self.b = a, b
        >>> tb.register_container(
        ...     Pair, lambda p: ((p.a, p.b), ("a", "b"), None),
        ...     lambda p, aux, kids: Pair(*kids), key_style="attr")
        >>> out = tb.to_tensor(Pair(np.zeros(2), np.ones(1)))
        >>> type(out).__name__, out.b.tolist()
        ('Pair', [1.0])
    """
    if not isinstance(cls, type):
        raise UnsupportedError("register_container", "cls", f"{cls!r} is not a class", "Pass the container type")
    if not callable(flatten) or not callable(unflatten):
        raise UnsupportedError(
            "register_container", "flatten", "flatten and unflatten must be callables", "Pass two functions"
        )
    if key_style not in ("item", "index", "attr"):
        raise UnsupportedError(
            "register_container", "key_style", f"{key_style!r} is not a key style", "Pass 'item', 'index' or 'attr'"
        )
    _REGISTRY[cls] = ContainerSpec(cls, flatten, unflatten, key_style)
    _CACHE.clear()


# --- built-in rules -------------------------------------------------------------------------


def _flatten_mapping(m: Mapping[Any, Any]) -> tuple[list[Any], list[Any], list[Any]]:
    # One pass over items() pairs each value with its key, whatever order a Mapping's
    # keys() and values() would give separately; the keys travel as aux to the rebuild.
    pairs = list(m.items())
    keys = [k for k, _ in pairs]
    return [v for _, v in pairs], keys, keys


def _unflatten_dict(orig: Any, keys: list[Any], kids: list[Any]) -> Any:
    return dict(zip(keys, kids, strict=True))


def _unflatten_mapping(orig: Any, keys: list[Any], kids: list[Any]) -> Any:
    items = dict(zip(keys, kids, strict=True))
    factory = (orig.default_factory,) if isinstance(orig, collections.defaultdict) else ()
    new = type(orig)(*factory, items)
    if isinstance(orig, dict) and getattr(orig, "__dict__", None):
        # Attributes of a dict subclass travel too: a state_dict's _metadata (its version
        # record for load_state_dict) is one. UserDict keeps its items in __dict__, so only
        # real dict subclasses take this path.
        new.__dict__.update(orig.__dict__)
    # A subclass whose constructor takes other arguments can build an empty or different
    # mapping without complaint; never hand that back as the converted data.
    if len(new) != len(items) or any(k not in new for k in items):
        raise TypeError(f"{type(orig).__name__}(dict) did not rebuild the same keys")
    return new


def _flatten_seq(s: Iterable[Any]) -> tuple[list[Any], range, None]:
    kids = list(s)
    return kids, range(len(kids)), None


def _unflatten_list(orig: Any, aux: Any, kids: list[Any]) -> Any:
    return kids


def _unflatten_tuple(orig: Any, aux: Any, kids: list[Any]) -> Any:
    return tuple(kids)


def _unflatten_seq_subclass(orig: Any, aux: Any, kids: list[Any]) -> Any:
    return type(orig)(kids)


def _unflatten_namedtuple(orig: Any, aux: Any, kids: list[Any]) -> Any:
    return type(orig)(*kids)


def _unflatten_deque(orig: Any, aux: Any, kids: list[Any]) -> Any:
    return type(orig)(kids, maxlen=orig.maxlen)


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


# Packages whose Mapping or sequence subclasses are arrays, not containers: SciPy's dok_array
# subclasses dict, but it is a sparse matrix (see tensorbridge.interop.sparse).
_ARRAY_PACKAGES: Final = ("scipy.sparse",)


def _rule_for(cls: type) -> ContainerSpec | None:
    if cls in _REGISTRY:
        return _REGISTRY[cls]
    if cls.__module__.startswith(_ARRAY_PACKAGES):
        return None
    if cls is dict:
        return ContainerSpec(cls, _flatten_mapping, _unflatten_dict, "item")
    if cls is list:
        return ContainerSpec(cls, _flatten_seq, _unflatten_list, "index")
    if cls is tuple:
        return ContainerSpec(cls, _flatten_seq, _unflatten_tuple, "index")
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return ContainerSpec(cls, _flatten_fields(tuple(cls._fields)), _unflatten_namedtuple, "attr")
    if issubclass(cls, Mapping):
        return ContainerSpec(cls, _flatten_mapping, _unflatten_mapping, "item")
    if issubclass(cls, collections.deque):
        return ContainerSpec(cls, _flatten_seq, _unflatten_deque, "index")
    if issubclass(cls, (list, tuple)):
        return ContainerSpec(cls, _flatten_seq, _unflatten_seq_subclass, "index")
    if dataclasses.is_dataclass(cls) or hasattr(cls, "__attrs_attrs__"):
        return ContainerSpec(cls, _flatten_fields(_field_names(cls)), _unflatten_fields, "attr")
    return None


def spec_for(cls: type) -> ContainerSpec | None:
    """Return how to walk ``cls``, or ``None`` when its instances are leaves."""
    try:
        return _CACHE[cls]
    except KeyError:
        spec = _CACHE[cls] = _rule_for(cls)
        return spec


# --- walking --------------------------------------------------------------------------------


def _safe_repr(key: object) -> str:
    try:
        return repr(key)
    except Exception:  # a key whose repr fails must not hide the error being reported
        return f"<{type(key).__name__} object>"


def format_path(path: Path, root: str = "data") -> str:
    """Format a key path, e.g. ``data['images'][3].mask``."""
    parts = []
    while path:
        path, style, key = path
        parts.append(f".{key}" if style == "attr" else f"[{_safe_repr(key)}]")
    return root + "".join(reversed(parts))


def map_leaves(fn: Callable[[Any, Path], Any], data: Any) -> Any:
    """Apply ``fn(value, path)`` to every non-container value and rebuild the containers around the results.

    ``fn`` sees every value that is not a registered container (arrays, but also None, str,
    numbers...) and returns what takes its place; it passes through what it does not convert.

    Raises:
        StructureError: (a ValueError) when a container contains itself.
    """
    spec = spec_for(type(data))
    if spec is None:
        return fn(data, ROOT)
    # An explicit stack instead of recursion: each frame is
    # [spec, original, children, keys, next index, converted children, path, id].
    kids, keys, aux = _flatten(spec, data, ROOT)
    frame: list[Any] = [spec, data, kids, keys, 0, [], ROOT, aux]
    stack: list[list[Any]] = []
    active = {id(data)}
    while True:
        spec, orig, kids, keys, i, out, path, aux = frame
        if i < len(kids):
            frame[4] = i + 1
            child = kids[i]
            child_spec = spec_for(type(child))
            if child_spec is None:
                out.append(fn(child, (path, spec.key_style, keys[i])))
                continue
            child_path = (path, spec.key_style, keys[i])
            if id(child) in active:
                raise StructureError(
                    "container walk",
                    format_path(child_path),
                    f"the {type(child).__name__} contains itself (a reference cycle)",
                    "Break the cycle before converting",
                )
            active.add(id(child))
            stack.append(frame)
            ckids, ckeys, caux = _flatten(child_spec, child, child_path)
            frame = [child_spec, child, ckids, ckeys, 0, [], child_path, caux]
            continue
        try:
            rebuilt = spec.unflatten(orig, aux, out)
        except Exception as err:
            raise StructureError(
                "container rebuild",
                format_path(path),
                f"{type(orig).__name__} could not be rebuilt from its converted items ({err})",
                "Register the type with tensorbridge.register_container",
            ) from err
        active.discard(id(orig))
        if not stack:
            return rebuilt
        frame = stack.pop()
        frame[5].append(rebuilt)


def _flatten(spec: ContainerSpec, obj: Any, path: Path) -> tuple[Sequence[Any], Sequence[Hashable], Any]:
    try:
        return spec.flatten(obj)
    except Exception as err:
        raise StructureError(
            "container walk",
            format_path(path),
            f"{type(obj).__name__} could not be taken apart ({type(err).__name__}: {err})",
            "Fix the container, or register its type with tensorbridge.register_container",
        ) from err


def iter_leaves(data: Any, is_leaf: Callable[[Any], bool]) -> list[tuple[Path, Any]]:
    """Return ``(path, leaf)`` for every value that ``is_leaf`` accepts, in walk order."""
    found: list[tuple[Path, Any]] = []

    def collect(value: Any, path: Path) -> Any:
        if is_leaf(value):
            found.append((path, value))
        return value

    map_leaves(collect, data)
    return found
