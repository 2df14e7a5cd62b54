"""``resil.sites(model)``: walk a model and collect the sites every adapter reports."""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import torch
from torch import nn

from .encodings import FloatEncoding, encoding_of
from .hooks import forward_hooks
from .site import Site, SiteList, SiteOptions

_OUTPUTS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], torch.dtype]]" = weakref.WeakKeyDictionary()


def recorded_output(module: nn.Module) -> tuple[tuple[int, ...], torch.dtype] | None:
    """Per-sample shape and dtype of ``module``'s (first) output tensor, as recorded by the
    last ``resil.sites(model, example)`` call that ran it; None if never recorded."""
    return _OUTPUTS.get(module)


def sites(model: nn.Module, example: Any = None, *, pruned: str = "live") -> SiteList:
    """Every site of ``model``, in module order.

    Args:
        model: any ``torch.nn.Module``; each submodule is described by the adapter registered
            for its type.
        example: optional example input (a tensor, or a tuple of positional arguments). With
            it, one forward pass records the shape (per sample) and dtype of every computed
            site; resil remembers them for this model. Stateful modules (spiking neurons) are
            reset afterwards. The outputs of modules that forward pass never calls are left
            out (e.g. ``nn.MultiheadAttention`` uses its ``out_proj`` weight without calling it).
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
    ran = _record_outputs(model, example) if example is not None else None
    found: list[Site] = []
    claimed: list[str] = []
    for prefix, module in model.named_modules():
        if any(c == "" or prefix == c or prefix.startswith(c + ".") for c in claimed):  # "" = the model itself
            continue
        adapter = adapter_for(module)
        found.extend(_with_output_shape(s) for s in adapter.sites(prefix, module, options)
                     if ran is None or s.kind != "activation" or s.module in ran)  # an output never computed is no site
        if adapter.claims_children:
            claimed.append(prefix)
    return SiteList(found)


def reset(model: nn.Module) -> None:
    """Reset the state of every stateful module (e.g. spiking neurons' membranes) and the step
    count of every active fault hook in ``model``: call it before each input sequence.

    Unlike ``snntorch.utils.reset``, it resets the modules of ``model`` itself, deep copies
    included.
    """
    from resil.adapters import adapter_for

    from .injectors import reset_steps

    for module in model.modules():
        adapter_for(module).reset(module)
    reset_steps(model)


def _with_output_shape(site: Site) -> Site:
    """A computed site whose adapter left the shape open takes its module's recorded output."""
    out = _OUTPUTS.get(site.module)
    if not site.batched or site.shape is not None or out is None:
        return site
    shape, dtype = out
    enc = site.encoding
    if isinstance(enc, FloatEncoding):
        enc = encoding_of(torch.empty(0, dtype=dtype)) or enc
    return dataclasses.replace(site, shape=shape, encoding=enc)


def _record_outputs(model: nn.Module, example: Any) -> set[nn.Module]:
    """Record the output shape of every module the example's forward pass calls; return them."""
    seen: set[nn.Module] = set()
    called: set[nn.Module] = set()

    def record(mod: nn.Module, args: Any, out: Any) -> None:
        called.add(mod)
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        if mod not in seen and isinstance(first, torch.Tensor) and first.dim() > 0:
            seen.add(mod)
            _OUTPUTS[mod] = (tuple(first.shape[1:]), first.dtype)

    try:
        with forward_hooks((m, record) for m in model.modules()), torch.no_grad():
            model(*example) if isinstance(example, tuple) else model(example)
    finally:
        reset(model)
    return called
