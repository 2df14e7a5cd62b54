"""Carrying touched channels through a model's functional glue (``F.relu``, ``F.max_pool2d``, ``torch.flatten``).

In an ``nn.Sequential`` the touched output channels of a faulted layer are carried alone through
the channel-local stages after it (:meth:`~resil.campaign.grouped.GroupedForward._carry`). A
model with its own ``forward`` often calls the same operations as functions between two layers:
``fc1(torch.flatten(F.max_pool2d(F.relu(conv2(x)), 2), 1))``. :func:`glue_after` reads such a
chain off a :func:`~resil.campaign.dataflow.trace_faults` trace of the faulted module ``M``: every
operation that reads a value derived from ``M``'s output, up to the next module call ``N`` that
reads it, must take that one value, be an operation that acts on each channel alone, and its
result must feed only the next link; ``N`` must be the only reader of the chain's end, and
nothing after ``N`` may read a link. Then a fault in ``M`` reaches the rest of the network only
through ``N``'s input, whose touched channels (or their blocks of features after a flatten) are
the carried channels: ``N`` becomes the faulted module, with that input patched.

Example:
    >>> import torch
    >>> from torch.nn import functional as F
    >>> from resil.campaign.dataflow import trace_faults
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__(); self.conv, self.fc = torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Linear(2 * 2 * 2, 3)
    ...     def forward(self, x):
    ...         return self.fc(torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 2), 1))
    >>> net = Net().eval()
    >>> glue = glue_after(trace_faults(net, torch.randn(1, 1, 4, 4), [net.conv]), id(net.conv))
    >>> [getattr(op.func, "__name__", "") for op in glue.steps], glue.flatten, glue.consumer == id(net.fc)
    (['relu', 'max_pool2d'], True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .dataflow import FaultTrace, Operation

__all__ = ["Glue", "glue_after"]

#: operations that act on every channel of a [B, C, ...] tensor alone, given only non-tensor arguments besides it
CHANNEL_LOCAL_OPERATIONS = frozenset({
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_", "elu", "elu_", "selu", "celu", "gelu", "silu",
    "mish", "hardswish", "hardsigmoid", "sigmoid", "tanh", "softplus", "softsign", "tanhshrink", "threshold", "threshold_",
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "lp_pool1d", "lp_pool2d",
})
#: operations that, when their result keeps the batch dimension and merges the rest, flatten it from dimension 1
FLATTENING = frozenset({"flatten", "view", "reshape"})


@dataclass(frozen=True)
class Glue:
    """The channel-local chain from a faulted module's output to the next module call that reads it.

    Attributes:
        steps: the channel-local operations, in order (applied to ``[B, channels, ...]``).
        flatten: whether the chain ends by flattening every dimension after the batch's.
        consumer: ``id`` of the module that reads the chain's end (its first argument).
    """

    steps: tuple[Operation, ...]
    flatten: bool
    consumer: int

    def carry(self, y: torch.Tensor) -> torch.Tensor:
        """The steps applied to picked channels ``y`` ``[B, rows, ...]``; after a flatten, each row's
        block of features ``[B, rows, features per channel]``."""
        for op in self.steps:
            y = op.func(y, *op.args[1:], **op.kwargs)
        return y.flatten(2) if self.flatten else y


def _flattens(op: Operation) -> bool:
    """Whether ``op`` returns its first argument flattened from dimension 1 (the batch dimension kept)."""
    x = op.args[0] if op.args else None
    if getattr(op.func, "__name__", "") not in FLATTENING or not isinstance(x, torch.Tensor) or x.dim() < 2:
        return False
    with torch.no_grad():
        result = op.func(x, *op.args[1:], **op.kwargs)
    return isinstance(result, torch.Tensor) and tuple(result.shape) == (x.shape[0], x[0].numel())


def glue_after(trace: FaultTrace, target: int) -> Glue | None:
    """The :class:`Glue` from module ``target``'s output to the next module call reading it, from a
    trace of faults in ``target`` (see the module docstring), or None where there is none: the
    module is called more than once, its output is read by anything but the chain, a link is not
    channel-local, or the chain's end is not read by exactly one module call, once."""
    calls = trace.calls
    mine = [p for p, c in enumerate(calls) if c.module == target]
    if trace.reached is None or len(mine) != 1 or mine[0] not in trace.ended_at:
        return None
    p = mine[0]
    readers = [q for q in range(calls[p].end, len(calls)) if trace.call_reads.get(q)]
    if not readers:
        return None
    q = readers[0]
    consumer = calls[q].module
    if sum(1 for c in calls if c.module == consumer) != 1:
        return None
    ops = [op for op in trace.tape[trace.ended_at[p]:] if op.calls <= q]  # after M returned, before N started
    written = trace.call_writes.get(p, ())
    if len(written) != 1:
        return None
    link = written[0]
    chain: set[int] = {link}
    steps: list[Operation] = []
    flatten = False
    for op in ops:
        name = getattr(op.func, "__name__", "")
        if len(op.reads) != 1 or op.reads[0] != link or len(op.writes) != 1 or flatten:
            return None
        if name in CHANNEL_LOCAL_OPERATIONS and not any(isinstance(a, torch.Tensor) for a in (*op.args[1:], *op.kwargs.values())):
            steps.append(op)
        elif _flattens(op):
            flatten = True
        else:
            return None
        link = op.writes[0]
        chain.add(link)
    if trace.call_reads.get(q) != {link}:
        return None
    later = trace.tape[trace.ended_at.get(q, len(trace.tape)):]  # after N returned
    if any(chain & set(op.reads) for op in later):
        return None
    if any(chain & reads for r, reads in trace.call_reads.items() if r >= calls[q].end):  # calls after N's
        return None
    return Glue(tuple(steps), flatten, consumer)
