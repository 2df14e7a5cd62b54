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
from collections.abc import Iterable
from importlib.metadata import entry_points

from torch import nn

from resil.errors import FaultError
from resil.site import Adapter, Site, SiteOptions

from .dense import DenseAdapter

_REGISTRY: dict[type, Adapter] = {}
_entry_points_loaded = False
#: adapters for third-party libraries, registered once the library has been imported
#: (a model built from its modules has imported it), so resil never imports them itself
_BUILTIN = {"snntorch": "resil.adapters.snn", "brevitas": "resil.adapters.quantized"}
_builtin_loaded: set[str] = set()


def register_adapter(module_type: type, adapter: Adapter) -> None:
    """Use ``adapter`` for modules whose type has ``module_type`` in its MRO (a module class or a
    mixin), unless a more specific class in the MRO has its own adapter."""
    if not isinstance(module_type, type) or not isinstance(adapter, Adapter):
        raise TypeError(f"register_adapter needs a class and a resil.Adapter, got {module_type!r} and {adapter!r}")
    _REGISTRY[module_type] = adapter


class UnsupportedAdapter(Adapter):
    """Stands for a family of modules no adapter describes yet: listing their sites fails clearly
    instead of describing them wrongly as dense modules."""

    name = "unsupported"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def sites(self, prefix: str, module: nn.Module, options: SiteOptions) -> Iterable[Site]:
        cls = type(module)
        raise FaultError(
            f"no adapter describes module {prefix or '(the model)'!r} of type {cls.__module__}.{cls.__qualname__}: {self.reason}. "
            f"Add one: subclass resil.Adapter and call resil.adapters.register_adapter({cls.__qualname__}, adapter), "
            "or expose a registering function in the 'resil.adapters' entry-point group"
        )


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

__all__ = ["Adapter", "DenseAdapter", "UnsupportedAdapter", "adapter_for", "register_adapter"]
