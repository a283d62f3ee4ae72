"""tensorbridge: NumPy arrays <-> PyTorch tensors, for every dtype, layout, device and container.

Example:
    >>> import numpy as np, tensorbridge as tb
    >>> t = tb.to_tensor(np.arange(3))
    >>> tb.to_numpy(t).tolist()
    [0, 1, 2]
"""

from __future__ import annotations

from ._stack import stack
from .adapters.nested import nested_tensor
from .adapters.quantized import QuantizedArray
from .api import Explanation, explain, to_numpy, to_tensor
from .batch import Collate, Prefetch, collate, prefetch
from .dtypes import ROWS, numpy_dtype, torch_dtype
from .errors import (
    ConversionError,
    CopyRefusedError,
    DeviceError,
    DistributedError,
    FileFormatError,
    OutOfMemoryError,
    StructureError,
    UnsupportedError,
    ValueRangeError,
)
from .files.load_save import TensorFile, load, save
from .files.load_save import open as open  # re-exported, but not in __all__: a star import keeps the builtin open
from .pipeline import PlanCacheInfo, configure_plan_cache
from .pipeline import cache_info as plan_cache_info
from .transfer.public import PoolStats, TransferConfig, configure_transfers, release_pinned, transfer_stats
from .tree import register_container, register_optree_namespace

__version__ = "0.1.0"

__all__ = [
    "ROWS",
    "Collate",
    "ConversionError",
    "CopyRefusedError",
    "DeviceError",
    "DistributedError",
    "Explanation",
    "FileFormatError",
    "OutOfMemoryError",
    "PlanCacheInfo",
    "PoolStats",
    "Prefetch",
    "QuantizedArray",
    "StructureError",
    "TensorFile",
    "TransferConfig",
    "UnsupportedError",
    "ValueRangeError",
    "__version__",
    "collate",
    "configure_plan_cache",
    "configure_transfers",
    "explain",
    "load",
    "nested_tensor",
    "numpy_dtype",
    "plan_cache_info",
    "prefetch",
    "register_container",
    "register_optree_namespace",
    "release_pinned",
    "save",
    "stack",
    "to_numpy",
    "to_tensor",
    "torch_dtype",
    "transfer_stats",
]
