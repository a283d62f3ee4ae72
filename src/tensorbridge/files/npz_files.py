"""NumPy's ``.npz`` files: a zip of ``.npy`` members, checked before anything is allocated, data mapped lazily.

**.npz** (:data:`NPZ`) is a zip of ``<name>.npy`` members, each validated as in ``npy_files.py`` from its header
alone, with sizes checked against the member's declared size. The zip itself is checked first:
only STORED and DEFLATED members (those NumPy writes), no encryption, each member's bytes inside
the file and overlapping no other member, and no DEFLATED member declaring more than
``_MAX_RATIO`` times its compressed size (DEFLATE cannot exceed about 1032:1; larger claims are
zip bombs). A STORED member loads as a read-only memory map of its bytes inside the zip (zero
copy; its CRC is not checked, as that would read everything); a DEFLATED member is decompressed in
chunks into one array of exactly the declared size, and its CRC is checked. Writing is streamed,
one entry at a time, as STORED members, so the file reads back memory-mapped (``np.savez``
does the same; compress it yourself if size matters more than mapping), with fixed timestamps so
equal inputs give equal files, and each member's data aligned to 64 bytes in the file by padding in
its zip extra field (ID 0xD935, as Android's zipalign). Array names must be usable zip member
names: non-empty, valid Unicode, no NUL or backslash, not starting with ``/``, no empty, ``.``
or ``..`` part between slashes (such names are refused, never changed). The nesting record
(``structure.py``) is kept as the JSON member ``__tensorbridge__.json``, written only when it
says more than the flat names do; ``np.load`` lists it as a key whose value is its bytes.
``extra`` (string metadata, such as safetensors' ``{"format": "pt"}``) is kept as the JSON
member ``__tensorbridge_metadata__.json``, written only when there is some, read bounded
(:data:`MAX_METADATA_BYTES`) and checked to be an object of strings. A member that is neither a
``.npy`` array nor one of the two records raises :class:`UnsupportedError` (it would be lost in
silence otherwise).

bfloat16 and float8 arrays are stored in members as ``npy_files.py`` stores them (a one-field
structured dtype, see there).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from functools import partial
from typing import Any, Final

import numpy as np

from ..errors import ConversionError
from . import structure as _structure
from .base import Archive, Entry, bad_file
from .npy_files import _map, _prepared, _read_header, _short, _stored_dtype
from .npz_records import MAX_METADATA_BYTES as MAX_METADATA_BYTES
from .npz_records import _metadata_bytes, _read_metadata, _read_record
from .npz_zip import (
    _FIX_ZIP,
    _ZIP_ERRORS,
    METADATA_MEMBER,
    RECORD_MEMBER,
    _check_directory,
    _check_member_name,
    _inflate,
    _member_info,
    _members,
)

__all__ = ["METADATA_MEMBER", "NPZ", "RECORD_MEMBER", "NpzFormat"]


class NpzFormat:
    """NumPy's ``.npz`` format: a zip of ``.npy`` members, memory-mapped where stored uncompressed."""

    name: str = "npz"
    suffixes: tuple[str, ...] = (".npz",)
    keeps_metadata: bool = True

    def read(self, path: str) -> Archive:
        """Read and validate the zip directory and every member's ``.npy`` header; load no data.

        Args:
            path: the file.

        Returns:
            One entry per ``.npy`` member (``.npy`` stripped from its name), in file order; the
            nesting record tensorbridge wrote, or None.

        Raises:
            FileFormatError: (ValueError) the zip or a member is malformed, truncated, overlaps
                another member or claims more data than it holds (a zip bomb).
            UnsupportedError: (TypeError) a member is encrypted, compressed other than by DEFLATE,
                holds Python objects, or is not an array.

        Example:
            >>> import os, tempfile, numpy as np
            >>> tmp = tempfile.TemporaryDirectory()
            >>> path = os.path.join(tmp.name, "a.npz")
            >>> np.savez_compressed(path, w=np.ones((2, 2), np.float32), n=np.array(7))
            >>> archive = NPZ.read(path)
            >>> [(e.name, e.dtype, e.shape) for e in archive.entries], archive.structure
            ([('w', dtype('float32'), (2, 2)), ('n', dtype('int64'), ())], None)
            >>> archive.entries[0].load().tolist()
            [[1.0, 1.0], [1.0, 1.0]]
            >>> tmp.cleanup()
        """
        path = os.fspath(path)
        entries: list[Entry] = []
        record: Any = None
        metadata: dict[str, str] = {}
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            try:
                _check_directory(path, f, size)  # before zipfile builds an object per directory entry
                with zipfile.ZipFile(f) as zf:
                    record_info = metadata_info = None
                    for info, start in _members(path, f, zf.infolist(), size):
                        if info.filename == RECORD_MEMBER:
                            record_info = info
                            continue
                        if info.filename == METADATA_MEMBER:
                            metadata_info = info
                            continue
                        with zf.open(info) as member:
                            header = _read_header(member, info.file_size, path, f"member {info.filename!r}")
                        if info.compress_type == zipfile.ZIP_STORED:
                            load = partial(_map, path, start + header.size, header, size)
                        else:
                            load = partial(_inflate, path, info, header, size)
                        entries.append(Entry(info.filename[:-4], header.loads_as, header.shape, load))
                    if record_info is not None:
                        record = _read_record(path, zf, record_info, [e.name for e in entries])
                    if metadata_info is not None:
                        metadata = _read_metadata(path, zf, metadata_info)
            except ConversionError:
                raise
            except _ZIP_ERRORS as err:
                raise bad_file(path, f"it is not a valid zip archive ({_short(err)})", _FIX_ZIP) from err
        return Archive(entries, record, metadata)

    def write(self, path: str, entries: Sequence[Entry], structure: Any, extra: dict[str, str]) -> None:
        """Write the entries to a new ``.npz`` file at ``path``, one STORED member at a time.

        Everything that could be refused (names, dtypes) is checked before the file is created.

        Args:
            path: the file to create (the caller renames it into place).
            entries: the arrays; names must be unique zip member names (see the module docs).
            structure: the nesting record, kept as ``__tensorbridge__.json`` unless None or flat.
            extra: string metadata, kept as ``__tensorbridge_metadata__.json`` unless empty.

        Raises:
            UnsupportedError: (TypeError) a name that is no zip member name or appears twice, or a
                dtype a ``.npy`` cannot hold without pickling.
            StructureError: (ValueError) an entry loads with another dtype or shape than it declared.

        Example:
            >>> import os, tempfile, numpy as np
            >>> from tensorbridge.files.base import Entry
            >>> tmp = tempfile.TemporaryDirectory()
            >>> path = os.path.join(tmp.name, "m.npz")
            >>> w, b = np.eye(2), np.zeros(2, np.float32)
            >>> rec = {"dict": [["layer", {"list": [{"t": "layer.0"}, {"t": "layer.1"}]}], ["step", {"v": 3}]]}
            >>> entries = [Entry(n, a.dtype, a.shape, lambda a=a: a) for n, a in [("layer.0", w), ("layer.1", b)]]
            >>> NPZ.write(path, entries, rec, {})
            >>> with np.load(path) as npz:  # plain NumPy reads it too
            ...     sorted(npz.files)
            ['__tensorbridge__.json', 'layer.0', 'layer.1']
            >>> NPZ.read(path).structure == rec
            True
            >>> tmp.cleanup()
        """
        path = os.fspath(path)
        names: set[str] = set()
        for e in entries:
            _check_member_name(path, e.name, names)
            _stored_dtype(path, e.name, e.dtype)
        flat = {"dict": [[e.name, {"t": e.name}] for e in entries]}
        text = _structure.writable(path, [e.name for e in entries], None if structure == flat else structure)
        record = None if text is None else text.encode()
        meta = _metadata_bytes(path, extra)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for e in entries:
                data = _prepared(path, e)
                with zf.open(_member_info(zf, e.name + ".npy"), "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, data, allow_pickle=False)
                del data  # one entry's data in memory at a time
            if record is not None:
                zf.writestr(_member_info(zf, RECORD_MEMBER, aligned=False), record)
            if meta is not None:
                zf.writestr(_member_info(zf, METADATA_MEMBER, aligned=False), meta)


NPZ: Final = NpzFormat()
