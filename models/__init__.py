"""Bundled offline datasets and trained reference networks.

Example:
    >>> import resil.models as rm
    >>> "dense-cnn" in rm.names()
    True
    >>> net = rm.load("dense-cnn")
    >>> d = rm.dataset("digits")
    >>> rm.accuracy(net, d.x_test, d.y_test) == rm.info("dense-cnn").accuracy
    True
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .data import Dataset, digits
from .nets import digits_cnn
from .training import Recipe, accuracy, train

CHECKPOINTS = Path(__file__).parent / "checkpoints"
DATASETS: dict[str, Callable[[], Dataset]] = {"digits": digits}


@dataclass(frozen=True)
class Reference:
    """A reference model: how to build and train it, its data and its recorded test accuracy."""

    name: str
    dataset: str
    build: Callable[[], nn.Module]
    recipe: Recipe
    description: str

    @property
    def checkpoint(self) -> Path:
        return CHECKPOINTS / f"{self.name}.pt"

    @property
    def accuracy(self) -> float:
        """Test accuracy recorded when the shipped checkpoint was trained."""
        return float(json.loads((CHECKPOINTS / "accuracy.json").read_text())[self.name])


REFERENCES: dict[str, Reference] = {
    r.name: r
    for r in [
        Reference("dense-cnn", "digits", digits_cnn, Recipe(epochs=15), "Conv16-Conv32-pool-FC64-FC10 float32 CNN"),
    ]
}


def names() -> list[str]:
    """Names of the bundled reference models."""
    return list(REFERENCES)


def info(name: str) -> Reference:
    """The :class:`Reference` entry of a bundled model."""
    try:
        return REFERENCES[name]
    except KeyError:
        raise KeyError(f"no reference model {name!r}; bundled: {', '.join(names())}") from None


def dataset(name: str) -> Dataset:
    """A bundled dataset by name (``digits``) or the dataset of a reference model."""
    if name in REFERENCES:
        name = REFERENCES[name].dataset
    if name not in DATASETS:
        raise KeyError(f"no dataset {name!r}; bundled: {', '.join(DATASETS)}")
    return DATASETS[name]()


def load(name: str) -> nn.Module:
    """The trained reference model ``name``, in eval mode, on the CPU."""
    ref = info(name)
    model = ref.build()
    model.load_state_dict(torch.load(ref.checkpoint, map_location="cpu", weights_only=True))
    return model.eval()


def retrain(name: str, seed: int | None = None) -> tuple[nn.Module, float]:
    """Train reference ``name`` from scratch with its recipe; returns the model and its test accuracy."""
    ref = info(name)
    torch.manual_seed(ref.recipe.seed if seed is None else seed)
    data = dataset(ref.dataset)
    model = train(ref.build(), data, ref.recipe)
    return model, accuracy(model, data.x_test, data.y_test)


def build_checkpoints(selected: list[str] | None = None) -> dict[str, float]:
    """Retrain and save the checkpoints (``python -m resil.models``); returns the accuracies."""
    torch.set_num_threads(1)
    acc_file = CHECKPOINTS / "accuracy.json"
    recorded = json.loads(acc_file.read_text()) if acc_file.exists() else {}
    for name in selected or names():
        model, acc = retrain(name)
        torch.save(model.state_dict(), info(name).checkpoint)
        recorded[name] = acc
    acc_file.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    return recorded


__all__ = ["Dataset", "Recipe", "Reference", "accuracy", "build_checkpoints", "dataset", "info", "load", "names", "retrain", "train"]
