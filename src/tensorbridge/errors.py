"""The errors tensorbridge raises.

Every error is a :class:`ConversionError`. Each concrete class is also the built-in
exception a caller would catch without knowing tensorbridge, so ``except TypeError``
keeps working around code that switched from ``torch.from_numpy`` to tensorbridge.

Messages follow one shape: ``<what failed> at <key path>: <why>. <what to do>.``
"""

from __future__ import annotations

__all__ = [
    "ConversionError",
    "CopyRefusedError",
    "DeviceError",
    "DistributedError",
    "FileFormatError",
    "StructureError",
    "UnsupportedError",
    "ValueRangeError",
]


class ConversionError(Exception):
    """Base class of every error tensorbridge raises.

    Attributes:
        path: the key path of the leaf that failed, e.g. ``data['images'][3]``.
        cause: why it failed, with the values involved.
        fix: what the caller can do about it.

    Example:
        >>> import numpy as np, tensorbridge as tb
        >>> try:
        ...     tb.to_tensor({"x": np.array(["a"])})
        ... except tb.ConversionError as err:
        ...     print(err.path)
        data['x']
    """

    def __init__(self, what: str, path: str | None = None, cause: str = "", fix: str = "") -> None:
        self.what = what
        self.path = path or ""
        self.cause = cause
        self.fix = fix
        # A bare message is accepted too, so code that rebuilds exceptions from their text
        # (torch's DataLoader workers do) gets the same class back.
        super().__init__(what if path is None else f"{what} at {path}: {cause}. {fix}.")

    def __reduce__(self) -> tuple[type[ConversionError], tuple[str, str | None, str, str]]:
        # Keeps the structured fields across pickling (multiprocessing, concurrent.futures).
        if not self.path:
            return type(self), (str(self), None, "", "")
        return type(self), (self.what, self.path, self.cause, self.fix)


class UnsupportedError(ConversionError, TypeError):
    """A dtype, a type or a tensor layout that cannot be converted (also a TypeError)."""


class CopyRefusedError(ConversionError, ValueError):
    """``copy=False`` was asked for but the conversion needs a copy (also a ValueError)."""


class ValueRangeError(ConversionError, ValueError):
    """A value does not fit the requested dtype or setting, or would be lost (also a ValueError)."""


class StructureError(ConversionError, ValueError):
    """A container cannot be walked or rebuilt: a cycle, a shape mismatch (also a ValueError)."""


class FileFormatError(ConversionError, ValueError):
    """A file that is malformed, truncated, hostile or of the wrong format (also a ValueError)."""


class DeviceError(ConversionError, RuntimeError):
    """A device or pinned-memory problem (also a RuntimeError)."""


class DistributedError(ConversionError, RuntimeError):
    """Ranks that could not work together: one did not call, timed out or failed (also a RuntimeError)."""


class OutOfMemoryError(ConversionError, MemoryError):
    """A copy the conversion needs does not fit in memory (also a MemoryError)."""
