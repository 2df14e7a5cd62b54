"""Loading models and inputs by name, for the callers written before :mod:`resil.campaign.sources`
(which resolves the sources; this module only keeps the older calls' behaviour)."""

from __future__ import annotations

import torch
from torch import nn

from .campaign import sources
from .errors import FaultError


def load_model(spec: str) -> nn.Module:
    """:func:`resil.campaign.sources.load_model` of ``spec``, put in eval mode (factories' models too).

    Example:
        >>> load_model("torch.nn:Dropout").training
        False
    """
    return sources.load_model(spec).eval()


def load_inputs(model_spec: str, dataset: str = "", count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` inputs and labels of ``dataset`` (any :func:`resil.campaign.sources.load_data`
    source), by default the test split of the bundled model ``model_spec``'s dataset.

    Example:
        >>> x, y = load_inputs("dense-cnn", count=5)
        >>> tuple(x.shape), tuple(y.shape)
        ((5, 1, 8, 8), (5,))
    """
    import resil.models as rm

    if not dataset and model_spec not in rm.names():
        raise FaultError(f"no dataset for {model_spec!r}: name one in [data] dataset (a bundled dataset: "
                         f"{', '.join(rm.DATASETS)}, a .pt or .npz file, or package.module:function)")
    name = dataset or model_spec
    x, y = sources.load_data(name)
    if y is None:
        raise FaultError(f"the data {name!r} has no labels; campaigns need (inputs, labels)")
    shown = rm.info(name).dataset if name in rm.names() else name
    selected, labels = sources.select(x, y, count, what=shown)
    assert labels is not None  # select keeps the labels it is given
    return selected, labels
