"""Layers whose output channel ``c`` depends only on row ``c`` of their weight and bias, and how
to call them with given values (the fast campaign path recomputes touched channels alone); and
layers whose output channel ``c`` depends only on input channel ``c`` (:func:`channel_map_of`),
through which touched channels are carried alone.

:meth:`resil.site.Adapter.channel_layer` says which layers are such layers; the dense default
covers ``nn.Conv1d/2d/3d`` (zero padding, grouped and depthwise too) and ``nn.Linear``.

Example:
    >>> import torch
    >>> lin = torch.nn.Linear(3, 2); x = torch.rand(4, 3)
    >>> layer = LinearLayer(lin)
    >>> w, b = lin.weight.detach(), lin.bias.detach()
    >>> torch.equal(layer.full(x, w, b), lin(x).detach()), tuple(layer.rows(x, w[1:], b[1:], [1]).shape)
    (True, (4, 1))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

#: ``f(y, channels)``: a layer's output channels ``channels`` (a long tensor) from the same channels
#: ``y`` ``[B, len(channels), ...]`` of its input alone
ChannelMap = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ChannelLayer:
    """A layer computed as ``f(x, weight, bias)``, output channel ``c`` (on dimension
    :meth:`channel_dim` of the output) from ``weight[c]`` and ``bias[c]`` alone."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def full(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The whole output for input ``x``, computed with ``weight`` and ``bias`` as the layer's forward does."""
        raise NotImplementedError

    def rows(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, channels: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Output channels ``channels`` alone (``len(channels)`` of them on dimension :meth:`channel_dim`)
        from the weight and bias rows of those channels."""
        return self.full(x, weight, bias)

    def channel_dim(self, x: torch.Tensor) -> int | None:
        """The dimension of the output channels for input ``x`` (None: no batched output channels)."""
        return 1


class LinearLayer(ChannelLayer):
    """``nn.Linear``: output features are channels, on the last dimension (``[B, features]``,
    or ``[B, tokens, features]``: features last).

    Example:
        >>> LinearLayer(torch.nn.Linear(2, 2)).channel_dim(torch.zeros(3, 5, 2))
        2
    """

    def full(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def channel_dim(self, x: torch.Tensor) -> int | None:
        return x.dim() - 1 if x.dim() >= 2 else None


class ConvLayer(ChannelLayer):
    """``nn.Conv1d/2d/3d`` with zero padding (grouped and depthwise too).

    Example:
        >>> conv = torch.nn.Conv2d(4, 4, 3, groups=2); x = torch.rand(1, 4, 5, 5)
        >>> w, b = conv.weight.detach(), conv.bias.detach()
        >>> torch.allclose(ConvLayer(conv).rows(x, w[[3]], b[[3]], [3]), conv(x).detach()[:, [3]])
        True
    """

    module: nn.modules.conv._ConvNd

    def full(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self._conv(x, weight, bias, self.module.groups)

    def rows(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, channels: Sequence[int] | np.ndarray) -> torch.Tensor:
        """A grouped convolution (depthwise included) reads each row's own group of input channels."""
        groups = self.module.groups
        if groups > 1:  # each row its own group: the input channels of its group, side by side
            per_in, per_out = self.module.in_channels // groups, self.module.out_channels // groups
            picked = (torch.from_numpy(np.asarray(channels) // per_out).unsqueeze(1) * per_in + torch.arange(per_in)).reshape(-1)
            x, groups = x[:, picked], len(channels)
        return self._conv(x, weight, bias, groups)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> torch.Tensor:
        """The functional convolution of the layer's dimensionality with its stride, padding and dilation."""
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[x.dim() - 2]
        m = self.module
        return conv(x, weight, bias, m.stride, m.padding, m.dilation, groups)


class BatchNormLayer(ChannelLayer):
    """An eval-mode ``nn.BatchNorm1d/2d/3d`` with running statistics: channel ``c`` from input
    channel ``c``, its statistics and ``weight[c]``, ``bias[c]``.

    Example:
        >>> bn = torch.nn.BatchNorm2d(3).eval(); x = torch.rand(2, 3, 4, 4)
        >>> w, b = bn.weight.detach() * 2, bn.bias.detach() + 1
        >>> torch.equal(BatchNormLayer(bn).rows(x, w[[2]], b[[2]], [2]), BatchNormLayer(bn).full(x, w, b)[:, [2]])
        True
    """

    module: nn.modules.batchnorm._BatchNorm

    def full(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.normalise(x, slice(None), weight, bias)

    def rows(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, channels: Sequence[int] | np.ndarray) -> torch.Tensor:
        picked = torch.as_tensor(np.asarray(channels), dtype=torch.long)
        return self.normalise(x[:, picked], picked, weight, bias)

    def normalise(self, x: torch.Tensor, channels: slice | torch.Tensor, weight: torch.Tensor | None,
                  bias: torch.Tensor | None) -> torch.Tensor:
        """``x`` (channels ``channels`` of the input) normalised with those channels' statistics."""
        bn = self.module
        assert bn.running_mean is not None and bn.running_var is not None  # channel_layer_of checked it
        return F.batch_norm(x, bn.running_mean[channels], bn.running_var[channels], weight, bias, False, 0.0, bn.eps)


def _eval_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.BatchNorm1d/2d/3d`` (not a subclass) normalising with running statistics."""
    return (type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) and not module.training
            and getattr(module, "running_mean", None) is not None and getattr(module, "running_var", None) is not None)


def channel_layer_of(module: nn.Module) -> ChannelLayer | None:
    """The :class:`ChannelLayer` of a plain ``nn.Conv1d/2d/3d`` (zero padding) or ``nn.Linear``
    (subclasses included), or of an eval-mode BatchNorm with affine parameters; None for any other module.

    Example:
        >>> type(channel_layer_of(torch.nn.Conv1d(1, 1, 1))).__name__, channel_layer_of(torch.nn.ReLU())
        ('ConvLayer', None)
    """
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.padding_mode == "zeros":
        return ConvLayer(module)
    if isinstance(module, nn.Linear):
        return LinearLayer(module)
    if _eval_batchnorm(module) and getattr(module, "weight", None) is not None:
        return BatchNormLayer(module)
    return None


def channel_map_of(module: nn.Module) -> ChannelMap | None:
    """The :data:`ChannelMap` of a layer with one parameter set per channel: an eval-mode
    ``nn.BatchNorm1d/2d/3d`` with running statistics, or a depthwise ``nn.Conv1d/2d/3d`` (one
    input and one output channel per group, zero padding); None for any other module (subclasses
    too: they may compute otherwise).

    Example:
        >>> bn = torch.nn.BatchNorm2d(3).eval(); bn.running_mean += torch.tensor([1.0, 2.0, 3.0])
        >>> y = torch.rand(2, 3, 4, 4); channels = torch.tensor([2, 0])
        >>> torch.equal(channel_map_of(bn)(y[:, channels], channels), bn(y)[:, channels])
        True
        >>> channel_map_of(torch.nn.Conv2d(4, 4, 3, groups=2)) is None
        True
    """
    if _eval_batchnorm(module):
        norm = BatchNormLayer(module)

        def normalised(y: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
            weight, bias = norm.module.weight, norm.module.bias
            return norm.normalise(y, channels, None if weight is None else weight[channels], None if bias is None else bias[channels])
        return normalised
    if type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        conv: nn.modules.conv._ConvNd = module  # type: ignore[assignment]
        if conv.padding_mode != "zeros" or not conv.groups == conv.in_channels == conv.out_channels:
            return None
        layer = ConvLayer(conv)

        def depthwise(y: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
            bias = None if conv.bias is None else conv.bias[channels]
            return layer.rows(y, conv.weight[channels], bias, np.arange(len(channels)))  # row r reads y's channel r
        return depthwise
    return None
