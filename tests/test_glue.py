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


def glue_names(model: nn.Module, target: nn.Module, channels: int = 1):
    x = torch.rand(1, channels, 4, 4)
    g = glue_after(trace_faults(model, x, [target]), id(target), {id(m): m for m in model.modules()})
    names = {id(m): n for n, m in model.named_modules()}
    return None if g is None else (list(g.names), g.flatten, names[g.consumer])


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


class Inverted(nn.Module):
    """conv -> bn -> F.relu -> depthwise conv -> bn -> nn.ReLU6 -> 1x1 conv -> bn (+ the input) -> fc:
    the touched channels of the first conv are carried through modules that compute each channel alone."""

    def __init__(self, residual: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.residual = residual
        self.conv, self.bn1 = nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8)
        self.dw, self.bn2, self.act = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6()
        self.project, self.bn3 = nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)
        for bn in (self.bn1, self.bn2, self.bn3):  # statistics and affine parameters that are not the identity
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn1(self.conv(x))
        out = self.bn3(self.project(self.act(self.bn2(self.dw(F.relu(h))))))
        if self.residual:  # bn1's output is read again: the fault no longer reaches the rest only through project
            out = out + h[:, :4]
        return self.fc(torch.flatten(out + x, 1))


def test_the_chain_goes_through_batchnorm_activation_and_depthwise_modules():
    net = Inverted().eval()
    assert glue_names(net, net.conv, 4) == (["BatchNorm2d", "relu", "Conv2d", "BatchNorm2d", "ReLU6"], False, "project")
    assert glue_names(net, net.dw, 4) == (["BatchNorm2d", "ReLU6"], False, "project")
    assert glue_names(net, net.project, 4) is None  # bn3's output meets the input: not channel-local
    other = Inverted(residual=True).eval()
    assert glue_names(other, other.conv, 4) is None
    net.bn1.register_forward_hook(lambda m, a, out: out)  # a hook may change what it computes: the chain stops there
    assert glue_names(net, net.conv, 4) == ([], False, "bn1")



@pytest.mark.parametrize("residual", [False, True])
def test_fast_equals_plain_through_batchnorm_and_depthwise_links(residual, monkeypatch):
    from resil.campaign.replay import ModuleReplay

    alone: list[int] = []
    run = ModuleReplay.run
    monkeypatch.setattr(ModuleReplay, "run", lambda self, targets: alone.append(1) or run(self, targets))
    torch.manual_seed(2)
    x, y = torch.rand(40, 4, 4, 4) - 0.4, torch.randint(0, 3, (40,))
    tables, runners = {}, {}
    for mode in ("fast", "plain"):
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=300), sites=rc.SiteSpec(("conv.*", "dw.*", "bn1.*")),
                               run=rc.RunSpec(mode=mode, shard_size=300))
        runners[mode] = rc.CampaignRunner(spec, Inverted(residual).eval(), (x, y))
        alone.clear()
        tables[mode] = pd.DataFrame(runners[mode].run_shard(0))
        if mode == "fast":
            ran_alone = len(alone)
    pd.testing.assert_frame_equal(tables["fast"], tables["plain"])
    grouped, net = runners["fast"].evaluator.grouped, runners["fast"].model
    assert (grouped._glues.get(grouped.suffix.stage_of[id(net.conv)]) is not None) == (not residual)
    assert grouped._glues.get(grouped.suffix.stage_of[id(net.dw)]) is not None  # dw's chain ends before the residual
    assert ran_alone < 30  # grouped, not one forward per scenario


class SharedReLU(nn.Module):
    """torchvision's BasicBlock pattern: one in-place ``self.relu`` module called after both convolutions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1, self.bn1 = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.relu, self.fc = nn.ReLU(inplace=True), nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += x
        return self.fc(torch.flatten(self.relu(out), 1))


def test_a_relu_module_called_at_several_places_is_a_link_and_fast_equals_plain():
    net = SharedReLU().eval()
    assert glue_names(net, net.conv1, 4) == (["BatchNorm2d", "ReLU"], False, "conv2")
    torch.manual_seed(4)
    x, y = torch.randn(33, 4, 4, 4), torch.randint(0, 3, (33,))
    tables, runners = {}, {}
    for mode in ("fast", "plain"):
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=200),
                               sites=rc.SiteSpec(kinds=("weight", "activation")), run=rc.RunSpec(mode=mode, shard_size=200))
        runners[mode] = rc.CampaignRunner(spec, SharedReLU().eval(), (x, y))
        tables[mode] = pd.DataFrame(runners[mode].run_shard(0))
    pd.testing.assert_frame_equal(tables["fast"], tables["plain"])
    grouped, model = runners["fast"].evaluator.grouped, runners["fast"].model
    assert grouped._glues.get(grouped.suffix.stage_of[id(model.conv1)]) is not None
