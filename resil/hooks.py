"""Forward hooks for the duration of a block."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

Hook = Callable[[nn.Module, Any, Any], Any]


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
    handles = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
