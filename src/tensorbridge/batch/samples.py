"""Samples to columns: every sample laid against the first, one container position at a time.

A batch is the first sample's structure with each leaf position stacked. :func:`split` walks
that structure once for the whole batch, *column-wise*: at each container position it checks
every sample at once (one ``type`` pass, one key pass) and hands each child position on as a
column of the samples' children, so the per-sample work is a few C-level passes, not a walk
per sample. Any difference from the first sample (a type, a key, a length) is a
:class:`~tensorbridge.StructureError` naming the sample and the key path:
``samples[3]['image']``.

The batch's containers are rebuilt by :func:`rebuild` around the first sample, through the one
walker of :mod:`tensorbridge.tree`, so every container keeps its type and instance state.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Final

from ..containers import ContainerSpec, Refusal
from ..containers.builtin import dict_spec, list_spec, tuple_spec
from ..errors import StructureError
from ..tree import ROOT, Path, format_path, map_leaves, refresh, spec_for
from .columns import describe

__all__ = ["Columns", "at", "rebuild", "split"]

WHAT: Final = "collate"

_SAME_KEYS_FIX: Final = (
    "Give every sample the same keys (fill optional ones in the dataset with a placeholder), "
    "or collate such fields with your own collate_fn"
)


@dataclass(frozen=True, slots=True)
class Columns:
    """The leaf positions of a batch, in the walker's order.

    Attributes:
        paths: each leaf position's key path inside one sample.
        columns: each position's values, one per sample.
        first: the first sample; the batch is rebuilt around its containers.
    """

    paths: list[Path]
    columns: list[Sequence[Any]]
    first: Any


def at(i: int, path: Path) -> str:
    """The key path of sample ``i``'s value at ``path``: ``samples[3]['image']``."""
    return format_path(path, f"samples[{i}]")


def split(samples: Sequence[Any]) -> Columns:
    """Check every sample against the first and return the batch's leaf columns.

    Raises:
        StructureError: (ValueError) no samples, or a sample whose containers differ from the
            first's (type, keys, length), or a container that contains itself.

    Example:
        >>> cols = split([{"x": 1, "y": (2, 3)}, {"y": (5, 6), "x": 4}])
        >>> [format_path(p) for p in cols.paths], [list(c) for c in cols.columns]
        (["data['x']", "data['y'][0]", "data['y'][1]"], [[1, 4], [2, 5], [3, 6]])
    """
    if not len(samples):
        raise StructureError(
            WHAT, "samples", "there are no samples, so the batch's structure is unknown", "Pass at least one sample"
        )
    refresh()  # as every tree walk does first: rebuild (a walk) must see the same containers
    paths: list[Path] = []
    columns: list[Sequence[Any]] = []
    # Depth first, children in order: the order map_leaves visits the first sample's leaves in.
    todo: list[tuple[Iterator[tuple[Sequence[Any], Path]], int]] = [(iter([(samples, ROOT)]), 0)]
    active: set[int] = set()
    while todo:
        step, owner = todo[-1]
        nxt = next(step, None)
        if nxt is None:
            todo.pop()
            active.discard(owner)
            continue
        column, path = nxt
        head = column[0]
        spec = spec_for(type(head))
        if spec is None:
            paths.append(path)
            columns.append(column)
            continue
        if id(head) in active:
            raise StructureError(
                WHAT,
                at(0, path),
                f"the {type(head).__name__} contains itself (a reference cycle)",
                "Break the cycle before collating",
            )
        active.add(id(head))
        todo.append((iter(_children(column, spec, path)), id(head)))
    return Columns(paths, columns, samples[0])


def rebuild(columns: Columns, results: Sequence[Any]) -> Any:
    """The batch: the first sample's containers around ``results``, one per leaf position."""
    it = iter(results)
    return map_leaves(lambda value, path: next(it), columns.first)


# --- one container position, across the samples ---------------------------------------------------


def _children(column: Sequence[Any], spec: ContainerSpec, path: Path) -> list[tuple[Sequence[Any], Path]]:
    cls = type(column[0])
    if len(set(map(type, column))) > 1:  # C-level passes: a generator costs more than the rest
        i = next(i for i, s in enumerate(column) if type(s) is not cls)
        raise StructureError(
            WHAT,
            at(i, path),
            f"is {describe(column[i])} where {at(0, path)} is {describe(column[0])}",
            "Give every sample the same structure",
        )
    if spec is dict_spec:
        return _dict_children(column, path)
    if spec is tuple_spec or spec is list_spec:
        return _sequence_children(column, path)
    return _general_children(column, spec, path)


def _dict_children(column: Sequence[Any], path: Path) -> list[tuple[Sequence[Any], Path]]:
    keys = column[0].keys()
    if not all(map(keys.__eq__, map(dict.keys, column))):  # set-like: the order may differ
        i = next(i for i, s in enumerate(column) if s.keys() != keys)
        _keys_differ(i, path, list(keys), list(column[i].keys()))
    names = list(keys)
    if not names:
        return []
    if len(names) == 1:
        return [(list(map(itemgetter(names[0]), column)), (path, "item", names[0]))]
    rows = zip(*map(itemgetter(*names), column), strict=True)
    return [(values, (path, "item", k)) for k, values in zip(names, rows, strict=True)]


def _sequence_children(column: Sequence[Any], path: Path) -> list[tuple[Sequence[Any], Path]]:
    n = len(column[0])
    if len(set(map(len, column))) > 1:
        i = next(i for i, s in enumerate(column) if len(s) != n)
        _lengths_differ(i, path, len(column[i]), n)
    if not n:
        return []
    return [(values, (path, "index", k)) for k, values in enumerate(zip(*column, strict=True))]


def _general_children(column: Sequence[Any], spec: ContainerSpec, path: Path) -> list[tuple[Sequence[Any], Path]]:
    flat = [_flatten(spec, s, i, path) for i, s in enumerate(column)]
    keys = list(flat[0][1])
    kids: list[Sequence[Any]] = [flat[0][0]]
    for i in range(1, len(flat)):
        these, their_keys = flat[i][0], list(flat[i][1])
        if their_keys != keys:
            these = _reordered(i, path, keys, their_keys, these)
        elif len(these) != len(keys):
            _lengths_differ(i, path, len(these), len(keys))
        kids.append(these)
    if not keys:
        return []
    style = spec.key_style
    rows = zip(*kids, strict=True)
    return [(values, (path, style, k)) for k, values in zip(keys, rows, strict=True)]


def _flatten(spec: ContainerSpec, obj: Any, i: int, path: Path) -> tuple[Sequence[Any], Sequence[Hashable], Any]:
    try:
        return spec.flatten(obj)
    except Refusal as refused:
        raise refused.error(WHAT, at(i, path), refused.cause, refused.fix) from None
    except Exception as err:
        raise StructureError(
            WHAT,
            at(i, path),
            f"{type(obj).__name__} could not be taken apart ({type(err).__name__}: {err})",
            "Fix the container, or register its type with tensorbridge.register_container",
        ) from err


def _reordered(i: int, path: Path, keys: list[Any], their_keys: list[Any], kids: Sequence[Any]) -> list[Any]:
    """Sample ``i``'s children in the first sample's key order (a mapping may list them in another)."""
    try:
        same = len(set(keys)) == len(keys) and set(their_keys) == set(keys)
    except TypeError:  # unhashable keys: only the order as given can match
        same = False
    if not same:
        _keys_differ(i, path, keys, their_keys)
    by_key = dict(zip(their_keys, kids, strict=True))
    return [by_key[k] for k in keys]


def _keys_differ(i: int, path: Path, keys: list[Any], their_keys: list[Any]) -> None:
    missing = [k for k in keys if k not in their_keys]
    extra = [k for k in their_keys if k not in keys]
    first = at(0, path)
    parts = []
    if missing:
        parts.append(f"lacks {_show(missing)} that {first} has")
    if extra:
        parts.append(f"has {_show(extra)} that {first} lacks")
    if not parts:
        parts.append(f"has {_show(their_keys)} where {first} has {_show(keys)}")
    raise StructureError(WHAT, at(i, path), " and ".join(parts), _SAME_KEYS_FIX)


def _lengths_differ(i: int, path: Path, n: int, first: int) -> None:
    raise StructureError(
        WHAT,
        at(i, path),
        f"has {n} item{'s' * (n != 1)} where {at(0, path)} has {first}",
        "Pad the sequences to one length, or make the field an array and use tb.nested_tensor for ragged data",
    )


def _show(keys: list[Any]) -> str:
    shown = ", ".join(repr(k) for k in keys[:8])
    more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
    return f"key{'s' * (len(keys) != 1)} {shown}{more}"
