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

import torch.distributed as dist

from .. import errors
from ..errors import ConversionError, DistributedError, StructureError
from .comm import waiting
from .placements import Layout

__all__ = ["Held", "Problem", "agree", "raise_any"]


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


def agree(
    what: str, held: Sequence[Held], problem: ConversionError | None = None
) -> list[tuple[tuple[Held, ...], Problem | None]]:
    """Exchange every rank's description; return them all (by rank), or raise on every rank alike.

    Raises:
        StructureError: (ValueError) the ranks hold different key paths, or a DTensor with
            different layouts, or a shard whose shape its placements do not give.
        DistributedError: (RuntimeError) a rank did not join within the group's timeout, or a
            rank reported a problem (that rank raises its own error).
    """
    mine = (tuple(held), None if problem is None else Problem.of(problem))
    every: list[tuple[tuple[Held, ...], Problem | None]] = [mine] * dist.get_world_size()
    with waiting(what, "data", "waiting for every rank to describe what it holds"):
        dist.all_gather_object(every, mine)
    raise_any([p for _, p in every], problem)
    found = _differences(what, [h for h, _ in every])
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


def _differences(what: str, every: Sequence[Sequence[Held]]) -> list[str]:
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
            if a != b:
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
