"""The two JSON members of an ``.npz`` file: the nesting record and the string metadata, each read bounded.

:func:`_read_record` bounds the record by the array names present before a byte is decompressed,
then parses and validates it (``structure.py``); :func:`_read_metadata` reads at most
:data:`MAX_METADATA_BYTES` and checks it is one JSON object of strings; :func:`_metadata_bytes`
makes that member when writing, refusing what a reader would refuse.
"""

from __future__ import annotations

import json
import zipfile
from typing import Any, Final

from ..errors import UnsupportedError
from . import structure as _structure
from .base import bad_file
from .npy_files import _read_exact, _short
from .npz_zip import _FIX_ZIP, METADATA_MEMBER, RECORD_MEMBER

__all__ = ["MAX_METADATA_BYTES"]

#: The most bytes the metadata member may hold: metadata is a few short strings in practice, and a
#: deflated member may claim ~1000x its size, so this bounds what a small file can make us parse.
MAX_METADATA_BYTES: Final = 1 << 20
_FIX_RECORD: Final = (
    f"Convert it without the record (remove the {RECORD_MEMBER} member, zip -d) to read the arrays by their flat "
    "names, or convert from the source again"
)
_FIX_METADATA: Final = f"Remove the {METADATA_MEMBER} member (zip -d) to read the arrays without their metadata"


def _metadata_bytes(path: str, extra: dict[str, str]) -> bytes | None:
    """The metadata member's bytes, or None when there is no metadata; refused before writing if too large."""
    if not extra:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise UnsupportedError("writing", path, "metadata must map strings to strings", "Pass str keys and values")
    raw = json.dumps(extra, ensure_ascii=False, sort_keys=True).encode()
    if len(raw) > MAX_METADATA_BYTES:
        raise UnsupportedError(
            "writing", path, f"the metadata takes {len(raw)} bytes, more than {MAX_METADATA_BYTES}", "Keep it short"
        )
    return raw


def _read_metadata(path: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> dict[str, str]:
    """The metadata member: bounded before a byte is decompressed, then one JSON object of strings."""
    if info.file_size > MAX_METADATA_BYTES:
        raise bad_file(
            path,
            f"the metadata claims {info.file_size} bytes, more than the {MAX_METADATA_BYTES} allowed",
            _FIX_METADATA,
        )
    with zf.open(info) as member:
        raw = _read_exact(member, info.file_size + 1)
    if len(raw) != info.file_size:
        raise bad_file(path, f"the metadata holds {len(raw)} bytes, not the {info.file_size} declared", _FIX_ZIP)
    try:
        found = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise bad_file(path, f"the metadata is not JSON ({_short(err)})", _FIX_METADATA) from err
    if not isinstance(found, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in found.items()):
        raise bad_file(path, "the metadata is not one JSON object of strings", _FIX_METADATA)
    return found


def _read_record(path: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo, names: list[str]) -> Any:
    """The nesting record, bounded by the names present before a byte is decompressed, then validated."""
    max_bytes, max_values = _structure.record_budget(names)
    if info.file_size > max_bytes:
        raise bad_file(
            path,
            f"the nesting record claims {info.file_size} bytes, more than the {max_bytes} its {len(names)} arrays "
            "allow",
            _FIX_RECORD,
        )
    with zf.open(info) as member:
        # zipfile stops at the declared size; read(n + 1) bounds the memory even if it did not.
        raw = _read_exact(member, info.file_size + 1)
    if len(raw) != info.file_size:
        raise bad_file(path, f"the nesting record holds {len(raw)} bytes, not the {info.file_size} declared", _FIX_ZIP)
    values = _structure.json_values(raw)
    if values > max_values:  # counted on the bytes, before they are decoded or parsed
        raise bad_file(
            path,
            f"the nesting record holds up to {values} JSON values, more than the {max_values} allowed",
            _FIX_RECORD,
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise bad_file(path, f"the nesting record is not UTF-8 ({err.reason})", _FIX_RECORD) from err
    del raw
    record = _structure.loads(text, where=path, names=names)
    _structure.validate(record, names, where=path)
    return record
