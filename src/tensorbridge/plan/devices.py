"""Device facts for the planner: which devices exist and hold which dtypes, and the copy steps.

``resolve_device`` checks a device against its backend; ``route_transfer`` makes one leaf's copy
with its route (the rule is :func:`~tensorbridge.plan.routes.decide_route`); ``transfer_step``
and ``device_steps`` are the plan steps that carry a copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal

import torch

from ..errors import DeviceError
from ..options import ToTensorOptions
from ..transfer.config import TransferConfig, current
from ..transfer.devices import backend_for
from .core import Step
from .routes import Direction, Transfer, _why, decide_route, direction_of, is_small, wire_dtype

__all__ = ["device_steps", "needs_device", "resolve_device", "route_transfer", "transfer_step"]

_INSTALL_FIX: Final = {
    "cuda": "Use device='cpu', or install a CUDA build of torch",
    "mps": "Use device='cpu'; MPS needs Apple silicon, macOS 12.3+ and a torch built with MPS",
}


def resolve_device(device: torch.device, path: str, what: str, dtype: torch.dtype) -> torch.device:
    """Check that ``device`` exists and can hold ``dtype``; fill in its index.

    Raises:
        DeviceError: (RuntimeError) the device type is not available, the index does not
            exist, or the device lacks the dtype (float64 on MPS).
    """
    backend = backend_for(device.type)
    if backend is None:
        return device  # cpu, or a type torch handles alone: its own .to() reports problems
    name = device.type.upper()
    if not backend.available():
        raise DeviceError(
            what,
            path,
            f"device {device} was asked for but {name} is not available (torch {torch.__version__})",
            _INSTALL_FIX.get(device.type, "Use device='cpu'"),
        )
    count = backend.device_count()
    if (device.index or 0) >= count:
        raise DeviceError(
            what,
            path,
            f"device {device} does not exist (this machine has {count} {name} device{'s' * (count != 1)})",
            f"Pick an index below {count}",
        )
    problem = backend.unsupported(dtype)
    if problem is not None:
        raise DeviceError(
            what,
            path,
            f"{problem}, so {str(dtype).removeprefix('torch.')} cannot be moved to {device}",
            "Pass dtype=torch.float32 (complex64 for complex data) to cast on the way",
        )
    return backend.resolve(device)


def needs_device(target: torch.device, current: torch.device) -> bool:
    """Whether data on ``current`` must move to reach ``target`` (both with their indices resolved)."""
    if target.type != current.type:
        return True
    return target.index is not None and target.index != (current.index or 0)


def route_transfer(
    source: torch.device,
    target: torch.device,
    nbytes: int,
    dtype: torch.dtype,
    host_check: Callable[[Any], bool] | None,
    host: Any,
    cfg: TransferConfig,
    *,
    direction: Direction | None = None,
    staging: bool | None = None,
    lane: int = -1,
) -> Transfer:
    """One leaf's copy and its route; the page-lock check runs only where it picks the route.

    Args:
        source: where the data is.
        target: where it goes.
        nbytes: bytes that travel.
        dtype: their dtype (they travel as same-size integers).
        host_check: asks whether ``host``'s memory is page-locked, or None (never).
        host: the host-side leaf.
        cfg: the transfer settings.
        direction: the copy's direction, if known (leaves of one kind share it).
        staging: whether the device's backend stages copies, if known.
        lane: see :func:`lane_of`, if known.
    """
    if direction is None or staging is None:
        direction = direction_of(source, target)
        backend = backend_for(target.type if direction == "h2d" else source.type)
        staging = backend is not None and backend.staging
    asked = staging and host_check is not None and direction == "h2d" and not is_small(nbytes, cfg)
    pinned = asked and host_check(host)  # type: ignore[misc]  # asked implies a check
    return decide_route(
        direction,
        source,
        target,
        nbytes,
        wire_dtype(dtype),
        pinned=pinned,
        staging=staging,
        cfg=cfg,
        host_check=host_check,
        lane=lane,
    )


def transfer_step(
    kind: Literal["to_device", "to_host"],
    source: torch.device,
    target: torch.device,
    nbytes: int,
    dtype: torch.dtype,
    host_check: Callable[[Any], bool] | None = None,
    host: Any = None,
) -> Step:
    """The step that moves ``nbytes`` of ``dtype`` from ``source`` to ``target``, with its route."""
    cfg = current()
    tr = route_transfer(source, target, nbytes, dtype, host_check, host, cfg)
    return Step(kind, _why(tr, cfg), tr)


def device_steps(
    opts: ToTensorOptions,
    source: torch.device,
    target: torch.device | None,
    path: str,
    *,
    nbytes: int,
    dtype: torch.dtype,
    host_check: Callable[[Any], bool] | None,
    host: Any,
) -> list[Step]:
    """The device move and pinning steps of ``to_tensor``, after any cast on the source side.

    Args:
        opts: the call's options.
        source: where the data is.
        target: ``opts.device`` resolved by :func:`resolve_device`, or None.
        path: the leaf's key path, for errors.
        nbytes: the bytes that would travel.
        dtype: their dtype.
        host_check: asks whether ``host``'s memory is page-locked (only where that picks the route).
        host: the host-side leaf.
    """
    steps = []
    if target is not None and needs_device(target, source):
        steps.append(transfer_step("to_device", source, target, nbytes, dtype, host_check, host))
    if opts.pin_memory:
        if opts.device is not None and opts.device.type != "cpu":
            raise DeviceError(
                "to_tensor",
                path,
                f"pin_memory=True asks for pinned host memory, but device is {opts.device}",
                "Drop pin_memory, or leave device unset",
            )
        cuda = backend_for("cuda")
        if cuda is None or not cuda.available():
            raise DeviceError(
                "to_tensor",
                path,
                "pin_memory=True needs CUDA, which is not available",
                "Drop pin_memory=True on machines without a GPU",
            )
        steps.append(Step("pin", "page-locked host memory for fast GPU copies"))
    return steps
