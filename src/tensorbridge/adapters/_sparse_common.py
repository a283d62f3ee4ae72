"""Helpers shared by ``sparse_from_scipy.py`` and ``sparse_to_scipy.py`` (and the adapter in ``sparse.py``).

They live apart so that the import graph stays one-way: ``sparse.py`` imports both direction
modules for its adapter, so nothing those modules need can live there.

Each direction plans from metadata (formats, dtypes, shapes, ``nnz``, the parts' strides, flags
and addresses) into a :class:`_Parts` record, which says what will be shared or copied; the
conversion then runs, and records what the constructors really did (``confirm``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import torch

from ..errors import CopyRefusedError, UnsupportedError
from ..plan.core import describe_tensor
from .base import Adoption

_Array = np.ndarray[Any, Any]
_LAYOUTS: Final = {"coo": torch.sparse_coo, "csr": torch.sparse_csr, "csc": torch.sparse_csc, "bsr": torch.sparse_bsr}
_FORMATS: Final = {layout: fmt for fmt, layout in _LAYOUTS.items()}
_FRESH: Final = "copy=True asks for fresh memory"
# torch cannot densify these, but sums of unsigned integers wrap exactly as the signed ones of
# the same size do, bit for bit: the values are densified as those.
_WRAPPING: Final = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        # torch warns once per process that compressed layouts are beta: the caller asked for
        # exactly that layout. Read-only arrays reach torch only with copy=False (README).
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        yield


@dataclass
class _Parts:
    """What became of each part of the result: shared with the input, or copied and why."""

    shared: dict[str, int] = field(default_factory=dict)  # part -> address shared (0: empty)
    copied: list[tuple[str, str]] = field(default_factory=list)
    hint: str = ""
    notes: list[str] = field(default_factory=list)  # what else was done, e.g. requires grad

    def share(self, part: str, address: int) -> None:
        self.shared[part] = address

    def copy(self, part: str, why: str) -> None:
        if (part, why) not in self.copied:
            self.copied.append((part, why))

    def confirm(self, part: str, address: int, by: str) -> None:
        """A constructor may copy what it was handed: the record follows what it did."""
        if self.shared.get(part, address) not in (0, address):
            del self.shared[part]
            self.copy(part, f"{by} copied it")

    def moved(self, why: str) -> None:
        self.shared.clear()
        self.copy("everything", why)

    def refuse(self, what: str, path: str, copy: bool | None) -> None:
        """Raise if ``copy=False`` and anything is copied."""
        if copy is False and self.copied:
            raise CopyRefusedError(
                what,
                path,
                "copy=False, but the conversion must copy: " + "; ".join(f"{p} ({w})" for p, w in self.copied),
                "Pass copy=None to allow the copy" + (f", or {self.hint}" if self.hint else ""),
            )

    def why(self) -> str:
        bits = [f"{part} copied ({why})" for part, why in self.copied]
        if self.shared:
            bits.append(", ".join(self.shared) + " shared")
        return "; ".join(bits + self.notes)

    def kind(self) -> Literal["adopt", "adopt_copy"]:
        return "adopt_copy" if self.copied and not self.shared else "adopt"

    def fork(self) -> _Parts:
        """A copy of the plan's record, for one run's ``confirm`` to correct."""
        return _Parts(dict(self.shared), list(self.copied), self.hint, list(self.notes))

    def adoption(self, what: str, path: str, copy: bool | None, source: str, run: Callable[[], Any]) -> Adoption:
        """The adoption this record plans (refused now if ``copy=False`` and anything is copied)."""
        self.refuse(what, path, copy)
        return Adoption(self.kind(), self.why(), run, done=True, source=source)


def _address(x: _Array | torch.Tensor) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.data_ptr()) if x.numel() else 0
    return int(x.__array_interface__["data"][0]) if x.size else 0


def _coords(X: Any) -> tuple[_Array, ...]:
    coords = getattr(X, "coords", None)  # SciPy < 1.13 has only row and col
    return tuple(coords) if coords is not None else (X.row, X.col)


def _describe_scipy(X: Any) -> str:
    bits = [f"scipy.sparse.{type(X).__name__} {X.dtype}", f"shape {X.shape}", f"nnz {X.nnz}"]
    if X.format == "bsr":
        bits.append(f"blocks {X.blocksize}")
    index = _coords(X)[0] if X.format == "coo" else getattr(X, "indices", None)
    if index is not None:
        bits.append(f"{index.dtype} indices")
    return ", ".join(bits)


def _describe_sparse(t: torch.Tensor) -> str:
    return f"{describe_tensor(t)}, nnz {t._nnz()}"


def _compressed(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(compressed, plain) indices: (crow, col) for CSR/BSR, (ccol, row) for CSC/BSC."""
    if t.layout in (torch.sparse_csr, torch.sparse_bsr):
        return t.crow_indices(), t.col_indices()
    return t.ccol_indices(), t.row_indices()


def _values(t: torch.Tensor) -> torch.Tensor:
    return t._values() if t.layout == torch.sparse_coo else t.values()


def _with_values(t: torch.Tensor, values: torch.Tensor, copy_indices: bool = False) -> torch.Tensor:
    """``t``'s structure (its indices, copied if asked) around other values."""
    with _quiet():
        if t.layout == torch.sparse_coo:
            index = t._indices().clone() if copy_indices else t._indices()
            coalesced = t.is_coalesced()
            return torch.sparse_coo_tensor(index, values, t.shape, is_coalesced=coalesced, check_invariants=False)
        compressed, plain = (i.clone() if copy_indices else i for i in _compressed(t))
        return torch.sparse_compressed_tensor(
            compressed, plain, values, t.shape, layout=t.layout, check_invariants=False
        )


def _dense_tensor(t: torch.Tensor, what: str, path: str) -> torch.Tensor:
    """``t.to_dense()``, also for the dtypes torch has no densifying kernel for, where exact."""
    with _quiet():
        try:
            return t.to_dense()
        except (NotImplementedError, RuntimeError) as err:
            failure = err
        carrier = _WRAPPING.get(t.dtype)
        zero_bits = torch.zeros(1, dtype=torch.int8).view(t.dtype) if t.element_size() == 1 else None
        unique = t.layout != torch.sparse_coo or t.is_coalesced()
        if carrier is None and zero_bits is not None and unique and float(zero_bits.float()) == 0.0:
            carrier = torch.int8  # float8 without duplicates: no sum, each value's bits placed as they are
        if carrier is not None:
            base = t.detach()
            return _with_values(base, _values(base).view(carrier)).to_dense().view(t.dtype)
    raise UnsupportedError(
        what,
        path,
        f"torch cannot densify a {str(t.layout).removeprefix('torch.')} tensor of {t.dtype} ({failure})",
        "Coalesce it (t.coalesce()) or cast the values first, e.g. t.to(torch.float32)",
    )


def _densified(make: Callable[[], Any], copy: bool | None, what: str, path: str, why: str, source: str) -> Adoption:
    if copy is False:
        raise CopyRefusedError(
            what,
            path,
            "copy=False, but dense=True writes every value, zeros included, into fresh memory",
            "Pass copy=None, or drop dense=True to keep the sparse layout",
        )
    return Adoption("adopt_copy", f"densified (dense=True): {why}", make, source=source)


def _as_is(value: Any, why: str, source: str) -> Adoption:
    """The leaf is the result already: handed back as it is (nothing to read)."""
    return Adoption("adopt", why, lambda: value, done=True, source=source, free=True)


def _scipy_dense(X: Any, what: str, path: str) -> _Array:
    try:
        dense: _Array = X.toarray()
    except (ValueError, TypeError) as err:  # dtypes SciPy half-supports (float16, ml_dtypes)
        raise UnsupportedError(
            what, path, f"SciPy cannot densify it ({err})", "Cast it first with X.astype(np.float32)"
        ) from err
    return dense
