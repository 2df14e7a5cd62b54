"""Which adapter describes a module: the registry, filled through the ``resil.adapters`` entry points.

Every entry point of the ``resil.adapters`` group is a zero-argument callable that registers
adapters (:func:`register_adapter`); they are loaded at the first lookup. resil's own adapters
(dense, pruned, spiking, quantized) come in through that group too, so the core never imports
them. An adapter for a third-party library that a model may or may not use is registered once
that library has been imported (:func:`register_when_imported`): resil never imports it itself.

Example:
    >>> import torch
    >>> adapter_for(torch.nn.Conv2d(1, 1, 1)).name
    'dense'
    >>> is_temporal(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    False
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points

from torch import nn

from .errors import FaultError
from .site import Adapter, Site, SiteOptions

#: the entry-point group whose callables register adapters
ENTRY_POINT_GROUP = "resil.adapters"

_REGISTRY: dict[type, Adapter] = {}
_loaded = False
#: ``{library: "package.module:function"}``: registering functions to call once ``library`` is imported
_WHEN_IMPORTED: dict[str, str] = {}


def register_adapter(module_type: type, adapter: Adapter) -> None:
    """Use ``adapter`` for modules whose type has ``module_type`` in its MRO (a module class or a
    mixin), unless a more specific class in the MRO has its own adapter.

    Example:
        >>> import torch
        >>> class Mine(torch.nn.Linear): ...
        >>> class MineAdapter(Adapter): name = "mine"
        >>> register_adapter(Mine, MineAdapter()); adapter_for(Mine(1, 1)).name
        'mine'
        >>> register_adapter(Mine, "not an adapter")
        Traceback (most recent call last):
        ...
        TypeError: register_adapter needs a class and a resil.Adapter, got <class 'resil.adapter_registry.Mine'> and 'not an adapter'
    """
    if not isinstance(module_type, type) or not isinstance(adapter, Adapter):
        raise TypeError(f"register_adapter needs a class and a resil.Adapter, got {module_type!r} and {adapter!r}")
    _REGISTRY[module_type] = adapter


def register_when_imported(library: str, registering: str) -> None:
    """Call the registering function ``registering`` (``"package.module:function"``) at the first
    lookup after the top-level package ``library`` has been imported (by the model's code).

    Example:
        >>> import torch
        >>> register_when_imported("no_such_library_xyz", "no.such:register"); adapter_for(torch.nn.ReLU()).name
        'dense'
    """
    _WHEN_IMPORTED[library] = registering


class UnsupportedAdapter(Adapter):
    """Stands for a family of modules no adapter describes yet: listing their sites fails clearly
    instead of describing them wrongly as dense modules.

    Example:
        >>> import torch
        >>> list(UnsupportedAdapter("no reason").sites("m", torch.nn.ReLU(), SiteOptions()))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        resil.errors.FaultError: no adapter describes module 'm' of type torch.nn.modules.activation.ReLU: no reason. ...
    """

    name = "unsupported"

    def __init__(self, reason: str, *, temporal: bool = False) -> None:
        self.reason = reason
        self.temporal = temporal

    def sites(self, prefix: str, module: nn.Module, options: SiteOptions) -> Iterable[Site]:
        cls = type(module)
        raise FaultError(
            f"no adapter describes module {prefix or '(the model)'!r} of type {cls.__module__}.{cls.__qualname__}: {self.reason}. "
            f"Add one: subclass resil.Adapter and call resil.adapters.register_adapter({cls.__qualname__}, adapter), "
            f"or expose a registering function in the {ENTRY_POINT_GROUP!r} entry-point group"
        )


def adapter_for(module: nn.Module) -> Adapter:
    """The adapter registered for the most specific type in ``type(module)``'s MRO."""
    _load()
    for cls in type(module).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    raise FaultError(f"no adapter for {type(module).__qualname__}: no registering function of the {ENTRY_POINT_GROUP!r} "
                     "entry-point group registered one for torch.nn.Module (is resil installed?)")


def is_temporal(model: nn.Module) -> bool:
    """Whether any module of ``model`` belongs to a temporal family (:attr:`Adapter.temporal`:
    state carried across forward calls, as in a spiking network's time steps)."""
    return any(adapter_for(m).temporal for m in model.modules())


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()()
    for library in [lib for lib in _WHEN_IMPORTED if lib in sys.modules]:
        module_name, _, function = _WHEN_IMPORTED.pop(library).partition(":")
        _registering(module_name, function)()


def _registering(module_name: str, function: str) -> Callable[[], None]:
    registering: Callable[[], None] = getattr(importlib.import_module(module_name), function)
    return registering


__all__ = ["ENTRY_POINT_GROUP", "UnsupportedAdapter", "adapter_for", "is_temporal", "register_adapter", "register_when_imported"]
