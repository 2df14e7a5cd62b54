"""Modules that compute along another path while forward hooks are attached.

resil records a module tree's golden run through forward hooks (:class:`~resil.campaign.dataflow.CallTracker`).
Some modules look for hooks and take a fused kernel only without them: ``nn.TransformerEncoderLayer``'s
fast path calls none of its submodules, so a replay without hooks leaves the golden module calls and
nothing inside the layer can be replayed or patched. :func:`mirrored` names the modules a replay
hooks to follow the golden run: :func:`hook_dependent` finds them by
counting the module calls of a hook-free forward against the golden run's; :func:`paths_agree` checks
that both paths give the same bits on perturbed inputs and on corrupted weights (as a fault makes
them); :func:`hooked` attaches a no-op hook to them, so that a replay calls their submodules as
the golden run did.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from resil.campaign.dataflow import CallTracker
    >>> layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).eval()
    >>> net, x = nn.Sequential(layer, nn.Linear(8, 2)), torch.randn(3, 4, 8)
    >>> with torch.no_grad(), CallTracker(net) as t:
    ...     _ = net(x)
    >>> [m is layer for m in hook_dependent(net, x, t.calls)]
    [True]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ..encodings import FLOAT_ENCODINGS
from ..hooks import pre_hooks
from .dataflow import Call
from .grouped import perturb, same_bits

__all__ = ["hook_dependent", "hooked", "mirrored", "paths_agree"]


def hooked(modules: Iterable[nn.Module]) -> AbstractContextManager[None]:
    """Within: each of ``modules`` carries a no-op forward pre-hook (its hooked path runs)."""
    return pre_hooks((m, _no_op) for m in modules)


def _no_op(module: nn.Module, args: Any) -> None:
    return None


def hook_dependent(model: nn.Module, x: Any, calls: list[Call]) -> list[nn.Module] | None:
    """The modules of ``model`` that skip submodule calls of the golden (hooked) forward over ``x``
    (``calls``) when no hooks are attached: the innermost enclosing module of each missing call,
    found level by level with the outer ones hooked. None where hooking them does not restore the
    golden calls."""
    modules = {id(m): m for m in model.modules() if m is not model}
    golden = Counter(c.module for c in calls)
    enclosing: dict[int, set[int]] = {}
    for c in calls:
        if c.parent >= 0:
            enclosing.setdefault(c.module, set()).add(calls[c.parent].module)
    found: list[nn.Module] = []
    while True:
        with hooked(found):
            seen = _count_calls(model, x, modules)
        missing = [k for k in golden if seen[k] < golden[k]]
        if not missing:
            return found
        new = {p for k in missing for p in enclosing.get(k, ()) if seen[p] == golden[p]} - {id(m) for m in found}
        if not new:
            return None
        found += [modules[k] for k in new]


def mirrored(model: nn.Module, batches: list[Any], calls: list[Call]) -> tuple[list[nn.Module], set[int]]:
    """The modules a replay must hook to follow the golden (hooked) run over ``batches`` (whose
    first batch made ``calls``): the :func:`hook_dependent` ones, if :func:`paths_agree` holds for
    each on its inputs from the first and the last batch; else none (a replay then leaves the
    golden calls, and its scenarios run alone). Second, the ids of the modules inside
    hook-dependent ones that are not hooked (every submodule where hooks do not explain the
    missing calls): the golden run's calls and data flow inside them are not what a replay
    computes, so they are neither replayed, nor stacked, nor patched.

    Example:
        >>> class Sneaky(nn.Module):                 # another computation without hooks
        ...     def __init__(self):
        ...         super().__init__(); self.lin = nn.Linear(2, 2)
        ...     def forward(self, x):
        ...         return self.lin(x) if self._forward_pre_hooks else 2 * self.lin.weight.sum() + x
        >>> from resil.campaign.dataflow import CallTracker
        >>> net, x = nn.Sequential(Sneaky()), torch.randn(1, 2)
        >>> with torch.no_grad(), CallTracker(net) as t:
        ...     _ = net(x)
        >>> hooks, inside = mirrored(net, [x], t.calls)
        >>> hooks, inside == {id(net[0].lin)}
        ([], True)
    """
    found = hook_dependent(model, batches[0], calls)
    if found is None:
        return [], {id(m) for m in model.modules() if m is not model}
    if not found:
        return [], set()
    for x in {0: batches[0], len(batches) - 1: batches[-1]}.values():
        inputs = _first_inputs(model, x, found)
        if not all(k in inputs and paths_agree(m, *inputs[k]) for k, m in ((id(m), m) for m in found)):
            return [], {id(d) for m in found for d in m.modules() if d is not m}
    return found, set()


def _first_inputs(model: nn.Module, x: Any, modules: list[nn.Module]) -> dict[int, tuple[tuple[Any, ...], dict[str, Any]]]:
    """The arguments of each of ``modules``' first call in a forward over ``x``."""
    inputs: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def keep(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        inputs.setdefault(id(m), (args, kwargs))

    with pre_hooks(((m, keep) for m in modules), with_kwargs=True), torch.no_grad():
        model(x)
    return inputs


def _count_calls(model: nn.Module, x: Any, modules: dict[int, nn.Module]) -> Counter[int]:
    """Per submodule, its calls in a forward of ``model`` over ``x`` with no hooks of resil's own
    (counted by shadowing each module's ``forward``)."""
    seen: Counter[int] = Counter()

    def counting(m: nn.Module) -> Callable[..., Any]:
        compute, k = type(m).forward.__get__(m), id(m)

        def forward(*args: Any, **kwargs: Any) -> Any:
            seen[k] += 1
            return compute(*args, **kwargs)
        return forward

    for m in modules.values():
        m.forward = counting(m)  # shadows the class's forward
    try:
        with torch.no_grad():
            model(x)
    finally:
        for m in modules.values():
            del m.forward
    return seen


def paths_agree(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether ``module`` gives the same bits with and without a hook on its inputs ``args`` /
    ``kwargs`` perturbed (:func:`~resil.campaign.grouped.perturb`), and on them as given with one
    element of each floating-point parameter corrupted, in its top exponent bit (huge values, as a
    fault gives them) and, apart, in a middle mantissa bit."""
    def both() -> bool:
        with torch.no_grad():
            plain = module(*args, **kwargs)
            with hooked([module]):
                return _same(plain, module(*args, **kwargs))

    inputs = (args, kwargs)
    args, kwargs = tree_map(lambda v: perturb(v) if isinstance(v, torch.Tensor) and v.is_floating_point() else v, inputs)
    if not both():
        return False
    args, kwargs = inputs
    params = [p for p in module.parameters() if p.dtype in FLOAT_ENCODINGS and p.numel()]
    for position in (lambda bits: bits - 2, lambda bits: bits // 2):
        undo = [_flip(p, position(FLOAT_ENCODINGS[p.dtype].bits)) for p in params]
        try:
            agree = both()
        finally:
            for restore in undo:
                restore()
        if not agree:
            return False
    return True


def _flip(p: torch.Tensor, bit: int) -> Callable[[], None]:
    """Flip bit ``bit`` of ``p``'s middle element in place; return the undo."""
    raw = FLOAT_ENCODINGS[p.dtype].view(p.detach()).view(-1)
    i, old = p.numel() // 2, raw[p.numel() // 2].clone()
    raw[i] ^= 1 << bit

    def restore() -> None:
        raw[i] = old
    return restore


def _same(a: Any, b: Any) -> bool:
    """Bit-identical outputs (tensors, or structures of them)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return same_bits(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b, strict=True))
    return type(a) is type(b) and a == b
