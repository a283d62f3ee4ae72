"""``to_tensor`` of sparse leaves: a SciPy matrix becomes the torch sparse tensor of its layout.

The tensor is built over the matrix's own arrays where torch can hold them (each part shared or
copied, and why); torch checks the indices on the way in; a compressed matrix with unsorted or
duplicate indices is made canonical on a copy (``sum_duplicates``); ``dense=True`` densifies.
``dtype=``, ``device=``, ``copy=`` and ``requires_grad=`` apply here, also to a torch sparse
tensor passed as it is. ``sparse.py`` holds the adapter that dispatches here, and the rules.
"""

from __future__ import annotations

import itertools
from functools import partial
from typing import Any, Final

import numpy as np
import torch

from .._convert.cast import cast_array, cast_tensor
from ..dtypes import row_for_numpy, row_for_torch
from ..errors import DeviceError, UnsupportedError, ValueRangeError
from ..plan.core import ToTensorOptions
from ..plan.transfer import needs_device, resolve_device
from ._sparse_common import (
    _FRESH,
    _LAYOUTS,
    _address,
    _Array,
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
from .base import Adopted, finished

_INDEX_DTYPES: Final = frozenset({np.dtype(np.int32), np.dtype(np.int64)})
_CPU: Final = torch.device("cpu")


def _refuse_pinning(opts: ToTensorOptions, path: str) -> None:
    if opts.pin_memory:
        raise UnsupportedError(
            "to_tensor",
            path,
            "pin_memory=True is not supported for sparse tensors",
            "Pass device='cuda' to move the tensor to the GPU directly, or dense=True for a dense tensor",
        )


def _grad(t: torch.Tensor, path: str) -> torch.Tensor:
    if not (t.dtype.is_floating_point or t.dtype.is_complex):
        raise UnsupportedError(
            "to_tensor",
            path,
            f"requires_grad=True needs a float or complex dtype, not {t.dtype}",
            "Pass dtype=torch.float32 as well, or drop requires_grad",
        )
    return t.requires_grad_(True)


def _move(t: torch.Tensor, device: torch.device, path: str) -> torch.Tensor:
    try:
        return t.to(device)
    except (RuntimeError, NotImplementedError) as err:
        raise DeviceError(
            "to_tensor", path, f"moving the sparse tensor to {device} failed ({err})", "Check the device and its memory"
        ) from err


# --- SciPy -> torch -------------------------------------------------------------------------


def _tensor_of(
    a: _Array, part: str, parts: _Parts, copy: bool | None, fresh: bool, contiguous: bool = False
) -> torch.Tensor:
    """A tensor over ``a``'s memory; over a copy where torch cannot hold it, or ``copy=True``.

    torch's sparse constructors keep strided values and COO indices as they are; only the
    index arrays of compressed layouts must be contiguous (``contiguous``).
    """
    why = ""
    if not fresh:
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
        a = np.array(a, dtype=a.dtype.newbyteorder("="), order="C", copy=True)
        parts.copy(part, why)
    elif not fresh:
        parts.share(part, _address(a))
    row = row_for_numpy(a.dtype)
    assert row is not None  # values were checked against the table, indices are int32/int64
    with _quiet():
        t = torch.from_numpy(a if row.carrier is None else a.view(row.carrier))
    return t if row.carrier is None else t.view(row.torch)


def _values_for_torch(X: Any, opts: ToTensorOptions, path: str, parts: _Parts, fresh: bool) -> tuple[_Array, bool]:
    data: _Array = X.data
    row = row_for_numpy(data.dtype)
    if opts.dtype is not None and (row is None or opts.dtype != row.torch):
        target = row_for_torch(opts.dtype)
        assert target is not None  # normalize_to_tensor refuses dtypes NumPy cannot hold
        parts.copy("data", f"cast {data.dtype} -> {target.name}, checked")
        return cast_array(data, target.numpy, path), True
    if row is None:
        raise UnsupportedError(
            "to_tensor",
            path,
            f"SciPy values of dtype {data.dtype} have no torch dtype",
            "Pass dtype=torch.float64 (complex128 for complex values) to accept the rounding",
        )
    return data, fresh


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


def _scipy_to_tensor(X: Any, opts: ToTensorOptions, path: str) -> Adopted:
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
    parts, fresh = _Parts(), False
    if fmt != "coo" and not X.has_canonical_format:
        parts.copy("everything", "unsorted or duplicate indices within a row, which torch forbids: made canonical")
        parts.hint = "call X.sum_duplicates() first (it sorts and sums in place)"
        X, fresh = X.copy(), True
        X.sum_duplicates()
    data, fresh_data = _values_for_torch(X, opts, path, parts, fresh)
    row = row_for_numpy(data.dtype)
    assert row is not None  # checked by _values_for_torch
    device = None if opts.device is None else resolve_device(opts.device, path, "to_tensor", row.torch)
    moving = device is not None and needs_device(device, _CPU)
    copy = None if moving else opts.copy  # a move makes fresh memory anyway; until then, only read
    values = _tensor_of(data, "data", parts, copy, fresh_data)
    try:
        if fmt == "coo":
            coords = _coords(X)
            index = _one_array(coords) if X.nnz else np.zeros((len(coords), 0), np.int64)
            fresh_index = fresh or not X.nnz  # nothing to share in an empty matrix
            if index is None:
                index, fresh_index = np.stack([c.astype(np.int64, copy=False) for c in coords]), True
                why = f"torch keeps one (ndim, nnz) int64 array, SciPy one {coords[0].dtype} array per axis: stacked"
                parts.copy("coords", why)
            given = _tensor_of(index, "coords", parts, copy, fresh_index)
            with _quiet():
                t = torch.sparse_coo_tensor(
                    given, values, X.shape, is_coalesced=bool(X.has_canonical_format), check_invariants=True
                )
            parts.confirm("coords", _address(t._indices()), "torch")
        else:
            indptr, indices, fresh_index = X.indptr, X.indices, fresh
            if indptr.dtype != indices.dtype or indptr.dtype not in _INDEX_DTYPES:
                parts.copy(
                    "indices, indptr", f"torch needs both int32 or both int64, not {indices.dtype}/{indptr.dtype}"
                )
                indptr, indices, fresh_index = indptr.astype(np.int64), indices.astype(np.int64), True
            compressed = _tensor_of(indptr, "indptr", parts, copy, fresh_index, contiguous=True)
            plain = _tensor_of(indices, "indices", parts, copy, fresh_index, contiguous=True)
            with _quiet():
                t = torch.sparse_compressed_tensor(
                    compressed, plain, values, X.shape, layout=layout, check_invariants=True
                )
            for part, got in zip(("indptr", "indices"), _compressed(t), strict=True):
                parts.confirm(part, _address(got), "torch")
    except RuntimeError as err:
        raise ValueRangeError(
            "to_tensor",
            path,
            f"the SciPy matrix breaks torch's {str(layout).removeprefix('torch.')} invariants ({err})",
            "Check it with X.check_format(full_check=True); call X.sum_duplicates() if it is not canonical",
        ) from err
    parts.confirm("data", _address(_values(t)), "torch")
    if device is not None and moving:
        t = _move(t, device, path)
        parts.moved(f"moved to {device}")
    if opts.requires_grad:
        t = _grad(t, path)
        parts.notes.append("a leaf that requires grad")
    return parts.finish(t, "to_tensor", path, opts.copy, source)


# --- torch -> torch -------------------------------------------------------------------------


def _tensor_to_tensor(t: torch.Tensor, opts: ToTensorOptions, path: str) -> Adopted:
    source = _describe_sparse(t)
    if opts.interop.dense:
        make = partial(_dense_tensor, t, "to_tensor", path)
        return _densified(make, opts.copy, "to_tensor", path, "torch to_dense()", source)
    _refuse_pinning(opts, path)
    parts, out = _Parts(), t
    if opts.dtype is not None and opts.dtype != t.dtype:
        base = t.detach()
        out = _with_values(base, cast_tensor(_values(base), opts.dtype, path), copy_indices=opts.copy is True)
        parts.copy("values", f"cast {t.dtype} -> {opts.dtype}, checked".replace("torch.", ""))
        if opts.copy is True:
            parts.copy("indices", _FRESH)
        else:
            parts.share("indices", 0)
    if opts.device is not None:
        device = resolve_device(opts.device, path, "to_tensor", out.dtype)
        if needs_device(device, out.device):
            out = _move(out.detach(), device, path)
            parts.moved(f"moved to {device}")
    if opts.copy is True and not parts.copied:
        out = out.detach().clone()
        parts.copy("values and indices", _FRESH)
    if opts.requires_grad and not out.requires_grad:
        out = _grad(out if out is not t else t.detach(), path)
        if not parts.copied:
            parts.share("values and indices", 0)
        parts.notes.append("a new leaf that requires grad; the input is not modified")
    if out is t:
        return finished(
            t,
            f"already a {str(t.layout).removeprefix('torch.')} tensor: returned as it is",
            copied=False,
            source=source,
        )
    return parts.finish(out, "to_tensor", path, opts.copy, source)
