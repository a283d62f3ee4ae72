"""The plan's vocabulary: steps, plans, options, and the rules every direction shares."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final, Literal

import numpy as np
import torch

from ..dtypes import numpy_dtype, row_for_torch, torch_dtype
from ..errors import ConversionError, CopyRefusedError, DeviceError, UnsupportedError
from .dtype_map import DtypeMap, normalize_dtype_map

__all__ = [
    "COPYING",
    "DEFAULT_INTEROP",
    "NO_VALUE",
    "InteropOptions",
    "Plan",
    "Step",
    "ToNumpyOptions",
    "ToTensorOptions",
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


class _NoValue:
    def __repr__(self) -> str:
        return "NO_VALUE"


#: The default of ``na_value``: missing values raise instead of being filled.
NO_VALUE: Final = _NoValue()
DATETIME_UNITS: Final = ("ns", "us", "ms", "s", "D")


@dataclass(frozen=True)
class InteropOptions:
    """Choices that only leaves from other libraries need (see ``tensorbridge.interop``).

    Attributes:
        dense: densify sparse matrices and tensors instead of keeping their layout.
        quantized: ``"dequantize"`` (floats) or ``"int"`` (integer codes with their scale and
            zero point) for quantized tensors; None raises and offers both.
        na_value: what missing values (pandas NA/NaN in nullable columns, NaT) become;
            :data:`NO_VALUE` raises instead.
        datetime_unit: datetimes/timedeltas become int64 counts of this unit since the
            epoch; None raises instead.
    """

    dense: bool = False
    quantized: Literal["dequantize", "int"] | None = None
    na_value: object = NO_VALUE
    datetime_unit: str | None = None


DEFAULT_INTEROP: Final = InteropOptions()


@dataclass(frozen=True)
class ToTensorOptions:
    """The options of one ``to_tensor`` call, normalized once."""

    dtype: torch.dtype | None = None
    device: torch.device | None = None
    copy: bool | None = None
    requires_grad: bool = False
    pin_memory: bool = False
    interop: InteropOptions = DEFAULT_INTEROP
    dtype_map: DtypeMap[torch.dtype] | None = None
    """``dtype=`` as a mapping; resolved per leaf into ``dtype`` before the leaf is planned."""


@dataclass(frozen=True)
class ToNumpyOptions:
    """The options of one ``to_numpy`` call, normalized once."""

    dtype: np.dtype[Any] | None = None
    copy: bool | None = None
    interop: InteropOptions = DEFAULT_INTEROP
    dtype_map: DtypeMap[np.dtype[Any]] | None = None
    """``dtype=`` as a mapping; resolved per leaf into ``dtype`` before the leaf is planned."""


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
        """Whether the result shares memory with the input."""
        return self.error is None and not any(s.kind in COPYING for s in self.steps)

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


def normalize_interop(
    what: str,
    dense: object = False,
    quantized: object = None,
    na_value: object = NO_VALUE,
    datetime_unit: object = None,
) -> InteropOptions:
    """Validate the options that leaves from other libraries need."""
    if dense not in (True, False):
        raise UnsupportedError(what, "dense", f"dense must be True or False, not {dense!r}", "Pass one of those")
    if quantized not in (None, "dequantize", "int"):
        raise UnsupportedError(
            what,
            "quantized",
            f"quantized must be None, 'dequantize' or 'int', not {quantized!r}",
            "Pass 'dequantize' for floats, or 'int' for the integer codes with their scale and zero point",
        )
    if datetime_unit is not None and datetime_unit not in DATETIME_UNITS:
        raise UnsupportedError(
            what,
            "datetime_unit",
            f"datetime_unit must be one of {DATETIME_UNITS} or None, not {datetime_unit!r}",
            "Pass datetime_unit='ns' for int64 nanoseconds since the epoch",
        )
    if dense is False and quantized is None and na_value is NO_VALUE and datetime_unit is None:
        return DEFAULT_INTEROP
    return InteropOptions(bool(dense), quantized, na_value, datetime_unit)


def normalize_to_tensor(
    dtype: object,
    device: object,
    copy: bool | None,
    requires_grad: bool,
    pin_memory: bool,
    interop: InteropOptions = DEFAULT_INTEROP,
) -> ToTensorOptions:
    """Validate and normalize ``to_tensor``'s options."""
    if isinstance(dtype, Mapping):
        tdt, tmap = None, normalize_dtype_map(dtype, "to_tensor", _tensor_target)
    else:
        tdt, tmap = (None if dtype is None else _tensor_target(dtype)), None
    try:
        dev = None if device is None else torch.device(device)  # type: ignore[call-overload]
    except (RuntimeError, TypeError) as err:
        raise DeviceError(
            "to_tensor",
            "device",
            f"{device!r} is not a device torch knows ({err})",
            "Pass 'cpu', 'cuda', 'cuda:1' or a torch.device",
        ) from err
    if copy not in (None, True, False):
        raise UnsupportedError(
            "to_tensor", "copy", f"copy must be None, True or False, not {copy!r}", "Pass one of those"
        )
    return ToTensorOptions(tdt, dev, copy, bool(requires_grad), bool(pin_memory), interop, tmap)


def _tensor_target(dtype: object) -> torch.dtype:
    tdt = torch_dtype(dtype)
    if row_for_torch(tdt) is None:
        raise UnsupportedError(
            "to_tensor",
            "dtype",
            f"{tdt} cannot be produced from NumPy data",
            "Convert to a plain dtype first, then use torch's own API (e.g. quantize_per_tensor)",
        )
    return tdt


def normalize_to_numpy(dtype: object, copy: bool | None, interop: InteropOptions = DEFAULT_INTEROP) -> ToNumpyOptions:
    """Validate and normalize ``to_numpy``'s options."""
    if copy not in (None, True, False):
        raise UnsupportedError(
            "to_numpy", "copy", f"copy must be None, True or False, not {copy!r}", "Pass one of those"
        )
    if isinstance(dtype, Mapping):
        return ToNumpyOptions(None, copy, interop, normalize_dtype_map(dtype, "to_numpy", numpy_dtype))
    return ToNumpyOptions(None if dtype is None else numpy_dtype(dtype), copy, interop)
