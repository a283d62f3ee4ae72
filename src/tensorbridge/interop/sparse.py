"""SciPy sparse matrices and torch sparse tensors, converted format for format.

| SciPy (``*_array`` or ``*_matrix``) | torch layout |
|---|---|
| COO | ``sparse_coo`` |
| CSR | ``sparse_csr`` |
| CSC | ``sparse_csc`` |
| BSR | ``sparse_bsr`` |

``to_tensor`` turns a SciPy matrix into the sparse tensor of the same layout, shape and dtype,
built over the matrix's own values and index arrays wherever torch can hold them as they are;
``to_numpy`` turns a sparse tensor into the SciPy sparse *array* of the same format, the same
way. Nothing is densified unless ``dense=True`` asks. The adoption step names each part
(SciPy's ``data``, ``indices``, ``indptr``, ``coords``; a tensor's ``values``/``indices``)
as shared or copied, and why; a result counts as sharing memory when any part is shared,
since writes to shared values reach the input.

Where the libraries differ, this module decides:

- COO indices: torch keeps one ``(ndim, nnz)`` int64 array, SciPy one 1-D array per axis
  (int32 where the shape allows). SciPy -> torch copies them, unless they are int64 rows of
  one buffer (after a torch -> SciPy conversion, or from ``np.nonzero``): those are viewed as
  one strided array. Strided values are kept; compressed indices must be contiguous.
- Duplicate entries: COO allows them on both sides and both sum them when computing, so they
  are kept (summing them would be a copy that changes nothing); SciPy's
  ``has_canonical_format`` and torch's ``is_coalesced()`` carry over, and torch verifies the
  claim. torch's compressed layouts forbid unsorted or duplicate indices within a row, which
  SciPy allows: such a matrix is made canonical on a copy (``sum_duplicates``, the sum SciPy
  itself computes with); ``copy=False`` refuses.
- torch checks its invariants on the way in (one pass over the indices): a malformed SciPy
  matrix raises ``ValueRangeError`` here instead of crashing a later torch kernel.
- SciPy has no float16, bfloat16 or float8 sparse values: such tensors raise, naming
  ``dtype=np.float32`` (which holds every such value exactly) and ``dense=True``.
- ``dense=True`` also densifies what torch has no kernel for: unsigned integers (their sums wrap
  bit for bit like the signed ones) and float8 without duplicates (no sum at all).
- ``pin_memory=True`` is refused for sparse results; ``requires_grad=True`` makes a new leaf,
  as for dense tensors. SciPy is imported only to build SciPy arrays from tensors.
- What the step says is what the constructors did: a part handed over to be shared that a
  constructor copied anyway (SciPy's ``*_matrix`` narrow int64 indices) is reported copied.

Example:
    >>> import numpy as np, scipy.sparse as sp, tensorbridge as tb
    >>> X = sp.csr_array(np.array([[0.0, 1.5], [2.0, 0.0]]))
    >>> t = tb.to_tensor({"adj": X})["adj"]
    >>> t.layout, t.to_dense().tolist()
    (torch.sparse_csr, [[0.0, 1.5], [2.0, 0.0]])
    >>> type(tb.to_numpy(t)).__name__
    'csr_array'
"""

from __future__ import annotations

import importlib
import itertools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import numpy as np
import torch

from .._convert.cast import cast_array, cast_tensor
from ..dtypes import is_ml_dtype, row_for_numpy, row_for_torch
from ..errors import CopyRefusedError, DeviceError, UnsupportedError, ValueRangeError
from ..plan.core import ToNumpyOptions, ToTensorOptions, describe_tensor
from ..plan.transfer import needs_device, resolve_device
from .base import Adopted, adopted, finished
from .detect import is_instance

__all__ = ["ADAPTER"]

_Array = np.ndarray[Any, Any]
_LAYOUTS: Final = {"coo": torch.sparse_coo, "csr": torch.sparse_csr, "csc": torch.sparse_csc, "bsr": torch.sparse_bsr}
_FORMATS: Final = {layout: fmt for fmt, layout in _LAYOUTS.items()}
_TORCH_LAYOUTS: Final = frozenset({*_FORMATS, torch.sparse_bsc})
_INDEX_DTYPES: Final = frozenset({np.dtype(np.int32), np.dtype(np.int64)})
_CPU: Final = torch.device("cpu")
_FRESH: Final = "copy=True asks for fresh memory"
# torch cannot densify these, but sums of unsigned integers wrap exactly as the signed ones of
# the same size do, bit for bit: the values are densified as those.
_WRAPPING: Final = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        # torch warns once per process that compressed layouts are beta: the caller asked for
        # exactly that layout. Read-only arrays reach torch only with copy=False (README).
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        yield


@dataclass
class _Parts:
    """What became of each part of the result: shared with the input, or copied and why."""

    shared: dict[str, int] = field(default_factory=dict)  # part -> address shared (0: empty)
    copied: list[tuple[str, str]] = field(default_factory=list)
    hint: str = ""
    notes: list[str] = field(default_factory=list)  # what else was done, e.g. requires grad

    def share(self, part: str, address: int) -> None:
        self.shared[part] = address

    def copy(self, part: str, why: str) -> None:
        if (part, why) not in self.copied:
            self.copied.append((part, why))

    def confirm(self, part: str, address: int, by: str) -> None:
        """A constructor may copy what it was handed: the record follows what it did."""
        if self.shared.get(part, address) not in (0, address):
            del self.shared[part]
            self.copy(part, f"{by} copied it")

    def moved(self, why: str) -> None:
        self.shared.clear()
        self.copy("everything", why)

    def finish(self, value: Any, what: str, path: str, copy: bool | None, source: str) -> Adopted:
        if copy is False and self.copied:
            raise CopyRefusedError(
                what,
                path,
                "copy=False, but the conversion must copy: " + "; ".join(f"{p} ({w})" for p, w in self.copied),
                "Pass copy=None to allow the copy" + (f", or {self.hint}" if self.hint else ""),
            )
        bits = [f"{part} copied ({why})" for part, why in self.copied]
        if self.shared:
            bits.append(", ".join(self.shared) + " shared")
        bits += self.notes
        return finished(value, "; ".join(bits), copied=bool(self.copied) and not self.shared, source=source)


def _address(x: _Array | torch.Tensor) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.data_ptr()) if x.numel() else 0
    return int(x.__array_interface__["data"][0]) if x.size else 0


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


def _coords(X: Any) -> tuple[_Array, ...]:
    coords = getattr(X, "coords", None)  # SciPy < 1.13 has only row and col
    return tuple(coords) if coords is not None else (X.row, X.col)


def _describe_scipy(X: Any) -> str:
    bits = [f"scipy.sparse.{type(X).__name__} {X.dtype}", f"shape {X.shape}", f"nnz {X.nnz}"]
    if X.format == "bsr":
        bits.append(f"blocks {X.blocksize}")
    index = _coords(X)[0] if X.format == "coo" else getattr(X, "indices", None)
    if index is not None:
        bits.append(f"{index.dtype} indices")
    return ", ".join(bits)


def _describe_sparse(t: torch.Tensor) -> str:
    return f"{describe_tensor(t)}, nnz {t._nnz()}"


def _compressed(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(compressed, plain) indices: (crow, col) for CSR/BSR, (ccol, row) for CSC/BSC."""
    if t.layout in (torch.sparse_csr, torch.sparse_bsr):
        return t.crow_indices(), t.col_indices()
    return t.ccol_indices(), t.row_indices()


def _values(t: torch.Tensor) -> torch.Tensor:
    return t._values() if t.layout == torch.sparse_coo else t.values()


def _with_values(t: torch.Tensor, values: torch.Tensor, copy_indices: bool = False) -> torch.Tensor:
    """``t``'s structure (its indices, copied if asked) around other values."""
    with _quiet():
        if t.layout == torch.sparse_coo:
            index = t._indices().clone() if copy_indices else t._indices()
            coalesced = t.is_coalesced()
            return torch.sparse_coo_tensor(index, values, t.shape, is_coalesced=coalesced, check_invariants=False)
        compressed, plain = (i.clone() if copy_indices else i for i in _compressed(t))
        return torch.sparse_compressed_tensor(
            compressed, plain, values, t.shape, layout=t.layout, check_invariants=False
        )


def _dense_tensor(t: torch.Tensor, what: str, path: str) -> torch.Tensor:
    """``t.to_dense()``, also for the dtypes torch has no densifying kernel for, where exact."""
    with _quiet():
        try:
            return t.to_dense()
        except (NotImplementedError, RuntimeError) as err:
            failure = err
        carrier = _WRAPPING.get(t.dtype)
        zero_bits = torch.zeros(1, dtype=torch.int8).view(t.dtype) if t.element_size() == 1 else None
        unique = t.layout != torch.sparse_coo or t.is_coalesced()
        if carrier is None and zero_bits is not None and unique and float(zero_bits.float()) == 0.0:
            carrier = torch.int8  # float8 without duplicates: no sum, each value's bits placed as they are
        if carrier is not None:
            base = t.detach()
            return _with_values(base, _values(base).view(carrier)).to_dense().view(t.dtype)
    raise UnsupportedError(
        what,
        path,
        f"torch cannot densify a {str(t.layout).removeprefix('torch.')} tensor of {t.dtype} ({failure})",
        "Coalesce it (t.coalesce()) or cast the values first, e.g. t.to(torch.float32)",
    )


def _densified(make: Any, copy: bool | None, what: str, path: str, why: str, source: str) -> Adopted:
    if copy is False:
        raise CopyRefusedError(
            what,
            path,
            "copy=False, but dense=True writes every value, zeros included, into fresh memory",
            "Pass copy=None, or drop dense=True to keep the sparse layout",
        )
    return adopted(make(), f"densified (dense=True): {why}", copied=True, source=source)


def _scipy_dense(X: Any, what: str, path: str) -> _Array:
    try:
        dense: _Array = X.toarray()
    except (ValueError, TypeError) as err:  # dtypes SciPy half-supports (float16, ml_dtypes)
        raise UnsupportedError(
            what, path, f"SciPy cannot densify it ({err})", "Cast it first with X.astype(np.float32)"
        ) from err
    return dense


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


# --- SciPy -> SciPy, torch -> torch ---------------------------------------------------------


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


class _Sparse:
    name = "sparse"

    def claims(self, obj: object) -> bool:
        """Whether ``obj`` is a SciPy sparse matrix/array or a torch sparse tensor.

        Example:
            >>> import torch
            >>> ADAPTER.claims(torch.eye(2).to_sparse()), ADAPTER.claims(torch.eye(2))
            (True, False)
        """
        if isinstance(obj, torch.Tensor):
            return obj.layout in _TORCH_LAYOUTS
        return is_instance(obj, "scipy.sparse", "spmatrix") or is_instance(obj, "scipy.sparse", "sparray")

    def to_tensor(self, obj: Any, opts: ToTensorOptions, path: str) -> Adopted:
        """A sparse tensor of the SciPy matrix's layout over its memory; a sparse tensor as it is.

        Example:
            >>> import numpy as np, scipy.sparse as sp
            >>> got = ADAPTER.to_tensor(sp.csr_array(np.eye(2)), ToTensorOptions(), "data")
            >>> got.value.layout, got.step.why
            (torch.sparse_csr, 'data, indptr, indices shared')
        """
        if isinstance(obj, torch.Tensor):
            return _tensor_to_tensor(obj, opts, path)
        return _scipy_to_tensor(obj, opts, path)

    def to_numpy(self, obj: Any, opts: ToNumpyOptions, path: str) -> Adopted:
        """The SciPy sparse array of the tensor's layout over its memory; a SciPy matrix as it is.

        Example:
            >>> import torch
            >>> got = ADAPTER.to_numpy(torch.tensor([[0, 2], [3, 0]]).to_sparse(), ToNumpyOptions(), "data")
            >>> type(got.value).__name__, got.value.toarray().tolist(), got.step.why
            ('coo_array', [[0, 2], [3, 0]], 'data, coords shared')
        """
        if isinstance(obj, torch.Tensor):
            return _tensor_to_numpy(obj, opts, path)
        return _scipy_to_numpy(obj, opts, path)


ADAPTER: Final = _Sparse()
