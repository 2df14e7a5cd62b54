"""Touched-channel recomputation for more layers: Conv1d/Conv3d, grouped and depthwise convs, pruned layers."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import resil.campaign as rc


def depthwise_2d() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.ReLU(),
                         nn.Conv2d(6, 4, 1, groups=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def conv_1d() -> nn.Module:
    return nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Conv1d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 6, 3))


def conv_3d() -> nn.Module:
    return nn.Sequential(nn.Conv3d(1, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 27, 3))


def pruned() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 12), nn.ReLU(), nn.Linear(12, 3))
    prune.global_unstructured([(net[0], "weight"), (net[3], "weight")], prune.L1Unstructured, amount=0.5)
    return net


#: model, input shape, the stages whose touched channels must be recomputed alone (grouped, depthwise, pruned ...)
CASES = {"depthwise_2d": (depthwise_2d, (3, 6, 6), {2, 4}), "conv_1d": (conv_1d, (2, 10), {2}), "conv_3d": (conv_3d, (1, 4, 4, 4), {0}),
         "pruned": (pruned, (3, 6, 6), {0, 3})}


@pytest.mark.parametrize("name", CASES)
def test_fast_equals_plain_and_recomputes_touched_channels(tmp_path, name):
    make, shape, patched = CASES[name]
    torch.manual_seed(3)
    x, y = torch.randn(24, *shape), torch.randint(0, 3, (24,))
    tables, runners = {}, {}
    for mode in ("fast", "plain"):
        torch.manual_seed(0)
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=160), sites=rc.SiteSpec(kinds=("weight", "bias")),
                               run=rc.RunSpec(mode=mode, shard_size=160))
        runners[mode] = rc.CampaignRunner(spec, make().eval(), (x, y))
        tables[mode] = pd.DataFrame(runners[mode].run_shard(0)).drop(columns=["fault_sites", "fault_indices", "fault_masks"])
    pd.testing.assert_frame_equal(tables["fast"], tables["plain"])
    exact = runners["fast"].evaluator.grouped._exact
    assert patched <= {k[1] for k, v in exact.items() if k[0] == "rows" and v}, exact  # touched channels recomputed alone
