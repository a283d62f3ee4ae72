"""Planning torch -> NumPy (and NumPy -> NumPy, for ``dtype=``/``copy=`` on arrays)."""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import torch

from ..dtypes import row_for_numpy, row_for_torch
from ..errors import ConversionError, UnsupportedError
from .core import Plan, Step, ToNumpyOptions, describe_array, describe_tensor, finish_copies
from .devices import transfer_step

__all__ = ["plan_to_numpy"]

_LAYOUT_FIX: Final = {
    "sparse": (
        "this sparse layout has no SciPy counterpart, and densifying silently could exhaust memory",
        "Call t.to_dense() first if a dense array is what you want",
    ),
    "meta": (
        "meta tensors have a shape but no data",
        "Run the computation on a real device, or materialize with t.to_empty(device='cpu')",
    ),
}


def _layout_problem(t: torch.Tensor) -> str | None:
    if t.is_meta:
        return "meta"
    if t.layout != torch.strided:
        return "sparse"
    return None


def plan_to_numpy(leaf: torch.Tensor | np.ndarray[Any, Any] | np.generic, opts: ToNumpyOptions, path: str) -> Plan:
    """Plan converting a tensor (or a NumPy leaf, for dtype/copy) to a NumPy array."""

    def source() -> str:
        return describe_tensor(leaf) if isinstance(leaf, torch.Tensor) else describe_array(leaf)

    try:
        steps, dt = (
            _steps_tensor_to_numpy(leaf, opts, path)
            if isinstance(leaf, torch.Tensor)
            else _steps_array_to_numpy(leaf, opts, path)
        )
    except ConversionError as err:
        return Plan(path, lambda: (source(), "numpy.ndarray"), (), err)
    return Plan(path, lambda: (source(), f"numpy.ndarray {dt}"), tuple(steps))


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
    casts: list[Step] = []
    target_np = row.numpy
    if not row.exact:
        widened = row_for_numpy(row.numpy)
        assert widened is not None
        casts.append(Step("cast", f"NumPy has no {row.name}; {row.numpy} holds it exactly", widened.torch))
        row = widened
    numpy_cast = None
    if opts.dtype is not None and opts.dtype != target_np:
        wanted = row_for_numpy(opts.dtype)
        if wanted is not None:
            casts.append(Step("cast", f"{row.name} -> {wanted.name}", wanted.torch))
            row = wanted
        else:
            numpy_cast = Step("numpy_cast", f"{row.numpy} -> {opts.dtype}, torch has no {opts.dtype}", opts.dtype)
        target_np = opts.dtype
    if t.device.type != "cpu":
        # Casts run on the side where the data is smaller: a narrowing cast on the device
        # shrinks the copy, a widening one (complex32 -> complex64) waits for the host.
        before = row.torch.itemsize <= t.dtype.itemsize
        wire = row.torch if before else t.dtype
        if before:
            steps += casts
        steps.append(transfer_step("to_host", t.device, torch.device("cpu"), t.numel() * wire.itemsize, wire))
        if not before:
            steps += casts
    else:
        steps += casts
    why = f"{row.name} travels as {row.carrier} bits, exactly" if row.carrier is not None else ""
    steps.append(Step("to_numpy", why, row))
    if numpy_cast is not None:
        steps.append(numpy_cast)
    finish_copies(steps, opts.copy, "to_numpy", path)
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
    finish_copies(steps, opts.copy, "to_numpy", path)
    return steps, dt
