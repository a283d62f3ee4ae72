"""Before any data moves, the ranks agree on what they hold, or every rank raises the same error.

Each rank describes its leaves (key paths; for each DTensor its :class:`~.placements.Layout`
and the shape of its own shard) and, if it already knows it cannot take part (its destination
exists, say), why. One ``all_gather_object`` hands every rank every description, and each rank
runs the same comparison on the same values, so all of them decide alike: all go on, or all
raise. Nothing is sent point to point before that, so a mismatch can never leave one rank
waiting for data another will not send.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from .. import errors
from ..errors import ConversionError, DistributedError, StructureError
from .comm import waiting
from .placements import Layout

__all__ = ["Held", "Problem", "Said", "agree", "exchange", "raise_any"]


@dataclass(frozen=True)
class Held:
    """One leaf as a rank describes it: its key path and, for a DTensor, its layout and its own shard's shape."""

    path: str
    layout: Layout | None = None
    local: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Problem:
    """Why a rank cannot take part, told to the others before anything moves."""

    kind: str  # the error class's name
    what: str
    path: str
    cause: str
    fix: str

    @classmethod
    def of(cls, err: ConversionError) -> Problem:
        """The problem a ConversionError states."""
        return cls(type(err).__name__, err.what, err.path, err.cause, err.fix)

    def error(self, rank: int) -> ConversionError:
        """The same error on another rank: its class, saying which rank could not take part."""
        kind = getattr(errors, self.kind, None)
        if not (isinstance(kind, type) and issubclass(kind, ConversionError)):
            kind = DistributedError
        return kind(self.what, self.path, f"rank {rank} cannot take part: {self.cause}", self.fix)


def raise_any(problems: Sequence[Problem | None], mine: ConversionError | None) -> None:
    """Raise on every rank when any rank reported a problem: its own error first, else the first rank's."""
    if mine is not None:
        raise mine
    for r, p in enumerate(problems):
        if p is not None:
            raise p.error(r)


_MAX_LISTED = 3


@dataclass(frozen=True)
class Said:
    """What one rank tells the others before anything moves."""

    call: tuple[Any, ...]  # the verb and the options that must match on every rank
    problem: Problem | None  # why this rank cannot take part, if it knows
    payload: Any  # what it holds (``Held``s), or the structure it scatters


def exchange(what: str, call: tuple[Any, ...], payload: Any, problem: ConversionError | None) -> list[Said]:
    """One ``all_gather_object`` of every rank's :class:`Said`; raise alike on every rank if they cannot go on.

    Every exchange of this package starts here, so ranks that made different calls (one
    ``to_numpy``, one ``save``; another ``dst``) meet in the same collective and all raise.

    Raises:
        StructureError: (ValueError) the ranks made different calls.
        ConversionError: the class of the problem a rank reported (that rank raises its own).
        DistributedError: (RuntimeError) a rank did not join within the group's timeout.
    """
    mine = Said(call, None if problem is None else Problem.of(problem), payload)
    every: list[Said] = [mine] * dist.get_world_size()
    with waiting(what, "data", "waiting for every rank to describe what it holds"):
        dist.all_gather_object(every, mine)
    odd = [r for r, said in enumerate(every) if said.call != every[0].call]
    if odd:
        r = odd[0]
        raise StructureError(
            what,
            "data",
            f"the ranks made different calls: rank 0 {_call_words(every[0].call)}, "
            f"rank {r} {_call_words(every[r].call)}",
            "Make the same call, with the same dst/src, on every rank of the group",
        )
    raise_any([said.problem for said in every], problem)
    return every


def _call_words(call: tuple[Any, ...]) -> str:
    return " ".join(f"{k}={v!r}" if k else str(v) for k, v in call)


def agree(what: str, call: tuple[Any, ...], held: Sequence[Held], problem: ConversionError | None = None) -> list[Said]:
    """:func:`exchange` every rank's leaves; raise alike on every rank unless they hold the same sharded data.

    A DTensor's layout must match on every rank but for the ranks of its mesh: replicas on
    sub-meshes (tensor parallel within each data-parallel group) hold the same global tensor.

    Raises:
        StructureError: (ValueError) the ranks hold different key paths, or a DTensor with
            different layouts, or a shard whose shape its placements do not give; or they made
            different calls.
        DistributedError: (RuntimeError) a rank did not join within the group's timeout, or a
            rank reported a problem (that rank raises its own error).
    """
    every = exchange(what, call, tuple(held), problem)
    found = _differences([said.payload for said in every])
    if found:
        listed = "; ".join(found[:_MAX_LISTED]) + (f"; and {len(found) - _MAX_LISTED} more" if len(found) > 3 else "")
        raise StructureError(
            what,
            "data",
            f"the ranks do not hold the same sharded data: {listed}",
            "Pass every rank the same keys, each DTensor with the same global shape, dtype, mesh and placements "
            "(DTensor.from_local on uneven shards needs shape= and stride=)",
        )
    return every


def _differences(every: Sequence[Sequence[Held]]) -> list[str]:
    """What differs between the ranks' descriptions, in words (empty when they agree)."""
    found: list[str] = []
    by_rank = [{h.path: h for h in held} for held in every]
    first = by_rank[0]
    for r, mine in enumerate(by_rank[1:], start=1):
        for path in sorted(first.keys() - mine.keys()):
            found.append(f"rank 0 has {path} and rank {r} does not")
        for path in sorted(mine.keys() - first.keys()):
            found.append(f"rank {r} has {path} and rank 0 does not")
        for path in sorted(first.keys() & mine.keys()):
            a, b = first[path].layout, mine[path].layout
            if (a is None) != (b is None) or (a is not None and b is not None and not a.same_as(b)):
                found.append(f"{path} is {_words(a)} on rank 0 and {_words(b)} on rank {r}")
    for r, mine in enumerate(by_rank):
        for h in mine.values():
            lay = h.layout
            if lay is None or not lay.boxes or h.local is None:
                continue
            coord = lay.coordinate(r)
            if coord is None:
                continue
            expected = lay.box(coord)[1]
            if h.local != expected:
                found.append(
                    f"{h.path} on rank {r} holds a shard of shape {h.local}, and {_words(lay)} gives it {expected}"
                )
    return sorted(set(found), key=found.index)


def _words(lay: Layout | None) -> str:
    return "not a DTensor" if lay is None else f"a DTensor ({lay.describe()})"
