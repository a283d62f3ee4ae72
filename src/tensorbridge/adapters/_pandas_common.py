"""What the pandas adapter's modules share: the planned and the converted column, and the call's context.

A column is planned from its dtype (:class:`_Plan`, no data read) and converted when the
conversion runs (:class:`_Column`); :class:`_Ctx` carries what every column of one leaf needs.
The rules themselves are in ``pandas_columns.py``, ``pandas_frames.py`` and ``pandas_datetimes.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from ..plan.core import InteropOptions

_NUMERIC: Final = "biufc"


@dataclass
class _Column:
    """One column's values as a 1-D array, and what it took."""

    values: np.ndarray[Any, Any]
    copied: bool
    note: str
    plain: bool = False  # a NumPy-backed column's own values, nothing done to them
    memory: str = ""  # how plans describe the memory, when neither "fresh" nor "pandas' own" is true


@dataclass(frozen=True)
class _Plan:
    """One column (or a whole leaf) as planned from its dtype: what it becomes, and the data work.

    Attributes:
        dtype: the NumPy dtype it becomes (before any cast to ``dtype=``).
        note: what converting does, from metadata.
        copies: True: fresh memory; False: a view of pandas' memory; None: a view, unless the
            data needs a copy (``unless`` says when).
        get: reads the values and converts them (raises for what the data holds).
        unless: when ``copies`` is None, what makes fresh memory.
        plain: a NumPy-backed numeric column's own values: nothing in its data can fail.
        memory: how plans describe the memory, when neither "fresh" nor "pandas' own" is true.
    """

    dtype: np.dtype[Any]
    note: str
    copies: bool | None
    get: Callable[[], _Column]
    unless: str = ""
    plain: bool = False
    memory: str = ""


@dataclass(frozen=True)
class _Ctx:
    """What every column of one leaf needs: the call, the options and the target dtype."""

    what: str
    path: str
    io: InteropOptions
    target: np.dtype[Any] | None
    copy: bool | None = None


def _float_example(ctx: _Ctx) -> str:
    return "torch.float32" if ctx.what == "to_tensor" else "np.float32"
