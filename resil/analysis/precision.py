"""Importance-sampling precision (ISimDL, IJCNN 2023): find critical faults with few simulations.

A fault is drawn in three steps (ISimDL's sampling distribution q, one fault per trial):

1. a layer, uniformly among the leaf layers that own a selected site;
2. an element of that layer: with probability ``tau`` uniformly, otherwise with probability
   proportional to its sensitivity ``|S_i|``;
3. a bit position, by one of :data:`BIT_WEIGHTINGS`: ``uniform``; ``linear`` (proportional to
   b + 1); ``exponential`` (proportional to 2^b); ``gradient`` (proportional to
   ``|g * dv/dbit_b|``, with ``v`` the float32 value written as a differentiable function of its
   32 bits, ``v = (1 - 2s) 2^(E - 127) (1 + sum_i m_i 2^(i - 23))``; an element whose weights
   are all zero falls back to ``exponential``). With ``tau > 0`` a share ``tau`` of the bit
   choice is uniform as well, so that q > 0 everywhere and re-weighted estimates are unbiased
   (ISimDL mixes ``tau`` into the element choice only).

Sensitivities (:func:`weight_sensitivity`, :func:`activation_conductance`): a weight's S is
ISimDL's ``d(sum of all logits over the batch)/dw``; a neuron's S is its layer conductance
(integrated gradients routed through the neuron, as Captum's ``LayerConductance``) computed here
with torch autograd as a right Riemann sum over ``steps`` points of the straight path from a zero
input baseline to each input, for the logit of the label, averaged over the batch. These are the
per-element counterparts of :func:`resil.campaign.sensitivity.sensitivity_scores` (which scores
whole (element, bit) locations for campaigns).

A fault is *critical* by a criterion of :mod:`resil.campaign.criteria`: by default
``AccuracyDrop(theta)``, when it drops the accuracy over the evaluation set by at least ``theta``
(10 points) against the golden run; with ``Top1()``, when it changes some input's top-1.
Non-finite outputs count as wrong and changed. Precision@k is the share of the first k sampled faults that are critical.

Example:
    >>> from resil.analysis.precision import bit_distribution, precision_at_k
    >>> bit_distribution("linear", 4).tolist()           # (b + 1) / 10
    [0.1, 0.2, 0.3, 0.4]
    >>> precision_at_k([True, False, True, True], k=2)
    0.5
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..campaign.criteria import AccuracyDrop, Criterion
from ..campaign.evaluator import Evaluator
from ..campaign.samplers import rng_for
from ..campaign.sensitivity import retained_outputs
from ..campaign.space import FaultSpace, layer_of
from ..campaign.spec import FaultSpec, SiteSpec
from ..discovery import sites as list_sites
from ..errors import FaultError
from ..faults import FaultSet
from ..hooks import forward_hooks
from ..site import Site, SiteList
from ..statistics import Estimate, importance_estimate, importance_weights, wilson_interval

__all__ = [
    "BIT_WEIGHTINGS",
    "FaultEvaluator",
    "Outcome",
    "PrecisionConfig",
    "Proposal",
    "Search",
    "activation_conductance",
    "bit_distribution",
    "float32_bit_derivatives",
    "float32_from_bits",
    "gradient_bit_distribution",
    "isimdl_proposal",
    "precision_at_k",
    "precision_study",
    "sample_until_critical",
    "select_space",
    "uniform_proposal",
    "weight_sensitivity",
]

BitWeighting = Literal["uniform", "linear", "exponential", "gradient"]
BIT_WEIGHTINGS: tuple[str, ...] = ("uniform", "linear", "exponential", "gradient")


# --------------------------------------------------------------------------- bit weightings


def bit_distribution(weighting: str, bits: int = 32) -> np.ndarray:
    """The data-independent bit distributions: ``uniform``, ``linear`` (∝ b+1), ``exponential`` (∝ 2^b).

    Args:
        weighting: one of ``uniform``, ``linear``, ``exponential``.
        bits: the word width (bit 0 = least significant).

    Returns:
        Probabilities of bits 0 .. bits-1 (float64, summing to 1).

    Example:
        >>> bit_distribution("exponential", 3).round(4).tolist()   # 1, 2, 4 over 7
        [0.1429, 0.2857, 0.5714]
    """
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or not 1 <= bits <= 64:
        raise FaultError(f"bits must be an integer in 1..64, got {bits!r}")
    b = np.arange(bits, dtype=np.float64)
    if weighting == "uniform":
        w = np.ones(bits)
    elif weighting == "linear":
        w = b + 1
    elif weighting == "exponential":
        w = np.exp2(b)
    elif weighting == "gradient":
        raise FaultError("the gradient bit weighting depends on the values: use gradient_bit_distribution(values, sensitivity)")
    else:
        raise FaultError(f"unknown bit weighting {weighting!r}; choose one of {list(BIT_WEIGHTINGS)}")
    return w / w.sum()


def float32_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """The float32 value ``(1 - 2s) 2^(E - 127) (1 + sum_i m_i 2^(i - 23))`` as a differentiable
    function of its bits (last axis: 32 bits, bit 0 = mantissa LSB, 23-30 exponent, 31 sign).

    Exact for normal numbers; E = 0 (zero, subnormals) and E = 255 (Inf, NaN) follow the same
    smooth formula, as in ISimDL. Computed in the dtype of ``bits`` (use float64).

    Example:
        >>> import torch
        >>> bits = torch.zeros(32, dtype=torch.float64); bits[23:30] = 1   # E = 127
        >>> float32_from_bits(bits).item()
        1.0
    """
    if bits.shape[-1] != 32:
        raise FaultError(f"bits must have 32 entries on the last axis, got shape {tuple(bits.shape)}")
    i = torch.arange(32, dtype=bits.dtype, device=bits.device)
    mantissa = 1 + (bits[..., :23] * torch.exp2(i[:23] - 23)).sum(-1)
    exponent = (bits[..., 23:31] * torch.exp2(i[:8])).sum(-1)
    return (1 - 2 * bits[..., 31]) * torch.exp2(exponent - 127) * mantissa


def float32_bit_derivatives(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """``dv/dbit_b`` of each float32 value for every bit b (autograd through :func:`float32_from_bits`).

    Args:
        values: float32 values, any shape.

    Returns:
        float64 array of shape ``values.shape + (32,)``.

    Example:
        >>> d = float32_bit_derivatives(np.float32([1.5]))[0]
        >>> float(d[22]), float(d[31])           # 2^-1 for the mantissa MSB, -2|v| for the sign
        (0.5, -3.0)
    """
    if isinstance(values, torch.Tensor):
        v = values.detach().to(torch.float32).cpu()
    else:
        v = torch.as_tensor(np.asarray(values, dtype=np.float32))
    raw = v.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    bits = ((raw[..., None] >> torch.arange(32)) & 1).to(torch.float64).requires_grad_(True)
    with torch.enable_grad():
        float32_from_bits(bits).sum().backward()
    assert bits.grad is not None
    return bits.grad.numpy()


def gradient_bit_distribution(values: torch.Tensor | np.ndarray, sensitivity: torch.Tensor | np.ndarray) -> np.ndarray:
    """ISimDL's gradient bit weighting: P(b | element) ∝ ``|g * dv/dbit_b|``; all zero → exponential.

    Args:
        values: float32 values of the elements, shape ``(n,)``, or ``(m, n)`` for ``m`` observations
            of each element (activations over a batch: the ``|dv/dbit_b|`` are averaged over them).
        sensitivity: g, one per element, shape ``(n,)``.

    Returns:
        ``(n, 32)`` probabilities, each row summing to 1.

    Example:
        >>> p = gradient_bit_distribution(np.float32([1.0, 0.5]), np.array([1.0, 0.0]))
        >>> round(float(p[0, 30]), 4), bool(np.allclose(p[1], bit_distribution("exponential")))
        (0.4936, True)
    """
    d = np.abs(float32_bit_derivatives(values))
    if d.ndim == 3:
        d = d.mean(0)
    if d.ndim != 2:
        raise FaultError(f"values must have shape (n,) or (m, n), got {np.shape(values)}")
    g = np.abs(np.asarray(sensitivity, dtype=np.float64).reshape(-1))
    if len(g) != len(d):
        raise FaultError(f"sensitivity has {len(g)} entries for {len(d)} elements")
    with np.errstate(over="ignore", invalid="ignore"):
        w = g[:, None] * d
    w = np.where(np.isfinite(w), w, 0.0)
    total = w.sum(1, keepdims=True)
    exponential = bit_distribution("exponential", 32)
    return np.where(total > 0, w / np.where(total > 0, total, 1.0), exponential[None, :])


# --------------------------------------------------------------------------- sensitivities


def _check_batch(model: nn.Module, inputs: torch.Tensor) -> None:
    if not isinstance(model, nn.Module):
        raise FaultError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1 or len(inputs) == 0:
        raise FaultError("inputs must be a non-empty batch tensor")


def weight_sensitivity(model: nn.Module, inputs: torch.Tensor, sites: Iterable[Site]) -> dict[str, np.ndarray]:
    """ISimDL's weight sensitivity: S[w] = d(sum of all logits over the batch)/dw, per stored site.

    Sites without a gradient (buffers, non-trainable tensors) get S = 1 everywhere.

    Returns:
        site name -> flat float64 array of S (one per element of the tensor).

    Example:
        >>> import torch, resil
        >>> lin = torch.nn.Linear(2, 3)
        >>> s = weight_sensitivity(lin, torch.tensor([[1.0, 2.0], [3.0, 4.0]]), resil.sites(lin))
        >>> s["weight"].tolist()                              # every row: the summed inputs
        [4.0, 6.0, 4.0, 6.0, 4.0, 6.0]
    """
    _check_batch(model, inputs)
    sites = [s for s in sites if not s.batched]
    tensors = {s.name: s.adapter.trainable(s) for s in sites}
    saved = {}
    for t in tensors.values():
        if t is not None:
            saved[id(t)] = t.grad
            t.grad = None
    try:
        with torch.enable_grad():
            model(inputs).sum().backward()
        out = {}
        for s in sites:
            t = tensors[s.name]
            g = t.grad if t is not None else None
            out[s.name] = np.ones(s.numel or 0) if g is None else g.detach().reshape(-1).to(torch.float64).cpu().numpy()
    finally:
        for t in tensors.values():
            if t is not None:
                t.grad = saved.get(id(t))
    model.zero_grad(set_to_none=True)
    return out


def activation_conductance(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, sites: Iterable[Site], steps: int = 16
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Layer conductance of every neuron of the activation sites, and their golden values.

    Conductance of neuron a_i for input x (zero baseline, right Riemann sum with ``steps``
    points ``x_k = (k / steps) x``): ``C_i(x) = sum_k (a_i(x_k) - a_i(x_{k-1})) dF/da_i(x_k)``
    with F the logit of ``targets``; averaged over the batch (so the sum over a layer's neurons
    approximates the integrated-gradients attribution of F, the completeness property).

    Returns:
        ``(conductance, values)``: site name -> flat float64 conductance per neuron; site name
        -> ``(batch, neurons)`` float32 golden activation values.

    Example:
        >>> import torch, resil
        >>> lin = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False))
        >>> _ = lin[0].weight.data.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        >>> x = torch.tensor([[1.0, 1.0]])
        >>> c, v = activation_conductance(lin, x, torch.tensor([1]), resil.sites(lin, x))
        >>> c["0:out"].tolist(), v["0:out"].tolist()      # a linear output: dF/da = one-hot
        ([0.0, 7.0], [[3.0, 7.0]])
    """
    _check_batch(model, inputs)
    if not isinstance(steps, int) or steps < 1:
        raise FaultError(f"steps must be an integer >= 1, got {steps!r}")
    targets = torch.as_tensor(targets).reshape(-1).to(inputs.device)
    if len(targets) != len(inputs):
        raise FaultError(f"targets has {len(targets)} entries for {len(inputs)} inputs")
    sites = [s for s in sites if s.batched]
    if not sites:
        return {}, {}
    b = len(inputs)
    alphas = torch.arange(steps + 1, dtype=inputs.dtype, device=inputs.device) / steps
    path = (alphas.view(-1, *[1] * inputs.dim()) * inputs.unsqueeze(0)).reshape(-1, *inputs.shape[1:])
    kept, hooks = retained_outputs(sites)
    with forward_hooks(hooks), torch.enable_grad():
        x = path.detach().requires_grad_(True)  # so activations carry a graph even for input-only layers
        logits = model(x)
        logits.gather(1, targets.repeat(steps + 1).view(-1, 1)).sum().backward()
    model.zero_grad(set_to_none=True)
    cond, values = {}, {}
    for s in sites:
        a = kept.get(s.name)
        if a is None or a.grad is None:
            n = s.numel or 0
            cond[s.name], values[s.name] = np.ones(n), np.zeros((b, n), dtype=np.float32)
            continue
        act = a.detach().reshape(steps + 1, b, -1).to(torch.float64)
        grad = a.grad.detach().reshape(steps + 1, b, -1).to(torch.float64)
        c = ((act[1:] - act[:-1]) * grad[1:]).sum(0).mean(0)
        cond[s.name] = c.cpu().numpy()
        values[s.name] = act[-1].to(torch.float32).cpu().numpy()
    return cond, values


# --------------------------------------------------------------------------- proposals


def select_space(site_list: SiteList, kind: str = "weight", include: Sequence[str] = ("*",), bits: Sequence[int] = ()) -> FaultSpace:
    """The fault space of single bit flips on the weights (``kind="weight"``) or activations of a model.

    Example:
        >>> import torch, resil
        >>> lin = torch.nn.Linear(2, 3)
        >>> select_space(resil.sites(lin)).total             # 6 weights x 32 bits
        192
    """
    kinds = {"weight": ("weight",), "activation": ("activation",), "parameter": ("weight", "bias")}
    if kind not in kinds:
        raise FaultError(f"kind must be one of {list(kinds)}, got {kind!r}")
    return FaultSpace.select(site_list, SiteSpec(include=tuple(include), kinds=kinds[kind]), FaultSpec(bits=tuple(bits)))


@dataclass(frozen=True)
class Proposal:
    """A distribution ``q`` over the flat locations of a fault space, with draws and p/q weights.

    Attributes:
        space: the fault space (sites x elements x bits).
        q: probability of every flat location (sums to 1).
        name: a label for tables.
    """

    space: FaultSpace
    q: np.ndarray
    name: str = "proposal"
    _cdf: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        q = np.asarray(self.q, dtype=np.float64)
        if q.shape != (self.space.total,):
            raise FaultError(f"q must have one entry per location ({self.space.total}), got shape {q.shape}")
        if not np.all(np.isfinite(q)) or np.any(q < 0) or abs(q.sum() - 1) > 1e-6:
            raise FaultError("q must be finite, >= 0 and sum to 1")
        object.__setattr__(self, "q", q)
        object.__setattr__(self, "_cdf", np.cumsum(q))

    def draw(self, n: int, seed: int = 0, *, distinct: bool = False, start: int = 0) -> np.ndarray:
        """``n`` flat locations; draw i uses the stream ``rng_for(seed, i)`` (i counted from ``start``).

        With ``distinct`` repeated locations are skipped (draws continue until ``n`` distinct ones).
        """
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise FaultError(f"n must be an integer >= 0, got {n!r}")
        support = int(np.count_nonzero(self.q))
        if distinct and n > support:
            raise FaultError(f"cannot draw {n} distinct faults: q is positive on {support} locations only")
        out: list[int] = []
        seen: set[int] = set()
        i = start
        while len(out) < n:
            f = self._one(seed, i)
            i += 1
            if distinct:
                if f in seen:
                    continue
                seen.add(f)
            out.append(f)
        return np.array(out, dtype=np.int64)

    def stream(self, seed: int = 0, *, distinct: bool = True) -> Iterable[int]:
        """An endless stream of flat locations (distinct ones by default), as :meth:`draw`."""
        seen: set[int] = set()
        i = 0
        while True:
            f = self._one(seed, i)
            i += 1
            if distinct:
                if f in seen:
                    if len(seen) >= np.count_nonzero(self.q):
                        return
                    continue
                seen.add(f)
            yield f

    def _one(self, seed: int, i: int) -> int:
        u = rng_for(seed, i).random()
        return int(min(np.searchsorted(self._cdf, u * self._cdf[-1], side="right"), self.space.total - 1))

    def weights(self, flat: np.ndarray) -> np.ndarray:
        """Importance weights p/q of flat locations, for p uniform over the space."""
        return importance_weights(self.q[np.asarray(flat, dtype=np.int64)], population=self.space.total)

    def faults(self, flat: np.ndarray | int) -> FaultSet:
        """The single bit flips at flat locations (activation faults hit every input)."""
        site, element, bit = self.space.locate(np.atleast_1d(np.asarray(flat, dtype=np.int64)))
        names = np.array([s.name for s in self.space.sites])
        return FaultSet(site=names[site], index=element, bit=bit)


def uniform_proposal(space: FaultSpace) -> Proposal:
    """Plain uniform fault injection over the space (q = p = 1/N).

    Example:
        >>> import torch, resil
        >>> p = uniform_proposal(select_space(resil.sites(torch.nn.Linear(2, 3))))
        >>> p.draw(3, seed=0).tolist(), p.weights(np.array([0, 1])).tolist()
        ([122, 170, 15], [1.0, 1.0])
    """
    return Proposal(space, np.full(space.total, 1.0 / space.total), "uniform")


def isimdl_proposal(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    space: FaultSpace,
    *,
    bit_weighting: str = "exponential",
    tau: float = 0.0,
    steps: int = 16,
) -> Proposal:
    """ISimDL's sampling distribution over ``space`` (see the module docstring).

    Args:
        model: the network (its parameters' gradients are left as they were).
        inputs: the sensitivity batch (ISimDL: 32 training images).
        targets: their labels (activation conductance targets the label's logit).
        space: single-fault space, e.g. from :func:`select_space`.
        bit_weighting: one of :data:`BIT_WEIGHTINGS`.
        tau: ISimDL's ``random_threshold`` in [0, 1]: the uniform share of the element choice
            (and here of the bit choice too, so that q > 0 everywhere when tau > 0).
        steps: Riemann steps of the activation conductance.

    Example:
        >>> import torch, resil
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> space = select_space(resil.sites(net))
        >>> q = isimdl_proposal(net, torch.rand(4, 2), torch.zeros(4, dtype=torch.long), space, tau=0.1).q
        >>> round(float(q.sum()), 6), bool((q > 0).all())
        (1.0, True)
    """
    if bit_weighting not in BIT_WEIGHTINGS:
        raise FaultError(f"unknown bit weighting {bit_weighting!r}; choose one of {list(BIT_WEIGHTINGS)}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 <= float(tau) <= 1.0:
        raise FaultError(f"tau must be a number in [0, 1], got {tau!r}")
    if any(len(b) == 1 and b[0] < 0 for b in space.bits):
        raise FaultError("the space has no bit positions (a whole-word fault model); ISimDL samples bit flips")
    if bit_weighting == "gradient":
        bad = [s.name for s in space.sites if s.encoding.name != "float32"]
        if bad:
            raise FaultError(f"the gradient bit weighting needs float32 sites; {bad} are not")
    _check_batch(model, inputs)
    stored = [s for s in space.sites if not s.batched]
    computed = [s for s in space.sites if s.batched]
    sens = weight_sensitivity(model, inputs, stored) if stored else {}
    values: dict[str, np.ndarray] = {}
    if computed:
        cond, values = activation_conductance(model, inputs, targets, computed, steps)
        sens.update(cond)
    tau = float(tau)
    layer_names = [layer_of(s) for s in space.sites]
    layers = list(dict.fromkeys(layer_names))
    layer_total = {layer: sum(float(np.abs(sens[s.name][e]).sum())
                              for s, e, ln in zip(space.sites, space.elements, layer_names, strict=True) if ln == layer)
                   for layer in layers}
    layer_size = {layer: sum(len(e) for e, ln in zip(space.elements, layer_names, strict=True) if ln == layer) for layer in layers}
    q = np.empty(space.total)
    for k, (site, elements, bits) in enumerate(zip(space.sites, space.elements, space.bits, strict=True)):
        layer = layer_names[k]
        s = np.abs(sens[site.name][elements])
        total = layer_total[layer]
        p_elem = tau / layer_size[layer] + (1 - tau) * (s / total if total > 0 else np.full(len(s), 1.0 / layer_size[layer]))
        if bit_weighting == "gradient":
            if site.batched:
                v = values[site.name][:, elements]
            else:
                v = site.encoding.decode(site.codes()[torch.from_numpy(elements)]).to(torch.float32).numpy()
            pb = gradient_bit_distribution(v, sens[site.name][elements])[:, bits]
        else:
            pb = np.broadcast_to(bit_distribution(bit_weighting, site.bits)[bits], (len(elements), len(bits)))
        pb = pb / pb.sum(1, keepdims=True)
        pb = tau / len(bits) + (1 - tau) * pb
        start, stop = space.site_range(k)
        q[start:stop] = ((1.0 / len(layers)) * p_elem[:, None] * pb).reshape(-1)
    q /= q.sum()
    return Proposal(space, q, f"isimdl-{bit_weighting}-tau{tau:g}")


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Outcome:
    """The result of one fault-injection run over the evaluation set."""

    accuracy: float
    changed: float
    accuracy_drop: float
    critical: bool


class FaultEvaluator:
    """Runs faults against a golden run over fixed evaluation inputs and classifies them, through
    the :class:`~resil.campaign.evaluator.Evaluator` (many faults per forward pass where it can,
    results equal to full faulty forwards). A fault is critical by ``criterion``
    (default :class:`~resil.campaign.criteria.AccuracyDrop` of 10 points).
    :attr:`runs` counts the faults simulated; :meth:`evaluate_locations` caches by location.

    Example:
        >>> import torch, resil
        >>> lin = torch.nn.Sequential(torch.nn.Linear(2, 2)); x = torch.rand(8, 2)
        >>> ev = FaultEvaluator(lin, x, lin(x).argmax(1).detach())
        >>> ev.golden_accuracy, ev.evaluate(resil.FaultSet("0.weight", [0], [0])).critical, ev.runs
        (1.0, False, 1)
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, criterion: Criterion | str | None = None,
                 *, sites: SiteList | None = None, batch_size: int = 512) -> None:
        criterion = AccuracyDrop() if criterion is None else criterion
        _check_batch(model, inputs)
        labels = torch.as_tensor(labels).reshape(-1)
        if len(labels) != len(inputs):
            raise FaultError(f"labels has {len(labels)} entries for {len(inputs)} inputs")
        self.model = model
        self.evaluator = Evaluator(model, inputs, labels, criterion, sites=sites if sites is not None else list_sites(model, inputs[:1]),
                                   batch_size=batch_size)
        self.criterion, self.sites = self.evaluator.criterion, self.evaluator.sites
        self.golden_accuracy = float(self.evaluator.golden.accuracy or 0.0)
        self.runs = 0
        self._cache: dict[tuple[int, int], Outcome] = {}

    def evaluate(self, faults: FaultSet) -> Outcome:
        """One fault-injection run with ``faults`` applied."""
        return self.evaluate_many([faults])[0]

    def evaluate_many(self, faults: Sequence[FaultSet], *, count: bool = True) -> list[Outcome]:
        """One fault-injection run per fault set, evaluated together (``count``: add them to :attr:`runs`)."""
        if not faults:
            return []
        with torch.no_grad():
            counts = self.evaluator.evaluate_faults(faults)
        self.runs += len(faults) if count else 0
        n = len(self.evaluator.inputs)
        critical = self.evaluator.critical(counts)
        return [Outcome(c / n, (k + f) / n, self.golden_accuracy - c / n, bool(x))
                for c, k, f, x in zip(counts["correct"], counts["critical"], counts["non_finite"], critical, strict=True)]

    def evaluate_locations(self, proposal: Proposal, flat: Iterable[int], *, progress: bool = False) -> list[Outcome]:
        """Outcomes of single faults at flat locations of ``proposal.space`` (each location simulated once)."""
        flat = [int(f) for f in flat]
        todo = list(dict.fromkeys(f for f in flat if (id(proposal.space), f) not in self._cache))
        with tqdm(total=len(todo), desc="faults", disable=not progress, leave=False) as bar:
            for start in range(0, len(todo), 256):
                chunk = todo[start : start + 256]
                for f, o in zip(chunk, self.evaluate_many([proposal.faults(f) for f in chunk]), strict=True):
                    self._cache[(id(proposal.space), f)] = o
                bar.update(len(chunk))
        return [self._cache[(id(proposal.space), f)] for f in flat]


def precision_at_k(critical: Sequence[bool] | np.ndarray, k: int) -> float:
    """Share of the first ``k`` sampled faults that are critical.

    Example:
        >>> precision_at_k([0, 1, 1, 0, 1], k=4)
        0.5
    """
    c = np.asarray(critical)
    if c.ndim != 1 or (c.size and not np.isin(c, (0, 1)).all()):
        raise FaultError("critical must be a 1-D sequence of booleans")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise FaultError(f"k must be an integer >= 1, got {k!r}")
    if len(c) < k:
        raise FaultError(f"precision@{k} needs at least {k} sampled faults, got {len(c)}")
    return float(c[:k].astype(bool).mean())


@dataclass(frozen=True)
class Search:
    """Faults drawn until ``k`` critical ones were found.

    Attributes:
        critical: the critical faults found (up to ``k``).
        locations: the flat locations of the critical faults.
        runs: fault-injection runs spent (distinct faults simulated).
        found: how many critical faults were found (< k when the trial cap was reached).
    """

    critical: FaultSet
    locations: np.ndarray
    runs: int
    found: int


def sample_until_critical(proposal: Proposal, evaluator: FaultEvaluator, k: int = 3, *, seed: int = 0,
                          max_trials: int = 5000, exclude: Iterable[int] = ()) -> Search:
    """Draw distinct faults from ``proposal`` and simulate them until ``k`` are critical.

    Args:
        proposal: where faults come from (importance or uniform).
        evaluator: simulates a fault and decides whether it is critical.
        k: critical faults wanted.
        seed: draw stream (:meth:`Proposal.stream`).
        max_trials: cap on fault-injection runs.
        exclude: flat locations not to draw again (e.g. faults found earlier).

    Example:
        >>> import torch, resil
        >>> _ = torch.manual_seed(0); net = torch.nn.Sequential(torch.nn.Linear(4, 3)); x = torch.rand(30, 4)
        >>> ev = FaultEvaluator(net, x, net(x).argmax(1).detach())
        >>> s = sample_until_critical(uniform_proposal(select_space(ev.sites)), ev, k=1, seed=0)
        >>> s.found, s.runs == ev.runs
        (1, True)
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise FaultError(f"k must be an integer >= 1, got {k!r}")
    if isinstance(max_trials, bool) or not isinstance(max_trials, (int, np.integer)) or max_trials < 1:
        raise FaultError(f"max_trials must be an integer >= 1, got {max_trials!r}")
    skip = {int(e) for e in exclude}
    found: list[int] = []
    runs = 0
    stream = (f for f in proposal.stream(seed, distinct=True) if f not in skip)
    batch = 1  # faults are simulated together in growing batches; the draws after the k-th critical one are not counted
    while runs < max_trials and len(found) < k:
        chunk = list(itertools.islice(stream, min(batch, max_trials - runs)))
        if not chunk:
            break
        for f, outcome in zip(chunk, evaluator.evaluate_many([proposal.faults(f) for f in chunk], count=False), strict=True):
            runs += 1
            if outcome.critical:
                found.append(f)
                if len(found) >= k:
                    break
        batch = min(2 * batch, 64)
    evaluator.runs += runs
    loc = np.array(found, dtype=np.int64)
    return Search(proposal.faults(loc) if len(loc) else FaultSet(site=[], index=[], bit=[]), loc, runs, len(found))


# --------------------------------------------------------------------------- study


@dataclass(frozen=True)
class PrecisionConfig:
    """What :func:`precision_study` measures (checked when built).

    Attributes:
        kind: ``weight`` or ``activation`` faults.
        weightings: the ISimDL bit weightings compared with uniform sampling.
        seeds: one precision@k per seed and sampler.
        k: distinct faults per seed.
        tau: ISimDL ``random_threshold`` of the precision runs.
        criterion: when a fault is critical (default: accuracy drop >= 10 points).
        estimate_samples: i.i.d. draws for the failure-rate estimates (0: none).
        estimate_tau: ISimDL ``random_threshold`` of the re-weighted estimate.
        estimate_weighting: bit weighting of the re-weighted estimate.

    Example:
        >>> PrecisionConfig(k=10, seeds=(0,)).weightings
        ('uniform', 'linear', 'exponential', 'gradient')
    """

    kind: str = "weight"
    weightings: Sequence[str] = BIT_WEIGHTINGS
    seeds: Sequence[int] = (0, 1, 2)
    k: int = 100
    tau: float = 0.0
    criterion: Criterion | str = field(default_factory=AccuracyDrop)
    estimate_samples: int = 0
    estimate_tau: float = 0.1
    estimate_weighting: str = "exponential"

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise FaultError(f"k must be an integer >= 1, got {self.k!r}")
        if not self.seeds:
            raise FaultError("seeds must not be empty")
        for w in (*self.weightings, self.estimate_weighting):
            if w not in BIT_WEIGHTINGS:
                raise FaultError(f"unknown bit weighting {w!r}; choose one of {list(BIT_WEIGHTINGS)}")


def precision_study(
    model: nn.Module,
    eval_inputs: torch.Tensor,
    eval_labels: torch.Tensor,
    sens_inputs: torch.Tensor,
    sens_labels: torch.Tensor,
    config: PrecisionConfig | None = None,
    *,
    progress: bool = True,
) -> dict[str, object]:
    """Precision@k of ISimDL importance sampling (each bit weighting) vs uniform sampling, and
    optionally the re-weighted failure-rate estimate against the uniform one.

    Precision uses ``k`` distinct faults per seed; the estimates use ``estimate_samples`` i.i.d.
    draws from uniform sampling (Wilson 95% interval) and from ISimDL with ``estimate_tau``
    (unbiased mean of p/q-weighted critical indicators, CLT 95% interval). Both use the same
    criterion and evaluation set (``config``: :class:`PrecisionConfig`).

    Returns:
        ``{"golden_accuracy", "precision": {"uniform" | "is-<weighting>": [per seed]},
        "uniform_estimate": (rate, low, high),
        "is_estimate": Estimate, "runs": int}``.
    """
    c = config or PrecisionConfig()
    evaluator = FaultEvaluator(model, eval_inputs, eval_labels, c.criterion)
    space = select_space(evaluator.sites, c.kind)
    proposals = [uniform_proposal(space)] + [
        isimdl_proposal(model, sens_inputs, sens_labels, space, bit_weighting=w, tau=c.tau) for w in c.weightings]
    precision: dict[str, list[float]] = {}
    bar = tqdm(total=len(proposals) * len(c.seeds), desc=f"precision@{c.k} ({c.kind})", disable=not progress)
    for p in proposals:
        name = "uniform" if p.name == "uniform" else "is-" + p.name.split("-")[1]
        for seed in c.seeds:
            crit = [o.critical for o in evaluator.evaluate_locations(p, p.draw(c.k, seed, distinct=True))]
            precision.setdefault(name, []).append(precision_at_k(crit, c.k))
            bar.update()
    bar.close()
    result: dict[str, object] = {"golden_accuracy": evaluator.golden_accuracy, "precision": precision, "space": space.total}
    if c.estimate_samples:
        uni = proposals[0]
        flat_u = uni.draw(c.estimate_samples, 10_000)
        crit_u = np.array([o.critical for o in evaluator.evaluate_locations(uni, flat_u, progress=progress)], dtype=float)
        low, high = wilson_interval(int(crit_u.sum()), len(crit_u))
        result["uniform_estimate"] = (float(crit_u.mean()), float(low), float(high))
        isp = isimdl_proposal(model, sens_inputs, sens_labels, space, bit_weighting=c.estimate_weighting, tau=c.estimate_tau)
        flat_q = isp.draw(c.estimate_samples, 20_000)
        crit_q = np.array([o.critical for o in evaluator.evaluate_locations(isp, flat_q, progress=progress)], dtype=float)
        est: Estimate = importance_estimate(crit_q, isp.weights(flat_q), clip=True)
        result["is_estimate"] = est
        result["is_critical_share"] = float(crit_q.mean())
    result["runs"] = evaluator.runs
    return result
