"""Vulnerability value ranges (VVR): per input, the smallest deltas at a neuron that change top-1.

This module holds the machinery the semi-analytical vulnerability factors
(:mod:`resil.analysis.vulnerability`) are built on:

- :class:`LayerProbe`: one golden forward pass over the evaluation inputs records a layer's
  input, output and the golden top-1; afterwards any batch of modified layer outputs (one row
  per (input, perturbation)) is pushed through the rest of the network only (the stages after
  the layer of an ``nn.Sequential``; other models run in full with a hook that substitutes the
  layer's output). It counts the forward passes it spends, in units of one batched forward over
  the evaluation inputs (rows evaluated / number of inputs).
- :func:`threshold_search`: for many (unit, input) rows at once, the smallest-magnitude
  candidate delta on each side (negative, positive) that makes the output critical, by a probe of
  the largest candidate and a batched bisection over the sorted candidates. The candidates are the
  error values the faults can actually produce, so the range is exact for them (under the VVR's
  monotonicity assumption: a delta larger in magnitude than a critical one is critical too).

A fault is *critical* when the faulty top-1 differs from the golden top-1 or any output score
is not finite (``../shared/METHODS.md`` section 0).

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False))
    >>> _ = net[0].weight.data.copy_(torch.eye(2))
    >>> probe = LayerProbe(net, torch.tensor([[1.0, 0.0]]), "0")
    >>> rows = probe.output[[0, 0]].clone(); rows[0, 1] += 0.5; rows[1, 1] += 1.5
    >>> probe.critical(rows, torch.tensor([0, 0])).tolist()     # class 1 overtakes at delta > 1
    [False, True]
    >>> probe.passes
    2.0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..adapter_registry import is_temporal
from ..errors import FaultError

#: the layer types whose neurons the analysis covers (Brevitas QuantConv2d / QuantLinear subclass them)
LAYER_TYPES = (nn.Conv2d, nn.Linear)


def check_layer(model: nn.Module, name: str) -> nn.Module:
    """The Conv2d / Linear module ``name`` of ``model``, or a :class:`~resil.FaultError` naming the problem."""
    import difflib

    if is_temporal(model):
        raise FaultError(
            "vulnerability value ranges do not apply to spiking networks: a neuron's output is a train of 1-bit "
            "spikes over time steps and its membrane integrates the error, so one additive delta at one forward "
            "pass does not describe a fault (use fault injection campaigns for SNNs)"
        )
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        layers = [n for n, m in modules.items() if isinstance(m, LAYER_TYPES)]
        close = difflib.get_close_matches(name, layers, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise FaultError(f"unknown layer {name!r}{hint} (Conv2d / Linear layers of the model: {', '.join(layers)})")
    module = modules[name]
    if not isinstance(module, LAYER_TYPES):
        raise FaultError(
            f"layer {name!r} is a {type(module).__name__}; vulnerability factors cover Conv2d and Linear layers only"
        )
    if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"):
        raise FaultError(f"layer {name!r}: only Conv2d with groups=1 and zero padding is supported")
    return module


class LayerProbe:
    """Golden run of ``model`` on ``inputs`` around one layer, and suffix runs with modified layer outputs.

    Args:
        model: the network (eval mode); its top-1 on ``inputs`` is the golden reference.
        inputs: the evaluation batch ``[B, ...]``.
        layer: name of a Conv2d or Linear module of ``model``.
        chunk_rows: most rows pushed through the network in one call (memory bound only).

    Attributes:
        module: the layer.
        input: the layer's golden input ``[B, ...]``.
        output: the layer's golden output ``[B, C, ...]``.
        top1: golden top-1 per input ``[B]``.
        rows: rows evaluated so far; :attr:`passes` is ``rows / B``.
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, layer: str, *, chunk_rows: int = 4096) -> None:
        self.module = check_layer(model, layer)
        if not isinstance(inputs, torch.Tensor) or inputs.ndim < 2 or len(inputs) == 0:
            raise FaultError("inputs must be a non-empty batch tensor [B, ...]")
        self.model, self.name, self.x, self.chunk_rows = model, layer, inputs, int(chunk_rows)
        seen: dict[str, torch.Tensor] = {}

        def grab(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
            seen.setdefault("in", args[0].detach())
            seen.setdefault("out", out.detach())

        handle = self.module.register_forward_hook(grab)
        try:
            with torch.no_grad():
                logits = model(inputs)
        finally:
            handle.remove()
        if "in" not in seen:
            raise FaultError(f"layer {layer!r} is not called in the model's forward pass")
        self.input: torch.Tensor = seen["in"]
        self.output: torch.Tensor = seen["out"]
        if not isinstance(self.output, torch.Tensor) or self.output.shape[0] != len(inputs):
            raise FaultError(f"layer {layer!r} must return one tensor with the batch as its first dimension")
        self.logits = logits.detach()
        self.top1 = self.logits.argmax(1)
        self.batch = len(inputs)
        self.rows = 0
        self._suffix = self._sequential_suffix(model, self.module)

    @staticmethod
    def _sequential_suffix(model: nn.Module, module: nn.Module) -> list[nn.Module] | None:
        if type(model).forward is not nn.Sequential.forward:
            return None
        stages = list(model.children())
        for k, stage in enumerate(stages):
            if stage is module:
                return stages[k + 1 :]
        return None

    @property
    def passes(self) -> float:
        """Forward passes spent so far: rows evaluated / number of evaluation inputs."""
        return self.rows / self.batch

    def run(self, outputs: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The network's scores when the layer outputs ``outputs[r]`` for input ``images[r]``."""
        scores = []
        with torch.no_grad():
            for a in range(0, len(outputs), self.chunk_rows):
                out, img = outputs[a : a + self.chunk_rows], images[a : a + self.chunk_rows]
                if self._suffix is not None:
                    for stage in self._suffix:
                        out = stage(out)
                    scores.append(out)
                else:
                    h = self.module.register_forward_hook(lambda m, args, o, rep=out: rep)
                    try:
                        scores.append(self.model(self.x[img]))
                    finally:
                        h.remove()
        self.rows += len(outputs)
        return torch.cat(scores) if scores else self.logits[:0]

    def critical(self, outputs: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Per row: does the layer output ``outputs[r]`` on input ``images[r]`` give a critical outcome?"""
        scores = self.run(outputs, images)
        return (scores.argmax(1) != self.top1[images]) | ~torch.isfinite(scores).all(1)


@dataclass
class Thresholds:
    """Result of :func:`threshold_search`: per row, the smallest critical |delta| on each side.

    ``neg`` (<= 0 or -inf) and ``pos`` (>= 0 or +inf): a candidate ``e`` is non-critical iff
    ``neg < e < pos``; -inf / +inf mean no candidate on that side is critical.
    """

    neg: np.ndarray
    pos: np.ndarray


#: inject(rows, values, payload) -> modified layer outputs, one per row (rows index the searched rows)
Injector = Callable[[np.ndarray, np.ndarray, np.ndarray], torch.Tensor]


def threshold_search(
    probe: LayerProbe,
    candidates: list[np.ndarray],
    images: np.ndarray,
    inject: Injector,
    payload: list[np.ndarray] | None = None,
) -> Thresholds:
    """Find, for each row, the critical thresholds among its candidate deltas.

    Args:
        probe: the layer probe that evaluates modified outputs.
        candidates: per row, the finite non-zero delta values that may occur (any order,
            duplicates allowed).
        images: per row, the evaluation input it belongs to.
        inject: builds the modified layer outputs for (rows, delta values, payloads).
        payload: per row, an integer per candidate handed to ``inject`` with its value (e.g.
            which fault produced it); defaults to the candidate's position.

    Returns:
        The thresholds per row.
    """
    n_rows = len(candidates)
    neg = np.full(n_rows, -np.inf)
    pos = np.full(n_rows, np.inf)
    for side, out in ((1.0, pos), (-1.0, neg)):
        vals, pays, offs, counts = [], [], [0], []
        for r in range(n_rows):
            c = np.asarray(candidates[r], dtype=np.float64)
            p = np.arange(len(c)) if payload is None else np.asarray(payload[r])
            keep = (c * side > 0) & np.isfinite(c)
            u, first = np.unique(np.abs(c[keep]), return_index=True)  # sorted by magnitude
            vals.append(u * side)
            pays.append(p[keep][first])
            counts.append(len(u))
            offs.append(offs[-1] + len(u))
        flat_v = np.concatenate(vals) if vals else np.zeros(0)
        flat_p = np.concatenate(pays).astype(np.int64) if pays else np.zeros(0, np.int64)
        off, n = np.asarray(offs[:-1], dtype=np.int64), np.asarray(counts, dtype=np.int64)
        lo, hi = np.zeros(n_rows, np.int64), n.copy()  # answer in [lo, hi]; hi == n: none critical
        # probe the largest candidate: rows where even it is harmless are done
        active = np.nonzero(n > 0)[0]
        if len(active):
            idx = off[active] + n[active] - 1
            crit = _evaluate(probe, inject, active, flat_v[idx], flat_p[idx], images)
            hi[active[crit]] = n[active[crit]] - 1
            lo[active[~crit]] = n[active[~crit]]
        while True:
            active = np.nonzero(lo < hi)[0]
            if not len(active):
                break
            mid = (lo[active] + hi[active]) // 2
            idx = off[active] + mid
            crit = _evaluate(probe, inject, active, flat_v[idx], flat_p[idx], images)
            hi[active[crit]] = mid[crit]
            lo[active[~crit]] = mid[~crit] + 1
        found = lo < n
        out[found] = flat_v[off[found] + lo[found]]
    return Thresholds(neg, pos)


def _evaluate(probe: LayerProbe, inject: Injector, rows: np.ndarray, values: np.ndarray, payload: np.ndarray,
              images: np.ndarray) -> np.ndarray:
    outputs = inject(rows, values, payload)
    return probe.critical(outputs, torch.as_tensor(images[rows], device=outputs.device)).cpu().numpy()
