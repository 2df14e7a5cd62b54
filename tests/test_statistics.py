"""Tests of resil.statistics against independent oracles: formulas written out by hand, published
figures (METHODS.md section 6), scipy, and simulation on spaces whose exact answer is known."""

from __future__ import annotations

import math
import statistics
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resil.errors import FaultError
from resil.statistics import (
    Estimate,
    bit_planes,
    combine_strata,
    data_aware_masked,
    data_aware_population,
    defensive_mixture,
    importance_estimate,
    importance_weights,
    leveugle_sample_size,
    normal_quantile,
    stratified_sample_sizes,
    wilson_interval,
    wilson_margin,
)

# two-sided normal quantiles from standard tables
Z95 = 1.959963984540054
Z99 = 2.5758293035489004


def leveugle_by_hand(N: float, e: float, t: float, p: float = 0.5) -> int:
    n = t**2 * p * (1 - p) / e**2 if math.isinf(N) else N / (1 + e**2 * (N - 1) / (t**2 * p * (1 - p)))
    assert abs(n - round(n)) > 1e-6, "pick oracle cases away from integers"
    return math.ceil(n)


def wilson_by_hand(k: int, n: int, z: float) -> tuple[float, float]:
    phat = k / n
    denom = 1 + z * z / n
    center = (phat + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
    return center - half, center + half


# --------------------------------------------------------------------------- Leveugle


def test_normal_quantile_matches_tables() -> None:
    assert normal_quantile(0.95) == pytest.approx(Z95, abs=1e-9)
    assert normal_quantile(0.99) == pytest.approx(Z99, abs=1e-9)


@pytest.mark.parametrize(
    "N, e, t, p",
    [
        (2304, 0.01, Z99, 0.5),
        (2304, 0.05, Z95, 0.5),
        (10_000, 0.02, Z95, 0.5),
        (1_000_000, 0.01, Z99, 0.5),
        (123_457, 0.005, Z99, 0.5),
        (5_000, 0.01, Z95, 0.1),
        (50, 0.1, Z95, 0.3),
        (float("inf"), 0.03, Z95, 0.5),
    ],
)
def test_leveugle_matches_hand_formula(N: float, e: float, t: float, p: float) -> None:
    confidence = {Z95: 0.95, Z99: 0.99}[t]
    assert leveugle_sample_size(N, e, confidence, p) == leveugle_by_hand(N, e, t, p)
    assert leveugle_sample_size(N, e, 0.5, p, t=t) == leveugle_by_hand(N, e, t, p)  # t overrides


def test_leveugle_published_figures() -> None:
    inf = float("inf")
    # METHODS.md section 6 (rounded t of the paper): 9,604 (95%), 16,641 (99%), conv1 N=2304 -> 2,024
    assert leveugle_sample_size(inf, 0.01, t=1.96) == 9604
    assert leveugle_sample_size(inf, 0.01, t=2.58) == 16641
    assert leveugle_sample_size(2304, 0.01, t=2.58) == 2024
    # exact quantiles: 2.5758^2 / 4 / 1e-4 = 16587.2 and 1.96^2 / 4 / 0.05^2 = 384.1 -> rounded up
    assert pytest.approx(16587.2, abs=0.1) == Z99**2 * 0.25 / 0.01**2
    assert leveugle_sample_size(inf) == 16588
    assert leveugle_sample_size(inf, 0.05, 0.95) == 385
    assert leveugle_sample_size(inf, 0.01, 0.95) == 9604  # 9603.5 rounded up


def test_leveugle_edges() -> None:
    assert leveugle_sample_size(0) == 0
    assert leveugle_sample_size(1) == 1
    assert leveugle_sample_size(np.int64(2304), t=2.58) == 2024
    assert leveugle_sample_size(2304.0, t=2.58) == 2024
    # a huge finite population approaches the infinite one
    assert leveugle_sample_size(10**15) == leveugle_sample_size(float("inf"))


@settings(max_examples=60, deadline=None)
@given(
    N=st.integers(min_value=1, max_value=10**9),
    e=st.floats(min_value=1e-3, max_value=0.5),
    c=st.floats(min_value=0.5, max_value=0.999),
)
def test_leveugle_properties(N: int, e: float, c: float) -> None:
    n = leveugle_sample_size(N, e, c)
    assert 1 <= n <= N
    assert leveugle_sample_size(N + 1000, e, c) >= n
    assert leveugle_sample_size(N, e * 1.5, c) <= n
    assert n <= leveugle_sample_size(float("inf"), e, c)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"population": -1}, "population"),
        ({"population": 10.5}, "population"),
        ({"population": float("nan")}, "population"),
        ({"population": "1000"}, "population"),
        ({"population": True}, "population"),
        ({"population": 100, "margin": 0.0}, "margin"),
        ({"population": 100, "margin": 1.0}, "margin"),
        ({"population": 100, "confidence": 1.0}, "confidence"),
        ({"population": 100, "confidence": 0.0, "t": 2.0}, "confidence"),
        ({"population": 100, "p": 0.0}, "p "),
        ({"population": 100, "p": 1.5}, "p "),
        ({"population": 100, "t": -1.0}, "t "),
        ({"population": 100, "t": float("inf")}, "t "),
    ],
)
def test_leveugle_validation_names_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(FaultError, match=f"^{name}"):
        leveugle_sample_size(**kwargs)
    assert issubclass(FaultError, ValueError)


# --------------------------------------------------------------------------- stratified sizes


def test_stratified_sample_sizes_hand() -> None:
    pops = {"conv1": 2304, "conv2": 36_864, ("fc", 30): 1_000_003, "bias": 7}
    got = stratified_sample_sizes(pops, margin=0.02, confidence=0.95)
    assert got == {
        "conv1": leveugle_by_hand(2304, 0.02, Z95),
        "conv2": leveugle_by_hand(36_864, 0.02, Z95),
        ("fc", 30): leveugle_by_hand(1_000_003, 0.02, Z95),
        "bias": 7,  # capped at the population: inject all of it
    }
    assert stratified_sample_sizes({"a": 0}) == {"a": 0}


def test_stratified_sample_sizes_per_stratum_p() -> None:
    got = stratified_sample_sizes({"a": 50_000, "b": 50_000}, 0.01, 0.99, p={"a": 0.5, "b": 0.02})
    assert got == {"a": leveugle_by_hand(50_000, 0.01, Z99, 0.5), "b": leveugle_by_hand(50_000, 0.01, Z99, 0.02)}
    assert got["b"] < got["a"] / 5


def test_stratified_sample_sizes_validation() -> None:
    with pytest.raises(FaultError, match="p has no value for strata \\['b'\\]"):
        stratified_sample_sizes({"a": 10, "b": 10}, p={"a": 0.5})
    with pytest.raises(FaultError, match="stratum 'b': population"):
        stratified_sample_sizes({"a": 10, "b": -3})
    with pytest.raises(FaultError, match="populations"):
        stratified_sample_sizes([10, 20])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Wilson


@pytest.mark.parametrize("k, n", [(0, 10), (1, 10), (5, 10), (10, 10), (3, 100), (37, 1000), (1, 2)])
@pytest.mark.parametrize("confidence, z", [(0.95, Z95), (0.99, Z99), (0.9, 1.6448536269514722)])
def test_wilson_matches_hand_formula(k: int, n: int, confidence: float, z: float) -> None:
    low, high = wilson_interval(k, n, confidence)
    assert isinstance(low, float) and isinstance(high, float)
    exp_low, exp_high = wilson_by_hand(k, n, z)
    assert low == pytest.approx(exp_low, abs=1e-12)
    assert high == pytest.approx(exp_high, abs=1e-12)
    assert wilson_margin(k, n, confidence) == pytest.approx((exp_high - exp_low) / 2, abs=1e-12)


def test_wilson_matches_scipy() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    ks = np.array([0, 1, 7, 50, 99, 100, 3, 250])
    ns = np.array([100, 100, 100, 100, 100, 100, 1000, 251])
    for confidence in (0.9, 0.95, 0.99):
        low, high = wilson_interval(ks, ns, confidence)
        for i, (k, n) in enumerate(zip(ks, ns, strict=True)):
            ci = scipy_stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
            assert low[i] == pytest.approx(ci.low, abs=1e-10)
            assert high[i] == pytest.approx(ci.high, abs=1e-10)


def test_wilson_vectorized_and_empty() -> None:
    k = np.array([[0, 1, 2], [3, 4, 5]])
    n = np.array([5, 10, 0])
    with pytest.raises(FaultError, match="successes"):
        wilson_interval(k, n)  # 2 > 0 in the last column
    k[:, 2] = 0
    low, high = wilson_interval(k, n)
    assert low.shape == high.shape == (2, 3)
    for i in range(2):
        for j in range(2):
            assert (low[i, j], high[i, j]) == pytest.approx(wilson_by_hand(int(k[i, j]), int(n[j]), Z95))
    assert low[:, 2].tolist() == [0.0, 0.0] and high[:, 2].tolist() == [1.0, 1.0]
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # exact edges
    assert wilson_interval(0, 7)[0] == 0.0 and wilson_interval(7, 7)[1] == 1.0


def test_wilson_coverage() -> None:
    rng = np.random.default_rng(12345)
    for p, n in [(0.02, 200), (0.1, 50), (0.3, 100), (0.5, 30), (0.9, 400)]:
        k = rng.binomial(n, p, size=4000)
        low, high = wilson_interval(k, n, 0.95)
        coverage = np.mean((low <= p) & (p <= high))
        assert coverage >= 0.93, (p, n, coverage)


@pytest.mark.parametrize(
    "args, name",
    [
        ((-1, 10), "successes"),
        ((11, 10), "successes"),
        ((0, -1), "trials"),
        ((1, float("nan")), "trials"),
        ((1, 10, 1.5), "confidence"),
        (([1, 2], [3, 4, 5]), "successes"),
    ],
)
def test_wilson_validation(args: tuple, name: str) -> None:
    with pytest.raises(FaultError, match=f"^{name}"):
        wilson_interval(*args)


# --------------------------------------------------------------------------- importance sampling


def test_defensive_mixture_hand() -> None:
    scores = [0.0, 2.0, 5.0, 3.0]
    a = 0.2
    q = defensive_mixture(scores, a)
    expected = [(1 - a) * s / 10.0 + a / 4 for s in scores]
    assert q.tolist() == pytest.approx(expected, abs=1e-15)
    assert defensive_mixture([0, 0, 0, 0], 0.3).tolist() == [0.25] * 4
    assert defensive_mixture(scores, 0.0).tolist() == pytest.approx([0.0, 0.2, 0.5, 0.3])
    assert defensive_mixture(scores, 1.0).tolist() == pytest.approx([0.25] * 4)
    assert defensive_mixture(np.ones((2, 3)), 0.5).shape == (2, 3)


@settings(max_examples=80, deadline=None)
@given(
    scores=st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=200),
    a=st.floats(min_value=0.0, max_value=1.0),
)
def test_defensive_mixture_properties(scores: list[float], a: float) -> None:
    q = defensive_mixture(scores, a)
    N = len(scores)
    assert math.fsum(q.tolist()) == pytest.approx(1.0, abs=1e-9)
    assert q.min() >= a / N * (1 - 1e-12)
    total = math.fsum(scores)
    if total > 0:
        # proportional part: q - a/N is proportional to the scores
        assert (q - a / N).tolist() == pytest.approx([(1 - a) * (s / total) for s in scores], abs=1e-12)


def test_defensive_mixture_validation() -> None:
    with pytest.raises(FaultError, match=r"^scores"):
        defensive_mixture([1.0, -0.5])
    with pytest.raises(FaultError, match=r"^scores"):
        defensive_mixture([])
    with pytest.raises(FaultError, match=r"^scores"):
        defensive_mixture([1.0, float("inf")])
    with pytest.raises(FaultError, match=r"^uniform_share"):
        defensive_mixture([1.0, 2.0], 1.5)


def test_importance_weights_hand() -> None:
    q = np.array([0.1, 0.2, 0.3, 0.4])
    assert importance_weights(q).tolist() == pytest.approx([2.5, 1.25, 1 / 1.2, 0.625])
    assert importance_weights([0.001, 0.5], population=1000).tolist() == pytest.approx([1.0, 0.002])
    with pytest.raises(FaultError, match=r"^q must be in"):
        importance_weights([0.0, 1.0])
    with pytest.raises(FaultError, match=r"^q must sum to 1"):
        importance_weights([0.2, 0.2])
    with pytest.raises(FaultError, match=r"^population"):
        importance_weights([0.2], population=0)


def test_importance_estimate_hand() -> None:
    f = [1, 0, 1, 1, 0, 0.5]
    w = [0.3, 2.0, 0.7, 1.1, 0.9, 1.6]
    y = [fi * wi for fi, wi in zip(f, w, strict=True)]
    mean = math.fsum(y) / len(y)
    half = Z95 * statistics.stdev(y) / math.sqrt(len(y))
    e = importance_estimate(f, w)
    assert isinstance(e, Estimate)
    assert (e.value, e.low, e.high) == pytest.approx((mean, mean - half, mean + half), abs=1e-12)
    assert e.n == 6
    assert e.ess == pytest.approx(math.fsum(w) ** 2 / math.fsum(x * x for x in w), abs=1e-12)

    sn = importance_estimate(f, w, self_normalized=True)
    sn_value = math.fsum(y) / math.fsum(w)
    sn_sd = math.sqrt(math.fsum(wi**2 * (fi - sn_value) ** 2 for fi, wi in zip(f, w, strict=True))) / math.fsum(w)
    assert (sn.value, sn.low, sn.high) == pytest.approx((sn_value, sn_value - Z95 * sn_sd, sn_value + Z95 * sn_sd))

    # equal weights: ESS = n, and the estimate is the plain mean
    eq = importance_estimate([1, 0, 0, 1, 1], [1, 1, 1, 1, 1])
    assert eq.value == pytest.approx(0.6) and eq.ess == pytest.approx(5.0)


def test_importance_estimate_clip_and_single_sample() -> None:
    e = importance_estimate([1, 0, 0, 0], [3.0, 0.1, 0.1, 0.1], clip=True)
    assert 0.0 <= e.low <= e.high <= 1.0
    assert e.value == pytest.approx(0.75)  # the value itself is not clipped
    one = importance_estimate([1.0], [0.5])
    assert one.value == 0.5 and one.low == -math.inf and one.high == math.inf
    clipped = importance_estimate([1.0], [0.5], clip=True)
    assert (clipped.low, clipped.high) == (0.0, 1.0)


def test_importance_estimate_validation() -> None:
    with pytest.raises(FaultError, match=r"^values and weights"):
        importance_estimate([1, 0], [1, 1, 1])
    with pytest.raises(FaultError, match=r"^weights"):
        importance_estimate([1, 0], [1, -1])
    with pytest.raises(FaultError, match=r"^values"):
        importance_estimate([1, float("nan")], [1, 1])
    with pytest.raises(FaultError, match=r"^values"):
        importance_estimate([], [])
    with pytest.raises(FaultError, match=r"^confidence"):
        importance_estimate([1, 0], [1, 1], confidence=2)
    with pytest.raises(FaultError, match=r"^weights"):
        importance_estimate([1, 0], [0, 0], self_normalized=True)


def discrete_space(missed: int = 0) -> dict:
    """1,000 elements, 30 of them failures (truth 0.03); the scores concentrate on the failures,
    except ``missed`` failures whose score looks like a non-failure's."""
    rng = np.random.default_rng(2023)
    N = 1000
    fail = rng.choice(N, 30, replace=False)
    f = np.zeros(N)
    f[fail] = 1.0
    scores = rng.exponential(0.05, N)
    found = fail[: 30 - missed]
    scores[found] = rng.uniform(0.5, 3.0, found.size)
    q = defensive_mixture(scores, 0.1)
    return {"N": N, "f": f, "q": q, "w": importance_weights(q), "truth": 0.03}


def simulate(space: dict, reps: int = 1500, n: int = 200) -> tuple[np.ndarray, list[Estimate], float]:
    N, f, q, w, truth = (space[k] for k in ("N", "f", "q", "w", "truth"))
    idx = np.random.default_rng(7).choice(N, size=(reps, n), p=q)
    estimates = [importance_estimate(f[row], w[row]) for row in idx]
    # exact variance of one draw of w f under q, hence the standard error of the mean of all estimates
    var_one = float(np.sum(q * (w * f) ** 2) - truth**2)
    return idx, estimates, math.sqrt(var_one / n / reps)


def test_importance_identity_exact() -> None:
    """E_q[w f] = sum_i q_i (1 / (N q_i)) f_i = mean(f): the estimator's expectation, summed exactly."""
    space = discrete_space(missed=6)
    q, w, f = space["q"], space["w"], space["f"]
    assert math.fsum((q * w * f).tolist()) == pytest.approx(0.03, abs=1e-12)
    assert math.fsum((q * w).tolist()) == pytest.approx(1.0, abs=1e-12)


def test_importance_estimate_unbiased_and_covers() -> None:
    space = discrete_space()
    f, q, w, truth = (space[k] for k in ("f", "q", "w", "truth"))
    idx, estimates, se_mean = simulate(space)
    values = np.array([e.value for e in estimates])
    assert abs(values.mean() - truth) < 4 * se_mean
    assert abs(values.mean() - truth) < 0.0005  # tight in absolute terms too

    covered = np.mean([e.low <= truth <= e.high for e in estimates])
    assert covered >= 0.90, covered  # 0.947 with these seeds

    # the proposal pays off: one draw of w f has far less variance than uniform sampling's Bernoulli(0.03)
    assert float(np.sum(q * (w * f) ** 2) - truth**2) < 0.1 * truth * (1 - truth)
    # ESS by hand for one repetition
    row = idx[0]
    assert estimates[0].ess == pytest.approx(w[row].sum() ** 2 / (w[row] ** 2).sum())

    sn = [importance_estimate(f[row], w[row], self_normalized=True) for row in idx[:500]]
    assert abs(np.mean([e.value for e in sn]) - truth) < 0.002  # consistent; small bias at n = 200
    assert np.mean([e.low <= truth <= e.high for e in sn]) >= 0.88


def test_importance_estimate_unbiased_with_blind_spot() -> None:
    """6 of 30 failures are missed by the scores: only the uniform share (q = 1e-4 each) reaches them.
    The estimate stays unbiased; the CLT interval then under-covers (about 72% here, see the
    importance_estimate docstring), which is why the uniform share must stay > 0 and n large."""
    space = discrete_space(missed=6)
    _, estimates, se_mean = simulate(space)
    values = np.array([e.value for e in estimates])
    assert abs(values.mean() - space["truth"]) < 4 * se_mean


# --------------------------------------------------------------------------- stratified estimate


def test_combine_strata_one_stratum_is_plain_proportion() -> None:
    e = combine_strata([30], [200], [5000])
    assert e.value == pytest.approx(30 / 200)
    half = Z95 * math.sqrt((5000 - 200) / (5000 - 1) * 0.15 * 0.85 / 200)
    assert (e.low, e.high) == pytest.approx((0.15 - half, 0.15 + half))
    assert e.n == 200 and e.ess == pytest.approx(200)


def test_combine_strata_two_strata_hand() -> None:
    k, n, N = [12, 3], [150, 100], [2000, 6000]
    W = [2000 / 8000, 6000 / 8000]
    p = [12 / 150, 3 / 100]
    value = W[0] * p[0] + W[1] * p[1]
    var = (
        W[0] ** 2 * (2000 - 150) / (2000 - 1) * p[0] * (1 - p[0]) / 150
        + W[1] ** 2 * (6000 - 100) / (6000 - 1) * p[1] * (1 - p[1]) / 100
    )
    e = combine_strata(k, n, N, confidence=0.99)
    assert e.value == pytest.approx(value, abs=1e-15)
    assert e.low == pytest.approx(value - Z99 * math.sqrt(var), abs=1e-12)
    assert e.high == pytest.approx(value + Z99 * math.sqrt(var), abs=1e-12)
    assert e.n == 250
    assert e.ess == pytest.approx(8000**2 / (2000**2 / 150 + 6000**2 / 100))


def test_combine_strata_exhaustive_and_empty_strata() -> None:
    # an exhaustively known stratum (e.g. data-aware masked faults: 0 failures out of all 4000) adds
    # weight but no variance; an empty stratum is ignored
    e = combine_strata([0, 9, 0], [4000, 90, 0], [4000, 1000, 0])
    assert e.value == pytest.approx(1000 / 5000 * 9 / 90)
    half = Z95 * (1000 / 5000) * math.sqrt((1000 - 90) / (1000 - 1) * 0.1 * 0.9 / 90)
    assert (e.low, e.high) == pytest.approx((e.value - half, e.value + half))
    # all strata exhaustive: a point
    point = combine_strata([3, 1], [10, 1], [10, 1])
    assert point.value == pytest.approx(4 / 11) and point.low == point.high == point.value
    assert point.n == 11 and point.ess == pytest.approx(11.0)


def test_combine_strata_simulation_variance_and_coverage() -> None:
    """Sampling without replacement inside strata: the FPC variance formula matches the spread."""
    rng = np.random.default_rng(99)
    N = np.array([400, 1000, 200])
    K = np.array([40, 300, 10])  # true failures per stratum; the first K_h elements fail
    n = np.array([100, 150, 100])
    truth = K.sum() / N.sum()
    reps = 1500
    k = np.stack(
        [(rng.random((reps, Nh)).argsort(axis=1)[:, :nh] < Kh).sum(axis=1) for Nh, Kh, nh in zip(N, K, n, strict=True)], axis=1
    )
    est = [combine_strata(row, n, N) for row in k]
    values = np.array([e.value for e in est])
    P = K / N
    W = N / N.sum()
    var_true = float(np.sum(W**2 * (N - n) / (N - 1) * P * (1 - P) / n))  # Cochran, exact for this design
    assert values.mean() == pytest.approx(truth, abs=4 * math.sqrt(var_true / reps))
    assert values.var(ddof=1) == pytest.approx(var_true, rel=0.1)
    assert np.mean([e.low <= truth <= e.high for e in est]) >= 0.92


@pytest.mark.parametrize(
    "args, name",
    [
        (([1], [10], [5]), "trials"),
        (([11], [10], [50]), "successes"),
        (([0, 1], [0, 10], [5, 50]), "trials must be >= 1"),
        (([1, 2], [10], [50, 60]), "successes, trials and populations"),
        (([0], [0], [0]), "populations"),
        (([1], [10], [-50]), "populations"),
        (([1], [10], [50], 0.0), "confidence"),
    ],
)
def test_combine_strata_validation(args: tuple, name: str) -> None:
    with pytest.raises(FaultError, match=f"^{name}"):
        combine_strata(*args)


# --------------------------------------------------------------------------- data-aware


def test_bit_planes_against_struct() -> None:
    values = np.array([1.0, -2.5, 0.0, 3.1e-5, -1e30, float("inf")], dtype=np.float32)
    planes = bit_planes(values)
    assert planes.shape == (6, 32) and planes.dtype == np.uint8
    for v, row in zip(values.tolist(), planes, strict=True):
        (word,) = struct.unpack("<I", struct.pack("<f", v))
        assert row.tolist() == [(word >> b) & 1 for b in range(32)]
    assert bit_planes(np.array([-1], dtype=np.int8)).tolist() == [[1] * 8]
    assert bit_planes(np.array([5], dtype=np.uint16))[0, :4].tolist() == [1, 0, 1, 0]
    assert bit_planes(np.float64([1.0])).shape == (1, 64)
    with pytest.raises(FaultError, match=r"^words"):
        bit_planes(np.array(["a"]))


def test_data_aware_masked_and_population() -> None:
    stored = np.array([0, 1, 1, 0, 1])
    assert data_aware_masked(stored, 0).tolist() == [True, False, False, True, False]
    assert data_aware_masked(stored, [1, 1, 0, 0, 1]).tolist() == [False, True, False, True, True]
    assert data_aware_population(stored, 1) == 2
    assert data_aware_population(stored, 0) == 3

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, size=(64, 9)).astype(np.float32)
    planes = bit_planes(w).reshape(-1, 32)
    sa0 = data_aware_population(planes, 0, axis=0)
    sa1 = data_aware_population(planes, 1, axis=0)
    # hand count: SA-v needs simulating where the bit differs from v
    assert sa0.tolist() == [int(planes[:, b].sum()) for b in range(32)]
    assert sa1.tolist() == [int((planes[:, b] == 0).sum()) for b in range(32)]
    assert (sa0 + sa1).tolist() == [planes.shape[0]] * 32  # exactly half the stuck-at universe is masked
    assert sa0[30] == 0 and sa1[30] == w.size  # |w| < 2: exponent MSB is 0 everywhere
    assert data_aware_population(planes, 0) + data_aware_population(planes, 1) == planes.size


def test_data_aware_validation() -> None:
    with pytest.raises(FaultError, match=r"^stored_bit"):
        data_aware_masked([0, 2], 1)
    with pytest.raises(FaultError, match=r"^stuck_value"):
        data_aware_masked([0, 1], 3)
    with pytest.raises(FaultError, match=r"^stored_bit"):
        data_aware_masked([0.5, 1.0], 1)
    with pytest.raises(FaultError, match=r"^stuck_value"):
        data_aware_masked([0, 1, 1], [0, 1])
