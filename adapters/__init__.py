"""Adapters: one per family of modules, looked up by module type.

The dense adapter (:mod:`resil.adapters.dense`, pruned weights included) handles every
``torch.nn.Module``; the spiking (:mod:`resil.adapters.snn`) and quantized
(:mod:`resil.adapters.quantized`) adapters are registered once snnTorch or Brevitas has been
imported. They come in through the ``resil.adapters`` entry-point group (:func:`register` is
resil's own entry point), like any third-party adapter. Register an adapter for a more specific
type with :func:`register_adapter` (see ``docs/adapters.md``; :class:`resil.testing.AdapterTester`
checks one).

Example:
    >>> import torch
    >>> from resil.adapters import adapter_for
    >>> adapter_for(torch.nn.Conv2d(1, 1, 1)).name
    'dense'
"""

from __future__ import annotations

from torch import nn

from resil.adapter_registry import UnsupportedAdapter, adapter_for, register_adapter, register_when_imported
from resil.site import Adapter

from .dense import DenseAdapter


def register() -> None:
    """Register resil's built-in adapters (the ``builtin`` entry point of the ``resil.adapters`` group)."""
    register_adapter(nn.Module, DenseAdapter())
    register_when_imported("snntorch", "resil.adapters.snn:register")
    register_when_imported("brevitas", "resil.adapters.quantized:register")


__all__ = ["Adapter", "DenseAdapter", "UnsupportedAdapter", "adapter_for", "register", "register_adapter"]
