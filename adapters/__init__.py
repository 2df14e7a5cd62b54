"""Adapters: one per family of modules, looked up by module type.

The dense adapter (:mod:`resil.adapters.dense`) handles every ``torch.nn.Module``. Register an
adapter for a more specific type with :func:`register_adapter`, or ship one in another package
through the ``resil.adapters`` entry-point group (each entry point is a zero-argument callable
that registers its adapters).

Example:
    >>> import torch
    >>> from resil.adapters import adapter_for
    >>> adapter_for(torch.nn.Conv2d(1, 1, 1)).name
    'dense'
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points

from torch import nn

from resil.site import Adapter

from .dense import DenseAdapter

_REGISTRY: dict[type, Adapter] = {}
_entry_points_loaded = False
#: adapters for third-party libraries, registered once the library has been imported
#: (a model built from its modules has imported it), so resil never imports them itself
_BUILTIN = {"snntorch": "resil.adapters.snn", "brevitas": "resil.adapters.quantized"}
_builtin_loaded: set[str] = set()


def register_adapter(module_type: type[nn.Module], adapter: Adapter) -> None:
    """Use ``adapter`` for modules of ``module_type`` and its subclasses (unless a subclass has its own)."""
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register_adapter needs a torch.nn.Module subclass, got {module_type!r}")
    _REGISTRY[module_type] = adapter


def adapter_for(module: nn.Module) -> Adapter:
    """The adapter registered for the most specific type in ``type(module)``'s MRO."""
    _load_entry_points()
    for library, adapter_module in _BUILTIN.items():
        if library in sys.modules and library not in _builtin_loaded:
            _builtin_loaded.add(library)
            importlib.import_module(adapter_module).register()
    for cls in type(module).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    raise TypeError(f"no adapter for {type(module).__name__}")  # unreachable: nn.Module is registered


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group="resil.adapters"):
        ep.load()()


register_adapter(nn.Module, DenseAdapter())

__all__ = ["Adapter", "DenseAdapter", "adapter_for", "register_adapter"]
