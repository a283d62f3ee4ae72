"""A recipe: one kind of leaf's plan, made ready to run on every leaf of that kind.

A recipe keeps the plan's steps, with the few facts that differ from leaf to leaf (the shape a
broadcast expands back to, the bytes a device copy moves and so its route) worked out again
for each leaf by :func:`bind` and :func:`transfer_for`, the same functions for ``explain`` and
for the conversion. Steps run through the executors of ``ops.execute``; the most common
step lists run as one fused call, with the very same torch and NumPy calls.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..dtypes import DtypeRow
from ..ops.execute import EXECUTORS
from ..plan.core import Plan, Step
from ..plan.devices import route_transfer
from ..plan.routes import Transfer, decide_route, with_transfer
from ..transfer.config import TransferConfig
from ..transfer.devices import backend_for

__all__ = ["OddLeaf", "Recipe", "bind", "recipe_for", "transfer_for"]

Run = Callable[[Any], Any]


@dataclass(frozen=True, eq=False)
class Recipe:
    """One kind of leaf's plan, ready to run.

    Attributes:
        plan: the plan it was made from (for the first leaf of the kind, or for this leaf alone).
        own: the plan was made for one leaf only (an adopted leaf, an error): never reused.
        before: runs the steps before the device copy (all of them when there is none).
        after: runs the steps after the device copy, if any; takes (value, original leaf).
        cut: index of the device-copy step, or -1.
        compacted: the copy moves a broadcast's distinct values only.
        staging: the device copy's backend stages copies (a fact of the kind's devices).
        inline: runs the whole recipe on a leaf of the kind, or raises when the leaf is odd
            (see ``pipeline.kinds``); None when the recipe has a device copy or is the leaf's own.
    """

    plan: Plan
    own: bool
    before: Run
    after: Callable[[Any, Any], Any] | None
    cut: int = -1
    compacted: bool = False
    inline: Run | None = None
    staging: bool = False

    @property
    def error(self) -> Any:
        """The error converting a leaf of this kind raises, if any."""
        return self.plan.error


def _same(x: Any) -> Any:
    return x


def _fused(steps: tuple[Step, ...], leaf: Any) -> Run | None:
    """The step lists almost every leaf has, as one call each (the executors' calls, fused)."""
    kinds = tuple(s.kind for s in steps)
    if kinds == ():
        return _same
    if (
        kinds == ("numpy_copy", "share")
        and type(leaf) is np.ndarray
        and (leaf.flags.c_contiguous or leaf.flags.f_contiguous)
    ):
        # A contiguous array's copy keeps its axis order ("K"): _numpy_copy's choice for any
        # layout without overlap. Byte order becomes native.
        native = leaf.dtype.newbyteorder("=")
        copied: DtypeRow = steps[1].arg
        share = copied.share_as_tensor
        return lambda a: share(a.astype(native, order="K"))
    if kinds == ("share",):
        row: DtypeRow = steps[0].arg
        return row.share_as_tensor
    if kinds == ("to_numpy",):
        return steps[0].arg.share_as_array  # type: ignore[no-any-return]
    if kinds == ("detach", "to_numpy"):
        view = steps[1].arg.share_as_array
        return lambda t: view(t.detach())
    return None


def _chain(steps: tuple[Step, ...], path: str) -> Callable[[Any, Any], Any]:
    """Run ``steps`` in order; ``expand`` restores the original leaf's own shape."""
    pairs = tuple((EXECUTORS[s.kind], s) for s in steps)
    if not any(s.kind == "expand" for s in steps):

        def run(x: Any, leaf: Any) -> Any:
            for fn, step in pairs:
                x = fn(x, step, path)
            return x

        return run

    def run_expanding(x: Any, leaf: Any) -> Any:
        for fn, step in pairs:
            x = x.expand(np.shape(leaf)) if step.kind == "expand" else fn(x, step, path)
        return x

    return run_expanding


class OddLeaf(Exception):
    """A leaf of the kind that its kind's recipe does not fit: it is planned in full."""


def recipe_for(plan: Plan, leaf: Any, own: bool, odd: Callable[[Any], bool] | None = None) -> Recipe:
    """Make ``plan`` (made for ``leaf``) ready to run on every leaf of its kind.

    ``odd`` tells a leaf of the kind that the recipe does not fit; the fused step lists need
    no such check (torch refuses those leaves itself), the others check first.
    """
    steps = plan.steps
    own = own or plan.error is not None or any(s.kind in ("adopt", "adopt_copy") for s in steps)
    if not own:
        # A cached recipe must not keep its first leaf alive (the plan's description closes over
        # it): keep only the kind's target, which is the same for every leaf of the kind.
        target = plan.target
        plan = Plan(plan.path, lambda: ("the first leaf of this kind", target), steps)
    cut = next((i for i, s in enumerate(steps) if s.kind in ("to_device", "to_host")), -1)
    head = steps if cut < 0 else steps[:cut]
    tail = () if cut < 0 else steps[cut + 1 :]
    fused = _fused(head, leaf) if not own else None
    chain = _chain(head, plan.path)
    before: Run = fused if fused is not None else (lambda x: chain(x, x))
    after = _chain(tail, plan.path) if tail else None
    compacted = any(s.kind == "compact" for s in head)
    inline: Run | None = None
    if not own and cut < 0:
        if fused is not None or odd is None:
            inline = before
        else:

            def inline(x: Any) -> Any:
                if odd(x):
                    raise OddLeaf
                return chain(x, x)

    staging = False
    if cut >= 0:
        tr: Transfer = steps[cut].arg
        backend = backend_for(tr.device.type if tr.direction == "h2d" else tr.source.type)
        staging = backend is not None and backend.staging
    return Recipe(plan, own, before, after, cut, compacted, inline, staging)


def _moved_elements(leaf: Any, compacted: bool) -> int:
    if isinstance(leaf, torch.Tensor):
        return int(leaf.numel())
    if compacted:
        return math.prod(1 if st == 0 else n for st, n in zip(leaf.strides, leaf.shape, strict=True))
    return int(leaf.size)  # arrays and NumPy scalars


def transfer_for(recipe: Recipe, leaf: Any, cfg: TransferConfig) -> Transfer | None:
    """This leaf's device copy under ``recipe``: its bytes, and the route :func:`route_for` gives them."""
    if recipe.cut < 0:
        return None
    template: Transfer = recipe.plan.steps[recipe.cut].arg
    if recipe.own:
        return template
    nbytes = _moved_elements(leaf, recipe.compacted) * template.dtype.itemsize
    if template.host_check is None:  # nothing to ask the leaf: the route rule alone
        return decide_route(
            template.direction,
            template.source,
            template.device,
            nbytes,
            template.dtype,
            pinned=False,
            staging=recipe.staging,
            cfg=cfg,
            lane=template.lane,
        )
    return route_transfer(
        template.source,
        template.device,
        nbytes,
        template.dtype,
        template.host_check,
        leaf,
        cfg,
        direction=template.direction,
        staging=recipe.staging,
    )


def bind(recipe: Recipe, leaf: Any, path: str, tr: Transfer | None, cfg: TransferConfig, describe: Any) -> Plan:
    """The plan of this leaf: the recipe's steps with this leaf's path, shape and routed copy."""
    plan = recipe.plan
    if not recipe.own:
        steps = tuple(
            Step("expand", f"back to shape {np.shape(leaf)} with zero strides", np.shape(leaf))
            if s.kind == "expand"
            else s
            for s in plan.steps
        )
        target = plan.target
        plan = Plan(path, lambda: (describe(leaf), target), steps)
    elif plan.path != path:
        plan = dataclasses.replace(plan, path=path)
    return with_transfer(plan, tr, cfg)
