"""Leaves from other libraries, one adapter per family, tried in table order.

| adapter | leaves | module |
|---|---|---|
| layouts | quantized, nested tensors; DTensor, FakeTensor (refused) | ``layouts.py``, ``quantized.py``, ``nested.py`` |
| pandas | Series, DataFrame, Index | ``pandas.py`` (+ ``pandas_columns``, ``_frames``, ``_datetimes``) |
| sparse | SciPy/torch sparse (COO, CSR, CSC, BSR) | ``sparse.py``, ``sparse_from_scipy.py``, ``sparse_to_scipy.py`` |
| devices | ``__dlpack__`` / ``__cuda_array_interface__`` producers on a GPU (CuPy, JAX on GPU) | ``devices.py`` |
| arrays | what NumPy can view: buffers, ``__array_interface__``, CPU ``__dlpack__``, ``__array__`` | ``arrays.py`` |

No adapter imports its library: types are recognized through ``sys.modules`` (``detect.py``).
"""

from __future__ import annotations

from typing import Final

from . import arrays, devices, layouts, pandas, sparse
from .base import Adapter, Adoption

__all__ = ["ADAPTERS", "Adoption", "adapter_for"]

ADAPTERS: Final[tuple[Adapter, ...]] = (
    layouts.ADAPTER,
    pandas.ADAPTER,
    sparse.ADAPTER,
    devices.ADAPTER,
    arrays.ADAPTER,
)


def adapter_for(obj: object) -> Adapter | None:
    """The first adapter that claims ``obj``, or None."""
    for adapter in ADAPTERS:
        if adapter.claims(obj):
            return adapter
    return None
