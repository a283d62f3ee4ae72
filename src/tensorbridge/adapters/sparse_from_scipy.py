"""``to_tensor`` of sparse leaves: a SciPy matrix becomes the torch sparse tensor of its layout.

The tensor is built over the matrix's own arrays where torch can hold them (each part shared or
copied, and why); torch checks the indices on the way in; a compressed matrix with unsorted or
duplicate indices is made canonical on a copy (``sum_duplicates``); ``dense=True`` densifies.
``dtype=``, ``device=``, ``copy=`` and ``requires_grad=`` apply here, also to a torch sparse
tensor passed as it is. ``sparse.py`` holds the adapter that dispatches here, and the rules.

Planning reads the format, shape, ``nnz``, dtypes and the parts' strides, flags and addresses:
it says which part is shared or copied, and why. Whether a compressed matrix's indices are
canonical is known only by scanning them, unless SciPy has cached the answer: that scan, the
casts, torch's invariant checks and the constructors run with the conversion, and ``copy=False``
refuses there a copy the indices turned out to need.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import numpy as np
import torch

from ..dtypes import row_for_numpy, row_for_torch
from ..errors import DeviceError, UnsupportedError, ValueRangeError
from ..ops.cast import cast_array, cast_tensor
from ..plan.core import ToTensorOptions
from ..plan.devices import needs_device, resolve_device
from ._sparse_common import (
    _FRESH,
    _LAYOUTS,
    _address,
    _Array,
    _as_is,
    _compressed,
    _coords,
    _dense_tensor,
    _densified,
    _describe_scipy,
    _describe_sparse,
    _Parts,
    _quiet,
    _scipy_dense,
    _values,
    _with_values,
)
from .base import Adoption

_INDEX_DTYPES: Final = frozenset({np.dtype(np.int32), np.dtype(np.int64)})
_CPU: Final = torch.device("cpu")
_CANONICAL: Final = "unsorted or duplicate indices within a row, which torch forbids: made canonical"
# Said when SciPy has not cached whether the indices are canonical: finding out scans them.
_UNCHECKED: Final = (
    "indices checked when converting: unsorted or duplicate ones within a row, which torch forbids, "
    "are made canonical on a copy (everything copied)"
)


def _refuse_pinning(opts: ToTensorOptions, path: str) -> None:
    if opts.pin_memory:
        raise UnsupportedError(
            "to_tensor",
            path,
            "pin_memory=True is not supported for sparse tensors",
            "Pass device='cuda' to move the tensor to the GPU directly, or dense=True for a dense tensor",
        )


def _check_grad(dtype: torch.dtype, path: str) -> None:
    if not (dtype.is_floating_point or dtype.is_complex):
        raise UnsupportedError(
            "to_tensor",
            path,
            f"requires_grad=True needs a float or complex dtype, not {dtype}",
            "Pass dtype=torch.float32 as well, or drop requires_grad",
        )


def _move(t: torch.Tensor, device: torch.device, path: str) -> torch.Tensor:
    try:
        return t.to(device)
    except (RuntimeError, NotImplementedError) as err:
        raise DeviceError(
            "to_tensor", path, f"moving the sparse tensor to {device} failed ({err})", "Check the device and its memory"
        ) from err


# --- SciPy -> torch -------------------------------------------------------------------------


def _share_or_copy(
    a: _Array, part: str, parts: _Parts, copy: bool | None, fresh: bool, contiguous: bool = False
) -> bool:
    """Record whether torch can hold ``a``'s memory as it is (shared) or needs a copy; return the latter.

    torch's sparse constructors keep strided values and COO indices as they are; only the
    index arrays of compressed layouts must be contiguous (``contiguous``). A ``fresh`` array
    (made by the conversion) is neither: nobody else holds it.
    """
    if fresh:
        return False
    why = ""
    if not a.dtype.isnative:
        why = "non-native byte order: torch cannot view it"
    elif contiguous and not a.flags.c_contiguous:
        why = "not contiguous, which torch's compressed indices must be"
    elif any(st < 0 or st % a.itemsize for st in a.strides):
        why = "negative or partial-element strides: torch cannot view them"
    elif not a.flags.writeable and copy is not False:
        why = "read-only memory: writes to the tensor must not reach it"
    elif copy is True:
        why = _FRESH
    if why:
        parts.copy(part, why)
        return True
    parts.share(part, _address(a))
    return False


def _tensor_of(a: _Array, copied: bool) -> torch.Tensor:
    """A tensor over ``a``'s memory, or over a native, contiguous copy of it."""
    if copied:
        a = np.array(a, dtype=a.dtype.newbyteorder("="), order="C", copy=True)
    row = row_for_numpy(a.dtype)
    assert row is not None  # values were checked against the table, indices are int32/int64
    with _quiet():
        return row.share_as_tensor(a)


def _one_array(coords: tuple[_Array, ...]) -> _Array | None:
    """The int64 coords as rows of one (ndim, nnz) view, when they lie in one buffer at one stride."""
    first = coords[0]
    step = first.strides[0]
    if step <= 0 or any(c.dtype != np.int64 or c.strides != (step,) or c.shape != first.shape for c in coords):
        return None
    starts = [_address(c) for c in coords]
    gap = starts[1] - starts[0] if len(coords) > 1 else first.nbytes
    if gap <= 0 or gap % first.itemsize or any(b - a != gap for a, b in itertools.pairwise(starts)):
        return None

    def owner(a: _Array) -> object:
        while isinstance(a.base, np.ndarray):
            a = a.base
        return a if a.base is None else a.base

    if any(owner(c) is not owner(first) for c in coords[1:]):
        return None  # adjacent by chance in two allocations: a view would not keep both alive
    view: _Array = np.lib.stride_tricks.as_strided(first, (len(coords), first.shape[0]), (gap, step))
    return view


def _known_canonical(X: Any) -> bool | None:
    """Whether a compressed matrix's indices are canonical, if SciPy has cached it (finding out scans them)."""
    cached = getattr(X, "__dict__", {})
    if not cached.get("_has_sorted_indices", True):
        return False
    if "_has_canonical_format" in cached:
        return bool(cached["_has_canonical_format"])
    return None


def _plan_scipy(
    X: Any, opts: ToTensorOptions, path: str, canonical: bool
) -> tuple[_Parts, Callable[[_Parts], torch.Tensor]]:
    """What converting ``X`` shares and copies, from its metadata, and the conversion itself.

    ``canonical``: whether ``X``'s indices are canonical; if not, a canonical copy of it
    (``sum_duplicates``) is converted, and every part is fresh. The conversion records in the
    ``_Parts`` it is given what the constructors really did.
    """
    fmt, layout = X.format, _LAYOUTS[X.format]
    parts, fresh = _Parts(), not canonical
    if not canonical:
        parts.copy("everything", _CANONICAL)
        parts.hint = "call X.sum_duplicates() first (it sorts and sums in place)"
    data: _Array = X.data
    row = row_for_numpy(data.dtype)
    cast_to = None
    if opts.dtype is not None and (row is None or opts.dtype != row.torch):
        row = row_for_torch(opts.dtype)
        assert row is not None  # normalize_to_tensor refuses dtypes NumPy cannot hold
        parts.copy("data", f"cast {data.dtype} -> {row.name}, checked")
        cast_to = row.numpy
    elif row is None:
        raise UnsupportedError(
            "to_tensor",
            path,
            f"SciPy values of dtype {data.dtype} have no torch dtype",
            "Pass dtype=torch.float64 (complex128 for complex values) to accept the rounding",
        )
    device = None if opts.device is None else resolve_device(opts.device, path, "to_tensor", row.torch)
    moving = device is not None and needs_device(device, _CPU)
    copy = None if moving else opts.copy  # a move makes fresh memory anyway; until then, only read
    copy_data = _share_or_copy(data, "data", parts, copy, fresh or cast_to is not None)
    widen = stack = copy_index = copy_indptr = False
    if fmt == "coo":
        coords = _coords(X)
        index = _one_array(coords) if X.nnz else None
        stack = bool(X.nnz) and index is None
        if stack:
            why = f"torch keeps one (ndim, nnz) int64 array, SciPy one {coords[0].dtype} array per axis: stacked"
            parts.copy("coords", why)
        elif index is not None:  # nothing to share in an empty matrix
            copy_index = _share_or_copy(index, "coords", parts, copy, fresh)
    else:
        indptr, indices = X.indptr, X.indices
        widen = indptr.dtype != indices.dtype or indptr.dtype not in _INDEX_DTYPES
        if widen:
            parts.copy("indices, indptr", f"torch needs both int32 or both int64, not {indices.dtype}/{indptr.dtype}")
        copy_indptr = _share_or_copy(indptr, "indptr", parts, copy, fresh or widen, contiguous=True)
        copy_index = _share_or_copy(indices, "indices", parts, copy, fresh or widen, contiguous=True)
    if device is not None and moving:
        parts.moved(f"moved to {device}")
    if opts.requires_grad:
        _check_grad(row.torch, path)
        parts.notes.append("a leaf that requires grad")

    def build(record: _Parts) -> torch.Tensor:
        Y = X
        if not canonical:
            Y = X.copy()
            Y.sum_duplicates()
        values = _tensor_of(Y.data if cast_to is None else cast_array(Y.data, cast_to, path), copy_data)
        try:
            if fmt == "coo":
                coords = _coords(Y)
                index = _one_array(coords) if Y.nnz and not stack else None
                if index is not None:
                    given = _tensor_of(index, copy_index)
                elif Y.nnz:
                    given = _tensor_of(np.stack([c.astype(np.int64, copy=False) for c in coords]), False)
                else:
                    given = _tensor_of(np.zeros((len(coords), 0), np.int64), False)
                with _quiet():
                    t = torch.sparse_coo_tensor(
                        given, values, Y.shape, is_coalesced=bool(Y.has_canonical_format), check_invariants=True
                    )
                record.confirm("coords", _address(t._indices()), "torch")
            else:
                indptr, indices = Y.indptr, Y.indices
                if widen:
                    indptr, indices = indptr.astype(np.int64), indices.astype(np.int64)
                compressed, plain = _tensor_of(indptr, copy_indptr), _tensor_of(indices, copy_index)
                with _quiet():
                    t = torch.sparse_compressed_tensor(
                        compressed, plain, values, Y.shape, layout=layout, check_invariants=True
                    )
                for part, got in zip(("indptr", "indices"), _compressed(t), strict=True):
                    record.confirm(part, _address(got), "torch")
        except RuntimeError as err:
            raise ValueRangeError(
                "to_tensor",
                path,
                f"the SciPy matrix breaks torch's {str(layout).removeprefix('torch.')} invariants ({err})",
                "Check it with X.check_format(full_check=True); call X.sum_duplicates() if it is not canonical",
            ) from err
        record.confirm("data", _address(_values(t)), "torch")
        if device is not None and moving:
            t = _move(t, device, path)
        return t.requires_grad_(True) if opts.requires_grad else t

    return parts, build


def _scipy_to_tensor(X: Any, opts: ToTensorOptions, path: str) -> Adoption:
    source = _describe_scipy(X)
    fmt = X.format
    if opts.interop.dense:
        return _densified(
            lambda: _scipy_dense(X, "to_tensor", path), opts.copy, "to_tensor", path, "SciPy toarray()", source
        )
    layout = _LAYOUTS.get(fmt)
    if layout is None:
        raise UnsupportedError(
            "to_tensor",
            path,
            f"SciPy's {fmt.upper()} format has no torch layout",
            "Convert it first with X.tocsr() (or X.tocoo()), or pass dense=True",
        )
    if fmt != "coo" and X.ndim != 2:
        raise UnsupportedError(
            "to_tensor",
            path,
            f"a {X.ndim}-D {fmt.upper()} array has no torch layout (torch's are 2-D)",
            "Convert it with X.tocoo() first, or pass dense=True",
        )
    _refuse_pinning(opts, path)
    # COO keeps duplicates (torch and SciPy both sum them); compressed layouts must be canonical.
    known = True if fmt == "coo" else _known_canonical(X)
    parts, build = _plan_scipy(X, opts, path, canonical=known is not False)
    if known is None:
        parts.notes.append(_UNCHECKED)

    def run() -> torch.Tensor:
        planned, make = parts, build
        if known is None and not X.has_canonical_format:  # SciPy scans the indices (and caches the answer)
            planned, make = _plan_scipy(X, opts, path, canonical=False)
        record = planned.fork()
        record.refuse("to_tensor", path, opts.copy)
        t = make(record)
        record.refuse("to_tensor", path, opts.copy)  # a constructor copied what it was handed
        return t

    return parts.adoption("to_tensor", path, opts.copy, source, run)


# --- torch -> torch -------------------------------------------------------------------------


def _tensor_to_tensor(t: torch.Tensor, opts: ToTensorOptions, path: str) -> Adoption:
    source = _describe_sparse(t)
    if opts.interop.dense:
        make = partial(_dense_tensor, t, "to_tensor", path)
        return _densified(make, opts.copy, "to_tensor", path, "torch to_dense()", source)
    _refuse_pinning(opts, path)
    parts, ops = _Parts(), list[Callable[[torch.Tensor], torch.Tensor]]()
    dtype, device, grad = t.dtype, t.device, t.requires_grad
    if opts.dtype is not None and opts.dtype != t.dtype:
        target, copy_indices = opts.dtype, opts.copy is True

        def cast(x: torch.Tensor) -> torch.Tensor:
            base = x.detach()
            return _with_values(base, cast_tensor(_values(base), target, path), copy_indices=copy_indices)

        ops.append(cast)
        parts.copy("values", f"cast {t.dtype} -> {target}, checked".replace("torch.", ""))
        if copy_indices:
            parts.copy("indices", _FRESH)
        else:
            parts.share("indices", 0)
        dtype, grad = target, False
    if opts.device is not None:
        to = resolve_device(opts.device, path, "to_tensor", dtype)
        if needs_device(to, device):
            ops.append(lambda x: _move(x.detach(), to, path))
            parts.moved(f"moved to {to}")
            grad = False
    if opts.copy is True and not parts.copied:
        ops.append(lambda x: x.detach().clone())
        parts.copy("values and indices", _FRESH)
        grad = False
    if opts.requires_grad and not grad:
        _check_grad(dtype, path)
        ops.append(lambda x: (x if x is not t else t.detach()).requires_grad_(True))
        if not parts.copied:
            parts.share("values and indices", 0)
        parts.notes.append("a new leaf that requires grad; the input is not modified")
    if not ops:
        return _as_is(t, f"already a {str(t.layout).removeprefix('torch.')} tensor: returned as it is", source)

    def run() -> torch.Tensor:
        out = t
        for op in ops:
            out = op(out)
        return out

    return parts.adoption("to_tensor", path, opts.copy, source, run)
