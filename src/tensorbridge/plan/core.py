"""The plan's vocabulary: steps, plans, options, and the rules every direction shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final, Literal

import numpy as np
import torch

from ..errors import ConversionError, CopyRefusedError
from ..options import (
    DEFAULT_INTEROP,
    NO_VALUE,
    InteropOptions,
    ToNumpyOptions,
    ToTensorOptions,
    normalize_interop,
)

__all__ = [
    "COPYING",
    "DEFAULT_INTEROP",
    "NO_VALUE",
    "Deferred",
    "InteropOptions",
    "Plan",
    "Step",
    "Then",
    "ToNumpyOptions",
    "ToTensorOptions",
    "contiguous_strides",
    "describe_array",
    "describe_tensor",
    "finish_copies",
    "may_overlap",
    "normalize_interop",
]

StepKind = Literal[
    "adopt",
    "adopt_copy",
    "scalar",
    "restride",
    "numpy_copy",
    "flip_copy",
    "numpy_cast",
    "share",
    "share_readonly",
    "compact",
    "expand",
    "detach",
    "resolve_conj",
    "resolve_neg",
    "to_host",
    "cast",
    "to_device",
    "pin",
    "clone",
    "requires_grad",
    "to_numpy",
    "then",
]
# Which steps produce fresh memory. Every other step is a view of its input.
COPYING: Final[frozenset[str]] = frozenset(
    {
        "adopt_copy",
        "scalar",
        "numpy_copy",
        "flip_copy",
        "numpy_cast",
        "to_host",
        "resolve_conj",
        "resolve_neg",
        "cast",
        "to_device",
        "pin",
        "clone",
    }
)


@dataclass(frozen=True)
class Step:
    """One action on a leaf: ``kind`` says what, ``why`` says why, ``arg`` parameterizes it."""

    kind: StepKind
    why: str
    arg: Any = None

    def __str__(self) -> str:
        label = self.kind.replace("_", " ")
        return f"{label} ({self.why})" if self.why else label


@dataclass(frozen=True)
class Deferred:
    """The data work of an adoption, done when the plan runs (the ``arg`` of its ``adopt`` step)."""

    run: Callable[[], Any] = field(compare=False)


@dataclass(frozen=True)
class Then:
    """The ``arg`` of a ``then`` step: plan what a deferred adoption handed over, and run it.

    Attributes:
        plan: makes the plan of the adopted value (pure); the executor runs it.
        copy: the ``copy`` option that plan is made with.
    """

    plan: Callable[[Any], Plan] = field(compare=False)
    copy: bool | None = None


@dataclass(frozen=True)
class Plan:
    """What converting one leaf will do.

    Attributes:
        path: the leaf's key path, e.g. ``data['x'][0]``.
        describe: returns (source, target) descriptions; called only when a person reads the
            plan, so converting never pays for formatting shapes, strides and dtypes.
        steps: the actions in order; empty when the input is returned as it is.
        error: the error converting raises instead, if any.
    """

    path: str
    describe: Callable[[], tuple[str, str]] = field(repr=False, compare=False)
    steps: tuple[Step, ...] = ()
    error: ConversionError | None = field(default=None, compare=False)

    @cached_property
    def _described(self) -> tuple[str, str]:
        return self.describe()

    @property
    def source(self) -> str:
        """The input, described (type, dtype, shape, strides, flags)."""
        return self._described[0]

    @property
    def target(self) -> str:
        """The output, described."""
        return self._described[1]

    @property
    def shares_memory(self) -> bool:
        """Whether the result shares memory with the input.

        After a deferred adoption (a ``then`` step), what follows is planned when the data
        arrives: the result shares memory for certain only under ``copy=False``, which raises
        rather than copy.
        """
        if self.error is not None or any(s.kind in COPYING for s in self.steps):
            return False
        return all(s.arg.copy is False for s in self.steps if s.kind == "then")

    def __str__(self) -> str:
        head = f"{self.path}: {self.source} -> {self.target}"
        if self.error is not None:
            return f"{head}\n    error: {self.error}"
        steps = "".join(f"\n    - {s}" for s in self.steps) or "\n    - returned as it is"
        memory = "shares memory with the input" if self.shares_memory else "fresh memory"
        return f"{head}{steps}\n    => {memory}"


# --- descriptions ---------------------------------------------------------------------------


def describe_array(a: np.ndarray[Any, Any] | np.generic) -> str:
    """Describe a NumPy leaf for plans and messages."""
    if isinstance(a, np.generic):
        return f"numpy scalar {a.dtype}"
    flags = [] if a.flags.writeable else ["read-only"]
    if not a.dtype.isnative:
        flags.append("non-native byte order")
    extra = f", {', '.join(flags)}" if flags else ""
    kind = "ndarray" if type(a) is np.ndarray else type(a).__name__
    return f"numpy.{kind} {a.dtype} shape {a.shape} strides {a.strides}{extra}"


def describe_tensor(t: torch.Tensor) -> str:
    """Describe a tensor leaf for plans and messages."""
    if t.is_nested:  # a nested tensor has no single shape to print
        bits = [str(t.dtype).removeprefix("torch."), f"{t.size(0)} nested components", f"on {t.device}"]
    else:
        bits = [str(t.dtype).removeprefix("torch."), f"shape {tuple(t.shape)}", f"on {t.device}"]
    if t.layout == torch.strided and not t.is_nested:
        bits.insert(2, f"strides {t.stride()}")
    if t.layout != torch.strided:
        bits.append(str(t.layout).removeprefix("torch."))
    if t.requires_grad:
        bits.append("requires grad")
    if t.is_conj():
        bits.append("conjugate bit")
    if t.is_neg():
        bits.append("negative bit")
    return f"{type(t).__name__} {' '.join(bits[:1])} {', '.join(bits[1:])}"


def finish_copies(steps: list[Step], copy: bool | None, what: str, path: str, own_memory: str = "") -> None:
    """Refuse the copies ``copy=False`` forbids; add the copy ``copy=True`` (or ``own_memory``) needs.

    ``own_memory`` says why the result must be fresh memory even with ``copy=None`` (a leaf
    that requires grad over overlapping memory, say); every copying step gives each element its
    own memory.
    """
    copies = [s for s in steps if s.kind in COPYING]
    if copy is False and (copies or own_memory):
        reasons = [str(s) for s in copies] or [own_memory]
        raise CopyRefusedError(
            what,
            path,
            "copy=False, but the conversion must copy: " + "; ".join(reasons),
            "Pass copy=None to allow the copy, or fix the input's layout first",
        )
    if not copies and (copy is True or own_memory):
        steps.append(Step("clone", "copy=True asks for fresh memory" if copy is True else own_memory))


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Row-major (C) strides of ``shape`` in elements, as torch gives them (an empty axis counts as 1).

    Example:
        >>> contiguous_strides((2, 0, 3))
        (3, 3, 1)
    """
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def may_overlap(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> bool:
    """Whether two elements of a layout may share memory (broadcasts, ``as_strided`` overlaps).

    ``False`` is a proof of the opposite: sorted by stride, each axis steps past everything
    the smaller axes span. ``strides`` and ``itemsize`` share a unit (bytes or elements).
    """
    if 0 in shape:
        return False
    extent = itemsize
    for stride, n in sorted((abs(st), n) for st, n in zip(strides, shape, strict=True) if n > 1):
        if stride < extent:
            return True
        extent += stride * (n - 1)
    return False
