"""Encodings: exact storage bit patterns and exact round trips.

Every expected value comes from an independent oracle: ``struct`` packing, numpy ``.view`` of
the storage, or two's complement / affine arithmetic on plain Python ints and floats. The
library's own output is never used as the expected value.
"""

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from resil import BFLOAT16, FLOAT16, FLOAT32, FLOAT64, IntEncoding, SpikeEncoding
from resil.errors import FaultError

torch.set_num_threads(1)

FAST = settings(max_examples=200, deadline=None)

# name -> (encoding, bits, struct float format, struct unsigned format, numpy float, numpy uint)
IEEE = {
    "float64": (FLOAT64, 64, "<d", "<Q", np.float64, np.uint64),
    "float32": (FLOAT32, 32, "<f", "<I", np.float32, np.uint32),
    "float16": (FLOAT16, 16, "<e", "<H", np.float16, np.uint16),
}

# bit patterns worth always trying: zeros, subnormals, extremes, infinities, NaNs with payloads
SPECIAL = {
    16: [0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7C01, 0x7E00, 0xFE01, 0x7FFF, 0xFFFF],
    32: [0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x00800000, 0x7F7FFFFF, 0x7F800000, 0xFF800000,
         0x7F800001, 0x7FC00000, 0xFFC00001, 0x7FBFFFFF, 0xFFFFFFFF, 0x3F800000],
    64: [0, 1 << 63, 1, (1 << 63) | 1, 0x7FEFFFFFFFFFFFFF, 0x7FF0000000000000, 0xFFF0000000000000,
         0x7FF0000000000001, 0x7FF8000000000000, 0xFFF8000000000001, 0x7FF7FFFFFFFFFFFF, (1 << 64) - 1],
}


def signed64(u: int) -> int:
    """Unsigned 64-bit pattern -> the same pattern as a signed int64 (how 64-bit codes are stored)."""
    return u - (1 << 64) if u >= 1 << 63 else u


def code_of_pattern(u: int, bits: int) -> int:
    return signed64(u) if bits == 64 else u


def int64(values) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.int64)


def pattern_of_float(x: float, ffmt: str, ufmt: str) -> int:
    return struct.unpack(ufmt, struct.pack(ffmt, x))[0]


def float_of_pattern(u: int, ffmt: str, ufmt: str) -> float:
    return struct.unpack(ffmt, struct.pack(ufmt, u))[0]


def same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1.0, a) == math.copysign(1.0, b))


# --------------------------------------------------------------------------------------------
# IEEE floats: float64, float32, float16
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(IEEE))
def test_ieee_encoding_width(name):
    enc, bits, *_ = IEEE[name]
    assert enc.bits == bits
    assert enc.zero_code == 0


@pytest.mark.parametrize("name", list(IEEE))
@FAST
@given(data=st.data())
def test_ieee_encode_is_the_struct_bit_pattern(name, data):
    enc, bits, ffmt, ufmt, fdt, udt = IEEE[name]
    xs = data.draw(st.lists(st.floats(width=bits, allow_nan=False), min_size=1, max_size=20))
    expected = [code_of_pattern(pattern_of_float(x, ffmt, ufmt), bits) for x in xs]
    codes = enc.encode(torch.from_numpy(np.array(xs, dtype=fdt)))
    assert codes.dtype == torch.int64
    assert codes.tolist() == expected
    # the numpy reinterpretation agrees with struct
    numpy_view = [code_of_pattern(int(u), bits) for u in np.array(xs, dtype=fdt).view(udt)]
    assert codes.tolist() == numpy_view


@pytest.mark.parametrize("name", list(IEEE))
@FAST
@given(data=st.data())
def test_ieee_bit_patterns_round_trip(name, data):
    """Any pattern (NaN payloads, -0.0, subnormals) survives decode and encode bit-identically."""
    enc, bits, ffmt, ufmt, fdt, udt = IEEE[name]
    patterns = data.draw(st.lists(st.one_of(st.sampled_from(SPECIAL[bits]), st.integers(0, (1 << bits) - 1)), min_size=1, max_size=40))
    codes = int64(code_of_pattern(u, bits) for u in patterns)

    decoded = enc.decode(codes)
    assert decoded.dtype == enc.dtype
    assert [int(u) for u in decoded.numpy().view(udt)] == patterns
    for u, v in zip(patterns, decoded.tolist(), strict=True):
        assert same_float(v, float_of_pattern(u, ffmt, ufmt)), hex(u)

    values = torch.from_numpy(np.array(patterns, dtype=udt).view(fdt).copy())
    assert enc.encode(values).tolist() == codes.tolist()
    assert [int(u) for u in enc.decode(enc.encode(values)).numpy().view(udt)] == patterns
    assert enc.encode(enc.decode(codes)).tolist() == codes.tolist()


def test_float16_every_pattern():
    p = np.arange(1 << 16, dtype=np.int64)
    values = torch.from_numpy(p.astype(np.uint16).view(np.float16).copy())
    assert np.array_equal(FLOAT16.encode(values).numpy(), p)
    decoded = FLOAT16.decode(torch.from_numpy(p))
    assert np.array_equal(decoded.numpy().view(np.uint16).astype(np.int64), p)


def test_float64_codes_are_signed_int64():
    """The doc: 64-bit codes hold the raw pattern as a signed int64."""
    assert int(FLOAT64.encode(torch.tensor([-0.0], dtype=torch.float64))[0]) == -(1 << 63)
    assert int(FLOAT64.encode(torch.tensor([-1.0], dtype=torch.float64))[0]) == signed64(0xBFF0000000000000)
    assert FLOAT64.decode(int64([signed64(0xBFF0000000000000)])).tolist() == [-1.0]


@FAST
@given(st.lists(st.floats(allow_nan=False, min_value=-3.4028234663852886e38, max_value=3.4028234663852886e38), min_size=1, max_size=20))
def test_float32_encode_of_float64_values_rounds_like_struct(xs):
    """Values of another dtype are converted (round to nearest even) before taking the pattern."""
    codes = FLOAT32.encode(torch.tensor(xs, dtype=torch.float64))
    assert codes.tolist() == [pattern_of_float(x, "<f", "<I") for x in xs]


# --------------------------------------------------------------------------------------------
# bfloat16
# --------------------------------------------------------------------------------------------


def test_bfloat16_width():
    assert BFLOAT16.bits == 16 and BFLOAT16.zero_code == 0


def test_bfloat16_every_pattern():
    p = np.arange(1 << 16, dtype=np.int64)
    decoded = BFLOAT16.decode(torch.from_numpy(p))
    assert decoded.dtype == torch.bfloat16
    # storage bits of the decoded tensor are the code
    assert np.array_equal(decoded.view(torch.int16).numpy().view(np.uint16).astype(np.int64), p)
    # its value is the float32 whose pattern is code << 16
    f32 = (p.astype(np.uint32) << np.uint32(16)).view(np.float32)
    got = decoded.to(torch.float32).numpy()
    nan = np.isnan(f32)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), f32[~nan].view(np.uint32))
    # encode from bfloat16 storage: every pattern, NaNs included
    assert np.array_equal(BFLOAT16.encode(decoded).numpy(), p)
    # encode from float32 values exactly representable in bfloat16 (non-NaN): upper 16 bits
    assert np.array_equal(BFLOAT16.encode(torch.from_numpy(f32[~nan].copy())).numpy(), p[~nan])


@FAST
@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=20))
def test_bfloat16_encode_is_upper_half_of_float32_pattern(xs):
    # keep only values exactly representable in bfloat16: clear the low 16 bits of the pattern
    upper = [pattern_of_float(x, "<f", "<I") >> 16 for x in xs]
    exact = [float_of_pattern(u << 16, "<f", "<I") for u in upper]
    codes = BFLOAT16.encode(torch.tensor(exact, dtype=torch.float32))
    assert codes.tolist() == upper
    assert [same_float(a, b) for a, b in zip(BFLOAT16.decode(codes).float().tolist(), exact, strict=True)] == [True] * len(xs)


# --------------------------------------------------------------------------------------------
# N-bit integers with scale and zero point
# --------------------------------------------------------------------------------------------


def py_qrange(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def py_code(q: int, bits: int) -> int:
    """Manual two's complement: a negative q is stored as 2**bits + q."""
    return q + 2**bits if q < 0 else q


def py_int(code: int, bits: int, signed: bool) -> int:
    return code - 2**bits if signed and code >= 2 ** (bits - 1) else code


def py_encode(v: float, bits: int, signed: bool, scale: float, zp: int) -> int:
    """round-half-even(v / scale) + zero_point, clamped to [qmin, qmax], as a code (float64 arithmetic)."""
    lo, hi = py_qrange(bits, signed)
    x = v / scale
    q = (hi if x > 0 else lo) if math.isinf(x) else min(max(round(x) + zp, lo), hi)
    return py_code(q, bits)


SCALES = st.one_of(
    st.sampled_from([1.0, 0.5, 2.0, 0.25, 0.1, 1.5, 3.0, 1 / 3, 0.0078125, 1e-3, 37.0]),
    st.floats(2.0**-16, 2.0**16),
)


# widths around the float32 (24-bit mantissa) and int32 boundaries are tried more often
WIDTHS = st.one_of(st.sampled_from([1, 2, 8, 16, 23, 24, 25, 31, 32]), st.integers(1, 32))


def zero_points(lo: int, hi: int):
    """Zero points in [qmin, qmax], often at or next to the ends of the range."""
    return st.one_of(st.integers(lo, hi), st.sampled_from(sorted({lo, hi, min(lo + 1, hi), max(hi - 1, lo), max(lo, min(0, hi))})))


@st.composite
def int_params(draw, bits=WIDTHS, scales=SCALES):
    n = draw(bits)
    signed = draw(st.booleans())
    lo, hi = py_qrange(n, signed)
    return n, signed, draw(scales), draw(zero_points(lo, hi))


def q_values(lo: int, hi: int):
    """Integers in [lo, hi], often near the ends of the range (where |q - zero_point| is largest)."""
    return st.one_of(st.integers(lo, hi), st.integers(max(lo, hi - 4096), hi), st.integers(lo, min(hi, lo + 4096)))


def make(params) -> IntEncoding:
    n, signed, scale, zp = params
    return IntEncoding(n, signed=signed, scale=scale, zero_point=zp)


@pytest.mark.parametrize("bits", range(1, 33))
@pytest.mark.parametrize("signed", [True, False])
def test_int_range_and_name(bits, signed):
    enc = IntEncoding(bits, signed=signed)
    assert enc.bits == bits
    assert (enc.qmin, enc.qmax) == py_qrange(bits, signed)
    assert enc.name == f"{'int' if signed else 'uint'}{bits}"
    # the extremes and -1 / 0 / 1 as codes
    lo, hi = py_qrange(bits, signed)
    qs = sorted({lo, hi, 0, min(1, hi), max(-1, lo)})
    codes = enc.from_int(int64(qs))
    assert codes.tolist() == [q & ((1 << bits) - 1) for q in qs]
    assert codes.tolist() == [py_code(q, bits) for q in qs]
    assert enc.to_int(codes).tolist() == qs
    # every code lies in [0, 2**bits)
    assert all(0 <= c < 2**bits for c in codes.tolist())


@pytest.mark.parametrize("bits", [0, -1, 33, 64])
def test_int_width_is_checked(bits):
    with pytest.raises(FaultError):
        IntEncoding(bits)


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("signed", [True, False])
def test_int_every_q_small_widths(bits, signed):
    """Exhaustive for N <= 16: two's complement codes, to_int inverse, exact value round trip."""
    lo, hi = py_qrange(bits, signed)
    q = np.arange(lo, hi + 1, dtype=np.int64)
    expected = np.where(q < 0, q + (1 << bits), q)
    for scale, zp in [(1.0, 0), (0.5, hi // 3), (0.1, lo), (3.0, hi)]:
        enc = IntEncoding(bits, signed=signed, scale=scale, zero_point=zp)
        codes = enc.from_int(torch.from_numpy(q))
        assert np.array_equal(codes.numpy(), expected)
        assert np.array_equal(enc.to_int(codes).numpy(), q)
        assert np.array_equal(enc.encode(enc.decode(codes)).numpy(), expected)
        values = enc.decode(codes).to(torch.float64).numpy()
        assert np.array_equal(values, (q - zp).astype(np.float64) * scale)  # one float64 rounding, like numpy's


@FAST
@given(int_params(), st.data())
def test_int_twos_complement(params, data):
    n, signed, _, _ = params
    enc = make(params)
    lo, hi = py_qrange(n, signed)
    qs = data.draw(st.lists(q_values(lo, hi), min_size=1, max_size=30))
    codes = enc.from_int(int64(qs))
    assert codes.tolist() == [q & ((1 << n) - 1) for q in qs]
    assert codes.tolist() == [py_code(q, n) for q in qs]
    assert enc.to_int(codes).tolist() == qs
    # and from any code
    cs = data.draw(st.lists(st.integers(0, 2**n - 1), min_size=1, max_size=30))
    assert enc.to_int(int64(cs)).tolist() == [py_int(c, n, signed) for c in cs]


@FAST
@given(int_params(), st.data())
def test_int_decode_value(params, data):
    """decode(code of q) == (q - zero_point) * scale, exactly: |q - zp| < 2**33 converts to a double
    exactly, so the only rounding is the product's, the same one Python's float product makes."""
    n, signed, scale, zp = params
    enc = make(params)
    lo, hi = py_qrange(n, signed)
    qs = data.draw(st.lists(q_values(lo, hi), min_size=1, max_size=30))
    got = enc.decode(int64(py_code(q, n) for q in qs)).tolist()
    for q, v in zip(qs, got, strict=True):
        assert v == (q - zp) * scale, (q, v, (q - zp) * scale)


@FAST
@given(int_params(), st.data())
@example(params=(24, False, 1.5, 0), data=None).via("regression: float32 decode of 24-bit codes")
def test_int_round_trip_every_q(params, data):
    """encode(decode(code)) == code for every representable q, any scale and zero point."""
    n, signed, _, _ = params
    enc = make(params)
    lo, hi = py_qrange(n, signed)
    # q = 11184814 once decoded to 16777220.0 (float32) and re-encoded to 11184813
    qs = [11184814] if data is None else data.draw(st.lists(q_values(lo, hi), min_size=1, max_size=30))
    codes = [py_code(q, n) for q in qs]
    assert enc.encode(enc.decode(int64(codes))).tolist() == codes


@FAST
@given(int_params(), st.data())
def test_int_encode_float64_values(params, data):
    """float64 values: round half to even of value/scale, plus zero point, clamped."""
    n, signed, scale, zp = params
    enc = make(params)
    lo, hi = py_qrange(n, signed)
    near_grid = st.builds(lambda k, f: (k - zp + f) * scale, st.integers(lo - 3, hi + 3),
                          st.sampled_from([0.0, 0.5, -0.5, 0.25, 0.49, 1.5]))
    vs = data.draw(st.lists(st.one_of(st.floats(allow_nan=False), near_grid), min_size=1, max_size=20))
    codes = enc.encode(torch.tensor(vs, dtype=torch.float64))
    assert codes.dtype == torch.int64
    assert codes.tolist() == [py_encode(v, n, signed, scale, zp) for v in vs]


@FAST
@given(int_params(), st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=20))
@example(params=(32, False, 1.0, 2**24 + 1), vs=[0.0]).via("regression: float32 zero point")
@example(params=(32, True, 0.1, 0), vs=[1e8]).via("regression: float32 scale")
@example(params=(2, False, 1 / 3, 0), vs=[0.5]).via("regression: float32 scale at a tie")
def test_int_encode_float32_values(params, vs):
    """float32 inputs encode like the same values given as float64 (a float32 converts exactly)."""
    n, signed, scale, zp = params
    enc = make(params)
    codes = enc.encode(torch.tensor(vs, dtype=torch.float32))
    assert codes.tolist() == [py_encode(v, n, signed, scale, zp) for v in vs]


@FAST
@given(int_params(), st.integers(1, 1000))
def test_int_clamps_outside_range(params, k):
    n, signed, scale, zp = params
    enc = make(params)
    lo, hi = py_qrange(n, signed)
    above = [(hi - zp + k) * scale, math.inf, 1e300]
    below = [(lo - zp - k) * scale, -math.inf, -1e300]
    assert enc.encode(torch.tensor(above, dtype=torch.float64)).tolist() == [py_code(hi, n)] * 3
    assert enc.encode(torch.tensor(below, dtype=torch.float64)).tolist() == [py_code(lo, n)] * 3
    assert enc.encode(torch.tensor([math.inf, -math.inf, 3e38, -3e38], dtype=torch.float32)).tolist() == [
        py_code(hi, n), py_code(lo, n), py_code(hi, n), py_code(lo, n)
    ]


@FAST
@given(int_params())
@example(params=(32, False, 1.0, 2**24 + 1)).via("regression: float32 zero point")
@example(params=(32, True, 0.5, -(2**31) + 1)).via("regression: float32 zero point")
def test_int_zero_is_the_zero_point(params):
    """The value 0 is stored as q = zero_point, whatever the dtype of the zeros."""
    n, _, _, zp = params
    enc = make(params)
    expected = py_code(zp, n)
    assert enc.encode(torch.zeros(3, dtype=torch.float64)).tolist() == [expected] * 3
    assert enc.encode(torch.zeros(3, dtype=torch.float32)).tolist() == [expected] * 3
    assert enc.zero_code == expected
    assert enc.decode(int64([expected])).tolist() == [0.0]


# --------------------------------------------------------------------------------------------
# spikes
# --------------------------------------------------------------------------------------------


def as_float32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


@FAST
@given(st.floats(2.0**-20, 2.0**20), st.lists(st.floats(width=32), min_size=1, max_size=30))
def test_spike_encoding(amplitude, xs):
    """One bit: any non-zero value (NaN included) is a spike; code 1 decodes to the amplitude."""
    enc = SpikeEncoding(amplitude)
    assert enc.bits == 1 and enc.zero_code == 0
    codes = enc.encode(torch.tensor(xs, dtype=torch.float32))
    assert codes.dtype == torch.int64
    assert codes.tolist() == [0 if x == 0 else 1 for x in xs]
    assert enc.decode(int64([0, 1, 1, 0])).tolist() == [0.0, as_float32(amplitude), as_float32(amplitude), 0.0]
    assert enc.encode(enc.decode(codes)).tolist() == codes.tolist()
