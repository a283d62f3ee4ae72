"""Nested containers <-> flat dotted names, with a JSON record that brings the nesting back.

Flat formats (.npz, .safetensors) hold named arrays only. A nested state dict
``{"encoder": {"layers": [w0, w1]}, "step": 3}`` is written as ``encoder.layers.0`` and
``encoder.layers.1``, and the file's own metadata keeps a JSON record of the nesting (which
containers, which keys, the non-array leaves such as ``step``), so converting back gives the same
containers. A file without that record reads as a flat dict of its names.

Record grammar: ``{"t": name}`` an array; ``{"v": value}`` a JSON value (int, float, str, bool,
None); ``{"dict": [[key, rec], ...]}``, ``{"odict": [...]}`` (OrderedDict), ``{"list": [rec, ...]}``,
``{"tuple": [...]}``. Keys are str or int.

A record read from a file is untrusted. It is bounded before it is parsed (:func:`loads`: at most
:data:`MAX_RECORD_BYTES`, and no more bytes and JSON values than the file's own names can account
for, see :func:`record_budget`), then checked against the arrays the file actually holds
(:func:`validate`, iteratively, at most :data:`MAX_DEPTH` levels): every array is named exactly
once, and each name is the dotted path the record itself gives it, so a record cannot swap two
arrays, hide one or invent one. Names are at most :data:`MAX_NAME_BYTES` in every format (the most a
``.npz`` member name can hold), and a file holds at most :data:`MAX_ARRAYS` arrays.
"""

from __future__ import annotations

import collections
from typing import Any

from .structure_flatten import flatten
from .structure_record import (
    _VALUES,
    MAX_ARRAYS,
    MAX_DEPTH,
    MAX_NAME_BYTES,
    MAX_RECORD_BYTES,
    ROOT_NAME,
    _bad,
    dumps,
    json_values,
    loads,
    record_budget,
    validate,
    writable,
)

__all__ = [
    "MAX_ARRAYS",
    "MAX_DEPTH",
    "MAX_NAME_BYTES",
    "MAX_RECORD_BYTES",
    "ROOT_NAME",
    "dumps",
    "flatten",
    "json_values",
    "loads",
    "prune",
    "record_budget",
    "unflatten",
    "validate",
    "writable",
]


def unflatten(rec: Any, arrays: dict[str, Any], where: str = "file") -> Any:
    """Rebuild the containers of ``rec`` around ``arrays`` (name -> array).

    Raises:
        FileFormatError: (ValueError) the record is malformed or names an array that is missing.

    Example:
        >>> unflatten({"dict": [["a", {"t": "a"}], ["n", {"v": 1}]]}, {"a": 5})
        {'a': 5, 'n': 1}
    """

    def build(r: Any) -> Any:
        if not isinstance(r, dict) or len(r) != 1:
            raise _bad(where, f"a nesting record entry is {r!r}")
        ((kind, body),) = r.items()
        if kind == "t":
            if body not in arrays:
                raise _bad(where, f"the nesting record names array {body!r}, which the file does not hold")
            return arrays[body]
        if kind == "v":
            if not isinstance(body, _VALUES):
                raise _bad(where, f"a value in the nesting record is {body!r}")
            return body
        if kind in ("dict", "odict"):
            if not isinstance(body, list) or not all(isinstance(p, list) and len(p) == 2 for p in body):
                raise _bad(where, "a dict in the nesting record is not a list of [key, value] pairs")
            pairs = [(k, build(v)) for k, v in body]
            return collections.OrderedDict(pairs) if kind == "odict" else dict(pairs)
        if kind in ("list", "tuple"):
            if not isinstance(body, list):
                raise _bad(where, f"a {kind} in the nesting record is not a list")
            items = [build(v) for v in body]
            return items if kind == "list" else tuple(items)
        raise _bad(where, f"unknown kind {kind!r} in the nesting record")

    return build(rec)


def prune(rec: Any, keep: set[str]) -> Any:
    """The record without the arrays not in ``keep`` (containers and values stay).

    Every array keeps its name: a list or tuple that loses an item before a kept one becomes a
    dict keyed by the original indices (``{1: w}``, not ``[w]``, whose item would be named ``.0``).
    ``rec`` is a record :func:`validate` accepted (readers check theirs), so at most
    :data:`MAX_DEPTH` levels deep.

    Example:
        >>> prune({"dict": [["a", {"t": "a"}], ["b", {"t": "b"}]]}, {"b"})
        {'dict': [['b', {'t': 'b'}]]}
        >>> prune({"list": [{"t": "0"}, {"t": "1"}]}, {"1"})
        {'dict': [[1, {'t': '1'}]]}
    """
    if rec is None:
        return None
    gone = object()

    def walk(r: Any) -> Any:
        ((kind, body),) = r.items()
        if kind == "t":
            return r if body in keep else gone
        if kind in ("dict", "odict"):
            pairs = [[k, walk(v)] for k, v in body]
            return {kind: [p for p in pairs if p[1] is not gone]}
        if kind in ("list", "tuple"):
            items = [walk(v) for v in body]
            kept = [i for i in items if i is not gone]
            if gone in items[: len(kept)]:  # an item moved to a lower index: keep the indices as keys
                return {"dict": [[i, v] for i, v in enumerate(items) if v is not gone]}
            return {kind: kept}
        return r

    out = walk(rec)
    return None if out is gone else out
