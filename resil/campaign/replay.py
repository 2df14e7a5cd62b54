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

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..adapter_registry import adapter_for
from .grouped import same_bits, stacked_copies
from .suffix import nbytes, sharing_modules

__all__ = ["ModuleReplay", "records_inputs"]


def records_inputs(module: nn.Module) -> bool:
    """Whether the golden inputs of ``module`` are recorded too: its adapter can recompute its
    touched output channels alone (:meth:`resil.site.Adapter.channel_layer`)."""
    return adapter_for(module).channel_layer(module) is not None


def _versions(value: Any) -> tuple[int, ...]:
    """The in-place version counters of the tensors in a recorded value."""
    if isinstance(value, torch.Tensor):
        return (value._version,)
    if isinstance(value, (tuple, list)):
        return sum((_versions(v) for v in value), ())
    if isinstance(value, dict):
        return sum((_versions(v) for v in value.values()), ())
    return ()


class ModuleReplay:
    """Forward passes over fixed input batches in which modules that finish before given ones replay.

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
        self.parent = {id(c): id(m) for m in model.modules() for c in m.children()}
        self.first_start: dict[int, int] = {}
        self.last_end: dict[int, int] = {}
        self.recorded: dict[int, list[list[Any]]] = {}  # module id -> [batch][call] -> output
        self.inputs: dict[int, list[list[Any]]] = {}  # module id -> [batch][call] -> first argument (Conv/Linear only)
        #: per module, the modules sharing a stored tensor with it (tied weights): faulted together
        self.sharing = sharing_modules(model)
        #: modules whose recorded outputs later code changed in place after the golden run (not replayed any more)
        self.forgotten: set[int] = set()
        self.outputs: list[Any] = []
        self._exact: dict[frozenset[int], bool] = {}

    def golden(self) -> torch.Tensor:
        """The full forward over every batch, recording call order and outputs."""
        clock = [0]
        used = [0]
        calls: dict[int, list[list[Any]]] = {k: [[] for _ in self.batches] for k in self.modules}
        args_of: dict[int, list[list[Any]]] = {k: [[] for _ in self.batches] for k, m in self.modules.items() if records_inputs(m)}
        dropped: set[int] = set()
        versions: dict[int, list[tuple[Any, tuple[int, ...]]]] = {}
        batch = [0]

        def pre(m: nn.Module, args: Any) -> None:
            if batch[0] == 0:
                self.first_start.setdefault(id(m), clock[0])
            clock[0] += 1

        def post(m: nn.Module, args: Any, out: Any) -> None:
            if batch[0] == 0:
                self.last_end[id(m)] = clock[0]
            clock[0] += 1
            if id(m) not in dropped:
                first = args[0] if id(m) in args_of and args else None
                size = nbytes(out) + nbytes(first)
                if used[0] + size > self.budget:
                    dropped.add(id(m))
                else:
                    used[0] += size
                    calls[id(m)][batch[0]].append(out)
                    versions.setdefault(id(m), []).append((out, _versions(out)))
                    if id(m) in args_of:
                        args_of[id(m)][batch[0]].append(first)
                        versions[id(m)].append((first, _versions(first)))

        handles = [m.register_forward_pre_hook(pre) for m in self.modules.values()]
        handles += [m.register_forward_hook(post) for m in self.modules.values()]
        try:
            with torch.no_grad():
                for b, x in enumerate(self.batches):
                    batch[0] = b
                    self.outputs.append(self.model(x))
        finally:
            for h in handles:
                h.remove()
        dropped |= {k for k, seen in versions.items() if any(_versions(value) != v for value, v in seen)}  # changed in place by later code
        self.recorded = {k: v for k, v in calls.items() if k not in dropped and k in self.last_end}
        self.inputs = {k: v for k, v in args_of.items() if k in self.recorded}
        return torch.cat(self.outputs)

    def replayed(self, targets: Iterable[nn.Module]) -> list[tuple[str, nn.Module]]:
        """The outermost recorded modules whose calls all end before any of ``targets`` starts."""
        ids = {k for t in targets for k in self.sharing.get(id(t), {id(t)})}
        if not ids or any(k not in self.first_start for k in ids):  # a faulted tensor used without calling its module
            return []
        starts = [self.first_start[k] for k in ids]
        start = min(starts)
        chosen = {k for k in self.recorded if self.last_end[k] < start}
        return [(self.names[k], self.modules[k]) for k in self.modules if k in chosen and self.parent.get(k) not in chosen]

    def check(self, targets: Iterable[nn.Module]) -> bool:
        """Whether replaying the modules before ``targets`` reproduces the golden output bit for bit
        (run once per replay set; call it while no fault is applied)."""
        chosen = [m for _, m in self.replayed(targets)]
        key = frozenset(id(m) for m in chosen)
        if chosen and key not in self._exact:
            self._exact[key] = same_bits(self._forward(chosen), torch.cat(self.outputs))
        return bool(chosen) and self._exact[key]

    def run(self, targets: Iterable[nn.Module]) -> torch.Tensor:
        """The output over all batches with the modules before ``targets`` replayed where
        :meth:`check` (called before the faults were applied) passed; else a full forward."""
        chosen = [m for _, m in self.replayed(targets)]
        return self._forward(chosen if self._exact.get(frozenset(id(m) for m in chosen), False) else [])

    def _forward(self, chosen: list[nn.Module]) -> torch.Tensor:
        outs = []
        with torch.no_grad():
            for b, x in enumerate(self.batches):
                before = {id(m): [_versions(o) for o in self.recorded[id(m)][b]] for m in chosen}
                for m in chosen:
                    replay = iter(self.recorded[id(m)][b])
                    m.forward = lambda *args, r=replay, **kw: next(r)  # shadows the class's forward
                try:
                    outs.append(self.model(x))
                finally:
                    for m in chosen:
                        del m.forward
                self._forget_changed(chosen, b, before)
        return torch.cat(outs)

    def _forget_changed(self, chosen: list[nn.Module], batch: int, before: dict[int, list[tuple[int, ...]]]) -> None:
        """Stop replaying modules whose recorded outputs later code changed in place (this run's
        result is right: the change came after the module returned, as in a full forward)."""
        changed = [m for m in chosen if [_versions(o) for o in self.recorded[id(m)][batch]] != before[id(m)]]
        for m in changed:
            del self.recorded[id(m)]
            self.inputs.pop(id(m), None)
            self.forgotten.add(id(m))
        if changed:
            self._exact.clear()

    def stacked_forward(self, batch: int, target: nn.Module, calls: Sequence[Any], copies: int, *, stack_prefix: bool) -> Any:
        """The model's forward over input batch ``batch`` in which ``target`` returns ``calls[i]``
        (``copies`` scenarios stacked along the batch) at its ``i``-th call and the modules that
        finish before it replay their golden outputs: as they are (``stack_prefix=False``: cheap,
        right when nothing but replayed modules reads them) or as stacked copies, with the input
        batch stacked too (``stack_prefix=True``: glue such as a residual addition then sees
        stacked tensors everywhere). The rest computes on what it receives."""
        chosen = [m for _, m in self.replayed([target])]
        replays = {id(m): iter(self.recorded[id(m)][batch]) for m in chosen}
        before = {id(m): [_versions(o) for o in self.recorded[id(m)][batch]] for m in chosen}
        own = iter(calls)
        n = copies if stack_prefix else 1
        for m in chosen:
            m.forward = _replaying(replays[id(m)], n)
        target.forward = lambda *a, **kw: next(own)
        try:
            with torch.no_grad():
                return self.model(_stack_copies(self.batches[batch], n) if n > 1 else self.batches[batch])
        finally:
            for m in (*chosen, target):
                del m.forward
            self._forget_changed(chosen, batch, before)


def _replaying(recorded: Iterator[Any], copies: int) -> Callable[..., Any]:
    """A forward that returns the next recorded output (as ``copies`` stacked copies if more than one)."""
    def forward(*args: Any, **kwargs: Any) -> Any:
        out = next(recorded)
        return _stack_copies(out, copies) if copies > 1 else out
    return forward


def _stack_copies(value: Any, copies: int) -> Any:
    """``copies`` copies of a recorded batch value stacked along the batch dimension (structures too)."""
    if isinstance(value, torch.Tensor):
        return stacked_copies(value, copies) if value.dim() else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_stack_copies(v, copies) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_stack_copies(v, copies) for v in value)
    if isinstance(value, dict):
        return {k: _stack_copies(v, copies) for k, v in value.items()}
    return value
