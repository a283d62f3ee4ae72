"""Leaves from other libraries that NumPy can view: buffers, array interfaces, DLPack, JAX.

Zero-copy is proved by writing through one side and reading the other; each DLPack defect
found with torch 2.13 has a test that fails if tensorbridge ever took the raw route.
"""

from __future__ import annotations

import array
import gc
import os
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
import torch

import tensorbridge as tb


def _run(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter: a defect that aborts the process fails only this test."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False, timeout=120
    )


# --- the buffer protocol ----------------------------------------------------------------------


def test_a_writable_buffer_is_shared_both_ways() -> None:
    buf = bytearray(b"\x01\x02\x03")
    t = tb.to_tensor({"raw": buf})["raw"]
    assert t.dtype is torch.uint8 and t.tolist() == [1, 2, 3]
    t[0] = 9
    assert buf[0] == 9, "the tensor is a view of the bytearray"
    a = tb.to_numpy(buf)
    a[1] = 7
    assert buf[1] == 7 and a.flags.writeable
    plan = tb.explain({"raw": buf})
    assert plan.shares_memory and "bytearray through buffer protocol: a view of its memory" in str(plan)


def test_read_only_bytes_are_copied_unless_copy_false() -> None:
    raw = b"\x05\x06"
    t = tb.to_tensor(raw)
    t[0] = 0
    assert raw == b"\x05\x06", "writes to the tensor never reach immutable bytes"
    assert not tb.explain(raw).shares_memory
    shared = tb.to_tensor(raw, copy=False)
    assert shared.tolist() == [5, 6] and tb.explain(raw, copy=False).shares_memory
    view = tb.to_numpy(raw)
    assert not view.flags.writeable and view.tolist() == [5, 6]


def test_memoryview_keeps_format_shape_and_strides() -> None:
    base = array.array("d", range(6))
    mv = memoryview(base).cast("B").cast("d", (2, 3))
    t = tb.to_tensor(mv)
    assert t.dtype is torch.float64 and t.shape == (2, 3) and t.tolist() == [[0, 1, 2], [3, 4, 5]]
    t[1, 2] = -1.0
    assert base[5] == -1.0
    strided = memoryview(array.array("i", range(8)))[::2]
    assert tb.to_tensor(strided).tolist() == [0, 2, 4, 6]
    assert tb.to_tensor(array.array("h", [-2, 3])).dtype is torch.int16
    assert tb.to_tensor(bytearray()).shape == (0,)


def test_the_tensor_keeps_the_buffer_alive() -> None:
    buf = bytearray(range(16))
    t = tb.to_tensor(buf)
    del buf
    gc.collect()
    junk = [bytearray(16) for _ in range(100)]  # would reuse freed memory
    assert t.tolist() == list(range(16)) and len(junk) == 100


def test_a_buffer_with_a_format_torch_lacks_gets_the_planners_error() -> None:
    packed = memoryview(np.zeros(2, dtype=[("a", "i1"), ("b", "f4")]))
    with pytest.raises(tb.UnsupportedError, match=r"at data\['rec'\]: dtype .* structured"):
        tb.to_tensor({"rec": packed})


# --- __array_interface__ and __array__ --------------------------------------------------------


class _Interface:
    """A producer exposing only ``__array_interface__`` (as many C extensions do)."""

    def __init__(self, a: np.ndarray[Any, Any]) -> None:
        self._a = a
        self.__array_interface__ = a.__array_interface__


class _ArrayOnly:
    """A producer exposing only ``__array__`` (HDF5 / Zarr datasets, PIL images, xarray)."""

    def __init__(self, a: np.ndarray[Any, Any]) -> None:
        self._a = a

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray[Any, Any]:
        return self._a.copy()  # like a dataset read from disk


def test_array_interface_is_zero_copy() -> None:
    base = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = tb.to_tensor(_Interface(base))
    t[0, 0] = 42
    assert base[0, 0] == 42
    assert "__array_interface__: a view of its memory" in str(tb.explain(_Interface(base)))


def test_array_producers_go_through_one_documented_route() -> None:
    base = np.arange(4, dtype=np.int16)
    out = tb.to_tensor({"ds": _ArrayOnly(base)})
    assert out["ds"].tolist() == [0, 1, 2, 3] and out["ds"].dtype is torch.int16
    assert "through __array__: as the producer hands it over" in str(tb.explain({"ds": _ArrayOnly(base)}))
    assert tb.to_numpy(_ArrayOnly(base)).tolist() == [0, 1, 2, 3]


# --- DLPack: the defects of the raw route -----------------------------------------------------


class _DLPackOnly:
    """A host producer exposing only DLPack, over a NumPy array."""

    def __init__(self, a: np.ndarray[Any, Any]) -> None:
        self._a = a

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> Any:
        return self._a.__dlpack_device__()


def test_negative_strides_through_dlpack_do_not_abort_the_process() -> None:
    # torch.from_dlpack of this producer aborts the interpreter (torch 2.13); tensorbridge
    # lets NumPy import it, then copies. Run where an abort cannot take pytest down.
    proc = _run(
        """
        import numpy as np, tensorbridge as tb
        from tests.test_interop import _DLPackOnly
        t = tb.to_tensor(_DLPackOnly(np.arange(6.0)[::-1]))
        print(t.tolist())
        """
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]"


def test_read_only_memory_through_dlpack_is_not_aliased() -> None:
    ro = np.arange(3.0)
    ro.flags.writeable = False
    if np.lib.NumpyVersion(np.__version__) < "2.0.0":
        # NumPy 1.x refuses to export read-only memory through DLPack at all.
        with pytest.raises(tb.UnsupportedError, match=r"could not be viewed as an array .*readonly"):
            tb.to_tensor(_DLPackOnly(ro))
        return
    t = tb.to_tensor(_DLPackOnly(ro))
    t[0] = 100.0
    assert ro[0] == 0.0, "torch.from_dlpack would have aliased the read-only memory"


def test_the_negative_bit_survives_to_numpy() -> None:
    z = torch.tensor([1 + 2j, 3 - 4j])
    lazy = z.conj().imag
    assert tb.to_numpy(lazy).tolist() == [-2.0, 4.0]
    assert tb.to_numpy({"x": lazy}, dtype=np.float32)["x"].tolist() == [-2.0, 4.0]


# --- producers on a GPU -----------------------------------------------------------------------


class _GpuProducer:
    """Says it lives on CUDA device 0 (kDLCUDA = 2), with the given strides."""

    def __init__(self, strides: tuple[int, ...]) -> None:
        self.strides = strides

    def __dlpack__(self, **kwargs: Any) -> Any:
        raise BufferError("no real device here")

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, 0)


def test_gpu_producers_with_negative_strides_are_refused_before_torch_sees_them() -> None:
    with pytest.raises(tb.UnsupportedError, match=r"at data\['x'\]: .*negative strides \(-8,\).*aborts the process"):
        tb.to_tensor({"x": _GpuProducer((-8,))})
    with pytest.raises(tb.DeviceError, match=r"torch could not import .*_GpuProducer"):
        tb.to_tensor(_GpuProducer((8,)))


# --- JAX ------------------------------------------------------------------------------------


def test_jax_arrays_share_only_when_asked() -> None:
    jnp = pytest.importorskip("jax.numpy")
    x = jnp.arange(6, dtype=jnp.float32).reshape(2, 3)
    t = tb.to_tensor(x)
    t[0, 0] = 100.0
    assert float(x[0, 0]) == 0.0, "JAX arrays are immutable: the default tensor is a copy"
    assert "read-only" in str(tb.explain(x)) and not tb.explain(x).shares_memory
    shared = tb.to_tensor(x, copy=False)
    shared[0, 1] = 7.0
    assert float(x[0, 1]) == 7.0, "copy=False shares JAX's memory (writes are then undefined)"
    a = tb.to_numpy(x)
    assert not a.flags.writeable and np.shares_memory(a, np.from_dlpack(x))


def test_jax_bfloat16_and_64_bit_values_are_exact() -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    bf = jnp.array([1.5, -2.25, 3e38], dtype=jnp.bfloat16)
    t = tb.to_tensor(bf)
    assert t.dtype is torch.bfloat16 and t.float().tolist() == np.asarray(bf).astype(np.float32).tolist()
    enable_x64 = getattr(jax, "enable_x64", None)  # jax >= 0.8; older: jax.experimental
    if enable_x64 is None:
        from jax.experimental import enable_x64
    with enable_x64(True):
        big = jnp.array([2**40 + 3, -(2**62)], dtype=jnp.int64)
        assert tb.to_tensor(big).tolist() == [2**40 + 3, -(2**62)]
        assert tb.to_numpy({"v": big})["v"].dtype == np.int64


def test_importing_tensorbridge_imports_no_optional_library() -> None:
    proc = _run(
        """
        import sys, tensorbridge as tb, numpy as np
        tb.to_tensor({"b": bytearray(b"x"), "a": np.ones(2)})
        tb.explain(memoryview(b"ab"))
        bad = [m for m in ("jax", "pandas", "scipy", "cupy", "torch.distributed.tensor") if m in sys.modules]
        print(bad)
        """
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("name", [n for n in os.environ.get("TENSORBRIDGE_REQUIRE", "").split(",") if n])
def test_libraries_ci_was_asked_to_test_are_installed(name: str) -> None:
    """CI sets TENSORBRIDGE_REQUIRE: a missing library must fail, not skip its tests silently."""
    __import__(name)


# --- on a GPU (never run yet: no GPU has been lent to this project) ---------------------------


class _CudaProducer:
    """A non-torch producer of CUDA memory (as CuPy or JAX on GPU would be)."""

    def __init__(self, t: torch.Tensor) -> None:
        self._t = t

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self._t.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> Any:
        return self._t.__dlpack_device__()


@pytest.mark.cuda
def test_a_gpu_producer_lands_on_its_device_without_a_copy() -> None:
    src = torch.arange(6.0, device="cuda")
    t = tb.to_tensor({"x": _CudaProducer(src)})["x"]
    assert t.device == src.device and t.data_ptr() == src.data_ptr(), "the same device memory"
    assert "through DLPack: the same device memory, no copy" in str(tb.explain(_CudaProducer(src)))
    back = tb.to_numpy({"x": _CudaProducer(src)})["x"]
    assert type(back) is np.ndarray and back.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.cuda
def test_cupy_arrays_with_negative_strides_are_refused_not_aborted() -> None:
    cupy = pytest.importorskip("cupy")
    x = cupy.arange(6, dtype=cupy.float32)
    assert tb.to_tensor(x).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.raises(tb.UnsupportedError, match="negative strides"):
        tb.to_tensor(x[::-1])


class _Broken:
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray[Any, Any]:
        raise KeyError("the dataset's file was closed")


class _Huge:
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray[Any, Any]:
        raise MemoryError("Unable to allocate 8.00 EiB")


def test_a_producer_that_fails_gets_a_named_error_not_a_raw_one() -> None:
    with pytest.raises(tb.UnsupportedError, match=r"adoption at data\['ds'\]: .*_Broken could not be handed over"):
        tb.to_tensor({"ds": _Broken()})
    with pytest.raises(tb.OutOfMemoryError, match=r"at data\['big'\]: .*did not fit in memory"):
        tb.to_numpy({"big": _Huge()})
    # explain() never calls the producer, so it cannot know that it fails: it shows the route.
    plan = tb.explain({"ds": _Broken()})
    assert plan.plans[0].error is None and "through __array__" in str(plan)
