"""Nested containers <-> flat dotted names, with a JSON record that brings the nesting back.

Flat formats (.npz, .safetensors) hold named arrays only. A nested state dict
``{"encoder": {"layers": [w0, w1]}, "step": 3}`` is written as ``encoder.layers.0`` and
``encoder.layers.1``, and the file's own metadata keeps a JSON record of the nesting (which
containers, which keys, the non-array leaves such as ``step``), so converting back gives the same
containers. A file without that record reads as a flat dict of its names.

Record grammar: ``{"t": name}`` an array; ``{"v": value}`` a JSON value (int, float, str, bool,
None); ``{"dict": [[key, rec], ...]}``, ``{"odict": [...]}`` (OrderedDict), ``{"list": [rec, ...]}``,
``{"tuple": [...]}``. Keys are str or int.
"""

from __future__ import annotations

import collections
import json
from typing import Any, Final

import numpy as np
import torch

from ..errors import FileFormatError, UnsupportedError

__all__ = ["ROOT_NAME", "dumps", "flatten", "loads", "prune", "unflatten"]

#: The name of a lone array (not inside any container) in formats that need a name.
ROOT_NAME: Final = "data"
_VALUES: Final = (int, float, str, bool, type(None))


def flatten(obj: Any) -> tuple[list[tuple[str, Any]], Any]:
    """Return the arrays/tensors of ``obj`` with their dotted names, and the nesting record.

    Example:
        >>> import numpy as np
        >>> leaves, rec = flatten({"enc": [np.zeros(1), np.ones(2)], "step": 3})
        >>> [name for name, _ in leaves], rec["dict"][1]
        (['enc.0', 'enc.1'], ['step', {'v': 3}])
    """
    leaves: list[tuple[str, Any]] = []
    seen: set[str] = set()

    def walk(x: Any, path: list[str]) -> Any:
        if isinstance(x, (np.ndarray, np.generic, torch.Tensor)):
            name = ".".join(path) or ROOT_NAME
            if name in seen:
                raise UnsupportedError(
                    "flattening",
                    name,
                    f"two arrays would both be named {name!r} (a key contains a dot?)",
                    "Rename the keys so that their dotted paths differ",
                )
            seen.add(name)
            leaves.append((name, x))
            return {"t": name}
        if isinstance(x, _VALUES):
            return {"v": x}
        if isinstance(x, dict):
            kind = "odict" if isinstance(x, collections.OrderedDict) else "dict"
            items = []
            for k, v in x.items():
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise UnsupportedError(
                        "flattening", ".".join(path) or ROOT_NAME, f"key {k!r} is not a str or int", "Use str keys"
                    )
                items.append([k, walk(v, [*path, str(k)])])
            return {kind: items}
        if isinstance(x, (list, tuple)):
            return {"list" if isinstance(x, list) else "tuple": [walk(v, [*path, str(i)]) for i, v in enumerate(x)]}
        raise UnsupportedError(
            "flattening",
            ".".join(path) or ROOT_NAME,
            f"a {type(x).__qualname__} cannot be stored in a tensor file",
            "Keep only arrays, tensors, numbers, strings and dict/list/tuple containers",
        )

    rec = walk(obj, [])
    return leaves, rec


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

    Example:
        >>> prune({"dict": [["a", {"t": "a"}], ["b", {"t": "b"}]]}, {"b"})
        {'dict': [['b', {'t': 'b'}]]}
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
            return {kind: [i for i in items if i is not gone]}
        return r

    out = walk(rec)
    return None if out is gone else out


def _bad(where: str, why: str) -> FileFormatError:
    fix = "The file's tensorbridge metadata is damaged; convert from the source again"
    return FileFormatError("reading", where, why, fix)


def dumps(rec: Any) -> str:
    """The record as compact JSON."""
    return json.dumps(rec, separators=(",", ":"), allow_nan=True)


def loads(text: str, where: str = "file") -> Any:
    """Parse a record; a damaged one raises :class:`FileFormatError`."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise _bad(where, f"the nesting record is not valid JSON ({err})") from err
