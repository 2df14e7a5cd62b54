"""Fault dropping per input in any module tree: only the (scenario, input) rows that differ run."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import resil
import resil.campaign as rc
from resil.campaign.dataflow import read_replays
from resil.campaign.replay import ModuleReplay


class Pooled(nn.Module):
    """conv -> relu -> max pool -> linear: a fault in the linear's weight on a feature that is zero for an
    input changes nothing for that input."""

    def __init__(self, residual: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.residual = residual
        self.conv, self.fc, self.skip = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 2 * 2, 3), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(torch.flatten(F.max_pool2d(torch.relu(self.conv(x)), 2), 1))
        return out + self.skip(torch.flatten(x, 1)) if self.residual else out  # skip's call comes after conv's


def tables(residual: bool, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, pd.DataFrame], rc.CampaignRunner]:
    out, runner = {}, None
    for mode in ("fast", "plain"):
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=300),
                               sites=rc.SiteSpec(("fc.weight",), kinds=("weight",)), run=rc.RunSpec(mode=mode, shard_size=300))
        r = rc.CampaignRunner(spec, Pooled(residual).eval(), (x, y))
        out[mode] = pd.DataFrame(r.run_shard(0))
        runner = r if mode == "fast" else runner
    assert runner is not None
    return out, runner


@pytest.mark.parametrize("residual", [False, True])
def test_only_the_inputs_a_fault_reaches_run_and_fast_equals_plain(residual):
    torch.manual_seed(1)
    x, y = torch.rand(32, 1, 4, 4), torch.randint(0, 3, (32,))
    t, runner = tables(residual, x, y)
    pd.testing.assert_frame_equal(t["fast"], t["plain"])
    modes = {k: v for k, v in runner.evaluator.grouped._gathered.items() if v is not None}
    # with the skip branch, glue adds the replayed skip output to the gathered rows: it must be gathered too
    assert modes and set(modes.values()) == {"read" if residual else "recorded"}


def test_the_rows_that_run_are_the_inputs_whose_feature_is_not_zero(monkeypatch):
    torch.manual_seed(1)
    net = Pooled(False).eval()
    x = torch.rand(32, 1, 4, 4) - 0.5
    with torch.no_grad():
        golden = net(x)
        features = torch.flatten(F.max_pool2d(torch.relu(net.conv(x)), 2), 1)
    # by hand: flipping bit 30 of fc.weight[1, k] multiplies the weight by about 2^128 or 2^-128; output 1 of
    # input i changes exactly where feature k of input i is not zero
    k = int((features == 0).float().mean(0).argmax())  # the feature most often zero
    changes = features[:, k] != 0
    assert 0 < int(changes.sum()) < 32
    faults = resil.FaultSet("fc.weight", [1 * 16 + k], [30])
    with torch.no_grad(), resil.inject(net, faults):
        faulty = net(x)
    assert torch.equal((faulty.view(torch.int32) != golden.view(torch.int32)).any(1), changes)  # the oracle holds
    ev = rc.Evaluator(net, x, golden.argmax(1))
    sizes: list[int] = []  # rows the faulted layer returns in each forward over a group
    forward = ModuleReplay.stacked_forward

    def counted(self, batch, target, calls, rows, only_read=False):
        if not ev.grouped._checking:  # the group's forwards, not the exactness checks' (stacked copies, by design)
            sizes.append(len(calls[0]))
        return forward(self, batch, target, calls, rows, only_read)

    monkeypatch.setattr(ModuleReplay, "stacked_forward", counted)
    counts = ev.evaluate_faults([faults, faults])  # a group of two identical scenarios
    assert int(counts["masked"][0]) == int(counts["masked"][1]) == int((~changes).sum())
    live = 2 * int(changes.sum())
    assert sizes and max(sizes) < 64 and live <= min(sizes) <= live + 2  # never all 2 x 32 rows: the differing ones (padded) ran


class Block(nn.Module):
    """A residual block: its input meets its output in an addition."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + x)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.blocks = nn.Sequential(Block(4), Block(4), Block(4))
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def _resnet() -> tuple[TinyResNet, torch.Tensor]:
    torch.manual_seed(3)
    net = TinyResNet()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
    return net.eval(), torch.rand(24, 3, 6, 6)


def test_only_the_replayed_outputs_the_stacked_part_reads_are_gathered():
    net, x = _resnet()
    target = net.blocks[2].conv1
    replay = ModuleReplay(net, [x])
    replay.golden()
    plan = replay.plan([target], 0).calls
    names = {id(m): n for n, m in net.named_modules()}
    assert sorted(names[k] for k in plan) == ["blocks.0", "blocks.1", "bn", "stem"]
    calls, uses_input = read_replays(net, x[:1], plan, target)
    # the stem's and the first block's outputs feed only replayed modules; blocks.1's meets the
    # stacked rows in blocks.2's residual addition; the input feeds only the replayed stem
    assert sorted(names[k] for k, _ in calls) == ["blocks.1"] and not uses_input
    assert replay.stacked_reads(target, 0) == (calls, uses_input)


def test_a_residual_network_gathers_only_what_it_reads_and_fast_equals_plain():
    net, x = _resnet()
    t = {}
    for mode in ("fast", "plain"):
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=200), sites=rc.SiteSpec(("blocks.*",), kinds=("weight",)),
                               run=rc.RunSpec(mode=mode, shard_size=200))
        r = rc.CampaignRunner(spec, net, x)
        t[mode] = pd.DataFrame(r.run_shard(0))
        if mode == "fast":
            used = set(r.evaluator.grouped._stack_prefix.values())
    pd.testing.assert_frame_equal(t["fast"], t["plain"])
    assert "read" in used


class ShapeGlue(nn.Module):
    """Glue reads the batch size from the input, which otherwise feeds only a replayed module."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return self.c(torch.relu(self.b(self.a(x)))).reshape(n, -1)


def test_a_shape_read_from_a_replayed_value_makes_it_gathered_and_fast_equals_plain():
    torch.manual_seed(4)
    net, x = ShapeGlue().eval(), torch.randn(20, 6)
    replay = ModuleReplay(net, [x])
    replay.golden()
    assert read_replays(net, x[:1], replay.plan([net.b], 0).calls, net.b)[1]  # x.shape read: the input is gathered
    t = {}
    for mode in ("fast", "plain"):
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=150), sites=rc.SiteSpec(("b.*",), kinds=("weight",)),
                               run=rc.RunSpec(mode=mode, shard_size=150))
        t[mode] = pd.DataFrame(rc.CampaignRunner(spec, net, x).run_shard(0))
    pd.testing.assert_frame_equal(t["fast"], t["plain"])
