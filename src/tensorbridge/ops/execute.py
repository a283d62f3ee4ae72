"""Carry out a plan's steps, one function per step kind."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import numpy as np
import torch

from ..dtypes import DtypeRow, torch_bits
from ..errors import ConversionError, DeviceError, OutOfMemoryError, UnsupportedError
from ..plan import Plan, Step
from ..plan.core import Deferred, may_overlap
from ..plan.routes import Transfer
from ..transfer.engine import move
from .alloc import host_copy, host_empty
from .cast import cast_array, cast_tensor

__all__ = ["EXECUTORS", "copy_failed", "device_error", "reversed_into", "run_plan", "run_plans", "run_steps"]

Leaf = Any


def _scalar(x: Leaf, step: Step, path: str) -> Leaf:
    return np.array(x)


def _forward(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The view with every negatively strided axis reversed: non-negative strides only."""
    return a[tuple(slice(None, None, -1) if s < 0 else slice(None) for s in a.strides)]


def _restride(a: np.ndarray[Any, Any], step: Step, path: str) -> np.ndarray[Any, Any]:
    # A stride on an axis of size <= 1 (or of an empty array) is never used to address memory,
    # and reversing a size-1 axis leaves the data pointer where it was: the same view.
    return _forward(a)


def _compact(a: np.ndarray[Any, Any], step: Step, path: str) -> np.ndarray[Any, Any]:
    # The distinct values of a broadcast (a view); the "expand" step restores its shape.
    return a[tuple(slice(0, 1) if st == 0 else slice(None) for st in a.strides)]


def _order(a: np.ndarray[Any, Any]) -> Literal["K", "C"]:
    # "K" keeps the input's axis order (a Fortran array stays Fortran) with positive strides; an
    # overlapping layout (a broadcast) gets C order, where "K" would sort its zero strides first.
    return "C" if may_overlap(a.shape, a.strides, a.itemsize) else "K"


def _numpy_copy(a: np.ndarray[Any, Any], step: Step, path: str) -> np.ndarray[Any, Any]:
    return np.array(a, dtype=a.dtype.newbyteorder("="), order=_order(a), copy=True)


def _expand(t: torch.Tensor, step: Step, path: str) -> torch.Tensor:
    return t.expand(step.arg)


def _numpy_cast(a: Leaf, step: Step, path: str) -> Leaf:
    if isinstance(a, torch.Tensor):
        raise AssertionError("numpy_cast planned on a tensor")
    # np.asanyarray keeps a masked array masked (np.asarray would drop the mask).
    return cast_array(np.asanyarray(a), step.arg, path)


def _view_as_tensor(a: np.ndarray[Any, Any], row: DtypeRow) -> torch.Tensor:
    return row.share_as_tensor(a)


def _share(a: np.ndarray[Any, Any], step: Step, path: str) -> torch.Tensor:
    return _view_as_tensor(a, step.arg)


def _flip_copy(a: np.ndarray[Any, Any], step: Step, path: str) -> torch.Tensor:
    axis, row = step.arg
    out = host_empty(tuple(a.shape), row.torch)
    reversed_into(a, axis, row, out)
    return out


def reversed_into(a: np.ndarray[Any, Any], axis: int, row: DtypeRow, out: torch.Tensor) -> None:
    """Copy ``a``, walked backwards along ``axis`` (and at most size-1 axes besides), into ``out``.

    Reversing every negatively strided axis gives a view torch accepts; index_select then
    gathers the one axis that matters back in order, straight into ``out``, many times faster
    than NumPy's element-wise copy of a short reversed inner axis (``img[..., ::-1]``). The
    gather runs on same-size integer bits: index_select lacks kernels for some dtypes. ``a``
    is only read, so read-only memory is shown to torch without its flag (see _Unflagged).
    """
    forwards = _forward(a)
    if not forwards.flags.writeable:
        forwards = np.asarray(_Unflagged(forwards)).view(forwards.dtype)
    order = torch.arange(a.shape[axis] - 1, -1, -1)
    torch.index_select(_bits(_view_as_tensor(forwards, row)), axis, order, out=_bits(out))


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The same memory as integers of the same size (complex128 as pairs of int64)."""
    if t.element_size() == 16:
        return torch.view_as_real(t).view(torch.int64)
    return t.view(torch_bits(t.dtype))


class _Unflagged:
    """The memory of a read-only array, described without its read-only flag (it keeps the array alive)."""

    def __init__(self, a: np.ndarray[Any, Any]) -> None:
        self.array = a
        face = dict(a.__array_interface__)
        face["data"] = (face["data"][0], False)
        # As raw bytes of the item size (ml_dtypes kinds have typestrs NumPy cannot parse back).
        face["typestr"] = f"|V{a.dtype.itemsize}"
        face.pop("descr", None)
        self.__array_interface__ = face


def _share_readonly(a: np.ndarray[Any, Any], step: Step, path: str) -> torch.Tensor:
    # Sharing read-only memory is what copy=False asked for (or a copy follows at once). torch
    # warns about it once per process, and a warning it gives here, even filtered, is spent:
    # the caller's own torch.from_numpy of a read-only array would then never warn. So torch
    # is shown the memory without the flag; the plan has already said it is read-only.
    unflagged = np.asarray(_Unflagged(a)).view(a.dtype)
    return _share(unflagged, step, path)


def _cast(t: torch.Tensor, step: Step, path: str) -> torch.Tensor:
    with torch.no_grad():
        return cast_tensor(t.detach(), step.arg, path)


def _pin(t: torch.Tensor, step: Step, path: str) -> torch.Tensor:
    try:
        return t.pin_memory()
    except RuntimeError as err:
        raise DeviceError(
            "to_tensor", path, f"pinning host memory failed: {err}", "Drop pin_memory=True, or free pinned memory"
        ) from err


def _clone(x: Leaf, step: Step, path: str) -> Leaf:
    if isinstance(x, torch.Tensor):
        x = x.detach()  # a copy is new data, not a step in the caller's graph (as every other copy)
        return host_copy(x) if x.device.type == "cpu" else x.clone()
    if isinstance(x, np.ma.MaskedArray):
        return x.copy(order=_order(x))  # data and mask both copied; np.array would drop the mask
    return np.array(x, order=_order(x), copy=True)


def _requires_grad(t: torch.Tensor, step: Step, path: str) -> torch.Tensor:
    # detach() gives a new tensor object, so the caller's tensor is never flagged.
    return t.detach().requires_grad_(True)


def _detach(t: torch.Tensor, step: Step, path: str) -> torch.Tensor:
    return t.detach()


def _resolve_conj(t: torch.Tensor, step: Step, path: str) -> torch.Tensor:
    return t.resolve_conj()


def _resolve_neg(t: torch.Tensor, step: Step, path: str) -> torch.Tensor:
    return t.resolve_neg()


def _to_numpy(t: torch.Tensor, step: Step, path: str) -> np.ndarray[Any, Any]:
    row: DtypeRow = step.arg
    return row.share_as_array(t)


def _adopt(x: Leaf, step: Step, path: str) -> Leaf:
    # A deferred adoption does its data work now; a free one happened while planning (see
    # tensorbridge.pipeline.leaves) and the step carries its result.
    return step.arg.run() if isinstance(step.arg, Deferred) else step.arg


def _then(x: Leaf, step: Step, path: str) -> Leaf:
    # What a deferred adoption handed over is planned now, and that plan runs at once.
    return run_plan(x, step.arg.plan(x))


EXECUTORS: Final[dict[str, Callable[[Any, Step, str], Any]]] = {
    "adopt": _adopt,
    "adopt_copy": _adopt,
    "scalar": _scalar,
    "restride": _restride,
    "numpy_copy": _numpy_copy,
    "numpy_cast": _numpy_cast,
    "share": _share,
    "share_readonly": _share_readonly,
    "flip_copy": _flip_copy,
    "compact": _compact,
    "expand": _expand,
    "cast": _cast,
    "pin": _pin,
    "clone": _clone,
    "requires_grad": _requires_grad,
    "detach": _detach,
    "resolve_conj": _resolve_conj,
    "resolve_neg": _resolve_neg,
    "to_numpy": _to_numpy,
    "then": _then,
}


def _nbytes(x: Leaf) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.numel() * x.element_size())
    return int(np.asarray(x).nbytes)


def run_plan(leaf: Leaf, plan: Plan, non_blocking: bool | None = None) -> Leaf:
    """Carry out ``plan`` on ``leaf``; raise the plan's error if it has one."""
    return run_plans([leaf], [plan], non_blocking)[0]


def run_plans(leaves: Sequence[Leaf], plans: Sequence[Plan], non_blocking: bool | None = None) -> list[Leaf]:
    """Carry out the plans of one call, their host <-> device copies together.

    Every plan's error is raised before anything runs. Each leaf then runs its steps up to
    its transfer; the transfer engine moves all of them at once (packing small leaves,
    pipelining large ones); each leaf then runs the rest of its steps.
    """
    for plan in plans:
        if plan.error is not None:
            raise plan.error
    cuts = [_transfer_at(plan) for plan in plans]
    mids = [run_steps(x, p, 0, len(p.steps) if c < 0 else c) for x, p, c in zip(leaves, plans, cuts, strict=True)]
    moving = [n for n, c in enumerate(cuts) if c >= 0]
    if moving:
        items = [(mids[n], plans[n].steps[cuts[n]].arg) for n in moving]
        for n, out in zip(moving, _move([plans[n] for n in moving], items, non_blocking), strict=True):
            mids[n] = out
    return [
        mid if c < 0 else run_steps(mid, p, c + 1, len(p.steps)) for mid, p, c in zip(mids, plans, cuts, strict=True)
    ]


def _transfer_at(plan: Plan) -> int:
    for i, step in enumerate(plan.steps):
        if step.kind in ("to_device", "to_host"):
            return i
    return -1


def _move(plans: list[Plan], items: list[tuple[torch.Tensor, Transfer]], non_blocking: bool | None) -> list[Leaf]:
    try:
        return move(items, non_blocking)
    except ConversionError:
        raise
    except (MemoryError, RuntimeError, TypeError, ValueError, AssertionError) as err:
        raise copy_failed(err, items, plans[0].path) from err


def copy_failed(err: Exception, items: Sequence[tuple[Any, Transfer]], first: str) -> ConversionError:
    """The error for a failed device copy, naming the leaf, or how many travelled together."""
    if len(items) > 1:
        packed = all(tr.route == "packed" for _, tr in items)
        first = f"data ({len(items)} leaves packed together)" if packed else f"{first} and {len(items) - 1} more leaves"
    tr = items[0][1]
    return device_error(err, first, sum(t.nbytes for _, t in items), tr.source, tr.device)


def device_error(err: Exception, path: str, nbytes: int, source: torch.device, target: torch.device) -> ConversionError:
    """The :class:`ConversionError` for an exception a device copy raised (hot paths use try/except)."""
    if isinstance(err, ConversionError):
        return err
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return OutOfMemoryError(
            "transfer",
            path,
            f"copying {nbytes} bytes to {target} ran out of memory ({err})",
            "Convert smaller pieces, or free memory on the device (torch.cuda.empty_cache())",
        )
    return DeviceError(
        "transfer",
        path,
        f"copying {nbytes} bytes from {source} to {target} failed: {err}",
        "Check that the device exists and is healthy (a failed kernel poisons later copies)",
    )


def run_steps(leaf: Leaf, plan: Plan, start: int, stop: int) -> Leaf:
    """Run ``plan.steps[start:stop]`` on ``leaf``; failures become errors naming the plan's leaf."""
    out = leaf
    for step in plan.steps[start:stop]:
        try:
            out = EXECUTORS[step.kind](out, step, plan.path)
        except ConversionError:
            raise
        except RuntimeError as err:
            if "can't allocate memory" not in str(err) and not isinstance(err, torch.OutOfMemoryError):
                raise _step_failed(plan, step, err) from err
            raise _out_of_memory(plan, step, out) from err
        except MemoryError as err:
            raise _out_of_memory(plan, step, out) from err
        except (TypeError, ValueError) as err:
            raise _step_failed(plan, step, err) from err
    return out


def _out_of_memory(plan: Plan, step: Step, leaf: Leaf) -> OutOfMemoryError:
    return OutOfMemoryError(
        "conversion",
        plan.path,
        f"step '{step}' ran out of memory (its input holds {_nbytes(leaf)} bytes)",
        "Convert smaller pieces, or pass copy=False where the layout allows sharing",
    )


def _step_failed(plan: Plan, step: Step, err: Exception) -> UnsupportedError:
    return UnsupportedError(
        "conversion",
        plan.path,
        f"step '{step}' failed: {err}",
        "Report this input to tensorbridge; convert this leaf by hand meanwhile",
    )
