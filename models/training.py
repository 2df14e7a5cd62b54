"""Deterministic training recipes for the reference models."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .data import Dataset


@dataclass(frozen=True)
class Recipe:
    """Adam on shuffled mini-batches, fully determined by ``seed``."""

    epochs: int = 10
    lr: float = 3e-3
    batch_size: int = 64
    seed: int = 0


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum()) for i in range(0, len(x), batch_size))
    return hits / len(x)


def train(model: nn.Module, data: Dataset, recipe: Recipe = Recipe()) -> nn.Module:
    """Train ``model`` on ``data.x_train`` with ``recipe``; returns it in eval mode."""
    g = torch.Generator().manual_seed(recipe.seed)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(data.x_train), generator=g)
        for i in range(0, len(order), recipe.batch_size):
            rows = order[i : i + recipe.batch_size]
            opt.zero_grad()
            loss_fn(model(data.x_train[rows]), data.y_train[rows]).backward()
            opt.step()
    return model.eval()
