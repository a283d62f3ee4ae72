"""Helpers shared by ``quantized.py`` and ``nested.py`` (and the adapter in ``layouts.py``).

They live apart so that the import graph stays one-way: ``layouts.py`` imports both kind
modules for its adapter, so nothing those modules need can live there.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from ..errors import CopyRefusedError


@contextmanager
def _torch_notices_muted() -> Iterator[None]:
    # torch warns once per process when a quantized tensor is created (the kinds are deprecated)
    # and when a strided nested tensor is (a prototype). Here the caller already holds such a
    # tensor or named the layout: the warning would only repeat what they chose.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions", category=UserWarning)
        warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors", category=UserWarning)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        yield


def _refuse_copy(what: str, path: str, why: str, fix: str = "Pass copy=None to allow the copy") -> NoReturn:
    raise CopyRefusedError(what, path, f"copy=False, but {why}", fix)
