"""Nested tensors: ``to_numpy`` gives one array per component; :func:`nested_tensor` builds one back.

- **Nested tensors -> NumPy.** A list of arrays, one per component (views where the memory is
  on the host); nested -> list -> nested is bit-exact.
- **NumPy -> nested tensors.** :func:`nested_tensor` builds one from such a list, in the jagged
  or the strided layout (``dtype=`` casts every component, checked).

``layouts.py`` holds the adapter that claims nested tensors and dispatches here; under
``to_tensor`` it keeps them nested (device moves, ``copy=True``, ``dtype=`` checked per component,
by ``_rebuild_nested`` here). Nested and quantized tensors share nothing else, so each kind has
its own module (``quantized.py``).

Planning reads the nested tensor's dtype, device and number of components; unbinding, copying
to the host and casting run with the conversion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..dtypes import DtypeRow, row_for_numpy, row_for_torch, torch_dtype
from ..errors import DeviceError, StructureError, UnsupportedError
from ..ops.cast import cast_array, cast_tensor
from ..plan.core import ToNumpyOptions, describe_tensor
from ..plan.devices import resolve_device
from ._special import _refuse_copy, _torch_notices_muted
from .base import Adoption

__all__ = ["nested_tensor"]


# --- nested -> NumPy ----------------------------------------------------------------------------


def _component_to_numpy(c: torch.Tensor, opts: ToNumpyOptions, path: str) -> tuple[np.ndarray[Any, Any], list[str]]:
    """One component of a nested tensor (detached, on the host) as NumPy; the copies it took."""
    copies = []
    if c.is_conj() or c.is_neg():
        copies.append("a lazy conjugate/negative bit resolved")
        c = c.resolve_conj().resolve_neg()
    row = row_for_torch(c.dtype)
    if row is None:
        raise UnsupportedError(
            "to_numpy", path, f"dtype {c.dtype} has no NumPy counterpart", "Cast the tensor first, e.g. t.float()"
        )
    if not row.exact:
        wide = row_for_numpy(row.numpy)
        assert wide is not None  # the table pairs every inexact row with an exact one
        copies.append(f"NumPy has no {row.name}; {wide.name} holds it exactly")
        c, row = c.to(wide.torch), wide
    a = _bits_as_numpy(c, row)
    if opts.dtype is not None and opts.dtype != a.dtype:
        copies.append(f"{a.dtype} -> {opts.dtype} (checked)")
        a = cast_array(a, opts.dtype, path)
    return a, copies


def _bits_as_numpy(c: torch.Tensor, row: DtypeRow) -> np.ndarray[Any, Any]:
    return row.share_as_array(c)


def _component_copies(t: torch.Tensor, opts: ToNumpyOptions, path: str) -> list[str]:
    """The copies each component's conversion takes, from the tensor's dtype and bits (every component's)."""
    copies = []
    if t.is_conj() or t.is_neg():
        copies.append("a lazy conjugate/negative bit resolved")
    row = row_for_torch(t.dtype)
    if row is None:
        raise UnsupportedError(
            "to_numpy", path, f"dtype {t.dtype} has no NumPy counterpart", "Cast the tensor first, e.g. t.float()"
        )
    if not row.exact:
        wide = row_for_numpy(row.numpy)
        assert wide is not None  # the table pairs every inexact row with an exact one
        copies.append(f"NumPy has no {row.name}; {wide.name} holds it exactly")
        row = wide
    if opts.dtype is not None and opts.dtype != row.numpy:
        copies.append(f"{row.numpy} -> {opts.dtype} (checked)")
    return copies


def _nested_to_numpy(t: torch.Tensor, opts: ToNumpyOptions, path: str) -> Adoption:
    source = describe_tensor(t)
    copies = []
    on_device = t.device.type != "cpu"
    if on_device:
        if opts.copy is False:
            _refuse_copy("to_numpy", path, f"the components live on {t.device} and must be copied to the host")
        copies.append(f"copied from {t.device} to the host")
    count = t.size(0)
    if count:
        more = _component_copies(t, opts, f"{path}[0]")
        if opts.copy is False and more:
            _refuse_copy("to_numpy", f"{path}[0]", "the conversion must copy: " + "; ".join(more))
        copies += more
    fresh = opts.copy is True and not copies
    if fresh:
        copies.append("copy=True asks for fresh memory")

    def run() -> list[np.ndarray[Any, Any]]:
        nt = t.detach()
        if on_device:
            nt = nt.cpu()
        parts = [_component_to_numpy(c, opts, f"{path}[{i}]")[0] for i, c in enumerate(nt.unbind())]
        return [a.copy(order="K") for a in parts] if fresh else parts

    memory = "; ".join(copies) if copies else "each a view of the tensor's memory"
    why = f"a nested tensor has no single array shape: a list of {count} arrays, one per component ({memory})"
    return Adoption("adopt_copy" if copies else "adopt", why, run, done=True, source=source)


def _rebuild_nested(t: torch.Tensor, dtype: torch.dtype, path: str) -> torch.Tensor:
    """``t`` with every component cast (checked) to ``dtype``, in the same nested layout."""
    parts = [cast_tensor(c, dtype, f"{path}[{i}]") for i, c in enumerate(t.detach().unbind())]
    with _torch_notices_muted():
        return torch.nested.nested_tensor(parts, layout=t.layout, device=t.device)


# --- building nested tensors ------------------------------------------------------------------


def nested_tensor(
    arrays: Sequence[np.ndarray[Any, Any]],
    *,
    layout: torch.layout = torch.jagged,
    dtype: object = None,
    device: object = None,
) -> torch.Tensor:
    """Build a nested tensor from a list of NumPy arrays, one component each.

    The reverse of ``to_numpy`` on a nested tensor, which gives one array per component:
    nested -> list -> nested is bit-exact (NaN payloads and bfloat16/float8 included). The
    result shares nothing with the arrays: torch copies every component into one buffer.

    Args:
        arrays: the components; all of one dtype (unless ``dtype`` is given) and one ndim.
        layout: ``torch.jagged`` (the default: one ragged dimension, components at least 1-d,
            the layout torch develops) or ``torch.strided`` (any ragged shapes; torch's
            prototype, which lacks some dtypes such as uint16 and float8).
        dtype: cast every component to this dtype (checked: a value that does not fit raises),
            in any spelling ``tb.torch_dtype`` accepts.
        device: where the nested tensor lives (default: the CPU).

    Returns:
        A nested ``torch.Tensor`` with ``len(arrays)`` components.

    Raises:
        UnsupportedError: (TypeError) not a list of arrays, mixed dtypes without ``dtype=``, a
            dtype torch lacks, or one the layout lacks.
        StructureError: (ValueError) no arrays, mixed ndims, or shapes the layout cannot hold.
        ValueRangeError: (ValueError) ``dtype=`` would change a value.
        DeviceError: (RuntimeError) ``device`` does not exist.

    Example:
        >>> import numpy as np
        >>> nt = nested_tensor([np.arange(6.0).reshape(2, 3), np.ones((1, 3))])
        >>> nt.is_nested, [tuple(c.shape) for c in nt.unbind()]
        (True, [(2, 3), (1, 3)])
    """
    what = "nested_tensor"
    bad = _not_an_array(arrays)
    if bad is not None:
        raise UnsupportedError(
            what,
            "arrays",
            f"a list of NumPy arrays is needed, but {bad}",
            "Pass a list of np.ndarray (for tensors, use torch.nested.nested_tensor; masked arrays: a.filled())",
        )
    if not arrays:
        raise StructureError(
            what, "arrays", "no arrays were given", "Pass at least one array (a nested tensor needs a component)"
        )
    if layout not in (torch.jagged, torch.strided):
        raise UnsupportedError(what, "layout", f"{layout} is not a nested layout", "Pass torch.jagged or torch.strided")
    row = _nested_row(arrays, dtype)
    first = arrays[0]
    for i, a in enumerate(arrays):
        if a.ndim != first.ndim:
            raise StructureError(
                what,
                f"arrays[{i}]",
                f"shape {a.shape} is {a.ndim}-d but arrays[0] is {first.ndim}-d ({first.shape}); "
                "components of a nested tensor have one number of dimensions",
                "Reshape them to one ndim first, e.g. a.reshape(-1) or a[None]",
            )
    _check_jagged(arrays, layout)
    dev = _nested_device(device, row)
    parts = [_component_tensor(a, row, f"arrays[{i}]") for i, a in enumerate(arrays)]
    try:
        with _torch_notices_muted():
            return torch.nested.nested_tensor(parts, layout=layout, device=dev)
    except NotImplementedError as err:
        raise UnsupportedError(
            what, "arrays", f"torch's {layout} nested layout lacks {row.name} ({err})", "Pass layout=torch.jagged"
        ) from err
    except RuntimeError as err:
        raise StructureError(
            what, "arrays", f"torch refused the components ({err})", "Pass layout=torch.strided"
        ) from err


def _not_an_array(arrays: object) -> str | None:
    if not isinstance(arrays, (list, tuple)):
        return f"arrays is a {type(arrays).__qualname__}"
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray) or isinstance(a, np.ma.MaskedArray):  # a mask would be lost
            return f"arrays[{i}] is a {type(a).__module__}.{type(a).__qualname__}".replace("builtins.", "")
    return None


def _nested_row(arrays: Sequence[np.ndarray[Any, Any]], dtype: object) -> DtypeRow:
    if dtype is not None:
        wanted = row_for_torch(torch_dtype(dtype))
        if wanted is None or not wanted.exact:
            raise UnsupportedError(
                "nested_tensor",
                "dtype",
                f"{dtype!r} cannot be built from NumPy data",
                "Pass a plain dtype such as 'float32'",
            )
        return wanted
    first = arrays[0].dtype
    for i, a in enumerate(arrays):
        if a.dtype.newbyteorder("=") != first.newbyteorder("="):
            raise UnsupportedError(
                "nested_tensor",
                f"arrays[{i}]",
                f"dtype {a.dtype} differs from arrays[0]'s {first}; torch would cast them silently",
                "Pass dtype= to cast every component (checked), or cast the arrays first",
            )
    row = row_for_numpy(first)
    if row is None:
        raise UnsupportedError(
            "nested_tensor", "arrays[0]", f"dtype {first} has no torch equivalent", "Pass dtype= to cast it (checked)"
        )
    return row


def _check_jagged(arrays: Sequence[np.ndarray[Any, Any]], layout: torch.layout) -> None:
    if layout != torch.jagged:
        return
    first = arrays[0]
    if first.ndim == 0:
        raise StructureError(
            "nested_tensor",
            "arrays",
            "the jagged layout needs components of at least 1 dimension",
            "Pass layout=torch.strided",
        )
    ragged = {d for a in arrays for d in range(a.ndim) if a.shape[d] != first.shape[d]}
    if len(ragged) > 1:
        raise StructureError(
            "nested_tensor",
            "arrays",
            f"the shapes differ in dimensions {sorted(ragged)} ({', '.join(str(a.shape) for a in arrays[:4])}"
            f"{', ...' if len(arrays) > 4 else ''}), "
            "but the jagged layout holds one ragged dimension",
            "Pass layout=torch.strided, which holds any ragged shapes",
        )


def _nested_device(device: object, row: DtypeRow) -> torch.device:
    try:
        dev = torch.device("cpu" if device is None else device)  # type: ignore[call-overload]
    except (RuntimeError, TypeError) as err:
        raise DeviceError(
            "nested_tensor", "device", f"{device!r} is not a device torch knows ({err})", "Pass 'cpu' or 'cuda'"
        ) from err
    return resolve_device(dev, "device", "nested_tensor", row.torch)


def _component_tensor(a: np.ndarray[Any, Any], row: DtypeRow, path: str) -> torch.Tensor:
    """A tensor over ``a`` (a view where torch accepts its layout) in ``row``'s dtype; torch copies it next."""
    if a.dtype != row.numpy:
        a = cast_array(a, row.numpy, path) if a.dtype.newbyteorder("=") != row.numpy else a.astype(row.numpy)
    if min(a.strides, default=0) < 0:
        a = np.ascontiguousarray(a)
    with _torch_notices_muted():  # a read-only array is only read: nested_tensor copies it
        return row.share_as_tensor(a)
