"""Carrying touched channels through a model's glue (``F.relu``, ``torch.flatten``, ``self.bn(...)``).

In an ``nn.Sequential`` the touched output channels of a faulted layer are carried alone through
the channel-local stages after it (:meth:`~resil.campaign.grouped.GroupedForward._carry`). A
model with its own ``forward`` often calls such operations as functions, or as modules, between
two layers: ``fc1(torch.flatten(F.max_pool2d(F.relu(self.bn(conv2(x))), 2), 1))``.
:func:`glue_after` reads such a chain off a :func:`~resil.campaign.dataflow.trace_faults` trace
of the faulted module ``M``: every operation that reads a value derived from ``M``'s output, up to
the next module call ``N`` that reads it, must take that one value, be an operation that acts on
each channel alone, and its result must feed only the next link; a module call that computes
each channel from the same input channel alone (an eval BatchNorm, a depthwise convolution) is a
link too; ``N`` must be the only reader of the chain's end, and nothing after ``N`` may read a
link. Then a fault in ``M`` reaches the rest of the network only through ``N``'s input, whose
touched channels (or their blocks of features after a flatten) are the carried channels: ``N``
becomes the faulted module, with that input patched.

Example:
    >>> import torch
    >>> from torch.nn import functional as F
    >>> from resil.campaign.dataflow import trace_faults
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv, self.bn, self.fc = torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.BatchNorm2d(2), torch.nn.Linear(8, 3)
    ...     def forward(self, x):
    ...         return self.fc(torch.flatten(F.max_pool2d(F.relu(self.bn(self.conv(x))), 2), 1))
    >>> net = Net().eval(); modules = dict((id(m), m) for m in net.modules())
    >>> glue = glue_after(trace_faults(net, torch.randn(1, 1, 4, 4), [net.conv]), id(net.conv), modules)
    >>> glue.names, glue.flatten, glue.consumer == id(net.fc)
    (('BatchNorm2d', 'relu', 'max_pool2d'), True, True)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..channel_layers import ChannelMap
from .dataflow import FaultTrace, Operation
from .grouped import channel_map

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
        steps: the links in order, each computing its output channels ``[B, rows, ...]`` from
            the same channels of its input and their channel numbers (``f(y, channels)``).
        names: what each link is (an operation's name, a module's type).
        flatten: whether the chain ends by flattening every dimension after the batch's.
        consumer: ``id`` of the module that reads the chain's end (its first argument).
    """

    steps: tuple[ChannelMap, ...]
    names: tuple[str, ...]
    flatten: bool
    consumer: int

    def carry(self, y: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """The links applied to picked channels ``y`` ``[B, rows, ...]`` (channel ``channels[r]`` in
        row ``r``); after a flatten, each row's block of features ``[B, rows, features per channel]``."""
        for step in self.steps:
            y = step(y, channels)
        return y.flatten(2) if self.flatten else y


def _flattens(op: Operation) -> bool:
    """Whether ``op`` returns its first argument flattened from dimension 1 (the batch dimension kept)."""
    x = op.args[0] if op.args else None
    if getattr(op.func, "__name__", "") not in FLATTENING or not isinstance(x, torch.Tensor) or x.dim() < 2:
        return False
    with torch.no_grad():
        result = op.func(x, *op.args[1:], **op.kwargs)
    return isinstance(result, torch.Tensor) and tuple(result.shape) == (x.shape[0], x[0].numel())


def _applied(op: Operation) -> ChannelMap:
    """The channel-local operation ``op`` as a link (its other arguments as in the trace)."""
    return lambda y, channels: op.func(y, *op.args[1:], **op.kwargs)


def glue_after(trace: FaultTrace, target: int, modules: Mapping[int, nn.Module]) -> Glue | None:
    """The :class:`Glue` from module ``target``'s output to the next module call reading it, from a
    trace of faults in ``target`` (see the module docstring), or None where there is none: the
    module is called more than once, its output is read by anything but the chain, a link is not
    channel-local, or the chain's end is not read by exactly one module call, once.

    A call of a module (of ``modules``, by ``id``) that computes each channel from the same input
    channel alone (:func:`~resil.campaign.grouped.channel_map`: an eval BatchNorm, an activation
    module, a depthwise convolution; such modules hold no state, so a ``self.relu`` called at
    several places is one too) is a link too, if it calls no submodule and returns one tensor."""
    calls = trace.calls
    mine = [p for p, c in enumerate(calls) if c.module == target]
    if trace.reached is None or len(mine) != 1 or mine[0] not in trace.ended_at:
        return None
    called = Counter(c.module for c in calls)
    p = mine[0]
    written = trace.call_writes.get(p, ())
    if len(written) != 1:
        return None
    link = written[0]
    chain: set[int] = {link}
    steps: list[ChannelMap] = []
    names: list[str] = []
    flatten = False
    since, after = trace.ended_at[p], calls[p].end  # tape position and call position where the chain goes on
    while True:
        q = next((r for r in range(after, len(calls)) if trace.call_reads.get(r)), None)  # the next call reading the chain
        if q is None:
            return None
        for op in trace.tape[since:]:
            if op.calls > q:  # after call q started
                break
            name = getattr(op.func, "__name__", "")
            if len(op.reads) != 1 or op.reads[0] != link or len(op.writes) != 1 or flatten:
                return None
            if name in CHANNEL_LOCAL_OPERATIONS and not any(isinstance(a, torch.Tensor) for a in (*op.args[1:], *op.kwargs.values())):
                steps.append(_applied(op))
                names.append(name)
            elif _flattens(op):
                flatten = True
            else:
                return None
            link = op.writes[0]
            chain.add(link)
        if trace.call_reads.get(q) != {link}:
            return None
        module = modules[calls[q].module]
        step = None if flatten else channel_map(module)
        if step is None or calls[q].end != q + 1 or q not in trace.ended_at or len(trace.call_writes.get(q, ())) != 1:
            if called[calls[q].module] != 1:  # the consumer's recorded input must be that of its only call
                return None
            break  # call q consumes the chain
        steps.append(step)
        names.append(type(module).__name__)
        link = trace.call_writes[q][0]
        chain.add(link)
        since, after = trace.ended_at[q], calls[q].end
    later = trace.tape[trace.ended_at.get(q, len(trace.tape)):]  # after the consumer returned
    if any(chain & set(op.reads) for op in later):
        return None
    if any(chain & reads for r, reads in trace.call_reads.items() if r >= calls[q].end):  # calls after the consumer's
        return None
    return Glue(tuple(steps), tuple(names), flatten, calls[q].module)
