"""Suffix replay for any module tree: modules that finish before the faulted one replay their outputs.

:class:`~resil.campaign.suffix.SuffixForward` replays the stages of an ``nn.Sequential``. Models
with their own ``forward`` (residual blocks, branches, functional glue, attention) get the same
saving here: the golden run records, for every submodule, when each of its calls starts and ends
and what it returned. For faults in modules ``M``, every module whose calls all ended before the
first call of any ``M`` began cannot see the faults; the outermost such modules return copies
of their golden outputs instead of computing, and the model's own forward runs as usual
otherwise, so glue code, residual additions and later modules compute exactly as in a full
faulty forward.

Guards: modules that share a stored tensor with a faulted one (tied weights) count as faulted;
a replay set is used only after a fault-free forward with it gave the golden output bit
for bit (glue code reading a replayed module's state, such as a spiking neuron's membrane, fails
this check and runs the full forward); a module whose recorded output later code changes in place
(``out += identity``) is not replayed: found by the tensors' version counters, in the golden run
and after every replayed run; outputs are recorded while they fit in ``budget``
bytes, and modules past it are not replayed (their children may be).

Example:
    >>> import torch
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__(); self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
    ...     def forward(self, x):
    ...         return self.b(torch.relu(self.a(x)) + x)
    >>> net, x = Net().eval(), torch.randn(5, 4)
    >>> r = ModuleReplay(net, [x]); golden = r.golden()
    >>> [n for n, _ in r.replayed([net.b])], r.check([net.b]), torch.equal(r.run([net.b]), golden)
    (['a'], True, True)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from ..adapter_registry import adapter_for
from ..hooks import carries_hooks
from .dataflow import Call, CallTracker, FaultTrace, held_tensors, read_replays, trace_faults
from .grouped import LAYOUT_FAILURES, same_bits
from .hookpaths import hooked, mirrored
from .suffix import batch_outputs, nbytes, sharing_modules, versions

__all__ = ["Diverged", "Gathering", "ModuleReplay", "records_inputs"]


def records_inputs(module: nn.Module) -> bool:
    """Whether the golden inputs of ``module`` are recorded too: its adapter can recompute its
    touched output channels alone (:meth:`resil.site.Adapter.channel_layer`)."""
    return adapter_for(module).channel_layer(module) is not None


@dataclass
class _Plan:
    """Which golden calls of one input batch a forward replays, for faults in given modules.

    Attributes:
        calls: per module with replayed calls, the replayed call indices.
        skips: per short-cut call (replayed, or a target's), the calls of modules in ``calls``
            that happen inside it in the golden run, which therefore do not happen.
        counts: per module in ``calls``, its number of golden calls.
        widest: the most elements of one output among the calls that are computed.
    """

    calls: dict[int, frozenset[int]]
    skips: dict[tuple[int, int], list[tuple[int, int]]]
    counts: dict[int, int]
    widest: int


#: how a stacked forward treats the replayed outputs and the input: as recorded, gathered by rows
#: where the stacked part reads them (:meth:`ModuleReplay.stacked_reads`), or all gathered
Gathering = Literal["recorded", "read", "all"]


class Diverged(RuntimeError):
    """A forward's module calls left the golden order (control flow that depends on the faults)."""


class ModuleReplay:
    """Forward passes over fixed input batches in which calls that cannot see given modules' faults replay.

    Args:
        model: any ``nn.Module``.
        batches: the input batches (tensors).
        budget: bytes of recorded outputs kept (default 256 MiB); modules whose outputs do not fit
            are not replayed.
    """

    def __init__(self, model: nn.Module, batches: Sequence[torch.Tensor], budget: int = 256 << 20) -> None:
        self.model, self.batches, self.budget = model, list(batches), budget
        self.names = {id(m): n for n, m in model.named_modules() if m is not model}
        self.modules = {id(m): m for m in model.modules() if m is not model}
        #: every module by id, the model itself included (its own parameters and buffers are fault sites too)
        self.owners = {id(m): m for m in model.modules()}
        self.first_start: dict[int, int] = {}  # module id -> position (in start order) of its first call in batch 0
        self.calls: list[list[Call]] = []  # [batch] -> every module call in start order
        self.call_counts: list[Counter[int]] = []  # [batch] -> module id -> its golden calls
        self.recorded: dict[int, list[list[Any]]] = {}  # module id -> [batch][call] -> output
        self.inputs: dict[int, list[list[Any]]] = {}  # module id -> [batch][call] -> first argument (Conv/Linear only)
        #: per module, the modules sharing a stored tensor with it (tied weights): faulted together
        self.sharing = sharing_modules(model)
        #: modules carrying the user's hooks (:func:`~resil.hooks.carries_hooks`): never replayed nor
        #: patched, since shadowing their ``forward`` would run the hooks twice
        self.hooks_of_their_own = {k for k, m in self.modules.items() if carries_hooks(m)}
        #: modules that change their own tensors (state) in some call: replayed at every call or at none
        self.stateful: set[int] = set()
        #: modules whose recorded outputs later code changed in place after the golden run (not replayed any more)
        self.forgotten: set[int] = set()
        self.outputs: list[Any] = []
        self._plans: dict[tuple[frozenset[int], int], _Plan] = {}
        self._operations: dict[int, bool] = {}  # per batch: whether its first input alone runs the same operations
        self._traces: dict[tuple[frozenset[int], int], FaultTrace | None] = {}
        self._exact: dict[frozenset[int], bool] = {}
        self._asked: dict[frozenset[int], int] = {}  # per target set, how often :meth:`recurring` was asked
        self._read: dict[tuple[int, int], tuple[set[tuple[int, int]], bool] | None] = {}
        #: modules that replays hook, as the golden run did, so that they call their submodules
        #: (a fused path taken only without hooks; :func:`~resil.campaign.hookpaths.mirrored`)
        self.hooked: list[nn.Module] = []
        #: modules inside hook-dependent ones that replays do not hook: the golden run's calls and
        #: data flow there are not a replay's, so they never replay and their faults are not traced
        self.unfollowed: set[int] = set()

    def golden(self) -> torch.Tensor:
        """The full forward over every batch, recording calls, outputs and state changes."""
        recorder = _Recorder(self)
        with torch.no_grad():
            for b, x in enumerate(self.batches):
                recorder.start(b)
                with recorder:
                    self.outputs.append(self.model(x))
                self.calls.append(recorder.calls)
        for pos, c in enumerate(self.calls[0]):
            self.first_start.setdefault(c.module, pos)
        recorder.finish()
        self.call_counts = [Counter(c.module for c in calls) for calls in self.calls]
        self.hooked, self.unfollowed = mirrored(self.model, self.batches, self.calls[0])
        return batch_outputs(self.outputs, self.batches)

    def _targets(self, targets: Iterable[nn.Module]) -> frozenset[int]:
        return frozenset(k for t in targets for k in self.sharing.get(id(t), {id(t)}))

    def plan(self, targets: Iterable[nn.Module], batch: int) -> _Plan:
        """Which calls of input batch ``batch`` replay under faults in ``targets``: the outermost
        recorded calls that the faults cannot reach (:func:`~resil.campaign.dataflow.trace_faults`;
        only the calls that end before the first target call starts if a reached value escapes to
        Python), a module that changes its own state only if none of its calls is reached."""
        ids = self._targets(targets)
        key = (ids, batch)
        if key not in self._plans:
            calls = self.calls[batch]
            reached = self._reached(ids, batch)
            if reached is None:
                first = min((p for p, c in enumerate(calls) if c.module in ids), default=0)
                reached = [c.end > first for c in calls]
            self._plans[key] = self._plan_from(calls, reached, ids, batch)
        return self._plans[key]

    def _reached(self, ids: frozenset[int], batch: int) -> list[bool] | None:
        """Per call of input batch ``batch``, whether faults in modules ``ids`` reach it (None: unknown).
        For modules that share no tensor, the union of what each one's faults reach: the trace only
        ever adds what an operation on a reached tensor produces, so one trace per module serves
        every set of them (scenarios with faults in several modules seldom share a set)."""
        if ids & self.unfollowed:
            return None
        groups = {self._targets([self.owners[k]]) for k in ids if k in self.owners}
        if len(groups) > 1:
            parts = [self._reached(g, batch) for g in groups]
            known = [p for p in parts if p is not None]
            return [any(r) for r in zip(*known, strict=True)] if len(known) == len(parts) else None
        trace = self.trace([self.owners[k] for k in ids if k in self.owners], batch)
        return None if trace is None else trace.reached

    def trace(self, targets: Iterable[nn.Module], batch: int) -> FaultTrace | None:
        """The :func:`~resil.campaign.dataflow.trace_faults` trace of faults in ``targets`` over input
        batch ``batch`` (cached), None where its module calls differ from the golden run's. Traced
        on the batch's first input alone where that runs the same operations and module calls as
        the whole batch (checked once per batch; a model that cannot run one input, such as a
        BatchNorm on batch statistics, cannot), else on the whole batch (then without its
        operations, which would hold the whole batch's values)."""
        ids = self._targets(targets)
        if (ids, batch) not in self._traces:
            x = self.batches[batch]
            if batch not in self._operations:
                whole = trace_faults(self.model, x, [])
                try:
                    one = trace_faults(self.model, x[:1], [])
                except LAYOUT_FAILURES:  # a model that cannot run one input (batch statistics need two)
                    one = None
                self._operations[batch] = (one is not None and whole.calls == self.calls[batch] and one.calls == whole.calls
                                           and one.operations == whole.operations)
            one_input = self._operations[batch]
            trace = trace_faults(self.model, x[:1] if one_input else x, [self.owners[k] for k in ids if k in self.owners])
            if not one_input:  # its operations hold the whole batch's values: keep only the calls
                trace = replace(trace, tape=[], ended_at={})
            self._traces[(ids, batch)] = trace if trace.calls == self.calls[batch] else None
        return self._traces[(ids, batch)]

    def _plan_from(self, calls: list[Call], reached: list[bool], ids: frozenset[int], batch: int) -> _Plan:
        blocked = {c.module for c, r in zip(calls, reached, strict=True) if r and c.module in self.stateful}
        eligible = [not r and c.module in self.recorded and c.module not in blocked and c.module not in self.unfollowed
                    for c, r in zip(calls, reached, strict=True)]
        covered = [False] * len(calls)  # inside a replayed call
        replayed = [False] * len(calls)
        chosen: dict[int, set[int]] = {}
        for p, c in enumerate(calls):
            covered[p] = c.parent >= 0 and (covered[c.parent] or replayed[c.parent])
            replayed[p] = eligible[p] and not covered[p]
            if replayed[p]:
                chosen.setdefault(c.module, set()).add(c.index)
        skips: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for p, c in enumerate(calls):
            if replayed[p] or (c.module in ids and not covered[p]):
                inner: dict[int, int] = {}
                for d in calls[p + 1:c.end]:
                    if d.module in chosen:
                        inner[d.module] = inner.get(d.module, 0) + 1
                skips[(c.module, c.index)] = list(inner.items())
        made = Counter(c.module for c in calls)
        counts = {k: made[k] for k in chosen}
        widest = max((_numel(self.recorded[c.module][batch][c.index]) for p, c in enumerate(calls)
                      if not replayed[p] and not covered[p] and c.module in self.recorded), default=1)
        return _Plan({k: frozenset(v) for k, v in chosen.items()}, skips, counts, widest)

    def replayed(self, targets: Iterable[nn.Module]) -> list[tuple[str, nn.Module]]:
        """The modules that replay some of their calls (of the first input batch) under faults in ``targets``."""
        if not self._targets(targets) or not self.batches:
            return []
        chosen = self.plan(targets, 0).calls
        return [(self.names[k], self.modules[k]) for k in self.modules if k in chosen]

    def check(self, targets: Iterable[nn.Module]) -> bool:
        """Whether the replaying forward under faults in ``targets`` gives the golden output bit for bit
        with no fault applied (run once per target set; call it while no fault is applied)."""
        ids = self._targets(targets)
        if ids not in self._exact:
            plans = [self.plan(targets, b) for b in range(len(self.batches))]
            exact = False
            if any(p.calls for p in plans):
                try:
                    exact = same_bits(self._forward(plans), torch.cat(self.outputs))
                except LAYOUT_FAILURES:  # Diverged included
                    exact = False
            self._exact[ids] = exact
        return self._exact[ids]

    def recurring(self, targets: Iterable[nn.Module]) -> bool:
        """Whether faults in ``targets`` were asked about before (counted per call): worth the one
        forward of :meth:`check`. Scenarios with faults in several modules seldom share a set, and
        a first one runs a full forward for less than a check and a replay."""
        ids = self._targets(targets)
        self._asked[ids] = self._asked.get(ids, 0) + 1
        return self._asked[ids] > 1 or ids in self._exact

    def run(self, targets: Iterable[nn.Module]) -> torch.Tensor:
        """The output over all batches with the calls the faults cannot reach replayed where
        :meth:`check` (called before the faults were applied) passed; else a full forward."""
        if self._exact.get(self._targets(targets), False):
            try:
                return self._forward([self.plan(targets, b) for b in range(len(self.batches))])
            except Diverged:
                pass
        with torch.no_grad():
            return torch.cat([self.model(x) for x in self.batches])

    def _forward(self, plans: list[_Plan]) -> torch.Tensor:
        outs = []
        with torch.no_grad():
            for b, x in enumerate(self.batches):
                with self._replaying(b, plans[b]):
                    outs.append(self.model(x))
        return torch.cat(outs)

    @contextmanager
    def _replaying(self, batch: int, plan: _Plan, rows: torch.Tensor | None = None, target: nn.Module | None = None,
                   own: Iterator[Any] | None = None, read: tuple[set[tuple[int, int]], bool] | None = None) -> Iterator[None]:
        """Within: the modules of ``plan`` return their recorded outputs (their rows ``rows`` if
        given: at every replayed call, or at those of ``read``'s calls if given) at their replayed
        calls; ``target`` (if given) returns the next of ``own`` at each call.
        Raises :class:`Diverged` at the end if the calls did not follow the golden run's."""
        count = dict.fromkeys(plan.calls, 0)
        wrapped = [self.modules[k] for k in plan.calls]
        before = {id(m): [versions(o) for o in self.recorded[id(m)][batch]] for m in wrapped}

        def skip(k: int, index: int) -> None:
            for d, n in plan.skips.get((k, index), ()):
                count[d] += n

        def replaying(m: nn.Module) -> Callable[..., Any]:
            compute, k, replay = type(m).forward.__get__(m), id(m), plan.calls[id(m)]

            def forward(*args: Any, **kwargs: Any) -> Any:
                index = count[k]
                count[k] += 1
                if index not in replay:
                    return compute(*args, **kwargs)
                skip(k, index)
                out = self.recorded[k][batch][index]
                if rows is None or (read is not None and (k, index) not in read[0]):
                    return out
                return _gather(out, rows, len(self.batches[batch]))
            return forward

        calls = [0]  # the target's calls

        def replacing(m: nn.Module, source: Iterator[Any]) -> Callable[..., Any]:
            def forward(*args: Any, **kwargs: Any) -> Any:
                skip(id(m), calls[0])
                calls[0] += 1
                return next(source)
            return forward

        for m in wrapped:
            m.forward = replaying(m)  # shadows the class's forward
        if target is not None and own is not None:
            target.forward = replacing(target, own)
        try:
            with hooked(self.hooked):
                yield
            if count != plan.counts:
                raise Diverged(f"module calls left the golden order: {count} calls, not {plan.counts}")
            if target is not None and own is not None and calls[0] != self.call_counts[batch][id(target)]:
                raise Diverged(f"the faulted module was called {calls[0]} times, not as in the golden run")  # its outputs unused
        finally:
            for m in (*wrapped, *([target] if target is not None else [])):
                del m.forward
            self._forget_changed(wrapped, batch, before)

    def _forget_changed(self, chosen: list[nn.Module], batch: int, before: dict[int, list[tuple[object, ...]]]) -> None:
        """Stop replaying modules whose recorded outputs later code changed in place (this run's
        result is right: the change came after the module returned, as in a full forward)."""
        changed = [m for m in chosen if [versions(o) for o in self.recorded[id(m)][batch]] != before[id(m)]]
        for m in changed:
            del self.recorded[id(m)]
            self.inputs.pop(id(m), None)
            self.forgotten.add(id(m))
        if changed:
            self._exact.clear()
            self._plans.clear()
            self._read.clear()

    def stacked_forward(self, batch: int, target: nn.Module, calls: Sequence[Any], rows: torch.Tensor | None,
                        only_read: bool = False) -> Any:
        """The model's forward over input batch ``batch`` in which ``target`` returns ``calls[i]``
        (many scenarios' rows stacked along the batch) at its ``i``-th call and the calls its faults
        cannot reach replay their golden outputs: as recorded (``rows`` None: cheap, right when
        nothing but replayed modules reads them), or their rows ``rows`` (the input each stacked
        row belongs to), with the input batch gathered the same way (glue such as a residual
        addition then sees stacked tensors everywhere); with ``only_read``, only the replayed
        outputs (and the input) that the stacked part reads (:meth:`stacked_reads`) are gathered.
        The rest computes on what it receives.

        Example:
            >>> class Net(torch.nn.Module):
            ...     def __init__(self):
            ...         super().__init__(); self.a, self.b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
            ...     def forward(self, x):
            ...         return self.b(self.a(x)) + x       # glue reads the input: rows must be gathered
            >>> net, x = Net().eval(), torch.randn(3, 2)
            >>> r = ModuleReplay(net, [x]); g = r.golden()
            >>> a_out = r.recorded[id(net.a)][0][0]
            >>> rows = torch.tensor([2, 0, 2])           # inputs 2, 0 and 2 again
            >>> torch.equal(r.stacked_forward(0, net.a, [a_out[rows]], rows), g[rows])
            True
        """
        read = self.stacked_reads(target, batch) if only_read and rows is not None else None
        with torch.no_grad(), self._replaying(batch, self.plan([target], batch), rows, target, iter(calls), read):
            x = self.batches[batch]
            return self.model(x if rows is None or (read is not None and not read[1]) else _gather(x, rows, len(x)))

    def stacked_reads(self, target: nn.Module, batch: int) -> tuple[set[tuple[int, int]], bool] | None:
        """For :meth:`stacked_forward` with ``target`` over input batch ``batch``: the replayed calls
        (module id, call index) whose outputs, and whether the input, the stacked part reads
        (:func:`~resil.campaign.dataflow.read_replays`; cached), traced on the batch's first input
        alone where that runs the same operations (:meth:`trace`); None where that forward fails
        (:data:`~resil.campaign.grouped.LAYOUT_FAILURES`)."""
        key = (id(target), batch)
        if key not in self._read:
            x = self.batches[batch]
            self.trace([target], batch)  # decides whether the first input alone runs the batch's operations
            try:
                one = x[:1] if self._operations[batch] else x
                self._read[key] = read_replays(self.model, one, self.plan([target], batch).calls, target)
            except LAYOUT_FAILURES:
                self._read[key] = None
        return self._read[key]


class _Recorder(CallTracker):
    """The golden run's call tracker: records each call's output (and a Conv/Linear's input) while
    they fit the budget, and which modules change their own tensors."""

    def __init__(self, replay: ModuleReplay) -> None:
        super().__init__(replay.model)
        self.replay, self.batch, self.used = replay, 0, 0
        self.outputs: dict[int, list[list[Any]]] = {k: [[] for _ in replay.batches] for k in replay.modules}
        self.args: dict[int, list[list[Any]]] = {k: [[] for _ in replay.batches] for k, m in replay.modules.items() if records_inputs(m)}
        self.dropped: set[int] = set()
        self.versions: dict[int, list[tuple[Any, tuple[object, ...]]]] = {}
        self._held: list[dict[str, tuple[int, int]]] = []

    def start(self, batch: int) -> None:
        """Start recording input batch ``batch``: a fresh call list."""
        self.batch, self.calls, self._count = batch, [], {}

    def _pre(self, m: nn.Module, args: Any) -> None:
        super()._pre(m, args)
        self._held.append(_held(m))

    def _post(self, m: nn.Module, args: Any, out: Any) -> None:
        if _held(m) != self._held.pop():
            self.replay.stateful.add(id(m))
        super()._post(m, args, out)
        k = id(m)
        if k in self.dropped:
            return
        first = args[0] if k in self.args and args else None
        size = nbytes(out) + nbytes(first)
        if self.used + size > self.replay.budget:
            self.dropped.add(k)
            return
        self.used += size
        self.outputs[k][self.batch].append(out)
        self.versions.setdefault(k, []).append((out, versions(out)))
        if k in self.args:
            self.args[k][self.batch].append(first)
            self.versions[k].append((first, versions(first)))

    def finish(self) -> None:
        """Hand the recordings to the replay, leaving out modules whose recordings were changed in place."""
        r = self.replay
        self.dropped |= {k for k, seen in self.versions.items() if any(versions(value) != v for value, v in seen)}
        self.dropped |= r.hooks_of_their_own
        r.recorded = {k: v for k, v in self.outputs.items() if k not in self.dropped and k in r.first_start}
        r.inputs = {k: v for k, v in self.args.items() if k in r.recorded}


def _held(m: nn.Module) -> dict[str, tuple[int, int]]:
    """Identity and in-place version of each tensor a module holds itself (:func:`~resil.campaign.dataflow.held_tensors`)."""
    return {k: (id(v), v._version) for k, v in held_tensors(m).items()}


def _numel(value: Any) -> int:
    """The elements of the largest tensor in a recorded value."""
    return max((t.numel() for t in tree_leaves(value) if isinstance(t, torch.Tensor)), default=1)


def _gather(value: Any, rows: torch.Tensor, n: int) -> Any:
    """Rows ``rows`` of a recorded value of an ``n``-input batch (structures too): tensors batched
    like the input (dimension 0 of length ``n``) are gathered; the rest (scalars, a positional
    table of the module's own) stays as it is."""
    if isinstance(value, torch.Tensor):
        return value.index_select(0, rows) if value.dim() and len(value) == n else value  # not value[rows]: ~10x slower on CPU
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_gather(v, rows, n) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_gather(v, rows, n) for v in value)
    if isinstance(value, dict):
        return {k: _gather(v, rows, n) for k, v in value.items()}
    return value
