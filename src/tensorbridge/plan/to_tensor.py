"""Planning NumPy -> torch (and tensor -> tensor, for ``to_tensor`` on tensors)."""

from __future__ import annotations

import warnings
from typing import Any, Final

import numpy as np
import torch

from ..dtypes import is_ml_dtype, row_for_numpy, row_for_torch
from ..errors import ConversionError, UnsupportedError
from ..transfer.devices import backend_for
from .core import COPYING, Plan, Step, ToTensorOptions, describe_array, describe_tensor, finish_copies, may_overlap
from .devices import device_steps, needs_device, resolve_device

__all__ = ["is_pinned_array", "is_pinned_tensor", "plan_tensor_to_tensor", "plan_to_tensor"]

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


def _castable(dt: np.dtype[Any]) -> bool:
    """Whether an explicit ``dtype=`` can convert this dtype torch lacks (by a checked NumPy cast)."""
    return dt.kind in "biufc" or (is_ml_dtype(dt) and dt.kind == "V")


def _ragged(a: np.ndarray[Any, Any]) -> tuple[tuple[int, ...], ...] | None:
    """The differing shapes of an object array's items, if it holds arrays or lists of several shapes."""
    shapes: list[tuple[int, ...]] = []
    for item in a.flat[:_RAGGED_PROBE]:
        if not isinstance(item, (np.ndarray, list, tuple, torch.Tensor)):
            return None
        shape = tuple(item.shape) if isinstance(item, (np.ndarray, torch.Tensor)) else (len(item),)
        if shape not in shapes:
            shapes.append(shape)
    return tuple(shapes) if len(shapes) > 1 else None


# Object arrays are only looked into this far to tell ragged data from other objects.
_RAGGED_PROBE: Final = 64


def _dtype_error(dt: np.dtype[Any], path: str, a: np.ndarray[Any, Any] | None = None) -> UnsupportedError:
    if dt.kind == "O" and a is not None and (shapes := _ragged(a)) is not None:
        listed = ", ".join(str(s) for s in shapes[:4])
        return UnsupportedError(
            "to_tensor",
            path,
            f"an object array of items with different shapes ({listed}) is ragged: one tensor cannot hold it",
            "Use tb.nested_tensor(list(a)) for a nested tensor, or pad the items to one shape first",
        )
    if is_ml_dtype(dt):
        fix = "Pass dtype=torch.float32 (it holds every value of the small float kinds exactly)"
        if _castable(dt):
            fix += ", or torch.int8 for the small integer kinds"
        else:
            fix = "Cast it yourself first, e.g. a.astype(np.complex64)"
        return UnsupportedError("to_tensor", path, f"ml_dtypes {dt} has no torch dtype", fix)
    if dt.kind in _KIND_FIX:
        why, fix = _KIND_FIX[dt.kind]
        return UnsupportedError("to_tensor", path, f"dtype {dt} is not supported: {why}", fix)
    return UnsupportedError(
        "to_tensor",
        path,
        f"dtype {dt} has no torch equivalent and converting would lose precision",
        "Pass dtype=torch.float64 (or complex128) to accept the rounding, or cast with a.astype first",
    )


def _negative_strides(a: np.ndarray[Any, Any]) -> tuple[list[int], bool]:
    """Return (the axes whose negative strides matter, whether any negative stride does not)."""
    negative = [i for i, st in enumerate(a.strides) if st < 0]
    if a.size == 0:
        return [], bool(negative)
    real = [i for i in negative if a.shape[i] > 1]
    return real, len(real) < len(negative)


def plan_to_tensor(leaf: np.ndarray[Any, Any] | np.generic, opts: ToTensorOptions, path: str) -> Plan:
    """Plan converting a NumPy array or scalar to a tensor."""
    try:
        steps, target_dtype = _steps_to_tensor(leaf, opts, path)
    except ConversionError as err:
        return Plan(path, lambda: (describe_array(leaf), "torch.Tensor"), (), err)
    return Plan(path, lambda: (describe_array(leaf), _tensor_target(target_dtype, opts.device)), tuple(steps))


def _tensor_target(dtype: torch.dtype, device: torch.device | None) -> str:
    return f"torch.Tensor {str(dtype).removeprefix('torch.')} on {device or torch.device('cpu')}"


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
    # copy=True and requires_grad=True mean every element is its own memory (NumPy 2's copy):
    # only copy=None may keep a broadcast's zero strides.
    own = opts.copy is True or opts.requires_grad
    broadcast = (
        not own and arr.size > 0 and any(st == 0 and n > 1 for st, n in zip(arr.strides, arr.shape, strict=True))
    )
    if broadcast:
        # A broadcast's zero strides are kept: every step below (copy, cast, move) sees only
        # the distinct values, and "expand" restores the shape as a view at the end.
        steps.append(Step("compact", "zero strides: work on the distinct values only"))
        arr = arr[tuple(slice(0, 1) if st == 0 else slice(None) for st in arr.strides)]
    dt = arr.dtype
    row = row_for_numpy(dt)
    reversed_axes, harmless_negative = _negative_strides(arr)
    whole = arr.size == 0 or not any(st % dt.itemsize for st in arr.strides)
    readonly = False
    if row is None:
        if opts.dtype is None or not _castable(dt):
            raise _dtype_error(dt, path, arr)
        # An explicit dtype for a type torch lacks (longdouble): NumPy does the checked cast.
        row = row_for_torch(opts.dtype)
        assert row is not None
        steps.append(Step("numpy_cast", f"{dt} -> {row.numpy}, torch has no {dt}", row.numpy))
    elif not dt.isnative and dt.itemsize > 1:
        steps.append(Step("numpy_copy", "non-native byte order: torch cannot view this memory"))
    elif reversed_axes:
        if len(reversed_axes) == 1 and whole and arr.flags.writeable:
            # torch views the axis in reverse (positive strides) and gathers it back in order
            # into fresh memory: measured ~1.5-2x faster than NumPy's copy (bench_core 4a).
            why = f"negative strides on axis {reversed_axes[0]}: gathered back in order by torch"
            steps.append(Step("flip_copy", why, (reversed_axes[0], row)))
        else:
            steps.append(Step("numpy_copy", "negative strides: torch cannot view this memory"))
    elif not whole:
        steps.append(Step("numpy_copy", "strides are not whole elements (a field of a packed record?)"))
    elif not fresh and not arr.flags.writeable and opts.copy is not False and not _copies_later(opts, row.torch):
        # Copied by NumPy, never handed to torch.from_numpy: the tensor must not alias
        # read-only memory, and torch's warn-once flag stays unspent for the caller's own code.
        steps.append(Step("numpy_copy", "read-only memory: writes to the tensor must not reach it"))
    else:
        if harmless_negative:
            steps.append(Step("restride", "negative strides on axes of size <= 1 do not matter"))
        readonly = not fresh and not arr.flags.writeable
    why = f"{row.name} travels as {row.carrier} bits, exactly" if row.carrier is not None else ""
    if readonly:
        why = "read-only memory, only read: " + (why or "a copy follows") if opts.copy is not False else why
    if not steps or steps[-1].kind != "flip_copy":  # flip_copy produces the tensor itself
        steps.append(Step("share_readonly" if readonly else "share", why, row))
    target = row.torch if opts.dtype is None else opts.dtype
    device = None if opts.device is None else resolve_device(opts.device, path, "to_tensor", target)
    cpu = torch.device("cpu")
    moving = device is not None and needs_device(device, cpu)
    cast = None
    if opts.dtype is not None and opts.dtype != row.torch:
        cast = Step("cast", f"{row.name} -> {str(opts.dtype).removeprefix('torch.')}", opts.dtype)
    # A cast runs on the side where the data is smaller: narrowing before the copy halves the
    # bytes on the wire (float64 -> float32), widening after it.
    cast_after = cast is not None and moving and opts.dtype is not None and opts.dtype.itemsize > row.torch.itemsize
    if cast is not None and not cast_after:
        steps.append(cast)
    wire = target if cast is not None and not cast_after else row.torch
    shared = not any(s.kind in COPYING for s in steps) and steps[-1].kind in ("share", "share_readonly")
    steps += device_steps(
        opts,
        cpu,
        device,
        path,
        nbytes=arr.size * wire.itemsize,
        dtype=wire,
        host_check=is_pinned_array if shared else None,
        host=arr,
    )
    if cast is not None and cast_after:
        steps.append(cast)
    overlaps = opts.requires_grad and not broadcast and may_overlap(arr.shape, arr.strides, dt.itemsize)
    finish_copies(steps, opts.copy, "to_tensor", path, _GRAD_OWN_MEMORY if overlaps else "")
    if broadcast:
        steps.append(Step("expand", f"back to shape {np.shape(leaf)} with zero strides", np.shape(leaf)))
    if opts.requires_grad:
        steps.append(_grad_step(target, path, "a leaf tensor that records operations"))
    return steps, target


_GRAD_OWN_MEMORY: Final = "requires_grad=True: elements of the input share memory, and a leaf must own each one"


def is_pinned_array(a: np.ndarray[Any, Any]) -> bool:
    """Whether a host array lives in page-locked memory (one made from a pinned tensor does)."""
    cuda = backend_for("cuda")
    if cuda is None:
        return False
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        try:
            return cuda.is_pinned(torch.from_numpy(a))
        except (TypeError, ValueError, RuntimeError):  # a layout from_numpy refuses is not pinned memory we can use
            return False


def _grad_step(target: torch.dtype, path: str, why: str) -> Step:
    if not (target.is_floating_point or target.is_complex):
        raise UnsupportedError(
            "to_tensor",
            path,
            f"requires_grad=True needs a float or complex dtype, not {target}",
            "Pass dtype=torch.float32 as well, or drop requires_grad",
        )
    return Step("requires_grad", why)


def _copies_later(opts: ToTensorOptions, current: torch.dtype) -> bool:
    """Whether a cast, a device move or pinning will produce fresh memory anyway."""
    moves = opts.device is not None and opts.device.type != "cpu"
    return (opts.dtype is not None and opts.dtype != current) or moves or opts.pin_memory


def plan_tensor_to_tensor(t: torch.Tensor, opts: ToTensorOptions, path: str) -> Plan:
    """Plan ``to_tensor`` on a tensor: returned as it is unless dtype, device, copy or grad ask otherwise."""
    steps: list[Step] = []
    target = opts.dtype or t.dtype
    device = t.device
    try:
        if opts.device is not None:
            device = resolve_device(opts.device, path, "to_tensor", target)
        moving = needs_device(device, t.device)
        cast = None
        if opts.dtype is not None and opts.dtype != t.dtype:
            cast = Step("cast", f"{t.dtype} -> {opts.dtype}".replace("torch.", ""), opts.dtype)
        cast_after = cast is not None and moving and target.itemsize > t.dtype.itemsize
        if cast is not None and not cast_after:
            steps.append(cast)
        wire = target if cast is not None and not cast_after else t.dtype
        steps += device_steps(
            opts,
            t.device,
            device if opts.device is not None else None,
            path,
            nbytes=t.numel() * wire.itemsize,
            dtype=wire,
            host_check=None if steps else is_pinned_tensor,
            host=t,
        )
        if cast is not None and cast_after:
            steps.append(cast)
        # A new leaf unless the input already is one that requires grad and nothing changes it:
        # every copy comes back detached, and an intermediate result is not a leaf.
        new_leaf = opts.requires_grad and (not t.requires_grad or not t.is_leaf)
        own = ""
        if new_leaf and t.is_inference():
            own = "requires_grad=True: an inference-mode tensor cannot record operations; the new leaf is a copy"
        elif new_leaf and may_overlap(tuple(t.shape), t.stride(), 1):
            own = _GRAD_OWN_MEMORY
        finish_copies(steps, opts.copy, "to_tensor", path, own)
        if opts.requires_grad and (new_leaf or steps):
            why = "a new leaf tensor; the input is not modified" if t.requires_grad or not steps else "a leaf tensor"
            steps.append(_grad_step(target, path, why))
    except ConversionError as err:
        return Plan(path, lambda: (describe_tensor(t), "torch.Tensor"), (), err)
    return Plan(path, lambda: (describe_tensor(t), _tensor_target(target, device)), tuple(steps))


def is_pinned_tensor(t: torch.Tensor) -> bool:
    """Whether a CPU tensor lives in page-locked memory."""
    cuda = backend_for("cuda")
    return t.device.type == "cpu" and cuda is not None and cuda.available() and cuda.is_pinned(t)
