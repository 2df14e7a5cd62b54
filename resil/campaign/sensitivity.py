"""Gradient-based sensitivity of every fault location, for importance sampling (ISimDL style).

The score of a location (site, element, bit) is the larger of two saturated terms:

- a first-order estimate of how much the fault changes the loss, ``tanh(|dL/dv| * |v' - v|)``,
  where ``v`` is the stored (or computed) value, ``v'`` its value with the bit flipped, and
  ``L`` the mean cross-entropy of the outputs against the golden top-1 over the campaign inputs
  (for activations the product is averaged over the inputs);
- a magnitude term, ``tanh(|v' - v| / (1000 * mean |v|))``, for flips that blow a value up by
  orders of magnitude: the gradient misses those where it is zero (a unit that ReLU or max
  pooling silences at the golden point but that a huge value revives).

Flips to Inf/NaN score 1. Sites without a gradient (neuron
state, spikes, buffers, snnTorch parameters) score 1 everywhere: importance sampling then
treats them as uniformly as the mixture allows.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..encodings import Encoding
from ..hooks import Hook, forward_hooks
from ..site import Site
from .space import FaultSpace


def flip_deltas(values: torch.Tensor, codes: torch.Tensor, encoding: Encoding, bits: np.ndarray) -> torch.Tensor:
    """``|decode(code ^ 2^b) - value|`` for every element (rows) and bit of ``bits`` (columns); Inf for non-finite results."""
    out = torch.empty(len(codes), len(bits), dtype=torch.float64, device=codes.device)
    for j, b in enumerate(bits):
        flipped = encoding.decode(codes ^ (1 << int(b))).to(torch.float64)
        d = (flipped - values.to(torch.float64)).abs()
        out[:, j] = torch.where(torch.isfinite(d), d, torch.full_like(d, float("inf")))
    return out


def sensitivity_scores(model: nn.Module, inputs: torch.Tensor, golden_top1: torch.Tensor, space: FaultSpace) -> np.ndarray:
    """One score in [0, 1] per location of ``space`` (see the module docstring)."""
    stored = {s.name: s.adapter.trainable(s) for s in space.sites if not s.batched}
    activations, hooks = retained_outputs(s for s in space.sites if s.batched and s.kind == "activation")
    params = [t for t in stored.values() if t is not None]
    for p in params:
        p.grad = None
    with forward_hooks(hooks), torch.enable_grad():
        F.cross_entropy(model(inputs), golden_top1).backward()
    scores = np.ones(space.total)
    for i, site in enumerate(space.sites):
        start, stop = space.site_range(i)
        elements, bits = torch.from_numpy(space.elements[i]), space.bits[i]
        if bits[0] < 0:  # whole-word fault models: score by the gradient alone
            bits = np.array([site.bits - 1])
        param, kept = stored.get(site.name), activations.get(site.name)
        if param is not None and param.grad is not None:
            g = param.grad.detach().reshape(-1)[elements].abs().to(torch.float64)
            codes = site.codes()[elements]
            values = site.encoding.decode(codes)
            d = flip_deltas(values, codes, site.encoding, bits)
            s = torch.maximum(torch.tanh(g[:, None] * d), _magnitude(d, values))
        elif kept is not None and kept.grad is not None:
            a = kept
            values, grads = a.detach().reshape(len(a), -1)[:, elements], kept.grad.detach().reshape(len(a), -1)[:, elements].abs()
            codes = site.encoding.encode(values)
            d = torch.stack([flip_deltas(values[k], codes[k], site.encoding, bits) for k in range(len(values))])
            s = torch.maximum(torch.tanh((grads.to(torch.float64)[:, :, None] * d).mean(0)), _magnitude(d, values).mean(0))
        else:
            continue
        s = torch.where(torch.isnan(s), torch.ones_like(s), s)
        s = s.cpu()
        per_bit = len(space.bits[i]) == s.shape[1]
        scores[start:stop] = s.reshape(-1).numpy()[: stop - start] if per_bit else np.repeat(s.numpy()[:, 0], len(space.bits[i]))
    for p in params:
        p.grad = None
    return scores


def retained_outputs(sites: Iterable[Site]) -> tuple[dict[str, torch.Tensor], list[tuple[nn.Module, Hook]]]:
    """Forward hooks (for :func:`resil.hooks.forward_hooks`) that keep, under each site's name,
    the first output tensor of its module with its gradient retained; and the dict they fill."""
    kept: dict[str, torch.Tensor] = {}

    def keeper(name: str) -> Hook:
        def keep(mod: nn.Module, args: object, out: object) -> None:
            if isinstance(out, torch.Tensor) and out.requires_grad and name not in kept:
                out.retain_grad()
                kept[name] = out
        return keep

    return kept, [(s.module, keeper(s.name)) for s in sites]


def _magnitude(deltas: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``tanh(delta / (1000 * mean |v|))``: 1 for flips that change a value by orders of magnitude."""
    scale = values.detach().abs().to(torch.float64).mean().clamp_min(1e-30)
    return torch.tanh(deltas / (1000 * scale))

