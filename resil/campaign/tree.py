"""Many scenarios per forward pass in any module tree (models that are not an ``nn.Sequential``).

Scenarios whose faults all sit in one module ``M`` (the weights and biases of a Conv/Linear, or
its output) share everything but ``M``'s outputs. :class:`TreeGroupedForward` computes those for
the whole group at once, exactly as :class:`~resil.campaign.grouped.GroupedForward` does for a
stage (only the touched output channels recomputed, from ``M``'s recorded golden input), then
runs the model's own forward once over stacked copies of the input batch: the calls that ``M``'s
faults cannot reach return their golden outputs (:class:`~resil.campaign.replay.ModuleReplay`),
``M`` returns the stacked patched outputs, and everything else (glue code, residual additions,
later modules) computes on the stacked batch.

The same guards hold: recomputed channels must equal the full layer's bit for bit, and the
stacked forward with ``M`` returning the rows of a :class:`~resil.campaign.grouped.Probe` must
pass its check (this catches kernels that change with the batch size or a row's position,
models that mix the batch, and code that depends on the batch size); otherwise the scenarios
run one at a time. From the data-flow trace: layers whose stored tensors another module shares
(tied weights) or an operation outside their calls reads are not patched, and a module whose
faults steer Python or reach its own later calls is not stacked.

Example:
    >>> import torch
    >>> from resil.campaign.replay import ModuleReplay
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__(); self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)
    ...     def forward(self, x):
    ...         return self.b(torch.relu(self.a(x)))
    >>> r = ModuleReplay(Net().eval(), [torch.randn(5, 4)]); _ = r.golden()
    >>> g = TreeGroupedForward(r); g.staged, g.sequential, [type(m).__name__ for m in g.suffix.stages]
    (True, False, ['Linear', 'Linear'])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .dataflow import FaultTrace
from .glue import Glue, glue_after
from .grouped import LAYOUT_FAILURES, GroupedForward, Probe, differing_pairs, gathered_size, perturb, same_bits
from .replay import Diverged, Gathering, ModuleReplay

__all__ = ["TreeGroupedForward", "TreeStages"]


class TreeStages:
    """A :class:`ModuleReplay`'s recorded modules seen as stages: what :class:`GroupedForward` reads."""

    def __init__(self, replay: ModuleReplay) -> None:
        self.replay, self.model, self.batches, self.outputs = replay, replay.model, replay.batches, replay.outputs
        order = sorted(replay.recorded, key=lambda k: replay.first_start[k])
        self.stages: list[nn.Module] = [replay.modules[k] for k in order]
        self.stage_of = {k: i for i, k in enumerate(order)}  # a site's own module, not its ancestors
        self.recorded = [[replay.recorded[k][b] for k in order] for b in range(len(self.batches))]


class TreeGroupedForward(GroupedForward):
    """:class:`GroupedForward` over the modules of any tree (see the module docstring)."""

    def __init__(self, replay: ModuleReplay, budget: int = 1 << 20, max_group: int = 256) -> None:
        super().__init__(TreeStages(replay), budget, max_group)  # type: ignore[arg-type]
        self.sequential = False
        self.replay = replay
        self._stack_prefix: dict[tuple[int, int, int], Gathering] = {}
        self._gathered: dict[tuple[object, ...], Gathering | None] = {}
        self._glues: dict[int, list[Glue] | None] = {}
        self._traced: dict[tuple[str, int], bool] = {}  # what the traces of a stage's faults allow (cached)
        self._diverged: set[int] = set()  # stages whose replays left the golden module calls: run alone

    def outputs(self, stage: int, sc: Any, positions: Any, sites: Any) -> torch.Tensor | None:
        """As :meth:`GroupedForward.outputs`; None (run alone) once later code changed a recorded
        output in place, since the recordings the groups read may then be stale, and where the
        traces of the stage's faults forbid stacking (:meth:`_stackable`).

        Where the faulted module's output reaches the rest only through channel-local glue into
        one module call (:func:`~resil.campaign.glue.glue_after`), the touched channels are carried
        through the glue and patched into that module's recorded input, which then computes for
        the whole group as the faulted module (scenarios whose carried channels equal golden are
        dropped there)."""
        if (self.replay.forgotten or stage in self._diverged or id(self.suffix.stages[stage]) in self.replay.unfollowed
                or not self.batched(stage) or not self._stackable(stage)):
            return None
        touched = self._touched_weights(stage, sc, positions, sites) or self._touched_output(stage, sc, positions, sites)
        if touched is None:
            return None
        glues = self._glue(stage) if touched.dim == 1 else None  # glue carries channels on dimension 1
        n, batches = len(positions), range(len(self.suffix.batches))
        if glues is None or not all(self._glue_exact(stage, b, glues[b], len(touched.channel)) for b in batches):
            return self._outputs(stage, sc, positions, sites, touched)
        row_scen, row_channel, rows, _ = touched
        channels = torch.from_numpy(row_channel)
        carried = [glues[b].carry(rows(b, 0), channels) for b in batches]
        golden = [self._glue_input(stage, b, glues[b]) for b in batches]
        live = self._live(n, row_scen, list(zip(carried, golden, strict=True)), row_channel)
        keep, row_scen, row_channel, ys = self._keep(live, row_scen, row_channel, [[y] for y in carried])
        consumer = self.suffix.stage_of[glues[0].consumer]
        if len(keep) and not all(self._consumer_exact(consumer, b, len(keep)) for b in batches):
            return self._outputs(stage, sc, positions, sites, touched)
        outs: list[torch.Tensor | None] = []
        for b in batches:
            if not len(keep):
                outs.append(None)
                continue
            x = self._stack(golden[b], ys[b][0], row_scen, row_channel, len(keep))
            y = self._consume(consumer, x.reshape(len(keep) * len(golden[b]), *self._input(b, consumer).shape[1:]))
            outs.append(self._replayed(consumer, b, [y.reshape(len(keep), len(golden[b]), *y.shape[1:])]))
            if outs[-1] is None:
                return None
        return self._assemble(n, keep, outs)

    def _glue(self, stage: int) -> list[Glue] | None:
        """Per input batch, the glue from ``stage``'s output to the one module call that reads it,
        the same module in every batch, whose input is recorded; None where there is none."""
        if stage not in self._glues:
            module = self.suffix.stages[stage]
            found = [glue_after(t, id(module), self.replay.modules) if (t := self.replay.trace([module], b)) is not None else None
                     for b in range(len(self.suffix.batches))]
            glues = [g for g in found if g is not None]
            consumer = glues[0].consumer if glues else None
            ok = (len(glues) == len(found) and all(g.consumer == consumer for g in glues)
                  and consumer in self.replay.inputs and consumer in self.suffix.stage_of and consumer not in self.replay.unfollowed)
            self._glues[stage] = glues if ok else None
        return self._glues[stage]

    def _glue_input(self, stage: int, batch: int, glue: Glue) -> torch.Tensor:
        """The consumer's recorded golden input, seen as ``[B, channels, ...]`` of ``stage``'s output
        (after a flatten: ``[B, channels, features per channel]``)."""
        x = self.replay.inputs[glue.consumer][batch][0]
        return x.reshape(len(x), self._golden_out(batch, stage).shape[1], -1) if glue.flatten else x

    def _glue_exact(self, stage: int, batch: int, glue: Glue, n_rows: int) -> bool:
        """Whether the glue on ``n_rows`` picked channels of ``stage``'s golden output reproduces
        those channels of the consumer's golden input bit for bit, and those of the glue on every
        channel of a perturbed output (golden values, zeros after a ReLU, can hide a kernel that
        computes otherwise; checked once per row count)."""
        def exact() -> bool:
            out = self._golden_out(batch, stage)
            pick = torch.arange(n_rows) % out.shape[1]
            want = self._glue_input(stage, batch, glue)
            perturbed = perturb(out)
            with torch.no_grad():
                got = glue.carry(out[:, pick], pick)
                return (got.shape[1:] == want[:, pick].shape[1:] and same_bits(got, want[:, pick])
                        and same_bits(glue.carry(perturbed[:, pick], pick), glue.carry(perturbed, torch.arange(out.shape[1]))[:, pick]))
        return self._check(("glue", stage, batch, n_rows), exact)

    def _consume(self, consumer: int, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.suffix.stages[consumer](x)

    def _consumer_exact(self, consumer: int, batch: int, s: int) -> bool:
        """Whether the consumer over ``s`` stacked copies of its golden input passes the check of
        :meth:`Probe.copies` (checked once per shape)."""
        def exact() -> bool:
            x = self._input(batch, consumer)
            probe = Probe.copies(len(x), s)
            alone = self._alone_out(("consume", consumer, batch), lambda: self._consume(consumer, probe.alone(x)))
            return probe.matches(self._consume(consumer, probe.batch(x)), self._golden_out(batch, consumer), alone)
        return self._check(("consume", consumer, batch, s), exact)

    def _traces(self, stage: int) -> list[FaultTrace | None]:
        """Per input batch, the trace of faults in ``stage``'s module (:meth:`ModuleReplay.trace`)."""
        return [self.replay.trace([self.suffix.stages[stage]], b) for b in range(len(self.suffix.batches))]

    def _stackable(self, stage: int) -> bool:
        """Whether, in every input batch, ``stage``'s traces are usable and show that
        - no value its faults reach steers Python: a branch on a stacked value (``if h.sum() > 0``)
          would decide for every stacked scenario at once, where each alone may decide otherwise;
        - no call of its module receives a value its faults reach (a recurrence through it): its
          faulty outputs are computed from its recorded golden inputs."""
        if ("stack", stage) not in self._traced:
            module = id(self.suffix.stages[stage])
            self._traced[("stack", stage)] = all(
                t is not None and t.reached is not None
                and not any(t.call_reads.get(p) for p, c in enumerate(t.calls) if c.module == module) for t in self._traces(stage))
        return self._traced[("stack", stage)]

    def patch_allowed(self, module: nn.Module) -> bool:
        """Recorded inputs exist, no other module shares the layer's stored tensors, and no
        operation outside its own calls reads them (``F.linear(x, self.a.weight)`` would compute
        with the unfaulted weight while the layer's touched channels are recomputed alone)."""
        stage = self.suffix.stage_of[id(module)]
        if ("patch", stage) not in self._traced:
            self._traced[("patch", stage)] = (id(module) in self.replay.inputs and id(module) not in self.replay.unfollowed
                                              and super().patch_allowed(module)
                                              and not any(t is None or t.reads_held_outside(module) for t in self._traces(stage)))
        return self._traced[("patch", stage)]

    def _input(self, batch: int, stage: int, call: int = 0) -> torch.Tensor:
        return self.replay.inputs[id(self.suffix.stages[stage])][batch][call]

    def _replay(self, stage: int, batch: int, calls: list[torch.Tensor]) -> Any:
        n = len(self.suffix.batches[batch])
        s = len(calls[0]) // n
        mode = self._stack_prefix.get((stage, batch, s), "all") if s > 1 else "recorded"
        return self._stacked_forward(stage, batch, calls, torch.arange(n).repeat(s), mode)  # s stacked copies of the batch

    def _stacked_forward(self, stage: int, batch: int, calls: list[torch.Tensor], rows: torch.Tensor, mode: Gathering) -> Any:
        """:meth:`ModuleReplay.stacked_forward` with ``stage`` returning ``calls``, the replayed
        outputs gathered by ``rows`` as ``mode`` says; None where the forward left the golden
        module calls (PyTorch's fused paths skip submodules without hooks), and ``stage`` runs
        alone from then on."""
        try:
            return self.replay.stacked_forward(batch, self.suffix.stages[stage], calls, None if mode == "recorded" else rows,
                                               only_read=mode == "read")
        except (Diverged, StopIteration):
            self._diverged.add(stage)
            return None

    def _replayed(self, stage: int, batch: int, calls: list[torch.Tensor]) -> torch.Tensor | None:
        """As :meth:`GroupedForward._replayed`, but where the patched outputs leave some (scenario,
        input) rows bit-identical to golden at every call of the faulted module (a flipped
        activation that is not the max of its pooling window, say), only the other rows run,
        gathered into one batch, the rest keeping their golden outputs (fault dropping per input).
        The replayed outputs stay as recorded where the check allows (the glue before the faulted
        module then runs once, as when stacking), else they and the input are gathered alike."""
        s, n = calls[0].shape[:2]
        golden = [self._golden_out(batch, stage, c) for c in range(len(calls))]
        differs = np.logical_or.reduce([differing_pairs(y, g) for y, g in zip(calls, golden, strict=True)])
        live = torch.from_numpy(np.flatnonzero(differs))
        size = gathered_size(len(live)) if len(live) else 0
        size += 1 if n > 1 and size in (1, n) else 0  # never a row count that broadcasts against, or equals, the input batch's
        mode = self._gather_mode(stage, batch, size) if len(live) and size < s * n else None
        if mode is None:
            return super()._replayed(stage, batch, calls)
        pad = torch.arange(size - len(live)) % n  # inputs whose golden rows fill the batch up to its checked size
        rows = torch.cat([live % n, pad])
        faulty = [torch.cat([y.reshape(s * n, *y.shape[2:])[live], g[pad]]) for y, g in zip(calls, golden, strict=True)]
        ran = self._stacked_forward(stage, batch, faulty, rows, mode)
        if ran is None:
            return None
        out = self.suffix.outputs[batch].unsqueeze(0).repeat(s, *([1] * self.suffix.outputs[batch].dim()))
        out.reshape(s * n, *out.shape[2:])[live] = ran[: len(live)]
        return out

    def _gather_mode(self, stage: int, batch: int, size: int) -> Gathering | None:
        """:meth:`_prefix_mode` for ``size`` gathered rows (:meth:`Probe.gathered`), checked once per size."""
        key = ("gather", stage, batch, size)
        if key not in self._gathered:
            with self.checking():
                self._gathered[key] = self._prefix_mode(stage, batch, Probe.gathered(len(self.suffix.batches[batch]), size))
        return self._gathered[key]

    def _replay_exact(self, stage: int, batch: int, s: int) -> bool:
        """As :meth:`GroupedForward._replay_exact`: :meth:`_prefix_mode` for ``s`` stacked copies of
        the batch (:meth:`Probe.copies`), whose answer :meth:`_replay` then uses."""
        def exact() -> bool:
            mode = self._prefix_mode(stage, batch, Probe.copies(len(self.suffix.batches[batch]), s))
            self._stack_prefix[(stage, batch, s)] = mode or "recorded"
            return mode is not None
        return self._check(("replay", stage, batch, s), exact)

    def _prefix_mode(self, stage: int, batch: int, probe: Probe) -> Gathering | None:
        """How the model's forward, ``stage`` returning the :class:`Probe` rows of its golden outputs,
        passes the probe's check (the first of these that does): ``"recorded"``, the replayed
        outputs as recorded (cheap: the glue before ``stage`` runs once); ``"read"``, those the
        stacked part reads (:meth:`ModuleReplay.stacked_reads`) and the input if it does gathered
        by the probe's rows (a residual addition's identity branch, say); ``"all"``, every one and
        the input gathered; None not at all (kernels that change with the batch size or a row's
        position, models that mix the batch)."""
        recorded, module = self.suffix.recorded[batch][stage], self.suffix.stages[stage]
        try:  # the perturbed rows' reference: the forward with their inputs perturbed in their own places
            alone = self._alone_out(("prefix", stage, batch),
                                    lambda: self.replay.stacked_forward(batch, module, [probe.alone(o) for o in recorded], None))
        except Diverged:
            self._diverged.add(stage)
            return None
        except LAYOUT_FAILURES:
            return None
        readable = self.replay.stacked_reads(module, batch) is not None
        modes: list[Gathering] = ["recorded", "read", "all"] if readable else ["recorded", "all"]
        faulty = [probe.batch(o) for o in recorded]
        for mode in modes:
            if self._passes(stage, batch, probe, faulty, mode, alone) and all(self._isolates(stage, batch, p, mode)
                                                                              for p in Probe.isolating(len(recorded[0]))):
                return mode
        return None

    def _isolates(self, stage: int, batch: int, probe: Probe, mode: Gathering) -> bool:
        """:meth:`_passes` for a :meth:`Probe.isolating` probe, checked once per gathering mode."""
        def passes() -> bool:
            recorded, module = self.suffix.recorded[batch][stage], self.suffix.stages[stage]
            try:
                alone = self._alone_out(("prefix", stage, batch, probe.fill),
                                        lambda: self.replay.stacked_forward(batch, module, [probe.alone(o) for o in recorded], None))
            except LAYOUT_FAILURES:
                return False
            return self._passes(stage, batch, probe, [probe.batch(o) for o in recorded], mode, alone)
        return self._check(("isolating", stage, batch, probe.fill, mode), passes)

    def _passes(self, stage: int, batch: int, probe: Probe, faulty: list[Any], mode: Gathering, alone: torch.Tensor) -> bool:
        """Whether the model's forward, ``stage`` returning ``faulty`` (``probe``'s rows of its golden
        outputs) and the replayed outputs gathered as ``mode`` says, passes ``probe``'s check."""
        try:
            out = self.replay.stacked_forward(batch, self.suffix.stages[stage], faulty,
                                              None if mode == "recorded" else torch.from_numpy(probe.rows), only_read=mode == "read")
        except LAYOUT_FAILURES:
            return False
        return probe.matches(out, self.suffix.outputs[batch], alone)

    def group_size(self, stage: int) -> int:
        """How many scenarios fit the budget: the widest output computed on the stacked batch (of
        the calls that the faulted module's faults can reach, or that are not recorded), from the
        consumer of its glue on where its touched channels are carried through glue."""
        glues = self._glue(stage)
        stage = stage if glues is None else self.suffix.stage_of[glues[0].consumer]
        widest = max(self.replay.plan([self.suffix.stages[stage]], b).widest for b in range(len(self.suffix.batches)))
        return int(max(1, min(self.max_group, self.budget // max(widest, 1))))
