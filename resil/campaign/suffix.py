"""Suffix execution: replay the golden outputs of the stages before the first faulted one.

The golden run records, for every stage (top-level child) of an ``nn.Sequential`` model, its
output at every call; a scenario whose faults all sit in stage k or later then runs the model's
own forward with stages 0..k-1 replaced by a replay of those outputs. Those stages cannot see
the faults, so the stages from k on get exactly the inputs they would get in a full faulty
forward: the result is bit-identical, at the cost of the suffix only. This covers plain
sequential models and ``nn.Sequential`` subclasses whose forward loops over the stages, such as
a spiking network's time loop (each step replays its own golden outputs). Other models run the
full forward pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import FaultError
from ..hooks import Hook, carries_hooks, forward_hooks
from ..site import Site


def versions(value: Any) -> tuple[object, ...]:
    """The in-place version counters of the tensors in a recorded value; an inference tensor
    (``torch.inference_mode`` in a forward) has none and counts as changed at every look.

    Example:
        >>> t = torch.zeros(2); before = versions([t]); _ = t.add_(1)
        >>> before == versions([t]), versions(torch.inference_mode()(torch.zeros)(1)) == versions(t)
        (False, False)
    """
    if isinstance(value, torch.Tensor):
        return (object(),) if value.is_inference() else (value._version,)
    if isinstance(value, (tuple, list)):
        return sum((versions(v) for v in value), ())
    if isinstance(value, dict):
        return sum((versions(v) for v in value.values()), ())
    return ()


def batch_outputs(outputs: Sequence[Any], batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """The outputs of the input batches ``batches``, one per batch, as one tensor; a
    :class:`~resil.errors.FaultError` where one is no tensor with a row per input (a ``squeeze()``
    drops the batch dimension of a batch of one input) or their shapes differ past the batch.

    Example:
        >>> batch_outputs([torch.zeros(2, 3), torch.zeros(1, 3)], [torch.zeros(2, 4), torch.zeros(1, 4)]).shape
        torch.Size([3, 3])
    """
    for out, x in zip(outputs, batches, strict=True):
        if not isinstance(out, torch.Tensor) or out.dim() == 0 or len(out) != len(x) or out.shape[1:] != outputs[0].shape[1:]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise FaultError(f"the model's output over a batch of {len(x)} input{'' if len(x) == 1 else 's'} is {got}; it must have "
                             f"one row per input, each shaped {tuple(outputs[0].shape[1:])} as in the first batch: keep the batch "
                             "dimension (x.squeeze() drops it for a batch of one input; squeeze named dimensions) or pick a "
                             "batch size that leaves no such batch")
    return torch.cat(list(outputs))


def nbytes(value: Any) -> int:
    """Bytes held by the tensors of a value (structures too)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    return 0


def sharing_modules(model: nn.Module) -> dict[int, set[int]]:
    """Per module (by id), the modules holding one of its parameters or buffers too (tied
    weights), itself included: a fault in one of them reaches all of them.

    Example:
        >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2); b.weight = a.weight
        >>> net = nn.Sequential(a, b); len(sharing_modules(net)[id(a)]), len(sharing_modules(net)[id(net)])
        (2, 1)
    """
    own = {id(m): [t.untyped_storage().data_ptr() for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))]
           for m in model.modules()}
    owners: dict[int, set[int]] = {}
    for k, storages in own.items():
        for ptr in storages:
            owners.setdefault(ptr, set()).add(k)
    return {k: {k}.union(*(owners[ptr] for ptr in storages)) for k, storages in own.items()}


def _recorder(calls: list[list[Any]], k: int, x: torch.Tensor, chained: list[bool], seen: list[tuple[Any, tuple[object, ...]]]) -> Hook:
    """A forward hook appending each output of stage ``k`` to ``calls[k]`` (and to ``seen`` with its
    in-place version counters); it clears ``chained[0]`` when the call's first argument is not what
    a chain of stages would feed it: the input batch ``x`` for stage 0, the latest output of stage
    ``k - 1`` (or that output's first entry) otherwise."""
    def record(module: nn.Module, args: Any, out: object) -> None:
        fed = x if k == 0 else (calls[k - 1][-1] if calls[k - 1] else None)
        first = args[0] if args else None
        if not (first is fed or (isinstance(fed, (tuple, list)) and len(fed) and first is fed[0])):
            chained[0] = False
        calls[k].append(out)
        seen.append((out, versions(out)))
    return record


class SuffixForward:
    """Forward passes over fixed input batches that can skip the stages before a given one."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, batch_size: int) -> None:
        self.model = model
        self.batches = [inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size)]
        self.stages: list[nn.Module] = list(model.children()) if isinstance(model, nn.Sequential) else []
        self.stage_of = {id(m): k for k, stage in enumerate(self.stages) for m in stage.modules()}
        self.recorded: list[list[list[Any]]] = []  # [batch][stage][call] -> output
        self.outputs: list[torch.Tensor] = []  # [batch] -> the model's golden output

    def golden(self, budget: int | None = None) -> torch.Tensor | None:
        """The full forward pass, recording every stage's outputs; None (nothing kept, no stages
        left) when the first batch shows that the recordings of all batches would pass ``budget``
        bytes, or when some stage is not fed what a chain of stages feeds it (the input batch for
        the first, the previous stage's latest output for the others): an ``nn.Sequential``
        subclass whose own forward feeds a stage anything else (a later stage's output, in a
        loop) could make a stage before the faulted one see the fault, so replaying it would be
        wrong; such a model runs as a module tree (:mod:`resil.campaign.replay`), as does one
        with a stage that carries hooks of the user's (:func:`~resil.hooks.carries_hooks`) or one
        that changes what it is fed in place (``x.mul_(2)``: replays would pile the change up)."""
        if any(carries_hooks(stage) for stage in self.stages):
            self._as_tree()
            return None
        chained = [True]
        for x in self.batches:
            calls: list[list[Any]] = [[] for _ in self.stages]
            seen: list[tuple[Any, tuple[object, ...]]] = [(x, versions(x))]
            with forward_hooks((stage, _recorder(calls, k, x, chained, seen)) for k, stage in enumerate(self.stages)), torch.no_grad():
                self.outputs.append(self.model(x))
            self.recorded.append(calls)
            too_big = budget is not None and len(self.recorded) == 1 and nbytes(calls) * len(self.batches) > budget
            changed = any(versions(value) != v for value, v in seen)  # a stage changed what it was fed in place
            if too_big or not chained[0] or changed:
                self._as_tree()
                return None
        return batch_outputs(self.outputs, self.batches)

    def _as_tree(self) -> None:
        """Keep no stages nor recordings: the model runs as a module tree."""
        self.stages, self.stage_of, self.recorded, self.outputs = [], {}, [], []

    def first_stage(self, sites: Iterable[Site]) -> int:
        """The first stage any of ``sites`` belongs to (0 when unknown: run everything)."""
        return min((self.stage_of.get(id(s.module), 0) for s in sites), default=0)

    def run_from(self, stage: int) -> torch.Tensor:
        """The output over all inputs, with stages before ``stage`` replayed from the golden run."""
        with torch.no_grad():
            return batch_outputs([self.forward_with(b, {k: self.recorded[b][k] for k in range(stage)}) for b in range(len(self.batches))],
                                 self.batches)

    def forward_with(self, batch: int, sources: dict[int, Sequence[Any]]) -> Any:
        """The model's own forward over input batch ``batch``, each stage ``k`` in ``sources``
        returning ``sources[k][i]`` at its ``i``-th call instead of computing."""
        replays = {k: iter(calls) for k, calls in sources.items()}
        for k, r in replays.items():
            self.stages[k].forward = lambda *args, r=r, **kw: next(r)  # shadows the class's forward
        try:
            return self.model(self.batches[batch])
        finally:
            for k in replays:
                del self.stages[k].forward
