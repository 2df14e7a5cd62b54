"""Linear layers on ``[B, tokens, features]`` inputs (features last: token MLPs, transformer feed-forwards)
recompute their touched output features alone in the fast mode, and fast == plain on such models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import resil.campaign as rc
from resil.campaign import grouped


class TokenMixer(nn.Module):
    """Image rows as tokens: a feature MLP, a token-mixing Linear on the transposed tokens, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.mlp, self.mix = nn.Linear(28, 24), nn.Linear(24, 24), nn.Linear(28, 8)
        self.norm, self.head = nn.LayerNorm(24), nn.Linear(8 * 24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x.squeeze(1))                  # [B, 28 tokens, 24 features]
        t = self.norm(t + self.mlp(F.relu(t)))  # not GELU: rows of 672 elements meet its scalar tail (layout.py)
        return self.head(self.mix(t.transpose(1, 2)).flatten(1))  # mix: [B, 24, 28] -> [B, 24, 8]


def token_sequential() -> nn.Module:
    """An ``nn.Sequential`` whose Linear stages see ``[B, 28, features]``."""
    return nn.Sequential(nn.Flatten(1, 2), nn.Linear(28, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Flatten(), nn.Linear(448, 10))


def _runner(make, mode: str, data, n: int, batch_size: int = 512, scenarios: int = 150) -> rc.CampaignRunner:
    torch.manual_seed(0)
    spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=scenarios), sites=rc.SiteSpec(kinds=("weight", "bias")),
                           run=rc.RunSpec(mode=mode, shard_size=scenarios, batch_size=batch_size))
    return rc.CampaignRunner(spec, make().eval(), (data[0][:n], data[1][:n]))


@pytest.mark.parametrize("batch_size", [512, 24], ids=["one-batch", "three-batches"])
@pytest.mark.parametrize("n", [37, 64], ids=["odd", "even"])
@pytest.mark.parametrize("make", [TokenMixer, token_sequential], ids=["class", "sequential"])
def test_features_last_layers_group_and_fast_equals_plain(make, n, batch_size, mnist, monkeypatch):
    dims: list[int] = []
    original = grouped.GroupedForward._touched_weights

    def noted(self, stage, sc, positions, sites):
        touched = original(self, stage, sc, positions, sites)
        if touched is not None:
            dims.append(touched.dim)
        return touched

    monkeypatch.setattr(grouped.GroupedForward, "_touched_weights", noted)
    fast = pd.DataFrame(_runner(make, "fast", mnist, n, batch_size).run_shard(0))
    plain = pd.DataFrame(_runner(make, "plain", mnist, n, batch_size).run_shard(0))
    pd.testing.assert_frame_equal(fast, plain)
    assert 2 in dims  # features-last layers were recomputed by touched feature


def test_touched_features_equal_the_faulty_full_layer(mnist):
    """The oracle: torch's full ``F.linear`` with the weight's bits flipped by numpy, feature by feature."""
    runner = _runner(TokenMixer, "fast", mnist, 37)
    g = runner.evaluator.grouped
    sc = runner.sampler.draw(np.arange(150))
    stage = g.suffix.stage_of[id(runner.model.mlp)]
    positions = np.flatnonzero(g.stages(sc, runner.sites) == stage)[:6]
    touched = g._touched_weights(stage, sc, positions, runner.sites)
    assert touched is not None and touched.dim == 2
    x = g._input(0, stage)
    got = touched.rows(0, 0)                         # [B, rows, tokens]
    mlp = runner.model.mlp
    for r, (s, c) in enumerate(zip(touched.scen, touched.channel, strict=True)):
        weight, bias = mlp.weight.detach().numpy().copy(), mlp.bias.detach().numpy().copy()
        for j in np.flatnonzero(sc.owner == positions[s]):
            target = weight if sc.faults.site_names[sc.faults.site[j]].endswith("weight") else bias
            target.reshape(-1).view(np.uint32)[sc.faults.index[j]] ^= np.uint32(sc.faults.mask[j])
        want = F.linear(x, torch.from_numpy(weight), torch.from_numpy(bias))[:, :, c]
        assert torch.equal(got[:, r].view(torch.int32), want.view(torch.int32))
