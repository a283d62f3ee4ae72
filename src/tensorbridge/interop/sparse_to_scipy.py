"""``to_numpy`` of sparse leaves: a torch sparse tensor becomes the SciPy sparse array of its format.

The arrays are views of the tensor's memory where NumPy can hold them (each part shared or copied,
and why); values SciPy has no sparse dtype for raise, naming ``dtype=`` and ``dense=True``, which
densifies (also the dtypes torch has no densifying kernel for). A SciPy matrix is returned as it
is, or cast (``dtype=``), copied (``copy=True``) or densified. SciPy is imported here only, when a
SciPy array is built. ``sparse.py`` holds the adapter that dispatches here, and the rules.
"""

from __future__ import annotations

import importlib
from functools import partial
from typing import Any

import numpy as np
import torch

from .._convert.cast import cast_array
from ..dtypes import is_ml_dtype, row_for_numpy, row_for_torch
from ..errors import UnsupportedError
from ..plan.core import ToNumpyOptions
from ._sparse_common import (
    _FORMATS,
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
    _scipy_dense,
    _values,
)
from .base import Adopted, finished


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


def _scipy_values(values: torch.Tensor, opts: ToNumpyOptions, path: str, parts: _Parts, fresh: bool) -> _Array:
    if values.is_conj() or values.is_neg():
        values, fresh = values.resolve_conj().resolve_neg(), True
        parts.copy("data", "conjugate or negative bit resolved")
    row = row_for_torch(values.dtype)
    if row is None:
        raise UnsupportedError(
            "to_numpy",
            path,
            f"{values.dtype} values have no NumPy dtype",
            "Cast the tensor first, e.g. t.to(torch.float32)",
        )
    if not row.exact:  # complex32: complex64 holds every value exactly
        values, fresh = values.to(torch.complex64), True
        parts.copy("data", f"{row.name} widened to {row.numpy}, exactly")
    carrier = None if row.carrier is None else row_for_numpy(row.carrier)
    a: _Array = values.numpy() if carrier is None else values.view(carrier.torch).numpy().view(row.numpy)
    if opts.dtype is not None and opts.dtype != a.dtype:
        parts.copy("data", f"cast {a.dtype} -> {opts.dtype}, checked")
        a, fresh = cast_array(a, opts.dtype, path), True
    if not _scipy_holds(a.dtype):
        raise UnsupportedError(
            "to_numpy",
            path,
            f"SciPy sparse arrays cannot hold {a.dtype} values",
            f"Pass dtype=np.float32 (it holds every {a.dtype} value exactly), or dense=True for a dense ndarray",
        )
    return _numpy_part(a, "data", parts, opts.copy, fresh)


def _numpy_part(a: _Array, part: str, parts: _Parts, copy: bool | None, fresh: bool) -> _Array:
    if fresh:
        return a
    if copy is True:
        parts.copy(part, _FRESH)
        fresh_copy: _Array = a.copy()
        return fresh_copy
    parts.share(part, _address(a))
    return a


def _tensor_to_numpy(t: torch.Tensor, opts: ToNumpyOptions, path: str) -> Adopted:
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
    parts, fresh, device = _Parts(), False, t.device
    if device.type != "cpu":
        try:
            t, fresh = t.detach().cpu(), True
        except (RuntimeError, NotImplementedError) as err:
            raise UnsupportedError(
                "to_numpy", path, f"a sparse tensor on {device} cannot reach the host ({err})", "Move it yourself first"
            ) from err
        parts.copy("everything", f"copied from {device} to the host")
    t = t.detach()  # a view: the arrays never require grad
    data = _scipy_values(_values(t), opts, path, parts, fresh)
    shape = tuple(t.shape)
    try:
        if t.layout == torch.sparse_coo:
            index = _numpy_part(t._indices().numpy(), "coords", parts, opts.copy, fresh)
            m = sp.coo_array((data, tuple(index)), shape=shape)
            m.has_canonical_format = t.is_coalesced()  # torch's coalesced order is SciPy's canonical one
            parts.confirm("coords", _address(_coords(m)[0]), "SciPy")
        else:
            compressed, plain = (
                _numpy_part(i.numpy(), p, parts, opts.copy, fresh)
                for i, p in zip(_compressed(t), ("indptr", "indices"), strict=True)
            )
            m = getattr(sp, f"{_FORMATS[t.layout]}_array")((data, plain, compressed), shape=shape)
            parts.confirm("indptr", _address(m.indptr), "SciPy")
            parts.confirm("indices", _address(m.indices), "SciPy")
    except (ValueError, TypeError) as err:
        raise UnsupportedError(
            "to_numpy", path, f"SciPy refused the tensor's arrays ({err})", "Pass dense=True for a dense ndarray"
        ) from err
    parts.confirm("data", _address(m.data), "SciPy")
    return parts.finish(m, "to_numpy", path, opts.copy, source)


# --- SciPy -> SciPy -------------------------------------------------------------------------


def _scipy_to_numpy(X: Any, opts: ToNumpyOptions, path: str) -> Adopted:
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
        Y = _rebuild(X, cast_array(X.data, opts.dtype, path), parts, opts.copy)
    elif opts.copy is True:
        Y = X.copy()
        parts.copy("everything", _FRESH)
    else:
        return finished(X, "already a SciPy sparse matrix: returned as it is", copied=False, source=source)
    return parts.finish(Y, "to_numpy", path, opts.copy, source)


def _rebuild(X: Any, data: _Array, parts: _Parts, copy: bool | None) -> Any:
    """A matrix of ``X``'s type and structure (its index arrays, copied if asked) around ``data``."""
    if X.format == "coo":
        coords = tuple(_numpy_part(c, "coords", parts, copy, False) for c in _coords(X))
        Y = type(X)((data, coords), shape=X.shape)
        Y.has_canonical_format = X.has_canonical_format
        parts.confirm("coords", _address(_coords(Y)[0]), "SciPy")
        return Y
    indices = _numpy_part(X.indices, "indices", parts, copy, False)
    indptr = _numpy_part(X.indptr, "indptr", parts, copy, False)
    Y = type(X)((data, indices, indptr), shape=X.shape)
    parts.confirm("indices", _address(Y.indices), "SciPy")
    parts.confirm("indptr", _address(Y.indptr), "SciPy")
    return Y
