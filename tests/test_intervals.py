"""resil's interval rule for means of per-scenario fractions, differences between campaigns and the
betting confidence sequence, against independent computations (scipy.stats, formulas written out
by hand) and a seeded coverage study on synthetic scenarios with rare catastrophes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from resil.errors import FaultError
from resil.statistics import (
    confidence_sequence,
    difference_estimate,
    scenario_estimate,
    scenarios_to_resolve,
    t_interval,
    unseen_share,
    wilson_interval,
)

FIXED = np.array([0.97, 0.965, 0.972, 0.968, 0.91, 0.97, 0.969, 0.971, 0.966, 0.97, 0.973, 0.964])


def test_t_interval_matches_scipy_and_the_finite_population_correction_by_hand() -> None:
    low, high = stats.t.interval(0.95, FIXED.size - 1, loc=FIXED.mean(), scale=stats.sem(FIXED))
    assert t_interval(FIXED) == pytest.approx((low, high), abs=1e-12)
    big_n = 50
    half = (high - low) / 2 * math.sqrt((big_n - FIXED.size) / (big_n - 1))
    assert t_interval(FIXED, population=big_n) == pytest.approx((FIXED.mean() - half, FIXED.mean() + half), abs=1e-12)


@pytest.mark.parametrize("n", [1, 5, 40, 1000])
def test_unseen_share_is_the_clopper_pearson_bound_for_zero_of_n(n: int) -> None:
    # Clopper-Pearson upper end for 0 successes in n at one-sided level alpha/2: the Beta(1, n) quantile
    assert unseen_share(n, 0.95) == pytest.approx(stats.beta.ppf(0.975, 1, n), rel=1e-10)


def test_unseen_share_without_replacement_follows_the_hypergeometric_distribution() -> None:
    big_n, n = 200, 30
    k = round(unseen_share(n, 0.95, population=big_n) * big_n)
    assert stats.hypergeom.pmf(0, big_n, k, n) >= 0.025 > stats.hypergeom.pmf(0, big_n, k + 1, n)
    assert unseen_share(big_n, 0.95, population=big_n) == 0.0  # everything seen


def test_scenario_estimate_is_t_widened_to_what_n_scenarios_cannot_rule_out() -> None:
    e = scenario_estimate(FIXED)
    u = stats.beta.ppf(0.975, 1, FIXED.size)
    m = FIXED.mean()
    low, high = stats.t.interval(0.95, FIXED.size - 1, loc=m, scale=stats.sem(FIXED))
    assert (e.method, e.n) == ("t", FIXED.size)
    assert e.value == pytest.approx(m)
    assert e.low == pytest.approx(min(low, (1 - u) * m)) and e.high == pytest.approx(max(high, (1 - u) * m + u))


def test_a_sample_without_spread_keeps_the_width_its_size_cannot_rule_out() -> None:
    e = scenario_estimate([0.98] * 40)
    u = stats.beta.ppf(0.975, 1, 40)
    assert e.high - e.low == pytest.approx(u)  # never zero width
    assert e.low == pytest.approx(0.98 * (1 - u))
    wide = scenario_estimate([0.98] * 4000)
    assert wide.high - wide.low == pytest.approx(stats.beta.ppf(0.975, 1, 4000))


def test_all_or_nothing_scenarios_get_the_wilson_interval() -> None:
    x = [0, 1, 0, 0, 0, 1, 0, 0, 0, 0]
    e = scenario_estimate(x)
    assert e.method == "wilson" and (e.low, e.high) == pytest.approx(wilson_interval(2, 10))
    single = scenario_estimate([0.0, 0.3, 0.0, 0.0], single_fault=True)
    assert single.method == "wilson" and (single.low, single.high) == pytest.approx(wilson_interval(0.3, 4))


def test_paired_difference_is_the_rule_on_the_differences_mapped_to_unit_interval() -> None:
    rng = np.random.default_rng(3)
    a = np.clip(rng.normal(0.9, 0.02, 60), 0, 1)
    b = np.clip(a - rng.normal(0.03, 0.01, 60), 0, 1)
    d = difference_estimate(a, b, paired=True)
    y = (a - b + 1) / 2
    u = stats.beta.ppf(0.975, 1, 60)
    low, high = stats.t.interval(0.95, 59, loc=y.mean(), scale=stats.sem(y))
    low, high = min(low, (1 - u) * y.mean()), max(high, (1 - u) * y.mean() + u)
    assert d.value == pytest.approx(a.mean() - b.mean())
    assert (d.low, d.high) == pytest.approx((2 * low - 1, 2 * high - 1))


def test_unpaired_difference_combines_the_two_intervals_at_bonferroni_level() -> None:
    a, b = FIXED, FIXED[::-1] * 0.9
    d = difference_estimate(a, b)
    ea, eb = scenario_estimate(a, 0.975), scenario_estimate(b, 0.975)
    assert (d.low, d.high) == pytest.approx((ea.low - eb.high, ea.high - eb.low))
    with pytest.raises(FaultError, match="as many scenarios"):
        difference_estimate(a, b[:3], paired=True)


def test_scenarios_to_resolve_matches_the_closed_form_for_samples_without_spread() -> None:
    # no spread: only the unseen share limits; the interval of d excludes 0 once u(n) (1 + d) < d
    a, b, d = [0.95] * 30, [0.94] * 30, 0.02
    n = scenarios_to_resolve(a, b, d, paired=True)
    by_hand = math.floor(math.log(0.025) / math.log(1 - d / (1 + d))) + 1
    assert n == by_hand
    assert scenarios_to_resolve(a, b, 0.02) > n  # unpaired needs more


def log_capital_by_hand(x: list[float], m: float, alpha: float) -> float:
    """max_t log K_t(m) of Waudby-Smith & Ramdas (2024, Theorem 3), written as a plain loop."""
    mus, var_sum, x_sum = [], 0.0, 0.0
    k_up = k_down = 1.0
    best = -math.inf
    var_prev = 0.25
    for t, xi in enumerate(x, start=1):
        lam = math.sqrt(2 * math.log(2 / alpha) / (var_prev * t * math.log(1 + t)))
        k_up *= 1 + min(lam, 0.5 / m) * (xi - m)
        k_down *= 1 - min(lam, 0.5 / (1 - m)) * (xi - m)
        best = max(best, math.log(0.5 * k_up + 0.5 * k_down))
        x_sum += xi
        mu = (0.5 + x_sum) / (t + 1)
        mus.append(mu)
        var_sum += (xi - mu) ** 2
        var_prev = (0.25 + var_sum) / (t + 1)
    return best


def test_confidence_sequence_keeps_exactly_the_means_its_capital_does_not_reject() -> None:
    x = [0.2, 0.9, 0.4, 0.45, 0.5, 0.7, 0.1, 0.55] * 5
    low, high = confidence_sequence(x, 0.9)
    threshold = math.log(1 / 0.1)
    assert log_capital_by_hand(x, low[-1] + 1e-6, 0.1) < threshold < log_capital_by_hand(x, low[-1] - 2e-3, 0.1)
    assert log_capital_by_hand(x, high[-1] - 1e-6, 0.1) < threshold < log_capital_by_hand(x, high[-1] + 2e-3, 0.1)


def rare_catastrophes(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
    """Accuracy per scenario: mostly 0.97 +- 0.004, a share of catastrophic scenarios at 5-30 %."""
    typical = np.clip(rng.normal(0.97, 0.004, n), 0, 1)
    return np.where(rng.random(n) < share, rng.uniform(0.05, 0.30, n), typical)


@pytest.mark.parametrize("share", [0.0, 0.005, 0.02, 0.1])
def test_coverage_smoke_with_rare_catastrophes(share: float) -> None:
    truth = (1 - share) * 0.97 + share * 0.175
    rng = np.random.default_rng(11)
    reps, n = 300, 40
    cover = t_cover = 0
    for _ in range(reps):
        x = rare_catastrophes(rng, n, share)
        e = scenario_estimate(x)
        cover += e.low <= truth <= e.high
        low, high = t_interval(x)
        t_cover += low <= truth <= high
    assert cover / reps >= 0.93
    if share in (0.005, 0.02):
        assert t_cover / reps < 0.8  # the trap the rule avoids: the t interval alone misses the unseen catastrophes


def test_confidence_sequence_covers_uniformly_over_time() -> None:
    rng = np.random.default_rng(5)
    misses = 0
    for _ in range(100):
        x = rare_catastrophes(rng, 300, 0.02)
        low, high = confidence_sequence(x)
        truth = 0.98 * 0.97 + 0.02 * 0.175
        misses += bool(np.any((low > truth) | (high < truth)))  # at any time, not only at the end
    assert misses <= 5


def test_bad_values_are_refused() -> None:
    with pytest.raises(FaultError, match=r"\[0, 1\]"):
        scenario_estimate([0.5, 1.2])
    with pytest.raises(FaultError, match="population"):
        scenario_estimate([0.5, 0.6], population=1)
    with pytest.raises(FaultError, match="difference"):
        scenarios_to_resolve([0.5], [0.4], 0.0)


def _percentile_bootstrap(x: np.ndarray, reps: int = 20_000, seed: int = 7) -> tuple[float, float]:
    """The 95% percentile bootstrap of the mean, written out by hand: resample scenarios with replacement."""
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(reps, x.size))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


SPREAD = 0.55 + 0.35 * np.sin(np.arange(300) * 1.7)  # fixed per-scenario accuracies with a wide spread


def test_the_interval_agrees_with_a_percentile_bootstrap_by_hand_on_data_with_spread() -> None:
    e = scenario_estimate(SPREAD)
    low, high = _percentile_bootstrap(SPREAD)
    half = (high - low) / 2
    assert e.method == "t"
    assert abs(e.low - low) < 0.1 * half and abs(e.high - high) < 0.1 * half


def test_the_paired_difference_agrees_with_a_bootstrap_of_paired_differences_by_hand() -> None:
    b = 0.5 + 0.35 * np.sin(np.arange(300) * 0.3)  # differences with a wide spread: the t part decides
    e = difference_estimate(SPREAD, b, paired=True)
    low, high = _percentile_bootstrap(SPREAD - b)
    half = (high - low) / 2
    assert e.value == pytest.approx(float((SPREAD - b).mean()))
    assert abs(e.low - low) < 0.1 * half and abs(e.high - high) < 0.1 * half


def test_where_differences_barely_vary_the_floor_makes_the_interval_wider_than_the_bootstrap() -> None:
    b = SPREAD - 0.04 + 0.003 * np.cos(np.arange(300) * 0.9)  # a near-constant shift: the bootstrap is very narrow
    e = difference_estimate(SPREAD, b, paired=True)
    low, high = _percentile_bootstrap(SPREAD - b)
    u = stats.beta.ppf(0.975, 1, 300)  # what 300 scenarios cannot rule out, on the (d + 1) / 2 scale
    m = float(((SPREAD - b + 1) / 2).mean())
    assert e.low < low and e.high > high
    assert e.low == pytest.approx(2 * (1 - u) * m - 1) and e.high == pytest.approx(2 * ((1 - u) * m + u) - 1)
