"""Campaign metrics: the failure probability and the accuracy under faults, with confidence
intervals, estimated as each sampler requires.

The unit is the fault scenario: a scenario's failure fraction is the share of the inputs on
which it causes a critical SDC or a non-finite output, and the failure probability is the mean
failure fraction over the fault space (for single faults, the vulnerability factor). Intervals
count scenarios, not scenario x input pairs, since the inputs of one scenario are not
independent trials: a Wilson interval with the summed fractions as successes (exact for 0/1
fractions, conservative otherwise).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..statistics import Estimate, combine_strata, importance_estimate, wilson_interval
from ..errors import FaultError
from .store import Store


def failure_estimate(campaign: str | Path | Store, confidence: float = 0.95) -> Estimate:
    """The campaign's failure probability over its fault space (faults x inputs).

    - ``uniform``, ``exhaustive``, ``ber``: the proportion of failing fault x input pairs with a
      Wilson interval.
    - ``sfi``: the stratified estimator (finite population correction per stratum); with
      data-aware sampling, the locations known to be masked join as fully known strata.
    - ``importance``: the unbiased weighted mean of per-fault failure fractions, with its CLT interval.
    """
    store = campaign if isinstance(campaign, Store) else Store(campaign)
    return estimate_failure(store.manifest(), store.table().to_pandas(), confidence)


def estimate_failure(manifest: dict, df: pd.DataFrame, confidence: float = 0.95) -> Estimate:
    """:func:`failure_estimate` from a campaign's manifest and result table."""
    fraction = ((df.critical + df.non_finite) / df.inputs).to_numpy()
    if manifest["sampler"] == "importance":
        return importance_estimate(fraction, df.weight.to_numpy(), confidence)
    if manifest["sampler"] == "sfi":
        per = df.assign(fraction=fraction).groupby("stratum")["fraction"].agg(["sum", "count"])
        k, n, N = [], [], []
        for name, info in manifest["strata"].items():
            if info["samples"]:
                k.append(per.loc[name, "sum"])
                n.append(per.loc[name, "count"])
                N.append(info["population"] - info["known_masked"])
            if info["known_masked"]:  # data-aware: known masked without simulation
                k.append(0.0)
                n.append(info["known_masked"])
                N.append(info["known_masked"])
        return combine_strata(np.array(k), np.array(n), np.array(N), confidence)
    low, high = wilson_interval(float(fraction.sum()), len(fraction), confidence)
    return Estimate(float(fraction.mean()), float(low), float(high), len(fraction), float(len(fraction)))


def by_stratum(campaign: str | Path | Store) -> pd.DataFrame:
    """:func:`by_group` of a stored campaign by stratum, indexed by stratum (in stratum order)."""
    store = campaign if isinstance(campaign, Store) else Store(campaign)
    g = by_group(store.table().to_pandas(), "stratum", str(store.root)).set_index("stratum")
    return g.loc[list(dict.fromkeys(store.table().column("stratum").to_pylist()))]


COUNTS = ("inputs", "masked", "tolerable", "critical", "non_finite", "correct")


def by_group(table: pd.DataFrame, by: str | Sequence[str] = "layer", name: str = "campaign") -> pd.DataFrame:
    """Failure probability and accuracy per group, with Wilson 95% intervals and the summed counts.

    The failure probability of a group is the mean failure fraction of its scenarios (weighted
    for importance-sampled campaigns); intervals count scenarios, not scenario x input pairs.

    ``by`` is a column (``"layer"``, ``"bit"``, ``"kind"``, ``"rate"``, ``"site"``, ``"stratum"``
    ...) or a list of them; ``[]`` gives one row for the whole campaign. Rows whose key is NaN
    (the rate of a non-BER scenario) are left out. Groups are sorted, text in natural order
    (``conv2`` before ``conv10``). Columns: the keys, ``scenarios``, the summed counts
    (``inputs`` ... ``correct``), ``failures`` (critical + non-finite), ``failure``,
    ``failure_low``, ``failure_high``, ``accuracy``, ``accuracy_low``, ``accuracy_high``.

    Unlabelled campaigns (``correct`` is -1) get NaN accuracies.

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"layer": ["fc", "fc", "conv1"], "inputs": [10, 10, 10], "masked": [8, 9, 5],
        ...                   "tolerable": 0, "critical": [2, 0, 5], "non_finite": [0, 1, 0],
        ...                   "correct": [8, 9, 5], "weight": 1.0})
        >>> g = by_group(t, "layer")
        >>> g[["layer", "failures", "inputs", "failure"]].round(4).values.tolist()
        [['conv1', 5, 10, 0.5], ['fc', 3, 20, 0.15]]
        >>> bool((g.failure_low < g.failure).all() and (g.failure < g.failure_high).all())
        True
    """
    keys = [by] if isinstance(by, str) else list(by)
    t = table
    bad = [k for k in keys if k not in t.columns or k in COUNTS]
    if bad:
        allowed = [c for c in t.columns if c not in COUNTS]
        raise FaultError(f"cannot group {name!r} by {', '.join(map(repr, bad))}; group by one of {allowed}")
    w = t["weight"].to_numpy(dtype=float)
    counts = {c: t[c].to_numpy(dtype=np.int64) for c in COUNTS}
    failures = t["critical"].to_numpy(dtype=np.int64) + t["non_finite"].to_numpy(dtype=np.int64)
    n = counts["inputs"]
    frame = pd.DataFrame({
        **({k: t[k].to_numpy() for k in keys} if keys else {"_all": np.zeros(len(t), dtype=np.int64)}),
        "scenarios": np.ones(len(t), dtype=np.int64), **counts, "failures": failures,
        "_w": w, "_w2": w * w, "_w_failure": w * failures / n, "_w_accuracy": w * np.maximum(counts["correct"], 0) / n,
    })
    out = frame.groupby(keys or ["_all"], sort=False, dropna=True).sum().reset_index()
    out["failure"] = out["_w_failure"] / out["_w"]
    out["accuracy"] = (out["_w_accuracy"] / out["_w"]).where(out["correct"] >= 0)  # unlabelled: correct is -1
    # the unit is the scenario (its inputs are not independent trials); Kish's effective count when weighted
    trials = (out["_w"] ** 2 / out["_w2"]).to_numpy()
    for m in ("failure", "accuracy"):
        value = out[m].to_numpy(dtype=float)
        known = np.isfinite(value)
        low, high = np.full(len(out), np.nan), np.full(len(out), np.nan)
        if known.any():
            low[known], high[known] = wilson_interval(value[known] * trials[known], trials[known])
        out[f"{m}_low"], out[f"{m}_high"] = low, high
    return sort_groups(out.drop(columns=[c for c in out.columns if c.startswith("_")]), keys)


def sort_groups(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows sorted by ``keys``: numbers by value, text in natural order."""
    def rank(s: pd.Series) -> pd.Series:
        if pd.api.types.is_numeric_dtype(s):
            return s
        natural = sorted(s.unique(), key=lambda v: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(v))])
        return s.map({v: i for i, v in enumerate(natural)})

    return frame.sort_values(keys, key=rank, kind="stable", ignore_index=True) if keys else frame


