"""Named training references: how a named model is trained, so hardening can train it the same way.

:func:`resil.training.run_ftt` trains a named model's normal and FTT arms with its own recipe,
data and starting point, and the FT-NAS search compares its find with named references. Both look
the name up here. Model zoos register their references when they load (the bundled zoo, found
through the ``resil.zoos`` entry-point group, registers its seven digits models), so training
code never imports a zoo itself.

Example:
    >>> import torch
    >>> from resil.training.data import Dataset
    >>> from resil.training.recipe import Recipe
    >>> x, y = torch.rand(8, 4), torch.randint(0, 2, (8,))
    >>> ref = TrainingReference(data=lambda: Dataset("pairs", x, y, x, y, 2), recipe=Recipe(epochs=1),
    ...                         start=lambda: torch.nn.Linear(4, 2), trained=lambda: torch.nn.Linear(4, 2).eval())
    >>> register_training_reference("doctest-linear", ref)
    >>> training_reference("doctest-linear").recipe.epochs, "dense-cnn" in training_references()
    (1, True)
    >>> training_data("digits").classes
    10
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..campaign.sources import zoos
from ..errors import FaultError
from .data import Dataset
from .recipe import Recipe


@dataclass(frozen=True)
class TrainingReference:
    """How one named model trains.

    Attributes:
        data: its training and test data.
        recipe: its training recipe (epochs, learning rate, batch size, seed).
        start: the model its training starts from (an untrained build, or for a model
            fine-tuned from another, e.g. pruned from a dense checkpoint, its trained self).
        trained: the trained model (in eval mode).
    """

    data: Callable[[], Dataset]
    recipe: Recipe
    start: Callable[[], nn.Module]
    trained: Callable[[], nn.Module]


_REFERENCES: dict[str, TrainingReference] = {}
_DATA: dict[str, Callable[[], Dataset]] = {}


def register_training_reference(name: str, reference: TrainingReference) -> None:
    """Make ``name`` a training reference (model zoos call this for their models)."""
    if not isinstance(name, str) or not name or not isinstance(reference, TrainingReference):
        raise FaultError(f"register_training_reference needs a non-empty name and a TrainingReference, got {name!r} "
                         f"and a {type(reference).__name__}")
    _REFERENCES[name] = reference


def training_references() -> list[str]:
    """The names of every registered training reference (the zoos loaded first)."""
    zoos()
    return list(_REFERENCES)


def training_reference(name: str) -> TrainingReference | None:
    """The training reference registered as ``name``, or None."""
    zoos()
    return _REFERENCES.get(name)


def register_training_data(name: str, data: Callable[[], Dataset]) -> None:
    """Make ``name`` a training dataset: ``data()`` gives its training and test data."""
    if not isinstance(name, str) or not name or not callable(data):
        raise FaultError(f"register_training_data needs a non-empty name and a function, got {name!r} and a {type(data).__name__}")
    _DATA[name] = data


def training_data(name: str) -> Dataset:
    """The training dataset registered as ``name`` (the zoos loaded first).

    Raises:
        FaultError: for a name no zoo registered.
    """
    zoos()
    if name not in _DATA:
        raise FaultError(f"no training dataset {name!r}; registered: {', '.join(_DATA) or 'none'}")
    return _DATA[name]()
