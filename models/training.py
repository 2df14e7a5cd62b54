"""Deterministic training recipes for the reference models."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import prune

from resil.training.data import Dataset
from resil.training.recipe import Recipe, train

from .nets import prunable_weights

Fit = Callable[[Dataset, Recipe], nn.Module]
"""A training recipe: given the data and the :class:`Recipe`, returns the trained model."""


def from_scratch(build: Callable[[], nn.Module]) -> Fit:
    """Recipe: train a freshly built model (initialised from the global seed) with :func:`train`.

    Works unchanged for spiking models that run their own time loop and for Brevitas QAT
    models (their activation scales are collected from statistics during the first training
    steps, then learned, and saved in the state dict).
    """

    def fit(data: Dataset, recipe: Recipe) -> nn.Module:
        return train(build(), data, recipe)

    return fit


def prune_unstructured(model: nn.Module, amount: float) -> nn.Module:
    """Global L1 magnitude pruning of ``amount`` of all conv and linear weights, in place.

    Keeps the ``torch.nn.utils.prune`` reparametrization (``weight_orig`` and ``weight_mask``)
    and zeroes the pruned elements of ``weight_orig`` too, so the stored tensor holds 0 wherever
    the mask does (the forward is unchanged; fine-tuning never updates those zero-gradient elements).
    """
    weights = prunable_weights(model)
    prune.global_unstructured(weights, pruning_method=prune.L1Unstructured, amount=amount)
    with torch.no_grad():
        for module, name in weights:
            getattr(module, name + "_orig").mul_(getattr(module, name + "_mask"))
    return model


def prune_channels(model: nn.Module, ratio: float, example: torch.Tensor) -> nn.Module:
    """Remove ``ratio`` of the channels/features of every layer but the last linear one with
    torch-pruning (L2 group magnitude), in place; the result is a smaller dense network."""
    import torch_pruning as tp

    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.BasePruner(model, example, tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio, ignored_layers=[last])
    pruner.step()
    return model


def fine_tune(base: Callable[[], nn.Module], step: Callable[[nn.Module], nn.Module]) -> Fit:
    """Recipe: take the trained ``base`` model, apply ``step`` (e.g. pruning), fine-tune with :func:`train`."""

    def fit(data: Dataset, recipe: Recipe) -> nn.Module:
        return train(step(base()), data, recipe)

    return fit
