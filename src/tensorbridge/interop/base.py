"""What an adapter is: how a leaf from another library becomes an array, a tensor, or a result.

An adapter *adopts* a leaf while the call is planned: it turns it into a NumPy array or a
tensor (a view wherever the memory allows), which the ordinary planner then takes over, or
into the finished result when the conversion is the adapter's alone (a SciPy matrix from a
sparse tensor). The adoption is the plan's first step, so ``explain()`` shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..plan.core import Step, ToNumpyOptions, ToTensorOptions

__all__ = ["Adapter", "Adopted", "adopted", "finished"]


@dataclass(frozen=True)
class Adopted:
    """The result of adopting a leaf.

    Attributes:
        value: an ``np.ndarray`` or ``torch.Tensor`` for the planner to continue with, or, if
            ``done``, the conversion's result.
        step: what adoption did, and why; kind ``adopt`` (a view of the input's memory) or
            ``adopt_copy`` (fresh memory).
        done: ``value`` is the result; no further step applies (the adapter honoured the
            options itself, or raised).
        source: how the input is described in plans.
    """

    value: Any
    step: Step
    done: bool = False
    source: str = ""


def adopted(value: Any, why: str, *, copied: bool, source: str) -> Adopted:
    """An adoption that the planner continues from."""
    return Adopted(value, Step("adopt_copy" if copied else "adopt", why, value), False, source)


def finished(value: Any, why: str, *, copied: bool, source: str) -> Adopted:
    """An adoption that is already the conversion's result."""
    return Adopted(value, Step("adopt_copy" if copied else "adopt", why, value), True, source)


class Adapter(Protocol):
    """One family of leaves: tensor layouts, pandas, SciPy sparse, array producers."""

    name: str

    def claims(self, obj: object) -> bool:
        """Return whether ``obj`` is this adapter's; cheap, and never imports a framework."""
        ...

    def to_tensor(self, obj: Any, opts: ToTensorOptions, path: str) -> Adopted:
        """Adopt ``obj`` for ``to_tensor``; raise a ConversionError naming ``path`` if it cannot."""
        ...

    def to_numpy(self, obj: Any, opts: ToNumpyOptions, path: str) -> Adopted:
        """Adopt ``obj`` for ``to_numpy``; raise a ConversionError naming ``path`` if it cannot."""
        ...
