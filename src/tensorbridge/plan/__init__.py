"""Pure decisions: given the facts of one leaf and the caller's options, what will happen.

The planner never touches memory. It returns a :class:`Plan`: the ordered steps (share,
copy, cast, move...), each with the reason it is needed, and whether the result shares
memory with the input. The executor in ``ops`` only carries steps out, and
``explain()`` prints plans, so what is explained is exactly what is done.
"""

from .core import (
    COPYING,
    Plan,
    Step,
    ToNumpyOptions,
    ToTensorOptions,
    describe_array,
    describe_tensor,
)
from .to_numpy import plan_to_numpy
from .to_tensor import plan_tensor_to_tensor, plan_to_tensor

__all__ = [
    "COPYING",
    "Plan",
    "Step",
    "ToNumpyOptions",
    "ToTensorOptions",
    "describe_array",
    "describe_tensor",
    "plan_tensor_to_tensor",
    "plan_to_numpy",
    "plan_to_tensor",
]
