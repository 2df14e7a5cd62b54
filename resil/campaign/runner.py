"""Running a campaign: the golden run, then every scenario of every shard through the :class:`~resil.campaign.evaluator.Evaluator`."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import FaultError
from ..fault_models import fault_model_from_spec
from .device import exact_numerics, resolve_device
from .evaluator import Evaluator, Golden
from .live import LIVE, load_live, save_live
from .samplers import BitErrorRateSampler, ExhaustiveSampler, ImportanceSampler, Sampler, Scenarios, StatisticalSampler, UniformSampler
from .space import FaultSpace, layer_of
from .sources import as_data, check_forward, fingerprint_model, fingerprint_tensors, load_data, load_model, select
from .spec import CampaignSpec, spec_from_dict
from .store import Store

SAMPLERS: dict[str, type[Sampler]] = {
    "exhaustive": ExhaustiveSampler, "uniform": UniformSampler, "ber": BitErrorRateSampler, "sfi": StatisticalSampler}


class CampaignRunner:
    """Everything a shard needs, built once per process: model, inputs, sites, space, sampler, evaluator.

    ``model`` and ``data`` (live objects) replace the spec's ``[model]`` and ``[data]`` sources;
    the model, inputs and labels are moved to ``[run] device`` (a live model in place).
    """

    def __init__(self, spec: CampaignSpec, model: nn.Module | None = None, data: Any = None) -> None:
        self.spec = spec
        self.live = {"model": model is not None, "data": data is not None}
        self.device = resolve_device(spec.run.device)  # before any work: an unknown or missing device is an error
        self.model = model if model is not None else load_model(
            spec.model.names[0], checkpoint=spec.model.checkpoint or None, kwargs=spec.model.kwargs, base=_base(spec))
        if not isinstance(self.model, nn.Module):
            raise FaultError(f"model must be a torch.nn.Module, got {type(self.model).__name__}")
        self.label = type(self.model).__name__ if model is not None else spec.model.names[0]
        self.numerics = exact_numerics(self.device)
        inputs, labels = select(*self._data(data), spec.data.inputs or None, spec.data.select, spec.seed)
        self.model.to(self.device)
        self.inputs, self.labels = inputs.to(self.device), None if labels is None else labels.to(self.device)
        check_forward(self.model, self.inputs)
        if self.model.training:
            warnings.warn(f"{self.label} is in training mode: it is evaluated so (dropout active, batch statistics in "
                          "normalisation layers); call model.eval() first to evaluate it for inference", stacklevel=3)
        self.fingerprint = {"model": fingerprint_model(self.model), "inputs": fingerprint_tensors(self.inputs, self.labels)}
        self.evaluator = Evaluator(self.model, self.inputs, self.labels, spec.outcome.build(), pruned=spec.sites.pruned,
                                   batch_size=spec.run.batch_size, mode=spec.run.mode, nondeterministic=spec.run.nondeterministic,
                                   memory_mb=spec.run.memory_mb)
        self.sites = self.evaluator.sites
        self.fault_model = fault_model_from_spec(spec.faults.model)
        self.space = FaultSpace.select(self.sites, spec.sites, spec.faults, self.fault_model.uses_bits, self.fault_model.span)
        self.sampler = self._sampler()

    def _data(self, data: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if data is not None:
            return as_data(data)
        if self.spec.data.source:
            return load_data(self.spec.data.source, base=_base(self.spec))
        import resil.models as rm

        name = self.spec.data.dataset or self.spec.model.names[0]
        if not self.spec.data.dataset and name not in rm.names():
            raise FaultError(f"campaign {self.spec.name!r}: model {name!r} is not bundled, so it has no data of its own: "
                             "set [data] source (a function, a .pt or .npz file) or pass data=... to resil.campaign.run")
        return load_data(name)

    def _sampler(self) -> Sampler:
        s = self.spec
        samples = len(self.inputs) if s.faults.per_sample else 0
        if s.sampler.kind == "importance":
            from .sensitivity import sensitivity_scores

            scores = sensitivity_scores(self.model, self.inputs, self.evaluator.golden.top1, self.space)
            return ImportanceSampler(s.sampler, self.space, self.fault_model, s.seed, scores, samples=samples)
        return SAMPLERS[s.sampler.kind](s.sampler, self.space, self.fault_model, s.seed, samples=samples)

    @property
    def golden(self) -> Golden:
        return self.evaluator.golden

    @property
    def scenarios(self) -> int:
        return self.sampler.count()

    @property
    def shards(self) -> int:
        return -(-self.scenarios // self.spec.run.shard_size)

    def manifest(self) -> dict[str, Any]:
        return {
            "version": 1, "name": self.spec.name, "model": self.label, "spec": self.spec.to_dict(), "spec_hash": self.spec.hash(),
            "fingerprint": self.fingerprint, "live": self.live, "model_mode": "train" if self.model.training else "eval",
            "criterion": self.evaluator.criterion.spec(), "labels": self.labels is not None, "mode": self.evaluator.mode,
            "nondeterministic": self.evaluator.nondeterministic, "numerics": self.numerics,
            "sampler": self.spec.sampler.kind, "scenarios": self.scenarios, "shard_size": self.spec.run.shard_size,
            "shards": self.shards, "inputs": len(self.inputs), "golden_accuracy": self.golden.accuracy, "space": self.space.total,
            "strata": self.sampler.strata() if isinstance(self.sampler, StatisticalSampler) else None,
        }

    def run_shard(self, shard: int) -> dict[str, Any]:
        """The result rows (as columns) of one shard."""
        size = self.spec.run.shard_size
        ids = np.arange(shard * size, min((shard + 1) * size, self.scenarios))
        sc = self.sampler.draw(ids)
        counts = self.evaluator.evaluate(sc)
        return {**describe(sc, self.space), "inputs": np.full(len(ids), len(self.inputs), dtype=np.int64), **counts}


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
        "fault_inputs": [fs.batch[j].tolist() for j in split],
    }


def _base(spec: CampaignSpec) -> Path | None:
    return Path(spec.base) if spec.base else None


#: runners built in this process, most recent last; bounded so long sessions do not keep models alive
_RUNNERS: OrderedDict[tuple[str, str], CampaignRunner] = OrderedDict()
_KEEP = 2


def runner_for(spec: CampaignSpec, model: nn.Module | None = None, data: Any = None, live: str = "") -> CampaignRunner:
    """The process's runner for ``spec`` (and the live objects, identified by ``live``), built once."""
    key = (spec.hash(), live)
    if key not in _RUNNERS:
        _remember(key, CampaignRunner(spec, model, data))
    _RUNNERS.move_to_end(key)
    return _RUNNERS[key]


def _remember(key: tuple[str, str], runner: CampaignRunner) -> None:
    while len(_RUNNERS) >= _KEEP:
        _RUNNERS.popitem(last=False)
    _RUNNERS[key] = runner


def run_shard(spec: dict[str, Any], shard: int, threads: int = 1, live: str = "") -> dict[str, Any]:
    """Run one shard of the campaign ``spec`` (a plain dict, so it pickles to any worker);
    ``live`` names the run directory's saved live model and data, if any."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        s = spec_from_dict(spec)
        if (s.hash(), live) in _RUNNERS or not live:
            return runner_for(s, live=live).run_shard(shard)
        model, data = load_live(Path(live))
        return runner_for(s, model, data, live).run_shard(shard)
    finally:
        torch.set_num_threads(before)


def run(spec: CampaignSpec, out: str | Path, executor: Executor | None = None,
        progress: Callable[[int, int], None] | None = None, *, model: nn.Module | None = None, data: Any = None) -> Store:
    """Run (or continue) the campaign ``spec`` into the directory ``out``.

    ``model`` (an ``nn.Module``) and ``data`` (``(inputs, labels)`` tensors or arrays, inputs
    alone, a ``torch.utils.data.Dataset`` or a ``DataLoader``) replace the spec's ``[model]`` and
    ``[data]`` sources; the model is evaluated in the mode it is in. The run directory records a
    fingerprint of the model's parameters and buffers and of the inputs: continuing it with another
    model or other data is refused before anything is written.

    Shards are dispatched through ``executor`` (any ``concurrent.futures.Executor``; default:
    in this process) and written as they complete; shards already stored are skipped. With live
    objects and an executor other than the serial one, the model (pickled: its class must be
    importable where the workers run) and the data are saved once into ``out/live/`` and each
    worker loads them once. ``progress(n, remaining)`` is called once with ``n = 0`` and the number
    of scenarios to run, then with the number of scenarios of each finished shard.

    Example:
        >>> import tempfile, torch, resil.campaign as rc
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
        >>> x, y = torch.rand(8, 2, 2), torch.randint(0, 3, (8,))
        >>> spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=4))
        >>> rc.run(spec, tempfile.mkdtemp(), model=net, data=(x, y)).table().num_rows
        4
    """
    from .executors import SerialExecutor, in_flight

    if model is not None and not isinstance(model, nn.Module):
        raise FaultError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    store = Store(out)
    live_objects = model is not None or data is not None
    runner = CampaignRunner(spec, model, data) if live_objects else runner_for(spec)
    live = ""
    store.create(runner.manifest())
    if live_objects:
        live = runner.fingerprint["model"] + runner.fingerprint["inputs"]
        _remember((spec.hash(), live), runner)
    serial = executor is None or isinstance(executor, SerialExecutor)
    if live_objects and not serial:
        live = str(save_live(store.root / LIVE, runner.model, runner.inputs, runner.labels))
    todo = [s for s in range(runner.shards) if s not in store.done()]
    size = spec.run.shard_size
    if progress:
        progress(0, sum(min(size, runner.scenarios - s * size) for s in todo))
    waiting = iter(todo)
    with (executor or SerialExecutor()) as ex:
        pending: dict[Future[dict[str, Any]], int] = {}

        threads = getattr(ex, "threads", 1)

        def submit_next() -> None:
            shard = next(waiting, None)
            if shard is not None:
                pending[ex.submit(run_shard, dataclasses.asdict(spec), shard, threads, live)] = shard

        with getattr(ex, "batch", contextlib.nullcontext)():  # one array job where the executor batches
            for _ in range(min(in_flight(ex), len(todo))):
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


def resume(out: str | Path, executor: Executor | None = None, progress: Callable[[int, int], None] | None = None, *,
           model: nn.Module | None = None, data: Any = None) -> Store:
    """Continue the campaign stored in ``out``: run only its missing shards (with the same live
    ``model`` / ``data`` it was started with, if any: others are refused)."""
    manifest = Store(out).manifest()
    if manifest.get("sampler") == "pvf":
        raise FaultError(f"{out} holds a PVF study: continue it by calling resil.analysis.pvf(model, inputs, ..., out={str(out)!r}) "
                         "again with the same arguments")
    live = manifest.get("live") or {}
    missing = [k for k, given in (("model", model), ("data", data)) if live.get(k) and given is None]
    if missing:
        raise FaultError(f"{out} was run on a live {' and '.join(missing)} passed from Python; resume it with "
                         f"resil.campaign.resume({str(out)!r}, {', '.join(f'{k}=...' for k in missing)})")
    if "spec" not in manifest:
        raise FaultError(f"{out}/manifest.json holds no campaign spec; the directory may be damaged")
    spec = spec_from_dict(manifest["spec"], f"{out}/manifest.json")
    return run(spec, out, executor, progress, model=model, data=data)
