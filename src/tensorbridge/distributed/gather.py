"""Gathering DTensors onto one rank, one leaf at a time, or onto every rank.

The ranks first agree on what they hold (``agree.py``). Then, with ``dst`` a rank, that rank
drives: for each DTensor it asks the rank that holds each block of it (one per distinct block,
itself where it holds one) for its shard, by index, and receives it straight into the global
tensor, so it holds at most the tensor being assembled beyond what it returns; every other
rank only answers requests, sending its local shard as it is, until told it is done. Because
the requests carry the leaf's index, ``dst`` may take the leaves in any order (a file writer's).
Layouts whose shards are not blocks (``Partial``, ``_StridedShard``) are assembled by DTensor's
own ``full_tensor()``, which every rank of the mesh calls when asked. If ``dst`` fails midway it
tells the others, which raise instead of waiting. With ``dst=None`` every rank calls
``full_tensor()`` on each DTensor, in the same (sorted) order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from ..errors import ConversionError, DistributedError, StructureError
from ..tree import format_path, iter_leaves, map_leaves
from .agree import Held, agree
from .comm import ABORT, DONE, rank_and_world, recv_into, recv_word, send_from, send_word, waiting
from .placements import Layout, layout_of, region

__all__ = ["Finished", "Gathering", "gather_leaves", "held_of", "layout_words", "unwrap"]


def held_of(data: Any) -> tuple[list[Held], dict[str, DTensor]]:
    """Describe every leaf of ``data`` for :func:`~.agree.agree`; the DTensors by key path."""
    held: list[Held] = []
    found: dict[str, DTensor] = {}
    for path, leaf in iter_leaves(data, lambda _: True):
        name = format_path(path)
        if isinstance(leaf, DTensor):
            found[name] = leaf
            held.append(Held(name, layout_of(leaf), tuple(leaf.to_local().shape)))
        else:
            held.append(Held(name))
    return held, found


@dataclass
class Gathering:
    """One agreed gathering: what ``dst`` fetches and what the other ranks answer.

    Attributes:
        what: the verb, for messages (``to_numpy``, ``saving``).
        dst: the rank that receives, or None for every rank.
        rank: this rank.
        world: the number of ranks.
        found: this rank's DTensors by key path.
    """

    what: str
    dst: int | None
    rank: int
    world: int
    found: dict[str, DTensor]

    def __post_init__(self) -> None:
        self.order = sorted(self.found)
        self.index = {path: i for i, path in enumerate(self.order)}
        self.layouts = {path: layout_of(t) for path, t in self.found.items()}

    @classmethod
    def start(cls, what: str, data: Any, dst: int | None, problem: ConversionError | None = None) -> Gathering:
        """Agree with the other ranks on ``data`` (every rank calls this); raise on every rank alike."""
        rank, world = rank_and_world(what, "data")
        if dst is not None and not 0 <= dst < world and problem is None:
            problem = StructureError(what, "dst", f"dst={dst} names no rank of this group of {world}", "Pass 0 or None")
        held: list[Held] = []
        found: dict[str, DTensor] = {}
        try:
            held, found = held_of(data)
        except ConversionError as err:  # a structure that cannot be walked: told, not left to time out
            problem = problem or err
        every = agree(what, (("", what), ("dst", dst)), held, problem)
        out = cls(what, dst, rank, world, found)
        if dst is None:
            return out
        for h in every[dst].payload:  # dst's own layouts: every rank decides alike
            lay = h.layout
            if lay is not None and not lay.boxes and dst not in lay.mesh_ranks:
                raise StructureError(
                    what,
                    h.path,
                    f"its placements are assembled by the ranks of its mesh {list(lay.mesh_ranks)}, and dst={dst} "
                    "is not one of them",
                    "Pass dst= a rank of that mesh, or redistribute the tensor to Shard/Replicate placements",
                )
        return out

    @property
    def receiving(self) -> bool:
        """True on the rank(s) that get the full tensors."""
        return self.dst is None or self.dst == self.rank

    def fetch(self, path: str) -> torch.Tensor:
        """The full tensor at ``path``, assembled on ``dst`` (on the host, or where ``full_tensor`` leaves it)."""
        t, lay = self.found[path], self.layouts[path]
        i = self.index[path]
        with torch.no_grad(), waiting(self.what, path, f"gathering {path} from the other ranks"):
            if not lay.boxes:
                for r in lay.mesh_ranks:
                    if r != self.rank:
                        send_word(i, r)
                return t.full_tensor()
            out = torch.empty(lay.shape, dtype=t.dtype)
            for owner, box in lay.owners(prefer=self.rank):
                if owner == self.rank:
                    region(out, box).copy_(t.to_local())
                else:
                    send_word(i, owner)
                    recv_into(region(out, box), owner)
            return out

    def finish(self, ok: bool) -> None:
        """Tell the other ranks that ``dst`` is done (or failed); they stop answering."""
        for r in range(self.world):
            if r != self.rank:
                send_word(DONE if ok else ABORT, r)

    def serve(self) -> None:
        """Answer ``dst``'s requests until it is done (every rank but ``dst`` calls this)."""
        assert self.dst is not None
        while True:
            with waiting(self.what, "data", f"waiting for rank {self.dst} to ask for the next shard"):
                word = recv_word(self.dst)
            if word == DONE:
                return
            if word == ABORT:
                raise DistributedError(
                    self.what,
                    "data",
                    f"rank {self.dst} stopped gathering before the end (its own error says why)",
                    f"Fix what rank {self.dst} reports, then call again on every rank",
                )
            path = self.order[word]
            t, lay = self.found[path], self.layouts[path]
            with torch.no_grad(), waiting(self.what, path, f"sending {path} to rank {self.dst}"):
                if lay.boxes:
                    send_from(t.to_local(), self.dst)
                else:
                    t.full_tensor()  # a collective every rank of the mesh joins; dst keeps the result

    def all_full(self, finish: Callable[[torch.Tensor, str], Any]) -> dict[str, Any]:
        """``finish`` of every DTensor's ``full_tensor()``, taken in the same order on every rank (``dst=None``).

        Each full tensor is finished (converted) before the next is gathered, so no rank holds
        more than one beyond the results.
        """
        out: dict[str, Any] = {}
        for path in self.order:
            with torch.no_grad(), waiting(self.what, path, f"gathering {path} on every rank"):
                full = self.found[path].full_tensor()
            out[path] = finish(full, path)
            del full
        return out

    @contextlib.contextmanager
    def driving(self) -> Iterator[Callable[[str], torch.Tensor]]:
        """On ``dst``: gives :meth:`fetch`, then tells the others whether the block went well."""
        try:
            yield self.fetch
        except BaseException:
            with contextlib.suppress(RuntimeError, ConnectionError):
                self.finish(ok=False)  # the original error says more than a failed goodbye
            raise
        self.finish(ok=True)


class Finished:
    """A gathered leaf already converted, carried through the rest of the conversion untouched."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def gather_leaves(what: str, data: Any, dst: int | None, finish: Callable[[torch.Tensor, str], Any]) -> Any:
    r"""``data`` with each DTensor replaced by ``Finished(finish(full tensor, path))`` on ``dst``, None elsewhere.

    ``dst=None``: on every rank. Each full tensor is finished as soon as it arrives, so a rank
    holds at most one beyond the results. Every rank must call it with the same structure;
    other leaves are left as they are (the caller converts them, then :func:`unwrap`\ s). Without
    a process group nothing can be sharded, and ``data`` is returned as it is.
    """
    if not dist.is_initialized():
        return data
    g = Gathering.start(what, data, dst)
    if not g.found:
        return data
    if g.dst is None:
        done = g.all_full(finish)
        return map_leaves(lambda x, p: Finished(done[format_path(p)]) if isinstance(x, DTensor) else x, data)
    if not g.receiving:
        g.serve()
        return map_leaves(lambda x, p: None if isinstance(x, DTensor) else x, data)

    arrived: dict[int, Finished] = {}  # by the DTensor's id: one DTensor under two keys (tied weights) stays one

    def one(x: Any, p: Any) -> Any:
        if not isinstance(x, DTensor):
            return x
        if id(x) not in arrived:
            path = format_path(p)
            arrived[id(x)] = Finished(finish(fetch(path), path))
        return arrived[id(x)]

    with g.driving() as fetch:
        return map_leaves(one, data)


def unwrap(data: Any) -> Any:
    """``data`` with every :class:`Finished` leaf replaced by its value."""
    return map_leaves(lambda x, p: x.value if type(x) is Finished else x, data)


def layout_words(t: DTensor, rank: int) -> str:
    """Where this rank's shard lies in the global tensor, in words (``shards='local'`` in plans)."""
    lay: Layout = layout_of(t)
    coord = lay.coordinate(rank)
    if coord is None:
        return f"this rank ({rank}) is not in the mesh of this DTensor ({lay.describe()})"
    if not lay.boxes:
        return f"rank {rank}'s local tensor at mesh coordinate {coord} ({lay.describe()}): not one block of it"
    offsets, sizes = lay.box(coord)
    return f"rank {rank}'s shard at mesh coordinate {coord}: offsets {offsets}, shape {sizes} of {lay.describe()}"
