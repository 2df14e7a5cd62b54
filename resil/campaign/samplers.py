"""Samplers: each turns scenario ids into faults, seeded from (campaign seed, scenario id), so
any sharding of the ids gives the same scenarios.

A sampler is one class registered under its :attr:`Sampler.kind` (the TOML's ``[sampler] kind``):
it checks its own :class:`~resil.campaign.spec.SamplerSpec` fields, draws scenarios, writes its
manifest entry and estimates the failure probability of a stored table. Adding a sampler is one
class with :func:`register_sampler`::

    @register_sampler
    class EveryOther(UniformSampler):
        kind = "every_other"          # [sampler] kind = "every_other"
        def draw(self, ids):
            return self._scenarios(ids, [np.array([2 * i % self.space.total]) for i in ids])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import pandas as pd

from ..errors import FaultError
from ..fault_models import FaultModel
from ..faults import FaultSet
from ..registry import Registry
from ..statistics import (
    Estimate,
    combine_strata,
    defensive_mixture,
    importance_estimate,
    importance_weights,
    leveugle_sample_size,
    scenario_estimate,
)
from .adaptive import iterative_sfi, sequence_stop
from .space import FaultSpace, layer_of

if TYPE_CHECKING:
    from .runner import CampaignRunner
    from .spec import SamplerSpec

_REGISTRY: Registry[Sampler] = Registry("sampler")
S = TypeVar("S", bound="type[Sampler]")


def register_sampler(cls: S) -> S:
    """Class decorator registering a sampler class under its :attr:`Sampler.kind`."""
    if not cls.kind:
        raise FaultError(f"sampler class {cls.__name__} declares no kind: set kind = \"...\" (its [sampler] kind)")
    return _REGISTRY.register(cls.kind)(cls)


def sampler_class(kind: str) -> type[Sampler]:
    """The sampler class registered under ``kind``.

    Example:
        >>> sampler_class("sfi").__name__
        'StatisticalSampler'
    """
    return _REGISTRY.get(kind)


#: the manifest ``sampler`` of a PVF study (:func:`resil.analysis.pvf` with ``out``): campaign-shaped
#: tables of trials drawn per group, not by a registered sampler
PVF_STUDY = "pvf"


def stored_sampler(kind: str) -> type[Sampler]:
    """The class whose estimator reads a stored table whose manifest names ``kind``: the
    registered sampler, or the base class (the mean over scenarios) for a PVF study.

    Example:
        >>> stored_sampler("importance").own_estimate, stored_sampler(PVF_STUDY).own_estimate
        (True, False)
    """
    return Sampler if kind == PVF_STUDY else sampler_class(kind)


def sampler_kinds() -> tuple[str, ...]:
    """Every registered sampler kind, in the order they were registered."""
    return tuple(c.kind for c in _REGISTRY.classes())


def adaptive_kinds() -> tuple[str, ...]:
    """The kinds of the samplers that run adaptive campaigns (``[sampler] stop_margin``)."""
    return tuple(c.kind for c in _REGISTRY.classes() if c.adaptive)


@dataclass(frozen=True)
class Scenarios:
    """The faults of a batch of scenarios.

    Attributes:
        ids: scenario ids, shape (n,).
        faults: every fault of these scenarios; ``owner[j]`` is the position in ``ids`` of fault j.
        owner: see above.
        weight: importance weight per scenario (1 for plain sampling).
        stratum: label of each scenario's stratum (site, layer, layer/bit, rate ...).
        rate: the bit error rate per scenario (NaN unless BER).
        masked: scenarios decided masked without simulation (data-aware SFI).
    """

    ids: np.ndarray
    faults: FaultSet
    owner: np.ndarray
    weight: np.ndarray
    stratum: np.ndarray
    rate: np.ndarray
    masked: np.ndarray

    def of(self, position: int) -> FaultSet:
        """The faults of the scenario at ``position``."""
        return self.faults[self.owner == position]


def failure_fractions(table: pd.DataFrame) -> np.ndarray:
    """Each scenario's failure fraction: the share of its inputs with a critical or non-finite output."""
    return ((table.critical + table.non_finite) / table.inputs).to_numpy()


def rng_for(seed: int, scenario: int) -> np.random.Generator:
    """The random stream of one scenario: a function of (campaign seed, scenario id) only."""
    return np.random.default_rng([seed, int(scenario)])


class Sampler:
    """Base class: a number of scenarios and a way to draw any of them. With ``samples > 0``
    every fault also names one of that many inputs (kept as :attr:`inputs`) (per-sample faults), drawn uniformly from
    the scenario's own stream after its locations, so the locations equal those of the same
    campaign without ``per_sample``.

    A subclass declares its :attr:`kind` and is registered with :func:`register_sampler`; the
    class methods are what spec validation (:meth:`check`, :meth:`check_adaptive`) and the
    metrics of stored campaigns (:meth:`estimate`) use, without a sampler instance."""

    #: the ``[sampler] kind`` it is registered under (set by :func:`register_sampler` from the class)
    kind: ClassVar[str] = ""
    registered_name: ClassVar[str] = ""
    #: whether it runs adaptive campaigns (``[sampler] stop_margin``, see :mod:`resil.campaign.adaptive`)
    adaptive: ClassVar[bool] = False
    #: whether an adaptive campaign of it stops on a confidence sequence (its tables then show that interval)
    sequential: ClassVar[bool] = True
    #: whether :meth:`estimate` differs from the mean over scenarios of :func:`resil.campaign.metrics.by_group`
    #: (stratified, re-weighted): reports then show it as the campaign's overall estimate
    own_estimate: ClassVar[bool] = False
    #: whether an adaptive campaign must give ``max_scenarios``, and what its first round (its pilot) is, for messages
    needs_max: ClassVar[bool] = True
    pilot_is: ClassVar[str] = "[run] shard_size, the first round"

    def __init__(self, spec: SamplerSpec, space: FaultSpace, model: FaultModel, seed: int, *, samples: int = 0) -> None:
        self.spec, self.space, self.model, self.seed, self.inputs = spec, space, model, seed, samples

    @classmethod
    def build(cls, runner: CampaignRunner, *, samples: int = 0) -> Sampler:
        """The sampler of a campaign, from its runner (space, fault model, and model and inputs if it needs them)."""
        return cls(runner.spec.sampler, runner.space, runner.fault_model, runner.spec.seed, samples=samples)

    @classmethod
    def check(cls, spec: SamplerSpec) -> str | None:
        """What is wrong with ``spec``'s fields for this sampler (their types and ranges are checked already), or None."""
        return None

    @classmethod
    def fixes_count(cls, spec: SamplerSpec) -> bool:
        """Whether ``spec`` fixes the number of scenarios, which an adaptive campaign decides itself."""
        return spec.scenarios_given

    @classmethod
    def pilot(cls, spec: SamplerSpec, shard_size: int) -> int:
        """The scenarios per stratum of an adaptive campaign's first round."""
        return shard_size

    @classmethod
    def check_adaptive(cls, spec: SamplerSpec, shard_size: int) -> str | None:
        """What is wrong with the adaptive fields (``stop_margin`` is set and in range), or None."""
        if cls.fixes_count(spec):
            return ("[sampler] give either a fixed number of scenarios (scenarios, trials) or stop_margin, not both; "
                    "with stop_margin, max_scenarios bounds the scenarios per stratum")
        pilot = cls.pilot(spec, shard_size)
        if spec.max_scenarios < 0 or (cls.needs_max and not spec.max_scenarios):
            return f"[sampler] stop_margin needs max_scenarios (an integer >= the pilot of {pilot} scenarios per stratum)"
        if spec.max_scenarios and spec.max_scenarios < pilot:
            return f"[sampler] max_scenarios ({spec.max_scenarios}) is below the pilot size {pilot} ({cls.pilot_is})"
        return None

    @classmethod
    def estimate(cls, manifest: Mapping[str, Any], table: pd.DataFrame, confidence: float = 0.95, *,
                 sequential: bool = False) -> Estimate:
        """The failure probability of a stored campaign of this sampler (its manifest and result
        table; ``sequential``: it stopped on a confidence sequence): the mean failure fraction over
        scenarios, :func:`resil.statistics.scenario_estimate`."""
        return scenario_estimate(failure_fractions(table), confidence, cls.population(manifest, table),
                                 single_fault=bool((table.n_faults <= 1).all()), sequential=sequential)

    @classmethod
    def population(cls, manifest: Mapping[str, Any], table: pd.DataFrame) -> float:
        """The number of scenarios the estimate's finite population correction uses (inf: none)."""
        return float("inf")

    def count(self) -> int:
        """How many scenarios the campaign has."""
        raise NotImplementedError

    def draw(self, ids: np.ndarray) -> Scenarios:
        """The scenarios with these ids."""
        raise NotImplementedError

    def blocks(self) -> list[tuple[str, int, int]]:
        """The strata as consecutive id ranges ``(name, first id, scenarios)``, which adaptive
        campaigns run round by round (:mod:`resil.campaign.adaptive`); one block by default."""
        return [("all", 0, self.count())]

    def stop_rule(self, block: int, failure: np.ndarray, accuracy: np.ndarray | None) -> dict[str, Any]:
        """An adaptive campaign's check of stratum ``block`` after a round, from its scenarios'
        failure (and accuracy) fractions: ``half_width`` and ``stopped`` (``"margin"`` or ``""``)."""
        return sequence_stop([failure] if accuracy is None else [failure, accuracy], self.spec.stop_margin)

    def locations(self, block: int) -> int | None:
        """How many locations stratum ``block`` can draw from, when running them all ends it (None: it cannot run out)."""
        return None

    def manifest(self) -> dict[str, Any]:
        """The campaign manifest's entries about the sampler: its ``sampler`` kind and ``strata``."""
        return {"sampler": self.kind, "strata": None}

    def _scenarios(self, ids: np.ndarray, flat: list[np.ndarray], *, rate: np.ndarray | None = None,
                   weight: np.ndarray | None = None, stratum: np.ndarray | None = None) -> Scenarios:
        """Scenarios from the flat fault locations of each scenario."""
        n = len(ids)
        owner = np.repeat(np.arange(n), [len(f) for f in flat])
        locations = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)
        site, element, bit = self.space.locate(locations)
        names = np.array([s.name for s in self.space.sites])
        uses_bits = self.model.uses_bits
        batch = None
        if self.inputs:
            batch = np.concatenate([np.random.default_rng([self.seed, int(i), 1]).integers(0, self.inputs, len(f))
                                    for i, f in zip(ids, flat, strict=True)]) if flat else np.zeros(0, dtype=np.int64)
        faults = FaultSet(site=names[site], index=element, bit=bit if uses_bits else None, model=self.model, batch=batch)
        if stratum is None:
            first = np.array([site[owner == i][0] if (owner == i).any() else -1 for i in range(n)])
            stratum = np.array([self.space.sites[s].name if s >= 0 else "" for s in first], dtype=object)
        return Scenarios(
            ids=np.asarray(ids, dtype=np.int64), faults=faults, owner=owner,
            weight=np.ones(n) if weight is None else weight, stratum=np.asarray(stratum, dtype=object),
            rate=np.full(n, np.nan) if rate is None else rate, masked=np.zeros(n, dtype=bool),
        )


@register_sampler
class ExhaustiveSampler(Sampler):
    """Every location of the space once: scenario i is location i (the estimate of a complete
    campaign has no sampling error: finite population correction)."""

    kind = "exhaustive"

    @classmethod
    def population(cls, manifest: Mapping[str, Any], table: pd.DataFrame) -> float:
        return len(table) if len(table) == manifest.get("scenarios") else float("inf")

    def count(self) -> int:
        return self.space.total

    def draw(self, ids: np.ndarray) -> Scenarios:
        return self._scenarios(ids, [np.array([i]) for i in ids])


@register_sampler
class UniformSampler(Sampler):
    """``scenarios`` scenarios of ``faults_per_scenario`` locations drawn uniformly (distinct within a scenario)."""

    kind = "uniform"
    adaptive = True

    def count(self) -> int:
        return self.spec.max_scenarios if self.spec.stop_margin else self.spec.scenarios

    def draw(self, ids: np.ndarray) -> Scenarios:
        k = min(self.spec.faults_per_scenario, self.space.total)
        return self._scenarios(ids, [rng_for(self.seed, i).choice(self.space.total, k, replace=False) for i in ids])


@register_sampler
class BitErrorRateSampler(Sampler):
    """For each rate p, ``scenarios`` scenarios in which every location is faulty with probability p."""

    kind = "ber"
    adaptive = True

    @classmethod
    def check(cls, spec: SamplerSpec) -> str | None:
        return None if spec.rates else "[sampler] kind 'ber' needs rates, e.g. rates = [1e-5, 1e-4]"

    @property
    def per_rate(self) -> int:
        """Scenario ids per rate: ``scenarios``, or ``max_scenarios`` in an adaptive campaign."""
        return self.spec.max_scenarios if self.spec.stop_margin else self.spec.scenarios

    def count(self) -> int:
        return len(self.spec.rates) * self.per_rate

    def blocks(self) -> list[tuple[str, int, int]]:
        return [(f"p={p:.0e}", i * self.per_rate, self.per_rate) for i, p in enumerate(self.spec.rates)]

    def draw(self, ids: np.ndarray) -> Scenarios:
        rates = np.array(self.spec.rates)[np.asarray(ids) // self.per_rate]
        flat = []
        for i, p in zip(ids, rates, strict=True):
            rng = rng_for(self.seed, i)
            flat.append(np.sort(rng.choice(self.space.total, rng.binomial(self.space.total, p), replace=False)))
        return self._scenarios(ids, flat, rate=rates, stratum=np.array([f"p={p:.0e}" for p in rates], dtype=object))


def layers(space: FaultSpace) -> np.ndarray:
    """The layer of every site of the space."""
    return np.array([layer_of(s) for s in space.sites], dtype=object)


@register_sampler
class StatisticalSampler(Sampler):
    """Statistical fault injection: per stratum (the whole network, each layer, or each layer x
    bit position), the Leveugle sample size for ``margin``/``confidence``/``p`` (or a fixed
    ``trials``, capped at the stratum's locations), drawn without replacement (a seeded
    permutation of the stratum's locations).

    With ``data_aware`` and a model with a :attr:`~resil.FaultModel.stuck_value` (stuck-at),
    locations whose stored bit already equals the stuck value are masked by construction: they
    are left out of the locations to sample and reported by :meth:`strata` (``known_masked``),
    so the stratified estimate counts them as masked.

    Adaptive campaigns run iterative SFI (:func:`resil.campaign.adaptive.iterative_sfi`).
    """

    kind = "sfi"
    adaptive = True
    sequential = False
    own_estimate = True
    needs_max = False
    pilot_is = "Leveugle's n for a 5% margin, iterative SFI's pilot"

    def __init__(self, spec: SamplerSpec, space: FaultSpace, model: FaultModel, seed: int, *, samples: int = 0) -> None:
        super().__init__(spec, space, model, seed, samples=samples)
        active: dict[str, list[np.ndarray]] = {}
        population: dict[str, int] = {}
        site_layers = layers(space)
        for s, site in enumerate(space.sites):
            start, stop = space.site_range(s)
            nb = len(space.bits[s])
            locations = np.arange(start, stop)
            slot = (locations - start) % nb
            stratum = np.full(len(locations), "network" if spec.granularity == "network" else str(site_layers[s]), dtype=object)
            if spec.granularity == "layer_bit":
                stratum = np.array([f"{site_layers[s]}/b{b}" for b in space.bits[s]], dtype=object)[slot]
            keep = np.ones(len(locations), dtype=bool)
            if spec.data_aware and model.stuck_value is not None:
                codes = site.codes().cpu().numpy()[space.elements[s]]
                keep = ((codes[(locations - start) // nb] >> space.bits[s][slot]) & 1) != model.stuck_value
            for name in dict.fromkeys(stratum):
                in_stratum = stratum == name
                population[name] = population.get(name, 0) + int(in_stratum.sum())
                active.setdefault(name, []).append(locations[in_stratum & keep])
        self.names = list(active)
        self.populations = population
        self.active = [np.concatenate(active[n]) for n in self.names]
        self.samples = np.array([min(spec.trials, len(a)) if spec.trials else self._planned(len(a)) if len(a) else 0 for a in self.active])
        self.starts = np.r_[0, np.cumsum(self.samples)]
        self._perms: dict[int, np.ndarray] = {}

    @classmethod
    def fixes_count(cls, spec: SamplerSpec) -> bool:
        return spec.scenarios_given or bool(spec.trials)

    @classmethod
    def pilot(cls, spec: SamplerSpec, shard_size: int) -> int:
        return leveugle_sample_size(float("inf"), 0.05, spec.confidence)

    @classmethod
    def estimate(cls, manifest: Mapping[str, Any], table: pd.DataFrame, confidence: float = 0.95, *,
                 sequential: bool = False) -> Estimate:
        """The stratified estimator (finite population correction per stratum); with data-aware
        sampling, the locations known to be masked join as fully known strata."""
        per = table.assign(fraction=failure_fractions(table)).groupby("stratum")["fraction"].agg(["sum", "count"])
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

    def _planned(self, population: int) -> int:
        """Leveugle's n for the stratum; in an adaptive (iterative) campaign the conservative n for
        ``stop_margin`` with p = 0.5, capped at ``max_scenarios``: the most it may run."""
        s = self.spec
        if not s.stop_margin:
            return leveugle_sample_size(population, s.margin, s.confidence, s.p)
        n = leveugle_sample_size(population, s.stop_margin, s.confidence, 0.5)
        return min(n, s.max_scenarios) if s.max_scenarios else n

    def blocks(self) -> list[tuple[str, int, int]]:
        return [(n, int(start), int(k)) for n, start, k in zip(self.names, self.starts[:-1], self.samples, strict=True)]

    def strata(self) -> dict[str, dict[str, int]]:
        """Per stratum: its population, the locations known masked (data-aware) and the sample size."""
        return {n: {"population": self.populations[n], "known_masked": self.populations[n] - len(a), "samples": int(k)}
                for n, a, k in zip(self.names, self.active, self.samples, strict=True)}

    def stop_rule(self, block: int, failure: np.ndarray, accuracy: np.ndarray | None) -> dict[str, Any]:
        return iterative_sfi(failure, len(self.active[block]), self.spec.stop_margin, self.spec.confidence)

    def locations(self, block: int) -> int:
        return len(self.active[block])

    def manifest(self) -> dict[str, Any]:
        return {"sampler": self.kind, "strata": self.strata()}

    def count(self) -> int:
        return int(self.starts[-1])

    def draw(self, ids: np.ndarray) -> Scenarios:
        ids = np.asarray(ids, dtype=np.int64)
        h = np.searchsorted(self.starts, ids, side="right") - 1
        flat = []
        for i, stratum in zip(ids, h, strict=True):
            if stratum not in self._perms:
                self._perms[stratum] = np.random.default_rng([self.seed, int(stratum)]).permutation(len(self.active[stratum]))
            flat.append(self.active[stratum][self._perms[stratum][[i - self.starts[stratum]]]])
        return self._scenarios(ids, flat, stratum=np.array([self.names[s] for s in h], dtype=object))


@register_sampler
class ImportanceSampler(Sampler):
    """Importance sampling of single faults: location drawn with probability q (a defensive
    mixture of sensitivity scores and the uniform distribution), weighted by ``1 / (N q)`` so
    that weighted means estimate the uniform-sampling failure rate without bias."""

    kind = "importance"
    own_estimate = True

    def __init__(self, spec: SamplerSpec, space: FaultSpace, model: FaultModel, seed: int, scores: np.ndarray, *,
                 samples: int = 0) -> None:
        super().__init__(spec, space, model, seed, samples=samples)
        q = defensive_mixture(scores, spec.uniform_share)
        self.cdf = np.cumsum(q)
        self.weights = importance_weights(q)

    @classmethod
    def build(cls, runner: CampaignRunner, *, samples: int = 0) -> Sampler:
        """With the gradient sensitivity scores of every location (:mod:`resil.campaign.sensitivity`)."""
        from .sensitivity import sensitivity_scores

        scores = sensitivity_scores(runner.model, runner.inputs, runner.evaluator.golden.top1, runner.space)
        return cls(runner.spec.sampler, runner.space, runner.fault_model, runner.spec.seed, scores, samples=samples)

    @classmethod
    def check(cls, spec: SamplerSpec) -> str | None:
        return None if spec.faults_per_scenario == 1 else "[sampler] kind 'importance' draws single faults: faults_per_scenario must be 1"

    @classmethod
    def estimate(cls, manifest: Mapping[str, Any], table: pd.DataFrame, confidence: float = 0.95, *,
                 sequential: bool = False) -> Estimate:
        """The unbiased weighted mean of per-fault failure fractions, with its CLT interval."""
        return importance_estimate(failure_fractions(table), table.weight.to_numpy(), confidence)

    def count(self) -> int:
        return self.spec.scenarios

    def draw(self, ids: np.ndarray) -> Scenarios:
        u = np.array([rng_for(self.seed, i).random() for i in ids])
        flat = np.minimum(np.searchsorted(self.cdf, u * self.cdf[-1], side="right"), self.space.total - 1)
        return self._scenarios(ids, [np.array([f]) for f in flat], weight=self.weights[flat])
