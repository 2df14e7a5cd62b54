"""Weights pruned with ``torch.nn.utils.prune``: the parameter ``<name>_orig`` times the buffer
``<name>_mask``, recomputed by a forward pre-hook into the attribute ``<name>``.

Two policies (:class:`resil.site.SiteOptions`): ``live`` (default) makes only the unpruned
elements fault sites, as in sparse storage; ``dense`` treats the pruned zeros as stored cells,
so a fault on them takes effect (the element is unmasked while the fault is in place). A pruned
cell stores +0.0 (code 0), whatever the sign of the weight it replaced.

Networks pruned with torch-pruning have their channels physically removed: they are dense,
smaller networks and need nothing from this module.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from resil.encodings import FLOAT_ENCODINGS, Encoding, from_unsigned, to_unsigned
from resil.injectors import int_view
from resil.plan import ElementPlan
from resil.site import Undo


def is_pruning_hook(hook: object) -> bool:
    """Whether a forward pre-hook is ``torch.nn.utils.prune``'s recomputation ``<name> = <name>_orig * <name>_mask``
    (it leaves the layer computing with its sites' values)."""
    return isinstance(hook, prune.BasePruningMethod)


def pruned_values(module: nn.Module, name: str) -> torch.Tensor:
    """What a pruned layer computes with for ``name``: ``<name>_orig * <name>_mask``, detached.

    Example:
        >>> lin = nn.Linear(2, 1, bias=False); _ = lin.weight.data.copy_(torch.tensor([[3.0, -1.0]]))
        >>> _ = prune.l1_unstructured(lin, "weight", amount=0.5)
        >>> pruned_values(lin, "weight").tolist()
        [[3.0, -0.0]]
    """
    orig, mask = pruned_tensors(module)[name]
    return orig.detach() * mask


def pruned_tensors(module: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{name: (orig, mask)}`` for every pruned tensor of ``module`` (its own, not its children's)."""
    params = dict(module.named_parameters(recurse=False))
    buffers = dict(module.named_buffers(recurse=False))
    return {
        n[: -len("_orig")]: (p, buffers[n[: -len("_orig")] + "_mask"])
        for n, p in params.items()
        if n.endswith("_orig") and n[: -len("_orig")] + "_mask" in buffers
    }


def live_elements(mask: torch.Tensor) -> np.ndarray:
    """Sorted flat indices of the unpruned elements."""
    return torch.flatten(mask).nonzero().reshape(-1).cpu().numpy().astype(np.int64)


def corrupt_pruned(module: nn.Module, name: str, encoding: Encoding, plan: ElementPlan) -> Undo:
    """Apply ``plan`` to the stored weight ``<name>_orig * <name>_mask`` of ``module`` (a pruned
    element stores 0).

    Writes the faulty values into ``orig`` and unmasks the faulted elements; the returned
    function restores both bit-exactly. The attribute ``<name>`` (recomputed by the pruning
    pre-hook before each forward) is recomputed after both, so it never holds stale values.
    """
    orig, mask = pruned_tensors(module)[name]
    if orig.dtype not in FLOAT_ENCODINGS or not orig.is_contiguous() or not mask.is_contiguous():
        raise TypeError("pruned tensors must be contiguous floating-point tensors")
    raw, m = int_view(orig, encoding).view(-1), mask.detach().view(-1)
    plan = plan.to(orig.device)
    keys = torch.from_numpy(plan.keys).to(orig.device)
    old_raw, old_mask = raw[keys], m[keys]
    zero = from_unsigned(encoding.encode(torch.zeros(1)), raw.dtype, encoding.bits).to(orig.device)
    stored = torch.where(old_mask != 0, old_raw, zero)
    codes = to_unsigned(stored, encoding.bits)
    new = codes ^ plan.xor if plan.xor is not None else plan.apply(codes, encoding)
    raw[keys] = from_unsigned(new, raw.dtype, encoding.bits)
    m[keys] = 1
    _recompute(module, name)

    def restore() -> None:
        raw[keys] = old_raw
        m[keys] = old_mask
        _recompute(module, name)

    return restore


def _recompute(module: nn.Module, name: str) -> None:
    """Set ``module.<name>`` to ``<name>_orig * <name>_mask``, as the pruning pre-hook does before a forward."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == name:
            setattr(module, name, hook.apply_mask(module))
            return
