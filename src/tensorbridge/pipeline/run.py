"""The one conversion pipeline: walk, find or make each kind of leaf's recipe, run it, rebuild.

Every call goes through here: a lone leaf, a container, with or without options or a device,
and ``explain``. A leaf's kind (``pipeline.kinds``) finds its recipe in the plan cache; a miss
asks the planner once for that kind. Leaves other libraries own are planned one by one.

Calls without device copies run each leaf's recipe as the walk meets it. Calls with device
copies (found when the first such leaf is met) walk twice: first every leaf's recipe and copy
(:func:`prepare`, which is also what ``explain`` prints), then the routes of the whole call
(small leaves packed together), then the copies, all at once, then the rebuild.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ..errors import ConversionError
from ..ops.execute import copy_failed, run_plan, run_steps
from ..options import ToNumpyOptions, ToTensorOptions
from ..plan.core import Plan
from ..plan.routes import Transfer, assign_transfers
from ..transfer.config import current
from ..transfer.engine import deferred_wait, finish, move
from ..tree import LEAF_TYPES, ROOT, Path, format_path, iter_leaves, map_leaves
from . import cache
from .kinds import INERT, Keyer, keyer_for, odd
from .leaves import describe_leaf, is_leaf, plan_leaf_to_numpy, plan_leaf_to_tensor
from .recipes import Recipe, bind, recipe_for, transfer_for

__all__ = ["convert", "convert_at", "explain_plans", "prepare"]

Options = ToTensorOptions | ToNumpyOptions


class _Moving(Exception):
    """A leaf needs a device copy: the call converts all its leaves together."""


_PASS: Final = object()  # a type that never converts
_BY_HAND: Final = object()  # a type whose leaves are planned one by one
# Per kind of options (to_numpy, to_tensor, to_tensor owning its memory): exact type -> keyer.
_KEYERS: Final[tuple[dict[type, Any], dict[type, Any], dict[type, Any]]] = ({}, {}, {})


def _table(opts: Options) -> dict[type, Any]:
    if isinstance(opts, ToNumpyOptions):
        return _KEYERS[0]
    return _KEYERS[2] if opts.requires_grad else _KEYERS[1]


def _classify(cls: type, opts: Options) -> Any:
    if cls in INERT:
        return _PASS
    keyer = keyer_for(cls, opts)
    return _BY_HAND if keyer is None else keyer


def _plan(x: Any, opts: Options, path: str) -> Plan:
    if isinstance(opts, ToNumpyOptions):
        return plan_leaf_to_numpy(x, opts, path)
    return plan_leaf_to_tensor(x, opts, path)


def _made(x: Any, key: Any, keyer: Keyer, opts: Options, path: Path) -> Recipe:
    """Plan the first leaf of a kind and remember its recipe (unless the leaf is odd: its own plan)."""
    plan = _plan(x, opts, format_path(path))
    is_odd = odd(keyer)
    own = is_odd(x, key)
    recipe = recipe_for(plan, x, own=own, odd=lambda v: is_odd(v, key))
    if recipe.own:
        cache.counted()
    else:
        cache.store(key, recipe)
    return recipe


def _own(x: Any, opts: Options, path: Path) -> Recipe:
    cache.counted()
    return recipe_for(_plan(x, opts, format_path(path)), x, own=True)


def find(x: Any, opts: Options, path: Path, keyers: dict[type, Any] | None = None) -> Recipe | None:
    """The recipe for leaf ``x`` (None: ``x`` passes through unchanged)."""
    keyers = _table(opts) if keyers is None else keyers
    cls = type(x)
    keyer = keyers.get(cls)
    if keyer is None:
        found = _classify(cls, opts)
        keyer = keyers[cls] = _pass if found is _PASS else _by_hand if found is _BY_HAND else found
    key = keyer(x, opts.token)
    if key is _PASS:
        return None
    if key is _BY_HAND or opts.token < 0:
        return _own(x, opts, path) if is_leaf(x) else None
    recipe: Recipe | None = cache.lookup(key)
    if recipe is None:
        return _made(x, key, keyer, opts, path)
    if odd(keyer)(x, key):
        return _own(x, opts, path)  # what the conversion does with an odd leaf: see pipeline.kinds
    return recipe


def _by_plan(x: Any, opts: Options, path: Path) -> Any:
    """Plan this one leaf in full and run it: its errors name its path, odd leaves get their own plan."""
    return run_plan(x, _plan(x, opts, format_path(path)))


def _pass(x: Any, token: int) -> Any:
    return _PASS


def _by_hand(x: Any, token: int) -> Any:
    return _BY_HAND


def _inline(opts: Options) -> Callable[[Any, Path], Any]:
    """The leaf function of the walk: the kind's key, its cached recipe, run; everything else on a miss."""
    keyers = _table(opts)
    token = opts.token
    lookup = cache.lookup

    def miss(x: Any, key: Any, keyer: Keyer | None, path: Path) -> Any:
        cls = type(x)
        if keyer is None:  # a type not seen before with these options
            found = _classify(cls, opts)
            keyer = keyers[cls] = _pass if found is _PASS else _by_hand if found is _BY_HAND else found
            key = keyer(x, token)
            recipe: Recipe | None = lookup(key)
            if recipe is not None:
                return run(x, recipe, path)
        if key is _PASS:
            return x
        if key is _BY_HAND or token < 0:
            recipe = find(x, opts, path, keyers)
            return x if recipe is None else run(x, recipe, path)
        return run(x, _made(x, key, keyer, opts, path), path)

    def run(x: Any, recipe: Recipe, path: Path) -> Any:
        fn = recipe.inline
        if fn is not None:
            try:
                return fn(x)
            except Exception:  # an odd leaf, or an error: planned in full, so errors name the path
                return _by_plan(x, opts, path)
        if recipe.cut >= 0:
            raise _Moving
        return run_plan(x, recipe.plan)

    def leaf(x: Any, path: Path) -> Any:
        keyer = keyers.get(type(x))
        if keyer is None:
            return miss(x, None, None, path)
        key = keyer(x, token)
        recipe = lookup(key)
        if recipe is None:
            return miss(x, key, keyer, path)
        fn = recipe.inline
        if fn is None:
            return run(x, recipe, path)
        try:
            return fn(x)
        except Exception:  # an odd leaf, or an error: planned in full, so errors name the path
            return _by_plan(x, opts, path)

    def leaves(kids: Any, keys: Any, start: int, stop: int, path: Path, style: str) -> list[Any]:
        # leaf() for a run of siblings, without a call or a key path per leaf on the hot path.
        out = []
        for k in range(start, stop):
            x = kids[k]
            keyer = keyers.get(type(x))
            if keyer is not None:
                recipe = lookup(keyer(x, token))
                if recipe is not None:
                    fn = recipe.inline
                    if fn is not None:
                        try:
                            out.append(fn(x))
                            continue
                        except Exception:  # leaf() below plans it in full
                            pass
            out.append(leaf(x, (path, style, keys[k])))
        return out

    leaf.runs = leaves  # type: ignore[attr-defined]
    return leaf


# Options token -> (its leaf function, its runs function, whether calls may move data to a device).
_Profile = tuple[Callable[[Any, Path], Any], Any, bool]
_PROFILES: dict[int, _Profile] = {}


def _profile(opts: Options) -> _Profile:
    devices = isinstance(opts, ToTensorOptions) and (opts.device is not None or opts.pin_memory)
    leaf = _inline(opts)
    profile = (leaf, leaf.runs, devices)  # type: ignore[attr-defined]
    if opts.token >= 0:
        if len(_PROFILES) > 1024:
            _PROFILES.clear()
        _PROFILES[opts.token] = profile
    return profile


def convert(data: Any, opts: Options) -> Any:
    """Convert every leaf of ``data`` under ``opts``; rebuild the containers around the results."""
    leaf, runs, devices = _PROFILES.get(opts.token) or _profile(opts)
    if devices:
        cache.validate()
        if opts.device is not None and opts.device.type != "cpu":  # type: ignore[union-attr]
            return _together(data, opts)
    try:
        if type(data) in LEAF_TYPES:  # what map_leaves does first, without its call
            return leaf(data, ROOT)
        return map_leaves(leaf, data, runs)
    except _Moving:
        return _together(data, opts)


def convert_at(x: Any, opts: Options, path: str) -> Any:
    """:func:`convert` of one leaf that stands at ``path`` of a larger structure; its errors name ``path``.

    For leaves converted apart from their structure (a gathered or scattered shard).
    """
    try:
        return convert(x, opts)
    except ConversionError as err:
        raise type(err)(err.what, path, err.cause, err.fix) from err


def prepare(data: Any, opts: Options) -> tuple[list[tuple[Path, Any]], list[Recipe | None], list[Transfer | None]]:
    """Every leaf of ``data``, its recipe, and its device copy routed with the call's others."""
    cache.validate()
    lone = type(data) in LEAF_TYPES  # what iter_leaves gives for them, without the walk
    leaves = [(ROOT, data)] if lone else iter_leaves(data, is_leaf)
    keyers = _table(opts)
    recipes = [find(x, opts, path, keyers) for path, x in leaves]
    cfg = current()
    trs = [None if r is None else transfer_for(r, x, cfg) for r, (_, x) in zip(recipes, leaves, strict=True)]
    return leaves, recipes, assign_transfers(trs, cfg)


def _alone(x: Any, opts: Options) -> Any:
    """:func:`_together` for a lone array or tensor: the same steps, without the lists."""
    recipe = find(x, opts, ROOT)
    if recipe is None:
        return x
    if recipe.error is not None:
        raise recipe.error if recipe.own else _plan(x, opts, format_path(ROOT)).error  # type: ignore[misc]
    cfg = current()
    tr = transfer_for(recipe, x, cfg)
    mid = _before(recipe, x, opts, ROOT)
    if tr is None:
        return mid
    routed = assign_transfers([tr], cfg)[0]
    assert routed is not None
    items = [(mid, routed)]
    late = _late(opts, [(recipe, routed)])
    try:
        with deferred_wait(late):
            (moved,) = move(items, opts.non_blocking)
    except ConversionError:
        raise
    except (MemoryError, RuntimeError, TypeError, ValueError, AssertionError) as err:
        raise copy_failed(err, items, format_path(ROOT)) from err
    if recipe.after is None:
        return moved
    try:
        out = _after(recipe, moved, x, opts, ROOT)
    except BaseException:
        _finish(items, late, ROOT, failed=True)
        raise
    _finish(items, late, ROOT)
    return out


def _together(data: Any, opts: Options) -> Any:
    if type(data) in LEAF_TYPES:
        return _alone(data, opts)
    leaves, recipes, trs = prepare(data, opts)
    for recipe, (path, x) in zip(recipes, leaves, strict=True):
        if recipe is not None and recipe.error is not None:  # every error before anything runs
            raise recipe.error if recipe.own else _plan(x, opts, format_path(path)).error  # type: ignore[misc]
    try:
        mids = [x if r is None else r.before(x) for r, (_, x) in zip(recipes, leaves, strict=True)]
    except Exception:  # the steps have no effects: again leaf by leaf, for an error naming its leaf
        mids = [x if r is None else _before(r, x, opts, p) for r, (p, x) in zip(recipes, leaves, strict=True)]
    moving = [n for n, tr in enumerate(trs) if tr is not None]
    items: list[tuple[Any, Transfer]] = [(mids[n], trs[n]) for n in moving]  # type: ignore[misc]
    late = _late(opts, [(recipes[n], trs[n]) for n in moving])
    first = leaves[moving[0]][0] if moving else ROOT
    try:
        out = _moved(data, opts, leaves, recipes, mids, moving, items, late)
    except BaseException:
        _finish(items, late, first, failed=True)
        raise
    _finish(items, late, first)
    return out


def _finish(items: list[tuple[Any, Transfer]], late: bool, first: Path, *, failed: bool = False) -> None:
    """The call's final wait when :func:`_late` deferred it (after a failure: best effort, the failure stands)."""
    if not late:
        return
    try:
        finish(items)
    except (RuntimeError, AssertionError) as err:
        if not failed:
            raise copy_failed(err, items, format_path(first)) from err


def _late(opts: Options, moving: list[tuple[Recipe | None, Transfer | None]]) -> bool:
    """Whether device work follows a copy to a device in a call that returns with its device work done.

    Then the copies' final wait is the call's last step (:func:`finish`), after that work.
    """
    if opts.non_blocking is True:
        return False
    return any(r is not None and r.after is not None and tr is not None and tr.direction != "d2h" for r, tr in moving)


def _moved(
    data: Any,
    opts: Options,
    leaves: list[tuple[Path, Any]],
    recipes: list[Recipe | None],
    mids: list[Any],
    moving: list[int],
    items: list[tuple[Any, Transfer]],
    late: bool,
) -> Any:
    """:func:`_together` from the copies on: the copies, the steps after them, the rebuild."""
    if moving:
        try:
            with deferred_wait(late):
                moved = move(items, opts.non_blocking)
        except ConversionError:
            raise
        except (MemoryError, RuntimeError, TypeError, ValueError, AssertionError) as err:
            raise copy_failed(err, items, format_path(leaves[moving[0]][0])) from err
        for n, out in zip(moving, moved, strict=True):
            mids[n] = out
    triples = zip(recipes, mids, leaves, strict=True)
    try:
        results = [m if r is None or r.after is None else r.after(m, x) for r, m, (_, x) in triples]
    except Exception:
        triples = zip(recipes, mids, leaves, strict=True)
        results = [m if r is None or r.after is None else _after(r, m, x, opts, p) for r, m, (p, x) in triples]
    it = iter(results)
    return map_leaves(lambda v, p: next(it) if is_leaf(v) else v, data)


def _before(recipe: Recipe, x: Any, opts: Options, path: Path) -> Any:
    """The steps before the device copy; a failure becomes an error naming the leaf."""
    if recipe.own:  # made for this leaf: its steps, with their errors wrapped
        return run_steps(x, recipe.plan, 0, recipe.cut if recipe.cut >= 0 else len(recipe.plan.steps))
    try:
        return recipe.before(x)
    except Exception:  # the leaf's own plan, for an error naming its path
        plan = _plan(x, opts, format_path(path))
        cut = recipe.cut if recipe.cut >= 0 else len(plan.steps)
        return run_steps(x, plan, 0, cut)


def _after(recipe: Recipe, mid: Any, x: Any, opts: Options, path: Path) -> Any:
    """The steps after the device copy; a failure becomes an error naming the leaf."""
    if recipe.own:
        return run_steps(mid, recipe.plan, recipe.cut + 1, len(recipe.plan.steps))
    try:
        return mid if recipe.after is None else recipe.after(mid, x)
    except Exception:
        plan = bind(recipe, x, format_path(path), None, current(), describe_leaf)
        return run_steps(mid, plan, recipe.cut + 1, len(plan.steps))


def explain_plans(data: Any, opts: Options) -> tuple[Plan, ...]:
    """The plan each leaf of ``data`` would run under ``opts``: :func:`prepare`'s recipes, bound to each leaf."""
    leaves, recipes, trs = prepare(data, opts)
    cfg = current()
    return tuple(
        bind(r, x, format_path(path), tr, cfg, describe_leaf)
        for r, tr, (path, x) in zip(recipes, trs, leaves, strict=True)
        if r is not None
    )
