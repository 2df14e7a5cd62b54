"""Deterministic training recipes for the reference models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from resil.campaign.criteria import count_correct

from .data import Dataset
from .nets import prunable_weights


@dataclass(frozen=True)
class Recipe:
    """Adam on shuffled mini-batches, fully determined by ``seed``."""

    epochs: int = 10
    lr: float = 3e-3
    batch_size: int = 64
    seed: int = 0


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` (an output with a NaN or an infinity is never correct)."""
    model.eval()
    with torch.no_grad():
        hits = sum(count_correct(model(x[i : i + batch_size]), y[i : i + batch_size]) for i in range(0, len(x), batch_size))
    return hits / len(x)


def train(model: nn.Module, data: Dataset, recipe: Recipe = Recipe(),
          loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> nn.Module:
    """Train ``model`` on ``data.x_train`` with ``recipe``; returns it in eval mode.

    ``loss(x, y)``, if given, computes a batch's loss itself (running the model), e.g.
    :meth:`resil.training.FTT.loss`; the default is the cross-entropy of ``model(x)``.
    """
    g = torch.Generator().manual_seed(recipe.seed)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    ce = nn.CrossEntropyLoss()
    loss_fn = (lambda x, y: ce(model(x), y)) if loss is None else loss
    for _ in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(data.x_train), generator=g)
        for i in range(0, len(order), recipe.batch_size):
            rows = order[i : i + recipe.batch_size]
            opt.zero_grad()
            loss_fn(data.x_train[rows], data.y_train[rows]).backward()
            opt.step()
    return model.eval()


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
