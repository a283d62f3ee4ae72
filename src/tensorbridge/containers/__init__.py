"""The container table: for each type, how to take it apart and put it back, or why not.

:func:`rule_for` answers once per type (the walker in :mod:`tensorbridge.tree` caches it),
trying, in order:

1. exact ``dict``, ``list``, ``tuple`` (SciPy's sparse ``dok`` matrices, dict subclasses, are
   arrays, not containers);
2. torch objects: ``tensordict.TensorDict`` (walked), ``@tensorclass`` instances (walked
   to tensors, refused to arrays), other TensorDict kinds and every ``torch.nn.Module``
   (refused, with the fix);
3. registrations made for the type: ``torch.utils._pytree``, then optree in the namespaces
   named with :func:`register_optree_namespace` and its global one. A registration says how
   its type is built, so it wins over the structural rules below;
4. the structural rules: namedtuples, ``ChainMap``, every ``Mapping``, deques, list/tuple
   subclasses, ``UserList``, ``SimpleNamespace``, dataclasses, attrs classes (see :mod:`.builtin`);
5. a refusal for a type registered with optree only in namespaces nobody named.

Anything else is a leaf. ``tensorbridge.register_container`` entries come before all of these.
"""

from __future__ import annotations

from typing import Final

from .builtin import builtin_rule, dict_spec, list_spec, tuple_spec
from .pytrees import (
    optree_namespaces,
    optree_rule,
    optree_unconsulted_rule,
    register_optree_namespace,
    registries_token,
    torch_pytree_rule,
)
from .spec import ContainerSpec, KeyStyle, PathStyle, Refusal
from .torch_objects import module_rule, tensorclass_rule, tensordict_rule

__all__ = [
    "ContainerSpec",
    "KeyStyle",
    "PathStyle",
    "Refusal",
    "optree_namespaces",
    "register_optree_namespace",
    "registries_token",
    "rule_for",
]

# Packages whose Mapping or sequence subclasses are arrays, not containers: SciPy's dok_array
# subclasses dict, but it is a sparse matrix (see tensorbridge.adapters.sparse).
_ARRAY_PACKAGES: Final = ("scipy.sparse",)


def rule_for(cls: type) -> ContainerSpec | None:
    """How to walk instances of ``cls``, or ``None`` when they are leaves."""
    if cls is dict:
        return dict_spec
    if cls is list:
        return list_spec
    if cls is tuple:
        return tuple_spec
    if cls.__module__.startswith(_ARRAY_PACKAGES):
        return None
    return (
        tensordict_rule(cls)
        or tensorclass_rule(cls)
        or module_rule(cls)
        or torch_pytree_rule(cls)
        or optree_rule(cls)
        or builtin_rule(cls)
        or optree_unconsulted_rule(cls)
    )
