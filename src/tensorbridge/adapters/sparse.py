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

The adapter here dispatches: ``sparse_from_scipy.py`` converts for ``to_tensor``,
``sparse_to_scipy.py`` for ``to_numpy``; ``_sparse_common.py`` holds what both use.

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

from typing import Any, Final

import torch

from ..plan.core import ToNumpyOptions, ToTensorOptions
from ._sparse_common import _FORMATS
from .base import Adoption
from .detect import is_instance
from .sparse_from_scipy import _scipy_to_tensor, _tensor_to_tensor
from .sparse_to_scipy import _scipy_to_numpy, _tensor_to_numpy

__all__ = ["ADAPTER"]

_TORCH_LAYOUTS: Final = frozenset({*_FORMATS, torch.sparse_bsc})


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

    def to_tensor(self, obj: Any, opts: ToTensorOptions, path: str) -> Adoption:
        """A sparse tensor of the SciPy matrix's layout over its memory; a sparse tensor as it is.

        Planned from metadata; ``run()`` converts (and checks the indices).

        Example:
            >>> import numpy as np, scipy.sparse as sp
            >>> got = ADAPTER.to_tensor(sp.csr_array(np.eye(2)), ToTensorOptions(), "data")
            >>> got.kind, got.why.split(";")[0]
            ('adopt', 'data, indptr, indices shared')
            >>> got.run().layout
            torch.sparse_csr
        """
        if isinstance(obj, torch.Tensor):
            return _tensor_to_tensor(obj, opts, path)
        return _scipy_to_tensor(obj, opts, path)

    def to_numpy(self, obj: Any, opts: ToNumpyOptions, path: str) -> Adoption:
        """The SciPy sparse array of the tensor's layout over its memory; a SciPy matrix as it is.

        Example:
            >>> import torch
            >>> got = ADAPTER.to_numpy(torch.tensor([[0, 2], [3, 0]]).to_sparse(), ToNumpyOptions(), "data")
            >>> got.why, type(got.run()).__name__, got.run().toarray().tolist()
            ('data, coords shared', 'coo_array', [[0, 2], [3, 0]])
        """
        if isinstance(obj, torch.Tensor):
            return _tensor_to_numpy(obj, opts, path)
        return _scipy_to_numpy(obj, opts, path)


ADAPTER: Final = _Sparse()
