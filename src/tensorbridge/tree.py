"""Containers: the one walker, and the registry of how each container type is taken apart and rebuilt.

``map_leaves`` walks any nesting of registered containers without recursion (so depth is
bounded by memory, not by Python's recursion limit), calls a function on each leaf with a
lazily formatted key path, and rebuilds every container with its own type and instance state.
The caller's containers are never mutated.

Built in (see :mod:`tensorbridge.containers` for the table and its order): every ``Mapping``
(dict, OrderedDict, defaultdict keeps its factory, ``UserDict`` subclasses keep their state),
``ChainMap`` (map by map), list, tuple, namedtuple, deque (keeps ``maxlen``), ``UserList``,
subclasses of all of these with their attributes, ``SimpleNamespace``, dataclass instances
(frozen ones too), attrs classes (detected by their ``__attrs_attrs__``, so attrs is never
imported), ``tensordict.TensorDict``, and types registered with ``torch.utils._pytree`` or
with optree (see :func:`register_optree_namespace`). ``torch.nn.Module`` is refused with the
fix. Register more with :func:`register_container`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, Final

import numpy as np
import torch

from .containers import (
    ContainerSpec,
    KeyStyle,
    Refusal,
    register_optree_namespace,
    registries_token,
    rule_for,
)
from .errors import ConversionError, StructureError, UnsupportedError

__all__ = [
    "LEAF_TYPES",
    "ContainerSpec",
    "KeyStyle",
    "Path",
    "fold",
    "format_path",
    "iter_leaves",
    "map_leaves",
    "refresh",
    "register_container",
    "register_optree_namespace",
    "spec_for",
]

# A key path, built only as cheap nested tuples while walking and formatted on demand:
# () for the root, or (parent_path, style, key).
Path = tuple[Any, ...]
ROOT: Final[Path] = ()

_REGISTRY: dict[type, ContainerSpec] = {}
# Per-type answer of spec_for: a spec, or None for "leaf or pass-through". The pytree
# registries can grow after a type was first answered "leaf"; _TOKEN is their size (and the
# number of optree namespaces named) when the cache was filled, checked once per walk, not
# per leaf, and the cache is dropped when it moved.
_CACHE: dict[type, ContainerSpec | None] = {}
_MISSING: Final = object()
# Arrays and tensors are leaves, whatever is registered: the walk starts without a lookup.
LEAF_TYPES: Final = frozenset({np.ndarray, torch.Tensor, torch.nn.Parameter})
_TOKEN: list[tuple[int, int, int]] = [registries_token()]


def register_container(
    cls: type,
    flatten: Callable[[Any], tuple[Sequence[Any], Sequence[Hashable], Any]],
    unflatten: Callable[[Any, Any, list[Any]], Any],
    *,
    key_style: KeyStyle = "item",
) -> None:
    """Teach tensorbridge to walk into instances of ``cls``.

    A registration comes before every built-in rule (and before torch pytree and optree
    registrations of the same type).

    Args:
        cls: the container type. Registration is for this exact type.
        flatten: returns ``(children, keys, aux)`` for an instance; ``aux`` is handed back to
            ``unflatten`` untouched.
        unflatten: ``(original, aux, converted_children) -> new instance``. It must not mutate
            ``original``.
        key_style: how each child's key prints in error messages and ``explain``, after its
            container's path:

            * ``"item"`` (default): ``[repr(key)]``, as a mapping lookup: ``data['images']``;
            * ``"index"``: ``[key]`` for positions: ``data[3]`` (ints print the same either way);
            * ``"attr"``: ``.key``, as an attribute: ``data.mask``.

    Raises:
        UnsupportedError: (a TypeError) if ``cls`` is not a class, a callable is missing, or
            ``key_style`` is not one of the three.

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
        >>> try:
        ...     tb.to_tensor([Pair(np.zeros(1), np.array(["text"]))])
        ... except tb.UnsupportedError as err:
        ...     print(err.path)
        data[0].b
    """
    if not isinstance(cls, type):
        raise UnsupportedError("register_container", "cls", f"{cls!r} is not a class", "Pass the container type")
    if not callable(flatten) or not callable(unflatten):
        raise UnsupportedError(
            "register_container", "flatten", "flatten and unflatten must be callables", "Pass two functions"
        )
    if issubclass(cls, (np.ndarray, np.generic, torch.Tensor)):
        raise UnsupportedError(
            "register_container",
            "cls",
            f"{cls.__qualname__} is an array type: its instances are leaves",
            "Register a container type",
        )
    if key_style not in ("item", "index", "attr"):
        raise UnsupportedError(
            "register_container", "key_style", f"{key_style!r} is not a key style", "Pass 'item', 'index' or 'attr'"
        )
    _REGISTRY[cls] = ContainerSpec(cls, flatten, unflatten, key_style)
    _CACHE.clear()


def refresh() -> None:
    """Forget the cached answers of :func:`spec_for` if a pytree or optree registration came since.

    Every walk calls it first; so must a caller that uses ``spec_for`` outside a walk.
    """
    token = registries_token()
    if token != _TOKEN[0]:
        _CACHE.clear()
        _TOKEN[0] = token


def spec_for(cls: type) -> ContainerSpec | None:
    """Return how to walk ``cls``, or ``None`` when its instances are leaves."""
    try:
        return _CACHE[cls]
    except KeyError:
        spec = _CACHE[cls] = _REGISTRY.get(cls) or rule_for(cls)
        return spec


# --- walking --------------------------------------------------------------------------------


def _safe_repr(key: object) -> str:
    try:
        return repr(key)
    except Exception:  # a key whose repr fails must not hide the error being reported
        return f"<{type(key).__name__} object>"


def _safe_str(key: object) -> str:
    try:
        return str(key)
    except Exception:  # as in _safe_repr
        return f"<{type(key).__name__} object>"


def format_path(path: Path, root: str = "data") -> str:
    """Format a key path, e.g. ``data['images'][3].mask``."""
    parts = []
    while path:
        path, style, key = path
        if style == "attr":
            parts.append(f".{key}")
        elif style == "entry":  # a torch pytree key entry prints itself: ['k'], [0] or .name
            parts.append(_safe_str(key))
        else:
            parts.append(f"[{_safe_repr(key)}]")
    return root + "".join(reversed(parts))


#: ``runs(children, keys, start, stop, path, style)``: the results of ``children[start:stop]``, all leaves.
Runs = Callable[[Sequence[Any], Sequence[Hashable], int, int, Path, str], list[Any]]


def map_leaves(fn: Callable[[Any, Path], Any], data: Any, runs: Runs | None = None) -> Any:
    """Apply ``fn(value, path)`` to every non-container value and rebuild the containers around the results.

    ``fn`` sees every value that is not a registered container (arrays, but also None, str,
    numbers...) and returns what takes its place; it passes through what it does not convert.
    ``runs``, if given, takes each run of consecutive leaf children of one container at once
    (their paths are ``(path, style, keys[i])``), saving a call per leaf; it must return what
    ``fn`` would, in order.

    Raises:
        StructureError: (a ValueError) when a container contains itself, cannot be taken
            apart or rebuilt, or is registered in a way that cannot be walked.
        UnsupportedError: (a TypeError) for objects that hold tensors but are not data
            (a ``torch.nn.Module``).

    Example:
        >>> map_leaves(lambda x, path: x * 2, {"a": [1, (2, 3)]})
        {'a': [2, (4, 6)]}
    """
    if type(data) in LEAF_TYPES:  # never containers (register_container refuses them)
        return fn(data, ROOT)
    return _walk(data, fn, None, None, runs)


#: ``node(original, spec, keys, aux, results, path)``: what a container becomes, after its children.
Node = Callable[[Any, ContainerSpec, Sequence[Hashable], Any, list[Any], Path], Any]
#: ``enter(obj, spec, path, depth)``: called before a container is taken apart; False leaves it unwalked.
Enter = Callable[[Any, ContainerSpec, Path, int], bool]


def fold(
    data: Any,
    leaf: Callable[[Any, Path, int], Any],
    node: Node,
    *,
    enter: Enter | None = None,
) -> Any:
    """The general walk, of which :func:`map_leaves` is the rebuilding case.

    Every container is seen by ``enter`` (depth 0 for ``data`` itself), before it is taken
    apart: it may raise to stop the walk (a budget, a refusal) or return False to have the
    container handed to ``leaf`` as a value. Each value that is not a walked container goes to
    ``leaf(value, path, depth)``. After its children, each container (empty ones included)
    becomes ``node(original, spec, keys, aux, results, path)``. Order, cycle detection and error
    wrapping are those of :func:`map_leaves`.

    Example:
        >>> count = fold([1, [2, {}]], lambda v, p, d: 1, lambda o, s, k, a, r, p: sum(r))
        >>> count
        2
    """
    return _walk(data, leaf, node, enter, None)


def _walk(data: Any, fn: Callable[..., Any], node: Node | None, enter: Enter | None, runs: Runs | None) -> Any:
    """The one loop: ``node`` None rebuilds with each spec's ``unflatten`` and calls ``fn(value, path)``."""
    refresh()
    general = node is not None
    spec = spec_for(type(data))
    if spec is None or (enter is not None and not enter(data, spec, ROOT, 0)):
        return fn(data, ROOT, 0) if general else fn(data, ROOT)
    cached = _CACHE.get
    # An explicit stack instead of recursion: each frame is
    # [spec, original, children, keys, next index, converted children, path, aux].
    kids, keys, aux = _flatten(spec, data, ROOT)
    frame: list[Any] = [spec, data, kids, keys, 0, [], ROOT, aux]
    stack: list[list[Any]] = []
    active = {id(data)}
    while True:
        spec, orig, kids, keys, i, out, path, aux = frame
        style = spec.key_style
        n = len(kids)
        depth = len(stack) + 1  # of the children
        # Leaf children in a tight loop: most children of most containers are leaves.
        if runs is not None:
            j = i
            while j < n:
                child = kids[j]
                child_spec = cached(type(child), _MISSING)
                if child_spec is _MISSING:
                    child_spec = spec_for(type(child))
                if child_spec is not None:
                    break
                j += 1
            if j > i:
                out.extend(runs(kids, keys, i, j, path, style))
                i = j
        while i < n:
            child = kids[i]
            child_spec = cached(type(child), _MISSING)
            if child_spec is _MISSING:
                child_spec = spec_for(type(child))
            if child_spec is not None and (enter is None or enter(child, child_spec, (path, style, keys[i]), depth)):  # type: ignore[arg-type]
                break
            out.append(fn(child, (path, style, keys[i]), depth) if general else fn(child, (path, style, keys[i])))
            i += 1
        if i < n:
            frame[4] = i + 1
            child_path = (path, style, keys[i])
            if id(child) in active:
                raise StructureError(
                    "container walk",
                    format_path(child_path),
                    f"the {type(child).__name__} contains itself (a reference cycle)",
                    "Break the cycle before converting",
                )
            active.add(id(child))
            stack.append(frame)
            ckids, ckeys, caux = _flatten(child_spec, child, child_path)  # type: ignore[arg-type]
            frame = [child_spec, child, ckids, ckeys, 0, [], child_path, caux]
            continue
        try:
            rebuilt = node(orig, spec, keys, aux, out, path) if general else spec.unflatten(orig, aux, out)  # type: ignore[misc]
        except Refusal as refused:
            raise refused.error("container rebuild", format_path(path), refused.cause, refused.fix) from None
        except Exception as err:
            if general and isinstance(err, ConversionError):
                raise  # a fold's own refusal (a budget, a type a file cannot hold)
            by = f" by {spec.origin}" if spec.origin else ""
            raise StructureError(
                "container rebuild",
                format_path(path),
                f"{type(orig).__name__} could not be rebuilt{by} from its converted items ({err})",
                _fix(spec),
            ) from err
        active.discard(id(orig))
        if not stack:
            return rebuilt
        frame = stack.pop()
        frame[5].append(rebuilt)


def _flatten(spec: ContainerSpec, obj: Any, path: Path) -> tuple[Sequence[Any], Sequence[Hashable], Any]:
    try:
        return spec.flatten(obj)
    except Refusal as refused:
        raise refused.error("container walk", format_path(path), refused.cause, refused.fix) from None
    except Exception as err:
        by = f" by {spec.origin}" if spec.origin else ""
        raise StructureError(
            "container walk",
            format_path(path),
            f"{type(obj).__name__} could not be taken apart{by} ({type(err).__name__}: {err})",
            _fix(spec)
            if spec.origin
            else "Fix the container, or register its type with tensorbridge.register_container",
        ) from err


def _fix(spec: ContainerSpec) -> str:
    if spec.origin:
        return f"Fix {spec.origin}, or register the type with tensorbridge.register_container"
    return "Register the type with tensorbridge.register_container"


def iter_leaves(data: Any, is_leaf: Callable[[Any], bool]) -> list[tuple[Path, Any]]:
    """Return ``(path, leaf)`` for every value that ``is_leaf`` accepts, in walk order."""
    found: list[tuple[Path, Any]] = []

    def collect(value: Any, path: Path) -> Any:
        if is_leaf(value):
            found.append((path, value))
        return value

    map_leaves(collect, data)
    return found
