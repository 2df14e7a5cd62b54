"""The evaluation core: one golden run over fixed inputs, then fault scenarios judged against it.

Every study runs its faulty forwards through an :class:`Evaluator`: the campaign runner, PVF,
the importance-sampling precision study and fault-aware training's critical-fault search. It
holds the model, the inputs (and optional labels), the sites and a criterion, and evaluates a
batch of scenarios in ``fast`` mode (the default; bit-identical to ``plain``):

- scenarios whose faults provably change no stored code (a stuck-at equal to the stored bit,
  zeroing a stored zero, no fault at all) are masked without a forward pass;
- scenarios whose faults sit in one stage are evaluated many per forward pass
  (:mod:`resil.campaign.grouped`);
- the others run under :func:`resil.inject` from their first faulted stage on
  (:mod:`resil.campaign.suffix`); in a model that is not an ``nn.Sequential``, the modules that
  finish before the first faulted one replay their golden outputs (:mod:`resil.campaign.replay`).

Guards keep fast answers right: a second fault-free run must equal the first bit for bit (a
model with dropout active is refused, or run in plain mode when nondeterminism is accepted); a
model that computes other bits while the recording hooks are attached (a fused path taken only
without hooks) runs in plain mode, with a warning and ``fast_off`` saying why; and stacked
scenarios are used only where the checks of :class:`~resil.campaign.grouped.Probe` pass (a layer
that mixes the batch, normalising by the batch maximum, runs the scenarios one at a time).

``plain`` mode runs one full forward per scenario (the reference).

Example:
    >>> import torch, resil
    >>> _ = torch.manual_seed(0); net = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    >>> x = torch.rand(6, 4); ev = Evaluator(net, x, net(x).argmax(1))
    >>> counts = ev.evaluate_faults([resil.FaultSet("0.weight", [0], [30]), resil.FaultSet("0.weight", [0], [0])])
    >>> counts["masked"].tolist()[1] + counts["tolerable"].tolist()[1], ev.golden.accuracy
    (6, 1.0)
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..discovery import sites as list_sites
from ..errors import FaultError
from ..faults import FaultSet
from ..injection import inject
from ..site import SiteList
from .criteria import OUTCOMES, Criterion, criterion_from_spec, judge
from .grouped import GroupedForward, run_grouped, same_bits
from .layout import layout_sensitive_op
from .per_sample import SampleGather, split_by_batch
from .replay import ModuleReplay
from .samplers import Scenarios
from .suffix import SuffixForward
from .tree import TreeGroupedForward

__all__ = ["MODES", "Evaluator", "Golden", "scenarios_of"]

MODES = ("fast", "plain")


@dataclass(frozen=True)
class Golden:
    """The golden run: outputs over the inputs, the labels (None if unlabelled) and how many
    inputs it gets right (-1 without labels)."""

    output: torch.Tensor
    labels: torch.Tensor | None
    correct: int

    @property
    def top1(self) -> torch.Tensor:
        return self.output.reshape(len(self.output), -1).argmax(1)

    @property
    def accuracy(self) -> float | None:
        """Share of inputs judged correct, None without labels."""
        return None if self.correct < 0 else self.correct / len(self.output)


class Evaluator:
    """Golden run, fast path, injection and classification for one model over fixed inputs.

    Args:
        model: the network, evaluated in the mode it is in (``model.training`` is kept).
        inputs: the evaluation inputs ``[N, ...]``.
        labels: optional labels ``[N]`` (or regression targets); without them ``correct`` is -1.
        criterion: a :class:`~resil.campaign.criteria.Criterion` or its spec string.
        sites: the model's sites (default: listed with the first inputs as example).
        pruned: pruned-weight policy when listing sites (``live`` or ``dense``).
        batch_size: inputs per forward pass.
        mode: ``fast`` or ``plain`` (see the module docstring).
        memory_mb: the most golden outputs recorded for replay, in MiB: an ``nn.Sequential`` whose
            stage outputs would pass it is replayed module by module (:mod:`resil.campaign.replay`),
            which records what fits and recomputes the rest.
        nondeterministic: accept a model whose fault-free runs differ (dropout active ...): every
            scenario then runs as a plain full forward. Without it such a model is refused.

    Raises:
        FaultError: when two fault-free runs differ and ``nondeterministic`` is not set.
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None = None,
                 criterion: Criterion | str = "top1", *, sites: SiteList | None = None, pruned: str = "live",
                 batch_size: int = 512, mode: str = "fast", nondeterministic: bool = False, memory_mb: int = 2048) -> None:
        if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1 or len(inputs) < 1:
            raise FaultError("inputs must be a tensor [N, ...] with N >= 1")
        if labels is not None and len(labels) != len(inputs):
            raise FaultError(f"labels has {len(labels)} entries for {len(inputs)} inputs")
        if mode not in MODES:
            raise FaultError(f"mode must be one of {MODES}, not {mode!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise FaultError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.model, self.inputs, self.labels, self.mode = model, inputs, labels, mode
        self.criterion = criterion_from_spec(criterion)
        self.sites = sites if sites is not None else list_sites(model, inputs[:2], pruned=pruned)
        self.suffix = SuffixForward(model, inputs, batch_size)
        state = {name: t._version for name, t in (*model.named_parameters(), *model.named_buffers())}
        budget = int(memory_mb) << 20
        output = self.suffix.run_from(0) if mode == "plain" else self.suffix.golden(budget) if self.suffix.stages else None
        #: suffix replay for other module trees (and for an ``nn.Sequential`` whose stage outputs pass the budget)
        self.replay: ModuleReplay | None = None
        if output is None:
            self.replay = ModuleReplay(model, self.suffix.batches, budget)
            output = self.replay.golden()
        #: why fast mode is off for this model (None: it is on, or plain mode was asked for)
        self.fast_off: str | None = None
        weights = {name: p._version for name, p in model.named_parameters()}
        plain = self.suffix.run_from(0)
        rewritten = [name for name, p in model.named_parameters() if p._version != weights[name]]
        if rewritten:
            raise FaultError(f"the forward of {type(model).__name__} changes its own parameters in place ({', '.join(rewritten[:3])}): "
                             "the model would rewrite a fault injected there and carry changes from one scenario into the next; "
                             "move the update out of the forward (a weight clipped in forward: clip it once beforehand; "
                             "nn.Embedding(max_norm=...), which renormalises the rows it looks up: renormalise once and set "
                             "max_norm=None)")
        if self.replay is not None and not same_bits(plain, output) and same_bits(self.suffix.run_from(0), plain):
            self.fast_off = (f"{type(model).__name__} computes other bits while forward hooks are attached (resil records module "
                             "outputs through hooks), as a module that takes a fused path only without hooks does "
                             "(nn.TransformerEncoderLayer's fast path); every scenario runs as a plain full forward")
            warnings.warn(f"fast mode is off: {self.fast_off}", RuntimeWarning, stacklevel=2)
            self.mode, output = "plain", plain
        #: whether two fault-free runs differed (allowed only with ``nondeterministic=True``; then plain mode)
        self.nondeterministic = not same_bits(plain, output)
        if self.nondeterministic:
            if not nondeterministic:
                changed = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t._version != state.get(name)]
                if model.training:
                    cause = "the model is in training mode (dropout, batch statistics)"
                elif changed:
                    cause = f"its forward changes the model's own tensors ({', '.join(changed[:3])}: a running statistic or counter)"
                else:
                    cause = ("a layer draws random numbers in eval mode (dropout forced on, noise injection), the forward keeps "
                             "Python state between calls (a call counter, a cached previous batch), or a kernel is nondeterministic")
                raise FaultError(f"two fault-free runs of {type(model).__name__} gave different outputs: {cause}. Outcomes would "
                                 "mix the fault's effect with that variation; call model.eval() or remove the randomness or "
                                 "state update, or accept it with nondeterministic=True ([run] nondeterministic = true), which runs every "
                                 "scenario as a plain full forward")
            self.mode = "plain"
        _warn_non_finite(model, output)
        if labels is not None:
            self.criterion.check_labels(labels, output.reshape(len(output), -1))
        correct = -1 if labels is None else int(judge(self.criterion, output.unsqueeze(0), output, labels)["correct"][0])
        self.golden = Golden(output, labels, correct)
        self.grouped = TreeGroupedForward(self.replay) if self.replay is not None else GroupedForward(self.suffix)
        self.per_sample = SampleGather(model, inputs, output, batch_size)
        #: the op whose bits depend on where a value sits in its tensor (:mod:`~resil.campaign.layout`),
        #: for which fast mode stacks and gathers no scenarios (None: none found, or plain mode)
        self.stacking_off: str | None = None
        if self.fast:
            ends = {0, len(self.suffix.batches) - 1}  # the last batch may be smaller: other tails
            self.stacking_off = next((op for b in sorted(ends) if (op := layout_sensitive_op(model, self.suffix.batches[b]))), None)
        #: scenarios evaluated by a forward pass (alone or in a group), not decided without one
        self.runs = 0

    @property
    def fast(self) -> bool:
        return self.mode == "fast"

    def judge(self, outputs: torch.Tensor) -> dict[str, np.ndarray]:
        """Outcome counts of faulty runs ``outputs`` (``[R, N, ...]``) against the golden run."""
        return judge(self.criterion, outputs, self.golden.output, self.labels)

    def critical(self, counts: dict[str, np.ndarray]) -> np.ndarray:
        """Per scenario, whether its counts make it critical under the criterion."""
        return self.criterion.is_critical(counts, len(self.inputs), self.golden.correct)

    def evaluate(self, sc: Scenarios) -> dict[str, np.ndarray]:
        """Outcome counts (``masked``, ``tolerable``, ``critical``, ``non_finite``, ``correct``) per scenario."""
        n = len(sc.ids)
        if len(sc.faults) and int(sc.faults.batch.max()) >= len(self.inputs):
            raise FaultError(f"a fault names input {int(sc.faults.batch.max())}, but there are {len(self.inputs)} inputs")
        counts = {k: np.zeros(n, dtype=np.int64) for k in (*OUTCOMES, "correct")}
        unchanged = sc.masked | (self.changes_nothing(sc) if self.fast else False)
        counts["masked"][unchanged] = len(self.inputs)
        counts["correct"][unchanged] = self.golden.correct
        todo = np.flatnonzero(~unchanged)
        self.runs += len(todo)
        stage_of = np.full(n, -1, dtype=np.int64)
        if self.fast and self.stacking_off is None:
            todo = self.per_sample.run(sc, todo, self.sites, self.judge, counts)
            todo, stage_of = run_grouped(self.grouped, sc, todo, self.sites, self.judge, counts)
        replay = self.replay if self.fast else None
        for i in todo:
            t0 = time.perf_counter()
            faults = sc.of(int(i))
            if faults.per_sample and len(self.suffix.batches) > 1:  # inputs are numbered over all batches
                for k, v in self.judge(self._per_batch(faults).unsqueeze(0)).items():
                    counts[k][i] = v[0]
                continue
            targets = [self.sites[faults.site_names[c]].module for c in np.unique(faults.site)]
            if replay is not None and replay.recurring(targets):  # the replay set's check runs before the faults go in
                replay.check(targets)
            with inject(self.model, faults, sites=self.sites) as applied:
                if replay is not None:
                    out = replay.run(targets)
                else:
                    out = self.suffix.run_from(self.suffix.first_stage(applied.sites) if self.fast else 0)
            for k, v in self.judge(out.unsqueeze(0)).items():
                counts[k][i] = v[0]
            if stage_of[i] >= 0:
                self.grouped.timer.record(int(stage_of[i]), 1, time.perf_counter() - t0, 1)
        return counts

    def _per_batch(self, faults: FaultSet) -> torch.Tensor:
        """The output over all inputs, each input batch under the faults that reach it."""
        outs = []
        for x, part in zip(self.suffix.batches, split_by_batch(faults, [len(b) for b in self.suffix.batches]), strict=True):
            with torch.no_grad(), inject(self.model, part, sites=self.sites):
                outs.append(self.model(x))
        return torch.cat(outs)

    def evaluate_faults(self, faults: Sequence[FaultSet]) -> dict[str, np.ndarray]:
        """Outcome counts of scenarios given as fault sets (one per scenario)."""
        return self.evaluate(scenarios_of(faults))

    def changes_nothing(self, sc: Scenarios) -> np.ndarray:
        """Scenarios whose faults provably leave every stored code as it is (a stuck-at equal to
        the stored bits, zeroing a stored zero, no fault at all): masked without a forward pass."""
        fs = sc.faults
        same = np.zeros(len(fs), dtype=bool)
        for m, model in enumerate(fs.models):
            if not (model.deterministic and model.can_leave_unchanged):
                continue
            for s_code, name in enumerate(fs.site_names):
                site = self.sites[name]
                rows = np.flatnonzero((fs.model == m) & (fs.site == s_code))
                if site.batched or not len(rows):
                    continue
                index = torch.from_numpy(fs.index[rows])
                codes = self.grouped.stored_codes(site)[index]
                encoding = site.encoding.at(index, site.shape or ())
                mask = torch.from_numpy(fs.mask[rows]).to(codes.device)
                same[rows] = (model.apply(codes, mask, encoding) == codes).cpu().numpy()
        per_scenario = np.ones(len(sc.ids), dtype=bool)
        np.logical_and.at(per_scenario, sc.owner, same)
        return per_scenario


def _warn_non_finite(model: nn.Module, golden: torch.Tensor) -> None:
    """Warn when the fault-free output already holds NaN or inf: every scenario would count those
    inputs as non-finite failures, so the failure rates would say nothing about the faults."""
    if not golden.is_floating_point():
        return
    bad = int((~torch.isfinite(golden.reshape(len(golden), -1))).any(1).sum())
    if bad:
        warnings.warn(f"the fault-free (golden) output of {type(model).__name__} is NaN or infinite on {bad} of {len(golden)} "
                      "inputs: every scenario counts them as non-finite failures (up to 100% failure whatever the fault); "
                      "check the model, its checkpoint and the inputs", RuntimeWarning, stacklevel=3)


def scenarios_of(faults: Sequence[FaultSet], ids: np.ndarray | None = None) -> Scenarios:
    """Scenarios from one fault set per scenario (an empty set: a scenario without faults).

    Example:
        >>> import resil
        >>> sc = scenarios_of([resil.FaultSet("w", [0, 1], [3, 4]), resil.FaultSet(site=[], index=[], bit=[])])
        >>> sc.owner.tolist(), len(sc.of(1))
        ([0, 0], 0)
    """
    n = len(faults)
    nonempty = [f for f in faults if len(f)]
    joined = FaultSet.concat(nonempty) if nonempty else FaultSet(site=[], index=[], bit=[])
    return Scenarios(
        ids=np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64), faults=joined,
        owner=np.repeat(np.arange(n), [len(f) for f in faults]), weight=np.ones(n),
        stratum=np.full(n, "", dtype=object), rate=np.full(n, np.nan), masked=np.zeros(n, dtype=bool))
