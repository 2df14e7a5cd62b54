"""The deterministic training recipe: Adam on shuffled mini-batches, fully determined by a seed.

Example:
    >>> import torch
    >>> from resil.training.data import Dataset
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> x, y = torch.rand(32, 4), torch.randint(0, 2, (32,))
    >>> net = train(torch.nn.Linear(4, 2), Dataset("toy", x, y, x, y, 2), Recipe(epochs=1, batch_size=8))
    >>> 0.0 <= accuracy(net, x, y) <= 1.0
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from resil.campaign.criteria import count_correct

from .data import Dataset


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


def train(model: nn.Module, data: Dataset, recipe: Recipe | None = None,
          loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> nn.Module:
    """Train ``model`` on ``data.x_train`` with ``recipe`` (default: ``Recipe()``); returns it in eval mode.

    ``loss(x, y)``, if given, computes a batch's loss itself (running the model), e.g.
    :meth:`resil.training.FTT.loss`; the default is the cross-entropy of ``model(x)``.
    """
    recipe = Recipe() if recipe is None else recipe
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


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread (the recipes are bit-reproducible only with a fixed thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


__all__ = ["Recipe", "accuracy", "single_thread", "train"]
