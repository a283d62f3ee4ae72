"""The public verbs: ``to_tensor``, ``to_numpy`` and ``explain``.

Each validates its options once (``tensorbridge.options``) and hands the data to the one
pipeline (``tensorbridge.pipeline``), which plans each kind of leaf once and reuses the plan;
``explain`` prints the very plans the conversion runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, overload

import numpy as np
import torch

from .errors import UnsupportedError
from .options import NO_VALUE, numpy_options, tensor_options
from .pipeline import convert, convert_at, explain_plans
from .plan import Plan

__all__ = ["Explanation", "explain", "to_numpy", "to_tensor"]

_Container = TypeVar("_Container", dict[Any, Any], list[Any], tuple[Any, ...])


@overload
def to_tensor(
    data: np.ndarray[Any, Any] | np.generic | torch.Tensor,
    dtype: object = None,
    device: object = None,
    *,
    copy: bool | None = None,
    requires_grad: bool = False,
    pin_memory: bool = False,
    non_blocking: bool | None = None,
    dense: bool = False,
    na_value: object = NO_VALUE,
    datetime_unit: str | None = None,
    mesh: Any = None,
    placements: Any = None,
    src: int | None = 0,
) -> torch.Tensor: ...


@overload
def to_tensor(
    data: _Container,
    dtype: object = None,
    device: object = None,
    *,
    copy: bool | None = None,
    requires_grad: bool = False,
    pin_memory: bool = False,
    non_blocking: bool | None = None,
    dense: bool = False,
    na_value: object = NO_VALUE,
    datetime_unit: str | None = None,
    mesh: Any = None,
    placements: Any = None,
    src: int | None = 0,
) -> _Container: ...


@overload
def to_tensor(
    data: Any,
    dtype: object = None,
    device: object = None,
    *,
    copy: bool | None = None,
    requires_grad: bool = False,
    pin_memory: bool = False,
    non_blocking: bool | None = None,
    dense: bool = False,
    na_value: object = NO_VALUE,
    datetime_unit: str | None = None,
    mesh: Any = None,
    placements: Any = None,
    src: int | None = 0,
) -> Any: ...


def to_tensor(
    data: Any,
    dtype: object = None,
    device: object = None,
    *,
    copy: bool | None = None,
    requires_grad: bool = False,
    pin_memory: bool = False,
    non_blocking: bool | None = None,
    dense: bool = False,
    na_value: object = NO_VALUE,
    datetime_unit: str | None = None,
    mesh: Any = None,
    placements: Any = None,
    src: int | None = 0,
) -> Any:
    """Convert NumPy arrays (alone or anywhere in containers) to tensors.

    Writable native-order arrays with non-negative strides become tensors that share their
    memory, for every dtype in :data:`tensorbridge.dtypes.ROWS` (bfloat16 and float8 from
    ``ml_dtypes`` included, bit-exact). Everything else is copied once, and only when it must
    be: negative strides, non-native byte order, read-only memory (so writing to the tensor
    can never reach a read-only mapping), a dtype cast, a device move.

    Containers (dict and every Mapping, ChainMap, list, tuple, namedtuple, deque,
    dataclasses, attrs classes, TensorDicts, torch pytree and optree registrations, and types
    registered with :func:`register_container`) are rebuilt with their own types and instance
    state; an ``nn.Module`` raises. Leaves that are not arrays, tensors or NumPy scalars
    (None, str and ``np.str_``, Python numbers) pass through unchanged.
    Tensors are returned as they are unless ``dtype``/``device``/``copy``/``requires_grad``
    ask for a change; a tensor that must change comes back detached.

    Args:
        data: an array, NumPy scalar, tensor, or a container of them.
        dtype: any spelling :func:`torch_dtype` accepts, or a mapping from source dtype to
            target (``{np.float64: torch.float32}``): then only leaves whose dtype is a key are
            cast, the others convert as they are. Casts round once, to the nearest value; one
            that would change a value beyond that (300 -> uint8, NaN -> int, 1e300 -> float32)
            raises.
        device: anything ``torch.device`` accepts.
        copy: ``None`` shares memory when it can (a broadcast may keep its zero strides);
            ``True`` always returns fresh memory in which every element is its own (NumPy 2's
            meaning: a broadcast or overlapping view is materialized); ``False`` never copies
            and raises when a copy is needed. With ``copy=False`` a read-only array is shared
            as it is: writing to that tensor is undefined.
        requires_grad: make each result a leaf tensor that requires grad (float/complex only).
            A leaf owns each element, so overlapping memory (a broadcast, an expanded tensor)
            and inference-mode tensors are copied first; plain layouts are still shared.
        pin_memory: put CPU results in page-locked memory (needs CUDA).
        non_blocking: for device moves. ``None`` (default): every copy is queued at once and
            the call synchronizes once at the end; ``False``: the same guarantee, with each
            direct (torch ``.to()``) copy blocking as it goes;
            ``True``: returns without waiting for the last copies, ordered on the device's
            current stream (later work on that stream sees the data); a staged leaf with more
            chunks than the staging ring still waits for its earlier chunks to leave their
            buffers. Pageable inputs may be reused at once in every mode; a pinned input must
            not be modified until the copy is done.
            Copies to the host always finish before the call returns.
        dense: densify SciPy sparse matrices instead of making sparse tensors.
        na_value: what missing values in pandas columns become; by default they raise.
        datetime_unit: pandas datetimes/timedeltas become int64 counts of this unit
            (``"ns"``, ``"us"``, ``"ms"``, ``"s"``, ``"D"``); by default they raise.
        mesh: a ``DeviceMesh``: every array and tensor becomes a DTensor on it, each rank
            allocating only its own shard (on the mesh's device). Every rank of the mesh calls.
        placements: with ``mesh``, one placement per mesh dimension (``[Shard(0)]``; the
            default is ``Replicate()`` on each), or a function ``(key path, shape) ->
            placements`` to choose per leaf. ``Shard(d)`` splits as ``torch.chunk`` does
            (uneven shards welcome); ``Partial`` and placements that do not fit the mesh or
            the leaf are refused with the fix, before anything moves.
        src: with ``mesh``, the rank whose data is scattered (the others pass None or the same
            structure; the structure and dtypes come from ``src``; every rank checks them
            before data moves); None: every rank holds the same data (a memory map is fine)
            and slices its own shard out of it, with no communication.

    Returns:
        The same structure with tensors in place of arrays. With a CUDA ``device``, large
        arrays travel in chunks through a pool of pinned buffers, and many small arrays are
        packed into one copy; each packed group's tensors are views of one device allocation
        (see ``explain()``).

    Raises:
        UnsupportedError: (TypeError) a dtype or type torch cannot hold, a masked array, a
            bad ``dtype=`` mapping, an ``nn.Module`` (pass ``model.state_dict()``).
        CopyRefusedError: (ValueError) ``copy=False`` but a copy is needed.
        ValueRangeError: (ValueError) a cast would change values.
        DeviceError: (RuntimeError) a device or pinned-memory problem.

    Example:
        >>> import numpy as np, tensorbridge as tb
        >>> image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
        >>> batch = tb.to_tensor({"bgr": image, "rgb": image[:, :, ::-1], "id": 7})
        >>> batch["rgb"][0, 0].tolist(), batch["id"]
        ([2, 1, 0], 7)
    """
    opts = tensor_options(dtype, device, copy, requires_grad, pin_memory, non_blocking, dense, na_value, datetime_unit)
    if mesh is not None:
        from .distributed import scatter_leaves  # imports torch.distributed only when asked

        return scatter_leaves(data, opts, mesh, placements, src)
    if placements is not None:
        raise UnsupportedError("to_tensor", "placements", "placements= describes DTensors", "Pass mesh= as well")
    return convert(data, opts)


@overload
def to_numpy(
    data: np.ndarray[Any, Any] | np.generic,
    dtype: object = None,
    *,
    copy: bool | None = None,
    non_blocking: bool | None = None,
    dense: bool = False,
    quantized: str | None = None,
    na_value: object = NO_VALUE,
    datetime_unit: str | None = None,
    shards: str = "error",
    dst: int | None = 0,
) -> np.ndarray[Any, Any]: ...


@overload
def to_numpy(
    data: _Container,
    dtype: object = None,
    *,
    copy: bool | None = None,
    non_blocking: bool | None = None,
    dense: bool = False,
    quantized: str | None = None,
    na_value: object = NO_VALUE,
    datetime_unit: str | None = None,
    shards: str = "error",
    dst: int | None = 0,
) -> _Container: ...


@overload
def to_numpy(
    data: Any,
    dtype: object = None,
    *,
    copy: bool | None = None,
    non_blocking: bool | None = None,
    dense: bool = False,
    quantized: str | None = None,
    na_value: object = NO_VALUE,
    datetime_unit: str | None = None,
    shards: str = "error",
    dst: int | None = 0,
) -> Any: ...


def to_numpy(
    data: Any,
    dtype: object = None,
    *,
    copy: bool | None = None,
    non_blocking: bool | None = None,
    dense: bool = False,
    quantized: str | None = None,
    na_value: object = NO_VALUE,
    datetime_unit: str | None = None,
    shards: str = "error",
    dst: int | None = 0,
) -> Any:
    """Convert tensors (alone or anywhere in containers) to NumPy arrays.

    CPU tensors share memory with the arrays returned (tensors that require grad and
    Parameters too: they are detached, not copied); bfloat16 and float8 become ``ml_dtypes``
    arrays, bit-exact and zero-copy. Tensors on other devices are brought to the host;
    conjugate and negative bits are resolved; complex32 becomes complex64. Sparse tensors
    become SciPy sparse arrays (``dense=True`` densifies), nested tensors a list of arrays,
    quantized tensors what ``quantized=`` asks for; meta tensors raise. NumPy arrays are
    returned unchanged (NumPy scalars become 0-d arrays; ``np.str_`` stays a string) unless
    ``dtype``/``copy`` ask.

    Args:
        data: a tensor, array, NumPy scalar, or a container of them.
        dtype: any spelling :func:`numpy_dtype` accepts, or a mapping from source dtype to
            target (``{torch.bfloat16: np.float32}``) that casts only the leaves whose dtype
            is a key. Casts round once, to the nearest value; one that would change a value
            beyond that raises.
        copy: ``None`` shares when it can, ``True`` always copies into memory where every
            element is its own, ``False`` raises when a copy is needed.
        non_blocking: accepted for symmetry with :func:`to_tensor`; an array is never handed
            out before its bytes have arrived, so every mode waits for the copies (all of a
            call's copies are queued first, then waited for together).
        dense: densify sparse tensors instead of returning SciPy sparse arrays.
        quantized: ``"dequantize"`` (floats) or ``"int"`` (integer codes with scale and zero
            point) for quantized tensors; by default they raise, offering both.
        na_value: what missing values in pandas columns become; by default they raise.
        datetime_unit: pandas datetimes/timedeltas become int64 counts of this unit; by
            default they raise.
        shards: what a DTensor becomes. ``"error"`` (default) raises and names the choices;
            ``"local"``: this rank's shard, zero-copy (``explain`` shows where it lies in the
            global array); ``"gather"``: the full array on rank ``dst``, and None in its place
            on the other ranks (plain tensors and other leaves convert as usual on every
            rank). Every rank of the default process group must call with the same structure:
            the ranks first agree on what they hold (key paths; each DTensor's shape, dtype,
            mesh and placements), and a difference raises ``StructureError`` on every rank
            before any data moves. ``dst`` then receives each DTensor's blocks point to point,
            one leaf at a time (``Partial`` and strided placements through DTensor's own
            ``full_tensor()``), so it holds at most one tensor beyond the result.
        dst: the rank that gets the gathered arrays, or None for every rank (each then calls
            ``full_tensor()``).

    Returns:
        The same structure with arrays in place of tensors. CUDA tensors come back through
        the transfer engine: large ones in pipelined chunks, many small ones packed into one
        copy; each packed group's arrays are views of one host allocation.

    Raises:
        UnsupportedError: (TypeError) meta tensors, quantized tensors without ``quantized=``,
            sparse layouts SciPy lacks, dtypes NumPy lacks, an ``nn.Module``.
        CopyRefusedError: (ValueError) ``copy=False`` but a copy is needed.
        ValueRangeError: (ValueError) a cast would change values.
        StructureError: (ValueError) with ``shards="gather"``, the ranks hold different data.
        DistributedError: (RuntimeError) a rank did not call within the process group's
            timeout, or failed midway (every rank raises; none waits forever).

    Example:
        >>> import torch, tensorbridge as tb
        >>> w = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))
        >>> out = tb.to_numpy({"w": w})
        >>> out["w"].dtype.name, out["w"].tolist()
        ('bfloat16', [1.0, 1.0])
    """
    opts = numpy_options(dtype, copy, non_blocking, dense, quantized, na_value, datetime_unit, shards, dst)
    if opts.interop.shards == "gather":
        from .distributed import gather_leaves, unwrap  # imports torch.distributed only when asked

        def finish(full: torch.Tensor, path: str) -> Any:  # each gathered leaf, as it arrives
            return convert_at(full, opts, path)

        return unwrap(convert(gather_leaves("to_numpy", data, opts.interop.dst, finish), opts))
    return convert(data, opts)


@dataclass(frozen=True)
class Explanation:
    """The plans for every leaf of one conversion, as :func:`explain` returns them.

    ``str()`` prints one block per leaf: path, source, target, steps, and whether memory is
    shared. ``shares_memory`` is True when every leaf's result shares memory with its input.
    """

    direction: Literal["tensor", "numpy"]
    plans: tuple[Plan, ...]

    @property
    def shares_memory(self) -> bool:
        """True when there is at least one leaf and every leaf's result shares its input's memory."""
        return bool(self.plans) and all(p.shares_memory for p in self.plans)

    def __str__(self) -> str:
        if not self.plans:
            return f"to_{self.direction}: no arrays or tensors to convert"
        return "\n".join(str(p) for p in self.plans)


def explain(data: Any, to: Literal["tensor", "numpy"] = "tensor", **options: Any) -> Explanation:
    """Say what ``to_tensor``/``to_numpy`` would do with ``data``, without doing it.

    Args:
        data: what you would pass to the conversion.
        to: ``"tensor"`` for :func:`to_tensor`, ``"numpy"`` for :func:`to_numpy`.
        **options: the same keyword options (``dtype``, ``device``, ``copy``, ...).

    Returns:
        An :class:`Explanation`; leaves that would fail show their error instead of steps.

    Example:
        >>> import numpy as np, tensorbridge as tb
        >>> plan = tb.explain(np.zeros((2, 3))[:, ::-1])
        >>> plan.shares_memory
        False
        >>> print(plan)  # doctest: +ELLIPSIS
        data: numpy.ndarray float64 shape (2, 3) strides (24, -8) -> torch.Tensor float64 on cpu
            - flip copy (negative strides on axis 1: gathered back in order by torch)
            => fresh memory
    """
    if to == "tensor":
        known = _TENSOR_OPTIONS
    elif to == "numpy":
        known = _NUMPY_OPTIONS
    else:
        raise UnsupportedError("explain", "to", f"{to!r} is not a direction", "Pass to='tensor' or to='numpy'")
    unknown = sorted(set(options) - known)
    if unknown:
        raise UnsupportedError(
            "explain",
            "options",
            f"unknown option(s) {unknown} for to={to!r}",
            "Pass only the options the conversion itself takes",
        )
    opts = tensor_options(**options) if to == "tensor" else numpy_options(**options)
    return Explanation(to, explain_plans(data, opts))


_TENSOR_OPTIONS: Final = frozenset(
    {"dtype", "device", "copy", "requires_grad", "pin_memory", "non_blocking", "dense", "na_value", "datetime_unit"}
)
_NUMPY_OPTIONS: Final = frozenset(
    {"dtype", "copy", "non_blocking", "dense", "quantized", "na_value", "datetime_unit", "shards", "dst"}
)
