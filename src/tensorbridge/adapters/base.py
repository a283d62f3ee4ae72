"""What an adapter is: how a leaf from another library becomes an array, a tensor, or a result.

An adapter *adopts* a leaf: it turns it into a NumPy array or a tensor (a view wherever the
memory allows), which the ordinary planner then takes over, or into the finished result when
the conversion is the adapter's alone (a SciPy matrix from a sparse tensor).

Planning is pure: an adapter decides its :class:`Adoption` from metadata only (types, dtypes,
shapes, flags) and hands back the data work as ``run``, which the executor calls. The plan of
what follows is made when ``run``'s value arrives, unless the adoption is ``free`` (a view
made without calling the producer: the buffer protocol, ``__array_interface__``), which the
planner may run at once to plan what follows. ``explain()`` never calls a producer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..plan.core import ToNumpyOptions, ToTensorOptions

__all__ = ["Adapter", "Adoption"]


@dataclass(frozen=True)
class Adoption:
    """How a leaf will be adopted, decided without touching its data.

    Attributes:
        kind: ``adopt`` (the value is a view of the input's memory) or ``adopt_copy`` (fresh memory).
        why: what adoption does and why, from metadata only (shown by ``explain()``).
        run: does the data work at execution and returns the ``np.ndarray``/``torch.Tensor``
            to continue from (or, if ``done``, the result); raises a ``ConversionError``
            naming the leaf's path when the data turns out not to convert.
        done: ``run()`` returns the conversion's result; no further step applies.
        source: how the input is described in plans.
        free: ``run()`` calls no producer and reads no data (a view through the buffer
            protocol or ``__array_interface__``): the planner may call it to plan what follows.
    """

    kind: Literal["adopt", "adopt_copy"]
    why: str
    run: Callable[[], Any] = field(repr=False, compare=False)
    done: bool = False
    source: str = ""
    free: bool = False


class Adapter(Protocol):
    """One family of leaves: tensor layouts, pandas, SciPy sparse, array producers."""

    name: str

    def claims(self, obj: object) -> bool:
        """Return whether ``obj`` is this adapter's; cheap, and never imports a framework."""
        ...

    def to_tensor(self, obj: Any, opts: ToTensorOptions, path: str) -> Adoption:
        """Plan adopting ``obj`` for ``to_tensor`` from metadata; raise a ConversionError naming ``path``."""
        ...

    def to_numpy(self, obj: Any, opts: ToNumpyOptions, path: str) -> Adoption:
        """Plan adopting ``obj`` for ``to_numpy`` from metadata; raise a ConversionError naming ``path``."""
        ...
