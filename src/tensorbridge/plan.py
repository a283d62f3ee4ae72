"""Pure decisions: given the facts of one leaf and the caller's options, what will happen.

The planner never touches memory. It returns a :class:`Plan`: the ordered steps (share,
copy, cast, move...), each with the reason it is needed, and whether the result shares
memory with the input. The executor in ``_convert`` only carries steps out, and
``explain()`` prints plans, so what is explained is exactly what is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import torch

from .dtypes import numpy_dtype, row_for_numpy, row_for_torch, torch_dtype
from .errors import ConversionError, CopyRefusedError, DeviceError, UnsupportedError

__all__ = ["Plan", "Step", "ToNumpyOptions", "ToTensorOptions", "plan_to_numpy", "plan_to_tensor"]

StepKind = Literal[
    "scalar",
    "restride",
    "numpy_copy",
    "numpy_cast",
    "share",
    "share_readonly",
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
        "scalar",
        "numpy_copy",
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
class ToTensorOptions:
    """The options of one ``to_tensor`` call, normalized once."""

    dtype: torch.dtype | None = None
    device: torch.device | None = None
    copy: bool | None = None
    requires_grad: bool = False
    pin_memory: bool = False


@dataclass(frozen=True)
class ToNumpyOptions:
    """The options of one ``to_numpy`` call, normalized once."""

    dtype: np.dtype[Any] | None = None
    copy: bool | None = None


@dataclass(frozen=True)
class Plan:
    """What converting one leaf will do.

    Attributes:
        path: the leaf's key path, e.g. ``data['x'][0]``.
        source: the input, described (type, dtype, shape, strides, flags).
        target: the output, described.
        steps: the actions in order; empty when the input is returned as it is.
        error: the error converting raises instead, if any.
    """

    path: str
    source: str
    target: str
    steps: tuple[Step, ...] = ()
    error: ConversionError | None = field(default=None, compare=False)

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


# --- NumPy -> torch -------------------------------------------------------------------------

_KIND_FIX: Final = {
    "O": (
        "object arrays hold Python objects, not numbers",
        "Build a numeric array first, e.g. np.asarray(a.tolist(), dtype=np.float32)",
    ),
    "U": ("tensors cannot hold strings", "Encode the strings to numbers (e.g. a vocabulary index) first"),
    "S": ("tensors cannot hold bytes strings", "Decode or encode them to numbers first"),
    "M": ("torch has no datetime dtype", "Convert explicitly, e.g. a.astype('datetime64[ns]').view(np.int64)"),
    "m": ("torch has no timedelta dtype", "Convert explicitly, e.g. a.astype('timedelta64[ns]').view(np.int64)"),
    "V": (
        "structured and void arrays have no tensor equivalent",
        "Convert each field separately: {name: a[name] for name in a.dtype.names}",
    ),
}


def _dtype_error(dt: np.dtype[Any], path: str) -> UnsupportedError:
    if dt.kind in _KIND_FIX:
        why, fix = _KIND_FIX[dt.kind]
        return UnsupportedError("to_tensor", path, f"dtype {dt} is not supported: {why}", fix)
    return UnsupportedError(
        "to_tensor",
        path,
        f"dtype {dt} has no torch equivalent and converting would lose precision",
        "Pass dtype=torch.float64 (or complex128) to accept the rounding, or cast with a.astype first",
    )


def _negative_strides(a: np.ndarray[Any, Any]) -> tuple[bool, bool]:
    """Return (has negative strides that matter, has negative strides that do not)."""
    if a.size == 0:
        return False, any(s < 0 for s in a.strides)
    real = any(s < 0 and n > 1 for s, n in zip(a.strides, a.shape, strict=True))
    harmless = any(s < 0 and n <= 1 for s, n in zip(a.strides, a.shape, strict=True))
    return real, harmless


def _needs_device(target: torch.device | None, current: torch.device) -> bool:
    if target is None or target.type != current.type:
        return target is not None
    return target.index is not None and target.index != (current.index or 0)


def _device_steps(opts: ToTensorOptions, current: torch.device, path: str) -> list[Step]:
    steps = []
    if opts.device is not None and _needs_device(opts.device, current):
        if opts.device.type == "cuda" and not torch.cuda.is_available():
            raise DeviceError(
                "to_tensor",
                path,
                f"device {opts.device} was asked for but CUDA is not available (torch {torch.__version__})",
                "Use device='cpu', or install a CUDA build of torch",
            )
        if opts.device.type == "cuda" and (opts.device.index or 0) >= torch.cuda.device_count():
            raise DeviceError(
                "to_tensor",
                path,
                f"device {opts.device} does not exist (this machine has {torch.cuda.device_count()} CUDA devices)",
                "Pick an index below torch.cuda.device_count()",
            )
        steps.append(Step("to_device", f"to {opts.device}", opts.device))
    if opts.pin_memory:
        if opts.device is not None and opts.device.type != "cpu":
            raise DeviceError(
                "to_tensor",
                path,
                f"pin_memory=True asks for pinned host memory, but device is {opts.device}",
                "Drop pin_memory, or leave device unset",
            )
        if not torch.cuda.is_available():
            raise DeviceError(
                "to_tensor",
                path,
                "pin_memory=True needs CUDA, which is not available",
                "Drop pin_memory=True on machines without a GPU",
            )
        steps.append(Step("pin", "page-locked host memory for fast GPU copies"))
    return steps


def plan_to_tensor(leaf: np.ndarray[Any, Any] | np.generic, opts: ToTensorOptions, path: str) -> Plan:
    """Plan converting a NumPy array or scalar to a tensor."""
    source = describe_array(leaf)
    try:
        steps, target_dtype = _steps_to_tensor(leaf, opts, path)
    except ConversionError as err:
        return Plan(path, source, "torch.Tensor", (), err)
    device = opts.device or torch.device("cpu")
    return Plan(path, source, f"torch.Tensor {str(target_dtype).removeprefix('torch.')} on {device}", tuple(steps))


def _steps_to_tensor(
    leaf: np.ndarray[Any, Any] | np.generic, opts: ToTensorOptions, path: str
) -> tuple[list[Step], torch.dtype]:
    steps: list[Step] = []
    if isinstance(leaf, np.ma.MaskedArray):
        masked = int(np.ma.count_masked(leaf))  # type: ignore[no-untyped-call]  # NumPy leaves np.ma untyped
        raise UnsupportedError(
            "to_tensor",
            path,
            f"a masked array's mask would be lost ({masked} of {leaf.size} values masked)",
            "Pass a.filled(fill_value) for the data, or convert a.data and np.ma.getmaskarray(a) separately",
        )
    fresh = isinstance(leaf, np.generic)
    if fresh:
        steps.append(Step("scalar", "a NumPy scalar has no shareable memory"))
    arr = np.asarray(leaf)
    dt = arr.dtype
    row = row_for_numpy(dt)
    readonly = False
    if row is None:
        if opts.dtype is None or dt.kind not in "biufc":
            raise _dtype_error(dt, path)
        # An explicit dtype for a type torch lacks (longdouble): NumPy does the checked cast.
        row = row_for_torch(opts.dtype)
        assert row is not None
        steps.append(Step("numpy_cast", f"{dt} -> {row.numpy}, torch has no {dt}", row.numpy))
    elif not dt.isnative and dt.itemsize > 1:
        steps.append(Step("numpy_copy", "non-native byte order: torch cannot view this memory"))
    elif _negative_strides(arr)[0]:
        steps.append(Step("numpy_copy", "negative strides: torch cannot view this memory"))
    elif arr.size and any(st % dt.itemsize for st in arr.strides):
        steps.append(Step("numpy_copy", "strides are not whole elements (a field of a packed record?)"))
    elif not fresh and not arr.flags.writeable and opts.copy is not False and not _copies_later(opts, row.torch):
        # Copied by NumPy, never handed to torch.from_numpy: the tensor must not alias
        # read-only memory, and torch's warn-once flag stays unspent for the caller's own code.
        steps.append(Step("numpy_copy", "read-only memory: writes to the tensor must not reach it"))
    else:
        if _negative_strides(arr)[1]:
            steps.append(Step("restride", "negative strides on axes of size <= 1 do not matter"))
        readonly = not fresh and not arr.flags.writeable
    why = f"{row.name} travels as {row.carrier} bits, exactly" if row.carrier is not None else ""
    if readonly:
        why = "read-only memory, only read: " + (why or "a copy follows") if opts.copy is not False else why
    steps.append(Step("share_readonly" if readonly else "share", why, row))
    if opts.dtype is not None and opts.dtype != row.torch:
        steps.append(Step("cast", f"{row.name} -> {str(opts.dtype).removeprefix('torch.')}", opts.dtype))
    steps += _device_steps(opts, torch.device("cpu"), path)
    _finish(steps, opts.copy, "to_tensor", path)
    target = row.torch if opts.dtype is None else opts.dtype
    if opts.requires_grad:
        if not (target.is_floating_point or target.is_complex):
            raise UnsupportedError(
                "to_tensor",
                path,
                f"requires_grad=True needs a float or complex dtype, not {target}",
                "Pass dtype=torch.float32 as well, or drop requires_grad",
            )
        steps.append(Step("requires_grad", "a leaf tensor that records operations"))
    return steps, target


def _copies_later(opts: ToTensorOptions, current: torch.dtype) -> bool:
    """Whether a cast, a device move or pinning will produce fresh memory anyway."""
    moves = opts.device is not None and _needs_device(opts.device, torch.device("cpu"))
    return (opts.dtype is not None and opts.dtype != current) or moves or opts.pin_memory


def _finish(steps: list[Step], copy: bool | None, what: str, path: str) -> None:
    copies = [s for s in steps if s.kind in COPYING]
    if copy is False and copies:
        raise CopyRefusedError(
            what,
            path,
            "copy=False, but the conversion must copy: " + "; ".join(str(s) for s in copies),
            "Pass copy=None to allow the copy, or fix the input's layout first",
        )
    if copy is True and not copies:
        steps.append(Step("clone", "copy=True asks for fresh memory"))


# --- torch -> NumPy -------------------------------------------------------------------------

_LAYOUT_FIX: Final = {
    "sparse": (
        "sparse tensors are not converted yet, and densifying silently could exhaust memory",
        "Call t.to_dense() first if a dense array is what you want",
    ),
    "quantized": (
        "quantized tensors need a choice between dequantized floats and integer codes",
        "Call t.dequantize() for floats, or t.int_repr() with t.q_scale() and t.q_zero_point()",
    ),
    "nested": (
        "nested (jagged) tensors have no single array shape",
        "Call t.unbind() for a list of tensors, or t.to_padded_tensor(0.0)",
    ),
    "meta": (
        "meta tensors have a shape but no data",
        "Run the computation on a real device, or materialize with t.to_empty(device='cpu')",
    ),
}


def _layout_problem(t: torch.Tensor) -> str | None:
    if t.is_meta:
        return "meta"
    if t.is_nested:
        return "nested"
    if t.is_quantized:
        return "quantized"
    if t.layout != torch.strided:
        return "sparse"
    return None


def plan_to_numpy(leaf: torch.Tensor | np.ndarray[Any, Any] | np.generic, opts: ToNumpyOptions, path: str) -> Plan:
    """Plan converting a tensor (or a NumPy leaf, for dtype/copy) to a NumPy array."""
    source = describe_tensor(leaf) if isinstance(leaf, torch.Tensor) else describe_array(leaf)
    try:
        steps, dt = (
            _steps_tensor_to_numpy(leaf, opts, path)
            if isinstance(leaf, torch.Tensor)
            else _steps_array_to_numpy(leaf, opts, path)
        )
    except ConversionError as err:
        return Plan(path, source, "numpy.ndarray", (), err)
    return Plan(path, source, f"numpy.ndarray {dt}", tuple(steps))


def _steps_tensor_to_numpy(t: torch.Tensor, opts: ToNumpyOptions, path: str) -> tuple[list[Step], np.dtype[Any]]:
    problem = _layout_problem(t)
    if problem is not None:
        why, fix = _LAYOUT_FIX[problem]
        layout = str(t.layout).removeprefix("torch.") if problem == "sparse" else problem
        raise UnsupportedError("to_numpy", path, f"{layout} tensor: {why}", fix)
    row = row_for_torch(t.dtype)
    if row is None:
        raise UnsupportedError(
            "to_numpy",
            path,
            f"dtype {t.dtype} has no NumPy counterpart",
            "Cast the tensor to a dtype NumPy can hold first, e.g. t.float()",
        )
    steps: list[Step] = []
    if t.requires_grad:
        steps.append(Step("detach", "requires grad; the array shares the data, not the graph"))
    if t.is_conj():
        steps.append(Step("resolve_conj", "the conjugate bit is lazy; NumPy needs the values"))
    if t.is_neg():
        steps.append(Step("resolve_neg", "the negative bit is lazy; NumPy needs the values"))
    if t.device.type != "cpu":
        steps.append(Step("to_host", f"from {t.device}"))
    target_np = row.numpy
    if not row.exact:
        widened = row_for_numpy(row.numpy)
        assert widened is not None
        steps.append(Step("cast", f"NumPy has no {row.name}; {row.numpy} holds it exactly", widened.torch))
        row = widened
    numpy_cast = None
    if opts.dtype is not None and opts.dtype != target_np:
        wanted = row_for_numpy(opts.dtype)
        if wanted is not None:
            steps.append(Step("cast", f"{row.name} -> {wanted.name}", wanted.torch))
            row = wanted
        else:
            numpy_cast = Step("numpy_cast", f"{row.numpy} -> {opts.dtype}, torch has no {opts.dtype}", opts.dtype)
        target_np = opts.dtype
    why = f"{row.name} travels as {row.carrier} bits, exactly" if row.carrier is not None else ""
    steps.append(Step("to_numpy", why, row))
    if numpy_cast is not None:
        steps.append(numpy_cast)
    _finish(steps, opts.copy, "to_numpy", path)
    return steps, target_np


def _steps_array_to_numpy(
    a: np.ndarray[Any, Any] | np.generic, opts: ToNumpyOptions, path: str
) -> tuple[list[Step], np.dtype[Any]]:
    steps: list[Step] = []
    if isinstance(a, np.generic):
        steps.append(Step("scalar", "a NumPy scalar becomes a 0-d array"))
    dt = a.dtype
    if opts.dtype is not None and opts.dtype != dt:
        steps.append(Step("numpy_cast", f"{dt} -> {opts.dtype}", opts.dtype))
        dt = opts.dtype
    _finish(steps, opts.copy, "to_numpy", path)
    return steps, dt


def normalize_to_tensor(
    dtype: object, device: object, copy: bool | None, requires_grad: bool, pin_memory: bool
) -> ToTensorOptions:
    """Validate and normalize ``to_tensor``'s options."""
    tdt = None if dtype is None else torch_dtype(dtype)
    if tdt is not None and row_for_torch(tdt) is None:
        raise UnsupportedError(
            "to_tensor",
            "dtype",
            f"{tdt} cannot be produced from NumPy data",
            "Convert to a plain dtype first, then use torch's own API (e.g. quantize_per_tensor)",
        )
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
    return ToTensorOptions(tdt, dev, copy, bool(requires_grad), bool(pin_memory))


def normalize_to_numpy(dtype: object, copy: bool | None) -> ToNumpyOptions:
    """Validate and normalize ``to_numpy``'s options."""
    if copy not in (None, True, False):
        raise UnsupportedError(
            "to_numpy", "copy", f"copy must be None, True or False, not {copy!r}", "Pass one of those"
        )
    return ToNumpyOptions(None if dtype is None else numpy_dtype(dtype), copy)


def plan_tensor_to_tensor(t: torch.Tensor, opts: ToTensorOptions, path: str) -> Plan:
    """Plan ``to_tensor`` on a tensor: returned as it is unless dtype, device, copy or grad ask otherwise."""
    source = describe_tensor(t)
    steps: list[Step] = []
    target = opts.dtype or t.dtype
    try:
        if opts.dtype is not None and opts.dtype != t.dtype:
            steps.append(Step("cast", f"{t.dtype} -> {opts.dtype}".replace("torch.", ""), opts.dtype))
        steps += _device_steps(opts, t.device, path)
        _finish(steps, opts.copy, "to_tensor", path)
        if opts.requires_grad and not t.requires_grad:
            if not (target.is_floating_point or target.is_complex):
                raise UnsupportedError(
                    "to_tensor",
                    path,
                    f"requires_grad=True needs a float or complex dtype, not {target}",
                    "Pass dtype=torch.float32 as well, or drop requires_grad",
                )
            steps.append(Step("requires_grad", "a new leaf tensor; the input is not modified"))
    except ConversionError as err:
        return Plan(path, source, "torch.Tensor", (), err)
    device = opts.device or t.device
    return Plan(path, source, f"torch.Tensor {str(target).removeprefix('torch.')} on {device}", tuple(steps))
