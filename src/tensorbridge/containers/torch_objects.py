"""torch objects that hold tensors without being data: TensorDicts are walked, modules refused.

Both are recognized through ``sys.modules`` (an instance implies its module is loaded), so
tensordict is never imported here.

A ``tensordict.TensorDict`` is walked key by key (nested TensorDicts are children of their
own; non-tensor entries are children as the Python objects ``td[key]`` gives). The walker's
rebuild does not know the direction of the conversion, so the converted children decide:

* if every tensor came back a tensor (``to_tensor``, with any ``dtype``/``device``), it is
  rebuilt as a TensorDict of the same class, batch size, dimension names and lock. Its
  ``device`` is the one its tensors now share: a ``to_tensor(td, device="cuda")`` gives a
  TensorDict on CUDA, not one that moves them back to the CPU; a TensorDict without a device
  stays without one, and one whose tensors ended on several devices gets none;
* if they became arrays (``to_numpy``), it becomes a plain ``dict`` (nested ones too), the
  structure ``td.to_dict()`` has, with bfloat16 and the other dtypes ``td.numpy()`` refuses;
* a TensorDict without any tensor (only non-tensor entries, or empty) has nothing to
  convert and comes back a TensorDict either way.

Other TensorDict kinds (lazy stacks, sub-TensorDicts, persistent or parameter ones) are
refused, with ``td.to_tensordict()`` as the fix, and so is every ``torch.nn.Module``. A
``@tensorclass`` instance is walked through its torch pytree registration by ``to_tensor``;
``to_numpy`` refuses it (a tensorclass would turn the arrays back into tensors), with
``tc.to_tensordict()`` as the fix.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..errors import UnsupportedError
from .pytrees import torch_pytree_rule
from .spec import ContainerSpec, Refusal, refusing

__all__ = ["module_rule", "tensorclass_rule", "tensordict_rule"]


def module_rule(cls: type) -> ContainerSpec | None:
    """A refusal for ``torch.nn.Module`` subclasses, or ``None``.

    A module is not data: walking into it would rebuild a second model, and passing it through
    would hand its parameters back unconverted without a word.
    """
    module = getattr(sys.modules.get("torch.nn"), "Module", None)
    if module is None or not issubclass(cls, module):
        return None
    return refusing(
        cls,
        UnsupportedError,
        f"{cls.__name__} is a torch.nn.Module, not data: its parameters and buffers would come back unconverted",
        "Convert model.state_dict() (parameters and buffers) or dict(model.named_parameters()) instead",
    )


def tensorclass_rule(cls: type) -> ContainerSpec | None:
    """The rule for ``@tensorclass`` classes: their pytree registration, refusing arrays; or ``None``."""
    is_tensorclass = getattr(sys.modules.get("tensordict"), "is_tensorclass", None)
    if is_tensorclass is None or not is_tensorclass(cls):
        return None
    cause = f"{cls.__name__} is a tensorclass, which holds tensors only: it would turn the arrays back into tensors"
    fix = "Convert tc.to_tensordict() instead, which becomes a dict of arrays"
    spec = torch_pytree_rule(cls)
    if spec is None:  # a tensordict without pytree support: nothing to walk it with
        return refusing(cls, UnsupportedError, cause, fix)
    rebuild = spec.unflatten

    def unflatten(orig: Any, aux: Any, kids: list[Any]) -> Any:
        ndarray = sys.modules["numpy"].ndarray
        if any(isinstance(kid, ndarray) for kid in kids):
            raise Refusal(UnsupportedError, cause, fix)
        return rebuild(orig, aux, kids)

    return ContainerSpec(cls, spec.flatten, unflatten, spec.key_style, spec.origin)


_TENSOR: Final = 0
_NESTED: Final = 1
_OTHER: Final = 2


@dataclass(frozen=True)
class _Shape:
    """What a rebuilt TensorDict takes from the original: everything but its entries."""

    cls: type
    keys: list[str]
    kinds: list[int]
    batch_size: Any
    device: Any
    names: Any
    locked: bool


def tensordict_rule(cls: type) -> ContainerSpec | None:
    """The rule for ``tensordict.TensorDict`` (a refusal for other TensorDict kinds), or ``None``."""
    td = sys.modules.get("tensordict")
    base = getattr(td, "TensorDictBase", None)
    if base is None or not issubclass(cls, base):
        return None
    plain = getattr(td, "TensorDict", None)
    if plain is not None and issubclass(cls, plain):
        return ContainerSpec(cls, _flatten_td, _unflatten_td, "item")
    return refusing(
        cls,
        UnsupportedError,
        f"a {cls.__name__} is not a plain TensorDict, which is the kind tensorbridge rebuilds",
        "Convert td.to_tensordict() instead",
    )


def _flatten_td(td: Any) -> tuple[Sequence[Any], Sequence[Hashable], _Shape]:
    mod = sys.modules["tensordict"]
    base, is_non_tensor = mod.TensorDictBase, mod.is_non_tensor
    keys: list[str] = []
    kids: list[Any] = []
    kinds: list[int] = []
    for key, value in td.items():
        keys.append(key)
        if is_non_tensor(value):
            kids.append(td[key])  # the stored Python object, not its NonTensorData wrapper
            kinds.append(_OTHER)
        else:
            kids.append(value)
            kinds.append(_NESTED if isinstance(value, base) else _TENSOR)
    # names is [None, ...] for a TensorDict without dimension names, which builds one the same.
    return kids, keys, _Shape(type(td), keys, kinds, td.batch_size, td.device, td.names, td.is_locked)


def _unflatten_td(orig: Any, shape: _Shape, kids: list[Any]) -> Any:
    tensor, base = sys.modules["torch"].Tensor, sys.modules["tensordict"].TensorDictBase
    # A tensor that did not come back a tensor, or a nested TensorDict that became a dict,
    # means to_numpy; a nested TensorDict without tensors stays one, so it does not vote.
    to_numpy = any(
        (kind == _TENSOR and not isinstance(kid, tensor)) or (kind == _NESTED and not isinstance(kid, base))
        for kid, kind in zip(kids, shape.kinds, strict=True)
    )
    if to_numpy:
        return {key: _plain(kid, base) for key, kid in zip(shape.keys, kids, strict=True)}
    new = shape.cls(batch_size=shape.batch_size, device=_device(shape, kids), names=shape.names)
    for key, kid, kind in zip(shape.keys, kids, shape.kinds, strict=True):
        if kind == _OTHER:
            new.set_non_tensor(key, kid)
        else:
            new.set(key, kid)
    if shape.locked:
        new.lock_()
    return new


def _device(shape: _Shape, kids: list[Any]) -> Any:
    """The rebuilt TensorDict's device: the original's, or where its tensors now all are."""
    if shape.device is None:
        return None
    tensor = sys.modules["torch"].Tensor
    # A nested TensorDict without tensors kept the original device; it has no say.
    devices = {
        kid.device
        for kid, kind in zip(kids, shape.kinds, strict=True)
        if kind == _TENSOR
        or (kind == _NESTED and any(isinstance(v, tensor) for v in kid.values(include_nested=True, leaves_only=True)))
    }
    if not devices:
        return shape.device
    return devices.pop() if len(devices) == 1 else None


def _plain(kid: Any, base: type) -> Any:
    """A nested TensorDict without tensors, as to_numpy's dict; anything else as it is."""
    if not isinstance(kid, base):
        return kid
    td: Any = kid
    return {key: _plain(value, base) if isinstance(value, base) else td[key] for key, value in td.items()}
