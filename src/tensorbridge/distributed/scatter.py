"""NumPy arrays to DTensors: each rank allocates only its own shard.

``src`` a rank: that rank holds the data. It tells the others the structure (containers, key
paths, each leaf's shape and dtype, with the values left out) and each rank says whether it can
take part; only then, leaf by leaf in that structure's order, ``src`` converts the leaf (the
ordinary pipeline: checked casts, zero-copy where it can) and sends every other rank its block,
which that rank receives into memory of exactly its shard's size. ``src=None``: every rank
holds the same data (a memory map is fine) and slices its own block out of it, with no
communication at all.

The placements are checked before anything moves: one per mesh dimension, ``Shard(d)`` with
``d`` a dimension the leaf has, or ``Replicate()``. ``Partial`` (a pending sum, not data) and
placements of other kinds are refused with the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard

from ..dtypes import torch_dtype
from ..errors import ConversionError, DistributedError, StructureError, UnsupportedError
from ..options import ToTensorOptions
from ..pipeline import convert_at
from ..plan.core import contiguous_strides
from ..tree import format_path, iter_leaves, map_leaves
from .agree import exchange
from .comm import ABORT, OK, rank_and_world, recv_into, recv_word, send_from, send_word, waiting
from .placements import Box, Layout, layout_on, placement_spec, region

__all__ = ["Placements", "scatter_leaves"]

#: ``placements=``: one placement per mesh dimension for every leaf, or a function of (key path, shape).
Placements = Sequence[Any] | Callable[[str, tuple[int, ...]], Sequence[Any]]

_WHAT = "to_tensor"


class _Stand:
    """A leaf's place in the structure ``src`` sends: its shape and dtype, without its values.

    A plain class, not a dataclass: the walker takes dataclasses apart as containers.
    """

    __slots__ = ("dtype", "shape")

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.shape = shape
        self.dtype = dtype

    def __reduce__(self) -> tuple[type[_Stand], tuple[tuple[int, ...], torch.dtype]]:
        return _Stand, (self.shape, self.dtype)


def _is_data(x: object) -> bool:
    return isinstance(x, (np.ndarray, np.generic, torch.Tensor)) and not isinstance(x, DTensor)


def _fitted(placements: Placements | None, mesh: DeviceMesh, path: str, shape: tuple[int, ...]) -> tuple[Any, ...]:
    """The leaf's placements, checked against the mesh and its shape, with negative dims resolved."""
    if placements is None:
        return tuple(Replicate() for _ in range(mesh.ndim))
    chosen = placements(path, shape) if callable(placements) else placements
    try:
        chosen = tuple(chosen)
    except TypeError:
        raise UnsupportedError(
            _WHAT, path, f"placements must be a sequence of placements, not {type(chosen).__name__}",
            "Pass e.g. [Shard(0)] (one per mesh dimension)",
        ) from None  # fmt: skip
    if len(chosen) != mesh.ndim:
        raise UnsupportedError(
            _WHAT, path, f"{len(chosen)} placement(s) for a {mesh.ndim}-dimensional mesh",
            f"Pass one placement per mesh dimension ({mesh.ndim})",
        )  # fmt: skip
    fitted: list[Any] = []
    for p in chosen:
        kind = placement_spec(p)
        if kind[0] == "shard":
            dim = p.dim + len(shape) if p.dim < 0 else p.dim
            if not 0 <= dim < len(shape):
                raise UnsupportedError(
                    _WHAT, path, f"{p!r} names a dimension a shape-{shape} leaf does not have",
                    "Pass placements as a function of (path, shape), e.g. "
                    "lambda path, shape: [Shard(0)] if shape else [Replicate()]",
                )  # fmt: skip
            fitted.append(Shard(dim))
        elif kind[0] == "replicate":
            fitted.append(p)
        else:
            partial = type(p).__name__ == "Partial"
            raise UnsupportedError(
                _WHAT, path,
                f"{p!r} " + ("describes a pending sum over ranks, not data" if partial else "cannot be scattered"),
                "Pass Shard(d) or Replicate() for each mesh dimension (redistribute afterwards if you need more)",
            )  # fmt: skip
    return tuple(fitted)


def _dtensor(
    local: torch.Tensor, mesh: DeviceMesh, placements: tuple[Any, ...], shape: tuple[int, ...], grad: bool
) -> DTensor:
    out = DTensor.from_local(
        local, mesh, placements, run_check=False, shape=torch.Size(shape), stride=contiguous_strides(shape)
    )
    return out.requires_grad_(True) if grad else out  # type: ignore[return-value]


def _host(opts: ToTensorOptions) -> ToTensorOptions:
    """The options for converting a whole leaf on the host: no grad (the DTensor is made a leaf that requires it)."""
    return dataclasses.replace(opts, requires_grad=False, token=-1)


def scatter_leaves(
    data: Any, opts: ToTensorOptions, mesh: DeviceMesh, placements: Placements | None, src: int | None
) -> Any:
    """``data``'s arrays and tensors as DTensors on ``mesh`` (see the module docstring)."""
    rank, world = rank_and_world(_WHAT, "data")
    problem: ConversionError | None = None
    try:
        _check_call(opts, mesh, src, rank, world)
    except ConversionError as err:
        if src is None:
            raise
        problem = err  # told to the other ranks first, so none waits for data that will not come
    host = _host(opts)
    if src is None:
        return _slice_own(data, host, opts.requires_grad, mesh, placements, _device(mesh))
    return _from_src(data, host, opts.requires_grad, mesh, placements, src, rank, problem)


def _check_call(opts: ToTensorOptions, mesh: DeviceMesh, src: int | None, rank: int, world: int) -> None:
    if not isinstance(mesh, DeviceMesh):
        raise UnsupportedError(
            _WHAT, "mesh", f"mesh must be a DeviceMesh, not {type(mesh).__name__}",
            "Pass torch.distributed.device_mesh.init_device_mesh('cpu', (world_size,))",
        )  # fmt: skip
    if opts.copy is False:
        raise UnsupportedError(
            _WHAT, "copy", "with mesh= each rank's shard is memory of its own, so it is always a copy",
            "Leave out copy=False",
        )  # fmt: skip
    if opts.device is not None or opts.pin_memory:
        raise UnsupportedError(
            _WHAT, "device", "with mesh= the shards live on the mesh's devices",
            "Leave out device= and pin_memory= (init_device_mesh('cuda', ...) puts the shards on GPUs)",
        )  # fmt: skip
    if mesh.get_coordinate() is None:
        raise StructureError(_WHAT, "mesh", f"rank {rank} is not in the mesh", "Call to_tensor(mesh=...) on its ranks")
    if src is not None and not 0 <= src < world:
        raise StructureError(_WHAT, "src", f"src={src} names no rank of this group of {world}", "Pass 0 or None")


def _device(mesh: DeviceMesh) -> torch.device | None:
    """Where the shards go: the mesh's CUDA device, or None for the host."""
    return torch.device("cuda", torch.cuda.current_device()) if mesh.device_type == "cuda" else None


def _slice_own(
    data: Any,
    host: ToTensorOptions,
    grad: bool,
    mesh: DeviceMesh,
    placements: Placements | None,
    device: torch.device | None,
) -> Any:
    coord = tuple(mesh.get_coordinate() or ())
    owned = dataclasses.replace(host, copy=True)

    def one(x: Any, p: Any) -> Any:
        if not _is_data(x):
            return x
        path = format_path(p)
        shape = tuple(x.shape)
        fitted = _fitted(placements, mesh, path, shape)
        piece = region(x, layout_on(mesh, fitted, shape, torch.float32).box(coord))  # a view: only its pages are read
        local = convert_at(piece, owned, path)  # copy=True: a shard owns its memory
        if device is not None:
            local = local.to(device)
        return _dtensor(local, mesh, fitted, shape, grad)

    return map_leaves(one, data)


def _from_src(
    data: Any,
    host: ToTensorOptions,
    grad: bool,
    mesh: DeviceMesh,
    placements: Placements | None,
    src: int,
    rank: int,
    problem: ConversionError | None,
) -> Any:
    """Scatter ``src``'s leaves: two exchanges (the structure and the meshes; every rank's check), then the data.

    Each rank's block is computed from that rank's own mesh (replicas on sub-meshes get theirs).
    Before each leaf's data, ``src`` tells every rank whether it could convert the leaf.
    """
    skeleton: Any = None
    if rank == src and problem is None:
        try:
            skeleton = map_leaves(lambda x, p: _Stand(tuple(x.shape), _dtype_of(x, host)) if _is_data(x) else x, data)
            _picklable(skeleton)
        except ConversionError as err:
            problem, skeleton = err, None
    real = isinstance(mesh, DeviceMesh)
    ranks = tuple(int(r) for r in mesh.mesh.flatten().tolist()) if real else None
    call = (("", _WHAT), ("src", src), ("mesh shape", tuple(mesh.mesh.shape) if real else None))
    every = exchange(_WHAT, call, (skeleton, ranks), problem)
    skeleton = every[src].payload[0]
    meshes: list[tuple[int, ...]] = [said.payload[1] for said in every]
    stands = [(format_path(p), st) for p, st in iter_leaves(skeleton, lambda v: isinstance(v, _Stand))]
    fitted: list[tuple[Any, ...]] = []
    try:
        fitted = [_fitted(placements, mesh, path, st.shape) for path, st in stands]
        if rank != src and data is not None:
            _same_paths(data, skeleton)
    except ConversionError as err:
        problem = err
    chosen = tuple(tuple(map(placement_spec, f)) for f in fitted)
    checked = exchange(_WHAT, call, chosen, problem)
    for r, said in enumerate(checked):
        if said.payload != checked[src].payload:
            raise StructureError(
                _WHAT, "placements", f"rank {r} chose other placements than rank {src}",
                "Pass the same placements (or a function of path and shape only) on every rank",
            )  # fmt: skip
    leaves = iter(x for _, x in iter_leaves(data, _is_data)) if rank == src else None
    device = _device(mesh)
    made: dict[str, DTensor] = {}
    for (path, stand), place in zip(stands, fitted, strict=True):
        boxes = [_box(layout_on(mesh, place, stand.shape, stand.dtype, ranks), r) for r, ranks in enumerate(meshes)]
        with torch.no_grad(), waiting(_WHAT, path, f"scattering {path} from rank {src}"):
            if leaves is not None:
                full = _leaf_or_abort(next(leaves), host, path, stand, len(meshes), rank)
                for r, box in enumerate(boxes):
                    piece = region(full, box)
                    if r == rank:
                        local = piece.clone(memory_format=torch.contiguous_format)
                    elif piece.numel():
                        send_from(piece, r)
                del full
            else:
                if recv_word(src) == ABORT:  # src could not convert this leaf: its own error says why
                    raise DistributedError(
                        _WHAT, path, f"rank {src} could not convert it (its own error says why)",
                        f"Fix what rank {src} reports, then call again on every rank",
                    )  # fmt: skip
                local = torch.empty(boxes[rank][1], dtype=stand.dtype, device=device)
                if local.numel():
                    recv_into(local, src)
        if device is not None:
            local = local.to(device)
        made[path] = _dtensor(local, mesh, place, stand.shape, grad)
    return map_leaves(lambda x, p: made[format_path(p)] if isinstance(x, _Stand) else x, skeleton)


def _leaf_or_abort(x: Any, host: ToTensorOptions, path: str, stand: _Stand, world: int, rank: int) -> torch.Tensor:
    """On ``src``: the leaf converted, and a word to every other rank first (OK, or ABORT and the error).

    Values are checked only here (a cast that does not fit, a masked array): the others, waiting
    for this leaf's data, are told instead of left to time out.
    """
    try:
        full: torch.Tensor = convert_at(x, host, path)
        if full.dtype != stand.dtype or tuple(full.shape) != stand.shape:
            raise StructureError(
                _WHAT, path, f"it converted to {full.dtype} {tuple(full.shape)}, and the structure sent announced "
                f"{stand.dtype} {stand.shape}", "Report this: the announced dtype should be the conversion's",
            )  # fmt: skip
    except BaseException:
        for r in range(world):
            if r != rank:
                with contextlib.suppress(RuntimeError, ConnectionError):
                    send_word(ABORT, r)
        raise
    for r in range(world):
        if r != rank:
            send_word(OK, r)
    return full


def _box(lay: Layout, rank: int) -> Box:
    """The block ``rank`` holds under ``lay`` (every rank is in its own mesh: checked before)."""
    coord = lay.coordinate(rank)
    assert coord is not None
    return lay.box(coord)


def _picklable(skeleton: Any) -> None:
    """Raise unless the structure can be sent (pickled), so no rank waits for one that never comes."""
    try:
        pickle.dumps(skeleton)
    except Exception as err:  # pickling runs the containers' own code: anything may fail
        raise UnsupportedError(
            _WHAT, "data", f"the structure cannot be sent to the other ranks ({type(err).__name__}: {err})",
            "Use containers that pickle (dict, list, tuple, module-level dataclasses), or pass src=None",
        ) from err  # fmt: skip


def _dtype_of(x: Any, host: ToTensorOptions) -> torch.dtype:
    """The dtype the leaf converts to, from metadata (the conversion itself checks the values)."""
    dt = x.dtype if isinstance(x, torch.Tensor) else torch_dtype(x.dtype)
    if host.dtype_map is not None:
        return host.dtype_map.target(dt) or dt
    return host.dtype or dt


def _same_paths(data: Any, skeleton: Any) -> None:
    """Raise unless ``data`` (on a rank that does not scatter) has the key paths of ``src``'s structure."""
    theirs = [format_path(p) for p, _ in iter_leaves(skeleton, lambda v: True)]
    mine = [format_path(p) for p, _ in iter_leaves(data, lambda v: True)]
    if mine != theirs:
        extra = sorted(set(mine) - set(theirs))[:3]
        missing = sorted(set(theirs) - set(mine))[:3]
        raise StructureError(
            _WHAT,
            "data",
            f"this rank's structure differs from the one src scatters (missing {missing}, extra {extra})",
            "Pass None on the ranks that do not scatter, or the same structure",
        )
