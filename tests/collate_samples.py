"""A map-style dataset for tests/test_collate_workers.py, in a module spawned DataLoader workers import.

Its samples mix the containers and dtypes ``tb.collate`` keeps: a namedtuple holding a frozen
dataclass, bfloat16, big-endian and negatively strided arrays, a tensor, Python numbers and a string.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class Meta:
    index: int
    name: str
    weight: float


class Sample(NamedTuple):
    image: np.ndarray[Any, Any]
    depth: np.ndarray[Any, Any]
    scale: np.ndarray[Any, Any]
    mask: torch.Tensor
    meta: Meta
    tags: tuple[int, int]


class Samples(torch.utils.data.Dataset[Sample]):
    """``n`` samples, each a function of its index alone, so any process builds the same ones."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        base = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) + 100 * i
        return Sample(
            image=base[..., ::-1],  # negative strides
            depth=(np.arange(5) * i).astype(">i8"),  # big-endian
            scale=np.linspace(0, 1, 3).astype(ml_dtypes.bfloat16) + i,
            mask=torch.arange(4) % (i + 2) == 0,
            meta=Meta(index=i, name=f"s{i}", weight=i / 4),
            tags=(i, -i),
        )
