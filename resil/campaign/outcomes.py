"""Outcomes of a faulty run against the golden (fault-free) run.

Per input, exactly one of: ``masked`` (output bit-identical to the golden output),
``tolerable`` (output changed, same top-1; or deviation within the threshold for the
``relative`` criterion), ``critical`` (top-1 differs from the golden top-1; or relative
deviation above the threshold), ``non_finite`` (NaN or Inf in the output). ``correct`` counts
inputs whose faulty top-1 equals the label (accuracy under faults).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

OUTCOMES = ("masked", "tolerable", "critical", "non_finite")


@dataclass(frozen=True)
class Golden:
    """The golden run: outputs, their top-1 and the labels of the inputs."""

    output: torch.Tensor
    labels: torch.Tensor

    @property
    def top1(self) -> torch.Tensor:
        return self.output.argmax(1)


def classify(output: torch.Tensor, golden: Golden, criterion: str = "top1", threshold: float = 0.0) -> dict[str, int]:
    """Count the outcomes of one faulty run over its inputs.

    Example:
        >>> g = Golden(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1]))
        >>> classify(torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, float("nan")]]), g)
        {'masked': 1, 'tolerable': 1, 'critical': 0, 'non_finite': 1, 'correct': 2}
    """
    return {k: int(v[0]) for k, v in classify_many(output.unsqueeze(0), golden, criterion, threshold).items()}


def classify_many(outputs: torch.Tensor, golden: Golden, criterion: str = "top1", threshold: float = 0.0) -> dict[str, np.ndarray]:
    """Count the outcomes of many faulty runs at once: ``outputs`` is ``[runs, inputs, ...]``.

    Example:
        >>> g = Golden(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
        >>> classify_many(torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]]), g)["critical"]
        array([0, 1])
    """
    runs, n = outputs.shape[:2]
    out = outputs.reshape(runs, n, -1)
    gold = golden.output.reshape(1, n, -1)
    non_finite = ~torch.isfinite(out).all(2)
    if out.dtype == torch.float32:
        same = (out.view(torch.int32) == gold.view(torch.int32)).all(2)
    else:
        same = (out == gold).all(2)
    top1 = out.argmax(2)
    if criterion == "top1":
        failed = top1 != golden.top1
    else:
        scale = gold.abs().amax(2).clamp_min(torch.finfo(gold.dtype).tiny)
        failed = (out - gold).abs().amax(2) / scale > threshold
    masked = same & ~non_finite
    critical = failed & ~masked & ~non_finite
    tolerable = ~masked & ~critical & ~non_finite
    correct = (top1 == golden.labels) & ~non_finite
    return {k: v.sum(1).numpy() for k, v in
            (("masked", masked), ("tolerable", tolerable), ("critical", critical), ("non_finite", non_finite), ("correct", correct))}
