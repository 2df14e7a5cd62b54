"""The dense adapter: parameters, floating-point buffers and module outputs of any module.

Output sites: ``<module>:out`` for every leaf module and for every module of a type in
:data:`OUTPUT_MODULES` (non-leaf modules whose output is not their last child's, such as
``nn.MultiheadAttention``; containers and user model classes have none, their output is already
a child's). When the example pass of ``resil.sites(model, x)`` shows a structured output (tuple,
list, dict, nested), each floating tensor in it is a site of its own, named by its path:
``lstm:out[0]`` (the output sequence), ``lstm:out[1][0]`` (h_n), ``lstm:out[1][1]`` (c_n),
``attn:out[1]`` (attention weights), ``m:out[logits]`` (a dict entry). Its shape is per sample,
without the tensor's own batch dimension (found by :class:`resil.discovery.ExampleOutputs`); a
tensor without one is a whole-tensor site (``batch=`` faults are refused). Without an example, or
for a plain tensor output, the site is ``<module>:out``.

Example:
    >>> import torch, resil
    >>> attn = torch.nn.MultiheadAttention(4, 2, batch_first=True)
    >>> q = torch.zeros(3, 5, 4)
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__(); self.attn = attn
    ...     def forward(self, x):
    ...         return self.attn(x, x, x)[0]
    >>> [(s.name, s.shape) for s in resil.sites(Net(), q) if s.batched]
    [('attn:out[0]', (5, 4)), ('attn:out[1]', (5, 5))]
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from resil.encodings import FLOAT_ENCODINGS, encoding_of
from resil.injectors import corrupt_stored, hook_output
from resil.site import Adapter, Site, SiteOptions, SitePlan, Undo, ValueTransform, swap_while_running

from .pruning import corrupt_pruned, is_pruning_hook, live_elements, pruned_tensors, pruned_values

#: non-leaf module types whose output is a site (their forward computes it; it is not a child's output)
OUTPUT_MODULES: set[type[nn.Module]] = {nn.MultiheadAttention}


def register_output_module(*types: type[nn.Module]) -> None:
    """Declare non-leaf module types whose output is a site of its own (leaf modules' always are).

    Example:
        >>> from torch import nn
        >>> register_output_module(nn.TransformerEncoderLayer); nn.TransformerEncoderLayer in OUTPUT_MODULES
        True
        >>> OUTPUT_MODULES.discard(nn.TransformerEncoderLayer)
    """
    OUTPUT_MODULES.update(types)


def parameter_kind(name: str) -> str:
    """``weight``, ``bias`` or ``parameter`` from a parameter's attribute name."""
    if "bias" in name:
        return "bias"
    return "weight" if "weight" in name else "parameter"


class DenseAdapter(Adapter):
    """Sites ``<module>.<param>`` (stored), ``<module>.<buffer>`` (float buffers, e.g. BatchNorm
    running statistics) and ``<module>:out`` (the output of every leaf module and of the types in
    :data:`OUTPUT_MODULES`; one site per tensor of a structured output, see the module docstring)."""

    name = "dense"

    def sites(self, prefix: str, module: nn.Module, options: SiteOptions) -> Iterable[Site]:
        dot = prefix + "." if prefix else ""
        pruned = pruned_tensors(module)
        masks = {n + "_mask" for n in pruned}
        for pname, p in module.named_parameters(recurse=False):
            enc = encoding_of(p)
            if enc is None:
                continue
            name = pname[: -len("_orig")] if pname.endswith("_orig") and pname[: -len("_orig")] in pruned else pname
            live = live_elements(pruned[name][1]) if name in pruned and options.pruned == "live" else None
            yield Site(dot + name, parameter_kind(name), tuple(p.shape), enc, self, module, name, live=live)
        for bname, b in module.named_buffers(recurse=False):
            if b.dtype.is_floating_point and bname not in module._non_persistent_buffers_set and bname not in masks:
                yield Site(dot + bname, "buffer", tuple(b.shape), FLOAT_ENCODINGS[b.dtype], self, module, bname)
        if next(module.children(), None) is None or isinstance(module, tuple(OUTPUT_MODULES)):
            yield from self.output_sites(prefix, module, options)

    def output_sites(self, prefix: str, module: nn.Module, options: SiteOptions) -> Iterable[Site]:
        """``<prefix>:out``, or one site per floating tensor of a structured output."""
        tensors = options.output_tensors(module)
        if tensors is None:  # a tensor (its shape is filled in from the example pass), or unknown
            yield Site(prefix + ":out", "activation", None, FLOAT_ENCODINGS[torch.get_default_dtype()], self, module, "out", batched=True)
            return
        for t in tensors:
            enc = FLOAT_ENCODINGS.get(t.dtype)
            if enc is not None:
                yield Site(prefix + ":out" + t.suffix, "activation", t.per_sample, enc, self, module, "out", batched=True,
                           path=t.path, batch_dim=t.batch_dim)

    def codes(self, site: Site) -> torch.Tensor:
        pruned = pruned_tensors(site.module)
        if site.attr in pruned:
            orig, mask = pruned[site.attr]
            return site.encoding.encode(torch.where(mask != 0, orig.detach(), torch.zeros_like(orig)))
        return site.encoding.encode(getattr(site.module, site.attr).detach())

    def install(self, site: Site, plan: SitePlan) -> Undo:
        if site.batched:
            return hook_output(site, plan)
        assert site.shape is not None
        pruned = pruned_tensors(site.module)
        if site.attr in pruned:
            return corrupt_pruned(site.module, site.attr, site.encoding, plan.stored())
        return corrupt_stored(getattr(site.module, site.attr), site.encoding, plan.stored(), site.shape)

    def values(self, site: Site) -> torch.Tensor:
        """A pruned weight's ``weight_orig * weight_mask``; any other stored tensor as it is."""
        if site.attr in pruned_tensors(site.module):
            return pruned_values(site.module, site.attr)
        stored = getattr(site.module, site.attr, None)
        if site.batched or not isinstance(stored, torch.Tensor):
            return super().values(site)
        return stored.detach()

    def trainable(self, site: Site) -> nn.Parameter | None:
        """A pruned weight's ``weight_orig`` (the mask keeps pruned cells at zero); else the parameter itself."""
        pruned = pruned_tensors(site.module)
        if site.batched or site.attr not in pruned:
            return super().trainable(site)
        orig = pruned[site.attr][0]
        return orig if isinstance(orig, nn.Parameter) and orig.requires_grad and tuple(orig.shape) == site.shape else None

    def transform(self, site: Site, fn: ValueTransform) -> Undo:
        """A pruned weight: the recomputed ``weight_orig * weight_mask`` is replaced by ``fn(it)`` after
        the pruning pre-hook, so gradients reach ``weight_orig`` through the mask."""
        if site.batched or site.attr not in pruned_tensors(site.module):
            return super().transform(site, fn)
        return swap_while_running(site.module, site.module.__dict__, site.attr, lambda w: fn(w, site.encoding))

    def faults_act_on_output(self, site: Site) -> bool:
        return site.batched and site.kind == "activation"

    def recomputes_from_sites(self, pre_hook: object) -> bool:
        return is_pruning_hook(pre_hook)
