"""Checks of a torch.save file's pickles against the bytes it stores, before ``torch.load`` runs.

Both layouts are scanned by :func:`pickle_scan.scan` (iteratively, no data read) and every
storage reference is checked where it is made, however often a key is referenced:

* **zip** (torch >= 1.6): each storage must be a record ``<prefix>/data/<key>`` of exactly the
  bytes it claims, with one dtype for all its references. torch slices storages out of the
  mapped file at the record's offset with the *first* reference's size and never compares it
  with the record, so a larger claim would hand out the next records' bytes.
* **legacy** (``_use_new_zipfile_serialization=False``): five pickles, then each storage as an
  8-byte element count and its bytes, in the order of the fifth pickle (the list of keys). torch
  allocates every storage at the size its first reference claims and fills only those in that
  list: a storage missing from it would be uninitialised memory, so it is refused, and so is a
  claim larger than the rest of the file.
"""

from __future__ import annotations

from typing import Final

from .base import MAX_HEADER_BYTES, bad_file
from .file_window import Window
from .pickle_scan import Storage, scan

__all__ = ["check_legacy", "check_zip"]

_LEGACY_HEADS: Final = 3  # magic number, protocol version, system info


def _consistent(path: str, seen: dict[str, Storage], storage: Storage) -> None:
    first = seen.setdefault(storage.key, storage)
    if first != storage:
        raise bad_file(
            path,
            f"storage {storage.key!r} is referenced as {first.nbytes} bytes of {first.dtype} and as "
            f"{storage.nbytes} bytes of {storage.dtype}",
        )


def check_zip(src: Window, prefix: str, records: dict[str, tuple[int, int]]) -> None:
    """Scan ``<prefix>/data.pkl`` (records: offsets in ``src``); every storage reference must match its record exactly.

    Raises:
        FileFormatError: (ValueError) the pickle is refused by ``pickle_scan`` or a storage claims
            bytes the file does not hold for it.
    """
    path = src.path
    offset, length = records[f"{prefix}/data.pkl"]
    if length > MAX_HEADER_BYTES:
        raise bad_file(path, f"its pickle is {length} bytes, more than the {MAX_HEADER_BYTES} allowed")
    with src.open() as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise bad_file(path, "its pickle lies outside the file (it is truncated)")
    seen: dict[str, Storage] = {}

    def on_storage(storage: Storage) -> None:
        record = records.get(f"{prefix}/data/{storage.key}")
        if record is None or record[1] != storage.nbytes:
            held = "no record" if record is None else f"a record of {record[1]} bytes"
            raise bad_file(
                path, f"storage {storage.key!r} claims {storage.nbytes} bytes but the file holds {held} for it"
            )
        _consistent(path, seen, storage)

    end, _ = scan(data, 0, path, on_storage)
    if end != len(data):
        raise bad_file(path, f"its pickle ends at byte {end} of the {len(data)} in its record")


def check_legacy(src: Window) -> None:
    """Scan a legacy file's pickles and walk its storage records (see the module docstring), inside ``src``.

    Raises:
        FileFormatError: (ValueError) a pickle is refused, or the storages do not match the records.
    """
    with src.mapped() as view:
        _walk_legacy(src.path, view, len(view))


def _walk_legacy(path: str, view: memoryview, size: int) -> None:
    pos = 0
    claims: dict[str, Storage] = {}

    def refuse_storage(storage: Storage) -> None:
        raise bad_file(path, "a header pickle of the legacy format refers to stored data")

    for _ in range(_LEGACY_HEADS):
        pos, _ = scan(view, pos, path, refuse_storage)
    pos, _ = scan(view, pos, path, lambda st: _consistent(path, claims, st), legacy=True)
    pos, keys = scan(view, pos, path, refuse_storage, keep_lists=True)
    items = getattr(keys, "items", None)
    if not isinstance(items, list) or not all(type(k) is str for k in items):
        raise bad_file(path, "its list of storage keys is not a list of strings")
    for key in items:
        storage = claims.get(key)
        if storage is None:
            raise bad_file(path, f"its list of storage keys names {key!r}, which no tensor refers to")
        itemsize = 1 if storage.dtype is None else storage.dtype.itemsize
        if pos + 8 > size:
            raise bad_file(path, f"storage {key!r} lies outside the file (it is truncated)")
        head = bytes(view[pos : pos + 8])
        numel = {int.from_bytes(head, "little"), int.from_bytes(head, "big")}
        if storage.nbytes // itemsize not in numel or pos + 8 + storage.nbytes > size:
            raise bad_file(path, f"storage {key!r} claims {storage.nbytes} bytes but the file holds other data for it")
        pos += 8 + storage.nbytes
    missing = sorted(set(claims) - set(items))
    if missing:
        raise bad_file(
            path,
            f"{len(missing)} storages ({', '.join(map(repr, missing[:3]))}) have no stored bytes "
            "(they would be uninitialised memory)",
        )
