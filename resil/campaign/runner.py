"""Running a campaign: the golden run, then every scenario of every shard through the :class:`~resil.campaign.evaluator.Evaluator`."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections import OrderedDict, deque
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
from .executors import SerialExecutor, in_flight, restarted, starts_slowly, worker_lost
from .live import LIVE, load_live, save_live
from .samplers import PVF_STUDY, Sampler, Scenarios, sampler_class
from .sources import as_data, check_forward, fingerprint_model, fingerprint_tensors, load_data, load_model, select, zoo_models
from .space import FaultSpace, check_per_sample, layer_of
from .spec import CampaignSpec, spec_from_dict
from .store import Store


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
        if spec.faults.per_sample:
            check_per_sample(self.space.sites, self.model, self.evaluator.suffix.batches)
        self.sampler: Sampler = sampler_class(spec.sampler.kind).build(self, samples=len(self.inputs) if spec.faults.per_sample else 0)

    def _data(self, data: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if data is not None:
            return as_data(data)
        if self.spec.data.source:
            return load_data(self.spec.data.source, base=_base(self.spec))
        name = self.spec.data.dataset or self.spec.model.names[0]
        if not self.spec.data.dataset and name not in zoo_models():
            raise FaultError(f"campaign {self.spec.name!r}: model {name!r} is not bundled, so it has no data of its own: "
                             "set [data] source (a function, a .pt or .npz file) or pass data=... to resil.campaign.run")
        return load_data(name)

    @property
    def golden(self) -> Golden:
        return self.evaluator.golden

    @property
    def scenarios(self) -> int:
        return self.sampler.count()

    @property
    def shards(self) -> int:
        if self.spec.sampler.stop_margin:
            from .adaptive import shard_count

            return shard_count(self.sampler.blocks(), self.spec.run.shard_size)
        return -(-self.scenarios // self.spec.run.shard_size)

    def shard_ids(self, shard: int) -> np.ndarray:
        """The scenario ids of one shard (of an adaptive campaign: one round of one stratum)."""
        size = self.spec.run.shard_size
        if self.spec.sampler.stop_margin:
            from .adaptive import round_ids

            return round_ids(self.sampler.blocks(), size, shard)
        return np.arange(shard * size, min((shard + 1) * size, self.scenarios))

    def manifest(self) -> dict[str, Any]:
        return {
            "version": 1, "name": self.spec.name, "model": self.label, "spec": self.spec.to_dict(), "spec_hash": self.spec.hash(),
            "fingerprint": self.fingerprint, "live": self.live, "model_mode": "train" if self.model.training else "eval",
            "criterion": self.evaluator.criterion.spec(), "labels": self.labels is not None, "mode": self.evaluator.mode,
            "nondeterministic": self.evaluator.nondeterministic, "fast_off": self.evaluator.fast_off,
            "stacking_off": self.evaluator.stacking_off, "numerics": self.numerics,
            **self.sampler.manifest(), "scenarios": self.scenarios, "shard_size": self.spec.run.shard_size,
            "shards": self.shards, "inputs": len(self.inputs), "golden_accuracy": self.golden.accuracy, "space": self.space.total,
            "layers": list(dict.fromkeys(layer_of(s) for s in self.space.sites)),  # in network order, for reports
            # adaptive campaigns: rounds of strata, some empty, so the store checks each part's ids by these counts
            **({"shard_scenarios": [len(self.shard_ids(k)) for k in range(self.shards)]} if self.spec.sampler.stop_margin else {}),
        }

    def run_shard(self, shard: int) -> dict[str, Any]:
        """The result rows (as columns) of one shard."""
        ids = self.shard_ids(shard)
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
    first_site = [names[f] if h else "" for f, h in zip(first, has, strict=True)]
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
        "bit": np.array([bit_of[f] if h else -1 for f, h in zip(first, has, strict=True)], dtype=np.int64),
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
    in this process; shut down when the run ends, is refused or fails) and written as they
    complete; shards already stored (and verified) are skipped. The directory's writer lock is
    held throughout: a second writer is refused. With live
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
    try:
        return _run(spec, out, executor or SerialExecutor(), progress, model, data)
    except BaseException:
        if executor is not None:  # refused before its first shard, or failed: no processes left behind
            executor.shutdown(wait=False, cancel_futures=True)
        raise


def _run(spec: CampaignSpec, out: str | Path, executor: Executor, progress: Callable[[int, int], None] | None,
         model: nn.Module | None, data: Any) -> Store:
    if model is not None and not isinstance(model, nn.Module):
        raise FaultError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    store = Store(out)
    live_objects = model is not None or data is not None
    runner = CampaignRunner(spec, model, data) if live_objects else runner_for(spec)
    manifest = runner.manifest()
    store.check(manifest)
    with store.lock():
        store.create(manifest)
        live = ""
        if live_objects:  # workers load the saved live objects; shards run here find this runner under the same name
            live = (runner.fingerprint["model"] + runner.fingerprint["inputs"] if isinstance(executor, SerialExecutor)
                    else str(save_live(store.root / LIVE, runner.model, runner.inputs, runner.labels)))
            _remember((spec.hash(), live), runner)
        done = store.done()
        todo = [s for s in range(runner.shards) if s not in done]
        if progress:
            progress(0, sum(len(runner.shard_ids(s)) for s in todo))
        current = [executor]

        def complete(shards: list[int]) -> None:
            threads = getattr(current[0], "threads", 1)  # torch threads per task: the Slurm executor's --slurm-cpus
            current[0] = _run_shards(store, current[0], shards, lambda s: (dataclasses.asdict(spec), s, threads, live),
                                     lambda s: progress(len(runner.shard_ids(s)), 0) if progress else None)

        if spec.sampler.stop_margin:  # adaptive: rounds until every stratum knows enough
            from .adaptive import run_rounds

            run_rounds(runner, store, complete)
        else:
            complete(todo)
        current[0].shutdown()
    return store


def _run_shards(store: Store, executor: Executor, todo: list[int], arguments: Callable[[int], tuple[Any, ...]],
                finished: Callable[[int], None]) -> Executor:
    """Run the shards ``todo`` through ``executor``, storing each as it completes; return the
    executor to go on with (a fresh pool if workers died; the caller shuts it down). The shards in
    flight when worker processes die run once more in a fresh pool; if they die again, or the
    executor cannot be restarted, a :class:`FaultError` says so (the shards stored so far are
    intact). On any error or interrupt the executor's queued shards are cancelled and the error is raised."""
    waiting, rerun = deque(todo), set[int]()
    pending: dict[Future[dict[str, Any]], int] = {}
    ex = executor

    def fill() -> None:
        while waiting and len(pending) < in_flight(ex):
            shard = waiting.popleft()
            pending[ex.submit(run_shard, *arguments(shard))] = shard

    def write(shard: int, result: dict[str, Any]) -> None:
        try:
            store.write(shard, result)
        except OSError as e:
            raise OSError(e.errno, f"{e.strerror or e}; the shards stored before are intact: fix the cause, then "
                          f"`resil resume {store.root}`") from e
        finished(shard)

    def keep(f: Future[dict[str, Any]], lost: list[int]) -> None:
        """Store a finished shard (raising its error), or note it as lost with its worker."""
        shard = pending.pop(f)
        if f.cancelled() or worker_lost(f.exception()):
            lost.append(shard)
            return
        write(shard, f.result())

    here = starts_slowly(ex)  # run shards in this process until the first worker reports
    try:
        with getattr(ex, "batch", contextlib.nullcontext)():  # one array job where the executor batches
            fill()
        while pending:
            here = here and bool(waiting) and not any(f.done() for f in pending)
            if here:
                shard = waiting.popleft()
                write(shard, run_shard(*arguments(shard)))
                continue
            lost: list[int] = []
            for f in wait(pending, return_when=FIRST_COMPLETED).done:
                keep(f, lost)
            if lost:
                fresh = restarted(ex)  # shuts the dead pool down: its other shards are finished, or lost with it
                if fresh is not None:
                    for f in list(pending):
                        keep(f, lost)
                again = sorted(set(lost) & rerun)
                if fresh is None or again:
                    how = f"again in a fresh pool, running shard(s) {again}" if again else f"running shard(s) {sorted(lost)}"
                    raise FaultError(f"{store.root}: worker processes died {how} (killed, out of memory, or exited without "
                                     f"an error); the shards stored are intact: `resil resume {store.root}` runs the others")
                warnings.warn(f"{store.root}: worker processes died running shard(s) {sorted(lost)}; running them again "
                              "in a fresh pool", stacklevel=3)
                rerun.update(lost)
                ex = fresh
                waiting.extendleft(sorted(lost, reverse=True))
            fill()
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    return ex


def resume(out: str | Path, executor: Executor | None = None, progress: Callable[[int, int], None] | None = None, *,
           model: nn.Module | None = None, data: Any = None) -> Store:
    """Continue the campaign stored in ``out``: run only its missing shards (with the same live
    ``model`` / ``data`` it was started with, if any: others are refused)."""
    manifest = Store(out).manifest()
    if not isinstance(manifest.get("spec"), dict):
        raise FaultError(f"{out}/manifest.json has no campaign spec; the directory may be damaged")
    if manifest.get("sampler") == PVF_STUDY:
        raise FaultError(f"{out} holds a PVF study: continue it by calling resil.analysis.pvf(model, inputs, ..., out={str(out)!r}) "
                         "again with the same arguments")
    live = manifest.get("live") or {}
    missing = [k for k, given in (("model", model), ("data", data)) if live.get(k) and given is None]
    if missing:
        raise FaultError(f"{out} was run on a live {' and '.join(missing)} passed from Python; resume it with "
                         f"resil.campaign.resume({str(out)!r}, {', '.join(f'{k}=...' for k in missing)})")
    spec = spec_from_dict(manifest["spec"], f"{out}/manifest.json")
    return run(spec, out, executor, progress, model=model, data=data)
