"""Planning host <-> device copies: which route each leaf takes, and which small leaves travel together.

Routes (the engine in ``transfer/engine.py`` carries them out):

- ``direct``: torch's own ``.to()``. For a lone small leaf (packing costs more than it saves),
  empty leaves, device-to-device moves and devices without a staging engine (MPS).
- ``pinned``: the host memory is already page-locked, so one copy goes straight over the link.
- ``staged``: a large pageable leaf moves in chunks through a small ring of reusable pinned
  buffers, host threads filling the next chunks while earlier ones are on the wire.
- ``packed``: many small leaves share one pinned buffer and one copy; on the far side each
  becomes a view of one allocation per group (at most ``chunk_bytes``).

Routes are decided in two passes: :func:`route_for` per leaf, then :func:`assign_routes` over
the whole call, since packing is worth it only when enough small leaves travel together.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import torch

from ..dtypes import torch_bits
from ..transfer.config import TransferConfig
from .core import Plan, Step

__all__ = [
    "PACK_ALIGN",
    "Transfer",
    "assign_routes",
    "assign_transfers",
    "decide_route",
    "direction_of",
    "format_bytes",
    "is_small",
    "pack_groups",
    "pack_layout",
    "route_for",
    "transfer_of",
    "wire_dtype",
    "with_transfer",
]

Route = Literal["direct", "pinned", "staged", "packed", "small"]
Direction = Literal["h2d", "d2h", "d2d"]
# Each dtype run in a packed buffer starts on a 64-byte boundary: every element is then
# aligned for its size on both sides, and vectorized device kernels get aligned pointers.
PACK_ALIGN: Final = 64
TRANSFER_STEPS: Final = frozenset({"to_device", "to_host"})


# Bytes travel as integers of the element's size: every kernel the engine needs (cat, copy)
# exists for these, and the bits are untouched.
def wire_dtype(dtype: torch.dtype) -> torch.dtype:
    """The same-size type ``dtype``'s bits travel as (``bfloat16`` -> ``int16``; 16 bytes as complex128)."""
    return torch.complex128 if dtype.itemsize == 16 else torch_bits(dtype)


@dataclass(slots=True)
class Transfer:
    """One leaf's copy between host and device, as planned (never modified: :meth:`routed` makes a new one).

    Not frozen: a call with many small leaves makes one per leaf, and a frozen dataclass costs
    ~1 us to build.

    Attributes:
        device: where the data goes (``cpu`` for device-to-host).
        source: where it comes from.
        direction: ``h2d``, ``d2h`` or ``d2d``.
        nbytes: bytes on the wire.
        route: see the module docstring; ``small`` until :func:`assign_routes` picks
            ``packed`` or ``direct``.
        chunks: how many staging chunks a ``staged`` leaf takes.
        group: the packed group's number; ``group_leaves``/``group_bytes`` describe it.
        dtype: the element type on the wire (a packed group keeps each dtype's leaves together).
    """

    device: torch.device
    source: torch.device
    direction: Direction
    nbytes: int
    route: Route
    chunks: int = 1
    group: int = -1
    group_leaves: int = 0
    group_bytes: int = 0
    dtype: torch.dtype = torch.uint8
    host_check: Callable[[Any], bool] | None = field(default=None, compare=False, repr=False)
    lane: int = field(default=-1, compare=False, repr=False)
    """The number of (direction, source, device): leaves of one lane may be packed together."""
    """Asks whether a leaf's host memory is page-locked (None: never asked); kept for leaves of the same kind."""

    def routed(self, route: Route, group: int = -1, group_leaves: int = 0, group_bytes: int = 0) -> Transfer:
        """This copy with its route (and packed group) decided."""
        return Transfer(
            self.device,
            self.source,
            self.direction,
            self.nbytes,
            route,
            self.chunks,
            group,
            group_leaves,
            group_bytes,
            self.dtype,
            self.host_check,
            self.lane,
        )

    def describe(self, cfg: TransferConfig) -> str:
        """Say how this copy travels, for ``explain()``."""
        size = format_bytes(self.nbytes)
        if self.route == "staged":
            ring = min(cfg.ring, self.chunks)
            host = "pageable host memory" if self.direction == "h2d" else "a new host array"
            return (
                f"staged: {size} in {self.chunks} chunk(s) of {format_bytes(cfg.chunk_bytes)} through "
                f"{ring} pinned buffer(s), host threads copying to/from {host} while chunks are on the wire; "
                "2 copies"
            )
        if self.route == "packed":
            return (
                f"packed: {size} with {self.group_leaves - 1} other leaves into one pinned buffer "
                f"(group {self.group}, {format_bytes(self.group_bytes)}), one copy for the group; "
                f"the results of the group share one {'device' if self.direction == 'h2d' else 'host'} allocation"
            )
        if self.route == "pinned":
            return f"pinned: {size} already page-locked, one copy straight over the link"
        why = "torch's own copy"
        if self.nbytes == 0:
            why += " of an empty leaf"
        elif self.direction == "d2d":
            why += " between devices"
        return f"direct: {size}, {why}"


def format_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def is_small(nbytes: int, cfg: TransferConfig) -> bool:
    """Whether a leaf of ``nbytes`` is small enough to be packed with others (the one rule).

    Example:
        >>> from tensorbridge.transfer.config import TransferConfig
        >>> is_small(16384, TransferConfig(small_max_bytes=65536, chunk_bytes=4096))
        False
    """
    return nbytes <= cfg.small_max_bytes and nbytes <= cfg.chunk_bytes


def route_for(
    source: torch.device,
    target: torch.device,
    nbytes: int,
    dtype: torch.dtype,
    *,
    pinned: bool,
    staging: bool,
    cfg: TransferConfig,
) -> Transfer:
    """Choose one leaf's route before the call's other leaves are known.

    Args:
        source: the leaf's device.
        target: where it goes.
        nbytes: bytes that will travel.
        dtype: the element type that travels.
        pinned: whether the host side is already page-locked (host to device only).
        staging: whether the device's backend has a staging engine (CUDA does; MPS does not).
        cfg: the transfer settings.

    Example:
        >>> import torch
        >>> from tensorbridge.transfer.config import TransferConfig
        >>> cfg = TransferConfig(chunk_bytes=1 << 20)
        >>> t = route_for(torch.device("cpu"), torch.device("cuda:0"), 5 << 20, torch.float32,
        ...               pinned=False, staging=True, cfg=cfg)
        >>> t.route, t.chunks
        ('staged', 5)
    """
    direction = direction_of(source, target)
    return decide_route(direction, source, target, nbytes, dtype, pinned=pinned, staging=staging, cfg=cfg)


def direction_of(source: torch.device, target: torch.device) -> Direction:
    """``h2d``, ``d2h`` or ``d2d`` (each ``torch.device.type`` costs ~0.2 us: asked once).

    Example:
        >>> import torch
        >>> direction_of(torch.device("cpu"), torch.device("cuda", 0))
        'h2d'
    """
    if source.type == "cpu":
        return "h2d"
    return "d2h" if target.type == "cpu" else "d2d"


def decide_route(
    direction: Direction,
    source: torch.device,
    target: torch.device,
    nbytes: int,
    dtype: torch.dtype,
    *,
    pinned: bool,
    staging: bool,
    cfg: TransferConfig,
    host_check: Callable[[Any], bool] | None = None,
    lane: int = -1,
) -> Transfer:
    """The one route rule (see :func:`route_for`), for a copy whose direction is known."""
    if lane < 0:
        lane = lane_of(direction, source, target)
    if direction == "d2d" or not staging or nbytes == 0:
        return Transfer(target, source, direction, nbytes, "direct", 1, -1, 0, 0, dtype, host_check, lane)
    if pinned and direction == "h2d":
        return Transfer(target, source, direction, nbytes, "pinned", 1, -1, 0, 0, dtype, host_check, lane)
    if is_small(nbytes, cfg):
        return Transfer(target, source, direction, nbytes, "small", 1, -1, 0, 0, dtype, host_check, lane)
    chunks = math.ceil(nbytes / cfg.chunk_bytes)
    return Transfer(target, source, direction, nbytes, "staged", chunks, -1, 0, 0, dtype, host_check, lane)


_LANES: dict[tuple[str, torch.device, torch.device], int] = {}


def lane_of(direction: str, source: torch.device, target: torch.device) -> int:
    """A small number for (direction, source, target), so grouping leaves hashes no device objects.

    Example:
        >>> import torch
        >>> cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
        >>> lane_of("h2d", cpu, gpu) == lane_of("h2d", torch.device("cpu"), torch.device("cuda:0"))
        True
    """
    key = (direction, source, target)
    lane = _LANES.get(key)
    if lane is None:
        lane = _LANES.setdefault(key, len(_LANES))
    return lane


def pack_layout(members: Sequence[tuple[torch.dtype, int]]) -> tuple[list[int], int]:
    """Lay out packed leaves in one buffer: offsets in the members' order, and the total size.

    Leaves of one dtype sit back to back (so one ``torch.cat`` packs them on a device), each
    dtype's run starting on a :data:`PACK_ALIGN` boundary, runs in order of first appearance.

    Example:
        >>> import torch
        >>> pack_layout([(torch.float32, 8), (torch.uint8, 3), (torch.float32, 4)])
        ([0, 64, 8], 67)
    """
    runs: dict[torch.dtype, list[int]] = {}
    for i, (dtype, _) in enumerate(members):
        runs.setdefault(dtype, []).append(i)
    offsets = [0] * len(members)
    end = 0
    for indices in runs.values():
        end = -(-end // PACK_ALIGN) * PACK_ALIGN
        for i in indices:
            offsets[i] = end
            end += members[i][1]
    return offsets, end


def _transfer_index(plan: Plan) -> int:
    for i, step in enumerate(plan.steps):
        if step.kind in TRANSFER_STEPS and isinstance(step.arg, Transfer):
            return i
    return -1


def assign_transfers(transfers: Sequence[Transfer | None], cfg: TransferConfig) -> list[Transfer | None]:
    """Decide the ``small`` routes of one call: packed in groups when enough travel together, else direct.

    Leaves are packed per (direction, source, target) in walk order, a group closing when the
    next leaf would take it past ``chunk_bytes``. ``None`` marks a leaf that does not travel.
    """
    small: dict[int, list[int]] = {}
    for n, tr in enumerate(transfers):
        if tr is not None and tr.route == "small":
            small.setdefault(tr.lane, []).append(n)
    out = list(transfers)
    group = 0
    for members in small.values():
        if len(members) < cfg.pack_min_leaves:
            for n in members:
                out[n] = transfers[n].routed("direct")  # type: ignore[union-attr]
            continue
        trs: list[Transfer] = [transfers[n] for n in members]  # type: ignore[misc]
        for chunk in pack_groups([(t.dtype, t.nbytes) for t in trs], cfg.chunk_bytes):
            _, total = pack_layout([(trs[k].dtype, trs[k].nbytes) for k in chunk])
            for k in chunk:
                out[members[k]] = trs[k].routed("packed", group, len(chunk), total)
            group += 1
    return out


def transfer_of(plan: Plan) -> Transfer | None:
    """The plan's host <-> device copy, or None."""
    i = _transfer_index(plan)
    if i < 0:
        return None
    tr: Transfer = plan.steps[i].arg
    return tr


def with_transfer(plan: Plan, tr: Transfer | None, cfg: TransferConfig) -> Plan:
    """``plan`` with its transfer step replaced by ``tr`` (routed by :func:`assign_transfers`)."""
    i = _transfer_index(plan)
    if i < 0 or tr is None or plan.steps[i].arg is tr:
        return plan
    old = plan.steps[i]
    steps = (*plan.steps[:i], Step(old.kind, _why(tr, cfg), tr), *plan.steps[i + 1 :])
    return dataclasses.replace(plan, steps=steps)


def assign_routes(plans: Sequence[Plan], cfg: TransferConfig) -> list[Plan]:
    """:func:`assign_transfers` over whole plans (each transfer step rewritten with its route)."""
    routed = assign_transfers([transfer_of(p) for p in plans], cfg)
    return [with_transfer(p, tr, cfg) for p, tr in zip(plans, routed, strict=True)]


def pack_groups(members: Sequence[tuple[torch.dtype, int]], limit: int) -> list[list[int]]:
    """Split packed leaves (in order) into groups whose :func:`pack_layout` fits ``limit`` bytes.

    Counts a full :data:`PACK_ALIGN` of padding per dtype run, an upper bound of what
    :func:`pack_layout` adds, so one pass suffices.

    Example:
        >>> import torch
        >>> pack_groups([(torch.int32, 40), (torch.int32, 40), (torch.uint8, 10)], limit=160)
        [[0, 1], [2]]
    """
    groups: list[list[int]] = [[]]
    used = 0
    dtypes: set[torch.dtype] = set()
    for k, (dtype, nbytes) in enumerate(members):
        extra = nbytes + (0 if dtype in dtypes else PACK_ALIGN)
        if groups[-1] and used + extra > limit:
            groups.append([])
            used, dtypes = 0, set()
            extra = nbytes + PACK_ALIGN
        groups[-1].append(k)
        used += extra
        dtypes.add(dtype)
    return groups


def _why(tr: Transfer, cfg: TransferConfig) -> str:
    return f"to {tr.device}, {tr.describe(cfg)}"
