"""The conversion pipeline: walk -> find or make the recipe of each kind of leaf -> run -> rebuild."""

from .cache import PlanCacheInfo, cache_info, configure_plan_cache
from .run import convert, convert_at, explain_plans

__all__ = ["PlanCacheInfo", "cache_info", "configure_plan_cache", "convert", "convert_at", "explain_plans"]
