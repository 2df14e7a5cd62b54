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

from pathlib import Path

import numpy as np
import pandas as pd

from ..statistics import Estimate, combine_strata, importance_estimate, wilson_interval
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


def by_stratum(campaign: str | Path | Store, confidence: float = 0.95) -> pd.DataFrame:
    """Per stratum: scenarios, mean failure fraction and accuracy under faults, with Wilson intervals over scenarios."""
    store = campaign if isinstance(campaign, Store) else Store(campaign)
    df = store.table().to_pandas()
    df = df.assign(failure=(df.critical + df.non_finite) / df.inputs, accuracy=df.correct / df.inputs)
    g = df.groupby("stratum", sort=False).agg(scenarios=("scenario", "count"), failure=("failure", "sum"), accuracy=("accuracy", "sum"))
    for col in ("failure", "accuracy"):
        g[f"{col}_low"], g[f"{col}_high"] = wilson_interval(g[col].to_numpy(), g.scenarios.to_numpy(), confidence)
        g[col] = g[col] / g.scenarios
    return g
