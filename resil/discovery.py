"""``resil.sites(model)``: walk a model and collect the sites every adapter reports."""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import torch
from torch import nn

from .encodings import encoding_of
from .site import Site, SiteList, SiteOptions

_OUTPUT_SHAPES: "weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[tuple[int, ...], torch.dtype]]]" = weakref.WeakKeyDictionary()


def sites(model: nn.Module, example: Any = None, *, pruned: str = "live") -> SiteList:
    """Every site of ``model``, in module order.

    Args:
        model: any ``torch.nn.Module``; each submodule is described by the adapter registered
            for its type.
        example: optional example input (a tensor, or a tuple of positional arguments). With
            it, one forward pass records the shape (per sample) and dtype of every computed
            site; resil remembers them for this model.
        pruned: policy for weights pruned with ``torch.nn.utils.prune``: ``"live"`` (only the
            unpruned weights are fault sites, as in sparse storage) or ``"dense"`` (the pruned
            zeros are stored cells too).

    Example:
        >>> import torch, resil
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
        >>> s = resil.sites(net, torch.zeros(2, 4))
        >>> [(x.name, x.kind, x.shape) for x in s]
        [('0.weight', 'weight', (3, 4)), ('0.bias', 'bias', (3,)), ('0:out', 'activation', (3,)), ('1:out', 'activation', (3,))]
    """
    from resil.adapters import adapter_for

    options = SiteOptions(pruned=pruned)
    found: list[Site] = []
    claimed: list[str] = []
    for prefix, module in model.named_modules():
        if any(prefix == c or prefix.startswith(c + ".") for c in claimed):
            continue
        adapter = adapter_for(module)
        found.extend(adapter.sites(prefix, module, options))
        if adapter.claims_children:
            claimed.append(prefix)
    if example is not None:
        _record_output_shapes(model, [s for s in found if s.batched], example)
    shapes = _OUTPUT_SHAPES.get(model, {})
    return SiteList(_with_recorded_shape(s, shapes) for s in found)


def _with_recorded_shape(site: Site, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> Site:
    if not site.batched or site.name not in shapes:
        return site
    shape, dtype = shapes[site.name]
    enc = encoding_of(torch.empty(0, dtype=dtype)) or site.encoding
    return dataclasses.replace(site, shape=shape, encoding=enc)


def _record_output_shapes(model: nn.Module, computed: list[Site], example: Any) -> None:
    seen: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    handles = []
    for s in computed:
        def record(mod: nn.Module, args: Any, out: Any, name: str = s.name) -> None:
            if isinstance(out, torch.Tensor) and out.dim() > 0:
                seen.setdefault(name, (tuple(out.shape[1:]), out.dtype))
        handles.append(s.module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(*example) if isinstance(example, tuple) else model(example)
    finally:
        for h in handles:
            h.remove()
    _OUTPUT_SHAPES[model] = seen
