"""Shared test helpers: random bit patterns per dtype row and bit-exact comparison."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import torch

import tensorbridge as tb
from tensorbridge.dtypes import DtypeRow

EXACT_ROWS = [row for row in tb.ROWS if row.exact]
ALL_ROWS = list(tb.ROWS)


def random_bits(row: DtypeRow, shape: tuple[int, ...], seed: int = 0) -> np.ndarray[Any, Any]:
    """Every bit pattern is fair game (NaN payloads, subnormals, -0.0), except for bool."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape, dtype=np.int64))
    if row.numpy.kind == "b":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    raw = rng.integers(0, 256, size=n * row.numpy.itemsize, dtype=np.uint8)
    return raw.view(row.numpy).reshape(shape)


def bits(a: np.ndarray[Any, Any]) -> bytes:
    """The values' bytes in logical C order and native byte order."""
    native = a.astype(a.dtype.newbyteorder("="), copy=False) if not a.dtype.isnative else a
    return np.ascontiguousarray(native).tobytes()


def quiet_tensor(fn: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Build a tensor whose dtype torch warns about (complex32 is 'experimental')."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out: torch.Tensor = fn(*args, **kwargs)
        return out


def run_threads(work: Any, count: int, timeout: float) -> None:
    """Run ``work(i)`` for i in range(count) on as many threads; re-raise the first failure here."""
    import threading

    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            work(i)
        except BaseException as err:  # reported below, in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout)
    assert not any(th.is_alive() for th in threads), "a converting thread hangs"
    if errors:
        raise errors[0]


#: Lines for a subprocess script (after ``import threading, time``): a thread samples anonymous
#: resident memory (MiB) into ``peak[0]`` from ``start_anon``, until ``done.set()``.
ANON_SAMPLER = """
def anon_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("RssAnon:"))

start_anon = anon_mb()
peak = [start_anon]
done = threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], anon_mb())
        time.sleep(0.001)

sampler = threading.Thread(target=sample)
sampler.start()
"""


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Run the ``tensorbridge`` command in-process: (exit status, stdout, stderr)."""
    from tensorbridge.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def one_line_error(code: int, err: str) -> None:
    """Exit status 2 and one ``tensorbridge: error:`` line: no traceback, no raw OS error."""
    assert code == 2 and err.count("\n") == 1 and err.startswith("tensorbridge: error: "), err
    assert "Traceback" not in err and "Errno" not in err, err
