"""Samplers: each turns scenario ids into faults, seeded from (campaign seed, scenario id), so
any sharding of the ids gives the same scenarios."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..fault_models import FaultModel
from ..faults import FaultSet
from .space import FaultSpace, layer_of
from .spec import SamplerSpec


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


def rng_for(seed: int, scenario: int) -> np.random.Generator:
    """The random stream of one scenario: a function of (campaign seed, scenario id) only."""
    return np.random.default_rng([seed, int(scenario)])


class Sampler:
    """Base class: a number of scenarios and a way to draw any of them. With ``samples > 0``
    every fault also names one of that many inputs (kept as :attr:`inputs`) (per-sample faults), drawn uniformly from
    the scenario's own stream after its locations, so the locations equal those of the same
    campaign without ``per_sample``."""

    def __init__(self, spec: SamplerSpec, space: FaultSpace, model: FaultModel, seed: int, *, samples: int = 0) -> None:
        self.spec, self.space, self.model, self.seed, self.inputs = spec, space, model, seed, samples

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
                                    for i, f in zip(ids, flat)]) if flat else np.zeros(0, dtype=np.int64)
        faults = FaultSet(site=names[site], index=element, bit=bit if uses_bits else None, model=self.model, batch=batch)
        if stratum is None:
            first = np.array([site[owner == i][0] if (owner == i).any() else -1 for i in range(n)])
            stratum = np.array([self.space.sites[s].name if s >= 0 else "" for s in first], dtype=object)
        return Scenarios(
            ids=np.asarray(ids, dtype=np.int64), faults=faults, owner=owner,
            weight=np.ones(n) if weight is None else weight, stratum=np.asarray(stratum, dtype=object),
            rate=np.full(n, np.nan) if rate is None else rate, masked=np.zeros(n, dtype=bool),
        )


class ExhaustiveSampler(Sampler):
    """Every location of the space once: scenario i is location i."""

    def count(self) -> int:
        return self.space.total

    def draw(self, ids: np.ndarray) -> Scenarios:
        return self._scenarios(ids, [np.array([i]) for i in ids])


class UniformSampler(Sampler):
    """``scenarios`` scenarios of ``faults_per_scenario`` locations drawn uniformly (distinct within a scenario)."""

    def count(self) -> int:
        return self.spec.max_scenarios if self.spec.stop_margin else self.spec.scenarios

    def draw(self, ids: np.ndarray) -> Scenarios:
        k = min(self.spec.faults_per_scenario, self.space.total)
        return self._scenarios(ids, [rng_for(self.seed, i).choice(self.space.total, k, replace=False) for i in ids])


class BitErrorRateSampler(Sampler):
    """For each rate p, ``scenarios`` scenarios in which every location is faulty with probability p."""

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
        for i, p in zip(ids, rates):
            rng = rng_for(self.seed, i)
            flat.append(np.sort(rng.choice(self.space.total, rng.binomial(self.space.total, p), replace=False)))
        return self._scenarios(ids, flat, rate=rates, stratum=np.array([f"p={p:.0e}" for p in rates], dtype=object))


def layers(space: FaultSpace) -> np.ndarray:
    """The layer of every site of the space."""
    return np.array([layer_of(s) for s in space.sites], dtype=object)


class StatisticalSampler(Sampler):
    """Statistical fault injection: per stratum (the whole network, each layer, or each layer x
    bit position), the Leveugle sample size for ``margin``/``confidence``/``p`` (or a fixed
    ``trials``, capped at the stratum's locations), drawn without replacement (a seeded
    permutation of the stratum's locations).

    With ``data_aware`` and a stuck-at model, locations whose stored bit already equals the
    stuck value are masked by construction: they are left out of the locations to sample and
    reported by :meth:`strata` (``known_masked``), so estimators count them as masked.
    """

    def __init__(self, spec: SamplerSpec, space: FaultSpace, model: FaultModel, seed: int, *, samples: int = 0) -> None:
        from ..fault_models import StuckAt

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
            if spec.data_aware and isinstance(model, StuckAt):
                codes = site.codes().cpu().numpy()[space.elements[s]]
                keep = ((codes[(locations - start) // nb] >> space.bits[s][slot]) & 1) != model.value
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

    def _planned(self, population: int) -> int:
        """Leveugle's n for the stratum; in an adaptive (iterative) campaign the conservative n for
        ``stop_margin`` with p = 0.5, capped at ``max_scenarios``: the most it may run."""
        from ..statistics import leveugle_sample_size

        s = self.spec
        if not s.stop_margin:
            return leveugle_sample_size(population, s.margin, s.confidence, s.p)
        n = leveugle_sample_size(population, s.stop_margin, s.confidence, 0.5)
        return min(n, s.max_scenarios) if s.max_scenarios else n

    def blocks(self) -> list[tuple[str, int, int]]:
        return [(n, int(start), int(k)) for n, start, k in zip(self.names, self.starts, self.samples)]

    def strata(self) -> dict[str, dict[str, int]]:
        """Per stratum: its population, the locations known masked (data-aware) and the sample size."""
        return {n: {"population": self.populations[n], "known_masked": self.populations[n] - len(a), "samples": int(k)}
                for n, a, k in zip(self.names, self.active, self.samples)}

    def count(self) -> int:
        return int(self.starts[-1])

    def draw(self, ids: np.ndarray) -> Scenarios:
        ids = np.asarray(ids, dtype=np.int64)
        h = np.searchsorted(self.starts, ids, side="right") - 1
        flat = []
        for i, stratum in zip(ids, h):
            if stratum not in self._perms:
                self._perms[stratum] = np.random.default_rng([self.seed, int(stratum)]).permutation(len(self.active[stratum]))
            flat.append(self.active[stratum][self._perms[stratum][[i - self.starts[stratum]]]])
        return self._scenarios(ids, flat, stratum=np.array([self.names[s] for s in h], dtype=object))


class ImportanceSampler(Sampler):
    """Importance sampling of single faults: location drawn with probability q (a defensive
    mixture of sensitivity scores and the uniform distribution), weighted by ``1 / (N q)`` so
    that weighted means estimate the uniform-sampling failure rate without bias."""

    def __init__(self, spec: SamplerSpec, space: FaultSpace, model: FaultModel, seed: int, scores: np.ndarray, *,
                 samples: int = 0) -> None:
        from ..statistics import defensive_mixture, importance_weights

        super().__init__(spec, space, model, seed, samples=samples)
        q = defensive_mixture(scores, spec.uniform_share)
        self.cdf = np.cumsum(q)
        self.weights = importance_weights(q)

    def count(self) -> int:
        return self.spec.scenarios

    def draw(self, ids: np.ndarray) -> Scenarios:
        u = np.array([rng_for(self.seed, i).random() for i in ids])
        flat = np.minimum(np.searchsorted(self.cdf, u * self.cdf[-1], side="right"), self.space.total - 1)
        return self._scenarios(ids, [np.array([f]) for f in flat], weight=self.weights[flat])
