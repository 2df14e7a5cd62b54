"""Forward hooks for the duration of a block."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

Hook = Callable[[nn.Module, Any, Any], Any]


def carries_hooks(module: nn.Module) -> bool:
    """Whether ``module`` runs forward hooks after its ``forward`` (its own, or global module
    hooks): what it returns to its caller is then not what its ``forward`` returns, so a replay
    that shadows its ``forward`` with a recorded output would run them a second time. Pre-hooks
    (``torch.nn.utils.prune``'s) do not count: a shadowed ``forward`` ignores its arguments.

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> before = carries_hooks(lin); h = lin.register_forward_hook(lambda m, a, o: o * 2)
        >>> before, carries_hooks(lin)
        (False, True)
    """
    from torch.nn.modules import module as torch_module

    return bool(module._forward_hooks or torch_module._global_forward_hooks)


@contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, Hook]]) -> Iterator[None]:
    """Register each ``(module, hook)`` as a forward hook; remove them all on exit, even on an exception.

    Example:
        >>> import torch
        >>> lin, seen = torch.nn.Linear(2, 1), []
        >>> with forward_hooks([(lin, lambda m, args, out: seen.append(out.shape))]):
        ...     _ = lin(torch.zeros(3, 2))
        >>> _ = lin(torch.zeros(3, 2)); seen, len(lin._forward_hooks)
        ([torch.Size([3, 1])], 0)
    """
    with _registered(module.register_forward_hook(hook) for module, hook in hooks):
        yield


@contextmanager
def pre_hooks(hooks: Iterable[tuple[nn.Module, Callable[..., Any]]], with_kwargs: bool = False) -> Iterator[None]:
    """Register each ``(module, hook)`` as a forward pre-hook (``hook(module, args, kwargs)`` with
    ``with_kwargs``); remove them all on exit, even on an exception.

    Example:
        >>> import torch
        >>> lin, seen = torch.nn.Linear(2, 1), []
        >>> with pre_hooks([(lin, lambda m, args: seen.append(args[0].shape))]):
        ...     _ = lin(torch.zeros(3, 2))
        >>> _ = lin(torch.zeros(3, 2)); seen, len(lin._forward_pre_hooks)
        ([torch.Size([3, 2])], 0)
    """
    with _registered(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs) for module, hook in hooks):
        yield


@contextmanager
def _registered(handles: Iterable[Any]) -> Iterator[None]:
    """Within: the hooks whose registration handles ``handles`` yields (registered one by one as it
    is drawn); all removed on exit, even when a registration or the block raises."""
    made = []
    try:
        for h in handles:
            made.append(h)
        yield
    finally:
        for h in made:
            h.remove()
