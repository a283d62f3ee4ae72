"""Zero-copy routes for leaves from other libraries: the time must not grow with the size.

For each route that claims to share memory, this converts the same kind of object at 1 KiB
and at 1 GiB (``--quick``: 64 MiB), interleaved, and prints the ratio of the median times.
A route that secretly copied would take ~10^5 times longer at the large size; the target is
at most 2x. Every large conversion is also checked to share memory with its source (a write
through the result is seen in the source), so a fast wrong answer cannot pass.

Run: ``python benchmarks/bench_interop.py`` (about a minute; needs ~3 GiB of free memory).
Routes whose library is not installed are listed as skipped.
"""

from __future__ import annotations

import argparse
import array
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import tensorbridge as tb


class _Interface:
    def __init__(self, a: np.ndarray[Any, Any]) -> None:
        self.keep = a
        self.__array_interface__ = a.__array_interface__


class _DLPack:
    def __init__(self, a: np.ndarray[Any, Any]) -> None:
        self.keep = a

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.keep.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> Any:
        return self.keep.__dlpack_device__()


Case = tuple[str, Callable[[int], Any], Callable[[Any], Any], Callable[[Any, Any], bool]]


def _shares_tensor(src: Any, out: torch.Tensor) -> bool:
    """Write through ``out`` and look for the write in ``src`` (as bytes)."""
    flat = out.reshape(-1)[:1].view(torch.uint8)
    old = int(flat[0])
    flat[0] = (old + 1) % 256
    seen = bytes(memoryview(src).cast("B")[:1])[0] == (old + 1) % 256 if not hasattr(src, "keep") else None
    if seen is None:
        seen = src.keep.reshape(-1)[:1].view(np.uint8)[0] == (old + 1) % 256
    flat[0] = old
    return bool(seen)


def cases() -> list[Case]:
    """Every zero-copy route: (name, make(nbytes) -> source, convert(source), shares(source, result))."""
    out: list[Case] = [
        ("bytearray -> tensor (buffer protocol)", lambda n: bytearray(n), tb.to_tensor, _shares_tensor),
        (
            "memoryview float64 -> tensor",
            lambda n: memoryview(bytearray(n)).cast("d"),
            tb.to_tensor,
            lambda s, t: _shares_tensor(s, t),
        ),
        ("array.array('d') -> tensor", lambda n: array.array("d", bytes(n)), tb.to_tensor, _shares_tensor),
        (
            "__array_interface__ -> tensor",
            lambda n: _Interface(np.zeros(n // 4, np.float32)),
            tb.to_tensor,
            _shares_tensor,
        ),
        (
            "host __dlpack__ producer -> tensor",
            lambda n: _DLPack(np.zeros(n // 4, np.float32)),
            tb.to_tensor,
            _shares_tensor,
        ),
    ]
    try:
        import jax.numpy as jnp
    except ImportError:
        print("skipped: JAX routes (jax is not installed)")
    else:
        out.append(
            (
                "JAX array -> tensor (copy=False)",
                lambda n: jnp.zeros(n // 4, jnp.float32),
                lambda x: tb.to_tensor(x, copy=False),
                lambda s, t: bool(np.shares_memory(np.from_dlpack(s), t.numpy())),
            )
        )
        out.append(
            (
                "JAX array -> NumPy (read-only view)",
                lambda n: jnp.zeros(n // 4, jnp.float32),
                tb.to_numpy,
                lambda s, a: bool(np.shares_memory(np.from_dlpack(s), a)),
            )
        )
    try:
        import scipy.sparse as sp
    except ImportError:
        print("skipped: SciPy routes (scipy is not installed)")
    else:

        def csr(n: int) -> Any:
            nnz = n // 12  # 8 bytes of value + 4 of column index per entry; one row, sorted unique columns
            return sp.csr_array(
                (np.ones(nnz), np.arange(nnz, dtype=np.int32), np.array([0, nnz], np.int32)), shape=(1, max(nnz, 1))
            )

        out.append(
            (
                "SciPy CSR -> sparse tensor",
                csr,
                tb.to_tensor,
                lambda s, t: bool(np.shares_memory(s.data, t.values().numpy())),
            )
        )
    try:
        import pandas as pd
    except ImportError:
        print("skipped: pandas routes (pandas is not installed)")
    else:
        out.append(
            (
                "pandas float64 Series -> NumPy",
                lambda n: pd.Series(np.zeros(n // 8)),
                tb.to_numpy,
                lambda s, a: bool(np.shares_memory(s.to_numpy(copy=False), a)),
            )
        )
    return out


def median_time(fn: Callable[[], Any], reps: int) -> float:
    """Median seconds per call."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 MiB instead of 1 GiB")
    args = parser.parse_args()
    small, large = 1 << 10, (64 << 20) if args.quick else (1 << 30)
    print(f"tensorbridge {tb.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    print(f"| route | {small >> 10} KiB | {large >> 20} MiB | ratio | target | result |")
    print("|---|---|---|---|---|---|")
    failed = 0
    for name, make, convert, shares in cases():
        try:
            src_small, src_large = make(small), make(large)
            result = convert(src_large)
            if not shares(src_large, result):
                raise AssertionError("the large result does not share memory with its source")
            del result
            rounds = []
            for _ in range(3):  # alternate the sizes, three times
                rounds.append(
                    (
                        median_time(lambda f=convert, x=src_small: f(x), 200),
                        median_time(lambda f=convert, x=src_large: f(x), 200),
                    )
                )
            t_small = statistics.median(r[0] for r in rounds)
            t_large = statistics.median(r[1] for r in rounds)
            ratio = t_large / t_small
            verdict = "PASS" if ratio <= 2.0 else "**MISS**"
            failed += ratio > 2.0
            print(f"| {name} | {t_small * 1e6:.1f} us | {t_large * 1e6:.1f} us | {ratio:.2f}x | <= 2x | {verdict} |")
        except Exception as err:  # a broken route is reported, the others still run
            failed += 1
            print(f"| {name} | - | - | - | <= 2x | **ERROR**: {type(err).__name__}: {err} |")
        finally:
            src_small = src_large = None
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
