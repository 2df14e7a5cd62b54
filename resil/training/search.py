"""Fault-tolerant architecture search (a small FT-NAS) over digits CNNs.

The search space (:class:`SearchSpace`) holds CNNs of the reference shape ``conv1 - act -
conv2 - act - pool - fc1 - act - fc2`` (:class:`Arch`), with choices of widths, kernel size
(3x3 or 5x5), pooling (max or average), activation (ReLU, ReLU6 or ``hardtanh`` = Hardtanh(0, 1),
a ReLU clipped at 1: clipped activations bound what a fault can add to a feature) and
quantization (float32, or Brevitas int8/int4 through :func:`resil.adapters.qat.digits_qcnn`,
which fixes the other operations to the reference ones) and the classifier head: ``single``, or
``tmr``, the output layer computed three times and the elementwise median taken
(:class:`MedianOf`: time redundancy, as a spiking network's time steps; it masks a transient
feature fault in one of the three runs, costs 2 x 10 x hidden extra MACs and no parameter, and
does nothing against faults in stored weights, which the three runs share). Candidates are capped at a parameter
budget (default: the dense reference CNN's 38,282 weights and biases).

:func:`search` runs a small regularized evolution (random initial population, then tournament
selection and one-gene mutations, the oldest member retired each step; no weight sharing). Every
candidate is trained briefly (with FTT, :func:`resil.training.train_ftt`, unless ``alpha = 0``)
on the training data minus a validation split, and scored on that split by FT-NAS's reward

    R = (1 - beta) * clean accuracy + beta * faulty accuracy

(``beta`` = 0.5 for MiBB/iBB feature faults, 0.2 for adSAF weight faults, as in FT-NAS). The
best is retrained on the whole training set and evaluated on the test set, next to the bundled
reference models (:func:`compare`) under the same fault process and the same draw seed
(:func:`resil.training.faulty_accuracy`: models of the same shape see identical faults).

Example:
    >>> arch = Arch(conv1=8, conv2=16, hidden=32, act="hardtanh")
    >>> arch.describe(), arch.params
    ('Conv8k3-Conv16k3-maxpool-FC32-FC10 hardtanh', 9802)
    >>> reward(0.98, 0.90, beta=0.2)
    0.964
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..discovery import sites as list_sites
from ..errors import FaultError
from .ftnas import AdSAF, FaultProcess, process_spec, processes
from .ftt import faulty_accuracy, run_ftt, train_ftt

__all__ = [
    "ACTIVATIONS",
    "Arch",
    "ArchSearchConfig",
    "Candidate",
    "ComparisonRow",
    "MedianOf",
    "SearchResult",
    "SearchSpace",
    "compare",
    "default_beta",
    "live_parameters",
    "load_found",
    "param_count",
    "reward",
    "save_found",
    "search",
]

#: activation choices: name -> module factory (``hardtanh`` is Hardtanh(0, 1): a ReLU clipped at 1)
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardtanh": lambda: nn.Hardtanh(0.0, 1.0)}
POOLS: dict[str, Callable[[int], nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
#: the dense reference CNN's weights and biases (``dense-cnn``): the default parameter budget
DENSE_CNN_PARAMS = 38_282
HEADS = ("single", "tmr")


class MedianOf(nn.Module):
    """Run ``layer`` ``n`` times on the same input and return the elementwise median.

    Recomputation (time redundancy): a transient fault in fewer than half of the runs is masked.
    The weights are stored once, so faults in them hit every run alike. Fault hooks on ``layer``
    fire once per run (``<name>.layer:out``), with independent draws.

    Example:
        >>> lin = nn.Linear(3, 2)
        >>> calls = []
        >>> def fault_in_second_run(m, a, out):
        ...     calls.append(1)
        ...     return out + 100.0 if len(calls) == 2 else out
        >>> h = lin.register_forward_hook(fault_in_second_run)
        >>> x = torch.rand(4, 3)
        >>> torch.equal(MedianOf(lin)(x), x @ lin.weight.T + lin.bias), len(calls)
        (True, 3)
    """

    def __init__(self, layer: nn.Module, n: int = 3) -> None:
        super().__init__()
        if n < 1 or n % 2 == 0:
            raise FaultError(f"MedianOf needs an odd number of runs, not {n!r}")
        self.layer, self.n = layer, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.n == 1:
            return self.layer(x)
        return torch.stack([self.layer(x) for _ in range(self.n)]).median(0).values


@dataclass(frozen=True)
class Arch:
    """One digits CNN: ``conv1 (k x k) - act - conv2 (k x k) - act - pool 2x2 - fc1 - act - fc2``.

    Attributes:
        conv1, conv2: output channels of the two convolutions.
        hidden: width of the hidden linear layer.
        kernel: convolution kernel size (3 or 5; 'same' padding).
        pool: ``max`` or ``avg``.
        act: ``relu``, ``relu6`` or ``hardtanh`` (Hardtanh(0, 1)).
        bits: None for float32, or a Brevitas weight/activation bit width (built by
            :func:`resil.adapters.qat.digits_qcnn`; needs kernel 3, max pool, ReLU,
            ``conv2 == 2 * conv1`` and a single head, the reference shape).
        head: ``single`` or ``tmr`` (``fc2`` is :class:`MedianOf` three runs of the output layer).

    Example:
        >>> Arch().build()(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    conv1: int = 16
    conv2: int = 32
    hidden: int = 64
    kernel: int = 3
    pool: str = "max"
    act: str = "relu"
    bits: int | None = None
    head: str = "single"

    def __post_init__(self) -> None:
        for name in ("conv1", "conv2", "hidden"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise FaultError(f"Arch {name} must be a positive integer, not {v!r}")
        if self.kernel not in (1, 3, 5, 7):
            raise FaultError(f"Arch kernel must be 1, 3, 5 or 7 (odd, 'same' padding on 8x8 images), not {self.kernel!r}")
        if self.pool not in POOLS:
            raise FaultError(f"Arch pool must be one of {sorted(POOLS)}, not {self.pool!r}")
        if self.act not in ACTIVATIONS:
            raise FaultError(f"Arch act must be one of {sorted(ACTIVATIONS)}, not {self.act!r}")
        if self.head not in HEADS:
            raise FaultError(f"Arch head must be one of {list(HEADS)}, not {self.head!r}")
        if self.bits is not None:
            if isinstance(self.bits, bool) or not isinstance(self.bits, (int, np.integer)) or not 2 <= self.bits <= 16:
                raise FaultError(f"Arch bits must be None (float32) or an integer in 2..16, not {self.bits!r}")
            if (self.kernel, self.pool, self.act, self.conv2, self.head) != (3, "max", "relu", 2 * self.conv1, "single"):
                raise FaultError("a quantized Arch is built by resil.adapters.qat.digits_qcnn: it needs kernel=3, pool='max', "
                                 f"act='relu', conv2 == 2 * conv1 and head='single', not {self.describe()}")

    @property
    def params(self) -> int:
        """Weights and biases (Brevitas activation scales not included)."""
        return param_count(self.conv1, self.conv2, self.hidden, self.kernel)

    def describe(self) -> str:
        """A short name, e.g. ``Conv16k3-Conv32k3-maxpool-FC64-FC10 relu``."""
        k = self.kernel
        kind = self.act if self.bits is None else f"int{self.bits}"
        head = "FC10x3-median" if self.head == "tmr" else "FC10"
        return f"Conv{self.conv1}k{k}-Conv{self.conv2}k{k}-{self.pool}pool-FC{self.hidden}-{head} {kind}"

    def build(self) -> nn.Sequential:
        """The untrained network (initialised from torch's global generator)."""
        if self.bits is not None:
            from resil.adapters.qat import digits_qcnn

            return digits_qcnn(int(self.bits), per_channel=self.bits < 8, width=self.conv1, hidden=self.hidden)
        act, k = ACTIVATIONS[self.act], self.kernel
        return nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(1, self.conv1, k, padding=k // 2), act1=act(),
            conv2=nn.Conv2d(self.conv1, self.conv2, k, padding=k // 2), act2=act(),
            pool=POOLS[self.pool](2), flatten=nn.Flatten(),
            fc1=nn.Linear(self.conv2 * 16, self.hidden), act3=act(),
            fc2=nn.Linear(self.hidden, 10) if self.head == "single" else MedianOf(nn.Linear(self.hidden, 10), 3),
        ))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def param_count(conv1: int, conv2: int, hidden: int, kernel: int = 3, classes: int = 10) -> int:
    """Weights and biases of an :class:`Arch` on 1x8x8 inputs (4x4 after the pool), by hand.

    Example:
        >>> param_count(16, 32, 64)      # the dense reference CNN
        38282
    """
    k2 = kernel * kernel
    return (k2 * conv1 + conv1) + (conv1 * conv2 * k2 + conv2) + (conv2 * 16 * hidden + hidden) + (hidden * classes + classes)


@dataclass(frozen=True)
class SearchSpace:
    """The choices of each :class:`Arch` gene, and a parameter budget.

    Quantized choices (``bits`` not None) take the reference operations (kernel 3, max pool,
    ReLU, ``conv2 = 2 * conv1``, single head) whatever the other genes say.

    Example:
        >>> space = SearchSpace()
        >>> a = space.sample(np.random.default_rng(0))
        >>> a.params <= space.max_params, space.mutate(a, np.random.default_rng(1)) != a
        (True, True)
    """

    conv1: tuple[int, ...] = (4, 8, 16)
    conv2: tuple[int, ...] = (8, 16, 32)
    hidden: tuple[int, ...] = (16, 32, 64)
    kernel: tuple[int, ...] = (3, 5)
    pool: tuple[str, ...] = ("max", "avg")
    act: tuple[str, ...] = ("relu", "relu6", "hardtanh")
    bits: tuple[int | None, ...] = (None, 8, 4)
    head: tuple[str, ...] = HEADS
    max_params: int = DENSE_CNN_PARAMS

    GENES = ("conv1", "conv2", "hidden", "kernel", "pool", "act", "bits", "head")

    def __post_init__(self) -> None:
        for gene in self.GENES:
            values = getattr(self, gene)
            if isinstance(values, (str, bytes)) or not isinstance(values, tuple) or not values:
                raise FaultError(f"SearchSpace {gene} must be a non-empty tuple of choices, not {values!r}")
        if isinstance(self.max_params, bool) or not isinstance(self.max_params, int) or self.max_params < 1:
            raise FaultError(f"SearchSpace max_params must be a positive integer, not {self.max_params!r}")
        Arch(**{g: getattr(self, g)[0] for g in self.GENES if g != "bits"})  # bad choices fail here
        for gene in self.GENES:
            for v in getattr(self, gene):
                self._canonical({**{g: getattr(self, g)[0] for g in self.GENES}, gene: v})
        if not self.members():
            raise FaultError(f"no architecture of the search space fits max_params={self.max_params}")

    @staticmethod
    def _canonical(genes: dict[str, Any]) -> Arch:
        if genes["bits"] is not None:
            genes = {**genes, "kernel": 3, "pool": "max", "act": "relu", "conv2": 2 * genes["conv1"], "head": "single"}
        return Arch(**genes)

    def members(self) -> list[Arch]:
        """Every distinct architecture of the space within the budget."""
        import itertools

        seen: dict[Arch, None] = {}
        for values in itertools.product(*(getattr(self, g) for g in self.GENES)):
            a = self._canonical(dict(zip(self.GENES, values, strict=True)))
            if a.params <= self.max_params:
                seen[a] = None
        return list(seen)

    def sample(self, rng: np.random.Generator) -> Arch:
        """A member drawn uniformly from :meth:`members` (so the few quantized members, which
        ignore several genes, are not over-represented)."""
        members = self.members()
        return members[int(rng.integers(len(members)))]

    def mutate(self, arch: Arch, rng: np.random.Generator) -> Arch:
        """``arch`` with one gene changed to another choice (within the budget), if any exists."""
        genes = [g for g in self.GENES if len(getattr(self, g)) > 1]
        for _ in range(200):
            g = genes[int(rng.integers(len(genes)))]
            options = [v for v in getattr(self, g) if v != getattr(arch, g)]
            child = self._canonical({**asdict(arch), g: options[int(rng.integers(len(options)))]})
            if child != arch and child.params <= self.max_params:
                return child
        return arch


def reward(clean: float, faulty: float, beta: float) -> float:
    """FT-NAS's reward ``(1 - beta) * clean + beta * faulty`` (rounded to 12 digits)."""
    return round((1.0 - beta) * clean + beta * faulty, 12)


def default_beta(faults: FaultProcess | Sequence[FaultProcess]) -> float:
    """FT-NAS's reward weight: 0.5 for feature faults (MiBB/iBB), 0.2 for adSAF weight faults.

    Example:
        >>> from resil.training.ftnas import MiBB
        >>> default_beta(AdSAF()), default_beta(MiBB())
        (0.2, 0.5)
    """
    procs = processes(faults)
    kinds = {isinstance(p, AdSAF) for p in procs}
    if len(kinds) > 1:
        raise FaultError("feature and weight faults together: give beta explicitly (FT-NAS used 0.5 for MiBB, 0.2 for adSAF)")
    return 0.2 if kinds == {True} else 0.5


@dataclass(frozen=True)
class Candidate:
    """One evaluated architecture: validation accuracies (fractions) and reward."""

    index: int
    arch: Arch
    parent: int | None
    params: int
    clean: float
    faulty: float
    faulty_std: float
    reward: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(arch=self.arch.describe(), **{f"arch_{k}": v for k, v in self.arch.to_dict().items()})
        return d


@dataclass(frozen=True)
class ComparisonRow:
    """One model of the comparison table, on the test set (accuracies as fractions).

    Attributes:
        model: the model's label.
        training: ``normal`` or ``FTT alpha=...``.
        params: parameters (all stored cells, pruned ones included).
        live: parameters that can hold a nonzero value (unpruned).
        clean: clean test accuracy.
        faulty: test accuracy per fault draw.
        reward: FT-NAS reward with the search's beta.
    """

    model: str
    training: str
    params: int
    live: int
    clean: float
    faulty: tuple[float, ...]
    reward: float

    @property
    def faulty_mean(self) -> float:
        return float(np.mean(self.faulty))

    @property
    def faulty_std(self) -> float:
        return float(np.std(self.faulty, ddof=1)) if len(self.faulty) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "training": self.training, "params": self.params, "live": self.live, "clean": self.clean,
                "faulty_mean": self.faulty_mean, "faulty_std": self.faulty_std, "reward": self.reward, "draws": len(self.faulty)}


def live_parameters(model: nn.Module) -> tuple[int, int]:
    """(parameters, unpruned parameters) of ``model``: the elements its stored sites do not hold (a
    ``torch.nn.utils.prune`` mask's zeros, :attr:`resil.Site.live`) are not live.

    Example:
        >>> from torch.nn.utils import prune
        >>> lin = torch.nn.Linear(4, 2); _ = prune.l1_unstructured(lin, "weight", amount=0.5)
        >>> live_parameters(lin)
        (10, 6)
    """
    total = sum(p.numel() for p in model.parameters())
    pruned = sum((s.numel or 0) - len(s.live) for s in list_sites(model) if not s.batched and s.live is not None)
    return total, total - pruned


def compare(models: dict[str, tuple[nn.Module, str]], faults: FaultProcess | Sequence[FaultProcess], x: torch.Tensor,
            y: torch.Tensor, *, beta: float, draws: int = 20, seed: int = 1, progress: bool = False) -> list[ComparisonRow]:
    """Clean and faulty accuracy of several models under the same fault process and draw seed.

    Args:
        models: label -> (model, how it was trained).
        faults: the fault process(es).
        x, y: evaluation data.
        beta: reward weight.
        draws: fault draws per model (one forward pass over ``x`` each).
        seed: draw seed, the same for every model (identical draws for models of the same shape).

    Example:
        >>> from resil.training.ftnas import AdSAF
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.rand(20, 1, 8, 8), torch.randint(0, 10, (20,))
        >>> rows = compare({"tiny": (Arch(4, 8, 16).build().eval(), "untrained")}, AdSAF(p=0.0), x, y, beta=0.2, draws=2)
        >>> rows[0].faulty == (rows[0].clean, rows[0].clean)
        True
    """
    from .recipe import accuracy

    procs = processes(faults)
    rows = []
    for label, (model, training) in tqdm(models.items(), desc="comparing", disable=not progress, leave=False):
        model.eval()
        clean = accuracy(model, x, y)
        faulty = faulty_accuracy(model, procs, x, y, draws=draws, seed=seed)
        total, live = live_parameters(model)
        rows.append(ComparisonRow(label, training, total, live, clean, tuple(float(v) for v in faulty),
                                  reward(clean, float(np.mean(faulty)), beta)))
    return rows


@dataclass
class SearchResult:
    """The outcome of :func:`search`.

    Attributes:
        arch: the best architecture (highest validation reward).
        model: it, retrained on the whole training set (eval mode).
        faults: the fault process, as text.
        beta, alpha: reward weight and FTT weight (0 = normal training).
        candidates: every evaluated candidate, in order.
        comparison: the found model first, then the references, on the test set.
        seconds: wall time.
    """

    arch: Arch
    model: nn.Module = field(repr=False)
    faults: str
    beta: float
    alpha: float
    candidates: list[Candidate]
    comparison: list[ComparisonRow]
    seconds: float

    @property
    def found(self) -> ComparisonRow:
        return self.comparison[0]

    def beats(self, training: str | None = "normal") -> bool:
        """Whether the found model's mean faulty accuracy beats every reference row (of the given training)."""
        refs = [r for r in self.comparison[1:] if training is None or r.training == training]
        return bool(refs) and all(self.found.faulty_mean > r.faulty_mean for r in refs)

    def table(self) -> str:
        """The comparison as text."""
        w = max([5, *(len(r.model) for r in self.comparison)])
        head = f"{'model':{w}s} {'training':14s} {'params':>7s} {'live':>7s} {'clean':>7s} {'faulty (mean +- std)':>21s} {'reward':>7s}"
        lines = [head, "-" * len(head)]
        for r in self.comparison:
            lines.append(f"{r.model:{w}s} {r.training:14s} {r.params:7d} {r.live:7d} {r.clean:7.2%} "
                         f"{r.faulty_mean:12.2%} +-{r.faulty_std:6.2%} {r.reward:7.4f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.to_dict(), "arch_name": self.arch.describe(), "faults": self.faults, "beta": self.beta,
                "alpha": self.alpha, "seconds": self.seconds, "candidates": [c.to_dict() for c in self.candidates],
                "comparison": [r.to_dict() for r in self.comparison], "beats_normal_references": self.beats("normal")}


def _check_int(name: str, v: Any, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise FaultError(f"{name} must be an integer >= {low}, not {v!r}")
    return int(v)


def _check_unit(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        raise FaultError(f"{name} must be in [0, 1], not {v!r}")
    return float(v)


#: the reference models of :func:`search`'s comparison (all of at most 38,286 parameters)
REFERENCES = ("dense-cnn", "pruned-50", "pruned-80", "structured-50", "int8", "int4", "snn")


@dataclass(frozen=True)
class ArchSearchConfig:
    """The budget and settings of :func:`search`, checked on construction.

    Attributes:
        beta: reward weight of faulty accuracy; None: FT-NAS's for the faults (:func:`default_beta`).
        candidates: architectures to evaluate in all (the first ``population`` drawn at random).
        population, tournament: regularized evolution's population and tournament sizes.
        epochs: training epochs of a candidate; ``final_epochs`` those of the retrained best.
        alpha: FTT weight of the faulty loss (0: normal training).
        lr: Adam learning rate (batches of 64, as the reference recipes).
        draws: fault draws of a candidate's validation score; ``final_draws`` on the test set.
        val_fraction: share of the training images held out (stratified) for validation.
        references: reference models to compare with (their trained models: see
            :mod:`resil.training.references`).
        reference_ftt: those of ``references`` to also train with FTT (:func:`resil.training.run_ftt`,
            their own recipes and ``alpha``) for a like-for-like comparison.
        seed: seeds the search, the split, the initialisation and the FTT fault draws.
        eval_seed: seed of the evaluation fault draws (the same for every model).

    Example:
        >>> ArchSearchConfig(beta=0.2, candidates=4, population=8).population   # at most the candidates
        4
        >>> ArchSearchConfig(lr=0)
        Traceback (most recent call last):
        ...
        resil.errors.FaultError: lr must be a positive number, not 0
    """

    beta: float | None = None
    candidates: int = 20
    population: int = 8
    tournament: int = 3
    epochs: int = 6
    final_epochs: int = 15
    alpha: float = 0.5
    lr: float = 3e-3
    draws: int = 5
    final_draws: int = 20
    val_fraction: float = 0.2
    references: tuple[str, ...] = REFERENCES
    reference_ftt: tuple[str, ...] = ()
    seed: int = 0
    eval_seed: int = 1

    def __post_init__(self) -> None:
        fix = object.__setattr__
        if self.beta is not None:
            fix(self, "beta", _check_unit("beta", self.beta))
        fix(self, "alpha", _check_unit("alpha", self.alpha))
        for name in ("candidates", "population", "tournament", "epochs", "final_epochs", "draws", "final_draws"):
            fix(self, name, _check_int(name, getattr(self, name)))
        fix(self, "seed", _check_int("seed", self.seed, 0))
        fix(self, "eval_seed", _check_int("eval_seed", self.eval_seed, 0))
        lr = self.lr
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
            raise FaultError(f"lr must be a positive number, not {lr!r}")
        if not isinstance(self.val_fraction, (int, float)) or not 0.0 < self.val_fraction < 1.0:
            raise FaultError(f"val_fraction must be in (0, 1), not {self.val_fraction!r}")
        self._check_references()
        fix(self, "population", min(self.population, self.candidates))

    def _check_references(self) -> None:
        from .references import training_references

        fix = object.__setattr__
        fix(self, "references", tuple(self.references))
        fix(self, "reference_ftt", tuple(self.reference_ftt))
        known = training_references()
        unknown = [n for n in (*self.references, *self.reference_ftt) if n not in known]
        if unknown:
            raise FaultError(f"unknown reference model(s) {unknown}; bundled: {', '.join(known)}")
        missing = [n for n in self.reference_ftt if n not in self.references]
        if missing:
            raise FaultError(f"reference_ftt names models not in references: {missing}")


def search(faults: FaultProcess | Sequence[FaultProcess], config: ArchSearchConfig | None = None, *,
           space: SearchSpace | None = None, progress: bool = True) -> SearchResult:
    """Search a fault-tolerant digits CNN under ``faults`` (see the module docstring).

    Args:
        faults: MiBB, IBB or AdSAF process(es), used for FTT, for the reward and for the comparison.
        config: the budget and settings (default :class:`ArchSearchConfig`).
        space: the search space (default :class:`SearchSpace`).
        progress: tqdm bars.

    Returns:
        A :class:`SearchResult`.

    Example (a few seconds):
        >>> from resil.training.ftnas import AdSAF
        >>> space = SearchSpace(conv1=(4,), conv2=(8,), hidden=(16,), kernel=(3,), pool=("max",), bits=(None,))
        >>> config = ArchSearchConfig(candidates=2, population=2, epochs=1, final_epochs=1, draws=1, final_draws=1, references=())
        >>> r = search(AdSAF(p=0.08), config, space=space, progress=False)
        >>> r.arch in space.members(), len(r.candidates), r.beta
        (True, 2, 0.2)
    """
    start = time.perf_counter()
    procs = processes(faults)
    config = ArchSearchConfig() if config is None else config
    if not isinstance(config, ArchSearchConfig):
        raise FaultError(f"config must be an ArchSearchConfig, not {type(config).__name__}")
    space = SearchSpace() if space is None else space
    if not isinstance(space, SearchSpace):
        raise FaultError(f"space must be a SearchSpace, not {type(space).__name__}")
    return _Search(config, space, procs, progress).run(start)


class _Search:
    """One run of :func:`search`: regularized evolution on a validation split, then the comparison."""

    def __init__(self, config: ArchSearchConfig, space: SearchSpace, procs: tuple[FaultProcess, ...], progress: bool) -> None:
        from .data import Dataset, stratified_split
        from .references import training_data

        self.config, self.space, self.procs, self.progress = config, space, procs, progress
        self.beta = default_beta(procs) if config.beta is None else config.beta
        self.data = training_data("digits")
        fit_rows, val_rows = stratified_split(self.data.y_train.numpy(), config.val_fraction, config.seed)
        self.split = Dataset("digits-search", self.data.x_train[fit_rows], self.data.y_train[fit_rows], self.data.x_train[val_rows],
                             self.data.y_train[val_rows], self.data.classes)
        self.rng = np.random.default_rng(config.seed)
        self.members = space.members()
        self.history: list[Candidate] = []
        self.by_arch: dict[Arch, Candidate] = {}
        self.alive: deque[Candidate] = deque()

    def fit(self, arch: Arch, d: Any, n_epochs: int) -> nn.Module:
        from .recipe import Recipe, train

        c = self.config
        torch.manual_seed(c.seed)
        recipe = Recipe(epochs=n_epochs, lr=float(c.lr), seed=c.seed)
        if c.alpha > 0:
            return train_ftt(arch.build(), d, recipe, self.procs, alpha=c.alpha, seed=c.seed)
        return train(arch.build(), d, recipe)

    def evaluate(self, arch: Arch, parent: int | None) -> Candidate:
        from .recipe import accuracy

        c, t0 = self.config, time.perf_counter()
        model = self.fit(arch, self.split, c.epochs)
        clean = accuracy(model, self.split.x_test, self.split.y_test)
        f = faulty_accuracy(model, self.procs, self.split.x_test, self.split.y_test, draws=c.draws, seed=c.eval_seed)
        cand = Candidate(len(self.history), arch, parent, arch.params, clean, float(f.mean()), float(f.std(ddof=1)) if c.draws > 1 else 0.0,
                         reward(clean, float(f.mean()), self.beta), time.perf_counter() - t0)
        self.history.append(cand)
        self.by_arch[arch] = cand
        return cand

    def _untried(self) -> Arch:
        untried = [a for a in self.members if a not in self.by_arch]
        return untried[int(self.rng.integers(len(untried)))]

    def next_arch(self) -> tuple[Arch, int | None]:
        """A random member while the population fills, then a mutation of a tournament's winner."""
        if len(self.history) < self.config.population:
            arch = self.space.sample(self.rng)
            return (self._untried() if arch in self.by_arch else arch), None
        alive = self.alive
        picks = self.rng.choice(len(alive), size=min(self.config.tournament, len(alive)), replace=False)
        best_parent = max((alive[int(i)] for i in picks), key=lambda c: (c.reward, -c.params))
        arch = self.space.mutate(best_parent.arch, self.rng)
        for _ in range(50):
            if arch not in self.by_arch:
                break
            arch = self.space.mutate(arch, self.rng)
        if arch in self.by_arch:  # the neighbourhood is exhausted: a fresh random member
            return self._untried(), None
        return arch, best_parent.index

    def evolve(self) -> Candidate:
        """Evaluate the candidates; the best (highest reward, then fewest parameters)."""
        total = min(self.config.candidates, len(self.members))
        with tqdm(total=total, desc="architecture search", disable=not self.progress) as bar:
            while len(self.history) < total:
                self.alive.append(self.evaluate(*self.next_arch()))
                if len(self.alive) > self.config.population:
                    self.alive.popleft()
                bar.update()
                bar.set_postfix(best=f"{max(c.reward for c in self.history):.4f}")
        return max(self.history, key=lambda c: (c.reward, -c.params))

    def compare(self, best: Candidate, model: nn.Module) -> list[ComparisonRow]:
        """The found model, the references and their FTT versions on the test set, on the same fault draws."""
        from .references import training_reference

        def trained(name: str) -> nn.Module:
            ref = training_reference(name)
            assert ref is not None  # checked by ArchSearchConfig
            return ref.trained()

        c, data = self.config, self.data
        training = f"FTT alpha={c.alpha:g}" if c.alpha > 0 else "normal"
        models: dict[str, tuple[nn.Module, str]] = {f"found: {best.arch.describe()}": (model, training)}
        models.update({name: (trained(name), "normal") for name in c.references})
        rows = compare(models, self.procs, data.x_test, data.y_test, beta=self.beta, draws=c.final_draws, seed=c.eval_seed,
                       progress=self.progress)
        for name in tqdm(list(c.reference_ftt), desc="FTT of references", disable=not self.progress, leave=False):
            r = run_ftt(name, self.procs, alpha=c.alpha if c.alpha > 0 else 0.5, draws=c.final_draws, seed=c.seed, eval_seed=c.eval_seed,
                        normal=trained(name))
            assert r.trained is not None
            total_p, live = live_parameters(r.trained)
            rows.append(ComparisonRow(name, f"FTT alpha={r.alpha:g}", total_p, live, r.clean_ftt, tuple(r.faulty_ftt),
                                      reward(r.clean_ftt, float(np.mean(r.faulty_ftt)), self.beta)))
        return rows

    def run(self, start: float) -> SearchResult:
        from .recipe import single_thread

        c = self.config
        with single_thread():
            best = self.evolve()
            model = self.fit(best.arch, self.data, c.final_epochs)
            rows = self.compare(best, model)
        return SearchResult(best.arch, model, " + ".join(process_spec(p) for p in self.procs), self.beta, c.alpha, self.history, rows,
                            time.perf_counter() - start)


def save_found(result: SearchResult) -> dict[str, Any]:
    """The found model as a checkpoint dict (``arch`` and ``state_dict``), for :func:`torch.save`."""
    return {"arch": result.arch.to_dict(), "state_dict": result.model.state_dict()}


def load_found(checkpoint: dict[str, Any] | str | Any) -> tuple[Arch, nn.Module]:
    """The architecture and trained model (eval mode) of a :func:`save_found` checkpoint or its file.

    Example:
        >>> arch = Arch(conv1=4, conv2=8, hidden=16)
        >>> net = arch.build()
        >>> a, m = load_found({"arch": arch.to_dict(), "state_dict": net.state_dict()})
        >>> a == arch, torch.equal(m.fc2.weight, net.fc2.weight)
        (True, True)
    """
    if not isinstance(checkpoint, dict):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "arch" not in checkpoint or "state_dict" not in checkpoint:
        raise FaultError("not a search checkpoint: expected a dict with 'arch' and 'state_dict'")
    arch = Arch(**checkpoint["arch"])
    model = arch.build()
    model.load_state_dict(checkpoint["state_dict"])
    return arch, model.eval()
