"""Fault dropping per input in any module tree: only the (scenario, input) rows that differ run."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import resil
import resil.campaign as rc
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
    assert modes and set(modes.values()) == {residual}


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

    def counted(self, batch, target, calls, rows):
        sizes.append(len(calls[0]))
        return forward(self, batch, target, calls, rows)

    monkeypatch.setattr(ModuleReplay, "stacked_forward", counted)
    counts = ev.evaluate_faults([faults, faults])  # a group of two identical scenarios
    assert int(counts["masked"][0]) == int(counts["masked"][1]) == int((~changes).sum())
    live = 2 * int(changes.sum())
    assert sizes and max(sizes) < 64 and live <= min(sizes) <= live + 2  # never all 2 x 32 rows: the differing ones (padded) ran
