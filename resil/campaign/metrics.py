"""Campaign metrics: the failure probability (critical SDC or non-finite output per fault x input)
and the accuracy under faults, with confidence intervals, estimated as each sampler requires."""

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
    manifest, df = store.manifest(), store.table().to_pandas()
    fails = (df.critical + df.non_finite).to_numpy()
    inputs = df.inputs.to_numpy()
    if manifest["sampler"] == "importance":
        return importance_estimate(fails / inputs, df.weight.to_numpy(), confidence)
    if manifest["sampler"] == "sfi":
        strata = manifest["strata"]
        per = df.assign(fails=fails).groupby("stratum")[["fails", "inputs"]].sum()
        k, n, N = [], [], []
        for name, info in strata.items():
            if info["samples"]:
                k.append(per.loc[name, "fails"])
                n.append(per.loc[name, "inputs"])
                N.append((info["population"] - info["known_masked"]) * manifest["inputs"])
            if info["known_masked"]:
                k.append(0)
                n.append(info["known_masked"] * manifest["inputs"])
                N.append(info["known_masked"] * manifest["inputs"])
        return combine_strata(np.array(k), np.array(n), np.array(N), confidence)
    low, high = wilson_interval(int(fails.sum()), int(inputs.sum()), confidence)
    return Estimate(float(fails.sum() / inputs.sum()), float(low), float(high), int(inputs.sum()), float(inputs.sum()))


def by_stratum(campaign: str | Path | Store, confidence: float = 0.95) -> pd.DataFrame:
    """Failure probability and accuracy per stratum, with Wilson intervals."""
    store = campaign if isinstance(campaign, Store) else Store(campaign)
    df = store.table().to_pandas()
    g = df.assign(fails=df.critical + df.non_finite).groupby("stratum", sort=False)[["fails", "correct", "inputs"]].sum()
    g["failure"] = g.fails / g.inputs
    g["failure_low"], g["failure_high"] = wilson_interval(g.fails.to_numpy(), g.inputs.to_numpy(), confidence)
    g["accuracy"] = g.correct / g.inputs
    g["accuracy_low"], g["accuracy_high"] = wilson_interval(g.correct.to_numpy(), g.inputs.to_numpy(), confidence)
    return g
