"""Loading models and inputs by name: bundled reference models or ``package.module:factory``."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from .errors import FaultError


def load_model(spec: str) -> nn.Module:
    """A bundled reference model (``resil.models.names()``) or the result of ``package.module:factory()``, in eval mode."""
    import resil.models as rm

    if spec in rm.names():
        return rm.load(spec)
    if ":" not in spec:
        raise FaultError(f"unknown model {spec!r}: give a bundled name ({', '.join(rm.names())}) or package.module:factory")
    module_name, _, factory = spec.partition(":")
    try:
        model = getattr(importlib.import_module(module_name), factory)()
    except (ImportError, AttributeError) as e:
        raise FaultError(f"cannot load model {spec!r}: {e}") from None
    if not isinstance(model, nn.Module):
        raise FaultError(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def load_inputs(model_spec: str, dataset: str = "", count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` test inputs and labels of ``dataset`` (default: the bundled model's)."""
    import resil.models as rm

    name = dataset or model_spec
    try:
        data = rm.dataset(name)
    except KeyError:
        raise FaultError(f"no dataset for {name!r}: name a bundled dataset ({', '.join(rm.DATASETS)}) in [data] dataset") from None
    n = len(data.x_test) if count is None else count
    if n > len(data.x_test):
        raise FaultError(f"{n} inputs requested but {data.name} has {len(data.x_test)} test inputs")
    return data.x_test[:n], data.y_test[:n]
