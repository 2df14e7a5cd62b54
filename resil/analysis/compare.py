"""Robustness comparison across compression variants: the same analysis on every model, side by side.

:func:`compare` runs, for each model of a family (by default the seven reference models: dense,
pruned 50 / 80 %, channel-pruned, int8, int4, spiking), with identical settings:

(a) the **PVF per layer** (:func:`resil.analysis.pvf`): ``trials`` single bit flips of the stored
    weight encoding per layer (float32 bits of float models, integer code bits of int8 / int4),
    each judged over every evaluation input (top-1 differs from the golden top-1, or non-finite),
    with 95 % Wilson intervals over trials; layers are aligned by name (``conv1``, ``conv2``, ``fc1``, ``fc2``);
(b) **accuracy against the bit error rate**: a BER campaign (:mod:`resil.campaign`, the same
    sampler spec for every model: every stored weight bit flips with probability p, ``scenarios``
    scenarios per rate) with intervals over scenarios (:func:`resil.statistics.scenario_estimate`);
(c) **the most robust variant per rate and per layer** (:func:`resil.campaign.metrics.verdicts`,
    the rule ``resil report`` uses too): the best model is compared with every other one by the
    95 % interval of their difference (paired when the campaigns share fault locations and
    inputs); the verdict says "A more robust than B (95%)" or "no difference detected; about N
    scenarios per rate would resolve a difference of d".

The models are bundled names, factory specs, or your own objects: ``compare({"dense": m1, "int8":
m2}, out, data=(x, y))`` (any data :func:`resil.campaign.run` takes; default: each bundled
model's test split). Everything is stored as campaigns under ``out``, two per model and nothing
beside them: ``out/<model>-ber`` (the BER campaign) and ``out/<model>-pvf`` (the PVF study: a
stratified campaign with ``trials`` single bit flips per layer, run through the fast path), so
``resil resume out`` and ``resil report out`` work on it. Re-running skips what is finished,
and a directory holding other results (other settings, another model or other data) is refused
before any work. :func:`compare` computes the tables; :func:`resil.report.comparison.write_comparison`
renders them into ``out/report`` (``index.html``, self-contained, and its PNGs) and
:func:`resil.report.comparison.comparison_summary` as text (``resil compare`` does both).

Example:
    >>> c = compare(["dense-cnn", "int8"], "runs/compare", quick=True)  # doctest: +SKIP
    >>> c.best[["rate", "verdict"]]  # doctest: +SKIP
    >>> from resil.report.comparison import write_comparison
    >>> write_comparison(c)  # doctest: +SKIP
    PosixPath('runs/compare/report/index.html')
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from ..errors import FaultError

__all__ = ["DEFAULT", "QUICK", "CompareSettings", "Comparison", "campaign_dirs", "compare", "layer_order"]


@dataclass(frozen=True)
class CompareSettings:
    """What every model of a comparison gets, identically.

    Attributes:
        rates: bit error rates of the BER campaigns (each in (0, 1), increasing).
        scenarios: BER scenarios per rate.
        trials: PVF trials (single bit flips) per layer.
        inputs: evaluation inputs (the first N of the data; 0: all).
        seed: seed of the BER campaigns and of the PVF trials.
        kinds: site kinds faulted (``("weight",)``: the stored weights).
        dataset: dataset of the inputs (default: each model's own).
    """

    rates: tuple[float, ...] = (1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    scenarios: int = 100
    trials: int = 1000
    inputs: int = 0
    seed: int = 0
    kinds: tuple[str, ...] = ("weight",)
    dataset: str = ""

    def __post_init__(self) -> None:
        _check_settings(self)
        object.__setattr__(self, "rates", tuple(float(r) for r in self.rates))
        object.__setattr__(self, "kinds", tuple(self.kinds))


@dataclass(frozen=True, eq=False)
class Comparison:
    """The results of :func:`compare`.

    Attributes:
        root: the result directory.
        models: the models compared, in the given order.
        settings: what every model got.
        clean: fault-free accuracy per model on the evaluation inputs.
        layers: PVF per model and layer: ``model``, ``layer``, ``pvf``, ``low``, ``high``, ``method``,
            ``trials``, ``incorrect`` (D), ``population`` (single-bit locations), ``exhaustive``.
        rates: per model and rate: ``model``, ``rate``, ``scenarios``, ``accuracy``, ``failure``,
            their ``_low`` / ``_high`` bounds and ``_method`` (the interval, see :data:`resil.statistics.INTERVALS`).
        best: :func:`resil.campaign.metrics.verdicts` of the BER campaigns by accuracy (one row per rate).
        failure_best: the same by failure probability (lower is better).
        layer_best: the same of the PVF studies by layer (lower PVF is better).
        descriptions: a one-line description per model.
        seconds: wall time of the call.
    """

    root: Path
    models: tuple[str, ...]
    settings: CompareSettings
    clean: dict[str, float]
    layers: pd.DataFrame
    rates: pd.DataFrame
    best: pd.DataFrame
    failure_best: pd.DataFrame
    layer_best: pd.DataFrame
    descriptions: dict[str, str]
    seconds: float


def campaign_dirs(root: str | os.PathLike[str], label: str) -> tuple[Path, Path]:
    """The BER campaign's and the PVF study's directory of model ``label`` in a comparison under ``root``.

    Example:
        >>> [str(d) for d in campaign_dirs("runs/compare", "pkg.mod:make")]
        ['runs/compare/pkg.mod_make-ber', 'runs/compare/pkg.mod_make-pvf']
    """
    name = _dirname(label)
    return Path(root) / f"{name}-ber", Path(root) / f"{name}-pvf"


def layer_order(per_model: Sequence[Sequence[str]]) -> list[str]:
    """Merge the layer lists of several models into one order that keeps each model's order
    (a layer only some models have goes after its predecessor).

    Example:
        >>> layer_order([["conv1", "fc1", "fc2"], ["conv1", "conv2", "fc1", "fc2"]])
        ['conv1', 'conv2', 'fc1', 'fc2']
    """
    merged: list[str] = []
    for layers in per_model:
        previous = None
        for layer in layers:
            if layer not in merged:
                merged.insert(0 if previous is None else merged.index(previous) + 1, layer)
            previous = layer
    return merged


Models = Sequence[str] | Mapping[str, "nn.Module | str"] | None


def compare(models: Models = None, out: str | os.PathLike[str] = "compare", *, data: Any = None, quick: bool = False,
            settings: CompareSettings | None = None, progress: bool = True) -> Comparison:
    """Run the same robustness analysis over a family of models and tabulate them side by side.

    Args:
        models: reference model names (``resil.models.names()``) or ``package.module:factory``
            specs, or a mapping ``{label: model}`` of your own ``nn.Module`` objects (or specs);
            default: every reference model.
        out: result directory (two campaign directories per model; :func:`resil.report.comparison.write_comparison` adds ``report/``).
        data: the evaluation data for every model (``(inputs, labels)``, a ``Dataset`` or a
            ``DataLoader``); default: each bundled model's test split (``settings.inputs`` of it).
        quick: use :data:`QUICK` instead of :data:`DEFAULT` (ignored when ``settings`` is given).
        settings: explicit settings (a :class:`CompareSettings`).
        progress: show tqdm progress bars and one line per finished step.

    Returns:
        A :class:`Comparison`.

    Raises:
        FaultError: before any work, for an empty or repeated model list, an unknown model (listing
            the known ones), bad settings, or a result directory holding other results.

    Example:
        >>> compare({"dense": my_net, "pruned": my_pruned_net}, "runs/compare", data=(x, y), quick=True).best  # doctest: +SKIP
    """
    import torch

    start = time.perf_counter()
    sources = _check_models(models)
    s = settings if settings is not None else QUICK if quick else DEFAULT
    if not isinstance(s, CompareSettings):
        raise FaultError(f"settings must be a CompareSettings, got {type(s).__name__}")
    root = Path(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        jobs = [_Job(label, source, root, s, data) for label, source in sources.items()]
        for job in jobs:
            job.check()  # every conflict is found before any work starts
        for job in jobs:
            job.run(progress)
    finally:
        torch.set_num_threads(threads)
    from ..campaign.metrics import verdicts
    from .results import load_campaign

    bers = {job.label: load_campaign(job.ber_dir) for job in jobs}  # read once, for tables, verdicts and figures
    pvfs = {job.label: load_campaign(job.pvf_dir) for job in jobs}
    clean = {job.label: job.clean() for job in jobs}
    layers = pd.concat([job.layers(pvfs[job.label]) for job in jobs], ignore_index=True)
    rates = pd.concat([job.rates(bers[job.label]) for job in jobs], ignore_index=True)
    ber = {label: (c.manifest, c.table) for label, c in bers.items()}
    pvf = {label: (c.manifest, c.table) for label, c in pvfs.items()}
    best = verdicts(ber, "rate", "accuracy")
    failure_best = verdicts(ber, "rate", "failure", higher_is_better=False)
    order = layer_order([list(dict.fromkeys(layers.loc[layers.model == m, "layer"])) for m in sources])
    layer_best = verdicts(pvf, "stratum", "failure", higher_is_better=False, resolve=0.001, per="layer")
    layer_best = layer_best.rename(columns={"stratum": "layer"})
    layer_best = layer_best.set_index("layer").loc[[x for x in order if x in set(layer_best["layer"])]].reset_index()
    descriptions = {job.label: job.description for job in jobs}
    return Comparison(root, tuple(sources), s, clean, layers, rates, best, failure_best, layer_best, descriptions,
                      time.perf_counter() - start)


# --------------------------------------------------------------------------- one model


class _Job:
    """One model's part of a comparison: its BER campaign and its PVF study, two campaign directories."""

    def __init__(self, label: str, source: nn.Module | str, root: Path, s: CompareSettings, data: Any) -> None:
        from ..campaign import CampaignSpec, DataSpec, ModelSpec, RunSpec, SamplerSpec, SiteSpec
        from ..campaign.sources import zoo_description

        self.label, self.s = label, s
        self.ber_dir, self.pvf_dir = campaign_dirs(root, label)
        self.description = zoo_description(source) if isinstance(source, str) else f"{label}: {type(source).__name__} (your model)"
        model = ModelSpec((source if isinstance(source, str) else label,))
        data_spec, sites = DataSpec(dataset=s.dataset, inputs=s.inputs), SiteSpec(kinds=s.kinds, pruned="live")
        self.ber = CampaignSpec(name=f"{label} BER", sampler=SamplerSpec(kind="ber", rates=s.rates, scenarios=s.scenarios),
                                run=RunSpec(shard_size=s.scenarios), seed=s.seed, model=model, data=data_spec, sites=sites)
        self.pvf = CampaignSpec(name=f"{label} PVF", sampler=SamplerSpec(kind="sfi", granularity="layer", trials=s.trials),
                                run=RunSpec(shard_size=1000), seed=s.seed, model=model, data=data_spec, sites=sites)
        self.model = source if isinstance(source, nn.Module) else None
        self.data = data

    def check(self) -> None:
        """Load the model and data and check both directories, before any work (nothing is kept:
        seven models' golden runs would otherwise stay in memory)."""
        from ..campaign.runner import CampaignRunner
        from ..campaign.store import Store

        manifest = CampaignRunner(self.pvf, self.model, self.data).manifest()
        for spec, directory in ((self.ber, self.ber_dir), (self.pvf, self.pvf_dir)):
            Store(directory).check({**manifest, "name": spec.name, "spec_hash": spec.hash()})

    def run(self, progress: bool) -> None:
        from tqdm.auto import tqdm

        from ..campaign import run

        for what, spec, directory in (("BER", self.ber, self.ber_dir), ("PVF", self.pvf, self.pvf_dir)):
            with tqdm(desc=f"{self.label} {what}", unit="scen", disable=not progress, leave=False) as bar:
                def step(n: int, remaining: int) -> None:
                    if remaining:
                        bar.reset(total=remaining)
                    bar.update(n)

                store = run(spec, directory, progress=step, model=self.model, data=self.data)
            if progress:
                m = store.manifest()
                tqdm.write(f"{self.label}: {what} campaign, {m['scenarios']} scenarios x {m['inputs']} inputs -> {directory}")

    def clean(self) -> float:
        from ..campaign.store import Store

        return float(Store(self.ber_dir).manifest()["golden_accuracy"] or float("nan"))

    def layers(self, study: Any) -> pd.DataFrame:
        from .results import by_group

        strata = study.manifest["strata"]
        g = by_group(study, "stratum").set_index("stratum")
        g = g.loc[[name for name in strata if name in g.index]]  # in the study's (network) order
        rows = [{"model": self.label, "layer": layer, "pvf": r.failure, "low": r.failure_low, "high": r.failure_high,
                 "method": r.failure_method,
                 "trials": int(r.scenarios), "incorrect": float(r.failure * r.scenarios), "population": strata[layer]["population"],
                 "exhaustive": strata[layer]["samples"] >= strata[layer]["population"]}
                for layer, r in g.iterrows()]
        return pd.DataFrame(rows)

    def rates(self, campaign: Any) -> pd.DataFrame:
        from .results import by_group

        g = by_group(campaign, "rate")
        cols = ["rate", "scenarios", *(f"{m}{x}" for m in ("accuracy", "failure") for x in ("", "_low", "_high", "_method"))]
        return g[cols].assign(model=self.label)[["model", *cols]]


def _dirname(name: str) -> str:
    return name.replace(":", "_").replace("/", "_")


def _check_models(models: Models) -> dict[str, nn.Module | str]:
    """``{label: model or spec}`` from the argument, checked before any work."""
    from ..campaign.sources import zoo_models

    known = zoo_models()
    if models is None:
        return {n: n for n in known}
    if isinstance(models, (str, nn.Module)):
        raise FaultError(f"models must be a list of model names or a {{label: model}} mapping, not a single {type(models).__name__}")
    if isinstance(models, Mapping):
        sources = dict(models)
        for label, m in sources.items():
            if not isinstance(label, str) or not label:
                raise FaultError(f"model labels must be non-empty strings, got {label!r}")
            if not isinstance(m, (str, nn.Module)):
                raise FaultError(f"model {label!r} must be an nn.Module or a model name, got {type(m).__name__}")
    else:
        names = list(models)
        for n in names:
            if not isinstance(n, str) or not n:
                raise FaultError(f"model names must be non-empty strings, got {n!r}"
                                 + ("; pass your own models as a {label: model} mapping" if isinstance(n, nn.Module) else ""))
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise FaultError(f"models listed twice: {', '.join(repeated)}")
        sources = {n: n for n in names}
    if not sources:
        raise FaultError(f"the model list is empty; give at least one of: {', '.join(known)}")
    for m in sources.values():
        if isinstance(m, str) and m not in known and ":" not in m:
            raise FaultError(f"unknown model {m!r}; known: {', '.join(known)} (or package.module:factory)")
    dirs = [_dirname(n) for n in sources]
    if len(set(dirs)) < len(dirs) or "report" in dirs:
        raise FaultError(f"the models {list(sources)} do not map to distinct result directories (and none may be 'report')")
    return sources


def _check_settings(s: CompareSettings) -> None:
    def whole(name: str, v: Any) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise FaultError(f"{name} must be an integer >= 1, got {v!r}")

    if isinstance(s.rates, (str, bytes)) or not isinstance(s.rates, Sequence) or not s.rates:
        raise FaultError(f"rates must be a non-empty list of bit error rates in (0, 1), got {s.rates!r}")
    for r in s.rates:
        if isinstance(r, bool) or not isinstance(r, (int, float, np.integer, np.floating)) or not math.isfinite(r) or not 0 < r < 1:
            raise FaultError(f"every bit error rate must be a number in (0, 1); got {r!r} in {list(s.rates)}")
    if any(b <= a for a, b in pairwise(s.rates)):
        raise FaultError(f"rates must be strictly increasing (no repeats), got {list(s.rates)}")
    whole("scenarios", s.scenarios)
    whole("trials", s.trials)
    if isinstance(s.inputs, bool) or not isinstance(s.inputs, (int, np.integer)) or s.inputs < 0:
        raise FaultError(f"inputs must be an integer >= 0 (0: all), got {s.inputs!r}")
    if isinstance(s.seed, bool) or not isinstance(s.seed, (int, np.integer)) or s.seed < 0:
        raise FaultError(f"seed must be an integer >= 0, got {s.seed!r}")
    from ..campaign.spec import KINDS

    if not s.kinds or set(s.kinds) - {"weight", "bias", "parameter"}:
        raise FaultError(f"kinds must be stored parameter kinds among ('weight', 'bias', 'parameter'), got {list(s.kinds)} "
                         f"(campaign kinds: {KINDS})")


#: the default comparison (a few minutes on one core for the seven reference models)
DEFAULT = CompareSettings()
#: ``--quick``: fewer rates, scenarios and trials (about a minute for the seven reference models)
QUICK = CompareSettings(rates=(1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1), scenarios=10, trials=200)
