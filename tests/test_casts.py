"""Checked casts round once, to the nearest value, and refuse only what rounding cannot reach (issue 9).

The reference is independent of NumPy, torch and ml_dtypes casts: the exact source value is
a Python int or float (every source value is one exactly), and

- a target of 16 bits or fewer is the sorted list of all its finite values, found by viewing
  every bit pattern; the nearest one wins, a tie goes to the even bit pattern (the even last
  mantissa bit), except in float8_e8m0fnu, which has no mantissa bits and whose ties go up
  (as ml_dtypes and torch round them). Past the largest finite value the grid continues one
  step (the value an unbounded exponent would have next); what rounds there is refused;
- float32 and float64 are rounded in integer arithmetic: scale the exact value to an integer
  significand of p bits, round half to even, check the result against the largest finite value;
- integers must be whole and in range, exactly; bool means non-zero.

Every (source, target) pair of the dtype table is checked, through the torch path
(``to_tensor(array, dtype=torch dtype)`` and ``to_numpy(tensor, dtype=...)``, both run
``cast_tensor``) and the NumPy path (``to_numpy(array, dtype=numpy dtype)``, which runs
``cast_array``), on values next to every midpoint and value of the target (all of them for
8-bit targets, a sample for 16-bit ones), every value of 8- and 16-bit sources, subnormals,
zeros of both signs, the largest finite values and just past them, and NaN and infinity.
"""

from __future__ import annotations

import bisect
import functools
import math
import warnings
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensorbridge as tb
from tensorbridge.dtypes import DtypeRow
from tensorbridge.ops.cast import cast_array, cast_tensor
from tensorbridge.ops.rounding import rounding_for

from .helpers import quiet_tensor

ROWS = list(tb.ROWS)
EXACT = [r for r in ROWS if r.exact]
REFUSED = None  # the reference's answer for a value the cast must refuse

Value = int | float
Expected = Any  # a Python number, a (real, imag) pair, a bool, or REFUSED


def _part(row: DtypeRow) -> np.dtype[Any]:
    """The dtype of one component: float16 for complex32 (its NumPy stand-in is complex64)."""
    if row.torch == torch.complex32:
        return np.dtype(np.float16)
    dt = row.numpy
    return np.dtype(f"f{dt.itemsize // 2}") if dt.kind == "c" else dt


class Grid:
    """Every finite value of a float dtype of 16 bits or fewer, from its bit patterns."""

    def __init__(self, dt: np.dtype[Any]) -> None:
        n = dt.itemsize * 8
        codes = np.arange(2**n, dtype=np.uint32).astype(f"u{dt.itemsize}")
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            every = codes.view(dt).astype(np.float64)
        pairs = sorted((float(v), int(c)) for v, c in zip(every, codes, strict=True) if math.isfinite(v))
        self.signed_zero = any(v == 0 and math.copysign(1, v) < 0 for v, _ in pairs)
        self.has_nan = bool(np.isnan(every).any())
        self.has_inf = bool(np.isinf(every).any())
        self.values: list[float] = []
        self.codes: list[int] = []
        for v, c in pairs:
            if self.values and self.values[-1] == v:
                continue  # -0.0 and 0.0: one entry, the sign is decided by the source
            self.values.append(v)
            self.codes.append(c)
        finder: Any = ml_dtypes.finfo
        self.no_mantissa = int(finder(dt).nmant) == 0
        top, prev = self.values[-1], self.values[-2]
        # The value an unbounded exponent would have next: same spacing, or the next power of two.
        self.beyond = 2 * top if self.no_mantissa else top + (top - prev)
        self.top_odd = self.codes[-1] % 2 == 1

    def nearest(self, x: Value) -> float | None:
        if isinstance(x, float) and math.isnan(x):
            return math.nan if self.has_nan else REFUSED
        if isinstance(x, float) and math.isinf(x):
            return x if self.has_inf else REFUSED
        vals = self.values
        if vals[0] > 0 and x <= 0:  # no zero, no sign (float8_e8m0fnu)
            return REFUSED
        if abs(x) > vals[-1]:
            mid = (vals[-1] + self.beyond) / 2  # exact: both lie on a grid with bits to spare
            if abs(x) > mid or (abs(x) == mid and (self.no_mantissa or self.top_odd)):
                return REFUSED
            return math.copysign(vals[-1], x)
        if x < vals[0]:  # below the smallest positive value of a type without zero
            return vals[0]
        i = bisect.bisect_left(vals, x)
        if vals[i] == x:
            j = i
        else:
            mid = (vals[i - 1] + vals[i]) / 2
            if x != mid:
                j = i - 1 if x < mid else i
            elif self.no_mantissa:
                j = i  # ties go up
            else:
                j = i - 1 if self.codes[i - 1] % 2 == 0 else i
        r = vals[j]
        if r == 0:
            negative = x < 0 or (isinstance(x, float) and math.copysign(1, x) < 0)
            return -0.0 if negative and self.signed_zero else 0.0
        return r


def round_binary(x: Value, precision: int, emin: int, emax: int) -> float | None:
    """Round an exact int or float to a binary format, ties to even, by integer arithmetic."""
    if isinstance(x, float) and (x == 0 or not math.isfinite(x)):
        return x  # zeros keep their sign; NaN and infinity are themselves
    if x == 0:
        return 0.0
    num, den = x.as_integer_ratio() if isinstance(x, float) else (x, 1)
    mag, e2 = abs(num), -(den.bit_length() - 1)  # |x| = mag * 2**e2 (den is a power of two)
    q = max(mag.bit_length() - 1 + e2, emin) - (precision - 1)  # the last significand bit is worth 2**q
    shift = q - e2
    if shift <= 0:
        n = mag << -shift
    else:
        n, rest = mag >> shift, mag & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        n += rest > half or (rest == half and n % 2 == 1)
    if n == 1 << precision:  # rounding carried into a new binade
        n, q = n >> 1, q + 1
    if q > emax - (precision - 1):
        return REFUSED  # past the largest finite value
    return math.copysign(math.ldexp(n, q), x)  # exact: n has at most `precision` bits


@functools.cache
def _grid(dt: np.dtype[Any]) -> Grid:
    return Grid(dt)


def _real(x: Value, dt: np.dtype[Any]) -> Value | bool | None:
    """The expected value of a real source value x cast to the real dtype dt."""
    if dt.kind == "b":
        return bool(x != 0)  # NaN is non-zero
    if dt.kind in "iu":
        if isinstance(x, float) and (not math.isfinite(x) or x != math.floor(x)):
            return REFUSED
        info = np.iinfo(dt)
        return int(x) if int(info.min) <= x <= int(info.max) else REFUSED
    if dt == np.float32:
        return round_binary(x, 24, -126, 127)
    if dt == np.float64:
        return round_binary(x, 53, -1022, 1023)
    return _grid(dt).nearest(x)


def expect(x: Value | tuple[Value, Value], dst: DtypeRow) -> Expected:
    """The reference: what casting the exact source value x (a pair for complex) to dst gives."""
    re, im = x if isinstance(x, tuple) else (x, 0.0)
    kind = "c" if dst.torch.is_complex else dst.numpy.kind
    if kind == "b":
        return bool(re != 0 or im != 0)
    if kind != "c":
        return _real(re, dst.numpy) if im == 0 else REFUSED
    a, b = _real(re, _part(dst)), _real(im, _part(dst))
    return REFUSED if a is REFUSED or b is REFUSED else (a, b)


# ---------------------------------------------------------------- the values to try


def _anchors(dt: np.dtype[Any]) -> list[Value]:
    """Exact values where rounding to dt is delicate: its values, midpoints, bounds."""
    if dt.kind == "b":
        return [0, 1, 0.5, -1]
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo, hi = int(info.min), int(info.max)
        return [lo - 1, lo, hi, hi + 1, 0, 1, -1, 0.5, -0.5, 1.5, 2.5, lo - 0.5, hi + 0.5]
    if dt.itemsize <= 2:
        g = _grid(dt)
        v = g.values
        n = len(v)
        if n < 600:
            idx = list(range(n - 1))
        else:  # a 16-bit target: both ends, around 0 and 1, and an even sample between
            one = bisect.bisect_left(v, 1.0)
            spots = [*range(24), *range(n - 25, n - 1), *range(n // 2 - 24, n // 2 + 24)]
            spots += [*range(one - 12, one + 12), *np.linspace(0, n - 2, 400).astype(int).tolist()]
            idx = sorted(set(spots))
        out: list[Value] = []
        for i in idx:
            out += [v[i], (v[i] + v[i + 1]) / 2]
        return [*out, v[-1], (v[-1] + g.beyond) / 2, g.beyond]
    info = np.finfo(dt)
    rng = np.random.default_rng(9)
    ibits = np.uint32 if dt == np.float32 else np.uint64
    rand = rng.integers(0, np.iinfo(ibits).max, size=300, dtype=ibits).view(dt)
    picks = [float(x) for x in rand if np.isfinite(x)]
    picks += [float(info.max), float(info.tiny), float(info.smallest_subnormal), 1.0, 3.0, 2.0**24, 2.0**53]
    out = []
    with np.errstate(over="ignore"):  # the step up from the largest value is inf
        for x in picks:
            up = float(np.nextafter(dt.type(x), dt.type(np.inf)))
            out += [x, (x + up) / 2 if math.isfinite(up) else x]
    top = float(info.max)
    half_ulp = 2.0 ** (math.frexp(top)[1] - 1 - int(info.nmant)) / 2
    if dt == np.float32:
        out += [top + half_ulp]  # the tie past float32's largest: refused
    return out


def _int_values(dt: np.dtype[Any], anchors: list[Value]) -> list[int]:
    info = np.iinfo(dt)
    lo, hi = int(info.min), int(info.max)
    out = [lo, hi, 0, 1, -1]
    for a in anchors:
        if isinstance(a, float) and not math.isfinite(a):
            continue
        f = math.floor(a)
        out += [f + d for d in (-2, -1, 0, 1, 2)]
    # Bit patterns that land on or next to the midpoints of every precision of interest.
    for k in range(1, dt.itemsize * 8):
        base = [(1 << k) - 1, 1 << k, (1 << k) + 1]
        for p in (1, 2, 3, 4, 8, 9, 11, 12, 24, 25, 53, 54):
            for m in (1, 3):
                for e in (-1, 0, 1):
                    base += [(1 << k) + (m << max(k - p, 0)) + e, (1 << k) - (m << max(k - p - 1, 0)) + e]
        out += base + [-b for b in base]
    return sorted({v for v in out if lo <= v <= hi})


def _float_values(dt: np.dtype[Any], anchors: list[Value]) -> np.ndarray[Any, Any]:
    finite = [float(a) for a in anchors if abs(a) < 2**1000]
    base = np.array(finite + [-a for a in finite], np.float64)
    with np.errstate(all="ignore"):
        near = base.astype(dt)
        steps = [near]
        for toward in (np.inf, -np.inf):
            cur = near
            for _ in range(2):
                cur = np.nextafter(cur, dt.type(toward))
                steps.append(cur)
        if dt == np.float64:
            for k in (30, 40, 50):  # between float32 neighbours: where rounding through float32 goes wrong
                steps += [base * (1 + 2.0**-k), base * (1 - 2.0**-k)]
    specials = np.array([0.0, -0.0, math.nan, math.inf, -math.inf], dt)
    return np.concatenate([*steps, specials]).astype(dt)


def _every_value(dt: np.dtype[Any]) -> np.ndarray[Any, Any]:
    codes = np.arange(2 ** (dt.itemsize * 8), dtype=np.uint32).astype(f"u{dt.itemsize}")
    return codes.view(dt)


def _real_pool(src: np.dtype[Any], dst_part: np.dtype[Any]) -> np.ndarray[Any, Any]:
    """Source values (an array of src) for a cast to a target whose components are dst_part."""
    if src.kind == "b":
        return np.array([False, True])
    if src.itemsize == 1 or (src.itemsize == 2 and dst_part.kind != "b" and dst_part.itemsize <= 2):
        return _every_value(src)
    if src.itemsize == 2:
        # A wider target holds a 16-bit source (nearly) exactly: both ends of each sign, and a sample.
        every = _every_value(src)
        ends = np.r_[0:512, 2**15 - 512 : 2**15 + 512, 2**16 - 512 : 2**16]
        return np.concatenate([every[ends], every[512 : 2**16 - 512 : 13]])
    anchors = _anchors(dst_part)
    if src.kind in "iu":
        return np.array(_int_values(src, anchors), dtype=src)
    return _float_values(src, anchors)


def _exact(a: np.ndarray[Any, Any]) -> list[Value]:
    """The exact values an array holds, as Python ints and floats."""
    if a.dtype.kind in "iub":
        return [int(v) for v in a.tolist()]
    with np.errstate(all="ignore"):
        return [float(v) for v in a.astype(np.float64)]  # float64 holds every value of these exactly


class Case:
    """One (source, target) pair: source values, exact values, and what each must become."""

    def __init__(self, src: DtypeRow, dst: DtypeRow) -> None:
        spart = _part(src)
        real = _real_pool(spart, _part(dst))
        if src.torch.is_complex:
            # Both parts exercised: real parts from the pool, imaginary ones the pool reversed
            # for complex targets, zero (plus a few non-zero, refused) for real ones.
            if dst.torch.is_complex:
                imag = real[::-1]
            else:
                imag = np.zeros_like(real)
                imag[:3] = np.array([1.0, -0.5, math.nan], real.dtype)
            xs: list[Any] = list(zip(_exact(real), _exact(imag), strict=True))
            full = np.empty(len(real), np.complex128)  # real + 1j * imag would lose the sign of -0.0
            with np.errstate(all="ignore"):
                full.real, full.imag = real.astype(np.float64), imag.astype(np.float64)
                self.array = full.astype(src.numpy)  # exact: complex32's parts are float16 values
        else:
            xs = _exact(real)
            self.array = real
        self.values = xs
        self.expected = [expect(x, dst) for x in xs]
        self.accepted = np.array([e is not REFUSED for e in self.expected], bool)

    def refused_samples(self) -> list[int]:
        """Indices of refused values worth trying one at a time: the nearest to being accepted."""
        refused = [i for i, ok in enumerate(self.accepted) if not ok]
        if not refused:
            return []

        def mag(i: int) -> float:
            x = self.values[i]
            re, im = x if isinstance(x, tuple) else (x, 0)
            return float(max(abs(re), abs(im))) if not (math.isnan(re) or math.isnan(im)) else math.inf

        accepted_max = max((mag(i) for i in range(len(self.values)) if self.accepted[i]), default=0.0)
        by_mag = sorted(refused, key=mag)
        past = [i for i in by_mag if math.isfinite(mag(i)) and mag(i) > accepted_max]
        special = [i for i in refused if not math.isfinite(mag(i))]
        negative = [i for i in by_mag if not isinstance(self.values[i], tuple) and self.values[i] < 0]
        picked = by_mag[:3] + past[:3] + special[:3] + negative[:2]
        return sorted(set(picked))


@functools.cache
def case(src: DtypeRow, dst: DtypeRow) -> Case:
    return Case(src, dst)


def _tensor(a: np.ndarray[Any, Any], row: DtypeRow) -> torch.Tensor:
    if row.torch == torch.complex32:
        return quiet_tensor(torch.from_numpy(a).to, torch.complex32)
    if row.carrier is not None:
        return torch.from_numpy(a.view(row.carrier)).view(row.torch)
    return torch.from_numpy(a)


def _got(out: Any, dst: DtypeRow) -> list[Any]:
    """The values a cast produced, as Python numbers (pairs for complex)."""
    if isinstance(out, torch.Tensor):
        if dst.torch == torch.complex32:
            out = quiet_tensor(out.to, torch.complex64)
        out = tb.to_numpy(out)
    if out.dtype.kind == "c":
        return list(zip(_exact(out.real.copy()), _exact(out.imag.copy()), strict=True))
    return [bool(v) for v in out.tolist()] if out.dtype.kind == "b" else _exact(out)


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, tuple):
        return all(_same(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(want, float):
        if math.isnan(want):
            return isinstance(got, float) and math.isnan(got)
        return got == want and math.copysign(1, got) == math.copysign(1, want)
    return bool(got == want) and type(got) is type(want)


def _mismatches(c: Case, out: Any, dst: DtypeRow) -> list[tuple[Any, Any, Any]]:
    got = _got(out, dst)
    want = [e for e in c.expected if e is not REFUSED]
    values = [x for x, ok in zip(c.values, c.accepted, strict=True) if ok]
    assert len(got) == len(want)
    return [(x, g, w) for x, g, w in zip(values, got, want, strict=True) if not _same(g, w)][:5]


def _pairs(sources: list[DtypeRow], targets: list[DtypeRow]) -> list[Any]:
    return [pytest.param(s, d, id=f"{s.name}-{d.name}") for s in sources for d in targets]


# ---------------------------------------------------------------- every pair, both paths


@pytest.mark.parametrize(("src", "dst"), _pairs(ROWS, ROWS))
def test_torch_path_rounds_once_to_the_nearest_value(src: DtypeRow, dst: DtypeRow) -> None:
    c = case(src, dst)
    accepted = c.array[c.accepted]
    with warnings.catch_warnings():
        if dst.torch == torch.complex32:  # torch says its complex32 is experimental
            warnings.filterwarnings("ignore", "ComplexHalf support is experimental", UserWarning)
        if src.exact:
            out: Any = tb.to_tensor(accepted, dtype=dst.torch)
        else:
            out = cast_tensor(_tensor(accepted, src), dst.torch, "data")
    assert out.dtype is dst.torch
    assert _mismatches(c, out, dst) == [], "(source value, got, nearest)"
    if dst.exact:  # the same cast, asked of to_numpy: torch casts, then NumPy shares
        again = tb.to_numpy(_tensor(accepted, src), dtype=dst.numpy)
        assert _mismatches(c, again, dst) == []
    for i in c.refused_samples():
        one = c.array[i : i + 1]
        with pytest.raises(tb.ValueRangeError) as info:
            if src.exact:
                tb.to_tensor({"w": one}, dtype=dst.torch)
            else:
                cast_tensor(_tensor(one, src), dst.torch, "data['w']")
        assert info.value.path == "data['w']", c.values[i]


@pytest.mark.parametrize(("src", "dst"), _pairs(EXACT, EXACT))
def test_numpy_path_rounds_once_to_the_nearest_value(src: DtypeRow, dst: DtypeRow) -> None:
    c = case(src, dst)
    out = tb.to_numpy(c.array[c.accepted], dtype=dst.numpy)
    assert out.dtype == dst.numpy
    assert _mismatches(c, out, dst) == [], "(source value, got, nearest)"
    for i in c.refused_samples():
        with pytest.raises(tb.ValueRangeError) as info:
            tb.to_numpy({"w": c.array[i : i + 1]}, dtype=dst.numpy)
        assert info.value.path == "data['w']", c.values[i]
        with pytest.raises(tb.ValueRangeError):
            cast_array(c.array[i : i + 1], dst.numpy, "data")


# ---------------------------------------------------------------- the examples


def _both(values: Any, dtype: Any) -> list[Any]:
    """Cast an array to a dtype through both paths; return each path's values as Python numbers."""
    a = np.asarray(values)
    row = tb.dtypes.row_for_torch(tb.torch_dtype(dtype))
    assert row is not None
    via_torch = tb.to_numpy(tb.to_tensor(a, dtype=row.torch))
    via_numpy = tb.to_numpy(a, dtype=row.numpy)
    out = []
    for got in (via_torch, via_numpy):
        assert got.dtype == row.numpy
        out.append(got.astype(np.float64).tolist() if got.dtype.kind not in "iu" else got.tolist())
    return out


def test_float64_rounds_once_to_bfloat16() -> None:
    x = 1 + 2**-8 + 2**-40  # just above the midpoint of 1 and 1.0078125
    assert _both([x, -x], "bfloat16") == [[1.0078125, -1.0078125]] * 2
    assert _both([1 + 2**-8 - 2**-40], "bfloat16") == [[1.0]] * 2


def test_wide_integers_round_once() -> None:
    # float32 (torch's way through) lands on the bfloat16 midpoint 2**24 + 2**16: the tie would go down.
    assert _both(np.array([2**24 + 2**16 + 1], np.int64), "bfloat16") == [[2**24 + 2**17]] * 2
    # Even float64 rounds these: 2**62 + 2**54 + 1 becomes the midpoint 2**62 + 2**54.
    for dt in (np.int64, np.uint64):
        assert _both(np.array([2**62 + 2**54 + 1], dt), "bfloat16") == [[2**62 + 2**55]] * 2
        assert _both(np.array([2**62 + 2**54 - 1], dt), "bfloat16") == [[2**62]] * 2
    assert _both(np.array([2**64 - 1], np.uint64), "float32") == [[2.0**64]] * 2
    assert _both(np.array([2**63 - 1, -(2**63)], np.int64), "float64") == [[2.0**63, -(2.0**63)]] * 2
    # 1.5 * 2**28 - 1 is below the float8_e8m0fnu midpoint of 2**28 and 2**29; float32 rounds it onto it.
    assert _both(np.array([3 * 2**27 - 1], np.int32), "float8_e8m0fnu") == [[2.0**28]] * 2
    # int64 -> float16: every int that fits is exact in float32; the largest rounds down to 65504.
    assert _both(np.array([65519, -65519, 2049], np.int64), "float16") == [[65504.0, -65504.0, 2048.0]] * 2


def test_rounding_to_the_largest_finite_value_is_rounding() -> None:
    assert _both([65519.0, 65519.99999999999, -65519.0], "float16") == [[65504.0, 65504.0, -65504.0]] * 2
    assert _both([449.0, 464.0], "float8_e4m3fn") == [[448.0, 448.0]] * 2  # 464 is a tie to the even 448
    flt_max = float(np.finfo(np.float32).max)
    assert _both([flt_max * (1 + 2**-30)], "float32") == [[flt_max]] * 2
    assert _both([239.0, 247.0], "float8_e4m3fnuz") == [[240.0, 240.0]] * 2
    assert _both([2.0**127 * 1.4], "float8_e8m0fnu") == [[2.0**127]] * 2


@pytest.mark.parametrize(
    ("value", "dtype", "match"),
    [
        (65520.0, "float16", r"value 65520\.0 does not fit float16 \(finite range -65504\.0 to 65504\.0; "),
        (-65520.0, "float16", r"value -65520\.0 does not fit float16"),
        (464.00000000000006, "float8_e4m3fn", r"value 464\.00000000000006 does not fit float8_e4m3fn"),
        (248.0, "float8_e4m3fnuz", "does not fit float8_e4m3fnuz"),
        (61440.0, "float8_e5m2", "does not fit float8_e5m2"),
        (1.5 * 2.0**127, "float8_e8m0fnu", "does not fit float8_e8m0fnu"),
        (1e300, "float32", r"value 1e\+300 does not fit float32"),
        (float(np.finfo(np.float32).max) * (1 + 2**-24), "float32", "magnitudes from"),
        ((2 - 2**-8) * 2.0**127, "bfloat16", "does not fit bfloat16"),  # the tie past its (odd) largest
    ],
)
def test_what_rounds_past_the_largest_value_is_refused(value: float, dtype: str, match: str) -> None:
    a = np.array([value])
    for run in (lambda: tb.to_tensor({"w": a}, dtype=dtype), lambda: tb.to_numpy({"w": a}, dtype=dtype)):
        with pytest.raises(tb.ValueRangeError, match=match) as info:
            run()
        assert info.value.path == "data['w']"


@pytest.mark.parametrize(
    ("values", "dtype", "match"),
    [
        ([300], np.uint8, "value 300 does not fit uint8 (range 0 to 255)"),
        ([1.0, math.nan], np.int64, "NaN cannot be represented in int64"),
        ([math.inf], ml_dtypes.float8_e4m3fn, "infinity cannot be represented in float8_e4m3fn"),
        ([1.5], np.int32, "value 1.5 is not a whole number, and int32 would truncate it"),
        ([255.5], np.uint8, "value 255.5 does not fit uint8 (range 0 to 255)"),
        ([1 + 1j], np.float64, "a non-zero imaginary part would be dropped"),
        ([-1], np.uint16, "value -1 does not fit uint16 (range 0 to 65535)"),
        ([-0.5], np.uint8, "value -0.5 does not fit uint8"),
        ([1e300], np.float32, "value 1e+300 does not fit float32"),
        ([0.0], ml_dtypes.float8_e8m0fnu, "value 0.0 does not fit float8_e8m0fnu, which has no zero and no sign"),
        ([-2.0], ml_dtypes.float8_e8m0fnu, "value -2.0 does not fit float8_e8m0fnu"),
        ([False, True], ml_dtypes.float8_e8m0fnu, "value 0 does not fit float8_e8m0fnu"),
    ],
)
def test_existing_refusals_stay(values: list[Any], dtype: Any, match: str) -> None:
    a = np.array(values)
    for run in (lambda: tb.to_tensor({"w": a}, dtype=dtype), lambda: tb.to_numpy({"w": a}, dtype=dtype)):
        with pytest.raises(tb.ValueRangeError) as info:
            run()
        assert match in str(info.value)
        assert info.value.path == "data['w']"


# ---------------------------------------------------------------- exact messages and bounds


def test_messages_print_exact_integers() -> None:
    a = np.array([2**63], np.uint64)
    want = "value 9223372036854775808 does not fit int64 (range -9223372036854775808 to 9223372036854775807)"
    for run in (lambda: tb.to_tensor(a, dtype=torch.int64), lambda: tb.to_numpy(a, dtype=np.int64)):
        with pytest.raises(tb.ValueRangeError) as info:
            run()
        assert want in str(info.value)


def test_bounds_are_compared_exactly() -> None:
    # float(2**63 - 1) is 2**63: a float comparison would refuse the largest int64 that fits.
    big = np.array([2**63 - 1], np.uint64)
    assert tb.to_tensor(big, dtype=torch.int64).tolist() == [2**63 - 1]
    assert tb.to_numpy(big, dtype=np.int64).tolist() == [2**63 - 1]
    assert tb.to_numpy(np.array([2**64 - 1], np.uint64), dtype=np.uint64).tolist() == [2**64 - 1]
    # float64 2**63 is past int64 by one; 2**63 - 1024 fits.
    with pytest.raises(tb.ValueRangeError, match=r"value 9\.223372036854776e\+18 does not fit int64"):
        tb.to_tensor(np.array([2.0**63]), dtype=torch.int64)
    assert tb.to_tensor(np.array([2.0**63 - 1024]), dtype=torch.int64).tolist() == [2**63 - 1024]
    assert tb.to_numpy(np.array([-(2.0**63)]), dtype=np.int64).tolist() == [-(2**63)]
    # int32's smallest, and the float32 just past it.
    with pytest.raises(tb.ValueRangeError, match=r"value -2147483904\.0 does not fit int32"):
        tb.to_tensor(np.array([-(2.0**31) - 256], np.float32), dtype=torch.int32)
    assert tb.to_tensor(np.array([-(2.0**31)], np.float32), dtype=torch.int32).tolist() == [-(2**31)]


def test_floats_print_with_enough_digits_to_tell_them_from_the_bound() -> None:
    with pytest.raises(tb.ValueRangeError) as info:
        tb.to_tensor(np.array([65520.000000000007]), dtype=torch.float16)
    assert "value 65520.00000000001 does not fit float16" in str(info.value)
    assert "magnitudes from 65520 round to inf" in str(info.value)
    with pytest.raises(tb.ValueRangeError) as info:
        tb.to_tensor(np.array([464.00000000000006]), dtype=torch.float8_e4m3fn)
    assert "magnitudes above 464 round to NaN" in str(info.value)


@pytest.mark.skipif(np.finfo(np.longdouble).nmant <= 52, reason="longdouble is float64 here")
def test_longdouble_rounds_once_and_prints_exactly() -> None:
    one = np.longdouble(1)
    x = one + np.longdouble(2) ** -11 + np.longdouble(2) ** -60  # above the float16 midpoint of 1 and 1 + 2**-10
    assert tb.to_numpy(np.array([x, -x]), dtype=np.float16).tolist() == [1 + 2**-10, -(1 + 2**-10)]
    y = one + np.longdouble(2) ** -8 + np.longdouble(2) ** -60
    assert tb.to_numpy(np.array([y]), dtype=ml_dtypes.bfloat16).astype(np.float64).tolist() == [1.0078125]
    assert tb.to_tensor(np.array([y]), dtype=torch.bfloat16).tolist() == [1.0078125]
    big = np.array([np.finfo(np.longdouble).max])
    with pytest.raises(tb.ValueRangeError, match=r"value 1\.18973149535723176\d*e\+4932 does not fit float64"):
        tb.to_numpy(big, dtype=np.float64)
    dbl_max = np.longdouble(np.finfo(np.float64).max)
    below_tie = dbl_max + np.longdouble(2) ** 969  # a quarter of float64's last spacing past DBL_MAX: rounds down
    assert tb.to_numpy(np.array([below_tie]), dtype=np.float64).tolist() == [float(dbl_max)]
    with pytest.raises(tb.ValueRangeError, match="does not fit float64"):
        tb.to_numpy(np.array([dbl_max + np.longdouble(2) ** 970]), dtype=np.float64)  # the tie: DBL_MAX is odd


# ---------------------------------------------------------------- shapes of input the rounding must keep


def test_pre_rounding_keeps_layout_byte_order_and_masks() -> None:
    x = 1 + 2**-8 + 2**-40
    a = np.full((3, 4), x)
    for view in (a.T, a[::-1, ::2], a.astype(">f8")):
        assert set(tb.to_tensor(view, dtype=torch.bfloat16).float().reshape(-1).tolist()) == {1.0078125}
        out = tb.to_numpy(view, dtype=ml_dtypes.bfloat16)
        assert out.shape == view.shape and set(out.astype(np.float64).reshape(-1).tolist()) == {1.0078125}
    assert tb.to_numpy(a.T, dtype=ml_dtypes.bfloat16).flags.f_contiguous
    m = np.ma.masked_array([x, 1e300], mask=[False, True])  # the masked 1e300 is not checked
    out = tb.to_numpy(m, dtype=ml_dtypes.bfloat16)
    assert isinstance(out, np.ma.MaskedArray) and out.mask.tolist() == [False, True]
    assert float(out.data[0]) == 1.0078125


def test_lazy_conjugate_and_negative_bits_are_applied_before_pre_rounding() -> None:
    x = 1 + 2**-8 + 2**-40
    z = torch.tensor([complex(x, x)], dtype=torch.complex128)
    assert tb.to_tensor(z.conj().imag, dtype=torch.bfloat16).tolist() == [-1.0078125]  # a negative-bit view
    y = 1 + 2**-11 + 2**-40
    w = torch.tensor([complex(y, y)], dtype=torch.complex128).conj()
    out = quiet_tensor(tb.to_tensor, w, dtype=torch.complex32)
    assert quiet_tensor(out.to, torch.complex64).tolist() == [complex(1 + 2**-10, -(1 + 2**-10))]


def test_complex_to_bool_means_either_part_non_zero() -> None:
    z = np.array([0j, 1j, 1 + 0j, complex(0, -0.0)])
    assert tb.to_tensor(z, dtype=torch.bool).tolist() == [False, True, True, False]
    assert tb.to_numpy(z, dtype=np.bool_).tolist() == [False, True, True, False]


def test_complex32_gets_float16_limits_and_rounding() -> None:
    with pytest.raises(tb.ValueRangeError, match="does not fit complex32"):
        tb.to_tensor(np.array([1e10 + 0j]), dtype=torch.complex32)
    x = 1 + 2**-11 + 2**-40  # float32 rounds it onto the float16 midpoint of 1 and 1 + 2**-10
    out = quiet_tensor(tb.to_tensor, np.array([complex(x, -x)]), dtype=torch.complex32)
    assert quiet_tensor(out.to, torch.complex64).tolist() == [complex(1 + 2**-10, -(1 + 2**-10))]


def test_float8_e8m0fnu_rounds_float32_subnormals_to_the_nearest() -> None:
    # torch sends float32 subnormals above 2**-127 to 2**-126; the nearest is 2**-127 below 1.5 * 2**-127.
    tiny = 2.0**-127
    values = [1.25 * tiny, 1.5 * tiny, 1.75 * tiny, 0.5 * tiny, 1e-45]
    want = [tiny, 2 * tiny, 2 * tiny, tiny, tiny]
    assert _both(np.array(values, np.float32), "float8_e8m0fnu") == [want] * 2
    assert _both(np.array([*values, 1e-300]), "float8_e8m0fnu") == [[*want, tiny]] * 2


# ---------------------------------------------------------------- the fast path stays fast


@pytest.mark.parametrize(("src", "dst"), _pairs(ROWS, ROWS))
def test_only_casts_that_could_round_twice_are_pre_rounded(src: DtypeRow, dst: DtypeRow) -> None:
    spart, dpart = _part(src), _part(dst)
    for numpy_side in (False, True):
        r = rounding_for(spart, dpart, numpy_side=numpy_side)
        float32_holds_it = (
            spart.kind == "b"
            or (spart.kind in "iu" and spart.itemsize <= 2)
            or (spart.kind not in "iu" and (spart.itemsize <= 2 or spart == np.float32))
        )
        narrow = dpart.kind not in "biu" and dpart.itemsize <= 2
        if float32_holds_it or not narrow:
            # Only float8_e8m0fnu may still lift values below its smallest (float32/bfloat16 ones).
            assert r is None or (r.source == "none" and dst.name == "float8_e8m0fnu"), r
        elif spart.kind not in "iu":
            assert r is not None or (numpy_side and dpart == np.float16), r


# ---------------------------------------------------------------- property: random float64 values


_NARROW = [r for r in EXACT if r.numpy.kind not in "biuc" and r.numpy.itemsize <= 2]


@given(
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=1, max_size=40),
    st.sampled_from(_NARROW),
)
def test_random_float64_values_round_to_the_nearest(xs: list[float], dst: DtypeRow) -> None:
    want = [expect(x, dst) for x in xs]
    keep = np.array([w is not REFUSED for w in want], bool)
    a = np.array(xs, np.float64)
    if not keep.all():
        with pytest.raises(tb.ValueRangeError):
            tb.to_tensor(a, dtype=dst.torch)
        with pytest.raises(tb.ValueRangeError):
            tb.to_numpy(a, dtype=dst.numpy)
    a = a[keep]
    w = [x for x in want if x is not REFUSED]
    for out in (tb.to_tensor(a, dtype=dst.torch), tb.to_numpy(a, dtype=dst.numpy)):
        got = _got(out, dst)
        assert all(_same(g, e) for g, e in zip(got, w, strict=True)), (a, got, w)


@pytest.mark.parametrize(
    ("src", "dst"),
    [("float64", "bfloat16"), ("complex128", "complex32"), ("int64", "bfloat16"), ("float32", "float8_e8m0fnu")],
)
def test_large_tensors_round_once_block_by_block(src: str, dst: str) -> None:
    rows = {r.name: r for r in ROWS}
    c = case(rows[src], rows[dst])
    reps = -(-(2 * (1 << 18) + 3) // int(c.accepted.sum()))  # past two of cast.py's blocks
    a = np.tile(c.array[c.accepted], reps)
    want = [e for e in c.expected if e is not REFUSED] * reps
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "ComplexHalf support is experimental", UserWarning)
        out = tb.to_tensor(a, dtype=rows[dst].torch)
        strided = tb.to_tensor(np.stack([a, a], axis=1).T, dtype=rows[dst].torch)  # not contiguous: one pass
    for got in (out, strided[0], strided[1]):
        values = _got(got.contiguous(), rows[dst])
        assert all(_same(g, w) for g, w in zip(values, want, strict=True))
