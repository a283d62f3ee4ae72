"""Batches: samples stacked into one batch (``collate``), and batches moved ahead to a device (``prefetch``)."""

from __future__ import annotations

from .collate import Collate, collate
from .prefetch import Prefetch, prefetch

__all__ = ["Collate", "Prefetch", "collate", "prefetch"]
