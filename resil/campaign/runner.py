"""Running a campaign: the golden run, then every scenario of every shard (inject, forward, classify)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..discovery import sites as list_sites
from ..fault_models import StuckAt, Zero, fault_model_from_spec
from ..injection import inject
from ..loading import load_inputs, load_model
from .grouped import GroupedForward, run_grouped
from .outcomes import OUTCOMES, Golden, classify, classify_many
from .samplers import BitErrorRateSampler, ExhaustiveSampler, ImportanceSampler, Sampler, Scenarios, StatisticalSampler, UniformSampler
from .space import FaultSpace, layer_of
from .suffix import SuffixForward
from .spec import CampaignSpec, spec_from_dict
from .store import Store

SAMPLERS: dict[str, type[Sampler]] = {
    "exhaustive": ExhaustiveSampler, "uniform": UniformSampler, "ber": BitErrorRateSampler, "sfi": StatisticalSampler}


class CampaignRunner:
    """Everything a shard needs, built once per process: model, inputs, sites, space, sampler, golden run."""

    def __init__(self, spec: CampaignSpec) -> None:
        (model_name,) = spec.model.names
        self.spec = spec
        self.model = load_model(model_name)
        self.inputs, self.labels = load_inputs(model_name, spec.data.dataset, spec.data.inputs)
        self.sites = list_sites(self.model, self.inputs[:2], pruned=spec.sites.pruned)
        self.fault_model = fault_model_from_spec(spec.faults.model)
        self.space = FaultSpace.select(self.sites, spec.sites, spec.faults, self.fault_model.uses_bits, self.fault_model.span)
        self.suffix = SuffixForward(self.model, self.inputs, spec.run.batch_size)
        self.golden = Golden(self.suffix.golden() if spec.run.mode == "fast" else self.suffix.run_from(0), self.labels)
        self.grouped = GroupedForward(self.suffix)
        self.sampler = self._sampler()

    def _sampler(self) -> Sampler:
        s = self.spec
        if s.sampler.kind == "importance":
            from .sensitivity import sensitivity_scores

            scores = sensitivity_scores(self.model, self.inputs, self.golden.top1, self.space)
            return ImportanceSampler(s.sampler, self.space, self.fault_model, s.seed, scores)
        return SAMPLERS[s.sampler.kind](s.sampler, self.space, self.fault_model, s.seed)

    @property
    def scenarios(self) -> int:
        return self.sampler.count()

    @property
    def shards(self) -> int:
        return -(-self.scenarios // self.spec.run.shard_size)

    def manifest(self) -> dict[str, Any]:
        acc = float((self.golden.top1 == self.labels).float().mean())
        (model_name,) = self.spec.model.names
        return {
            "version": 1, "name": self.spec.name, "model": model_name, "spec": self.spec.to_dict(), "spec_hash": self.spec.hash(),
            "sampler": self.spec.sampler.kind, "scenarios": self.scenarios, "shard_size": self.spec.run.shard_size,
            "shards": self.shards, "inputs": len(self.inputs), "golden_accuracy": acc, "space": self.space.total,
            "strata": self.sampler.strata() if isinstance(self.sampler, StatisticalSampler) else None,
        }

    def run_shard(self, shard: int) -> dict[str, Any]:
        """The result rows (as columns) of one shard."""
        size = self.spec.run.shard_size
        ids = np.arange(shard * size, min((shard + 1) * size, self.scenarios))
        sc = self.sampler.draw(ids)
        counts = {k: np.zeros(len(ids), dtype=np.int64) for k in (*OUTCOMES, "correct")}
        fast = self.spec.run.mode == "fast"
        unchanged = sc.masked | (self.changes_nothing(sc) if fast else False)
        counts["masked"][unchanged] = len(self.inputs)
        counts["correct"][unchanged] = int((self.golden.top1 == self.labels).sum())
        todo = np.flatnonzero(~unchanged)
        if fast:
            todo = run_grouped(self.grouped, sc, todo, self.sites, self._classify_many, counts)
        for i in todo:
            faults = sc.of(int(i))
            with inject(self.model, faults, sites=self.sites) as applied:
                out = self.suffix.run_from(self.suffix.first_stage(applied.sites) if fast else 0)
                row = classify(out, self.golden, self.spec.outcome.criterion, self.spec.outcome.threshold)
            for k, v in row.items():
                counts[k][i] = v
        return {**describe(sc, self.space), "inputs": np.full(len(ids), len(self.inputs), dtype=np.int64), **counts}

    def _classify_many(self, outputs: torch.Tensor) -> dict[str, np.ndarray]:
        return classify_many(outputs, self.golden, self.spec.outcome.criterion, self.spec.outcome.threshold)

    def changes_nothing(self, sc: Scenarios) -> np.ndarray:
        """Scenarios whose faults provably leave every stored code as it is (a stuck-at equal to
        the stored bits, zeroing a stored zero): masked without a forward pass."""
        fs = sc.faults
        same = np.zeros(len(fs), dtype=bool)
        for m, model in enumerate(fs.models):
            if not isinstance(model, (StuckAt, Zero)):
                continue
            for s_code, name in enumerate(fs.site_names):
                site = self.sites[name]
                rows = np.flatnonzero((fs.model == m) & (fs.site == s_code))
                if site.batched or not len(rows):
                    continue
                codes = self.grouped.stored_codes(site)[torch.from_numpy(fs.index[rows])]
                encoding = site.encoding.at(torch.from_numpy(fs.index[rows]), site.shape or ())
                same[rows] = (model.apply(codes, torch.from_numpy(fs.mask[rows]), encoding) == codes).numpy()
        per_scenario = np.ones(len(sc.ids), dtype=bool)
        np.logical_and.at(per_scenario, sc.owner, same)
        return per_scenario & (np.bincount(sc.owner, minlength=len(sc.ids)) > 0)


def describe(sc: Scenarios, space: FaultSpace) -> dict[str, Any]:
    """The descriptive columns of scenarios: their first fault's site, layer, kind, bit, and every fault."""
    fs = sc.faults
    by_name = {s.name: s for s in space.sites}
    first = np.searchsorted(sc.owner, np.arange(len(sc.ids)))
    has = first < len(sc.owner)
    has[has] &= sc.owner[first[has]] == np.arange(len(sc.ids))[has]
    names = np.array(fs.site_names, dtype=object)[fs.site] if len(fs) else np.zeros(0, dtype=object)
    first_site = [names[f] if h else "" for f, h in zip(first, has)]
    masks = fs.mask
    single = (masks > 0) & ((masks & (masks - 1)) == 0)
    bit_of = np.where(single, np.log2(np.where(single, masks, 1)).astype(np.int64), -1)
    split = np.split(np.arange(len(fs)), np.searchsorted(sc.owner, np.arange(1, len(sc.ids))))
    return {
        "scenario": sc.ids,
        "stratum": np.asarray(sc.stratum, dtype=str),
        "site": np.array(first_site, dtype=str),
        "layer": np.array([layer_of(by_name[s]) if s else "" for s in first_site], dtype=str),
        "kind": np.array([by_name[s].kind if s else "" for s in first_site], dtype=str),
        "bit": np.array([bit_of[f] if h else -1 for f, h in zip(first, has)], dtype=np.int64),
        "n_faults": np.array([len(j) for j in split], dtype=np.int64),
        "rate": sc.rate.astype(np.float64),
        "weight": sc.weight.astype(np.float64),
        "fault_sites": [names[j].astype(str).tolist() for j in split],
        "fault_indices": [fs.index[j].tolist() for j in split],
        "fault_masks": [masks[j].tolist() for j in split],
    }


_RUNNERS: dict[str, CampaignRunner] = {}


def runner_for(spec: CampaignSpec) -> CampaignRunner:
    """The process's runner for ``spec`` (built once)."""
    key = spec.hash()
    if key not in _RUNNERS:
        _RUNNERS[key] = CampaignRunner(spec)
    return _RUNNERS[key]


def run_shard(spec: dict[str, Any], shard: int, threads: int = 1) -> dict[str, Any]:
    """Run one shard of the campaign ``spec`` (a plain dict, so it pickles to any worker)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return runner_for(spec_from_dict(spec)).run_shard(shard)
    finally:
        torch.set_num_threads(before)


def run(spec: CampaignSpec, out: str | Path, executor: Executor | None = None,
        progress: Callable[[int, int], None] | None = None) -> Store:
    """Run (or continue) the campaign ``spec`` into the directory ``out``.

    Shards are dispatched through ``executor`` (any ``concurrent.futures.Executor``; default:
    in this process) and written as they complete; shards already stored are skipped.
    ``progress(n, remaining)`` is called once with ``n = 0`` and the number of scenarios to run,
    then with the number of scenarios of each finished shard.

    Example:
        >>> import tempfile, resil.campaign as rc
        >>> spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=4), data=rc.DataSpec(inputs=8))
        >>> store = rc.run(spec, tempfile.mkdtemp())
        >>> store.table().num_rows
        4
    """
    from .executors import SerialExecutor, in_flight

    runner = runner_for(spec)
    store = Store(out)
    store.create(runner.manifest())
    todo = [s for s in range(runner.shards) if s not in store.done()]
    size = spec.run.shard_size
    if progress:
        progress(0, sum(min(size, runner.scenarios - s * size) for s in todo))
    waiting = iter(todo)
    with (executor or SerialExecutor()) as ex:
        pending: dict[Future[dict[str, Any]], int] = {}

        def submit_next() -> None:
            shard = next(waiting, None)
            if shard is not None:
                pending[ex.submit(run_shard, dataclasses.asdict(spec), shard)] = shard

        for _ in range(in_flight(ex)):
            submit_next()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                shard = pending.pop(f)
                store.write(shard, f.result())
                if progress:
                    progress(min(size, runner.scenarios - shard * size), 0)
                submit_next()
    return store


def resume(out: str | Path, executor: Executor | None = None, progress: Callable[[int, int], None] | None = None) -> Store:
    """Continue the campaign stored in ``out``: run only its missing shards."""
    spec = spec_from_dict(Store(out).manifest()["spec"], f"{out}/manifest.json")
    return run(spec, out, executor, progress)
