"""The dense adapter: parameters, floating-point buffers and leaf-module outputs of any module."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from resil.encodings import FLOAT_ENCODINGS, encoding_of
from resil.injectors import corrupt_stored, hook_output
from resil.site import Adapter, Site, SitePlan, Undo


def parameter_kind(name: str) -> str:
    """``weight``, ``bias`` or ``parameter`` from a parameter's attribute name."""
    if "bias" in name:
        return "bias"
    return "weight" if "weight" in name else "parameter"


class DenseAdapter(Adapter):
    """Sites ``<module>.<param>`` (stored), ``<module>.<buffer>`` (float buffers, e.g. BatchNorm
    running statistics) and ``<module>:out`` (the output of every leaf module)."""

    name = "dense"

    def sites(self, prefix: str, module: nn.Module) -> Iterable[Site]:
        dot = prefix + "." if prefix else ""
        for pname, p in module.named_parameters(recurse=False):
            enc = encoding_of(p)
            if enc is not None:
                yield Site(dot + pname, parameter_kind(pname), tuple(p.shape), enc, self, module, pname)
        for bname, b in module.named_buffers(recurse=False):
            if b.dtype.is_floating_point and bname not in module._non_persistent_buffers_set:
                yield Site(dot + bname, "buffer", tuple(b.shape), FLOAT_ENCODINGS[b.dtype], self, module, bname)
        if next(module.children(), None) is None:
            enc = FLOAT_ENCODINGS[torch.get_default_dtype()]
            yield Site(prefix + ":out", "activation", None, enc, self, module, "out", batched=True)

    def install(self, site: Site, plan: SitePlan) -> Undo:
        if site.batched:
            return hook_output(site, plan)
        assert site.shape is not None
        return corrupt_stored(getattr(site.module, site.attr), site.encoding, plan.stored(), site.shape)
