"""Where each rank's shard of a DTensor lies in the global tensor: pure arithmetic, no communication.

A DTensor's layout is its global shape, its mesh (the global rank at every mesh coordinate)
and one placement per mesh dimension. :class:`Layout` holds that, read from metadata only, in
plain Python values, so ranks can compare layouts and every rank can say which box of the
global tensor any other rank holds.

``Shard(d)`` splits dimension ``d`` the way ``torch.chunk`` does (chunks of ``ceil(n / k)``,
the last ones smaller or empty), mesh dimension by mesh dimension, left to right, exactly as
``torch.distributed.tensor`` does; ``Replicate()`` leaves it whole. Layouts made of those two
are **boxes**: every rank's shard is one rectangular block, moved point to point. Any other
placement (``Partial`` sums, ``_StridedShard`` from FSDP2 + tensor parallel) is not a box of its
own: such tensors are assembled by DTensor's own collective (``full_tensor()``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard

__all__ = ["Box", "Layout", "chunk", "layout_of", "layout_on", "placement_spec", "region"]

_T = TypeVar("_T", torch.Tensor, "np.ndarray[Any, Any]")

#: A block of the global tensor: (offsets, sizes), one of each per dimension.
Box = tuple[tuple[int, ...], tuple[int, ...]]

#: One placement, as plain values: ("shard", dim), ("replicate",), or ("other", its repr).
Spec = tuple[Any, ...]


def placement_spec(p: object) -> Spec:
    """A placement as plain, comparable values.

    Example:
        >>> placement_spec(Shard(1)), placement_spec(Replicate())
        (('shard', 1), ('replicate',))
    """
    if type(p) is Shard:  # exactly: _StridedShard was a Shard subclass in older torch
        return ("shard", p.dim)
    if type(p) is Replicate:
        return ("replicate",)
    return ("other", repr(p))


def chunk(size: int, parts: int, index: int) -> tuple[int, int]:
    """``(offset, length)`` of chunk ``index`` when ``torch.chunk`` splits ``size`` into ``parts``.

    Example:
        >>> [chunk(10, 4, i) for i in range(4)]
        [(0, 3), (3, 3), (6, 3), (9, 1)]
        >>> chunk(2, 4, 3)
        (2, 0)
    """
    step = -(-size // parts)
    start = min(step * index, size)
    return start, min(size, start + step) - start


@dataclass(frozen=True)
class Layout:
    """A DTensor's global shape, dtype, mesh and placements, as plain values ranks can compare.

    Attributes:
        shape: the global shape.
        dtype: the dtype's name (``"bfloat16"``).
        mesh_shape: the mesh's shape.
        mesh_ranks: the global rank at each mesh coordinate, in row-major order.
        placements: one :func:`placement_spec` per mesh dimension.
    """

    shape: tuple[int, ...]
    dtype: str
    mesh_shape: tuple[int, ...]
    mesh_ranks: tuple[int, ...]
    placements: tuple[Spec, ...]

    def same_as(self, other: Layout) -> bool:
        """The same global tensor laid out alike, maybe on another mesh's ranks (a replica's sub-mesh)."""
        mine = (self.shape, self.dtype, self.mesh_shape, self.placements)
        return mine == (other.shape, other.dtype, other.mesh_shape, other.placements)

    @property
    def boxes(self) -> bool:
        """True when every rank's shard is one block (only ``Shard`` and ``Replicate``)."""
        return all(p[0] != "other" for p in self.placements)

    def coordinate(self, rank: int) -> tuple[int, ...] | None:
        """The mesh coordinate of global ``rank``, or None when it is not in the mesh."""
        try:
            flat = self.mesh_ranks.index(rank)
        except ValueError:
            return None
        coord = []
        for size in reversed(self.mesh_shape):
            coord.append(flat % size)
            flat //= size
        return tuple(reversed(coord))

    def box(self, coord: Sequence[int]) -> Box:
        """The block of the global tensor held at mesh coordinate ``coord`` (box layouts only).

        Example:
            >>> lay = Layout((10, 4), "float32", (2, 2), (0, 1, 2, 3), (("shard", 0), ("shard", 1)))
            >>> lay.box((1, 0))
            ((5, 0), (5, 2))
        """
        offsets, sizes = [0] * len(self.shape), list(self.shape)
        for mesh_dim, p in enumerate(self.placements):
            if p[0] == "shard":
                dim = p[1]
                start, length = chunk(sizes[dim], self.mesh_shape[mesh_dim], coord[mesh_dim])
                offsets[dim] += start
                sizes[dim] = length
        return tuple(offsets), tuple(sizes)

    def owners(self, prefer: int | None) -> list[tuple[int, Box]]:
        """One rank per distinct non-empty block, with its block: ``prefer`` where it holds one, else the lowest.

        Example:
            >>> lay = Layout((4,), "int64", (2, 2), (0, 1, 2, 3), (("replicate",), ("shard", 0)))
            >>> lay.owners(prefer=3)
            [(0, ((0,), (2,))), (3, ((2,), (2,)))]
        """
        holders: dict[Box, list[int]] = {}
        for flat, coord in enumerate(itertools.product(*map(range, self.mesh_shape))):
            b = self.box(coord)
            if all(b[1]):
                holders.setdefault(b, []).append(self.mesh_ranks[flat])
        return [(prefer if prefer in ranks else min(ranks), b) for b, ranks in holders.items()]

    def describe(self) -> str:
        """The layout in words, for plans and messages."""
        names = ", ".join(_spec_words(p) for p in self.placements)
        mesh = f"mesh {self.mesh_shape} ranks {list(self.mesh_ranks)}"
        return f"{self.dtype} global shape {self.shape} on {mesh} [{names}]"


def _spec_words(p: Spec) -> str:
    if p[0] == "shard":
        return f"Shard(dim={p[1]})"
    if p[0] == "replicate":
        return "Replicate()"
    return str(p[1])


def layout_on(
    mesh: DeviceMesh,
    placements: Sequence[object],
    shape: Sequence[int],
    dtype: torch.dtype,
    ranks: tuple[int, ...] | None = None,
) -> Layout:
    """The layout of a tensor of ``shape`` placed on ``mesh`` (or on a mesh of its shape holding ``ranks``)."""
    if ranks is None:
        ranks = tuple(int(r) for r in mesh.mesh.flatten().tolist())
    specs = tuple(placement_spec(p) for p in placements)
    return Layout(tuple(shape), str(dtype).removeprefix("torch."), tuple(mesh.mesh.shape), ranks, specs)


def layout_of(t: DTensor) -> Layout:
    """The layout of a DTensor, from its metadata only."""
    return layout_on(t.device_mesh, t.placements, t.shape, t.dtype)


def region(t: _T, box: Box) -> _T:
    """The view of ``t`` (a global-shaped tensor or array) that ``box`` covers."""
    offsets, sizes = box
    return t[tuple(slice(o, o + s) for o, s in zip(offsets, sizes, strict=True))]
