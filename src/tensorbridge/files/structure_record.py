"""The nesting record as a file holds it: the limits, the JSON, and the checks a record read from a file passes.

A record read from a file is untrusted: :func:`loads` bounds it before parsing (at most
:data:`MAX_RECORD_BYTES`, and no more than :func:`record_budget` allows for the file's names),
:func:`validate` checks it against the arrays the file holds, and :func:`writable` makes the
same checks before a writer creates a file. The grammar is in ``structure.py``'s module docs.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any, Final

from ..errors import FileFormatError, StructureError, UnsupportedError
from .base import clipped

__all__ = [
    "MAX_ARRAYS",
    "MAX_DEPTH",
    "MAX_NAME_BYTES",
    "MAX_RECORD_BYTES",
    "ROOT_NAME",
    "dumps",
    "json_values",
    "loads",
    "record_budget",
    "validate",
    "writable",
]

#: The name of a lone array (not inside any container) in formats that need a name.
ROOT_NAME: Final = "data"
#: The most arrays one file may hold. The largest single checkpoints (a DeepSeek-V3-size MoE merged
#: into one file) hold about 92,000 tensors, shards a few thousand; each array costs about 1 KB of
#: Python objects while reading (a zip directory entry, a header, an Entry), so this bounds that
#: to about 150 MB however the file is built.
MAX_ARRAYS: Final = 1 << 17
#: The most UTF-8 bytes of an array name: a zip member name is at most 65,535 bytes, and ``.npz``
#: appends ``.npy``. Every name tensorbridge reads can so be written to every format.
MAX_NAME_BYTES: Final = 65_535 - 4
#: The deepest nesting a record may have (as ``torch_files.MAX_DEPTH``; checkpoints nest < 10).
MAX_DEPTH: Final = 100
#: The most bytes a nesting record may have, whatever the file's names allow (see record_budget).
MAX_RECORD_BYTES: Final = 64 << 20
# What a record may spend beyond what its arrays account for (the values, e.g. {"epoch": 3}), and
# per array: bytes (the name twice, as key and as "t", plus syntax) and JSON values.
_RECORD_BASE_BYTES: Final = 1 << 20
_RECORD_BASE_VALUES: Final = 1 << 16
_RECORD_VALUES_PER_ARRAY: Final = 16
_VALUES: Final = (int, float, str, bool, type(None))
_KINDS: Final = frozenset({"t", "v", "dict", "odict", "list", "tuple"})


_FIX: Final = (
    "The file's nesting record does not match its arrays; convert it without the record (remove the "
    "__tensorbridge__.json member or the tensorbridge.structure metadata) to read the arrays by their "
    "flat names, or convert from the source again"
)


def _bad(where: str, why: str) -> FileFormatError:
    return FileFormatError("reading", where, why, _FIX)


def dumps(rec: Any) -> str:
    """The record as compact JSON."""
    return json.dumps(rec, separators=(",", ":"), allow_nan=True)


def json_values(text: str | bytes) -> int:
    """An upper bound on the values and keys ``json.loads(text)`` creates, counted without parsing.

    Every JSON value or key but the first follows one of ``, : [ {`` (those inside strings only
    make the bound larger), so this bounds what parsing spends before anything is spent.

    Example:
        >>> json_values('{"a": [1, 2], "b": "x,y"}')
        8
    """
    if isinstance(text, str):
        return 1 + text.count(",") + text.count(":") + text.count("[") + text.count("{")
    return 1 + text.count(b",") + text.count(b":") + text.count(b"[") + text.count(b"{")


def record_budget(names: Collection[str] | None) -> tuple[int, int]:
    """The most bytes and JSON values a nesting record for these array names may have.

    A record names each array once as a ``"t"`` and once more at most as a key, plus a little
    syntax; what remains is a fixed allowance for values and containers. ``None``: the fixed caps.

    Example:
        >>> record_budget(["w"])
        (1048642, 65552)
    """
    if names is None:
        return MAX_RECORD_BYTES, _RECORD_BASE_VALUES + _RECORD_VALUES_PER_ARRAY * MAX_ARRAYS
    nbytes = _RECORD_BASE_BYTES + sum(2 * len(n.encode("utf-8", "surrogatepass")) + 64 for n in names)
    return min(nbytes, MAX_RECORD_BYTES), _RECORD_BASE_VALUES + _RECORD_VALUES_PER_ARRAY * len(names)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:  # json.loads would keep the last in silence
            raise ValueError(f"the key {key!r} appears twice in an object")
        obj[key] = value
    return obj


def loads(text: str, where: str = "file", names: Collection[str] | None = None) -> Any:
    """Parse a record within :func:`record_budget`; a damaged or oversized one raises :class:`FileFormatError`.

    Example:
        >>> loads('{"t": "w"}', names=["w"])
        {'t': 'w'}
    """
    max_bytes, max_values = record_budget(names)
    if len(text) > max_bytes:  # characters: at most its UTF-8 bytes
        raise _bad(where, f"the nesting record is {len(text)} characters, more than the {max_bytes} its arrays allow")
    values = json_values(text)
    if values > max_values:
        raise _bad(where, f"the nesting record holds up to {values} JSON values, more than the {max_values} allowed")
    try:
        return json.loads(text, object_pairs_hook=_unique)
    except (ValueError, RecursionError) as err:
        raise _bad(where, f"the nesting record is not valid JSON ({_short(err)})") from err


def validate(rec: Any, names: Collection[str], where: str = "file") -> None:
    """Check a parsed record against the names a file holds, iteratively, before anything uses it.

    The grammar (module docs), at most :data:`MAX_DEPTH` levels; dict keys str or int, none twice;
    every name in ``names`` referenced by exactly one ``{"t": name}``, and that name the dotted path
    of keys leading to it (``ROOT_NAME`` at the top), as :func:`flatten` writes it.

    Raises:
        FileFormatError: (ValueError) the record is malformed or does not match ``names``.

    Example:
        >>> validate({"dict": [["a", {"t": "a"}], ["b", {"t": "b"}]]}, ["a", "b"])
        >>> validate({"dict": [["a", {"t": "b"}], ["b", {"t": "a"}]]}, ["a", "b"])
        Traceback (most recent call last):
        ...
        tensorbridge.errors.FileFormatError: reading at file: the nesting record puts array 'a' at 'b'...
    """
    present = set(names)
    seen: set[str] = set()
    # (record, dotted path, depth); the path is None at the top, where a lone array is ROOT_NAME
    stack: list[tuple[Any, str | None, int]] = [(rec, None, 0)]
    while stack:
        r, at, depth = stack.pop()
        shown = ROOT_NAME if at is None else repr(at)
        if depth > MAX_DEPTH:
            raise _bad(where, f"the nesting record is deeper than {MAX_DEPTH} levels")
        if not isinstance(r, dict) or len(r) != 1 or next(iter(r)) not in _KINDS:
            raise _bad(where, f"the nesting record entry at {shown} is {_short(r)}, not one of {sorted(_KINDS)}")
        ((kind, body),) = r.items()
        if kind == "t":
            expected = at or ROOT_NAME
            if not isinstance(body, str) or body not in present:
                raise _bad(where, f"the nesting record names array {_short(body)}, which the file does not hold")
            if body in seen:
                raise _bad(where, f"the nesting record names array {body!r} twice")
            if body != expected:
                raise _bad(where, f"the nesting record puts array {_short(body)} at {_short(expected)}")
            seen.add(body)
        elif kind == "v":
            if not isinstance(body, _VALUES):
                raise _bad(where, f"a value in the nesting record at {shown} is {_short(body)}")
        elif kind in ("dict", "odict"):
            if not isinstance(body, list) or not all(isinstance(p, list) and len(p) == 2 for p in body):
                raise _bad(where, f"a dict in the nesting record at {shown} is not a list of [key, value] pairs")
            keys: set[tuple[type, Any]] = set()
            for k, v in body:
                bad_type = not isinstance(k, (str, int)) or isinstance(k, bool)
                if bad_type or (type(k), k) in keys:
                    why = "is not a str or int" if bad_type else "appears twice"
                    raise _bad(where, f"the key {_short(k)} of a dict in the nesting record at {shown} {why}")
                keys.add((type(k), k))
                stack.append((v, str(k) if at is None else f"{at}.{k}", depth + 1))
        else:
            if not isinstance(body, list):
                raise _bad(where, f"a {kind} in the nesting record at {shown} is not a list")
            stack.extend((v, str(i) if at is None else f"{at}.{i}", depth + 1) for i, v in enumerate(body))
    missing = [n for n in names if n not in seen]
    if missing:
        raise _bad(where, f"the nesting record does not name {len(missing)} of the arrays ({_short(missing[:3])})")


def writable(path: str, names: Sequence[str], rec: Any) -> str | None:
    """The record as JSON for a file of these names (None for None), after the checks a reader makes.

    A writer calls this before creating the file, so that it never writes what it would refuse
    to read back.

    Raises:
        UnsupportedError: (TypeError) more than :data:`MAX_ARRAYS` names, a name over
            :data:`MAX_NAME_BYTES`, or a record over its :func:`record_budget`.
        StructureError: (ValueError) the record does not match the names (:func:`validate`).

    Example:
        >>> writable("m.npz", ["w"], {"dict": [["w", {"t": "w"}]]})
        '{"dict":[["w",{"t":"w"}]]}'
    """
    if len(names) > MAX_ARRAYS:
        raise UnsupportedError(
            "writing", path, f"{len(names)} arrays, more than the {MAX_ARRAYS} a file may hold", "Split them over files"
        )
    for name in names:
        size = len(name.encode("utf-8", "surrogatepass"))
        if size > MAX_NAME_BYTES:
            raise UnsupportedError(
                "writing",
                path,
                f"the array name {_short(name)} is {size} bytes in UTF-8, more than the {MAX_NAME_BYTES} a file "
                "may hold (a zip member name holds at most 65,535)",
                "Rename the array",
            )
    if rec is None:
        return None
    try:
        validate(rec, names, where=path)
    except FileFormatError as err:
        raise StructureError(
            "writing", path, err.cause, "Pass structure=None for a flat set of names, or the record flatten() gives"
        ) from err
    text = dumps(rec)
    max_bytes, max_values = record_budget(names)
    size, values = len(text.encode("utf-8")), json_values(text)
    if size > max_bytes or values > max_values:
        raise UnsupportedError(
            "writing",
            path,
            f"the nesting record would be {size} bytes with up to {values} JSON values, more than the "
            f"{max_bytes} bytes and {max_values} values a reader accepts for {len(names)} arrays",
            "Keep fewer non-array values in the containers, or pass structure=None for a flat set of names",
        )
    return text


def _short(value: object) -> str:
    return clipped(repr(value), 80)
