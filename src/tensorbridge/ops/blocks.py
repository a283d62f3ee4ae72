"""Cutting an array of any layout into pieces of bounded size, in C order.

Used wherever a large array is copied piece by piece (the transfer engine's staging, the file
writers), so no copy ever needs a second buffer the size of the whole array.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["blocks"]


def blocks(a: np.ndarray[Any, Any], limit: int) -> Iterator[np.ndarray[Any, Any]]:
    """Views of ``a`` of at most ``limit`` bytes (or one element) whose C-order concatenation is ``a``.

    Example:
        >>> import numpy as np
        >>> [b.shape for b in blocks(np.zeros((4, 3), np.float64), 48)]
        [(2, 3), (2, 3)]
    """
    if a.ndim == 0 or a.nbytes <= limit:
        yield a
        return
    row = a[0].nbytes
    if row <= limit:
        step = limit // row
        for i in range(0, a.shape[0], step):
            yield a[i : i + step]
    else:
        for i in range(a.shape[0]):
            yield from blocks(a[i], limit)
