"""An array's bytes in bounded pieces, in C order, whatever its strides and byte order.

Writers and comparisons walk an array piece by piece, so that what they hold beyond the array
itself (a memory map, usually) is one piece. A piece is a block of whole rows of the leading axis,
or of one row's sub-blocks when a row is too large; the blocks depend on the shape alone, so two
arrays of one shape are cut at the same places, whatever their layouts (as ``--verify`` needs).
A piece of a C-contiguous array in native byte order is a view: nothing is copied.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import EllipsisType
from typing import Any, Final

import numpy as np

__all__ = ["PIECE_BYTES", "Index", "blocks", "pieces"]

Index = tuple[int | slice | EllipsisType, ...]
"""An index tuple for one block."""

#: The bytes of one piece: large enough that Python's per-piece cost vanishes next to copying it.
PIECE_BYTES: Final = 8 << 20


def blocks(shape: tuple[int, ...], limit: int) -> Iterator[Index]:
    """Index tuples that cut an array of ``shape`` into C-order blocks of at most ``limit`` elements.

    A block is never smaller than one element; a 0-d shape is one block, ``(...,)``. Every tuple
    but the 0-d one ends with a slice, so indexing with it gives an array, never a scalar.

    Example:
        >>> list(blocks((4, 3), 6))
        [(slice(0, 2, None),), (slice(2, 4, None),)]
        >>> list(blocks((2, 5), 3))
        [(0, slice(0, 3, None)), (0, slice(3, 5, None)), (1, slice(0, 3, None)), (1, slice(3, 5, None))]
    """
    if not shape:
        yield (Ellipsis,)
        return
    limit = max(1, limit)
    # (index prefix, the shape still to cut); a stack, so that no shape makes this recurse
    stack: list[tuple[Index, tuple[int, ...]]] = [((), shape)]
    while stack:
        prefix, rest = stack.pop()
        row = 1
        for d in rest[1:]:
            row *= d
        if len(rest) == 1 or row <= limit:
            step = max(1, limit // max(row, 1))
            for start in range(0, rest[0], step):
                yield (*prefix, slice(start, min(start + step, rest[0])))
        else:
            stack.extend(((*prefix, i), rest[1:]) for i in reversed(range(rest[0])))


def pieces(arr: np.ndarray[Any, Any], limit: int = PIECE_BYTES) -> Iterator[np.ndarray[Any, Any]]:
    """The bytes of ``arr`` in C order and native byte order, as 1-D uint8 arrays of about ``limit`` bytes.

    Example:
        >>> a = np.arange(6, dtype=">i2").reshape(2, 3).T  # big-endian, transposed
        >>> b"".join(p.tobytes() for p in pieces(a, 4)) == np.ascontiguousarray(a, "<i2").tobytes()
        True
    """
    native = arr.dtype if arr.dtype.isnative else arr.dtype.newbyteorder("=")
    for index in blocks(arr.shape, limit // max(arr.dtype.itemsize, 1)):
        part = np.ascontiguousarray(arr[index])  # a view where the block is contiguous already
        if part.dtype != native:
            part = part.astype(native)
        yield part.reshape(-1).view(np.uint8)
