"""Suffix execution: cache the golden input of every stage of a sequential model and run each
scenario only from the first stage its faults touch.

Everything before that stage equals the golden run, so the result is bit-identical to a full
forward pass (same modules, same inputs, same batches) at the cost of the suffix only. Models
that are not a plain ``nn.Sequential`` (their own ``forward``, e.g. a spiking network's time
loop) run the full forward pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..site import Site


class SuffixForward:
    """Forward passes over fixed inputs that can start at any stage of a sequential model."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, batch_size: int) -> None:
        self.model = model
        self.batches = [inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size)]
        self.sequential = type(model).forward is nn.Sequential.forward
        self.stages: list[nn.Module] = list(model.children()) if self.sequential else [model]
        self.stage_of = {id(m): k for k, stage in enumerate(self.stages) for m in stage.modules()}
        self.cache: list[list[Any]] = []

    def golden(self) -> torch.Tensor:
        """The full forward pass, caching every stage's input."""
        outputs = []
        with torch.no_grad():
            for x in self.batches:
                stage_inputs = []
                for stage in self.stages:
                    stage_inputs.append(x)
                    x = stage(x)
                self.cache.append(stage_inputs)
                outputs.append(x)
        return torch.cat(outputs)

    def first_stage(self, sites: Iterable[Site]) -> int:
        """The first stage any of ``sites`` belongs to (0 when unknown: run everything)."""
        return min((self.stage_of.get(id(s.module), 0) for s in sites), default=0)

    def run_from(self, stage: int) -> torch.Tensor:
        """The output over all inputs, computing only stages ``stage`` onwards."""
        outputs = []
        with torch.no_grad():
            for cached in self.cache:
                x = cached[stage]
                for module in self.stages[stage:]:
                    x = module(x)
                outputs.append(x)
        return torch.cat(outputs)
