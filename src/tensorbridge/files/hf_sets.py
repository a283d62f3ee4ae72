r"""Hugging Face sharded safetensors sets: a directory of ``*.safetensors`` shards and their index.

A set is a directory holding ``model.safetensors.index.json``::

    {"metadata": {"total_size": 123}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors", ...}}

and the shards it names, each a plain safetensors file (read by ``safetensors_files.py``). The
path of a set is the directory or its index file. A directory without an index (one
``model.safetensors``, say) is not a set: give the file inside it.

Reading treats the index as hostile: at most :data:`MAX_INDEX_BYTES`, strict UTF-8 JSON, exactly
the keys ``weight_map`` (required) and ``metadata`` (optional), no key twice; every shard name a
plain file name ending ``.safetensors`` (no ``/``, ``\\``, ``:``, NUL, ``.`` or ``..``), every shard
present; every tensor of the map in the shard it is mapped to, and every tensor of a listed shard
mapped to that shard. Entries come in shard order (shard names sorted, which is numeric order for
``model-0000K-of-0000N``), each shard's in its header's order: the order the set was written in.
Other files in the directory (``config.json``, stray shards) are ignored.

Writing plans the shards from the entries' declared sizes first (a new shard starts when the next
tensor would take the current one over ``max_shard_size``; a tensor larger than that gets a shard
of its own, as ``huggingface_hub.split_torch_state_dict_into_shards`` does), then writes them one
at a time as ``model-0000K-of-0000N.safetensors`` into the (empty, temporary) directory it is
given, then the index: ``total_size`` is the sum of the tensors' bytes, the weight map follows the
entries' order. Every shard carries ``extra`` as its ``__metadata__`` (transformers writes
``{"format": "pt"}`` to each); a nesting record goes in the index's metadata under
``tensorbridge.structure``. ``set_output.py`` makes the directory and puts it in place atomically.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from ..errors import UnsupportedError
from . import structure as _structure
from .base import Archive, Entry, bad_file, clipped
from .safetensors_files import SAFETENSORS, STRUCTURE_KEY

__all__ = ["INDEX_NAME", "SAFETENSORS_SET", "SafetensorsSetFormat", "find_index", "parse_size"]

INDEX_NAME: Final = "model.safetensors.index.json"
#: The most bytes an index may hold (a 100k-tensor model's index is a few MB).
MAX_INDEX_BYTES: Final = 64 << 20
#: transformers' default ``max_shard_size``.
DEFAULT_SHARD_SIZE: Final = 5 * 10**9

_UNITS: Final = {
    "": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}  # fmt: skip
_SIZE: Final = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*")
_FIX_INDEX: Final = "Fix the index (or the shards), or re-save the set with transformers' save_pretrained"


def parse_size(text: str | int) -> int:
    """A shard size: plain bytes, decimal units (``5GB``, ``500MB``) or binary ones (``2GiB``).

    Raises:
        UnsupportedError: (TypeError) not a size, or not positive.

    Example:
        >>> parse_size("5GB"), parse_size("1.5MiB"), parse_size("1000")
        (5000000000, 1572864, 1000)
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = _SIZE.fullmatch(str(text))
        unit = None if m is None else _UNITS.get(m.group(2).lower())
        if m is None or unit is None:
            raise UnsupportedError(
                "convert", "--max-shard-size", f"{clipped(repr(text), 60)} is not a size",
                "Give bytes, or a number with a unit: 5GB, 500MB, 2GiB, 512MiB",
            )  # fmt: skip
        try:
            value = int(Decimal(m.group(1)) * unit)
        except InvalidOperation as err:  # pragma: no cover - the pattern admits only decimals
            raise UnsupportedError("convert", "--max-shard-size", f"{text!r} is not a size", "Give e.g. 5GB") from err
    if value < 1:
        raise UnsupportedError("convert", "--max-shard-size", f"{text!r} is not positive", "Give e.g. 5GB")
    return value


def find_index(path: str) -> str | None:
    """The index file of the set at ``path`` (a directory or an ``.index.json``), or None if it is no set.

    A directory's index is ``model.safetensors.index.json``, or else its only ``*.safetensors.index.json``.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> find_index(d) is None
        True
        >>> open(os.path.join(d, INDEX_NAME), "w").close()
        >>> os.path.basename(find_index(d))
        'model.safetensors.index.json'
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        return path if path.lower().endswith(".index.json") and os.path.isfile(path) else None
    if os.path.isfile(os.path.join(path, INDEX_NAME)):
        return os.path.join(path, INDEX_NAME)
    try:
        found = [n for n in os.listdir(path) if n.endswith(".safetensors.index.json")]
    except OSError:
        return None
    return os.path.join(path, found[0]) if len(found) == 1 else None


class SafetensorsSetFormat:
    """A Hugging Face sharded safetensors set (a directory, or its ``*.index.json``).

    Attributes:
        max_shard_size: the most bytes of tensors a written shard holds (a larger tensor: alone).
    """

    name: str = "safetensors-set"
    suffixes: tuple[str, ...] = (".index.json",)
    keeps_metadata: bool = True
    directory: bool = True
    """Written as a directory (``set_output.py``), not a file."""

    def __init__(self, max_shard_size: int = DEFAULT_SHARD_SIZE) -> None:
        self.max_shard_size = max_shard_size

    def read(self, path: str) -> Archive:
        """Read and validate the index of the set at ``path`` and every shard's header; load no data.

        Raises:
            FileFormatError: (ValueError) no index, a malformed or hostile index, a missing or
                malformed shard, a tensor the index and the shards disagree about.

        Example:
            >>> import tempfile, numpy as np
            >>> d = os.path.join(tempfile.mkdtemp(), "set")
            >>> os.mkdir(d)
            >>> w = np.ones(4, np.float32)
            >>> entries = [Entry(n, w.dtype, w.shape, lambda: w) for n in "ab"]
            >>> SafetensorsSetFormat(max_shard_size=16).write(d, entries, None, {})
            >>> sorted(os.listdir(d))
            ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']
            >>> [e.name for e in SAFETENSORS_SET.read(d).entries]
            ['a', 'b']
        """
        path = os.fspath(path)
        index = find_index(path)
        if index is None:
            raise bad_file(path, f"it holds no {INDEX_NAME}", "Give a sharded set's directory or its index file")
        weight_map, record = _read_index(index)
        folder = os.path.dirname(index)
        by_shard: dict[str, set[str]] = {}
        for tensor, shard in weight_map.items():
            by_shard.setdefault(shard, set()).add(tensor)
        entries: list[Entry] = []
        extra: dict[str, str] = {}
        for shard in sorted(by_shard):
            shard_path = os.path.join(folder, shard)
            if not os.path.isfile(shard_path):
                raise bad_file(index, f"the shard {shard!r} it names is not a file in {folder}", _FIX_INDEX)
            archive = SAFETENSORS.read(shard_path)
            names = {e.name for e in archive.entries}
            for e in archive.entries:
                if e.name not in weight_map:
                    why = f"the shard {shard!r} holds tensor {clipped(repr(e.name))}, which the index does not list"
                    raise bad_file(index, why, _FIX_INDEX)
                if weight_map[e.name] != shard:
                    why = (
                        f"the shard {shard!r} holds tensor {clipped(repr(e.name))}, which the index maps to "
                        f"{weight_map[e.name]!r} (a tensor in two shards)"
                    )
                    raise bad_file(index, why, _FIX_INDEX)
            missing = sorted(by_shard[shard] - names)
            if missing:
                why = f"tensor {clipped(repr(missing[0]))} is mapped to {shard!r}, which does not hold it"
                more = f" ({len(missing) - 1} more)" if len(missing) > 1 else ""
                raise bad_file(index, why + more, _FIX_INDEX)
            entries.extend(archive.entries)
            for k, v in archive.extra.items():
                extra.setdefault(k, v)
        nesting = None
        if record is not None:
            names_list = [e.name for e in entries]
            nesting = _structure.loads(record, where=index, names=names_list)
            _structure.validate(nesting, names_list, where=index)
        return Archive(entries, nesting, extra)

    def write(self, path: str, entries: Sequence[Entry], structure: Any, extra: dict[str, str]) -> None:
        """Write ``entries`` as shards of at most ``max_shard_size`` bytes and the index into empty directory ``path``.

        Raises:
            UnsupportedError: (TypeError) a name twice, or what a shard cannot hold (``safetensors_files.py``).
            StructureError: (ValueError) an entry loads as another dtype or shape than it declared.

        Example:
            >>> import tempfile, json, numpy as np
            >>> d = tempfile.mkdtemp()
            >>> big = np.zeros(100, np.uint8)
            >>> SafetensorsSetFormat(50).write(d, [Entry("big", big.dtype, big.shape, lambda: big)], None, {})
            >>> with open(os.path.join(d, INDEX_NAME)) as f:
            ...     json.load(f)
            {'metadata': {'total_size': 100}, 'weight_map': {'big': 'model-00001-of-00001.safetensors'}}
        """
        path = os.fspath(path)
        seen: set[str] = set()
        for e in entries:
            if e.name in seen:
                raise UnsupportedError(
                    "writing", path, f"the tensor name {e.name!r} appears twice", "Rename the tensor"
                )
            seen.add(e.name)
        record = _structure.writable(path, [e.name for e in entries], structure)
        shards = plan_shards(entries, self.max_shard_size)
        n = len(shards)
        weight_map: dict[str, str] = {}
        for k, group in enumerate(shards, 1):
            shard = f"model-{k:05d}-of-{n:05d}.safetensors"
            SAFETENSORS.write(os.path.join(path, shard), group, None, extra)
            weight_map.update((e.name, shard) for e in group)
        metadata: dict[str, Any] = {"total_size": sum(e.nbytes for e in entries)}
        if record is not None:
            metadata[STRUCTURE_KEY] = record
        text = json.dumps({"metadata": metadata, "weight_map": weight_map}, indent=2, ensure_ascii=False) + "\n"
        with open(os.path.join(path, INDEX_NAME), "w", encoding="utf-8") as f:
            f.write(text)


SAFETENSORS_SET: Final = SafetensorsSetFormat()


def plan_shards(entries: Sequence[Entry], limit: int) -> list[list[Entry]]:
    """The entries cut, in order, into shards of at most ``limit`` bytes (a larger entry alone); one shard at least.

    Example:
        >>> import numpy as np
        >>> e = [Entry(n, np.dtype("u1"), (s,), lambda: None) for n, s in [("a", 4), ("b", 4), ("c", 9), ("d", 1)]]
        >>> [[x.name for x in shard] for shard in plan_shards(e, 8)]
        [['a', 'b'], ['c'], ['d']]
    """
    shards: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


# ----------------------------------------------------------------------------------- the index


def _read_index(index: str) -> tuple[dict[str, str], str | None]:
    """The index's weight map (tensor -> shard name, in file order) and nesting record, checked."""
    size = os.stat(index).st_size
    if size > MAX_INDEX_BYTES:
        raise bad_file(index, f"the index is {size} bytes, over the {MAX_INDEX_BYTES} an index may hold", _FIX_INDEX)
    with open(index, "rb") as f:
        raw = f.read(MAX_INDEX_BYTES + 1)
    if len(raw) > MAX_INDEX_BYTES:
        raise bad_file(index, f"the index grew over {MAX_INDEX_BYTES} bytes while read", _FIX_INDEX)

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise _IndexError(f"the key {clipped(repr(k))} appears twice")
            out[k] = v
        return out

    def constant(name: str) -> Any:
        raise _IndexError(f"it holds {name}, which JSON does not allow")

    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant)
    except _IndexError as err:
        raise bad_file(index, str(err), _FIX_INDEX) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise bad_file(index, f"the index is not UTF-8 JSON ({clipped(str(err), 80)})", _FIX_INDEX) from None
    if not isinstance(doc, dict):
        raise bad_file(index, f"the index is a JSON {type(doc).__name__}, not an object", _FIX_INDEX)
    unknown = sorted(set(doc) - {"metadata", "weight_map"})
    if unknown or "weight_map" not in doc:
        why = f"unexpected key {clipped(repr(unknown[0]))}" if unknown else "no 'weight_map'"
        raise bad_file(index, f"the index has {why} (an index holds 'metadata' and 'weight_map')", _FIX_INDEX)
    metadata, weight_map = doc.get("metadata", {}), doc["weight_map"]
    if not isinstance(metadata, dict) or not isinstance(weight_map, dict):
        raise bad_file(index, "the index's 'metadata' and 'weight_map' must be JSON objects", _FIX_INDEX)
    total = metadata.get("total_size", 0)
    if isinstance(total, bool) or not isinstance(total, (int, float)) or total < 0:
        raise bad_file(index, f"the index's total_size {clipped(repr(total), 40)} is not a byte count", _FIX_INDEX)
    record = metadata.get(STRUCTURE_KEY)
    if record is not None and not isinstance(record, str):
        raise bad_file(index, f"the index's {STRUCTURE_KEY} is not a str", _FIX_INDEX)
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or not _plain_shard_name(shard):
            shown = clipped(repr(shard), 80)
            why = f"tensor {clipped(repr(tensor))} is mapped to {shown}, which is not a shard file name"
            raise bad_file(index, why, "Shards are .safetensors files beside the index, named without any directory")
    return weight_map, record


def _plain_shard_name(name: str) -> bool:
    """A file name in the index's own directory: no separator, drive, NUL, ``.`` or ``..``."""
    return (
        0 < len(name.encode("utf-8", "surrogatepass")) <= 255
        and name.endswith(".safetensors")
        and not any(c in name for c in "/\\:\0")
        and name not in (".", "..")
        and not os.path.isabs(name)
    )


class _IndexError(ValueError):
    """A problem found while the index's JSON is parsed (made into the one-line error)."""
