"""``to_numpy`` of sparse leaves: a torch sparse tensor becomes the SciPy sparse array of its format.

The arrays are views of the tensor's memory where NumPy can hold them (each part shared or copied,
and why); values SciPy has no sparse dtype for raise, naming ``dtype=`` and ``dense=True``, which
densifies (also the dtypes torch has no densifying kernel for). A SciPy matrix is returned as it
is, or cast (``dtype=``), copied (``copy=True``) or densified. SciPy is imported here only, when a
SciPy array is built. ``sparse.py`` holds the adapter that dispatches here, and the rules.

Planning reads the layout, dtypes, device and the parts' addresses; moving to the host, casts
and the SciPy constructors run with the conversion (which records what they really did).
"""

from __future__ import annotations

import importlib
from functools import partial
from typing import Any

import numpy as np
import torch

from ..dtypes import is_ml_dtype, row_for_torch
from ..errors import UnsupportedError
from ..ops.cast import cast_array
from ..plan.core import ToNumpyOptions
from ._sparse_common import (
    _FORMATS,
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
    _scipy_dense,
    _values,
)
from .base import Adoption
from .detect import is_instance


def _scipy_holds(dt: np.dtype[Any]) -> bool:
    """Whether SciPy's sparse formats take values of ``dt``: no float16, no ml_dtypes."""
    return not is_ml_dtype(dt) and (dt.kind in "biuc" or (dt.kind == "f" and dt.itemsize >= 4))


def _scipy_sparse(path: str) -> Any:
    try:
        return importlib.import_module("scipy.sparse")  # lazily: importing tensorbridge never imports SciPy
    except ImportError as err:
        raise UnsupportedError(
            "to_numpy",
            path,
            f"a sparse tensor becomes a SciPy sparse array, but SciPy cannot be imported ({err})",
            "Install it (pip install 'tensorbridge[scipy]'), or pass dense=True for a dense ndarray",
        ) from err


# --- torch -> SciPy -------------------------------------------------------------------------


def _share_or_copy(x: _Array | torch.Tensor, part: str, parts: _Parts, copy: bool | None, fresh: bool) -> bool:
    """Record whether a part is shared or copied (``copy=True``); return the latter. A ``fresh`` part is neither."""
    if fresh:
        return False
    if copy is True:
        parts.copy(part, _FRESH)
        return True
    parts.share(part, _address(x))
    return False


def _tensor_to_numpy(t: torch.Tensor, opts: ToNumpyOptions, path: str) -> Adoption:
    source = _describe_sparse(t)
    layout = str(t.layout).removeprefix("torch.")
    if opts.interop.dense:
        make = partial(_dense_tensor, t, "to_numpy", path)
        return _densified(make, opts.copy, "to_numpy", path, "torch to_dense()", source)
    if t.layout == torch.sparse_bsc:
        raise UnsupportedError(
            "to_numpy",
            path,
            "SciPy has no block-CSC format",
            "Convert it first with t.to_sparse_bsr(blocksize) or t.to_sparse_csc(), or pass dense=True",
        )
    if t.dense_dim():
        raise UnsupportedError(
            "to_numpy",
            path,
            f"a hybrid {layout} tensor (values with {t.dense_dim()} dense dimensions) has no SciPy format",
            "Pass dense=True for a dense ndarray, or convert each dense column separately",
        )
    if t.layout != torch.sparse_coo and t.ndim != 2:
        raise UnsupportedError(
            "to_numpy",
            path,
            f"a batched {layout} tensor (shape {tuple(t.shape)}) has no SciPy format",
            "Convert each batch element t[i] separately, or pass dense=True",
        )
    sp = _scipy_sparse(path)
    parts, device = _Parts(), t.device
    moving = device.type != "cpu"
    if moving:
        parts.copy("everything", f"copied from {device} to the host")
    values = _values(t)  # a view: its dtype and bits are what planning needs
    resolve = values.is_conj() or values.is_neg()
    if resolve:
        parts.copy("data", "conjugate or negative bit resolved")
    row = row_for_torch(values.dtype)
    if row is None:
        raise UnsupportedError(
            "to_numpy",
            path,
            f"{values.dtype} values have no NumPy dtype",
            "Cast the tensor first, e.g. t.to(torch.float32)",
        )
    widen = not row.exact  # complex32: complex64 holds every value exactly
    if widen:
        parts.copy("data", f"{row.name} widened to {row.numpy}, exactly")
    cast = opts.dtype is not None and opts.dtype != row.numpy
    if cast:
        parts.copy("data", f"cast {row.numpy} -> {opts.dtype}, checked")
    final = opts.dtype if opts.dtype is not None and cast else row.numpy
    if not _scipy_holds(final):
        raise UnsupportedError(
            "to_numpy",
            path,
            f"SciPy sparse arrays cannot hold {final} values",
            f"Pass dtype=np.float32 (it holds every {final} value exactly), or dense=True for a dense ndarray",
        )
    copy_data = _share_or_copy(values, "data", parts, opts.copy, moving or resolve or widen or cast)
    target = opts.dtype
    copy_index: tuple[bool, ...]
    if t.layout == torch.sparse_coo:
        copy_index = (_share_or_copy(t._indices(), "coords", parts, opts.copy, moving),)
    else:
        copy_index = tuple(
            _share_or_copy(i, p, parts, opts.copy, moving)
            for i, p in zip(_compressed(t), ("indptr", "indices"), strict=True)
        )

    def run() -> Any:
        record = parts.fork()
        host = t
        if moving:
            try:
                host = t.detach().cpu()
            except (RuntimeError, NotImplementedError) as err:
                raise UnsupportedError(
                    "to_numpy",
                    path,
                    f"a sparse tensor on {device} cannot reach the host ({err})",
                    "Move it yourself first",
                ) from err
        host = host.detach()  # a view: the arrays never require grad
        v = _values(host)
        if resolve:
            v = v.resolve_conj().resolve_neg()
        if widen:
            v = v.to(torch.complex64)
        data: _Array = row.share_as_array(v)
        if target is not None and cast:
            data = cast_array(data, target, path)
        if copy_data:
            data = data.copy()
        shape = tuple(host.shape)
        try:
            if host.layout == torch.sparse_coo:
                index = host._indices().numpy()
                m = sp.coo_array((data, tuple(index.copy() if copy_index[0] else index)), shape=shape)
                m.has_canonical_format = host.is_coalesced()  # torch's coalesced order is SciPy's canonical one
                record.confirm("coords", _address(_coords(m)[0]), "SciPy")
            else:
                compressed, plain = (
                    i.numpy().copy() if copied else i.numpy()
                    for i, copied in zip(_compressed(host), copy_index, strict=True)
                )
                m = getattr(sp, f"{_FORMATS[host.layout]}_array")((data, plain, compressed), shape=shape)
                record.confirm("indptr", _address(m.indptr), "SciPy")
                record.confirm("indices", _address(m.indices), "SciPy")
        except (ValueError, TypeError) as err:
            raise UnsupportedError(
                "to_numpy", path, f"SciPy refused the tensor's arrays ({err})", "Pass dense=True for a dense ndarray"
            ) from err
        record.confirm("data", _address(m.data), "SciPy")
        record.refuse("to_numpy", path, opts.copy)  # a constructor copied what it was handed
        return m

    return parts.adoption("to_numpy", path, opts.copy, source, run)


# --- SciPy -> SciPy -------------------------------------------------------------------------


def _narrowed(X: Any, a: _Array) -> bool:
    """Whether SciPy's ``*_matrix`` constructors narrow this int64 index array to int32 (a copy).

    They do where the shape and ``nnz`` fit int32 (a valid matrix's indices then do too); the
    ``*_array`` ones keep int64.
    """
    limit = int(np.iinfo(np.int32).max)
    return is_instance(X, "scipy.sparse", "spmatrix") and a.dtype == np.int64 and max(*X.shape, X.nnz) <= limit


def _scipy_to_numpy(X: Any, opts: ToNumpyOptions, path: str) -> Adoption:
    source = _describe_scipy(X)
    if opts.interop.dense:
        return _densified(
            lambda: _scipy_dense(X, "to_numpy", path), opts.copy, "to_numpy", path, "SciPy toarray()", source
        )
    parts = _Parts()
    if opts.dtype is not None and opts.dtype != X.dtype:
        if X.format not in _LAYOUTS:
            raise UnsupportedError(
                "to_numpy",
                path,
                f"dtype= on SciPy's {X.format.upper()} format is not supported",
                "Convert it first with X.tocsr() (or X.tocoo())",
            )
        if not _scipy_holds(opts.dtype):
            raise UnsupportedError(
                "to_numpy",
                path,
                f"SciPy sparse arrays cannot hold {opts.dtype} values",
                "Pass dense=True for a dense ndarray of that dtype, or a dtype such as np.float32",
            )
        parts.copy("data", f"cast {X.dtype} -> {opts.dtype}, checked")
        indices = {"coords": _coords(X)[0]} if X.format == "coo" else {"indices": X.indices, "indptr": X.indptr}
        copy_index = False
        for part, a in indices.items():
            copy_index = _share_or_copy(a, part, parts, opts.copy, False)
            if not copy_index and _narrowed(X, a):
                parts.confirm(part, -1, "SciPy")  # not what it was handed: reported copied
        target = opts.dtype

        def run() -> Any:
            record = parts.fork()
            Y = _rebuild(X, cast_array(X.data, target, path), record, copy_index)
            record.refuse("to_numpy", path, opts.copy)
            return Y

        return parts.adoption("to_numpy", path, opts.copy, source, run)
    if opts.copy is True:
        parts.copy("everything", _FRESH)
        return parts.adoption("to_numpy", path, opts.copy, source, X.copy)
    return _as_is(X, "already a SciPy sparse matrix: returned as it is", source)


def _rebuild(X: Any, data: _Array, record: _Parts, copy: bool) -> Any:
    """A matrix of ``X``'s type and structure (its index arrays, copied if asked) around ``data``."""
    if X.format == "coo":
        coords = tuple(c.copy() if copy else c for c in _coords(X))
        Y = type(X)((data, coords), shape=X.shape)
        Y.has_canonical_format = X.has_canonical_format
        record.confirm("coords", _address(_coords(Y)[0]), "SciPy")
        return Y
    indices = X.indices.copy() if copy else X.indices
    indptr = X.indptr.copy() if copy else X.indptr
    Y = type(X)((data, indices, indptr), shape=X.shape)
    record.confirm("indices", _address(Y.indices), "SciPy")
    record.confirm("indptr", _address(Y.indptr), "SciPy")
    return Y
