"""Outcome criteria: when a faulty output counts as wrong, and when a scenario is critical.

A criterion is a frozen dataclass registered by name (``criterion = "top1"`` in a campaign file,
``'deviation:{"threshold": 0.05}'`` with parameters). Every study (campaigns, PVF, the
importance-sampling precision study, fault-aware training's critical-fault search, accuracy under
faults in training) judges outputs through one of them, and one rule holds everywhere: **an
output with a NaN or an infinity is never correct and always counts as non-finite**, whatever its
argmax.

Per input, a faulty output is ``masked`` (bit-identical to the golden output), ``non_finite``,
``critical`` (:meth:`Criterion.wrong` against the golden output) or ``tolerable`` (changed, not
wrong). ``correct`` counts inputs whose output agrees with the label (:meth:`Criterion.correct`).
Per scenario, :meth:`Criterion.is_critical` decides from those counts (default: some input
failed; :class:`AccuracyDrop`: accuracy fell by ``theta`` or more).

Your own criterion::

    @resil.campaign.register_criterion("margin")
    @dataclass(frozen=True)
    class Margin(resil.campaign.Criterion):
        gap: float = 1.0
        def wrong(self, outputs, golden, labels):          # outputs [R, N, K], golden [N, K]
            top2 = outputs.topk(2, dim=2).values
            return (top2[..., 0] - top2[..., 1]) < self.gap

Example:
    >>> import torch
    >>> golden = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); labels = torch.tensor([0, 0])
    >>> faulty = torch.tensor([[[0.0, 1.0], [0.0, float("nan")]]])      # one run over 2 inputs
    >>> {k: v.tolist() for k, v in judge(Top1(), faulty, golden, labels).items()}
    {'masked': [0], 'tolerable': [0], 'critical': [1], 'non_finite': [1], 'correct': [0]}
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np
import torch

from ..errors import FaultError
from ..registry import Registry

__all__ = [
    "OUTCOMES", "AccuracyDrop", "Criterion", "Deviation", "Top1", "TopK", "check_class_indices", "count_correct",
    "criterion_from_spec", "criterion_names",
    "judge",
    "register_criterion",
]

#: per-input outcomes, one of each per input
OUTCOMES = ("masked", "tolerable", "critical", "non_finite")

_CRITERIA: Registry[Criterion] = Registry("criterion")
C = TypeVar("C", bound="type[Criterion]")


def register_criterion(name: str) -> Callable[[C], C]:
    """Class decorator registering a criterion (a frozen dataclass) under ``name``."""
    return _CRITERIA.register(name)


def criterion_names() -> list[str]:
    """Names of every registered criterion."""
    return _CRITERIA.names()


def criterion_from_spec(spec: str | Criterion) -> Criterion:
    """A criterion from its spec string (``"top1"``, ``'topk:{"k": 5}'``), or the criterion itself.

    Example:
        >>> criterion_from_spec('deviation:{"threshold": 0.1, "relative": true}')
        Deviation(threshold=0.1, relative=True)
    """
    if isinstance(spec, Criterion):
        return spec
    return _CRITERIA.from_spec(spec)


def _number(name: str, v: object, low: float, high: float = math.inf) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v) or not low <= v <= high:
        span = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise FaultError(f"{name} must be a finite number {span}, got {v!r}")


def check_class_indices(labels: torch.Tensor, golden: torch.Tensor) -> None:
    """Raise a :class:`~resil.errors.FaultError` unless ``labels`` hold one value per input of
    outputs ``golden`` ``[N, K]``; warn where they are not class indices in ``0..K-1``.

    Example:
        >>> try:
        ...     check_class_indices(torch.eye(3)[[0, 2]], torch.zeros(2, 3))
        ... except FaultError as e:
        ...     print(str(e)[:60])
        labels have shape [2, 3]: one class index per input is expec
    """
    n, k = golden.shape[0], golden[0].numel()
    if labels.numel() != n:
        raise FaultError(f"labels have shape {list(labels.shape)}: one class index per input is expected (one-hot or "
                         "probability labels? pass labels.argmax(1))")
    values = labels.reshape(-1).double()
    if bool((values != values.round()).any()):
        warnings.warn("labels are not whole numbers, so no output matches its label: the 'correct' counts are 0 (a criterion "
                      "such as 'deviation' judges float targets)", RuntimeWarning, stacklevel=4)
    elif int(values.min()) < 0 or int(values.max()) >= k:
        warnings.warn(f"labels run from {int(values.min())} to {int(values.max())}, but the model gives {k} scores per input "
                      f"(classes 0..{k - 1}): inputs with other labels never count as correct", RuntimeWarning, stacklevel=4)


class Criterion:
    """Base class of criteria (subclasses are frozen dataclasses registered by name)."""

    registered_name: ClassVar[str] = ""

    def wrong(self, outputs: torch.Tensor, golden: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Per run and input (``[R, N]`` booleans): whether the faulty output is wrong against the
        golden output. ``outputs`` is ``[R, N, K]``, ``golden`` ``[N, K]`` (outputs flattened per input)."""
        raise NotImplementedError

    def correct(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per run and input: whether the output agrees with the label (default: argmax equals the label)."""
        return outputs.argmax(2) == labels.reshape(1, -1).to(outputs.device)

    def check_labels(self, labels: torch.Tensor, golden: torch.Tensor) -> None:
        """Raise a :class:`~resil.errors.FaultError` naming what is wrong when ``labels`` cannot be
        judged against outputs like ``golden`` ``[N, K]``: by default one class index in
        ``0..K-1`` per input (:func:`check_class_indices`), unless a subclass judges labels with
        its own :meth:`correct`."""
        if type(self).correct is Criterion.correct:
            check_class_indices(labels, golden)

    def is_critical(self, counts: Mapping[str, np.ndarray], inputs: int, golden_correct: int) -> np.ndarray:
        """Per scenario, from its outcome counts over ``inputs`` inputs: default, some input failed."""
        return (counts["critical"] + counts["non_finite"]) > 0

    def spec(self) -> str:
        """The string :func:`criterion_from_spec` turns back into an equal criterion."""
        return _CRITERIA.spec(self)


@register_criterion("top1")
@dataclass(frozen=True)
class Top1(Criterion):
    """Classification: wrong when the top-1 class differs from the golden top-1.

    Example:
        >>> Top1().wrong(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]), torch.tensor([[0.0, 1.0]] * 2), None).tolist()
        [[False, True]]
    """

    def wrong(self, outputs: torch.Tensor, golden: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return outputs.argmax(2) != golden.argmax(1).unsqueeze(0)

    def __str__(self) -> str:
        return "top-1 differs from golden top-1"


@register_criterion("topk")
@dataclass(frozen=True)
class TopK(Criterion):
    """Wrong when the golden top-1 class is not among the faulty output's top ``k``; correct when
    the label is among them.

    Example:
        >>> TopK(2).wrong(torch.tensor([[[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]]), torch.tensor([[2.0, 1.0, 0.0]] * 2), None).tolist()
        [[False, True]]
    """

    k: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise FaultError(f"TopK k must be an integer >= 1, got {self.k!r}")

    def _top(self, outputs: torch.Tensor) -> torch.Tensor:
        if outputs.shape[2] < self.k:
            raise FaultError(f"TopK(k={self.k}) needs at least {self.k} output scores per input, the model gives {outputs.shape[2]}")
        return outputs.topk(self.k, dim=2).indices

    def wrong(self, outputs: torch.Tensor, golden: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return ~(self._top(outputs) == golden.argmax(1).view(1, -1, 1)).any(2)

    def check_labels(self, labels: torch.Tensor, golden: torch.Tensor) -> None:
        check_class_indices(labels, golden)

    def correct(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (self._top(outputs) == labels.reshape(1, -1, 1).to(outputs.device)).any(2)

    def __str__(self) -> str:
        return f"golden top-1 not in the top {self.k}"


@register_criterion("deviation")
@dataclass(frozen=True)
class Deviation(Criterion):
    """Regression / CTR: wrong when some output deviates from the golden one by more than
    ``threshold``, absolute (``|y - y_golden| > threshold``) or with ``relative=True`` relative
    to the input's largest golden magnitude (``> threshold * max |y_golden|``). With floating
    labels (targets of the output's shape), correct when every output is within ``threshold`` of
    its target (relative: of the target's largest magnitude); integer labels are classes, correct
    when the argmax equals them.

    Example:
        >>> Deviation(0.1).wrong(torch.tensor([[[0.55], [0.75]]]), torch.tensor([[0.5], [0.5]]), None).tolist()
        [[False, True]]
    """

    threshold: float = 0.0
    relative: bool = False

    def __post_init__(self) -> None:
        _number("Deviation threshold", self.threshold, 0.0)
        if not isinstance(self.relative, bool):
            raise FaultError(f"Deviation relative must be true or false, got {self.relative!r}")

    def _limit(self, reference: torch.Tensor) -> torch.Tensor | float:
        return self.threshold * reference.abs().amax(-1) if self.relative else self.threshold

    def wrong(self, outputs: torch.Tensor, golden: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        gold = golden.double().unsqueeze(0)
        return (outputs.double() - gold).abs().amax(2) > self._limit(gold)

    def check_labels(self, labels: torch.Tensor, golden: torch.Tensor) -> None:
        """Floating labels are targets with the output's values per input; integer ones class indices."""
        if not labels.is_floating_point():
            check_class_indices(labels, golden)
        elif labels.numel() != golden.numel():
            raise FaultError(f"Deviation: the targets have {labels.numel() // max(len(labels), 1)} values per input, "
                             f"the outputs {golden[0].numel()}")

    def correct(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not labels.is_floating_point():  # class indices: the outputs are scores
            return super().correct(outputs, labels)
        target = labels.double().reshape(1, len(labels), -1).to(outputs.device)
        if target.shape[2] != outputs.shape[2]:
            raise FaultError(f"Deviation: the targets have {target.shape[2]} values per input, the outputs {outputs.shape[2]}")
        return (outputs.double() - target).abs().amax(2) <= self._limit(target)

    def __str__(self) -> str:
        return f"|y - golden| > {self.threshold:g}" + (" x max|golden|" if self.relative else "")


@register_criterion("accuracy_drop")
@dataclass(frozen=True)
class AccuracyDrop(Top1):
    """Per input as :class:`Top1`; a scenario is critical when accuracy under the fault is
    ``theta`` or more below the golden accuracy (``theta = 0.10``: 10 points).

    Example:
        >>> c = {"critical": np.array([3, 30]), "non_finite": np.array([0, 0]), "correct": np.array([95, 80])}
        >>> AccuracyDrop(0.1).is_critical(c, 100, 97).tolist()
        [False, True]
    """

    theta: float = 0.10

    def __post_init__(self) -> None:
        _number("AccuracyDrop theta", self.theta, -1.0, 1.0)

    def is_critical(self, counts: Mapping[str, np.ndarray], inputs: int, golden_correct: int) -> np.ndarray:
        return (golden_correct - np.asarray(counts["correct"])) / inputs >= self.theta - 1e-12

    def __str__(self) -> str:
        return f"accuracy drops by >= {self.theta:g}"


def judge(criterion: Criterion, outputs: torch.Tensor, golden: torch.Tensor, labels: torch.Tensor | None) -> dict[str, np.ndarray]:
    """Outcome counts of ``R`` faulty runs (``outputs`` ``[R, N, ...]``) against the golden run
    (``golden`` ``[N, ...]``): per run, how many inputs were masked, tolerable, critical,
    non-finite, and correct (-1 without labels)."""
    runs, n = outputs.shape[:2]
    out = outputs.reshape(runs, n, -1)
    gold = golden.reshape(n, -1)
    finite = torch.isfinite(out).all(2)
    if out.dtype == gold.dtype and out.dtype in _SAME_BITS:
        same = (out.view(_SAME_BITS[out.dtype]) == gold.view(_SAME_BITS[out.dtype]).unsqueeze(0)).all(2)
    else:
        same = (out == gold.unsqueeze(0)).all(2)
    masked = same & finite
    critical = criterion.wrong(out, gold, labels) & ~masked & finite
    tolerable = ~masked & ~critical & finite
    counts = {k: v.sum(1).cpu().numpy().astype(np.int64) for k, v in
              (("masked", masked), ("tolerable", tolerable), ("critical", critical), ("non_finite", ~finite))}
    if labels is None:
        counts["correct"] = np.full(runs, -1, dtype=np.int64)
    else:
        counts["correct"] = _correct(criterion, out, finite, labels).sum(1).cpu().numpy().astype(np.int64)
    return counts


def count_correct(outputs: torch.Tensor, labels: torch.Tensor, criterion: Criterion | None = None) -> int:
    """How many of the outputs ``[N, ...]`` agree with their labels (default criterion :class:`Top1`:
    argmax equals the label); an output with a NaN or an infinity is never correct.

    Example:
        >>> count_correct(torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [1.0, 0.0]]), torch.tensor([1, 0, 1]))
        1
    """
    out = outputs.reshape(1, len(outputs), -1)
    return int(_correct(criterion or Top1(), out, torch.isfinite(out).all(2), labels).sum())


def _correct(criterion: Criterion, out: torch.Tensor, finite: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return criterion.correct(out, labels) & finite


_SAME_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16, torch.bfloat16: torch.int16}

