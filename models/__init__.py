"""Bundled offline datasets and trained reference networks.

Every reference model classifies scikit-learn's 8x8 digits (``[B, 1, 8, 8]`` in, ``[B, 10]``
scores out): a dense CNN and its spiking, unstructured-pruned, channel-pruned and quantized
variants. Each has a deterministic recipe (seeded, single-threaded), a shipped checkpoint and
its recorded test accuracy; ``python -m resil.models [NAME ...]`` retrains and rewrites them
(retrain ``dense-cnn`` first: the pruned variants fine-tune its checkpoint).

Example:
    >>> import resil.models as rm
    >>> rm.names()
    ['dense-cnn', 'snn', 'pruned-50', 'pruned-80', 'structured-50', 'int8', 'int4']
    >>> net = rm.load("dense-cnn")
    >>> d = rm.dataset("digits")
    >>> rm.accuracy(net, d.x_test, d.y_test) == rm.info("dense-cnn").accuracy
    True
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resil.adapters.qat import digits_qcnn
from resil.campaign.sources import Zoo
from resil.training.data import Dataset
from resil.training.recipe import Recipe, accuracy, single_thread, train
from resil.training.references import TrainingReference, register_training_data, register_training_reference

from .data import digits
from .nets import channel_pruned_state, digits_cnn, digits_snn, load_channel_pruned, masked_cnn
from .training import Fit, fine_tune, from_scratch, prune_channels, prune_unstructured

CHECKPOINTS = Path(__file__).parent / "checkpoints"
DATASETS: dict[str, Callable[[], Dataset]] = {"digits": digits}


def state_dict(model: nn.Module) -> dict[str, Any]:
    """The default checkpoint content: ``model.state_dict()``."""
    return model.state_dict()


def load_state(model: nn.Module, state: dict[str, Any]) -> nn.Module:
    """The default checkpoint loader: ``model.load_state_dict(state)`` (strict)."""
    model.load_state_dict(state)
    return model


@dataclass(frozen=True)
class Reference:
    """A reference model: how to build, train, save and load it, its data and recorded accuracy.

    ``build`` returns the untrained module the checkpoint is loaded into; ``fit`` is the
    training recipe (default: train ``build()`` from scratch with ``recipe``); ``save`` gives
    the checkpoint content of a trained model and ``restore`` loads it into ``build()``.
    """

    name: str
    dataset: str
    build: Callable[[], nn.Module]
    recipe: Recipe
    description: str
    fit: Fit | None = None
    save: Callable[[nn.Module], dict[str, Any]] = field(default=state_dict, repr=False)
    restore: Callable[[nn.Module, dict[str, Any]], nn.Module] = field(default=load_state, repr=False)

    @property
    def checkpoint(self) -> Path:
        return CHECKPOINTS / f"{self.name}.pt"

    @property
    def accuracy(self) -> float:
        """Test accuracy recorded when the shipped checkpoint was trained."""
        return float(json.loads((CHECKPOINTS / "accuracy.json").read_text())[self.name])

    def train(self, data: Dataset, recipe: Recipe) -> nn.Module:
        """Run the training recipe."""
        return (self.fit or from_scratch(self.build))(data, recipe)


def _dense() -> nn.Module:
    return load("dense-cnn")


_EXAMPLE = torch.zeros(1, 1, 8, 8)
_FROM_DENSE = "fine-tuned from the dense-cnn checkpoint"

REFERENCES: dict[str, Reference] = {
    r.name: r
    for r in [
        Reference("dense-cnn", "digits", digits_cnn, Recipe(epochs=15), "Conv16-Conv32-pool-FC64-FC10 float32 CNN, 38,282 parameters"),
        Reference(
            "snn",
            "digits",
            digits_snn,
            Recipe(epochs=15),
            "snnTorch spiking CNN Conv16+Leaky-pool-FC64+Leaky-FC10+Leaky (beta 0.9, init_hidden), static image as input "
            "current for 8 steps, mean output membrane as scores, 17,258 parameters",
        ),
        Reference(
            "pruned-50",
            "digits",
            masked_cnn,
            Recipe(epochs=5, lr=1e-3),
            "dense CNN with 50% of its conv/linear weights pruned (global L1, torch.nn.utils.prune masks kept: "
            f"19,080 of 38,160 weights zero), {_FROM_DENSE}, 38,282 parameters",
            fit=fine_tune(_dense, lambda m: prune_unstructured(m, 0.5)),
        ),
        Reference(
            "pruned-80",
            "digits",
            masked_cnn,
            Recipe(epochs=5, lr=1e-3),
            "dense CNN with 80% of its conv/linear weights pruned (global L1, torch.nn.utils.prune masks kept: "
            f"30,528 of 38,160 weights zero), {_FROM_DENSE}, 38,282 parameters",
            fit=fine_tune(_dense, lambda m: prune_unstructured(m, 0.8)),
        ),
        Reference(
            "structured-50",
            "digits",
            digits_cnn,
            Recipe(epochs=10),
            "dense CNN with 50% of the channels of conv1, conv2 and fc1 removed by torch-pruning (L2 group magnitude): "
            f"Conv8-Conv16-pool-FC32-FC10 float32, {_FROM_DENSE}, 9,802 parameters",
            fit=fine_tune(_dense, lambda m: prune_channels(m, 0.5, _EXAMPLE)),
            save=channel_pruned_state,
            restore=load_channel_pruned,
        ),
        Reference(
            "int8",
            "digits",
            lambda: digits_qcnn(8),
            Recipe(epochs=10),
            "Brevitas QAT CNN of the dense shape: int8 weights (per-tensor scale, narrow range), uint8 input and "
            "QuantReLU activations, float biases and logits, 38,286 parameters (incl. 4 activation scales)",
        ),
        Reference(
            "int4",
            "digits",
            lambda: digits_qcnn(4, per_channel=True),
            Recipe(epochs=10),
            "Brevitas QAT CNN of the dense shape: int4 weights (per-output-channel scales, narrow range), uint4 input "
            "and QuantReLU activations, float biases and logits, 38,286 parameters (incl. 4 activation scales)",
        ),
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
    return ref.restore(ref.build(), torch.load(ref.checkpoint, map_location="cpu", weights_only=True)).eval()


def _test_split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = dataset(name)
    return d.x_test, d.y_test


def _training_reference(ref: Reference) -> TrainingReference:
    """How ``ref`` trains: from scratch from ``build()``, or a fine-tuned model from its own checkpoint."""
    return TrainingReference(data=lambda: dataset(ref.dataset), recipe=ref.recipe,
                             start=ref.build if ref.fit is None else lambda: load(ref.name), trained=lambda: load(ref.name))


for _ref in REFERENCES.values():
    register_training_reference(_ref.name, _training_reference(_ref))
for _name, _data in DATASETS.items():
    register_training_data(_name, _data)

#: the bundled models and datasets as a model zoo (the ``resil.zoos`` entry point ``bundled``)
ZOO = Zoo(models=names, load=load, datasets=lambda: list(DATASETS), data=_test_split, describe=lambda name: info(name).description)


def retrain(name: str, seed: int | None = None) -> tuple[nn.Module, float]:
    """Train reference ``name`` with its recipe (``seed`` replaces the recipe's seed); returns the
    model, saved and restored as its checkpoint would load, in eval mode, and its test accuracy."""
    ref = info(name)
    recipe = ref.recipe if seed is None else replace(ref.recipe, seed=seed)
    data = dataset(ref.dataset)
    with single_thread():
        torch.manual_seed(recipe.seed)
        trained = ref.train(data, recipe)
        model = ref.restore(ref.build(), ref.save(trained)).eval()
        return model, accuracy(model, data.x_test, data.y_test)


def build_checkpoints(selected: list[str] | None = None) -> dict[str, float]:
    """Retrain and save the checkpoints (``python -m resil.models``); returns the accuracies."""
    torch.set_num_threads(1)
    acc_file = CHECKPOINTS / "accuracy.json"
    recorded = json.loads(acc_file.read_text()) if acc_file.exists() else {}
    for name in selected or names():
        ref = info(name)
        model, acc = retrain(name)
        torch.save(ref.save(model), ref.checkpoint)
        data = dataset(ref.dataset)
        if accuracy(load(name), data.x_test, data.y_test) != acc:
            raise RuntimeError(f"{name}: the saved checkpoint does not reproduce the trained model's accuracy")
        recorded[name] = acc
        acc_file.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    return recorded


__all__ = [
    "ZOO",
    "Dataset",
    "Fit",
    "Recipe",
    "Reference",
    "accuracy",
    "build_checkpoints",
    "dataset",
    "info",
    "load",
    "names",
    "retrain",
    "single_thread",
    "train",
]
