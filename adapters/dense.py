"""The dense adapter: parameters, floating-point buffers and leaf-module outputs of any module."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from resil.encodings import FLOAT_ENCODINGS, encoding_of
from resil.injectors import corrupt_stored, hook_output
from resil.site import Adapter, Site, SiteOptions, SitePlan, Undo

from .pruning import corrupt_pruned, live_elements, pruned_tensors


def parameter_kind(name: str) -> str:
    """``weight``, ``bias`` or ``parameter`` from a parameter's attribute name."""
    if "bias" in name:
        return "bias"
    return "weight" if "weight" in name else "parameter"


class DenseAdapter(Adapter):
    """Sites ``<module>.<param>`` (stored), ``<module>.<buffer>`` (float buffers, e.g. BatchNorm
    running statistics) and ``<module>:out`` (the output of every leaf module)."""

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
        if next(module.children(), None) is None:
            enc = FLOAT_ENCODINGS[torch.get_default_dtype()]
            yield Site(prefix + ":out", "activation", None, enc, self, module, "out", batched=True)

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
            return corrupt_pruned(*pruned[site.attr], site.encoding, plan.stored())
        return corrupt_stored(getattr(site.module, site.attr), site.encoding, plan.stored(), site.shape)
