"""Statistics for fault-injection campaigns: sample sizes, intervals and estimators.

Pure numpy functions (no torch):

- :func:`leveugle_sample_size`, :func:`stratified_sample_sizes`: how many faults to inject for a
  margin and confidence (statistical fault injection, Leveugle et al., DATE 2009).
- :func:`wilson_interval`, :func:`wilson_margin`: binomial intervals for critical-fault rates.
- :func:`scenario_estimate`: the mean of per-scenario fractions (accuracy, failure share) with
  resil's one interval rule (Wilson for all-or-nothing scenarios, else a t interval over
  scenarios that keeps what n scenarios cannot rule out; a betting confidence sequence when the
  campaign stopped on its data); :func:`difference_estimate` and :func:`scenarios_to_resolve`
  compare two campaigns with it.
- :func:`combine_strata`: a stratified (layer-wise, layer x bit) estimate of a vulnerability factor.
- :func:`defensive_mixture`, :func:`importance_weights`, :func:`importance_estimate`: unbiased
  failure rates from faults drawn by sensitivity (ISimDL-style importance sampling).
- :func:`bit_planes`, :func:`data_aware_masked`, :func:`data_aware_population`: stuck-at faults
  whose outcome is known without simulation (data-aware SFI, Ruospo et al., DATE 2023).

Example:
    >>> from resil.statistics import leveugle_sample_size, wilson_interval
    >>> leveugle_sample_size(float("inf"), margin=0.05, confidence=0.95)
    385
    >>> low, high = wilson_interval(3, 100)
    >>> print(f"{low:.4f} {high:.4f}")
    0.0103 0.0845
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import FaultError

__all__ = [
    "INTERVALS",
    "Estimate",
    "bit_planes",
    "combine_strata",
    "confidence_sequence",
    "data_aware_masked",
    "data_aware_population",
    "defensive_mixture",
    "difference_estimate",
    "importance_estimate",
    "importance_weights",
    "leveugle_sample_size",
    "normal_quantile",
    "scenario_estimate",
    "scenarios_to_resolve",
    "sequence_interval",
    "stratified_sample_sizes",
    "t_interval",
    "unseen_share",
    "wilson_interval",
    "wilson_margin",
]

K = TypeVar("K", bound=Hashable)
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a two-sided confidence interval.

    Attributes:
        value: the estimate.
        low: lower end of the interval.
        high: upper end of the interval.
        n: number of samples (simulated faults) behind it.
        ess: effective sample size, Kish's (sum w)^2 / sum(w^2) of the per-sample weights
            (equals ``n`` for equally weighted samples).
        method: which interval it is (a key of :data:`INTERVALS`, e.g. ``"t"``, ``"wilson"``).

    Example:
        >>> e = Estimate(value=0.1, low=0.05, high=0.15, n=400, ess=400.0)
        >>> round(e.margin, 3)
        0.05
    """

    value: float
    low: float
    high: float
    n: int
    ess: float
    method: str = ""

    @property
    def margin(self) -> float:
        """Half the width of the interval."""
        return (self.high - self.low) / 2


# --------------------------------------------------------------------------- validation


def _check_fraction(name: str, value: float, *, closed: bool = False) -> float:
    """Return ``value`` as float if it lies in (0, 1) (or [0, 1] when ``closed``), else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise FaultError(f"{name} must be a number, got {value!r}")
    v = float(value)
    ok = 0.0 <= v <= 1.0 if closed else 0.0 < v < 1.0
    if not ok:
        interval = "[0, 1]" if closed else "(0, 1)"
        raise FaultError(f"{name} must be in {interval}, got {value!r}")
    return v


def _as_float_array(name: str, values: ArrayLike) -> FloatArray:
    """Convert to a finite float64 array or raise naming the argument."""
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FaultError(f"{name} must be numeric, got {values!r}") from exc
    if not np.all(np.isfinite(a)):
        raise FaultError(f"{name} must be finite (no NaN or inf)")
    return a


def _as_vector(name: str, values: ArrayLike) -> FloatArray:
    a = _as_float_array(name, values)
    if a.ndim != 1:
        raise FaultError(f"{name} must be one-dimensional, got shape {a.shape}")
    if a.size == 0:
        raise FaultError(f"{name} must not be empty")
    return a


def normal_quantile(confidence: float) -> float:
    """Two-sided standard normal quantile t with P(|Z| <= t) = ``confidence``.

    Example:
        >>> round(normal_quantile(0.95), 4), round(normal_quantile(0.99), 4)
        (1.96, 2.5758)
    """
    c = _check_fraction("confidence", confidence)
    return NormalDist().inv_cdf(0.5 + c / 2)


# --------------------------------------------------------------------------- sample sizes


def leveugle_sample_size(
    population: int | float,
    margin: float = 0.01,
    confidence: float = 0.99,
    p: float = 0.5,
    *,
    t: float | None = None,
) -> int:
    """Number of faults to inject so the failure rate is known within ``margin`` (Leveugle, DATE 2009).

    n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p))), rounded up; for an infinite population
    n = t^2 p (1 - p) / e^2. ``p = 0.5`` is the conservative (largest n) choice. The result
    never exceeds N.

    Args:
        population: N, the number of possible faults (a whole number >= 0, or ``float("inf")``).
        margin: e, the half-width of the interval, in (0, 1).
        confidence: two-sided confidence level in (0, 1); gives t = Phi^-1((1 + confidence) / 2).
        p: anticipated failure probability in (0, 1).
        t: use this quantile instead of the one from ``confidence`` (e.g. the rounded 2.58 of
            published tables).

    Returns:
        The sample size, rounded up (a result within a relative 1e-12 of an integer, i.e.
        floating-point noise, is treated as that integer).

    Example:
        >>> leveugle_sample_size(float("inf"))  # e = 1%, 99%: 16587.2 rounded up
        16588
        >>> leveugle_sample_size(float("inf"), t=2.58), leveugle_sample_size(2304, t=2.58)
        (16641, 2024)
    """
    if isinstance(population, bool) or not isinstance(population, (int, float, np.integer, np.floating)):
        raise FaultError(f"population must be a whole number or float('inf'), got {population!r}")
    big_n = float(population)
    if math.isnan(big_n) or big_n < 0 or (math.isfinite(big_n) and big_n != math.floor(big_n)):
        raise FaultError(f"population must be a whole number >= 0 or float('inf'), got {population!r}")
    e = _check_fraction("margin", margin)
    q = _check_fraction("p", p)
    if t is None:
        t = normal_quantile(confidence)
    else:
        _check_fraction("confidence", confidence)
        if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)) or not (
            math.isfinite(t) and t > 0
        ):
            raise FaultError(f"t must be a finite number > 0, got {t!r}")
        t = float(t)
    n_inf = t * t * q * (1 - q) / (e * e)
    n = n_inf if math.isinf(big_n) else big_n / (1 + (big_n - 1) / n_inf)
    size = math.ceil(n - n * 1e-12)
    return size if math.isinf(big_n) else min(size, int(big_n))


def stratified_sample_sizes(
    populations: Mapping[K, int],
    margin: float = 0.01,
    confidence: float = 0.99,
    p: float | Mapping[K, float] = 0.5,
    *,
    t: float | None = None,
) -> dict[K, int]:
    """Leveugle sample size per stratum (layer-wise or layer x bit SFI), capped at its population.

    Each stratum gets its own margin ``margin`` at ``confidence``. Pass ``p`` per stratum (a
    mapping) to use predicted failure probabilities, as data-aware SFI does; a stratum whose
    outcome is known exactly (e.g. masked stuck-at faults) should be left out and combined with
    trials equal to its population in :func:`combine_strata`.

    Args:
        populations: stratum key -> number of possible faults in it.
        margin: per-stratum margin e in (0, 1).
        confidence: two-sided confidence level in (0, 1).
        p: anticipated failure probability, one for all strata or one per stratum.
        t: optional quantile overriding ``confidence`` (see :func:`leveugle_sample_size`).

    Returns:
        Stratum key -> number of faults to inject there.

    Example:
        >>> stratified_sample_sizes({"conv1": 2304, "fc": 10**6, "bias": 10}, t=2.58)
        {'conv1': 2024, 'fc': 16369, 'bias': 10}
    """
    if not isinstance(populations, Mapping):
        raise FaultError(f"populations must be a mapping stratum -> population, got {type(populations).__name__}")
    if isinstance(p, Mapping):
        missing = [k for k in populations if k not in p]
        if missing:
            raise FaultError(f"p has no value for strata {missing!r}")
    sizes: dict[K, int] = {}
    for key, pop in populations.items():
        p_key = p[key] if isinstance(p, Mapping) else p
        try:
            sizes[key] = leveugle_sample_size(pop, margin, confidence, p_key, t=t)
        except FaultError as exc:
            raise FaultError(f"stratum {key!r}: {exc}") from None
    return sizes


# --------------------------------------------------------------------------- binomial intervals


def wilson_interval(
    successes: ArrayLike, trials: ArrayLike, confidence: float = 0.95
) -> tuple[FloatArray | float, FloatArray | float]:
    """Wilson score interval for a binomial proportion, vectorized over arrays.

    Broadcasts ``successes`` against ``trials``; scalars in give floats out. Zero trials give
    the uninformative interval (0, 1). Bounds are exact at the edges: 0 successes give low = 0,
    all successes give high = 1.

    Args:
        successes: number of successes (e.g. critical faults), 0 <= successes <= trials.
        trials: number of trials (e.g. injected faults), >= 0.
        confidence: two-sided confidence level in (0, 1).

    Returns:
        ``(low, high)``.

    Example:
        >>> low, high = wilson_interval([0, 5, 10], [10, 10, 10])
        >>> low.round(4).tolist(), high.round(4).tolist()
        ([0.0, 0.2366, 0.7225], [0.2775, 0.7634, 1.0])
        >>> wilson_interval(0, 0)
        (0.0, 1.0)
    """
    k = _as_float_array("successes", successes)
    n = _as_float_array("trials", trials)
    try:
        k, n = np.broadcast_arrays(k, n)
    except ValueError as exc:
        raise FaultError(f"successes {k.shape} and trials {n.shape} do not broadcast") from exc
    if np.any(n < 0):
        raise FaultError("trials must be >= 0")
    if np.any(k < 0) or np.any(k > n):
        raise FaultError("successes must satisfy 0 <= successes <= trials")
    z = normal_quantile(confidence)
    empty = n == 0
    n_safe = np.where(empty, 1.0, n)
    phat = k / n_safe
    z2n = z * z / n_safe
    denom = 1 + z2n
    center = (phat + z2n / 2) / denom
    half = z * np.sqrt(phat * (1 - phat) / n_safe + z2n / (4 * n_safe)) / denom
    low = np.where(k == 0, 0.0, np.clip(center - half, 0.0, 1.0))
    high = np.where(k == n, 1.0, np.clip(center + half, 0.0, 1.0))
    low = np.where(empty, 0.0, low)
    high = np.where(empty, 1.0, high)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def wilson_margin(successes: ArrayLike, trials: ArrayLike, confidence: float = 0.95) -> FloatArray | float:
    """Half-width of the Wilson interval (see :func:`wilson_interval`).

    Example:
        >>> round(wilson_margin(50, 100), 4)
        0.0962
    """
    low, high = wilson_interval(successes, trials, confidence)
    return (high - low) / 2


# --------------------------------------------------------------------------- means of per-scenario fractions

#: what each interval method of an :class:`Estimate` is, as the reports say it
INTERVALS = {
    "wilson": "Wilson score interval over scenarios, each scenario's fraction counted as a pass/fail share",
    "t": "Student t over scenarios (finite population correction), never narrower than what n scenarios cannot "
         "rule out: a share 1 - (alpha/2)^(1/n) of unseen scenarios anywhere in [0, 1] (about 3.7/n at 95%)",
    "betting": "anytime-valid betting confidence sequence over scenarios (Waudby-Smith & Ramdas 2024), valid under "
               "stopping on the data",
    "stratified": "stratified normal interval over strata (finite population correction per stratum)",
    "importance": "CLT interval of the importance-weighted mean",
}


def _t_half(sd: float, n: int, confidence: float, population: float) -> float:
    """Half-width t_{n-1} sd / sqrt(n) sqrt((N - n) / (N - 1)) of the t interval (inf for n < 2)."""
    if n < 2:
        return math.inf
    from scipy.stats import t as student

    fpc = 1.0 if math.isinf(population) else math.sqrt(max(population - n, 0.0) / max(population - 1, 1.0))
    return float(student.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n) * fpc


def _check_population(population: float, n: int) -> float:
    if isinstance(population, bool) or not isinstance(population, (int, float, np.integer, np.floating)) or not population >= n:
        raise FaultError(f"population must be a number >= the number of values ({n}) or inf, got {population!r}")
    return float(population)


def t_interval(values: ArrayLike, confidence: float = 0.95, population: float = math.inf) -> tuple[float, float]:
    """Student-t interval for the mean of ``values``, with the finite population correction.

    mean +- t_{n-1} s / sqrt(n) sqrt((N - n) / (N - 1)) (s with ddof = 1) for n values drawn
    without replacement from N (``population``; inf: no correction). It uses the observed
    spread, so it is narrow when the values agree, and it collapses to a point when they are
    all equal: alone it assumes the sample shows every kind of value the population holds
    (see :func:`scenario_estimate` for the rule that does not).

    Example:
        >>> low, high = t_interval([0.9, 0.8, 0.85, 0.95])
        >>> print(f"{low:.4f} {high:.4f}")
        0.7723 0.9777
    """
    x = _as_vector("values", values)
    c = _check_fraction("confidence", confidence)
    big_n = _check_population(population, x.size)
    half = _t_half(float(x.std(ddof=1)) if x.size > 1 else 0.0, x.size, c, big_n)
    return float(x.mean()) - half, float(x.mean()) + half


def unseen_share(n: int, confidence: float = 0.95, population: float = math.inf) -> float:
    """The largest share of a population that n draws miss with probability alpha / 2.

    A kind of scenario holding a share u of the population is missed by n independent draws
    with probability (1 - u)^n, so u = 1 - (alpha/2)^(1/n) (the Clopper-Pearson upper bound for
    0 of n; about 3.7 / n at 95 %, the "rule of three"). For draws without replacement from N
    scenarios, the hypergeometric chance of missing K of them; n = N leaves nothing unseen.

    Example:
        >>> round(unseen_share(40), 4), round(unseen_share(40, population=100), 4), unseen_share(100, population=100)
        (0.0881, 0.06, 0.0)
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise FaultError(f"n must be an integer >= 1, got {n!r}")
    alpha = 1 - _check_fraction("confidence", confidence)
    big_n = _check_population(population, n)
    if math.isinf(big_n):
        return 1 - (alpha / 2) ** (1 / n)

    def log_miss(k: int) -> float:  # log P(none of k marked among N is drawn in n)
        return (math.lgamma(big_n - k + 1) - math.lgamma(big_n - k - n + 1)
                - math.lgamma(big_n + 1) + math.lgamma(big_n - n + 1))

    lo, hi = 0, int(big_n) - n  # log_miss(lo) >= log(alpha/2); find the largest such k
    if log_miss(hi) >= math.log(alpha / 2):
        return hi / big_n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if log_miss(mid) >= math.log(alpha / 2) else (lo, mid)
    return lo / big_n


def _rule(mean: float, sd: float, n: int, confidence: float, population: float, all_or_nothing: bool) -> tuple[float, float, str]:
    """The interval of :func:`scenario_estimate` from summary statistics."""
    if all_or_nothing:
        low, high = wilson_interval(mean * n, n, confidence)
        return float(low), float(high), "wilson"
    half = _t_half(sd, n, confidence, population)
    u = unseen_share(n, confidence, population)
    low = min(mean - half, (1 - u) * mean)
    high = max(mean + half, (1 - u) * mean + u)
    return max(0.0, low), min(1.0, high), "t"


def scenario_estimate(values: ArrayLike, confidence: float = 0.95, population: float = math.inf, *,
                      single_fault: bool = False, sequential: bool = False) -> Estimate:
    """The mean of per-scenario fractions in [0, 1] (accuracy, failure share) with resil's one interval rule.

    - ``sequential`` (the campaign stopped on its data): the betting confidence sequence
      (:func:`confidence_sequence`), valid whenever the campaign stopped;
    - single-fault scenarios, or fractions that are all 0 or 1 (each scenario all-or-nothing):
      the Wilson interval over scenarios;
    - otherwise the Student-t interval over scenarios (:func:`t_interval`, using their observed
      spread), never narrower than what the n scenarios cannot rule out: the interval of the
      mean if a share :func:`unseen_share` of scenarios never seen were anywhere in [0, 1], i.e.
      [(1 - u) m, (1 - u) m + u]. So a sample that shows no spread, e.g. because rare
      catastrophic scenarios were missed, still gets about 3.7/n of width, while a sample with
      a small spread gets a narrow interval once n is large.

    The rule was chosen by ``benchmarks/interval_coverage.py`` (coverage of candidates on
    real campaigns, see README). ``method`` names the interval (:data:`INTERVALS`), ``n`` the
    scenarios behind it.

    Args:
        values: per-scenario fractions in [0, 1], in scenario order.
        confidence: two-sided confidence level in (0, 1).
        population: scenarios the sample is drawn from without replacement (inf: with replacement).
        single_fault: the scenarios hold one fault each (outcomes are close to all-or-nothing).
        sequential: the number of scenarios was decided by looking at the outcomes.

    Example:
        >>> e = scenario_estimate([0.97] * 40)
        >>> print(f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}] {e.method} n={e.n}")
        0.970 [0.885, 0.973] t n=40
        >>> e = scenario_estimate([0.97, 0.975, 0.965] * 400)
        >>> print(f"[{e.low:.4f}, {e.high:.4f}] {e.method}")
        [0.9670, 0.9702] t
        >>> scenario_estimate([0, 1, 0, 0]).method
        'wilson'
    """
    x = _check_unit("values", values)
    c = _check_fraction("confidence", confidence)
    big_n = _check_population(population, x.size)
    m = float(x.mean())
    if sequential:
        low, high = sequence_interval(x, c)
        return Estimate(m, low, high, x.size, float(x.size), "betting")
    sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
    low, high, method = _rule(m, sd, x.size, c, big_n, single_fault or bool(np.all((x == 0) | (x == 1))))
    return Estimate(m, low, high, x.size, float(x.size), method)


def difference_estimate(a: ArrayLike, b: ArrayLike, confidence: float = 0.95, *, paired: bool = False,
                        single_fault: bool = False) -> Estimate:
    """The difference mean(a) - mean(b) of two campaigns' per-scenario fractions, with its interval.

    - ``paired`` (the campaigns share scenario ids, fault locations and inputs, so scenario i
      of one is scenario i of the other): :func:`scenario_estimate`'s rule on the per-scenario
      differences, mapped to [0, 1] as (d + 1) / 2;
    - unpaired: each mean's :func:`scenario_estimate` interval at 1 - alpha/2 (Bonferroni), and
      the difference interval [low_a - high_b, high_a - low_b].

    ``n`` is the smaller number of scenarios.

    Example:
        >>> a, b = [0.9, 0.92, 0.91, 0.93] * 50, [0.8, 0.83, 0.79, 0.82] * 50
        >>> p, u = difference_estimate(a, b, paired=True), difference_estimate(a, b)
        >>> print(f"{p.value:.3f} paired [{p.low:.3f}, {p.high:.3f}], unpaired [{u.low:.3f}, {u.high:.3f}]")
        0.105 paired [0.085, 0.121], unpaired [0.081, 0.124]
    """
    x, y = _check_unit("a", a), _check_unit("b", b)
    c = _check_fraction("confidence", confidence)
    if paired:
        if x.size != y.size:
            raise FaultError(f"paired differences need as many scenarios in a as in b, got {x.size} and {y.size}")
        e = scenario_estimate((x - y + 1) / 2, c)
        return Estimate(2 * e.value - 1, 2 * e.low - 1, 2 * e.high - 1, x.size, float(x.size), e.method)
    ea = scenario_estimate(x, 1 - (1 - c) / 2, single_fault=single_fault)
    eb = scenario_estimate(y, 1 - (1 - c) / 2, single_fault=single_fault)
    n = min(x.size, y.size)
    return Estimate(ea.value - eb.value, ea.low - eb.high, ea.high - eb.low, n, float(n), ea.method)


def scenarios_to_resolve(a: ArrayLike, b: ArrayLike, difference: float, confidence: float = 0.95, *, paired: bool = False,
                         single_fault: bool = False, limit: int = 10**7) -> int:
    """About how many scenarios per campaign :func:`difference_estimate` needs to exclude 0 for a
    true difference of ``difference`` (the sign does not matter), if the spreads stay as observed.

    The means are moved to differ by ``difference`` around their observed midpoint; the
    interval is then evaluated for growing n from the observed spread (per-scenario
    differences when ``paired``) until it excludes 0. Returns ``limit`` when even that is not enough.

    Example:
        >>> a, b = [0.9, 0.92, 0.91, 0.93] * 10, [0.91, 0.9, 0.92, 0.9] * 10
        >>> scenarios_to_resolve(a, b, 0.01, paired=True), scenarios_to_resolve(a, b, 0.01)
        (371, 441)
    """
    x, y = _check_unit("a", a), _check_unit("b", b)
    c = _check_fraction("confidence", confidence)
    d = abs(float(difference))
    if not 0 < d <= 1:
        raise FaultError(f"difference must be in (0, 1] in absolute value, got {difference!r}")
    if paired:
        sd = float(np.std(x - y, ddof=1)) / 2 if x.size > 1 else 0.5
        def resolved(n: int) -> bool:
            low, _, _ = _rule((d + 1) / 2, sd, n, c, math.inf, False)
            return low > 0.5
    else:
        mid = (float(x.mean()) + float(y.mean())) / 2
        ma = min(1.0, max(d, mid + d / 2))
        mb = ma - d
        sa, sb = (float(np.std(v, ddof=1)) if v.size > 1 else 0.5 for v in (x, y))
        half = 1 - (1 - c) / 2

        def resolved(n: int) -> bool:
            low_a = _rule(ma, sa, n, half, math.inf, single_fault)[0]
            high_b = _rule(mb, sb, n, half, math.inf, single_fault)[1]
            return low_a > high_b
    hi = 2
    while not resolved(hi):
        if hi >= limit:
            return limit
        hi = min(2 * hi, limit)
    lo = hi // 2
    while hi - lo > 1:
        mid_n = (lo + hi) // 2
        lo, hi = (lo, mid_n) if resolved(mid_n) else (mid_n, hi)
    return hi


def _bets(x: FloatArray, alpha: float) -> FloatArray:
    """The predictable plug-in bets lambda_t of Waudby-Smith & Ramdas (2024, eq. 27), before truncation."""
    t = np.arange(1, x.size + 1, dtype=np.float64)
    mu = (0.5 + np.cumsum(x)) / (t + 1)
    var = (0.25 + np.cumsum((x - mu) ** 2)) / (t + 1)
    var_before = np.concatenate([[0.25], var[:-1]])
    return np.sqrt(2 * math.log(2 / alpha) / (var_before * t * np.log1p(t)))


def _max_log_capital(x: FloatArray, lam: FloatArray, m: FloatArray, chunk: int = 2048) -> FloatArray:
    """Running maximum over t of log K_t(m), the hedged capital (Theorem 3, theta = 1/2, bets
    truncated at 1/2 of the admissible range), for every candidate mean ``m`` (rows) after each
    value (columns), computed in blocks of values to bound memory."""
    mm = m[:, None]
    up_cap, down_cap = 0.5 / np.maximum(mm, 1e-300), 0.5 / np.maximum(1 - mm, 1e-300)
    out = np.empty((m.size, x.size))
    log_up = log_down = np.zeros((m.size, 1))
    best = np.full((m.size, 1), -np.inf)
    for start in range(0, x.size, chunk):
        xs, ls = x[start:start + chunk], lam[start:start + chunk]
        log_up = log_up[:, -1:] + np.cumsum(np.log1p(np.minimum(ls, up_cap) * (xs - mm)), axis=1)
        log_down = log_down[:, -1:] + np.cumsum(np.log1p(-np.minimum(ls, down_cap) * (xs - mm)), axis=1)
        logk = np.logaddexp(log_up, log_down) + math.log(0.5)
        out[:, start:start + xs.size] = np.maximum(np.maximum.accumulate(logk, axis=1), best)
        best = out[:, start + xs.size - 1:start + xs.size]
    return out


def confidence_sequence(values: ArrayLike, confidence: float = 0.95) -> tuple[FloatArray, FloatArray]:
    """Anytime-valid confidence sequence for the mean of values in [0, 1], observed in order.

    The hedged-capital betting confidence sequence of Waudby-Smith & Ramdas ("Estimating means
    of bounded random variables by betting", JRSS-B 2024, Theorem 3; predictable plug-in bets
    lambda_t = sqrt(2 log(2/alpha) / (sigma_{t-1}^2 t log(1+t))) truncated at 1/2 of the
    admissible range; running intersection). With probability ``confidence`` the mean lies in
    every interval at once, so a campaign may look after each round and stop when the interval
    is narrow enough without spoiling coverage. It needs no normal approximation, adapts to the
    observed spread and keeps what n values cannot rule out. Ends are found on a grid of 1/800;
    the last interval is :func:`sequence_interval` (exact to 1e-9).

    Returns:
        ``(low, high)``: the ends after each value.

    Example:
        >>> low, high = confidence_sequence([0.5, 0.6, 0.4] * 100)
        >>> bool(low[-1] < 0.5 < high[-1]), bool(high[-1] - low[-1] < high[29] - low[29])
        (True, True)
    """
    x = _check_unit("values", values)
    alpha = 1 - _check_fraction("confidence", confidence)
    grid = np.unique(np.concatenate([np.linspace(0, 1, 801), [x.mean()]]))
    kept = _max_log_capital(x, _bets(x, alpha), grid) < math.log(1 / alpha)
    first = np.argmax(kept, axis=0)
    last = grid.size - 1 - np.argmax(kept[::-1], axis=0)
    lows, highs = grid[first], grid[last]
    lows[-1], highs[-1] = sequence_interval(x, confidence)
    return lows, highs


def sequence_interval(values: ArrayLike, confidence: float = 0.95) -> tuple[float, float]:
    """The last interval of :func:`confidence_sequence` (the means no time so far rejected), by
    bisection from the least rejected mean of a coarse grid (the set is an interval).

    Example:
        >>> low, high = sequence_interval([0.97] * 400)
        >>> print(f"{low:.4f} {high:.4f}")
        0.9524 0.9746
    """
    x = _check_unit("values", values)
    alpha = 1 - _check_fraction("confidence", confidence)
    threshold = math.log(1 / alpha)
    lam = _bets(x, alpha)

    def worst(m: FloatArray) -> FloatArray:
        return _max_log_capital(x, lam, m)[:, -1]

    coarse = np.linspace(0, 1, 101)
    centre = float(coarse[np.argmin(worst(coarse))])
    if worst(np.array([centre]))[0] >= threshold:  # cannot happen for data in [0, 1]
        return centre, centre
    ends = []
    for bound in (0.0, 1.0):
        inside, outside = centre, bound
        if worst(np.array([bound]))[0] < threshold:
            ends.append(bound)
            continue
        while abs(outside - inside) > 1e-9:
            mid = (inside + outside) / 2
            inside, outside = (mid, outside) if worst(np.array([mid]))[0] < threshold else (inside, mid)
        ends.append(inside)
    return ends[0], ends[1]


def _check_unit(name: str, values: ArrayLike) -> FloatArray:
    x = _as_vector(name, values)
    if np.any(x < 0) or np.any(x > 1):
        raise FaultError(f"{name} must lie in [0, 1]")
    return x


# --------------------------------------------------------------------------- stratified SFI


def combine_strata(
    successes: ArrayLike, trials: ArrayLike, populations: ArrayLike, confidence: float = 0.95
) -> Estimate:
    """Stratified estimate of a failure rate (vulnerability factor) from per-stratum counts.

    With W_h = N_h / N and p_h = k_h / n_h: value = sum_h W_h p_h and
    Var = sum_h W_h^2 (N_h - n_h) / (N_h - 1) p_h (1 - p_h) / n_h (finite population
    correction per stratum; an exhaustively injected stratum, n_h = N_h, adds no variance).
    The interval is the normal one, value +- t sqrt(Var), clipped to [0, 1]; like every Wald
    interval it collapses to a point when all p_h are 0 or 1. ``ess`` is Kish's effective
    sample size of the per-sample weights N_h / n_h, N^2 / sum_h N_h^2 / n_h.

    Args:
        successes: k_h, failures observed per stratum.
        trials: n_h, faults injected per stratum (>= 1 unless the stratum's population is 0).
        populations: N_h, possible faults per stratum (strata with N_h = 0 are ignored).
        confidence: two-sided confidence level in (0, 1).

    Returns:
        The combined :class:`Estimate` (``n`` = total trials).

    Example:
        >>> e = combine_strata(successes=[10, 0], trials=[100, 50], populations=[1000, 3000])
        >>> print(f"{e.value:.4f} [{e.low:.4f}, {e.high:.4f}] n={e.n} ess={e.ess:.1f}")
        0.0250 [0.0110, 0.0390] n=150 ess=84.2
    """
    k = _as_vector("successes", successes)
    n = _as_vector("trials", trials)
    big = _as_vector("populations", populations)
    if not (k.shape == n.shape == big.shape):
        raise FaultError(
            f"successes, trials and populations must have one entry per stratum, got lengths "
            f"{k.size}, {n.size}, {big.size}"
        )
    if np.any(big < 0):
        raise FaultError("populations must be >= 0")
    if np.any(n < 0) or np.any(n > big):
        raise FaultError("trials must satisfy 0 <= trials <= populations in every stratum")
    if np.any(k < 0) or np.any(k > n):
        raise FaultError("successes must satisfy 0 <= successes <= trials in every stratum")
    unsampled = np.flatnonzero((big > 0) & (n == 0))
    if unsampled.size:
        raise FaultError(f"trials must be >= 1 in strata with a population; strata {unsampled.tolist()} have 0")
    total = big.sum()
    if total <= 0:
        raise FaultError("populations must not all be 0")
    live = big > 0
    big, n, k = big[live], n[live], k[live]
    w = big / total
    phat = k / n
    fpc = np.where(big > 1, (big - n) / np.maximum(big - 1, 1), 0.0)
    var = float(np.sum(w * w * fpc * phat * (1 - phat) / n))
    value = float(np.sum(w * phat))
    half = normal_quantile(confidence) * math.sqrt(var)
    ess = float(total * total / np.sum(big * big / n))
    return Estimate(
        value=value,
        low=max(0.0, value - half),
        high=min(1.0, value + half),
        n=round(n.sum()),
        ess=ess,
        method="stratified",
    )


# --------------------------------------------------------------------------- importance sampling


def defensive_mixture(scores: ArrayLike, uniform_share: float = 0.1) -> FloatArray:
    """Defensive importance-sampling proposal q = (1 - a) s / sum(s) + a / N.

    Mixing in a share ``a`` of the uniform distribution keeps q >= a / N > 0 everywhere, so the
    weights p / q stay bounded by 1 / a (ISimDL's ``random_threshold`` tau). All-zero scores give
    the uniform distribution.

    Args:
        scores: non-negative sensitivities (any shape; N = number of elements).
        uniform_share: a in [0, 1]; a = 0 is pure proportional sampling (zero scores get q = 0).

    Returns:
        q, same shape as ``scores``, summing to 1.

    Example:
        >>> defensive_mixture([0, 1, 3], uniform_share=0.3).round(3).tolist()
        [0.1, 0.275, 0.625]
    """
    s = _as_float_array("scores", scores)
    a = _check_fraction("uniform_share", uniform_share, closed=True)
    if s.size == 0:
        raise FaultError("scores must not be empty")
    if np.any(s < 0):
        raise FaultError("scores must be >= 0 (use absolute sensitivities)")
    total = s.sum()
    if total == 0:
        return np.full(s.shape, 1.0 / s.size)
    return (1 - a) * (s / total) + a / s.size


def importance_weights(q: ArrayLike, *, population: int | None = None) -> FloatArray:
    """Importance weights p / q for a target p uniform over N elements.

    Args:
        q: proposal probabilities. Without ``population``: the whole distribution (N = q.size,
            must sum to 1). With ``population``: q of the drawn samples only.
        population: N, when ``q`` holds only the probabilities of the drawn samples.

    Returns:
        w = 1 / (N q), same shape as ``q``.

    Example:
        >>> q = defensive_mixture([0, 1, 3], uniform_share=0.3)
        >>> importance_weights(q).round(3).tolist()
        [3.333, 1.212, 0.533]
        >>> importance_weights([0.5, 0.25], population=4).tolist()
        [0.5, 1.0]
    """
    qa = _as_float_array("q", q)
    if qa.size == 0:
        raise FaultError("q must not be empty")
    if np.any(qa <= 0) or np.any(qa > 1):
        raise FaultError("q must be in (0, 1] everywhere; p / q is undefined where q = 0 (use uniform_share > 0)")
    if population is None:
        big_n = qa.size
        if abs(qa.sum() - 1.0) > 1e-6:
            raise FaultError(f"q must sum to 1 (got {qa.sum():.6g}); pass population= if q holds only the drawn samples")
    else:
        if isinstance(population, bool) or not isinstance(population, (int, np.integer)) or population < 1:
            raise FaultError(f"population must be an integer >= 1, got {population!r}")
        big_n = int(population)
    return 1.0 / (big_n * qa)


def importance_estimate(
    values: ArrayLike,
    weights: ArrayLike,
    confidence: float = 0.95,
    *,
    clip: bool = False,
    self_normalized: bool = False,
) -> Estimate:
    """Estimate E_p[f] from samples x_i ~ q with weights w_i = p(x_i) / q(x_i).

    The default estimator is the unbiased mean(w f), with the CLT interval
    mean +- t sd(w f) / sqrt(n) (sd with ddof = 1). ``self_normalized=True`` uses
    sum(w f) / sum(w) instead (consistent, slightly biased, invariant to the scale of w), with the
    delta-method variance sum(w^2 (f - value)^2) / sum(w)^2. One sample gives the interval
    (-inf, inf). ``ess`` is Kish's (sum w)^2 / sum(w^2).

    The estimate is unbiased for any proposal with q > 0 wherever f != 0, but the CLT interval
    needs every region of p's mass to be sampled: if the proposal nearly misses some failures
    (tiny q, large w), most runs never draw them and the interval under-covers. Keep a defensive
    uniform share (:func:`defensive_mixture`) and watch a low ``ess``.

    Args:
        values: f(x_i) per sample, e.g. a critical-fault indicator or failure fraction in [0, 1].
        weights: w_i >= 0, e.g. from :func:`importance_weights`.
        confidence: two-sided confidence level in (0, 1).
        clip: clip ``low`` and ``high`` to [0, 1] (for rates). The value itself is never clipped,
            so it stays unbiased; it may then fall outside the clipped interval.
        self_normalized: use the self-normalised estimator.

    Returns:
        An :class:`Estimate`.

    Example:
        >>> e = importance_estimate(values=[1, 0, 1, 0], weights=[0.5, 2.0, 0.5, 1.0])
        >>> print(f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}] n={e.n} ess={e.ess:.2f}")
        0.250 [-0.033, 0.533] n=4 ess=2.91
    """
    f = _as_vector("values", values)
    w = _as_vector("weights", weights)
    if f.shape != w.shape:
        raise FaultError(f"values and weights must have the same length, got {f.size} and {w.size}")
    if np.any(w < 0):
        raise FaultError("weights must be >= 0")
    z = normal_quantile(confidence)
    n = f.size
    w_sum = float(w.sum())
    w2_sum = float(np.dot(w, w))
    ess = w_sum * w_sum / w2_sum if w2_sum > 0 else 0.0
    if self_normalized:
        if w_sum == 0:
            raise FaultError("weights must not all be 0 for the self-normalised estimator")
        value = float(np.dot(w, f) / w_sum)
        sd = math.sqrt(float(np.sum(w * w * (f - value) ** 2))) / w_sum
    else:
        y = w * f
        value = float(y.mean())
        sd = float(y.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    half = z * sd if n > 1 else math.inf
    low, high = value - half, value + half
    if clip:
        low, high = min(max(low, 0.0), 1.0), min(max(high, 0.0), 1.0)
    return Estimate(value=value, low=low, high=high, n=n, ess=ess, method="importance")


# --------------------------------------------------------------------------- data-aware SFI


def bit_planes(words: ArrayLike) -> NDArray[np.uint8]:
    """Bits of each stored word: ``out[..., b]`` is bit b (0 = LSB; fp32 bit 31 = sign).

    Floats are read through their IEEE bit pattern (float16/32/64 -> 16/32/64 planes),
    integers as two's complement of their width.

    Args:
        words: a numpy array of floats or integers (e.g. ``weight.detach().numpy()``).

    Returns:
        uint8 array of shape ``words.shape + (width,)`` holding 0 or 1.

    Example:
        >>> bit_planes(np.float32([1.0]))[0, 23:32].tolist()  # exponent 127, sign 0
        [1, 1, 1, 1, 1, 1, 1, 0, 0]
    """
    a = np.asarray(words)
    if a.dtype.kind not in "fiu":
        raise FaultError(f"words must be a float or integer array, got dtype {a.dtype}")
    a = a.view(np.dtype(f"u{a.dtype.itemsize}"))
    width = a.dtype.itemsize * 8
    shifts = np.arange(width, dtype=a.dtype)
    return ((a[..., None] >> shifts) & 1).astype(np.uint8)


def _check_bits(name: str, bits: ArrayLike) -> NDArray[np.int64]:
    a = np.asarray(bits)
    if a.dtype.kind not in "biu" or not np.all((a == 0) | (a == 1)):
        raise FaultError(f"{name} must be an integer (or bool) array holding only 0 and 1")
    return a.astype(np.int64)


def data_aware_masked(stored_bit: ArrayLike, stuck_value: int | ArrayLike) -> NDArray[np.bool_]:
    """Which stuck-at faults are masked without simulation: those equal to the stored bit.

    A stuck-at-v on a bit that already holds v changes nothing, so its outcome is known
    (masked) and it need not be injected.

    Args:
        stored_bit: the fault-free bit values (0/1), e.g. a slice of :func:`bit_planes`.
        stuck_value: the stuck-at value(s) 0 or 1, broadcast against ``stored_bit``.

    Returns:
        Boolean array, True where the fault is masked.

    Example:
        >>> data_aware_masked([0, 1, 1, 0], 1).tolist()
        [False, True, True, False]
    """
    bits = _check_bits("stored_bit", stored_bit)
    stuck = _check_bits("stuck_value", stuck_value)
    try:
        return np.asarray(bits == stuck)
    except ValueError as exc:
        raise FaultError(f"stuck_value {stuck.shape} does not broadcast against stored_bit {bits.shape}") from exc


def data_aware_population(
    stored_bits: ArrayLike, stuck_value: int | ArrayLike, axis: int | tuple[int, ...] | None = None
) -> int | NDArray[np.intp]:
    """Number of stuck-at faults that must be simulated once masked ones are removed.

    This is the data-aware population of a stratum: the stuck-at-``stuck_value`` faults on bits
    that currently differ from it. The removed faults are known to be masked (failure 0); count
    them as an exhaustively injected stratum in :func:`combine_strata`. Over the full stuck-at-0/1
    universe exactly half the faults are masked; per (layer, bit, value) stratum the reduction
    is often total (e.g. stuck-at-0 on the fp32 exponent MSB of weights with |w| < 2).

    Args:
        stored_bits: fault-free bits (0/1), e.g. ``bit_planes(w).reshape(-1, 32)``.
        stuck_value: 0 or 1 (or an array broadcast against ``stored_bits``).
        axis: count along these axes (e.g. 0 for per-bit counts); None counts everything.

    Returns:
        The count (an int for ``axis=None``, else an array).

    Example:
        >>> planes = bit_planes(np.float32([0.5, -1.5, 0.01])).reshape(-1, 32)
        >>> data_aware_population(planes, 1, axis=0)[[30, 31]].tolist()  # SA1 on bit 30, 31
        [3, 2]
        >>> data_aware_population(planes, 0, axis=0)[[30, 31]].tolist()  # SA0 on bit 30, 31
        [0, 1]
    """
    unmasked = ~data_aware_masked(stored_bits, stuck_value)
    counts = np.count_nonzero(unmasked, axis=axis)
    return int(counts) if axis is None else np.asarray(counts)

