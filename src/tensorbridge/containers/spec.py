"""What one row of the container table is: how a type is taken apart and put back together."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConversionError

__all__ = ["ContainerSpec", "KeyStyle", "PathStyle", "Refusal", "refusing"]

# The styles a registration may ask for (see tensorbridge.register_container).
KeyStyle = Literal["item", "index", "attr"]
# Plus "entry": the key is a torch pytree KeyEntry (MappingKey, GetAttrKey...) that prints itself.
PathStyle = Literal["item", "index", "attr", "entry"]


@dataclass(frozen=True)
class ContainerSpec:
    """How one container type is flattened and rebuilt.

    Attributes:
        type: the container type (exact type; subclasses need their own entry or a rule).
        flatten: ``obj -> (children, keys, aux)``; ``keys`` name the children in key paths.
        unflatten: ``(obj, aux, children) -> new container`` of the same type.
        key_style: how keys print: ``"item"`` (``['k']``), ``"index"`` (``[0]``), ``"attr"``
            (``.k``), or ``"entry"`` (a torch pytree key entry, printed as it prints itself).
        origin: who defined the rule, for error messages (``"its torch.utils._pytree
            registration"``); empty for tensorbridge's own rules and ``register_container``.
    """

    type: type
    flatten: Callable[[Any], tuple[Sequence[Any], Sequence[Hashable], Any]]
    unflatten: Callable[[Any, Any, list[Any]], Any]
    key_style: PathStyle
    origin: str = ""


class Refusal(Exception):
    """Raised by a spec's ``flatten`` or ``unflatten``; the walker re-raises it as ``error`` with the key path."""

    def __init__(self, error: type[ConversionError], cause: str, fix: str) -> None:
        super().__init__(cause)
        self.error, self.cause, self.fix = error, cause, fix


def refusing(cls: type, error: type[ConversionError], cause: str, fix: str) -> ContainerSpec:
    """A spec for a type that must neither be walked nor passed through unconverted.

    Refusing is a row of the table like any other, so every route that walks (``to_tensor``,
    ``to_numpy``, ``explain``, ``stack``...) refuses it the same way, at its key path.
    """

    def flatten(obj: Any) -> tuple[Sequence[Any], Sequence[Hashable], Any]:
        raise Refusal(error, cause, fix)

    def unflatten(orig: Any, aux: Any, kids: list[Any]) -> Any:  # never reached: flatten raised
        raise AssertionError("a refused container was rebuilt")

    return ContainerSpec(cls, flatten, unflatten, "item")
