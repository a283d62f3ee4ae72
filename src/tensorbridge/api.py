"""The public verbs: flatten the containers, plan each leaf, carry the plan out, rebuild.

The common cases (writable NumPy arrays to tensors, plain CPU tensors to NumPy, in plain
dicts/lists/tuples, nothing asked of dtype/device/copy) skip planning: they are exactly the
cases ``torch.from_numpy`` and ``Tensor.numpy()`` get right (see ``_fastpath``). Everything
else goes through the planner, so ``explain()`` reports what is done; a property test checks
that both routes agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, overload

import numpy as np
import torch

from ._convert.execute import device_error, device_errors, run_plan, run_plans
from ._fastpath import Bail, fast_from_device, fast_to_device, fast_to_numpy, fast_to_tensor
from .config import current as current_config
from .devices import checked_device, remember_device
from .dtypes import ROWS
from .errors import DeviceError, UnsupportedError
from .leaves import is_leaf, plan_leaf_to_numpy, plan_leaf_to_tensor
from .plan import (
    Plan,
    ToNumpyOptions,
    ToTensorOptions,
    normalize_to_numpy,
    normalize_to_tensor,
)
from .plan.core import NO_VALUE, normalize_interop
from .plan.transfer import assign_routes, resolve_device
from .tree import Path, format_path, iter_leaves, map_leaves

__all__ = ["Explanation", "explain", "to_numpy", "to_tensor"]

_ndarray = np.ndarray
_generic = np.generic
_Tensor = torch.Tensor
_from_numpy = torch.from_numpy
_CPU = torch.device("cpu")
_DEFAULT_TENSOR = ToTensorOptions()
_DEFAULT_NUMPY = ToNumpyOptions()
# The dtypes Tensor.numpy() itself converts: rows with no carrier and no widening.
_PLAIN_NUMPY_DTYPES = frozenset(row.torch for row in ROWS if row.carrier is None and row.exact)


def _tensor_leaf(x: Any, path: Path, opts: ToTensorOptions) -> Any:
    if is_leaf(x):
        return run_plan(x, plan_leaf_to_tensor(x, opts, format_path(path)))
    return x


def _tensor_leaf_default(x: Any, path: Path) -> Any:
    if type(x) is _ndarray and x.flags.writeable:
        try:
            return _from_numpy(x)
        except (TypeError, ValueError):
            pass  # the planner finds out why and what to do
    elif type(x) is _Tensor:
        return x
    return _tensor_leaf(x, path, _DEFAULT_TENSOR)


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
            ``True``: returns as soon as the copies are queued, ordered on the device's current
            stream (later work on that stream sees the data). Pageable inputs may be reused at
            once in every mode; a pinned input must not be modified until the copy is done.
            Copies to the host always finish before the call returns.
        dense: densify SciPy sparse matrices instead of making sparse tensors.
        na_value: what missing values in pandas columns become; by default they raise.
        datetime_unit: pandas datetimes/timedeltas become int64 counts of this unit
            (``"ns"``, ``"us"``, ``"ms"``, ``"s"``, ``"D"``); by default they raise.

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
    if dtype is None and device is None and copy is None and not requires_grad and not pin_memory:
        if type(data) is _ndarray and data.flags.writeable:
            try:
                return _from_numpy(data)
            except (TypeError, ValueError):
                pass
        # The options below matter only for leaves from other libraries and special tensors.
        if dense is False and na_value is NO_VALUE and datetime_unit is None:
            try:
                return fast_to_tensor(data)
            except Bail:
                pass
            return map_leaves(_tensor_leaf_default, data)
    if device is not None:
        if checked_device(device) is None:
            _check_device(device)
        if dtype is None and copy is None and not requires_grad and not pin_memory:
            moved = _fast_move(data, device, non_blocking)
            if moved is not None:
                return moved
            if non_blocking is None or non_blocking is True or non_blocking is False:
                try:
                    return fast_to_device(data, device, non_blocking)
                except Bail:
                    pass
    interop = normalize_interop("to_tensor", dense, None, na_value, datetime_unit)
    opts = normalize_to_tensor(dtype, device, copy, requires_grad, pin_memory, interop)
    _check_non_blocking(non_blocking, "to_tensor")
    if opts.device is not None:
        return _convert_together(data, lambda x, path: plan_leaf_to_tensor(x, opts, path), non_blocking)
    return map_leaves(lambda x, path: _tensor_leaf(x, path, opts), data)


def _check_device(device: object) -> None:
    """Check a CUDA device argument once; remember it for the fast paths if it exists."""
    try:
        dev = torch.device(device)  # type: ignore[call-overload]
        if dev.type == "cuda":
            resolve_device(dev, "data", "to_tensor", torch.float32)
            remember_device(device, dev)
    except (RuntimeError, TypeError, DeviceError):
        pass  # the planner raises it, naming the leaf and the fix


def _fast_move(data: Any, device: object, non_blocking: object) -> torch.Tensor | None:
    """A lone small writable array to a CUDA device checked before: torch's own copy, no planning.

    This is the route the planner gives such a leaf ("direct"), without the ~20 us of planning
    that would otherwise double the latency of a 4 KiB copy.
    """
    if type(data) is not _ndarray or not data.flags.writeable:
        return None
    if not 0 < data.nbytes <= current_config().small_max_bytes:
        return None
    checked = checked_device(device)
    if checked is None or not (non_blocking is None or non_blocking is True or non_blocking is False):
        return None
    try:
        t = _from_numpy(data)
    except (TypeError, ValueError):
        return None  # the planner finds out why and what to do
    backend, target = checked
    try:
        return backend.move(t, target, non_blocking is True)
    except (MemoryError, RuntimeError, TypeError, ValueError, AssertionError) as err:
        raise device_error(err, "data", data.nbytes, _CPU, target) from err


def _check_non_blocking(non_blocking: object, what: str) -> None:
    if non_blocking not in (None, True, False):
        raise UnsupportedError(
            what, "non_blocking", f"non_blocking must be None, True or False, not {non_blocking!r}", "Pass one of those"
        )


def _convert_together(data: Any, plan: Callable[[Any, str], Plan], non_blocking: bool | None) -> Any:
    """Plan every leaf, then convert them in one go, so device copies can be packed and pipelined."""
    leaves = iter_leaves(data, is_leaf)
    plans = assign_routes([plan(x, format_path(p)) for p, x in leaves], current_config())
    results = iter(run_plans([x for _, x in leaves], plans, non_blocking))
    return map_leaves(lambda x, path: next(results) if is_leaf(x) else x, data)


class _OnDevice(Exception):
    """A leaf lives on a device: the call must convert all leaves together."""


def _numpy_leaf(x: Any, path: Path, opts: ToNumpyOptions) -> Any:
    if is_leaf(x):
        return run_plan(x, plan_leaf_to_numpy(x, opts, format_path(path)))
    return x


def _numpy_leaf_default(x: Any, path: Path) -> Any:
    # A refused .numpy() costs ~6 us (torch builds the error message): cheap checks first.
    if type(x) is _Tensor and not x.requires_grad and x.dtype in _PLAIN_NUMPY_DTYPES:
        try:
            return x.numpy()
        except (TypeError, RuntimeError):
            pass  # the planner finds out why and what to do
    elif isinstance(x, _ndarray):
        return x
    if isinstance(x, _Tensor) and x.device.type != "cpu":
        raise _OnDevice  # device leaves are converted together, so their copies can be packed
    return _numpy_leaf(x, path, _DEFAULT_NUMPY)


def _plain_small_cuda(t: torch.Tensor) -> bool:
    """A small CUDA tensor that ``.cpu().numpy()`` converts exactly: the planner's "direct" route."""
    return (
        t.is_cuda
        and not t.requires_grad
        and t.dtype in _PLAIN_NUMPY_DTYPES
        and t.layout == torch.strided
        and not t.is_conj()
        and not t.is_neg()
        and 0 < t.numel() * t.element_size() <= current_config().small_max_bytes
    )


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

    Returns:
        The same structure with arrays in place of tensors. CUDA tensors come back through
        the transfer engine: large ones in pipelined chunks, many small ones packed into one
        copy; each packed group's arrays are views of one host allocation.

    Raises:
        UnsupportedError: (TypeError) meta tensors, quantized tensors without ``quantized=``,
            sparse layouts SciPy lacks, dtypes NumPy lacks, an ``nn.Module``.
        CopyRefusedError: (ValueError) ``copy=False`` but a copy is needed.
        ValueRangeError: (ValueError) a cast would change values.

    Example:
        >>> import torch, tensorbridge as tb
        >>> w = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))
        >>> out = tb.to_numpy({"w": w})
        >>> out["w"].dtype.name, out["w"].tolist()
        ('bfloat16', [1.0, 1.0])
    """
    if dtype is None and copy is None and non_blocking is None:
        try:
            # A lone tensor first: one call less on the hottest path.
            return data.numpy() if type(data) is _Tensor else fast_to_numpy(data)
        except (TypeError, RuntimeError, Bail):
            pass
        # The options below matter only for leaves from other libraries and special tensors.
        if dense is False and quantized is None and na_value is NO_VALUE and datetime_unit is None:
            if type(data) is _Tensor and _plain_small_cuda(data):
                with device_errors("data", data.numel() * data.element_size(), data.device, _CPU):
                    return data.to("cpu").numpy()
            try:
                return fast_from_device(data)
            except Bail:
                pass
            try:
                return map_leaves(_numpy_leaf_default, data)
            except _OnDevice:
                pass
    interop = normalize_interop("to_numpy", dense, quantized, na_value, datetime_unit)
    opts = normalize_to_numpy(dtype, copy, interop)
    _check_non_blocking(non_blocking, "to_numpy")
    return _convert_together(data, lambda x, path: plan_leaf_to_numpy(x, opts, path), non_blocking)


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
    leaves = iter_leaves(data, is_leaf)
    interop = normalize_interop(
        f"explain(to={to!r})",
        options.pop("dense", False),
        options.pop("quantized", None) if to == "numpy" else None,
        options.pop("na_value", NO_VALUE),
        options.pop("datetime_unit", None),
    )
    if to == "tensor":
        t_opts = normalize_to_tensor(
            options.pop("dtype", None),
            options.pop("device", None),
            options.pop("copy", None),
            options.pop("requires_grad", False),
            options.pop("pin_memory", False),
            interop,
        )
        options.pop("non_blocking", None)
        _no_more(options)
        plans = tuple(plan_leaf_to_tensor(x, t_opts, format_path(p)) for p, x in leaves)
    elif to == "numpy":
        n_opts = normalize_to_numpy(options.pop("dtype", None), options.pop("copy", None), interop)
        options.pop("non_blocking", None)
        _no_more(options)
        plans = tuple(plan_leaf_to_numpy(x, n_opts, format_path(p)) for p, x in leaves)
    else:
        raise UnsupportedError("explain", "to", f"{to!r} is not a direction", "Pass to='tensor' or to='numpy'")
    return Explanation(to, tuple(assign_routes(plans, current_config())))


def _no_more(options: dict[str, Any]) -> None:
    if options:
        raise UnsupportedError(
            "explain",
            "options",
            f"unknown option(s) {sorted(options)}",
            "Pass only the options the conversion itself takes",
        )
