"""Fault models on every encoding, against bit-by-bit pure-Python oracles.

Codes are compared with Python-int bit loops; decoded values with ``struct``/numpy
reinterpretation of the expected pattern (floats) or Python two's complement and affine
arithmetic (integers). The library's own output is never used as the expected value.
"""

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import resil
from resil import (
    BFLOAT16,
    FLOAT16,
    FLOAT32,
    FLOAT64,
    BitFlip,
    Burst,
    IntEncoding,
    RandomValue,
    SpikeEncoding,
    StuckAt,
    ValueFunction,
    Zero,
)
from resil.errors import FaultError

torch.set_num_threads(1)

FAST = settings(max_examples=60, deadline=None)  # x 7 encoding kinds per property
VECTOR = settings(max_examples=25, deadline=None)  # each example already holds many elements

# float name -> (encoding, struct float format, struct unsigned format, numpy uint of the storage)
FLOATS = {
    "float64": (FLOAT64, "<d", "<Q", np.uint64),
    "float32": (FLOAT32, "<f", "<I", np.uint32),
    "float16": (FLOAT16, "<e", "<H", np.uint16),
    "bfloat16": (BFLOAT16, None, "<H", np.uint16),
}
KINDS = [*FLOATS, "int", "uint", "spike"]


# -- pure-Python helpers ------------------------------------------------------------------------


def signed64(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


def unsigned(code: int, bits: int) -> int:
    """A code (signed int64 for 64-bit encodings) -> its unsigned bit pattern."""
    return code & ((1 << bits) - 1)


def to_code(u: int, bits: int) -> int:
    """An unsigned bit pattern -> the int64 code the library stores."""
    return signed64(u) if bits == 64 else u


def bit(u: int, i: int) -> int:
    return (u >> i) & 1


def from_bits(bs: dict[int, int]) -> int:
    return sum(b << i for i, b in bs.items())


def oracle_flip(u: int, bits: int, flipped: set[int]) -> int:
    return from_bits({i: bit(u, i) ^ (i in flipped) for i in range(bits)})


def oracle_stuck(u: int, bits: int, stuck: set[int], value: int) -> int:
    return from_bits({i: value if i in stuck else bit(u, i) for i in range(bits)})


def py_qrange(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def py_int(u: int, bits: int, signed: bool) -> int:
    return u - 2**bits if signed and u >= 2 ** (bits - 1) else u


def py_code(q: int, bits: int) -> int:
    return q + 2**bits if q < 0 else q


def float_value(u: int, name: str) -> float:
    """The value of a float storage pattern, via struct (bfloat16 = the float32 with pattern u << 16)."""
    _, ffmt, ufmt, _ = FLOATS[name]
    if name == "bfloat16":
        return struct.unpack("<f", struct.pack("<I", u << 16))[0]
    return struct.unpack(ffmt, struct.pack(ufmt, u))[0]


def is_nan_pattern(u: int, name: str) -> bool:
    return math.isnan(float_value(u, name))


def int64(values) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.int64)


def check_codes(enc, got: torch.Tensor, expected_patterns: list[int]) -> None:
    """``got`` holds exactly the expected patterns, and decodes to the values they stand for."""
    bits = enc.bits
    assert got.dtype == torch.int64
    assert got.reshape(-1).tolist() == [to_code(u, bits) for u in expected_patterns]
    decoded = enc.decode(got.reshape(-1))
    if isinstance(enc, IntEncoding):
        qs = [py_int(u, bits, enc.signed) for u in expected_patterns]
        assert enc.to_int(got.reshape(-1)).tolist() == qs
        assert decoded.tolist() == [(q - enc.zero_point) * enc.scale for q in qs]  # exact in float64
        return
    if isinstance(enc, SpikeEncoding):
        amp = struct.unpack("<f", struct.pack("<f", enc.amplitude))[0]
        assert decoded.tolist() == [amp if u else 0.0 for u in expected_patterns]
        return
    name = enc.name
    storage = decoded.view(torch.int16).numpy().view(np.uint16) if name == "bfloat16" else decoded.numpy().view(FLOATS[name][3])
    assert [int(u) for u in storage] == expected_patterns
    values = decoded.float().tolist() if name == "bfloat16" else decoded.tolist()
    for u, v in zip(expected_patterns, values, strict=True):
        want = float_value(u, name)
        assert (math.isnan(v) and math.isnan(want)) or (v == want and math.copysign(1, v) == math.copysign(1, want)), (hex(u), v, want)


# -- strategies ---------------------------------------------------------------------------------

SCALES = st.one_of(st.sampled_from([1.0, 0.5, 0.25, 2.0, 0.1, 1.5, 1 / 3, 0.0078125]), st.floats(2.0**-12, 2.0**12))
WIDTHS = st.one_of(st.sampled_from([1, 2, 4, 8, 16, 24, 31, 32]), st.integers(1, 32))


def zero_points(lo: int, hi: int):
    """Zero points in [qmin, qmax], often at or next to the ends of the range."""
    return st.one_of(st.integers(lo, hi), st.sampled_from(sorted({lo, hi, min(lo + 1, hi), max(hi - 1, lo), max(lo, min(0, hi))})))


@st.composite
def int_encodings(draw, signed: bool, bits=WIDTHS, scales=SCALES):
    n = draw(bits)
    lo, hi = py_qrange(n, signed)
    return IntEncoding(n, signed=signed, scale=draw(scales), zero_point=draw(zero_points(lo, hi)))


def encodings(kind: str, bits=WIDTHS):
    if kind in FLOATS:
        return st.just(FLOATS[kind][0])
    if kind == "spike":
        return st.builds(SpikeEncoding, st.floats(2.0**-20, 2.0**20))
    return int_encodings(signed=kind == "int", bits=bits)


def patterns(bits: int):
    """Unsigned bit patterns of a ``bits``-wide word (all-zeros/all-ones/sign bit often)."""
    top = (1 << bits) - 1
    return st.one_of(st.integers(0, top), st.sampled_from([0, top, 1 << (bits - 1), top >> 1]))


# -- FaultModel.mask ----------------------------------------------------------------------------


@FAST
@given(st.sets(st.integers(0, 63), min_size=1, max_size=64))
def test_mask_of_bits(bs):
    assert BitFlip().mask(sorted(bs)) == signed64(sum(1 << b for b in bs))
    assert StuckAt(1).mask(list(bs)) == signed64(sum(1 << b for b in bs))


@pytest.mark.parametrize("b", [-1, 64, 100])
def test_mask_rejects_bits_outside_any_word(b):
    with pytest.raises(FaultError):
        BitFlip().mask([b])


def test_vectorized_masks():
    bs = np.arange(64)
    assert BitFlip().masks(bs).tolist() == [signed64(1 << b) for b in range(64)]


# -- BitFlip ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@FAST
@given(data=st.data())
def test_bitflip_changes_exactly_that_bit(kind, data):
    enc = data.draw(encodings(kind))
    bits = enc.bits
    u = data.draw(patterns(bits))
    b = data.draw(st.integers(0, bits - 1))
    model = BitFlip()
    mask = model.mask([b])
    assert mask == to_code(1 << b, bits)
    before = int64([to_code(u, bits)])
    after = model.apply(before, int64([mask]), enc)
    assert before.tolist() == [to_code(u, bits)]  # input untouched
    assert unsigned(after.item(), bits) ^ u == 1 << b
    check_codes(enc, after, [oracle_flip(u, bits, {b})])
    assert model.apply(after, int64([mask]), enc).tolist() == [to_code(u, bits)]


@pytest.mark.parametrize("kind", KINDS)
@FAST
@given(data=st.data())
def test_bitflip_several_bits(kind, data):
    enc = data.draw(encodings(kind))
    bits = enc.bits
    u = data.draw(patterns(bits))
    bs = data.draw(st.sets(st.integers(0, bits - 1), min_size=1, max_size=bits))
    model = BitFlip()
    mask = int64([model.mask(sorted(bs))])
    after = model.apply(int64([to_code(u, bits)]), mask, enc)
    check_codes(enc, after, [oracle_flip(u, bits, bs)])
    assert model.apply(after, mask, enc).tolist() == [to_code(u, bits)]


@pytest.mark.parametrize("name", list(FLOATS))
@pytest.mark.parametrize("b", [0, 1])
def test_bitflip_low_bits_of_one(name, b):
    """A concrete value: flipping bit b of 1.0 adds one or two ulps (numpy nextafter oracle)."""
    enc = FLOATS[name][0]
    one = enc.encode(torch.ones(1))
    out = enc.decode(BitFlip().apply(one, int64([BitFlip().mask([b])]), enc)).double().item()
    ulp = 2.0**-7 if name == "bfloat16" else float(np.nextafter(np.array(1, dtype=enc.name), np.array(2, dtype=enc.name))) - 1.0
    assert out == 1.0 + ulp * (1 << b)


@pytest.mark.parametrize("name", list(FLOATS))
def test_bitflip_sign_and_exponent_of_floats(name):
    enc = FLOATS[name][0]
    top, exp_top = BitFlip().mask([enc.bits - 1]), BitFlip().mask([enc.bits - 2])

    def flipped(x: float, mask: int) -> float:
        return enc.decode(BitFlip().apply(enc.encode(torch.tensor([x])), int64([mask]), enc)).double().item()

    assert flipped(2.0, top) == -2.0
    assert flipped(-0.0, top) == 0.0 and math.copysign(1, flipped(0.0, top)) == -1
    # 1.0 has the biased exponent 0111...1: setting its top bit gives all ones, i.e. infinity
    assert flipped(1.0, exp_top) == math.inf
    # 2.0 has the biased exponent 1000...0 and no mantissa: clearing its top bit gives +0.0
    assert flipped(2.0, exp_top) == 0.0


# -- StuckAt ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@FAST
@given(data=st.data())
def test_stuck_at(kind, data):
    enc = data.draw(encodings(kind))
    value = data.draw(st.sampled_from([0, 1]))
    bits = enc.bits
    u = data.draw(patterns(bits))
    bs = data.draw(st.sets(st.integers(0, bits - 1), min_size=1, max_size=bits))
    model = StuckAt(value)
    mask = int64([model.mask(sorted(bs))])
    after = model.apply(int64([to_code(u, bits)]), mask, enc)
    expected = oracle_stuck(u, bits, bs, value)
    check_codes(enc, after, [expected])
    for i in range(bits):
        assert bit(unsigned(after.item(), bits), i) == (value if i in bs else bit(u, i))
    assert model.apply(after, mask, enc).tolist() == after.tolist()  # idempotent


@pytest.mark.parametrize("value", [2, -1])
def test_stuck_at_value_checked(value):
    with pytest.raises(FaultError):
        StuckAt(value)


# -- Burst --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@FAST
@given(data=st.data())
def test_burst_flips_adjacent_bits(kind, data):
    enc = data.draw(encodings(kind))
    bits = enc.bits
    length = data.draw(st.integers(1, bits))
    start = data.draw(st.integers(0, bits - length))
    u = data.draw(patterns(bits))
    model = Burst(length)
    run = set(range(start, start + length))
    mask = model.mask([start])
    assert mask == to_code(sum(1 << i for i in run), bits)
    assert model.masks(np.array([start])).tolist() == [mask]
    after = model.apply(int64([to_code(u, bits)]), int64([mask]), enc)
    check_codes(enc, after, [oracle_flip(u, bits, run)])
    assert model.apply(after, int64([mask]), enc).tolist() == [to_code(u, bits)]


@FAST
@given(st.integers(1, 64), st.data())
def test_burst_masks_vectorized(length, data):
    starts = data.draw(st.lists(st.integers(0, 64 - length), min_size=1, max_size=50))
    expected = [signed64(sum(1 << i for i in range(s, s + length))) for s in starts]
    got = Burst(length).masks(np.array(starts))
    assert got.dtype == np.int64
    assert got.tolist() == expected


def test_burst_limits():
    assert Burst(64).mask([0]) == -1
    assert Burst(2).mask([62]) == signed64(0b11 << 62)
    assert Burst(1).mask([63]) == -(1 << 63)
    for bad in (lambda: Burst(0), lambda: Burst(-2), lambda: Burst(3).mask([62]), lambda: Burst(2).mask([1, 2]),
                lambda: Burst(2).masks(np.array([0, 63]))):
        with pytest.raises(FaultError):
            bad()


# -- Zero ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FLOATS))
@FAST
@given(data=st.data())
def test_zero_on_floats(name, data):
    enc = FLOATS[name][0]
    us = data.draw(st.lists(patterns(enc.bits), min_size=1, max_size=20))
    after = Zero().apply(int64(to_code(u, enc.bits) for u in us), int64([0] * len(us)), enc)
    check_codes(enc, after, [0] * len(us))  # +0.0, sign bit clear
    assert enc.decode(after).tolist() == [0.0] * len(us)


@pytest.mark.parametrize("kind", ["int", "uint"])
@FAST
@given(data=st.data())
def test_zero_on_integers_is_the_zero_point(kind, data):
    enc = data.draw(encodings(kind))
    us = data.draw(st.lists(patterns(enc.bits), min_size=1, max_size=20))
    after = Zero().apply(int64(us), int64([0] * len(us)), enc)
    check_codes(enc, after, [py_code(enc.zero_point, enc.bits)] * len(us))
    assert enc.decode(after).tolist() == [0.0] * len(us)


@pytest.mark.parametrize("zero_point", [2**24 + 1, 2**31 - 1, 100_000_001])
def test_zero_on_wide_integers_with_large_zero_point(zero_point):
    """Regression: zero points beyond 2**24 on > 24-bit encodings went through float32."""
    enc = IntEncoding(32, signed=True, scale=1.0, zero_point=zero_point)
    after = Zero().apply(int64([5]), int64([0]), enc)
    assert after.tolist() == [zero_point]
    assert enc.decode(after).tolist() == [0.0]


# -- RandomValue --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@FAST
@given(data=st.data())
def test_random_value_range_and_determinism(kind, data):
    enc = data.draw(encodings(kind))
    bits = enc.bits
    seed = data.draw(st.integers(0, 2**32 - 1))
    n = data.draw(st.integers(1, 32))
    us = data.draw(st.lists(patterns(bits), min_size=n, max_size=n))
    codes = int64(to_code(u, bits) for u in us)
    model = RandomValue(seed)
    out = model.apply(codes, torch.zeros(n, dtype=torch.int64), enc)
    assert out.dtype == torch.int64 and out.shape == codes.shape
    if bits < 64:
        assert all(0 <= c < 2**bits for c in out.tolist())
    else:
        assert all(-(2**63) <= c < 2**63 for c in out.tolist())
    # same seed: same draw, whatever the old codes and masks
    again = RandomValue(seed).apply(torch.zeros(n, dtype=torch.int64), torch.full((n,), 7, dtype=torch.int64), enc)
    assert again.tolist() == out.tolist()
    assert codes.tolist() == [to_code(u, bits) for u in us]  # input untouched


@pytest.mark.parametrize("kind", KINDS)
@FAST
@given(data=st.data())
def test_random_value_differs_across_seeds(kind, data):
    enc = data.draw(encodings(kind, bits=st.integers(1, 32)))
    s1, s2 = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=2, max_size=2, unique=True))
    codes = torch.zeros(128, dtype=torch.int64)
    a = RandomValue(s1).apply(codes, codes, enc)
    b = RandomValue(s2).apply(codes, codes, enc)
    assert a.tolist() != b.tolist()  # equal draws have probability 2**-128 at most


@pytest.mark.parametrize("s1, s2", [(0, 2**32), (1, 2**32 + 1), (7, 7 + 2**40), (0, 2**63)])
def test_random_value_seeds_beyond_32_bits_differ(s1, s2):
    """Regression: with torch's CPU generator, seeds equal mod 2**32 gave the same draw."""
    codes = torch.zeros(128, dtype=torch.int64)
    a = RandomValue(s1).apply(codes, codes, IntEncoding(16))
    b = RandomValue(s2).apply(codes, codes, IntEncoding(16))
    assert a.tolist() != b.tolist()


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32), st.booleans())
@example(0, True).via("fixed seed")
def test_random_value_uniform_over_8_bit_codes(seed, signed):
    enc = IntEncoding(8, signed=signed)
    out = RandomValue(seed).apply(torch.zeros(10_000, dtype=torch.int64), torch.zeros(10_000, dtype=torch.int64), enc).numpy()
    assert out.min() >= 0 and out.max() <= 255
    counts = np.bincount(out, minlength=256)
    assert len(counts) == 256
    assert (counts > 0).all(), "some 8-bit code never drawn in 10,000 draws"
    expected = 10_000 / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # 255 degrees of freedom: mean 255, sd ~22.6; 400 is > 6 sd above the mean
    assert chi2 < 400, chi2


@pytest.mark.parametrize("name", list(FLOATS))
def test_random_value_every_bit_is_fair(name):
    """Wide encodings: each bit (the sign bit of float64 codes included) is set about half the time."""
    enc = FLOATS[name][0]
    out = RandomValue(3).apply(torch.zeros(10_000, dtype=torch.int64), torch.zeros(10_000, dtype=torch.int64), enc)
    us = [unsigned(c, enc.bits) for c in out.tolist()]
    for i in range(enc.bits):
        share = sum(bit(u, i) for u in us) / len(us)
        assert 0.45 < share < 0.55, (i, share)


# -- ValueFunction ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FLOATS))
@FAST
@given(data=st.data())
def test_value_function_negate_floats(name, data):
    enc = FLOATS[name][0]
    bits = enc.bits
    us = data.draw(st.lists(patterns(bits).filter(lambda u: not is_nan_pattern(u, name)), min_size=1, max_size=12))
    seen = []

    def neg(v):
        seen.append(v.dtype)
        return -v

    after = ValueFunction(neg).apply(int64(to_code(u, bits) for u in us), int64([0] * len(us)), enc)
    assert seen == [enc.dtype]  # the function sees decoded values of the storage dtype
    check_codes(enc, after, [u ^ (1 << (bits - 1)) for u in us])


@pytest.mark.parametrize("name", list(FLOATS))
@FAST
@given(data=st.data())
def test_value_function_double_floats(name, data):
    enc = FLOATS[name][0]
    bits = enc.bits
    us = data.draw(st.lists(patterns(bits).filter(lambda u: not is_nan_pattern(u, name)), min_size=1, max_size=12))
    with np.errstate(over="ignore"):
        if name == "bfloat16":  # float32 has bfloat16's exponent range, so 2x in float32 is exact here
            doubled = (np.array([u << 16 for u in us], dtype=np.uint32).view(np.float32) * np.float32(2)).view(np.uint32) >> 16
        else:
            udt = FLOATS[name][3]
            fdt = {64: np.float64, 32: np.float32, 16: np.float16}[bits]
            doubled = (np.array(us, dtype=udt).view(fdt) * fdt(2)).view(udt)
    after = ValueFunction(lambda v: v * 2).apply(int64(to_code(u, bits) for u in us), int64([0] * len(us)), enc)
    check_codes(enc, after, [int(u) for u in doubled])


@pytest.mark.parametrize("kind", ["int", "uint"])
@FAST
@given(data=st.data())
def test_value_function_on_integers(kind, data):
    """-v and 2v on the decoded values: q -> clamp(2*zp - q) and q -> clamp(2*(q - zp) + zp)."""
    enc = data.draw(encodings(kind, bits=st.integers(1, 20)))
    bits, zp = enc.bits, enc.zero_point
    lo, hi = py_qrange(bits, enc.signed)
    qs = data.draw(st.lists(st.integers(lo, hi), min_size=1, max_size=20))
    codes = int64(py_code(q, bits) for q in qs)
    neg = ValueFunction(lambda v: -v).apply(codes, torch.zeros_like(codes), enc)
    check_codes(enc, neg, [py_code(min(max(2 * zp - q, lo), hi), bits) for q in qs])
    dbl = ValueFunction(lambda v: 2 * v).apply(codes, torch.zeros_like(codes), enc)
    check_codes(enc, dbl, [py_code(min(max(2 * (q - zp) + zp, lo), hi), bits) for q in qs])


@FAST
@given(st.floats(2.0**-20, 2.0**20), st.lists(st.sampled_from([0, 1]), min_size=1, max_size=20))
def test_value_function_on_spikes(amplitude, us):
    """A spike stays a spike under -v, and v * 0 removes it; Zero removes it too."""
    enc = SpikeEncoding(amplitude)
    codes = int64(us)
    check_codes(enc, ValueFunction(lambda v: -v).apply(codes, torch.zeros_like(codes), enc), us)
    check_codes(enc, ValueFunction(lambda v: v * 0).apply(codes, torch.zeros_like(codes), enc), [0] * len(us))
    check_codes(enc, Zero().apply(codes, torch.zeros_like(codes), enc), [0] * len(us))


# -- vectorized: many elements, different masks ---------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@VECTOR
@given(data=st.data())
def test_vectorized_bit_models_match_per_element_oracle(kind, data):
    enc = data.draw(encodings(kind))
    bits = enc.bits
    n = data.draw(st.integers(1, 40))
    us = data.draw(st.lists(patterns(bits), min_size=n, max_size=n))
    sets = data.draw(st.lists(st.sets(st.integers(0, bits - 1), min_size=1, max_size=bits), min_size=n, max_size=n))
    codes = int64(to_code(u, bits) for u in us)
    rows = data.draw(st.lists(st.lists(patterns(bits), min_size=n, max_size=n), min_size=1, max_size=3))
    batch = torch.tensor([[to_code(u, bits) for u in r] for r in rows], dtype=torch.int64)
    for model, oracle in [
        (BitFlip(), lambda u, s: oracle_flip(u, bits, s)),
        (StuckAt(0), lambda u, s: oracle_stuck(u, bits, s, 0)),
        (StuckAt(1), lambda u, s: oracle_stuck(u, bits, s, 1)),
    ]:
        masks = int64(model.mask(sorted(s)) for s in sets)
        out = model.apply(codes, masks, enc)
        check_codes(enc, out, [oracle(u, s) for u, s in zip(us, sets, strict=True)])
        # leading (batch) dimensions broadcast against one mask per element
        out2 = model.apply(batch, masks, enc)
        assert out2.shape == batch.shape
        assert out2.tolist() == [[to_code(oracle(u, s), bits) for u, s in zip(r, sets, strict=True)] for r in rows]
    assert codes.tolist() == [to_code(u, bits) for u in us]  # input untouched


@pytest.mark.parametrize("kind", KINDS)
@VECTOR
@given(data=st.data())
def test_vectorized_burst_matches_per_element_oracle(kind, data):
    enc = data.draw(encodings(kind))
    bits = enc.bits
    length = data.draw(st.integers(1, bits))
    n = data.draw(st.integers(1, 40))
    us = data.draw(st.lists(patterns(bits), min_size=n, max_size=n))
    starts = data.draw(st.lists(st.integers(0, bits - length), min_size=n, max_size=n))
    model = Burst(length)
    masks = torch.from_numpy(model.masks(np.array(starts)))
    out = model.apply(int64(to_code(u, bits) for u in us), masks, enc)
    check_codes(enc, out, [oracle_flip(u, bits, set(range(s, s + length))) for u, s in zip(us, starts, strict=True)])


@pytest.mark.parametrize("kind", KINDS)
@VECTOR
@given(data=st.data())
def test_vectorized_whole_word_models(kind, data):
    """Zero and RandomValue on a (batch, n) block of codes."""
    enc = data.draw(encodings(kind))
    bits = enc.bits
    n = data.draw(st.integers(1, 40))
    rows = data.draw(st.lists(st.lists(patterns(bits), min_size=n, max_size=n), min_size=1, max_size=3))
    block = torch.tensor([[to_code(u, bits) for u in r] for r in rows], dtype=torch.int64)
    masks = torch.zeros(n, dtype=torch.int64)
    zero = py_code(enc.zero_point, bits) if isinstance(enc, IntEncoding) else 0
    z = Zero().apply(block, masks, enc)
    assert z.shape == block.shape
    assert z.tolist() == [[zero] * n for _ in rows]
    r = RandomValue(11).apply(block, masks, enc)
    assert r.shape == block.shape
    assert r.tolist() == RandomValue(11).apply(torch.zeros_like(block), masks, enc).tolist()
    if bits < 64:
        assert ((r >= 0) & (r < 2**bits)).all()


def test_every_registered_model_is_covered():
    assert {"bitflip", "burst", "stuck_at", "zero", "random_value"} <= set(resil.fault_model_names())
