"""Layers whose output channel ``c`` depends only on row ``c`` of their weight and bias, and how
to call them with given values (the fast campaign path recomputes touched channels alone).

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

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class ChannelLayer:
    """A layer computed as ``f(x, weight, bias)`` with output channels on dimension 1, channel ``c``
    from ``weight[c]`` and ``bias[c]`` alone."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def full(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The whole output for input ``x``, computed with ``weight`` and ``bias`` as the layer's forward does."""
        raise NotImplementedError

    def rows(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, channels: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Output channels ``channels`` alone (``[B, len(channels), ...]``) from the weight and bias rows of those channels."""
        return self.full(x, weight, bias)

    def channels_first(self, x: torch.Tensor) -> bool:
        """Whether the output for input ``x`` has its channels on dimension 1."""
        return True


class LinearLayer(ChannelLayer):
    """``nn.Linear``: output features are channels when the input is ``[B, features]``.

    Example:
        >>> LinearLayer(torch.nn.Linear(2, 2)).channels_first(torch.zeros(3, 5, 2))
        False
    """

    def full(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def channels_first(self, x: torch.Tensor) -> bool:
        return x.dim() == 2  # on [B, T, F] the output channels are last


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


def channel_layer_of(module: nn.Module) -> ChannelLayer | None:
    """The :class:`ChannelLayer` of a plain ``nn.Conv1d/2d/3d`` (zero padding) or ``nn.Linear``
    (subclasses included), None for any other module.

    Example:
        >>> type(channel_layer_of(torch.nn.Conv1d(1, 1, 1))).__name__, channel_layer_of(torch.nn.ReLU())
        ('ConvLayer', None)
    """
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.padding_mode == "zeros":
        return ConvLayer(module)
    if isinstance(module, nn.Linear):
        return LinearLayer(module)
    return None
