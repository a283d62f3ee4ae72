"""The plan cache: one recipe per kind of leaf, bounded, shared by every thread.

A training loop converts the same structure every step, so the same few kinds of leaf come
back again and again; each is planned once. Entries are dropped oldest first past
``maxsize``. Recipes that name a device depend on the device backends, so the cache is
emptied when a backend is installed (checked once per call that involves a device). The
transfer settings are not part of a recipe: each leaf's route is worked out again per call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Final

from ..errors import ValueRangeError
from ..transfer import devices

__all__ = ["PlanCacheInfo", "cache_info", "configure_plan_cache", "lookup", "store", "validate"]

DEFAULT_MAXSIZE: Final = 4096


@dataclass(frozen=True)
class PlanCacheInfo:
    """What :func:`tensorbridge.plan_cache_info` reports.

    Attributes:
        size: recipes held now.
        maxsize: the bound (0: caching is off, every leaf is planned).
        plans_made: recipes planned since the process started (a hit plans nothing).
    """

    size: int
    maxsize: int
    plans_made: int


_lock = threading.Lock()
_recipes: dict[Any, Any] = {}
_state: dict[str, Any] = {"maxsize": DEFAULT_MAXSIZE, "made": 0, "epoch": None}

#: ``_recipes.get``: a lookup is one dict access, atomic under the GIL and in free-threaded builds.
lookup = _recipes.get


def store(key: Any, recipe: Any) -> None:
    """Remember ``recipe`` for ``key``, dropping the oldest entries past the bound."""
    with _lock:
        _state["made"] += 1
        maxsize = _state["maxsize"]
        if maxsize <= 0:
            return
        while len(_recipes) >= maxsize:
            del _recipes[next(iter(_recipes))]  # dicts keep insertion order: the oldest first
        _recipes[key] = recipe


def counted() -> None:
    """Count a recipe that is planned but not stored (caching off, or an uncacheable leaf)."""
    with _lock:
        _state["made"] += 1


def validate() -> None:
    """Empty the cache when the device backends changed (once per call that involves a device)."""
    epoch = devices.backends_version()
    if epoch != _state["epoch"]:
        with _lock:
            _recipes.clear()
            _state["epoch"] = epoch


def configure_plan_cache(maxsize: int) -> None:
    """Bound the plan cache to ``maxsize`` kinds of leaf (0 turns caching off).

    Args:
        maxsize: how many recipes to keep; each is a few hundred bytes.

    Raises:
        ValueRangeError: (ValueError) ``maxsize`` is negative or not an int.

    Example:
        >>> import tensorbridge as tb
        >>> tb.configure_plan_cache(maxsize=256); tb.plan_cache_info().maxsize
        256
        >>> tb.configure_plan_cache(maxsize=4096)
    """
    if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 0:
        raise ValueRangeError(
            "configure_plan_cache",
            "maxsize",
            f"maxsize must be an int >= 0, not {maxsize!r}",
            "Pass 0 to turn caching off, or the number of kinds of leaf to keep (default 4096)",
        )
    with _lock:
        _state["maxsize"] = maxsize
        while len(_recipes) > maxsize:
            del _recipes[next(iter(_recipes))]


def cache_info() -> PlanCacheInfo:
    """How full the plan cache is, and how many plans were made.

    Example:
        >>> import numpy as np, tensorbridge as tb
        >>> before = tb.plan_cache_info().plans_made
        >>> _ = tb.to_tensor({str(i): np.zeros(3, np.float16) for i in range(100)})
        >>> tb.plan_cache_info().plans_made - before <= 1
        True
    """
    with _lock:
        return PlanCacheInfo(len(_recipes), _state["maxsize"], _state["made"])
