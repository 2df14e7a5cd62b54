"""Carrying touched channels through functional glue in a model's own forward."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import resil.campaign as rc
from resil.campaign.dataflow import trace_faults
from resil.campaign.glue import glue_after


class Chain(nn.Module):
    """conv -> F.relu -> F.max_pool2d -> torch.flatten -> fc, optionally with a second reader of the pooled value."""

    def __init__(self, reread: str = "") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.reread = reread
        self.conv, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc, self.out = nn.Linear(4 * 2 * 2, 5), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.conv(x))))
        pooled = F.max_pool2d(h, 2)
        y = self.out(F.relu(self.fc(torch.flatten(pooled, 1))))
        if self.reread == "sum":  # the pooled value is read again after fc: not only through fc
            return y + pooled.sum((1, 2, 3)).unsqueeze(1)
        if self.reread == "scale":  # a link is not channel-local (it mixes channels)
            return self.out(F.relu(self.fc(torch.flatten(pooled, 1) * pooled.mean())))
        return y


def glue_names(model: nn.Module, target: nn.Module):
    g = glue_after(trace_faults(model, torch.rand(1, 1, 4, 4), [target]), id(target))
    names = {id(m): n for n, m in model.named_modules()}
    return None if g is None else ([getattr(op.func, "__name__", "") for op in g.steps], g.flatten, names[g.consumer])


def test_the_chain_to_the_next_reader_is_found():
    net = Chain().eval()
    assert glue_names(net, net.conv2) == (["relu", "max_pool2d"], True, "fc")
    assert glue_names(net, net.conv) == (["relu"], False, "conv2")
    assert glue_names(net, net.fc) == (["relu"], False, "out")


@pytest.mark.parametrize("reread", ["sum", "scale"])
def test_no_glue_where_the_fault_reaches_more_than_one_reader(reread):
    net = Chain(reread).eval()
    assert glue_names(net, net.conv2) is None


@pytest.mark.parametrize("reread", ["", "sum", "scale"])
def test_fast_equals_plain_with_and_without_glue(reread):
    torch.manual_seed(1)
    x, y = torch.rand(48, 1, 4, 4) - 0.3, torch.randint(0, 3, (48,))
    tables, runners = {}, {}
    for mode in ("fast", "plain"):
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=300),
                               sites=rc.SiteSpec(kinds=("weight", "bias", "activation")), run=rc.RunSpec(mode=mode, shard_size=300))
        runners[mode] = rc.CampaignRunner(spec, Chain(reread).eval(), (x, y))
        tables[mode] = pd.DataFrame(runners[mode].run_shard(0))
    pd.testing.assert_frame_equal(tables["fast"], tables["plain"])
    grouped, net = runners["fast"].evaluator.grouped, runners["fast"].model
    assert (grouped._glues.get(grouped.suffix.stage_of[id(net.conv2)]) is not None) == (reread == "")  # conv2's faults were grouped


def test_conv_faults_of_the_bundled_class_model_run_in_groups(monkeypatch):
    import resil.models as rm
    from resil.campaign.replay import ModuleReplay
    from resil.models import architectures as arch

    alone: list[int] = []
    run = ModuleReplay.run
    monkeypatch.setattr(ModuleReplay, "run", lambda self, targets: alone.append(1) or run(self, targets))
    d = rm.dataset("digits")
    tables = {}
    for mode in ("fast", "plain"):
        net = arch.DenseCNNClass()
        net.load_state_dict(torch.load(rm.info("dense-cnn").checkpoint, map_location="cpu", weights_only=True))
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=200),
                               sites=rc.SiteSpec(("conv2.*",), kinds=("weight", "bias")), run=rc.RunSpec(mode=mode, shard_size=200))
        runner = rc.CampaignRunner(spec, net.eval(), (d.x_test[:64], d.y_test[:64]))
        alone.clear()
        tables[mode] = pd.DataFrame(runner.run_shard(0))
        if mode == "fast":
            ran_alone = len(alone)
    pd.testing.assert_frame_equal(tables["fast"], tables["plain"])
    assert ran_alone <= 3  # at most the group timer's first scenarios alone; before the glue, every conv2 fault ran alone
