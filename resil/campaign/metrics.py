"""Campaign metrics: the failure probability and the accuracy under faults, with confidence
intervals, estimated as each sampler requires.

The unit is the fault scenario: a scenario's failure fraction is the share of the inputs on
which it causes a critical SDC or a non-finite output, and the failure probability is the mean
failure fraction over the fault space (for single faults, the vulnerability factor). Intervals
count scenarios, not scenario x input pairs, since the inputs of one scenario are not
independent trials; which interval is decided in one place,
:func:`resil.statistics.scenario_estimate` (Wilson for single-fault scenarios, else a t
interval over scenarios that keeps what their number cannot rule out, a betting confidence
sequence for campaigns that stopped on their data). :func:`verdicts` tells campaigns apart
per group with :func:`resil.statistics.difference_estimate` (paired where they share scenarios).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import FaultError
from ..statistics import Estimate, difference_estimate, scenario_estimate, scenarios_to_resolve, wilson_interval
from .samplers import sampler_class, stored_sampler
from .store import Store


def failure_estimate(campaign: str | Path | Store, confidence: float = 0.95) -> Estimate:
    """The campaign's failure probability over its fault space (faults x inputs).

    - ``uniform``, ``exhaustive``, ``ber``: the mean failure fraction over scenarios with the
      interval of :func:`resil.statistics.scenario_estimate`.
    - ``sfi``: the stratified estimator (finite population correction per stratum); with
      data-aware sampling, the locations known to be masked join as fully known strata.
    - ``importance``: the unbiased weighted mean of per-fault failure fractions, with its CLT interval.
    """
    store = campaign if isinstance(campaign, Store) else Store(campaign)
    return estimate_failure(store.manifest(), store.table().to_pandas(), confidence)


def estimate_failure(manifest: dict, df: pd.DataFrame, confidence: float = 0.95) -> Estimate:
    """:func:`failure_estimate` from a campaign's manifest and result table, by its sampler's
    :meth:`~resil.campaign.samplers.Sampler.estimate`."""
    return stored_sampler(manifest["sampler"]).estimate(manifest, df, confidence, sequential=sequential(manifest))


def own_estimate(manifest: Mapping) -> bool:
    """Whether the campaign's sampler estimates its failure probability its own way (stratified,
    re-weighted: ``sfi``, ``importance``) rather than as :func:`by_group`'s mean over scenarios."""
    kind = manifest.get("sampler")
    return kind is not None and stored_sampler(kind).own_estimate


def sequential(manifest: Mapping) -> bool:
    """Whether the campaign stopped on a confidence sequence (``[sampler] stop_margin`` with a
    sampler that stops so; not ``sfi``: iterative SFI keeps its stratified estimate)."""
    sampler = (manifest.get("spec") or {}).get("sampler") or {}
    return bool(sampler.get("stop_margin")) and sampler_class(sampler.get("kind", "uniform")).sequential


def by_stratum(campaign: str | Path | Store) -> pd.DataFrame:
    """:func:`by_group` of a stored campaign by stratum, indexed by stratum (in stratum order)."""
    store = campaign if isinstance(campaign, Store) else Store(campaign)
    g = by_group(store.table().to_pandas(), "stratum", str(store.root), sequential=sequential(store.manifest())).set_index("stratum")
    return g.loc[list(dict.fromkeys(store.table().column("stratum").to_pylist()))]


COUNTS = ("inputs", "masked", "tolerable", "critical", "non_finite", "correct")


def by_group(table: pd.DataFrame, by: str | Sequence[str] = "layer", name: str = "campaign", *, sequential: bool = False) -> pd.DataFrame:
    """Failure probability and accuracy per group, with 95% intervals over scenarios and the summed counts.

    The failure probability of a group is the mean failure fraction of its scenarios (weighted
    for importance-sampled campaigns); intervals count scenarios, not scenario x input pairs:
    :func:`resil.statistics.scenario_estimate` (single-fault groups: Wilson; a betting confidence
    sequence when ``sequential``, i.e. the campaign stopped on its data); weighted groups get
    Wilson over Kish's effective number of scenarios.

    ``by`` is a column (``"layer"``, ``"bit"``, ``"kind"``, ``"rate"``, ``"site"``, ``"stratum"``
    ...) or a list of them; ``[]`` gives one row for the whole campaign. Rows whose key is NaN
    (the rate of a non-BER scenario) are left out. Groups are sorted, text in natural order
    (``conv2`` before ``conv10``). Columns: the keys, ``scenarios``, the summed counts
    (``inputs`` ... ``correct``), ``failures`` (critical + non-finite), ``failure``,
    ``failure_low``, ``failure_high``, ``accuracy``, ``accuracy_low``, ``accuracy_high``, and
    ``failure_method`` / ``accuracy_method`` (which interval, see :data:`resil.statistics.INTERVALS`).

    Unlabelled campaigns (``correct`` is -1) get NaN accuracies.

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"layer": ["fc", "fc", "conv1"], "inputs": [10, 10, 10], "masked": [8, 9, 5],
        ...                   "tolerable": 0, "critical": [2, 0, 5], "non_finite": [0, 1, 0],
        ...                   "correct": [8, 9, 5], "weight": 1.0, "n_faults": 1})
        >>> g = by_group(t, "layer")
        >>> g[["layer", "failures", "inputs", "failure", "failure_method"]].round(4).values.tolist()
        [['conv1', 5, 10, 0.5, 'wilson'], ['fc', 3, 20, 0.15, 'wilson']]
        >>> bool((g.failure_low < g.failure).all() and (g.failure < g.failure_high).all())
        True
    """
    keys = [by] if isinstance(by, str) else list(by)
    t = table
    bad = [k for k in keys if k not in t.columns or k in COUNTS]
    if bad:
        allowed = [c for c in t.columns if c not in COUNTS]
        raise FaultError(f"cannot group {name!r} by {', '.join(map(repr, bad))}; group by one of {allowed}")
    if "scenario" in t.columns:
        t = t.sort_values("scenario", kind="stable")  # the order a sequential interval saw them in
    w = t["weight"].to_numpy(dtype=float)
    counts = {c: t[c].to_numpy(dtype=np.int64) for c in COUNTS}
    failures = t["critical"].to_numpy(dtype=np.int64) + t["non_finite"].to_numpy(dtype=np.int64)
    n = counts["inputs"]
    single = t["n_faults"].to_numpy() <= 1 if "n_faults" in t.columns else np.ones(len(t), dtype=bool)
    frame = pd.DataFrame({
        **({k: t[k].to_numpy() for k in keys} if keys else {"_all": np.zeros(len(t), dtype=np.int64)}),
        "scenarios": np.ones(len(t), dtype=np.int64), **counts, "failures": failures,
        "_w": w, "_w2": w * w, "_w_failure": w * failures / n, "_w_accuracy": w * np.maximum(counts["correct"], 0) / n,
    })
    grouped = frame.groupby(keys or ["_all"], sort=False, dropna=True)
    out = grouped.sum().reset_index()
    out["failure"] = out["_w_failure"] / out["_w"]
    out["accuracy"] = (out["_w_accuracy"] / out["_w"]).where(out["correct"] >= 0)  # unlabelled: correct is -1
    fractions = {"failure": failures / n, "accuracy": np.maximum(counts["correct"], 0) / n}
    rows = list(grouped.indices.values())
    for m, values in fractions.items():
        low, high = np.full(len(out), np.nan), np.full(len(out), np.nan)
        method = np.full(len(out), "", dtype=object)
        for i, idx in enumerate(rows):
            if not np.isfinite(out.at[i, m]):
                continue
            if np.any(w[idx] != 1.0):  # importance weights: Wilson over Kish's effective number of scenarios
                trials = out.at[i, "_w"] ** 2 / out.at[i, "_w2"]
                low[i], high[i] = wilson_interval(out.at[i, m] * trials, trials)
                method[i] = "wilson"
                continue
            e = scenario_estimate(values[idx], single_fault=bool(single[idx].all()), sequential=sequential)
            low[i], high[i], method[i] = e.low, e.high, e.method
        out[f"{m}_low"], out[f"{m}_high"], out[f"{m}_method"] = low, high, method
    return sort_groups(out.drop(columns=[c for c in out.columns if c.startswith("_")]), keys)


def shares_scenarios(a: Mapping, b: Mapping) -> bool:
    """Whether two campaigns draw the same scenarios on the same inputs, so that scenario i of one
    faults the same locations as scenario i of the other and their outcomes can be paired: the same
    seed, sampler, fault model, site selection, fault-space size and inputs.

    Example:
        >>> m = {"spec": {"seed": 0, "sampler": {"kind": "ber"}, "faults": {}, "sites": {}}, "space": 10,
        ...      "fingerprint": {"inputs": "x"}}
        >>> shares_scenarios(m, m), shares_scenarios(m, {**m, "space": 12})
        (True, False)
    """
    sa, sb = a.get("spec") or {}, b.get("spec") or {}
    same = all(sa.get(k) == sb.get(k) and k in sa for k in ("seed", "sampler", "faults", "sites"))
    inputs_a, inputs_b = ((m.get("fingerprint") or {}).get("inputs") for m in (a, b))
    return same and a.get("space") == b.get("space") and inputs_a == inputs_b


def verdicts(campaigns: Mapping[str, tuple[Mapping, pd.DataFrame]], by: str | None = "rate", metric: str = "accuracy",
             higher_is_better: bool = True, confidence: float = 0.95, resolve: float = 0.01, per: str = "") -> pd.DataFrame:
    """Which campaign is most robust per group, by the one verdict rule of resil's reports.

    Per group the best campaign has the best mean ``metric`` (``"accuracy"`` or ``"failure"``).
    Every other campaign is compared with it by the interval of the difference
    (:func:`resil.statistics.difference_estimate`, paired when :func:`shares_scenarios` and the
    group holds the same scenario ids): it is *separated* when that interval excludes 0. The
    verdict is ``"A more robust than B, C (95%)"`` when every other campaign is separated,
    else ``"no difference detected between A, B; about N scenarios per rate would resolve a
    difference of d"`` (N from :func:`resil.statistics.scenarios_to_resolve` for the best and
    the runner-up, d their observed difference or ``resolve`` if smaller), followed by
    ``"; A, B more robust than C (95%)"`` for the separated ones.

    Args:
        campaigns: label -> (manifest, per-scenario table) of each campaign.
        by: the grouping column (``None``: the whole campaign).
        metric: ``"accuracy"`` or ``"failure"``.
        higher_is_better: True for accuracy, False for failure.
        confidence: two-sided confidence of every interval.
        resolve: the smallest difference the scenario count is planned for.
        per: what a group is called in the verdict ("about N scenarios per <per>"; default ``by``).

    Returns:
        One row per group (a group only one campaign has: verdict ``"A (only model)"``,
        ``runner_up`` None): the key, ``best``, ``runner_up``,
        ``separated`` (best vs runner-up), ``tied`` (the campaigns not separated from the best,
        best first), ``difference``, ``difference_low``, ``difference_high`` (best minus
        runner-up), ``paired``, ``needed`` (scenarios per group that would separate them; 0 when
        separated) and ``verdict``.

    Example:
        >>> import pandas as pd
        >>> def table(acc):
        ...     return pd.DataFrame({"scenario": range(len(acc)), "rate": 1e-4, "inputs": 100, "correct": acc,
        ...                          "critical": 0, "non_finite": 0, "n_faults": 3})
        >>> cs = {"a": ({}, table([90, 91, 92, 93] * 100)), "b": ({}, table([50, 52, 51, 49] * 100)),
        ...       "c": ({}, table([91, 92, 90, 91] * 100))}
        >>> print(verdicts(cs)["verdict"].iloc[0].replace("; ", ";\\n"))
        no difference detected between a, c;
        about 441 scenarios per rate would resolve a difference of 1.0 points;
        a, c more robust than b (95%)
    """
    if metric not in ("accuracy", "failure"):
        raise FaultError(f"metric must be 'accuracy' or 'failure', not {metric!r}")
    if len(campaigns) < 1:
        raise FaultError("verdicts needs at least one campaign")
    values = _group_values(campaigns, by, metric)
    rows = []
    for group in sort_groups(pd.DataFrame({"k": list(values)}), ["k"])["k"]:
        present = [m for m in campaigns if m in values[group]]
        if len(present) < 2:
            rows.append({by or "group": group, "best": present[0], "runner_up": None, "separated": False, "tied": (present[0],),
                         "difference": np.nan, "difference_low": np.nan, "difference_high": np.nan, "paired": False,
                         "needed": 0, "verdict": f"{present[0]} (only model)"})
        else:
            rows.append({by or "group": group, **_verdict(campaigns, values[group], present, higher_is_better, confidence, resolve,
                                                          per or by or "campaign")})
    columns = [by or "group", "best", "runner_up", "separated", "tied", "difference", "difference_low", "difference_high", "paired",
               "needed", "verdict"]
    return pd.DataFrame(rows, columns=columns)


#: per campaign in a group: its scenarios' metric fractions, their ids, and whether all are single faults
GroupValues = dict[str, tuple[np.ndarray, np.ndarray, bool]]


def _group_values(campaigns: Mapping[str, tuple[Mapping, pd.DataFrame]], by: str | None, metric: str) -> dict[object, GroupValues]:
    """Per group of ``by``, per campaign: the fractions of ``metric`` of its scenarios (in scenario order), their ids, single faults."""
    values: dict[object, GroupValues] = {}
    for label, (_, df) in campaigns.items():
        df = df.sort_values("scenario", kind="stable") if "scenario" in df.columns else df
        frac = ((df["critical"] + df["non_finite"]) if metric == "failure" else df["correct"].clip(lower=0)) / df["inputs"]
        key = df[by] if by else pd.Series(0, index=df.index)
        ids = df["scenario"] if "scenario" in df.columns else pd.Series(np.arange(len(df)), index=df.index)
        single = df["n_faults"] <= 1 if "n_faults" in df.columns else pd.Series(True, index=df.index)
        for group, idx in key.groupby(key, sort=False).groups.items():
            values.setdefault(group, {})[label] = (frac.loc[idx].to_numpy(float), ids.loc[idx].to_numpy(), bool(single.loc[idx].all()))
    return values


def _verdict(campaigns: Mapping[str, tuple[Mapping, pd.DataFrame]], values: GroupValues, present: list[str], higher_is_better: bool,
             confidence: float, resolve: float, per: str) -> dict[str, object]:
    """The verdict columns of one group that at least two campaigns have (see :func:`verdicts`)."""
    sign = 1.0 if higher_is_better else -1.0
    means = {m: float(values[m][0].mean()) for m in present}
    order = sorted(present, key=lambda m: (-sign * means[m], present.index(m)))
    best = order[0]
    xb, ib, sb = values[best]
    compared = {}
    for other in order[1:]:
        xo, io, so = values[other]
        paired = shares_scenarios(campaigns[best][0], campaigns[other][0]) and np.array_equal(ib, io)
        d = difference_estimate(xb, xo, confidence, paired=paired, single_fault=sb and so)
        separated = d.low > 0 if higher_is_better else d.high < 0
        compared[other] = (d, paired, separated, sb and so)
    runner = order[1]
    d, paired, separated, single = compared[runner]
    tied = [best, *(m for m in order[1:] if not compared[m][2])]
    rest = [m for m in order[1:] if compared[m][2]]
    needed = 0
    if len(tied) > 1:
        size = max(abs(d.value), resolve)
        needed = scenarios_to_resolve(xb, values[runner][0], size, confidence, paired=paired, single_fault=single)
        verdict = (f"no difference detected between {', '.join(tied)}; about {needed} scenarios per {per} "
                   f"would resolve a difference of {100 * size:.1f} points")
        if rest:
            verdict += f"; {', '.join(tied)} more robust than {', '.join(rest)} ({confidence:.0%})"
    else:
        verdict = f"{best} more robust than {', '.join(rest)} ({confidence:.0%})"
    return {"best": best, "runner_up": runner, "separated": bool(separated), "tied": tuple(tied), "difference": d.value,
            "difference_low": d.low, "difference_high": d.high, "paired": paired, "needed": needed, "verdict": verdict}


def sort_groups(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows sorted by ``keys``: numbers by value, text in natural order."""
    def rank(s: pd.Series) -> pd.Series:
        if pd.api.types.is_numeric_dtype(s):
            return s
        natural = sorted(s.unique(), key=lambda v: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(v))])
        return s.map({v: i for i, v in enumerate(natural)})

    return frame.sort_values(keys, key=rank, kind="stable", ignore_index=True) if keys else frame


