"""The transfer engine's settings: one frozen record, replaced as a whole by :func:`configure`.

The planner reads the settings to choose a route per leaf; the engine reads them to size its
pinned staging buffers and its host threads. Defaults are chosen for a PCIe Gen4/Gen5 GPU:
16 MiB chunks keep the copy engine near its peak while a ring of 4 buffers per transfer lets
host threads fill the next chunks while earlier ones are on the wire.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass
from typing import Final

from ..errors import UnsupportedError, ValueRangeError

__all__ = ["TransferConfig", "configure", "current"]

MiB: Final = 1 << 20


def _default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class TransferConfig:
    """How host <-> device transfers are staged.

    Attributes:
        chunk_bytes: size of one pinned staging buffer, a power of two (PyTorch's pinned
            allocator rounds every request up to one, so any other size would waste memory).
            Large leaves move in chunks of this size; small leaves are packed into buffers of it.
        ring: pinned buffers one transfer keeps in flight (filling on the host, or on the wire).
        pinned_cap_bytes: the most pinned memory the staging pool ever holds, all threads
            together. A transfer that finds the pool at its cap waits for a buffer to come back.
        threads: host threads that copy between pageable memory and the staging buffers.
        small_max_bytes: leaves up to this size (and up to ``chunk_bytes``) are packed with
            other small leaves.
        pack_min_leaves: packing pays for itself only from this many small leaves in one call;
            fewer go through torch's own copy, one by one.
    """

    chunk_bytes: int = 16 * MiB
    ring: int = 4
    pinned_cap_bytes: int = 256 * MiB
    threads: int = dataclasses.field(default_factory=_default_threads)
    small_max_bytes: int = 1 * MiB
    pack_min_leaves: int = 4

    def __post_init__(self) -> None:
        c = self.chunk_bytes
        checks = [
            ("chunk_bytes", c >= 4096 and c & (c - 1) == 0, "a power of two >= 4096"),
            ("ring", self.ring >= 1, ">= 1"),
            ("pinned_cap_bytes", self.pinned_cap_bytes >= c, f">= chunk_bytes ({c}), to hold one chunk"),
            ("threads", self.threads >= 1, ">= 1"),
            ("small_max_bytes", self.small_max_bytes >= 0, ">= 0"),
            ("pack_min_leaves", self.pack_min_leaves >= 1, ">= 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueRangeError(
                    "configure_transfers",
                    name,
                    f"{name}={getattr(self, name)!r} is out of range: it must be {rule}",
                    "Pass a value in range (see tensorbridge.TransferConfig)",
                )


_lock = threading.Lock()
_current = TransferConfig()


def current() -> TransferConfig:
    """Return the settings in force."""
    return _current


def configure(**changes: int) -> TransferConfig:
    """Change the transfer settings for the whole process; returns the new settings.

    Args:
        **changes: fields of :class:`TransferConfig` (``chunk_bytes``, ``ring``,
            ``pinned_cap_bytes``, ``threads``, ``small_max_bytes``, ``pack_min_leaves``).

    Returns:
        The settings now in force. Lowering ``pinned_cap_bytes`` takes effect as buffers come back.

    Raises:
        UnsupportedError: (TypeError) an unknown setting.
        ValueRangeError: (ValueError) a value out of range.

    Example:
        >>> import tensorbridge as tb
        >>> before = tb.configure_transfers()
        >>> tb.configure_transfers(pinned_cap_bytes=64 << 20).pinned_cap_bytes
        67108864
        >>> _ = tb.configure_transfers(pinned_cap_bytes=before.pinned_cap_bytes)
    """
    global _current
    known = {f.name for f in dataclasses.fields(TransferConfig)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise UnsupportedError(
            "configure_transfers", "settings", f"unknown setting(s) {unknown}", f"Use one of {sorted(known)}"
        )
    with _lock:
        _current = dataclasses.replace(_current, **changes)
        return _current
