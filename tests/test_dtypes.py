from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

import tensorbridge as tb
from tensorbridge.dtypes import row_for_numpy, row_for_torch

from .helpers import ALL_ROWS, EXACT_ROWS


def test_table_has_every_shared_dtype() -> None:
    names = {row.name for row in tb.ROWS}
    assert {
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
        "bfloat16",
        "float8_e4m3fn",
        "float8_e5m2",
        "complex32",
    } <= names


def test_table_has_no_missing_rows() -> None:
    for row in tb.ROWS:
        assert isinstance(row.torch, torch.dtype)
        assert isinstance(row.numpy, np.dtype)
        assert row.carrier is None or row.carrier.itemsize == row.numpy.itemsize
        assert row.torch.itemsize == row.numpy.itemsize or not row.exact


@pytest.mark.parametrize("row", ALL_ROWS, ids=lambda r: r.name)
def test_lookups_round_trip(row: tb.dtypes.DtypeRow) -> None:
    assert tb.torch_dtype(row.torch) is row.torch
    assert tb.numpy_dtype(row.torch) == row.numpy
    assert tb.torch_dtype(row.name) is row.torch
    assert tb.torch_dtype(f"torch.{row.name}") is row.torch
    assert row_for_torch(row.torch) is row
    if row.exact:
        assert tb.torch_dtype(row.numpy) is row.torch
        assert tb.torch_dtype(row.numpy.type) is row.torch
        assert row_for_numpy(row.numpy) is row


# ml_dtypes types have one byte order, so only plain NumPy rows have a big-endian spelling.
@pytest.mark.parametrize(
    "row", [r for r in EXACT_ROWS if r.numpy.itemsize > 1 and r.carrier is None], ids=lambda r: r.name
)
def test_both_byte_orders_map_to_the_row(row: tb.dtypes.DtypeRow) -> None:
    assert tb.torch_dtype(row.numpy.newbyteorder(">")) is row.torch
    assert tb.torch_dtype(row.numpy.newbyteorder("<")) is row.torch
    assert tb.numpy_dtype(row.numpy.newbyteorder(">")) == row.numpy


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("float32", torch.float32),
        ("f4", torch.float32),
        ("<f8", torch.float64),
        (">i2", torch.int16),
        ("half", torch.float16),
        ("double", torch.float64),
        ("long", torch.int64),
        ("cfloat", torch.complex64),
        ("bfloat16", torch.bfloat16),
        ("np.uint8", torch.uint8),
        ("bool", torch.bool),
        (float, torch.float64),
        (int, torch.int64),
        (bool, torch.bool),
        (complex, torch.complex128),
        (np.float16, torch.float16),
        (np.longlong, torch.int64),
        (ml_dtypes.bfloat16, torch.bfloat16),
        (ml_dtypes.float8_e5m2, torch.float8_e5m2),
        (np.dtype("int8"), torch.int8),
    ],
)
def test_torch_dtype_spellings(spelling: object, expected: torch.dtype) -> None:
    assert tb.torch_dtype(spelling) is expected


def test_complex32_maps_to_complex64_for_numpy_only() -> None:
    assert tb.numpy_dtype(torch.complex32) == np.complex64
    assert tb.torch_dtype(np.complex64) is torch.complex64
    assert tb.torch_dtype("chalf") is torch.complex32


@pytest.mark.parametrize("spelling", ["float", "int"])
def test_ambiguous_names_are_refused(spelling: str) -> None:
    with pytest.raises(tb.UnsupportedError, match="ambiguous"):
        tb.torch_dtype(spelling)


@pytest.mark.parametrize("spelling", ["nonsense", np.longdouble, "U3", object, [1, 2], "datetime64[ns]"])
def test_unknown_spellings_raise_type_errors(spelling: object) -> None:
    with pytest.raises(TypeError) as info:
        tb.torch_dtype(spelling)
    assert isinstance(info.value, tb.ConversionError)


@pytest.mark.parametrize("dt", [torch.qint8, torch.quint8, torch.uint4] if hasattr(torch, "uint4") else [torch.qint8])
def test_torch_only_dtypes_have_no_numpy_dtype(dt: torch.dtype) -> None:
    with pytest.raises(tb.UnsupportedError, match="no NumPy counterpart"):
        tb.numpy_dtype(dt)
