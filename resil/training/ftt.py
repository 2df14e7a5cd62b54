"""Fault-tolerant training (FTT, from FT-NAS): train on a mix of clean and faulty forward passes.

The loss of a batch is ``(1 - alpha) * CE(f(x), y) + alpha * CE(f_faulty(x), y)``, where
``f_faulty`` draws fresh faults of the given processes (:class:`~resil.training.ftnas.MiBB`,
:class:`~resil.training.ftnas.IBB`, :class:`~resil.training.ftnas.AdSAF`) on every forward pass, with
straight-through gradients: the faulty value is used forward, and the gradient reaches the
clean tensor as if the fault were not there (``faulty.detach() + (x - x.detach())``). For
feature faults the gradient by default also flows through the fault's size, which dynamic fixed
point makes proportional to the sample's range ``max|x|`` (``range_gradient``, see :class:`FTT`):
with the plain estimator alone, training on MiBB lets feature magnitudes grow without bound.

Prepare/convert style, from your own training loop::

    ftt = resil.training.prepare(model, AdSAF(p=0.08), alpha=0.7)
    for x, y in batches:
        opt.zero_grad()
        ftt.loss(x, y).backward()
        opt.step()
    model = ftt.convert()               # the plain model: no hooks, nothing swapped

The model is never modified outside a :meth:`FTT.faulty` block (which :meth:`FTT.loss` opens for
its faulty pass): the faults live in hooks installed on entry and removed on exit.

Where faults go, found with :func:`resil.sites` (so the same code serves every adapter):

- feature faults: the output of every conv and linear layer (``<layer>:out`` sites of modules
  with a weight of 2 or more dimensions: ``nn.Conv*``, ``nn.Linear``, Brevitas ``QuantConv*``/
  ``QuantLinear``, pruned layers), redrawn on every call of the layer (every time step of a
  spiking network);
- weight faults: every ``weight`` site of 2 or more dimensions, redrawn once per call of the
  model (a spiking network keeps one draw for all its time steps, as a chip would).

Both act through the sites' adapters (:meth:`resil.site.Adapter.transform`): the layer computes
with the faulty version of the values it computes with, on every call. For pruned layers these
are the masked weights, so pruned cells stay zero and only live weights get faults. Brevitas
weights get their faults **on the quantized values** the weight quantizer outputs, the full cell
being the largest code (127 for int8), so the scale learned from the float weights is unchanged
and faults stay on the grid.

Example:
    >>> import torch, resil
    >>> from resil.training.ftnas import AdSAF
    >>> from resil.training import prepare
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> before = [p.detach().clone() for p in net.parameters()]
    >>> ftt = prepare(net, AdSAF(p=0.08), alpha=0.7, seed=0)
    >>> loss = ftt.loss(torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1]))
    >>> loss.backward()
    >>> net = ftt.convert()
    >>> all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    True
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..campaign.criteria import count_correct
from ..campaign.sources import as_data, check_forward, load_model
from ..discovery import sites as list_sites
from ..encodings import Encoding, IntEncoding
from ..errors import FaultError
from ..fixed_point_faults import add_bit_bias, bias_values, fixed_point_scale, stuck_cells
from ..injectors import device_of
from ..site import Site, SiteList, Undo
from .ftnas import AdSAF, FaultProcess, FeatureFaults, process_spec, processes

if TYPE_CHECKING:
    from .data import Dataset
    from .recipe import Recipe

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _straight_through(faulty: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """``faulty`` forward, the gradient of ``clean`` backward (exactly ``faulty`` in value)."""
    if clean.requires_grad and torch.is_grad_enabled():
        return faulty.detach() + (clean - clean.detach())
    return faulty.detach()


class _Generators:
    """One seeded generator per device, so a run draws the same faults on any device."""

    def __init__(self, seed: int) -> None:
        self.seed, self._by_device = seed, {}  # type: ignore[var-annotated]

    def __call__(self, device: torch.device) -> torch.Generator:
        if device not in self._by_device:
            self._by_device[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._by_device[device]


@dataclass
class _WeightSite:
    site: Site
    process: AdSAF
    live: torch.Tensor | None  # bool, the site's shape; None = every element
    cells: torch.Tensor | None = None  # the current draw


class FTT:
    """Fault-tolerant training of ``model`` under fault processes (see the module docstring).

    Args:
        model: any model resil lists sites for (dense, spiking, pruned, Brevitas ...).
        faults: one or several of :class:`~resil.training.ftnas.MiBB`, :class:`~resil.training.ftnas.IBB`,
            :class:`~resil.training.ftnas.AdSAF`.
        alpha: weight of the faulty loss, in [0, 1] (FT-NAS: 0.7 for adSAF, about 0.5 for MiBB).
        example: optional example input (passed to :func:`resil.sites`).
        seed: seed of the fault draws.
        loss_fn: ``loss_fn(scores, y)``; default cross-entropy.
        range_gradient: feature faults only. True (default): the gradient also flows through
            the fault's size, which is proportional to the sample's range ``max|x|`` (dynamic
            fixed point), so training learns to avoid outlier features that make every fault
            large. False: the plain straight-through gradient (as if no fault were there). On
            the digits CNN the plain one lets feature magnitudes grow without bound and
            training collapses at MiBB ``p_m = 5e-4`` (see ``benchmarks/ftt.py``). Weight faults
            always use the plain straight-through gradient.

    Raises:
        FaultError: for a bad ``alpha`` or fault process, or if no site gets faults.
    """

    def __init__(self, model: nn.Module, faults: FaultProcess | Sequence[FaultProcess], *, alpha: float = 0.5,
                 example: Any = None, seed: int = 0, loss_fn: LossFn | None = None, range_gradient: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise FaultError(f"FTT needs a torch.nn.Module, not {type(model).__name__}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise FaultError(f"alpha must be in [0, 1], not {alpha!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise FaultError(f"seed must be an integer, not {seed!r}")
        self.model, self.alpha, self.seed, self.range_gradient = model, float(alpha), int(seed), bool(range_gradient)
        self.faults = processes(faults)
        self.loss_fn: LossFn = loss_fn or F.cross_entropy
        self.sites: SiteList = list_sites(model, example)
        self._features: list[tuple[Site, int, FeatureFaults]] = []
        self._weights: list[_WeightSite] = []
        for proc in self.faults:
            if isinstance(proc, FeatureFaults):
                features = proc.sites(self.sites)
                self._features += [(s, m, proc) for s, m in features]
                found = len(features)
            else:
                weights = proc.sites(self.sites)
                self._weights += [_WeightSite(s, proc, _live_mask(s)) for s in weights]
                found = len(weights)
            if not found:
                raise FaultError(f"{proc!r} selects no site of the model (its include globs match none of its "
                                 f"{'conv/linear outputs' if isinstance(proc, FeatureFaults) else 'weights'})")
        self._generators = _Generators(self.seed)
        self._active = False
        self._converted = False
        #: the clean and faulty loss of the last :meth:`loss` call
        self.last: tuple[float, float] | None = None

    # -- faults -------------------------------------------------------------------------------
    @contextmanager
    def faulty(self) -> Iterator[FTT]:
        """Run the model with fresh faults on every forward pass during the block.

        Example:
            >>> import torch
            >>> from resil.training.ftnas import IBB
            >>> net = torch.nn.Linear(3, 2)
            >>> ftt = FTT(net, IBB(p=1.0))
            >>> x = torch.rand(4, 3)
            >>> with torch.no_grad(), ftt.faulty():
            ...     changed = bool((net(x) != net(x)).any())   # two draws
            >>> changed, torch.equal(net(x), net(x))
            (True, True)
        """
        if self._converted:
            raise FaultError("this FTT has been converted; prepare the model again")
        if self._active:
            raise FaultError("FTT.faulty() blocks do not nest")
        undos: list[Undo] = []
        self._active = True
        try:
            for site, m, proc in self._features:
                undos.append(site.adapter.transform(site, self._feature_faults(m, proc)))
            if self._weights:
                undos.append(self.model.register_forward_pre_hook(self._draw_weight_faults).remove)
                for ws in self._weights:
                    undos.append(ws.site.adapter.transform(ws.site, self._weight_faults(ws)))
            yield self
        finally:
            for undo in reversed(undos):
                undo()
            for ws in self._weights:
                ws.cells = None
            self._active = False

    def _feature_faults(self, m: int, proc: FeatureFaults) -> Callable[[torch.Tensor, Encoding], torch.Tensor]:
        def corrupt(clean: torch.Tensor, encoding: Encoding) -> torch.Tensor:
            generator = self._generators(clean.device)
            if self.range_gradient and clean.requires_grad and torch.is_grad_enabled():
                return _range_aware_faults(proc, clean, m, generator)
            return _straight_through(proc.corrupt(clean, m, generator), clean)
        return corrupt

    def _draw_weight_faults(self, module: nn.Module, args: Any) -> None:
        """Model pre-hook: one fresh draw of cell faults per weight site, for this call of the model."""
        for ws in self._weights:
            device = device_of(ws.site.module)
            assert ws.site.shape is not None  # weight sites have a shape
            cells = ws.process.cell_states(ws.site.shape, self._generators(device), device)
            ws.cells = cells if ws.live is None else cells * ws.live.to(device)

    @staticmethod
    def _weight_faults(ws: _WeightSite) -> Callable[[torch.Tensor, Encoding], torch.Tensor]:
        """The values a layer computes with for ``ws``, stuck as its current draw says. The full cell:
        the largest code of an integer weight, else ``max|W|`` of the live weights."""
        def corrupt(values: torch.Tensor, encoding: Encoding) -> torch.Tensor:
            if ws.cells is None:  # the layer ran outside a call of the model
                return values
            w = values.detach()
            if isinstance(encoding, IntEncoding):
                full = (encoding.qmax - encoding.zero_point) * encoding.scale
            else:
                full = (w if ws.live is None else w * ws.live.to(w.device)).abs().max()
            return _straight_through(stuck_cells(w, ws.cells.to(w.device), full), values)
        return corrupt

    # -- training -----------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(1 - alpha) * loss_fn(model(x), y) + alpha * loss_fn(model_with_fresh_faults(x), y)``.

        Skips the pass whose weight is 0. The two parts are kept in :attr:`last`.
        """
        self._check_open()
        clean = self.loss_fn(self.model(x), y) if self.alpha < 1 else None
        faulty: torch.Tensor | None = None
        if self.alpha > 0:
            with self.faulty():
                faulty = self.loss_fn(self.model(x), y)
        self.last = (float(clean.detach()) if clean is not None else math.nan, float(faulty.detach()) if faulty is not None else math.nan)
        if faulty is None:
            assert clean is not None  # alpha = 0
            return (1 - self.alpha) * clean
        if clean is None:
            return self.alpha * faulty
        return (1 - self.alpha) * clean + self.alpha * faulty

    def convert(self) -> nn.Module:
        """End fault-tolerant training: return the plain model (it carries no FTT hook)."""
        if self._active:
            raise FaultError("convert() inside an FTT.faulty() block")
        self._converted = True
        return self.model

    def _check_open(self) -> None:
        if self._converted:
            raise FaultError("this FTT has been converted; prepare the model again")

    # -- evaluation ---------------------------------------------------------------------------
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, draws: int = 20, batch_size: int | None = None,
                 progress: bool = False) -> np.ndarray:
        """Faulty accuracy of the model on ``(x, y)`` for ``draws`` independent fault draws.

        One draw is one pass over ``x`` (in batches of ``batch_size``, default all at once): the
        weight faults of a draw are redrawn per batch, so keep ``batch_size`` None for
        one chip per draw. Runs in eval mode without gradients; an output with a NaN or an
        infinity is never correct.
        """
        from tqdm.auto import tqdm

        if not isinstance(draws, int) or draws < 1:
            raise FaultError(f"draws must be a positive integer, not {draws!r}")
        self._check_open()
        was_training = self.model.training
        self.model.eval()
        accs = []
        step = batch_size or len(x)
        try:
            with torch.no_grad():
                for _ in tqdm(range(draws), desc="fault draws", disable=not progress, leave=False):
                    with self.faulty():
                        hits = sum(count_correct(self.model(x[i:i + step]), y[i:i + step]) for i in range(0, len(x), step))
                    accs.append(hits / len(x))
        finally:
            self.model.train(was_training)
        return np.array(accs)


def _range_aware_faults(proc: FeatureFaults, x: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
    """Fresh feature faults on ``x`` whose values equal :meth:`FeatureFaults.corrupt`'s, with a
    gradient that also sees the fault's dependence on the sample's range ``max|x|``.

    A fault's bias is ``+-2**(k-7) * 2**scale`` and its clamp ``+-2**scale``, with
    ``2**scale = ceil_pow2(max|x|)``; backward treats ``2**scale`` as ``c * max|x|`` (``c`` the
    constant ratio of the forward pass), as a straight-through estimator of the rounding. A
    faulty feature passes its gradient to ``x`` unchanged (straight through) unless clamped (then
    to the range only); a clean feature is the identity.
    """
    flat = x.reshape(x.shape[0] if x.dim() else 1, -1)
    hit, bits = proc.draw(tuple(flat.shape), m, generator, x.device)
    if not len(hit):
        return x
    rows = hit // flat.shape[1]
    scale = fixed_point_scale(flat)[rows]
    top = flat.abs().amax(1)[rows]
    bound = torch.ldexp(torch.ones_like(top), scale.to(top.dtype))  # 2**scale, exact
    ratio = (bound / top.detach().clamp_min(torch.finfo(top.dtype).tiny)).detach()
    d_bound = (top - top.detach()) * ratio  # zero in value; carries d(2**scale)/d(max|x|)
    clean = flat.reshape(-1)[hit]
    exact = add_bit_bias(clean.detach(), bits, scale)
    unit = bias_values(bits, torch.zeros_like(scale), exact.dtype)  # bias / 2**scale
    carrier = torch.where(exact >= bound, d_bound, torch.where(exact <= -bound, -d_bound, (clean - clean.detach()) + unit * d_bound))
    return flat.reshape(-1).index_put((hit,), exact + carrier).view(x.shape)


def _live_mask(site: Site) -> torch.Tensor | None:
    if site.live is None:
        return None
    assert site.shape is not None and site.numel is not None
    mask = torch.zeros(site.numel, dtype=torch.bool)
    mask[torch.from_numpy(site.live)] = True
    return mask.view(site.shape)


def prepare(model: nn.Module, faults: FaultProcess | Sequence[FaultProcess], *, alpha: float = 0.5,
            example: Any = None, seed: int = 0, loss_fn: LossFn | None = None, range_gradient: bool = True) -> FTT:
    """Prepare ``model`` for fault-tolerant training (see :class:`FTT`); the model is not modified."""
    return FTT(model, faults, alpha=alpha, example=example, seed=seed, loss_fn=loss_fn, range_gradient=range_gradient)


def convert(ftt: FTT) -> nn.Module:
    """End fault-tolerant training: the plain model (see :meth:`FTT.convert`)."""
    return ftt.convert()


def faulty_accuracy(model: nn.Module, faults: FaultProcess | Sequence[FaultProcess], x: torch.Tensor, y: torch.Tensor,
                    *, draws: int = 20, seed: int = 0, progress: bool = False) -> np.ndarray:
    """Accuracy of ``model`` on ``(x, y)`` under ``draws`` independent draws of ``faults`` (one
    forward pass over all of ``x`` per draw). The same ``seed`` gives the same random numbers on
    models of the same shape, so two models are compared on paired draws.

    Example:
        >>> import torch
        >>> from resil.training.ftnas import AdSAF
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3))
        >>> faulty_accuracy(net, AdSAF(p=0.0), torch.rand(6, 4), torch.zeros(6, dtype=torch.long), draws=2).shape
        (2,)
    """
    return FTT(model, faults, seed=seed).accuracy(x, y, draws=draws, progress=progress)


# -- normal vs FTT training of a reference model or of yours, compared --------------------------

@dataclass
class FTTResult:
    """Normal vs fault-tolerant training of one model under one fault process.

    ``model`` is the bundled name, the source string or the class name of a live model.

    Accuracies are fractions; ``*_faulty`` hold one accuracy per fault draw (the same draws for
    both models). :meth:`to_dict` gives a JSON-ready dict.
    """

    model: str
    faults: str
    alpha: float
    epochs: int
    range_gradient: bool
    clean_normal: float
    clean_ftt: float
    faulty_normal: list[float]
    faulty_ftt: list[float]
    seconds: float
    trained: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def faulty_gain(self) -> float:
        """Mean faulty accuracy gained by FTT (fraction)."""
        return float(np.mean(self.faulty_ftt) - np.mean(self.faulty_normal))

    @property
    def clean_drop(self) -> float:
        """Clean accuracy lost by FTT (fraction)."""
        return self.clean_normal - self.clean_ftt

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("trained")
        d.update(faulty_normal_mean=float(np.mean(self.faulty_normal)), faulty_ftt_mean=float(np.mean(self.faulty_ftt)),
                 faulty_gain=self.faulty_gain, clean_drop=self.clean_drop)
        return d


def train_ftt(model: nn.Module, data: Any, recipe: Any, faults: FaultProcess | Sequence[FaultProcess], *,
              alpha: float = 0.5, seed: int = 0, range_gradient: bool = True) -> nn.Module:
    """Train ``model`` on ``data`` (a :class:`resil.models.Dataset`) with a :class:`resil.models.Recipe`
    and the FTT loss; returns the plain model in eval mode."""
    from .recipe import train

    # no example: a forward would move training-mode statistics
    ftt = prepare(model, faults, alpha=alpha, seed=seed, range_gradient=range_gradient)
    train(model, data, recipe, loss=ftt.loss)
    return ftt.convert().eval()


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``. Tensors that a forward pre-hook computes into plain attributes (a
    pruned layer's masked weight), which ``copy.deepcopy`` refuses, are
    copied detached: the hook recomputes them from the copied parameters."""
    computed = {id(v): v.detach().clone() for m in model.modules() for v in vars(m).values()
                if isinstance(v, torch.Tensor) and v.grad_fn is not None}
    return copy.deepcopy(model, computed)


def _class_labels(y: torch.Tensor | None, what: str) -> torch.Tensor:
    """``y`` checked to be integer class indices >= 0, one per input."""
    if y is None:
        raise FaultError(f"{what} has no labels (y); training and accuracy need integer class labels")
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise FaultError(f"{what}: labels must be integer class indices, one per input; got {y.dtype} labels of shape {tuple(y.shape)}")
    if len(y) and int(y.min()) < 0:
        raise FaultError(f"{what}: labels must be class indices >= 0, got {int(y.min())}")
    return y


def check_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, what: str = "the data") -> None:
    """Raise unless ``y`` are integer class labels and ``model`` maps the first inputs of ``x`` to
    class scores ``[B, classes]`` that every label indexes. Runs one forward pass
    (:func:`resil.campaign.sources.check_forward`) on a copy of the model, so no training-mode
    statistic of the model moves; ``what`` names the data in the errors.

    Example:
        >>> check_classifier(torch.nn.Linear(4, 3), torch.zeros(5, 4), torch.tensor([0, 1, 2, 2, 3]), "train.npz")
        Traceback (most recent call last):
        ...
        resil.errors.FaultError: train.npz: the labels go up to 3 but the model outputs 3 class scores
    """
    y = _class_labels(y, what)
    try:
        out = check_forward(_copy(model), x)
    except FaultError as e:
        raise FaultError(f"{what}: {e}") from e
    if out.dim() != 2:
        raise FaultError(f"{what}: the model's output has shape {tuple(out.shape)} for inputs of shape {tuple(x[:2].shape)}; "
                         "training needs class scores [batch, classes]")
    if len(y) and int(y.max()) >= out.shape[1]:
        raise FaultError(f"{what}: the labels go up to {int(y.max())} but the model outputs {out.shape[1]} class scores")


SPLITS = ("x_train", "y_train", "x_test", "y_test")


def as_dataset(data: Any, name: str = "data") -> Dataset:
    """Training and test data as a :class:`resil.models.Dataset`: a Dataset as it is, or
    ``(x_train, y_train, x_test, y_test)`` as a tuple or a dict with those keys (tensors or numpy
    arrays, read by :func:`resil.campaign.sources.as_data`; integer class labels).

    Example:
        >>> import numpy as np
        >>> d = as_dataset((np.zeros((4, 2), np.float32), np.array([0, 1, 2, 1]), torch.zeros(2, 2), torch.tensor([1, 0])))
        >>> tuple(d.x_train.shape), d.y_test.tolist(), d.classes
        ((4, 2), [1, 0], 3)
    """
    from .data import Dataset

    if isinstance(data, Dataset):
        return data
    if isinstance(data, Mapping):
        missing = [k for k in SPLITS if k not in data]
        if missing:
            raise FaultError(f"the data dict has no {', '.join(missing)}; it needs {', '.join(SPLITS)}")
        parts = [data[k] for k in SPLITS]
    elif isinstance(data, (tuple, list)) and len(data) == 4:
        parts = list(data)
    else:
        got = f"a {type(data).__name__} of {len(data)} entries" if isinstance(data, (tuple, list)) else f"a {type(data).__name__}"
        raise FaultError(f"data must be a resil.models.Dataset or (x_train, y_train, x_test, y_test) as a tuple or a dict, got {got}")
    splits = []
    for what, x, y in (("the training data", *parts[:2]), ("the test data", *parts[2:])):
        try:
            x, y = as_data((x, y))
        except FaultError as e:
            raise FaultError(f"{what}: {e}") from e
        splits += [x, _class_labels(y, what)]
    x_train, y_train, x_test, y_test = splits
    return Dataset(name, x_train, y_train, x_test, y_test, classes=int(max(y_train.max(), y_test.max())) + 1)


def run_ftt(model: str | nn.Module, faults: FaultProcess | Sequence[FaultProcess], *, data: Any = None, recipe: Recipe | None = None,
            alpha: float = 0.5, epochs: int | None = None, draws: int = 20, seed: int = 0, eval_seed: int = 1,
            normal: nn.Module | None = None, range_gradient: bool = True, progress: bool = False) -> FTTResult:
    """Harden a model with FTT and compare it with normal training of the same model.

    ``model`` is a bundled reference name, a live ``nn.Module`` or a source string of
    :func:`resil.campaign.sources.load_model` (``package.module:factory``, ``file.py:factory``).
    ``data`` holds the training and test data (see :func:`as_dataset`); a bundled model defaults to
    its bundled split, any other model needs it.

    Both arms train with the same :class:`resil.models.Recipe` (epochs, learning rate, batch size
    and data order; ``epochs`` overrides): ``recipe``, by default the bundled model's own, else
    ``Recipe()``. The normal arm trains with the plain cross-entropy, the FTT arm with the FTT loss.
    A bundled model trained from scratch (``dense-cnn``, ``snn``, ``int8``, ``int4``) is built from
    the recipe's seed, a fine-tuned one (``pruned-*``, ``structured-50``) starts from its shipped
    checkpoint; any other model starts, in both arms, from a deep copy of the given one (which is
    not modified). Each arm first sets the global torch seed to the recipe's. ``normal`` skips training the
    normal arm (pass the model it would give, e.g. ``resil.models.load(name)`` for a from-scratch
    reference). Clean accuracy is on the test set; faulty accuracy on the test set for ``draws``
    fault draws, paired between the two arms. Runs single-threaded.

    Raises:
        FaultError: for a bad argument, a model without data, or data the model does not
            classify (checked before training: see :func:`check_classifier`).

    Example (about a second):
        >>> from resil.training.ftnas import AdSAF
        >>> r = run_ftt("dense-cnn", AdSAF(p=0.08), alpha=0.7, epochs=1, draws=2)
        >>> sorted(r.to_dict())[:4], len(r.faulty_ftt)
        (['alpha', 'clean_drop', 'clean_ftt', 'clean_normal'], 2)

    Your own model and data (a fraction of a second):
        >>> from resil.models import Recipe
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x, y = torch.rand(40, 1, 4, 4), torch.randint(0, 3, (40,))
        >>> r = run_ftt(net, AdSAF(p=0.08), data=(x[:32], y[:32], x[32:], y[32:]), recipe=Recipe(epochs=1, batch_size=16),
        ...             draws=2)
        >>> r.model, r.epochs, len(r.faulty_normal), r.trained is not net
        ('Sequential', 1, 2, True)
    """
    from .recipe import Recipe, accuracy, single_thread, train
    from .references import training_reference

    procs = processes(faults)
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise FaultError(f"epochs must be a positive integer, not {epochs!r}")
    if not 0.0 <= alpha <= 1.0:
        raise FaultError(f"alpha must be in [0, 1], not {alpha!r}")
    if recipe is not None and not isinstance(recipe, Recipe):
        raise FaultError(f"recipe must be a resil.models.Recipe, not a {type(recipe).__name__}")
    ref = training_reference(model) if isinstance(model, str) else None
    if isinstance(model, str):
        label, given = model, None if ref is not None else load_model(model)
    elif isinstance(model, nn.Module):
        label, given = type(model).__name__, model
    else:
        raise FaultError(f"model must be a bundled name, a source string or a torch.nn.Module, not a {type(model).__name__}")
    if ref is None and data is None:
        raise FaultError(f"model {label!r} is not a bundled reference model, so it has no data of its own: pass "
                         "data=(x_train, y_train, x_test, y_test) or a resil.models.Dataset")
    base = recipe if recipe is not None else ref.recipe if ref is not None else Recipe()
    recipe = base if epochs is None else replace(base, epochs=epochs)

    def start_model() -> nn.Module:
        torch.manual_seed(recipe.seed)
        if ref is None:
            assert given is not None  # every model but a bundled one
            return _copy(given)
        return ref.start()

    start = time.perf_counter()
    with single_thread():
        if data is None:
            assert ref is not None  # only a bundled model may come without data
            data = ref.data()
        else:
            data = as_dataset(data)
            probe = start_model()
            check_classifier(probe, data.x_train, data.y_train, "the training data")
            check_classifier(probe, data.x_test, data.y_test, "the test data")
        if normal is None:
            normal = train(start_model(), data, recipe)
        hardened = train_ftt(start_model(), data, recipe, procs, alpha=alpha, seed=seed, range_gradient=range_gradient)
        normal.eval()
        x, y = data.x_test, data.y_test
        result = FTTResult(
            model=label, faults=" + ".join(process_spec(p) for p in procs), alpha=float(alpha), epochs=recipe.epochs,
            range_gradient=bool(range_gradient),
            clean_normal=accuracy(normal, x, y), clean_ftt=accuracy(hardened, x, y),
            faulty_normal=faulty_accuracy(normal, procs, x, y, draws=draws, seed=eval_seed, progress=progress).tolist(),
            faulty_ftt=faulty_accuracy(hardened, procs, x, y, draws=draws, seed=eval_seed, progress=progress).tolist(),
            seconds=0.0, trained=hardened)
    result.seconds = time.perf_counter() - start
    return result
