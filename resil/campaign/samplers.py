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
    """Base class: a number of scenarios and a way to draw any of them."""

    def __init__(self, spec: SamplerSpec, space: FaultSpace, model: FaultModel, seed: int) -> None:
        self.spec, self.space, self.model, self.seed = spec, space, model, seed

    def count(self) -> int:
        """How many scenarios the campaign has."""
        raise NotImplementedError

    def draw(self, ids: np.ndarray) -> Scenarios:
        """The scenarios with these ids."""
        raise NotImplementedError

    def _scenarios(self, ids: np.ndarray, flat: list[np.ndarray], *, rate: np.ndarray | None = None,
                   weight: np.ndarray | None = None, stratum: np.ndarray | None = None) -> Scenarios:
        """Scenarios from the flat fault locations of each scenario."""
        n = len(ids)
        owner = np.repeat(np.arange(n), [len(f) for f in flat])
        locations = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)
        site, element, bit = self.space.locate(locations)
        names = np.array([s.name for s in self.space.sites])
        uses_bits = self.model.uses_bits
        faults = FaultSet(site=names[site], index=element, bit=bit if uses_bits else None, model=self.model)
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
        return self.spec.scenarios

    def draw(self, ids: np.ndarray) -> Scenarios:
        k = min(self.spec.faults_per_scenario, self.space.total)
        return self._scenarios(ids, [rng_for(self.seed, i).choice(self.space.total, k, replace=False) for i in ids])


class BitErrorRateSampler(Sampler):
    """For each rate p, ``scenarios`` scenarios in which every location is faulty with probability p."""

    def count(self) -> int:
        return len(self.spec.rates) * self.spec.scenarios

    def draw(self, ids: np.ndarray) -> Scenarios:
        rates = np.array(self.spec.rates)[np.asarray(ids) // self.spec.scenarios]
        flat = []
        for i, p in zip(ids, rates):
            rng = rng_for(self.seed, i)
            flat.append(np.sort(rng.choice(self.space.total, rng.binomial(self.space.total, p), replace=False)))
        return self._scenarios(ids, flat, rate=rates, stratum=np.array([f"p={p:.0e}" for p in rates], dtype=object))


def layers(space: FaultSpace) -> np.ndarray:
    """The layer of every site of the space."""
    return np.array([layer_of(s) for s in space.sites], dtype=object)
