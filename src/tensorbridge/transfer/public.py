"""The staging pool behind host <-> device copies: how much pinned memory it holds, and letting it go.

Example:
    >>> import tensorbridge as tb
    >>> tb.transfer_stats().lent_bytes
    0
"""

from __future__ import annotations

from . import inflight
from .config import TransferConfig, configure
from .pinned import POOL, PoolStats

__all__ = ["PoolStats", "TransferConfig", "configure_transfers", "release_pinned", "transfer_stats"]

configure_transfers = configure


def transfer_stats() -> PoolStats:
    """Return how much pinned staging memory tensorbridge holds now, and its cap.

    Returns:
        A :class:`PoolStats`: ``held_bytes`` never exceeds ``cap_bytes``
        (``tb.configure_transfers(pinned_cap_bytes=...)``); ``lent_bytes`` is what transfers in
        progress use.

    Example:
        >>> import tensorbridge as tb
        >>> s = tb.transfer_stats()
        >>> s.held_bytes <= s.cap_bytes
        True
    """
    return POOL.stats()


def release_pinned() -> None:
    """Free the pinned staging buffers no transfer is using, and return torch's cached pinned memory.

    Buffers still on the wire are freed once their copy has finished; so are the sources of
    ``non_blocking=True`` copies tensorbridge keeps alive until they land. The next transfer
    allocates afresh (about a second per GiB of pinned memory).

    Example:
        >>> import tensorbridge as tb
        >>> tb.release_pinned()
        >>> tb.transfer_stats().held_bytes
        0
    """
    inflight.settle()
    POOL.release()
