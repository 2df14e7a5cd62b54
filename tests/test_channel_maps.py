"""Layers computed channel by channel: BatchNorm recomputed from its weight rows, and the channel
maps that carry touched channels alone through eval BatchNorm and depthwise convolutions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import resil.campaign as rc
from resil.channel_layers import BatchNormLayer, channel_layer_of, channel_map_of
from resil.site import Adapter


def _bn(cls: type[nn.Module], c: int, affine: bool = True) -> nn.Module:
    torch.manual_seed(0)
    bn = cls(c, affine=affine)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.2, 3)
    if affine:
        nn.init.uniform_(bn.weight, -2, 2)
        nn.init.uniform_(bn.bias, -1, 1)
    return bn.eval()


def _by_hand(x: np.ndarray, bn: nn.Module, channels: np.ndarray) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * weight + bias per channel, in float64 (the oracle)."""
    shape = (1, len(channels)) + (1,) * (x.ndim - 2)
    mean = bn.running_mean.double().numpy()[channels].reshape(shape)
    var = bn.running_var.double().numpy()[channels].reshape(shape)
    w = np.ones(shape) if bn.weight is None else bn.weight.detach().double().numpy()[channels].reshape(shape)
    b = np.zeros(shape) if bn.bias is None else bn.bias.detach().double().numpy()[channels].reshape(shape)
    return (x - mean) / np.sqrt(var + bn.eps) * w + b


@pytest.mark.parametrize("cls, shape", [(nn.BatchNorm1d, (5, 6)), (nn.BatchNorm1d, (5, 6, 3)), (nn.BatchNorm2d, (5, 6, 3, 4)),
                                        (nn.BatchNorm3d, (2, 6, 2, 3, 2))])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_channels_are_carried_alone(cls, shape, affine):
    bn = _bn(cls, shape[1], affine)
    x = torch.randn(*shape)
    channels = torch.tensor([4, 1, 4, 0])  # repeated channels: one row per (scenario, channel)
    with torch.no_grad():
        got, want = channel_map_of(bn)(x[:, channels], channels), bn(x)[:, channels]
    assert torch.equal(got, want)
    want = _by_hand(x.double().numpy()[:, channels.numpy()], bn, channels.numpy())
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5, atol=1e-6)


def test_batchnorm_rows_recompute_channels_from_given_weights():
    bn = _bn(nn.BatchNorm2d, 3)
    x = torch.randn(4, 3, 2, 2)
    layer = channel_layer_of(bn)
    assert isinstance(layer, BatchNormLayer)
    w, b = torch.tensor([7.0]), torch.tensor([-3.0])
    with torch.no_grad():
        got = layer.rows(x, w, b, [1]).double().numpy()
    mean, var = bn.running_mean[1].item(), bn.running_var[1].item()
    want = (x[:, 1:2].double().numpy() - mean) / np.sqrt(var + bn.eps) * 7.0 - 3.0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert channel_layer_of(_bn(nn.BatchNorm2d, 3, affine=False)) is None  # nothing to fault


@pytest.mark.parametrize("dims, stride, dilation", [(1, 1, 1), (2, 2, 1), (2, 1, 2), (3, 1, 1)])
def test_depthwise_channels_are_carried_alone(dims, stride, dilation):
    conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    torch.manual_seed(1)
    conv = conv_cls(5, 5, 3, stride=stride, padding=1, dilation=dilation, groups=5)
    x = torch.randn(3, 5, *([6] * dims))
    channels = torch.tensor([3, 3, 0])
    with torch.no_grad():
        got, want = channel_map_of(conv)(x[:, channels], channels), conv(x)[:, channels]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module", [nn.Conv2d(4, 8, 3, groups=4), nn.Conv2d(4, 4, 3, groups=2),
                                    nn.Conv2d(4, 4, 3, groups=4, padding_mode="circular"), nn.BatchNorm2d(3).train(),
                                    nn.BatchNorm2d(3, track_running_stats=False).eval(), nn.Linear(3, 3), nn.LayerNorm(3)])
def test_modules_that_mix_channels_or_batches_have_no_channel_map(module):
    assert Adapter().channel_map(module) is None


def test_a_hook_turns_the_channel_map_off():
    bn = _bn(nn.BatchNorm2d, 3)
    assert Adapter().channel_map(bn) is not None
    bn.register_forward_pre_hook(lambda m, a: None)
    assert Adapter().channel_map(bn) is None


class SequentialBN(nn.Sequential):
    """conv -> bn -> relu -> depthwise -> bn -> conv -> flatten -> linear as an nn.Sequential."""

    def __init__(self) -> None:
        torch.manual_seed(3)
        super().__init__(nn.Conv2d(2, 6, 3, padding=1), _bn(nn.BatchNorm2d, 6), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1, groups=6),
                         _bn(nn.BatchNorm2d, 6), nn.Conv2d(6, 3, 1), nn.Flatten(), nn.Linear(3 * 16, 4))


def test_sequential_fast_equals_plain_through_batchnorm_and_depthwise_stages():
    torch.manual_seed(4)
    x, y = torch.randn(32, 2, 4, 4), torch.randint(0, 4, (32,))
    tables, runners = {}, {}
    for mode in ("fast", "plain"):
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=300),
                               sites=rc.SiteSpec(kinds=("weight", "bias", "activation")), run=rc.RunSpec(mode=mode, shard_size=300))
        runners[mode] = rc.CampaignRunner(spec, SequentialBN().eval(), (x, y))
        tables[mode] = pd.DataFrame(runners[mode].run_shard(0))
    pd.testing.assert_frame_equal(tables["fast"], tables["plain"])
    grouped = runners["fast"].evaluator.grouped
    assert grouped.sequential
    carried = [k for k in grouped._exact if k[0] == "local" and grouped._exact[k]]
    assert {k[1] for k in carried} >= {1, 3, 4}  # the BatchNorms and the depthwise conv carried touched channels
