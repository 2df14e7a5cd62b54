"""A toy third-party module family and its resil adapter, in one file (see docs/adapters.md).

``ScaledLinear`` stores its weight as int8 codes ``q`` times one float ``scale`` and computes
``linear(x, q * scale, bias)``. Its adapter lists the weight as an 8-bit integer site whose
faults act on ``q``, and leaves the bias, the scale and the output to resil's dense adapter.
It overrides only what differs from plain torch modules: how the layer computes with a
transformed weight (the family's own hook point, ``transforms``), and that it is a linear
layer whose output channels can be recomputed alone (for the fast campaign path).
``register`` is the registering function of the ``resil.adapters`` entry point.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from resil import Adapter, IntEncoding, Site
from resil.adapters import DenseAdapter, register_adapter
from resil.channel_layers import ChannelLayer, LinearLayer
from resil.injectors import corrupt_stored
from resil.site import SiteOptions, SitePlan, Undo, ValueTransform


class ScaledLinear(nn.Module):
    """``y = x @ (q * scale).T + bias`` with int8 codes ``q``."""

    def __init__(self, in_features: int, out_features: int, scale: float = 1 / 64) -> None:
        super().__init__()
        self.register_buffer("q", torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8))
        self.register_buffer("scale", torch.tensor(scale))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.transforms: list[tuple[ValueTransform, IntEncoding]] = []

    @property
    def weight(self) -> torch.Tensor:
        return self.q.to(torch.float32) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        for fn, encoding in self.transforms:
            w = fn(w, encoding)
        return F.linear(x, w, self.bias)


class ScaledLinearAdapter(Adapter):
    """Sites ``<prefix>.weight`` (int8 codes ``q`` with the layer's scale), and the dense sites."""

    name = "toy-scaled-linear"

    def __init__(self) -> None:
        self._dense = DenseAdapter()

    def sites(self, prefix: str, module: nn.Module, options: SiteOptions) -> Iterable[Site]:
        dot = prefix + "." if prefix else ""
        yield Site(dot + "weight", "weight", tuple(module.q.shape), self._encoding(module), self, module, "weight")
        yield from self._dense.sites(prefix, module, options)

    def codes(self, site: Site) -> torch.Tensor:
        return self._encoding(site.module).from_int(site.module.q.to(torch.int64))

    def install(self, site: Site, plan: SitePlan) -> Undo:
        assert site.shape is not None
        return corrupt_stored(site.module.q, site.encoding, plan.stored(), site.shape)

    def transform(self, site: Site, fn: ValueTransform) -> Undo:
        entry = (fn, self._encoding(site.module))
        site.module.transforms.append(entry)
        return lambda: site.module.transforms.remove(entry)

    def channel_layer(self, module: nn.Module) -> ChannelLayer | None:
        return None if module._forward_hooks or module._forward_pre_hooks else LinearLayer(module)

    @staticmethod
    def _encoding(module: nn.Module) -> IntEncoding:
        return IntEncoding(8, True, float(module.scale))


def register() -> None:
    """Register the adapter for ``ScaledLinear`` (the entry point of this package)."""
    register_adapter(ScaledLinear, ScaledLinearAdapter())
