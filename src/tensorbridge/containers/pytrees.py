"""Types registered with ``torch.utils._pytree`` or ``optree``: walked through their registrations.

Both registries are read when a type is first met, through ``sys.modules``: neither module is
ever imported here (torch's is always loaded with torch; optree only if the caller loaded it).
Their sizes make up :func:`registries_token`, so a registration made after a first conversion
of a type is seen by the next conversion (the walker drops its per-type cache when it changes).

optree keeps registrations in namespaces, so that two libraries can register one type
differently; which namespaces to consult is the caller's to say, with
:func:`register_optree_namespace`. A type registered only in namespaces nobody named is
refused, naming the namespace, rather than passed through with its arrays unconverted.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Final

from ..errors import StructureError, UnsupportedError
from .spec import ContainerSpec, refusing

__all__ = [
    "optree_namespaces",
    "optree_rule",
    "optree_unconsulted_rule",
    "register_optree_namespace",
    "registries_token",
    "torch_pytree_rule",
]

# The standard containers torch registers itself; tensorbridge's own rules keep more of them
# (subclass state, a defaultdict's factory), so torch's entries for them are not used.
_STDLIB: Final = frozenset({tuple, list, dict, collections.OrderedDict, collections.defaultdict, collections.deque})
_TORCH_ORIGIN: Final = "its torch.utils._pytree registration"

_namespaces: list[str] = []


def register_optree_namespace(namespace: str) -> None:
    """Walk the types registered with optree in ``namespace`` too.

    optree registrations live in namespaces (``optree.register_pytree_node(cls, flatten,
    unflatten, namespace="mylib")``), and one type may be registered differently in two of
    them, so tensorbridge consults only the namespaces named here, in the order they were
    named, then optree's global one. The choice is process-wide, like
    :func:`register_container`: a namespace says how a library's types are built, which is
    the same for every conversion, and the walker beneath every verb then sees it. A type
    registered only in namespaces not named raises a :class:`StructureError` naming them.

    optree is never imported by this call or by tensorbridge: its registrations are read only
    when the caller has imported it.

    Args:
        namespace: the ``namespace=`` the types were registered with (a non-empty string).
            Naming one twice is harmless.

    Raises:
        UnsupportedError: (TypeError) ``namespace`` is not a non-empty string.

    Example:
        >>> import tensorbridge as tb
        >>> # where mylib does optree.register_pytree_node(cls, ..., namespace="mylib"):
        >>> tb.register_optree_namespace("mylib")
        >>> from tensorbridge.containers import optree_namespaces
        >>> "mylib" in optree_namespaces()
        True
    """
    if not isinstance(namespace, str) or not namespace:
        raise UnsupportedError(
            "register_optree_namespace",
            "namespace",
            f"{namespace!r} is not a namespace",
            "Pass the non-empty string the types were registered with",
        )
    if namespace not in _namespaces:
        _namespaces.append(namespace)  # the walker sees it through registries_token()


def optree_namespaces() -> tuple[str, ...]:
    """The optree namespaces consulted, in order (optree's global one comes last, implicitly)."""
    return tuple(_namespaces)


def _optree_registry() -> dict[Any, Any] | None:
    # optree's table of every registration, keyed by type (global) or (namespace, type). It is
    # private; without it late registrations are found through the public per-namespace lookup.
    registry = getattr(sys.modules.get("optree.registry"), "_NODETYPE_REGISTRY", None)
    return registry if isinstance(registry, dict) else None


# The two registries' tables once found: they are module-level dicts, mutated in place.
_tables: list[dict[Any, Any] | None] = [None, None]


def registries_token() -> tuple[int, int, int]:
    """A value that changes whenever a type is registered with torch's pytree or optree, or a namespace named.

    It runs once per walk, so it only measures dicts once they are found.
    """
    nodes, registry = _tables
    if nodes is None:
        found = getattr(sys.modules.get("torch.utils._pytree"), "SUPPORTED_NODES", None)
        nodes = _tables[0] = found if isinstance(found, dict) else None
    n_torch = -1 if nodes is None else len(nodes)
    if registry is None and "optree" in sys.modules:
        registry = _tables[1] = _optree_registry()
        if registry is None:
            return n_torch, _optree_public_size(), len(_namespaces)
    return n_torch, (-1 if registry is None else len(registry)), len(_namespaces)


def _optree_public_size() -> int:
    get = getattr(getattr(sys.modules["optree"], "register_pytree_node", None), "get", None)
    return -1 if get is None else sum(len(get(namespace=ns)) for ns in ("", *_namespaces))


def torch_pytree_rule(cls: type) -> ContainerSpec | None:
    """The rule for a type registered with ``torch.utils._pytree``, or ``None``."""
    nodes = getattr(sys.modules.get("torch.utils._pytree"), "SUPPORTED_NODES", None)
    node = nodes.get(cls) if isinstance(nodes, dict) and cls not in _STDLIB else None
    if node is None:
        return None
    flatten_fn, unflatten_fn = node.flatten_fn, node.unflatten_fn
    with_keys = getattr(node, "flatten_with_keys_fn", None)

    def flatten(obj: Any) -> tuple[Sequence[Any], Sequence[Hashable], Any]:
        if with_keys is not None:
            pairs, context = with_keys(obj)
            pairs = list(pairs)
            return [kid for _, kid in pairs], [key for key, _ in pairs], context
        kids, context = flatten_fn(obj)
        kids = list(kids)
        return kids, range(len(kids)), context

    def unflatten(orig: Any, context: Any, kids: list[Any]) -> Any:
        return _checked(unflatten_fn(kids, context), flatten, kids)

    return ContainerSpec(cls, flatten, unflatten, "index" if with_keys is None else "entry", _TORCH_ORIGIN)


def _checked(
    rebuilt: Any, flatten: Callable[[Any], tuple[Sequence[Any], Sequence[Hashable], Any]], kids: list[Any]
) -> Any:
    """``rebuilt``, once taking it apart again shows it holds the converted leaves as they were given.

    A registration's unflatten may turn what it is given back into what it expects (a
    tensorclass makes tensors of arrays), which would hand ``to_numpy``'s caller tensors.
    """
    ndarray, tensor = sys.modules["numpy"].ndarray, sys.modules["torch"].Tensor
    again = flatten(rebuilt)[0]
    if len(again) == len(kids):
        for i, (kid, back) in enumerate(zip(kids, again, strict=True)):
            if isinstance(kid, ndarray) != isinstance(back, ndarray) or isinstance(kid, tensor) != isinstance(
                back, tensor
            ):
                raise TypeError(
                    f"its unflatten turned the {type(kid).__name__} given as child {i} into a {type(back).__name__}"
                )
    return rebuilt


def optree_rule(cls: type) -> ContainerSpec | None:
    """The rule for a type registered with optree in a consulted namespace, or ``None``."""
    optree = sys.modules.get("optree")
    get = getattr(getattr(optree, "register_pytree_node", None), "get", None)
    custom = getattr(getattr(optree, "PyTreeKind", None), "CUSTOM", None)
    if get is None or custom is None:
        return None
    for namespace in (*_namespaces, ""):
        entry = get(cls, namespace=namespace)
        # optree's built-in kinds (None, tuple, dict, namedtuple...) are tensorbridge's own.
        if entry is not None and entry.kind == custom:
            return _optree_spec(cls, entry, namespace, getattr(optree, "GetAttrEntry", None))
    return None


def _optree_spec(cls: type, entry: Any, namespace: str, attr_entry: type | None) -> ContainerSpec:
    flatten_func, unflatten_func = entry.flatten_func, entry.unflatten_func
    by_attr = attr_entry is not None and issubclass(entry.path_entry_type, attr_entry)
    origin = f"its optree registration in namespace {namespace!r}" if namespace else "its optree registration"

    def flatten(obj: Any) -> tuple[Sequence[Any], Sequence[Hashable], Any]:
        out = flatten_func(obj)
        kids = list(out[0])
        entries = out[2] if len(out) > 2 else None
        return kids, range(len(kids)) if entries is None else list(entries), out[1]

    def unflatten(orig: Any, metadata: Any, kids: list[Any]) -> Any:
        return _checked(unflatten_func(metadata, kids), flatten, kids)

    return ContainerSpec(cls, flatten, unflatten, "attr" if by_attr else "item", origin)


def optree_unconsulted_rule(cls: type) -> ContainerSpec | None:
    """A refusal for a type registered with optree only in namespaces not consulted, or ``None``.

    Only the namespaces optree's registry table shows can be found; were that table gone in
    some optree version, such a type would pass through as a leaf, as it did before.
    """
    registry = _optree_registry()
    if registry is None:
        return None
    found = sorted(
        {k[0] for k in list(registry) if isinstance(k, tuple) and len(k) == 2 and k[1] is cls} - set(_namespaces)
    )
    if not found:
        return None
    names = ("namespace " if len(found) == 1 else "namespaces ") + ", ".join(repr(ns) for ns in found)
    return refusing(
        cls,
        StructureError,
        f"{cls.__name__} is registered with optree in {names}, which tensorbridge was not told to "
        "consult, so its arrays would not be reached",
        f"Call tensorbridge.register_optree_namespace({found[0]!r}) before converting, "
        "or register the type with tensorbridge.register_container",
    )
