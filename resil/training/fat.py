"""Fault-aware training with critical faults found by importance sampling (ISimDL, IJCNN 2023).

At chosen epochs, faults are drawn (ISimDL importance sampling, or uniformly) and simulated until
``k`` critical ones are found (:func:`search_critical`; the number of fault-injection runs is the
search overhead). The found faults are then fixed permanently into the model for the rest of the
training (:func:`train_under_faults`): every training step runs its forward and backward pass
inside ``resil.inject(model, faults)``, so each forward reads the faulted codes of the current
weights (a bit flip applies to the weight as it is after the last update), and the optimizer
updates the stored fault-free values after the block has restored them. Gradients are made
finite and clipped element-wise to ``[-grad_clip, grad_clip]`` before each step: a flipped
exponent bit makes a value ~1e38, whose raw gradients would overflow Adam's second moment.

Huge stuck weights. A flipped exponent bit (e.g. float32 bit 30: ``w -> w * 2**128``) makes a
weight ~1e38; its products overflow and often every output is Inf/NaN, so the faulty loss has no
gradient. Such a weight W (layer L, output o, operand x_i) is harmless only when its product is
killed by a ReLU exactly, in one of two ways (``neutralise``):

- sign route (preferred by ``auto`` when L's output feeds a ReLU, possibly through pooling):
  W < 0 makes o's pre-activation -huge wherever x_i > 0, so the ReLU outputs exactly 0, for every
  input with x_i >= 0 (always when x_i comes from a ReLU; for raw inputs, nonnegative data). As
  the fault keeps the sign of the stored value (or flips it, for the sign bit), this is a
  constraint on one stored number: after every step it is projected to ``margin`` on the side of
  zero where the faulty value is negative (the side is found by applying the fault).
- operand route (``auto`` when L feeds no ReLU, e.g. the logits layer): x_i = 0 exactly, which
  needs x_i produced by a ReLU. A hinge ``penalty * relu(z + margin)`` on the pre-activations z of
  that ReLU, at the elements the weight reads (Linear ``(o, i)``: feature i; Conv ``(o, c, k..)``:
  channel c at every position the kernel tap reads, through any pooling/flatten between), summed
  and averaged over the batch, drives them below ``-margin``; captured by forward hooks.

Alongside, each step trains on the faulty loss over the finite outputs and on the clean loss
(``clean_loss``; when off, only on steps with non-finite faulty outputs), which keeps the model
good without faults. ``TrainingConfig(neutralise="none", clean_loss=False)`` is the plain behaviour.

The settings are frozen, checked dataclasses: :class:`TrainingConfig` (how a step trains),
:class:`SearchConfig` (how critical faults are searched) and :class:`FATConfig` (the schedule,
holding one of each).

Example:
    >>> import torch, resil
    >>> from resil.training.fat import TrainingConfig, train_under_faults
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3)); x, y = torch.rand(16, 4), torch.randint(0, 3, (16,))
    >>> w = net[0].weight.detach().clone()
    >>> _ = train_under_faults(net, resil.Fault("0.weight", 0, bit=31), x, y, TrainingConfig(batch_size=8), epochs=1)
    >>> bool((net[0].weight != w).all())   # trained (every weight updated); no fault left behind
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..analysis.precision import (
    BIT_WEIGHTINGS,
    FaultEvaluator,
    Search,
    isimdl_proposal,
    sample_until_critical,
    select_space,
    uniform_proposal,
)
from ..campaign.criteria import AccuracyDrop, Criterion, count_correct
from ..discovery import sites as list_sites
from ..errors import FaultError
from ..faults import FaultSet
from ..hooks import forward_hooks, pre_hooks
from ..injection import Faults, as_fault_set, inject
from ..site import SiteList

__all__ = ["EpochRecord", "FATConfig", "FATResult", "SearchConfig", "TrainingConfig", "accuracy_under", "fault_aware_training",
           "search_critical", "train_under_faults"]


def _check_data(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(model, nn.Module):
        raise FaultError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or len(x) == 0 or len(x) != len(y):
        raise FaultError("inputs and labels must be non-empty tensors of the same length")


def _positive_int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise FaultError(f"{name} must be an integer >= 1, got {v!r}")
    return int(v)


def accuracy_under(model: nn.Module, faults: Faults | None, x: torch.Tensor, y: torch.Tensor, *,
                   sites: SiteList | None = None, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` with ``faults`` applied (non-finite outputs count as wrong).

    Example:
        >>> import torch, resil
        >>> lin = torch.nn.Linear(1, 2, bias=False); _ = lin.weight.data.copy_(torch.tensor([[1.0], [0.5]]))
        >>> x, y = torch.ones(4, 1), torch.zeros(4, dtype=torch.long)
        >>> accuracy_under(lin, None, x, y), accuracy_under(lin, resil.Fault("weight", 0, bit=31), x, y)
        (1.0, 0.0)
    """
    _check_data(model, x, y)
    was_training = model.training
    model.eval()
    hits = 0
    try:
        for i in range(0, len(x), batch_size):
            with torch.no_grad():
                if faults is None or (isinstance(faults, FaultSet) and len(faults) == 0):
                    out = model(x[i : i + batch_size])
                else:
                    with inject(model, faults, sites=sites):
                        out = model(x[i : i + batch_size])
            hits += count_correct(out, y[i : i + batch_size])
    finally:
        model.train(was_training)
    return hits / len(x)


def _finite_number(name: str, v: object) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
        raise FaultError(f"{name} must be a finite number >= 0, got {v!r}")


@dataclass(frozen=True)
class TrainingConfig:
    """How :func:`train_under_faults` trains (checked when built).

    Attributes:
        lr: Adam learning rate (ignored when an optimizer is given).
        batch_size: mini-batch size.
        grad_clip: element-wise gradient bound (> 0).
        neutralise: how weights the faults make huge are neutralised: ``auto`` (sign route where
            the layer feeds a ReLU, else operand route), ``operand``, ``sign`` or ``none``.
        clean_loss: also train on the clean loss at every step (a second forward and backward).
        penalty: weight of the operand hinge.
        margin: hinge margin (pre-activation units) and the sign route's distance from zero.
        huge: a faulty weight counts as huge from this magnitude on (or when non-finite).

    Example:
        >>> TrainingConfig(neutralise="none", clean_loss=False).batch_size
        64
    """

    lr: float = 1e-3
    batch_size: int = 64
    grad_clip: float = 1.0
    neutralise: str = "auto"
    clean_loss: bool = True
    penalty: float = 1.0
    margin: float = 0.1
    huge: float = 1e6

    def __post_init__(self) -> None:
        _positive_int("batch_size", self.batch_size)
        if not self.grad_clip > 0:
            raise FaultError(f"grad_clip must be > 0, got {self.grad_clip!r}")
        if self.neutralise not in NEUTRALISE:
            raise FaultError(f"neutralise must be one of {list(NEUTRALISE)}, got {self.neutralise!r}")
        for name in ("penalty", "margin", "huge"):
            _finite_number(name, getattr(self, name))


def train_under_faults(
    model: nn.Module,
    faults: Faults | None,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainingConfig | None = None,
    *,
    epochs: int = 1,
    seed: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    sites: SiteList | None = None,
    progress: bool = False,
) -> nn.Module:
    """Train ``model`` with ``faults`` held applied in every forward and backward pass.

    Each step: ``with resil.inject(model, faults): loss.backward()``, the loss taken over the
    inputs whose outputs are finite, plus the neutralising penalty of huge faulty weights and
    the clean loss (see the module docstring); then gradients are made finite (NaN -> 0,
    +-Inf -> +-grad_clip), clipped to ``[-grad_clip, grad_clip]`` and the optimizer (Adam with
    ``lr`` unless given) updates the stored fault-free values; sign-route weights are then
    projected. On return the model holds no fault (every block restored it) and is in eval mode.

    Args:
        model: the network (trained in place).
        faults: faults to keep applied (None or an empty set: plain training).
        x, y: training inputs and labels.
        config: how to train (default :class:`TrainingConfig`).
        epochs: passes over the data (shuffled with ``seed``).
        seed: shuffling seed.
        optimizer: an optimizer over the model's parameters, to continue its state.
        sites: the model's sites, if already listed.
        progress: show a tqdm bar over steps.

    Returns:
        ``model``.
    """
    _check_data(model, x, y)
    c = config or TrainingConfig()
    epochs = _positive_int("epochs", epochs)
    empty = faults is None or (isinstance(faults, FaultSet) and len(faults) == 0)
    targets: list[_Target] = []
    if faults is not None and not empty:
        sites = sites if sites is not None else list_sites(model, x[:1])
        faults = as_fault_set(faults, sites)  # validated once, before any training
        if c.neutralise != "none":
            targets = _targets(model, faults, sites, x[:1], c.neutralise, c.huge, c.margin)
    _project(targets, c.margin)
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=c.lr)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=epochs * -(-len(x) // c.batch_size), desc="training under faults", disable=not progress, leave=False)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g).to(x.device)
        for i in range(0, len(order), c.batch_size):
            rows = order[i : i + c.batch_size]
            opt.zero_grad()
            _step_gradients(model, None if empty else faults, sites, targets, x[rows], y[rows], loss_fn, c)
            for p in params:
                if p.grad is not None:
                    torch.nan_to_num_(p.grad, nan=0.0, posinf=c.grad_clip, neginf=-c.grad_clip).clamp_(-c.grad_clip, c.grad_clip)
            opt.step()
            _project(targets, c.margin)
            bar.update()
    bar.close()
    return model.eval()


def _step_gradients(model: nn.Module, faults: Faults | None, sites: SiteList | None, targets: list[_Target], x: torch.Tensor,
                    y: torch.Tensor, loss_fn: nn.Module, c: TrainingConfig) -> None:
    """Accumulate one step's gradients: the faulty loss over finite outputs, the operand hinges
    of ``targets`` and the clean loss (see the module docstring)."""
    if faults is None:
        _finite_loss(model, x, y, loss_fn)
    elif not targets:
        with inject(model, faults, sites=sites):
            finite = _finite_loss(model, x, y, loss_fn)
        if c.clean_loss or (c.neutralise != "none" and not finite):
            loss_fn(model(x), y).backward()  # (a) the clean loss
    else:
        pre: dict[nn.Module, list[torch.Tensor]] = {t.relu: [] for t in targets if t.relu is not None}
        with inject(model, faults, sites=sites), _capture(pre):
            out = model(x)
            ok = torch.isfinite(out).all(1)
            terms = [loss_fn(out[ok], y[ok])] if bool(ok.any()) else []  # (b) the faulty loss where finite
            terms += [c.penalty * _operand_penalty(t, pre[t.relu][t.call], c.margin)  # (c) operands -> exact zeros
                      for t in targets if t.relu is not None]
            if terms:
                sum(terms).backward()
        if c.clean_loss or not bool(ok.all()):
            loss_fn(model(x), y).backward()  # (a) the clean loss


def _finite_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module) -> bool:
    """Backpropagate the loss over the inputs whose outputs are finite (a faulty network may output Inf/NaN); all finite?"""
    out = model(x)
    finite = torch.isfinite(out).all(1)
    if bool(finite.any()):
        loss_fn(out[finite], y[finite]).backward()
    return bool(finite.all())

# -- neutralising huge stuck weights ------------------------------------------------------------

NEUTRALISE = ("auto", "operand", "sign", "none")

#: leaf modules that map an all-zero input window to exactly zero and are monotone, so that an
#: operand is exactly zero iff every ReLU output feeding it is
_PASS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveMaxPool1d,
         nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
         nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class _Call:
    module: nn.Module
    inp: torch.Tensor | None
    out: object


def _trace(model: nn.Module, x: torch.Tensor) -> list[_Call]:
    """The leaf-module calls of one forward pass, in order, with their input and output tensors."""
    calls: list[_Call] = []

    def record(mod: nn.Module, a: tuple[object, ...], o: object) -> None:
        calls.append(_Call(mod, a[0] if a and isinstance(a[0], torch.Tensor) else None, o))

    was_training = model.training
    model.eval()
    try:
        with forward_hooks((m, record) for m in model.modules() if not list(m.children())), torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return calls


@dataclass
class _Target:
    """How one huge faulty weight is neutralised: its operand, or the sign of its faulty value."""

    module: nn.Module       # the layer holding the weight
    index: tuple[int, ...]  # the weight element
    relu: nn.Module | None = None                 # operand route: the ReLU producing the operand (its call-th call) ...
    call: int = 0
    chain: tuple[nn.Module, ...] = ()             # ... and the zero-preserving modules between it and the layer
    param: torch.Tensor | None = None             # sign route: the stored weight ...
    side: float = 0.0                             # ... held on this side of zero (the faulty value is then < 0)


def _faulty_value(model: nn.Module, fault: FaultSet, sites: SiteList, param: torch.Tensor, flat: int, stored: float) -> float:
    """The value the fault gives the weight element when it stores ``stored``."""
    with torch.no_grad():
        old = param.view(-1)[flat].clone()
        param.view(-1)[flat] = stored
        try:
            with inject(model, fault, sites=sites):
                return float(param.view(-1)[flat])
        finally:
            param.view(-1)[flat] = old


def _targets(model: nn.Module, faults: FaultSet, sites: SiteList, x: torch.Tensor, mode: str, huge: float,
             margin: float) -> list[_Target]:
    """The neutralisation plan of every fault that makes a weight huge (``|value| >= huge``) or non-finite."""
    calls = _trace(model, x)
    out: list[_Target] = []
    for j, f in enumerate(faults):
        site = sites[f.site]
        mod = site.module
        if site.kind != "weight" or not isinstance(mod, (nn.Linear, *_CONV)) or site.attr != "weight":
            continue
        param = mod.weight
        flat = int(np.ravel_multi_index(f.index, param.shape)) if isinstance(f.index, tuple) else int(f.index)
        w = float(param.detach().view(-1)[flat])
        if abs(_faulty_value(model, faults[[j]], sites, param, flat, w)) < huge:
            continue  # finite and moderate: the faulty loss itself trains against it
        t = _Target(mod, tuple(int(i) for i in np.unravel_index(flat, param.shape)))
        mine = [c for c in calls if c.module is mod]
        if len(mine) == 1:  # a layer called once: follow its operand back, its output forward
            if mode in ("auto", "sign"):
                cur, feeds_relu = mine[0], False
                while True:
                    nxt = [c for c in calls if c.inp is cur.out]
                    if len(nxt) != 1 or not isinstance(nxt[0].module, (nn.ReLU, *_PASS)):
                        break
                    if isinstance(nxt[0].module, nn.ReLU):
                        feeds_relu = True
                        break
                    cur = nxt[0]
                if feeds_relu:
                    own = 1.0 if w >= 0 else -1.0
                    for side in (own, -own):  # the stored sign that makes the faulty value negative
                        v = _faulty_value(model, faults[[j]], sites, param, flat, side * (margin or 1e-3))
                        if math.isfinite(v) and v < 0:
                            t.param, t.side = param, side
                            break
            if mode == "operand" or (mode == "auto" and t.param is None):
                chain: list[nn.Module] = []
                cur = mine[0]
                while True:
                    prev = [c for c in calls if cur.inp is not None and c.out is cur.inp]
                    if len(prev) != 1:
                        break
                    if isinstance(prev[0].module, nn.ReLU):
                        t.relu, t.chain = prev[0].module, tuple(reversed(chain))
                        t.call = sum(1 for c in calls[: next(k for k, c in enumerate(calls) if c is prev[0])] if c.module is t.relu)
                        break
                    if not isinstance(prev[0].module, _PASS):
                        break
                    chain.append(prev[0].module)
                    cur = prev[0]
        if t.relu is not None or t.param is not None:
            out.append(t)
    return out


def _project(targets: list[_Target], margin: float) -> None:
    """Sign route: move each stored weight to at least ``margin`` on its side of zero (projection onto the constraint)."""
    with torch.no_grad():
        for t in targets:
            if t.param is not None and t.side * float(t.param.detach()[t.index]) < margin:
                t.param[t.index] = t.side * margin


@contextmanager
def _capture(relus: dict[nn.Module, list[torch.Tensor]]) -> Iterator[None]:
    """Record the inputs (pre-activations) of the given ReLUs during the block (in-place ReLUs are fed a copy)."""
    def pre(mod: nn.Module, a: tuple) -> tuple | None:
        relus[mod].append(a[0])
        return (a[0].clone(),) if getattr(mod, "inplace", False) else None

    with pre_hooks((m, pre) for m in relus):
        yield


def _operand_penalty(t: _Target, z: torch.Tensor, margin: float) -> torch.Tensor:
    """Hinge ``relu(z + margin)`` on the pre-activations feeding the elements the faulty weight reads, summed, per sample."""
    h = torch.where(torch.isfinite(z), z, torch.zeros((), dtype=z.dtype)).add(margin).relu() * torch.isfinite(z)
    for m in t.chain:
        h = m(h)
    mod = t.module
    if isinstance(mod, nn.Linear):
        return h[..., t.index[1]].sum() / len(h)
    assert isinstance(mod, _CONV)
    o, c = t.index[0], t.index[1]
    c_in = (o // (mod.out_channels // mod.groups)) * (mod.in_channels // mod.groups) + c
    h = h[:, c_in : c_in + 1]
    one = torch.zeros((1, 1, *mod.kernel_size), dtype=h.dtype)
    one[(0, 0, *t.index[2:])] = 1.0  # a kernel that reads the operand elements the faulty weight reads, at every position
    pad: str | int | tuple[int, ...] = mod.padding
    if mod.padding_mode != "zeros":
        h, pad = F.pad(h, mod._reversed_padding_repeated_twice, mode=mod.padding_mode), 0
    conv = (F.conv1d, F.conv2d, F.conv3d)[len(mod.kernel_size) - 1]
    return conv(h, one, None, mod.stride, pad, mod.dilation).sum() / len(h)


@dataclass(frozen=True)
class SearchConfig:
    """How :func:`search_critical` searches critical single bit flips (checked when built).

    Attributes:
        sampler: ``importance`` (ISimDL) or ``uniform``.
        kind: ``weight`` or ``activation`` faults.
        k: critical faults wanted.
        criterion: when a fault is critical (default: accuracy drop >= 10 points).
        bit_weighting: ISimDL bit weighting (importance sampling only).
        tau: ISimDL ``random_threshold``.
        max_trials: cap on fault-injection runs.

    Example:
        >>> SearchConfig(sampler="uniform", k=2).k
        2
    """

    sampler: str = "importance"
    kind: str = "weight"
    k: int = 3
    criterion: Criterion | str = field(default_factory=AccuracyDrop)
    bit_weighting: str = "gradient"
    tau: float = 0.0
    max_trials: int = 5000

    def __post_init__(self) -> None:
        if self.sampler not in ("importance", "uniform"):
            raise FaultError(f"sampler must be 'importance' or 'uniform', got {self.sampler!r}")
        if self.bit_weighting not in BIT_WEIGHTINGS:
            raise FaultError(f"unknown bit weighting {self.bit_weighting!r}; choose one of {list(BIT_WEIGHTINGS)}")
        _positive_int("k", self.k)


def search_critical(
    model: nn.Module,
    eval_x: torch.Tensor,
    eval_y: torch.Tensor,
    sens_x: torch.Tensor,
    sens_y: torch.Tensor,
    config: SearchConfig | None = None,
    *,
    seed: int = 0,
    exclude: FaultSet | None = None,
) -> Search:
    """Find ``config.k`` critical single bit flips of ``model``, drawing them by importance or uniformly.

    Args:
        model: the network (searched as it is, without other faults).
        eval_x, eval_y: evaluation set for the critical criterion.
        sens_x, sens_y: sensitivity batch (importance sampling only).
        config: how to search (default :class:`SearchConfig`).
        seed: draw stream.
        exclude: faults not to return again (e.g. found in an earlier search).

    Returns:
        A :class:`~resil.analysis.precision.Search`: the faults, and ``runs`` (the search overhead).

    Example:
        >>> import torch, resil
        >>> _ = torch.manual_seed(0); net = torch.nn.Sequential(torch.nn.Linear(4, 3)); x = torch.rand(30, 4)
        >>> y = net(x).argmax(1).detach()
        >>> s = search_critical(net, x, y, x, y, SearchConfig(k=2))
        >>> s.found, len(s.critical)
        (2, 2)
    """
    c = config or SearchConfig()
    _check_data(model, eval_x, eval_y)
    _check_data(model, sens_x, sens_y)
    evaluator = FaultEvaluator(model, eval_x, eval_y, c.criterion)
    space = select_space(evaluator.sites, c.kind)
    proposal = (isimdl_proposal(model, sens_x, sens_y, space, bit_weighting=c.bit_weighting, tau=c.tau)
                if c.sampler == "importance" else uniform_proposal(space))
    skip: list[int] = []
    if exclude is not None and len(exclude):
        skip = _locations(space, exclude)
    return sample_until_critical(proposal, evaluator, c.k, seed=seed, max_trials=c.max_trials, exclude=skip)


def _locations(space: object, faults: FaultSet) -> list[int]:
    """Flat locations of single bit flips in ``space`` (faults outside it are ignored)."""
    out = []
    names = [s.name for s in space.sites]  # type: ignore[attr-defined]
    site_of = np.array(faults.site_names, dtype=object)[faults.site] if len(faults) else []
    for name, index, mask in zip(site_of, faults.index, faults.mask, strict=True):
        bit = int(mask).bit_length() - 1
        if name in names and int(mask) == 1 << bit:
            k = names.index(name)
            pos = np.searchsorted(space.elements[k], index)  # type: ignore[attr-defined]
            slot = np.flatnonzero(space.bits[k] == bit)  # type: ignore[attr-defined]
            if pos < len(space.elements[k]) and space.elements[k][pos] == index and len(slot):  # type: ignore[attr-defined]
                out.append(int(space.offsets[k] + pos * len(space.bits[k]) + slot[0]))  # type: ignore[attr-defined]
    return out


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of fault-aware training.

    Attributes:
        epoch: epochs trained so far (0 = the model as given, before training).
        runs: fault-injection runs of the search done after this epoch (0 if none).
        found: critical faults found by that search.
        faults: faults held applied from now on (all found so far).
        clean_accuracy: test accuracy without faults.
        faulty_accuracy: test accuracy with all faults found so far applied.
    """

    epoch: int
    runs: int
    found: int
    faults: int
    clean_accuracy: float
    faulty_accuracy: float


@dataclass(frozen=True)
class FATResult:
    """The outcome of :func:`fault_aware_training`.

    Attributes:
        model: the trained model (fault-free in storage).
        faults: every critical fault found, held applied during training.
        history: one record per epoch.
        search_runs: fault-injection runs spent searching, in total.
        clean_before, faulty_before: test accuracy of the given model without and with ``faults``.
        clean_after, faulty_after: the same after training.
    """

    model: nn.Module
    faults: FaultSet
    history: list[EpochRecord] = field(default_factory=list)
    search_runs: int = 0
    clean_before: float = float("nan")
    faulty_before: float = float("nan")
    clean_after: float = float("nan")
    faulty_after: float = float("nan")


@dataclass(frozen=True)
class FATConfig:
    """The schedule of :func:`fault_aware_training` (checked when built).

    Attributes:
        epochs: training epochs.
        search_epochs: after which epochs to search (0 = the given model, before training).
        stagger: the j-th fault found by a search is applied from ``j * stagger`` epochs later on.
        sens_size: training images in the sensitivity batch (drawn with ``seed``).
        seed: the sensitivity batch's draw; epoch e trains with seed ``seed + e`` and searches
            with ``seed + 1000 e``.
        search: how each search runs (:class:`SearchConfig`).
        training: how each epoch trains (:class:`TrainingConfig`).

    Example:
        >>> FATConfig(epochs=2, search_epochs=(0, 1), search=SearchConfig(k=1)).search.k
        1
    """

    epochs: int = 5
    search_epochs: tuple[int, ...] = (0,)
    stagger: int = 0
    sens_size: int = 32
    seed: int = 0
    search: SearchConfig = field(default_factory=SearchConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        _positive_int("epochs", self.epochs)
        _positive_int("sens_size", self.sens_size)
        if isinstance(self.stagger, bool) or not isinstance(self.stagger, (int, np.integer)) or self.stagger < 0:
            raise FaultError(f"stagger must be an integer >= 0, got {self.stagger!r}")
        bad = [e for e in self.search_epochs if isinstance(e, bool) or not isinstance(e, (int, np.integer)) or not 0 <= e < self.epochs]
        if bad:
            raise FaultError(f"search_epochs must lie in 0..{self.epochs - 1}, got {bad}")


def fault_aware_training(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    config: FATConfig | None = None,
    *,
    progress: bool = True,
) -> FATResult:
    """ISimDL's fault-aware training: search critical faults, fix them into the model, keep training.

    After each epoch listed in ``search_epochs`` (0 = the given model, before training),
    ``search.k`` critical faults of the current model are searched (:func:`search_critical`, on
    the test set with ``search.criterion``; sensitivity batch: ``sens_size`` training images
    drawn with ``seed``) and fixed into the model for every following training step
    (:func:`train_under_faults` with ``training``), the j-th of them from ``j * stagger`` epochs
    later on (``stagger = 0``: all at once; ISimDL inserts faults at chosen epochs, and
    staggering lets the network neutralise one fault before the next, where several together
    would make every output non-finite and leave no gradient).
    ``TrainingConfig(neutralise="none", clean_loss=False)`` is the plain behaviour.

    Returns:
        A :class:`FATResult`, with accuracy with and without the found faults before and after
        (``faulty_*``: all found faults applied).

    Example:
        >>> import torch, resil.models as rm
        >>> d = rm.dataset("digits")
        >>> r = fault_aware_training(rm.load("dense-cnn"), d.x_train, d.y_train, d.x_test, d.y_test,
        ...                          FATConfig(epochs=1, search=SearchConfig(k=1)), progress=False)
        >>> r.search_runs > 0, len(r.faults), r.faulty_before < r.clean_before
        (True, 1, True)
    """
    c = config or FATConfig()
    _check_data(model, train_x, train_y)
    _check_data(model, test_x, test_y)
    sites = list_sites(model, test_x[:1])
    select_space(sites, c.search.kind)  # a bad kind fails here, before any work
    g = torch.Generator().manual_seed(c.seed)
    rows = torch.randperm(len(train_x), generator=g)[: min(c.sens_size, len(train_x))]
    sens_x, sens_y = train_x[rows], train_y[rows]
    opt = torch.optim.Adam(model.parameters(), lr=c.training.lr)
    found: list[tuple[int, FaultSet]] = []  # (first epoch it is applied after, fault)
    history: list[EpochRecord] = []
    clean_before = accuracy_under(model, None, test_x, test_y)
    snapshot = {n: t.detach().clone() for n, t in model.state_dict().items()}
    for epoch in tqdm(range(c.epochs + 1), desc=f"FAT ({c.search.sampler})", disable=not progress):
        if epoch > 0:
            train_under_faults(model, _applied(found, epoch - 1), train_x, train_y, c.training, seed=c.seed + epoch, optimizer=opt,
                               sites=sites)
        runs = n_found = 0
        if epoch in c.search_epochs:
            s = search_critical(model, test_x, test_y, sens_x, sens_y, c.search, seed=c.seed + 1000 * epoch,
                                exclude=_applied(found) if found else None)
            runs, n_found = s.runs, s.found
            found += [(epoch + j * c.stagger, s.critical[[j]]) for j in range(s.found)]
        now = _applied(found, epoch)
        history.append(EpochRecord(epoch, runs, n_found, len(now), accuracy_under(model, None, test_x, test_y),
                                   accuracy_under(model, now, test_x, test_y, sites=sites)))
    faults = _applied(found)
    clean_after = accuracy_under(model, None, test_x, test_y)
    faulty_after = accuracy_under(model, faults, test_x, test_y, sites=sites)
    trained = {n: t.detach().clone() for n, t in model.state_dict().items()}
    model.load_state_dict(snapshot)  # the given model under the final fault set
    faulty_before = accuracy_under(model, faults, test_x, test_y, sites=sites)
    model.load_state_dict(trained)
    return FATResult(model, faults, history, sum(h.runs for h in history), clean_before, faulty_before, clean_after, faulty_after)


def _applied(found: list[tuple[int, FaultSet]], epoch: float = math.inf) -> FaultSet:
    """The faults applied after ``epoch`` (default: every one found), of ``(first epoch, fault)`` pairs."""
    sets = [f for start, f in found if start <= epoch]
    return FaultSet.concat(sets) if sets else FaultSet(site=[], index=[], bit=[])
