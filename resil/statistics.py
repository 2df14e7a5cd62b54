"""Statistics for fault-injection campaigns: sample sizes, intervals and estimators.

Pure numpy functions (no torch):

- :func:`leveugle_sample_size`, :func:`stratified_sample_sizes`: how many faults to inject for a
  margin and confidence (statistical fault injection, Leveugle et al., DATE 2009).
- :func:`wilson_interval`, :func:`wilson_margin`: binomial intervals for critical-fault rates.
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
    "Estimate",
    "bit_planes",
    "combine_strata",
    "data_aware_masked",
    "data_aware_population",
    "defensive_mixture",
    "importance_estimate",
    "importance_weights",
    "leveugle_sample_size",
    "normal_quantile",
    "stratified_sample_sizes",
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
    if math.isinf(big_n):
        n = n_inf
    else:
        n = big_n / (1 + (big_n - 1) / n_inf)
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
        n=int(round(n.sum())),
        ess=ess,
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
    return Estimate(value=value, low=low, high=high, n=n, ess=ess)


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
