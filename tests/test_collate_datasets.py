"""The README's Hugging Face recipe: ``DataLoader(ds.with_format("numpy"), collate_fn=tb.collate)``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import tensorbridge as tb

datasets = pytest.importorskip("datasets")


def test_numpy_formatted_rows_collate_with_their_dtypes_and_strings_as_lists() -> None:
    ds = datasets.Dataset.from_dict(
        {
            "x": [np.arange(3, dtype=np.float32) + i for i in range(8)],
            "label": list(range(8)),
            "text": [f"s{i}" for i in range(8)],
        }
    ).with_format("numpy")
    batches = list(DataLoader(ds, batch_size=4, collate_fn=tb.collate))
    assert len(batches) == 2
    first = batches[0]
    assert first["x"].dtype is torch.float32 and first["x"].tolist() == [[i, i + 1, i + 2] for i in range(4)]
    assert first["label"].dtype is torch.int64 and first["label"].tolist() == [0, 1, 2, 3]
    assert first["text"] == ["s0", "s1", "s2", "s3"]  # np.str_ values, passed through


def test_a_ragged_column_names_the_row_and_suggests_padding() -> None:
    ds = datasets.Dataset.from_dict({"tokens": [[1, 2, 3], [4, 5]]}).with_format("numpy")
    with pytest.raises(tb.StructureError, match=r"samples\[1\]\['tokens'\]: shape \(2,\) differs"):
        tb.collate([ds[0], ds[1]])
