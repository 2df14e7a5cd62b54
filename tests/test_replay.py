"""Suffix replay on models that are not an nn.Sequential: fast == plain, and the replay is real."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import resil.campaign as rc
from resil.campaign.replay import ModuleReplay


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        out += x  # in-place residual: a replayed output must be a copy
        return F.relu(out)


class ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.block1, self.block2 = Block(4), Block(4)
        self.head = nn.Linear(4 * 8 * 8, 5)
        self.head2 = nn.Linear(5, 3)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block2(self.block1(F.relu(self.stem(x))))
        return self.head2(F.relu(self.head(torch.flatten(h, 1))))


class Tied(nn.Module):
    """An embedding whose weight the output layer reuses (tied weights)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.mid, self.out = nn.Embedding(12, 6), nn.Linear(6, 6), nn.Linear(6, 12, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mid(self.emb(t).mean(1))))


def tables(model_fn, x, y, kinds, tmp_path, scenarios=120):
    out = {}
    for mode in ("fast", "plain"):
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=scenarios), sites=rc.SiteSpec(kinds=kinds),
                               run=rc.RunSpec(mode=mode, shard_size=40))
        out[mode] = rc.run(spec, tmp_path / mode, model=model_fn().eval(), data=(x, y)).table().to_pandas()
    return out


@pytest.mark.parametrize("kinds", [("weight", "bias", "buffer"), ("activation",)])
def test_residual_class_fast_equals_plain(tmp_path, kinds):
    torch.manual_seed(1)
    x, y = torch.randn(20, 1, 8, 8), torch.randint(0, 3, (20,))
    t = tables(ResidualNet, x, y, kinds, tmp_path)
    pd.testing.assert_frame_equal(t["fast"], t["plain"])
    # random values are not a function of the stored code: not grouped, each scenario runs alone with the prefix replayed
    spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=60),
                           sites=rc.SiteSpec(include=("head*", "block2*"), kinds=kinds), faults=rc.FaultSpec(model="random_value"),
                           run=rc.RunSpec(shard_size=60))
    runner = rc.CampaignRunner(spec, ResidualNet().eval(), (x, y))
    runner.run_shard(0)
    replay = runner.evaluator.replay
    assert replay is not None and any(replay._exact.values())  # the prefix is replayed, checked without the faults


def test_tied_weights_count_as_faulted_together(tmp_path):
    torch.manual_seed(2)
    x, y = torch.randint(0, 12, (16, 5)), torch.randint(0, 12, (16,))
    t = tables(Tied, x, y, ("weight",), tmp_path, scenarios=150)
    pd.testing.assert_frame_equal(t["fast"], t["plain"])
    r = ModuleReplay(Tied().eval(), [x])
    r.golden()
    net = r.model
    assert r.replayed([net.out]) == []  # out's weight is emb's: emb must recompute, so nothing before it replays
    assert [n for n, _ in r.replayed([net.mid])] == ["emb"]


class Remember(nn.Module):
    """Keeps a value of its last input in a tensor attribute (state that glue may read)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.last = nn.Linear(3, 3), torch.zeros(())

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        self.last = t.sum()
        return self.lin(t)


def test_the_replay_skips_the_prefix_and_falls_back_when_glue_reads_state():
    net = ResidualNet().eval()
    x = torch.randn(6, 1, 8, 8)
    r = ModuleReplay(net, [x])
    golden = r.golden()
    assert [n for n, _ in r.replayed([net.head2])] == ["stem", "block1", "block2", "head"]
    calls = []
    hook = net.stem.register_forward_hook(lambda m, a, o: calls.append(1))
    # the check and the run: stem replayed (its hook still fires)
    assert r.check([net.head2]) and torch.equal(r.run([net.head2]), golden) and calls == [1, 1]
    hook.remove()

    class Glue(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c, self.b = Remember(), nn.Linear(3, 2)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.b(self.c(t)) * self.c.last  # glue reads the state the module set in this call

    g = Glue().eval()
    rr = ModuleReplay(g, [torch.randn(4, 3), torch.randn(4, 3)])
    gold = rr.golden()
    assert [n for n, _ in rr.replayed([g.b])] == ["c"]
    assert not torch.equal(rr._forward([rr.plan([g.b], b) for b in range(2)]), gold)  # replayed, c keeps the last batch's state ...
    assert not rr.check([g.b]) and torch.equal(rr.run([g.b]), gold)  # ... so the check refuses that replay set: full forward


class Wrapped(nn.Module):
    """The bundled dense CNN called from a class's own forward, with functional glue."""

    def __init__(self) -> None:
        super().__init__()
        import resil.models as rm

        self.net = rm.load("dense-cnn")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        h = n.pool(F.relu(n.conv2(F.relu(n.conv1(x)))))
        return n.fc2(F.relu(n.fc1(torch.flatten(h, 1))))


@pytest.mark.parametrize("batch_size", [64, 1])
def test_a_class_model_groups_many_scenarios_per_pass_and_matches_plain(tmp_path, batch_size):
    import resil.models as rm

    d = rm.dataset("digits")
    x, y = d.x_test[:64], d.y_test[:64]
    tables, runners = {}, {}
    for mode in ("fast", "plain"):
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=200),
                               sites=rc.SiteSpec(kinds=("weight", "bias", "activation")),
                               run=rc.RunSpec(mode=mode, shard_size=100, batch_size=batch_size))
        runners[mode] = rc.CampaignRunner(spec, Wrapped().eval(), (x, y))
        store = rc.Store(tmp_path / mode)
        store.create(runners[mode].manifest())
        for shard in range(runners[mode].shards):
            store.write(shard, runners[mode].run_shard(shard))
        tables[mode] = store.table().to_pandas()
    pd.testing.assert_frame_equal(tables["fast"], tables["plain"])
    grouped = runners["fast"].evaluator.grouped
    if batch_size > 1:  # one input per batch: the checks may refuse stacked kernels; the tables still agree
        stacked = any(k[0] == "replay" and k[3] > 1 and v for k, v in grouped._exact.items())
        gathered = any(v is not None for v in grouped._gathered.values())
        assert stacked or gathered  # groups of several scenarios per pass (all their rows, or the differing ones)


def test_a_memory_budget_forces_recomputation_and_still_matches(tmp_path):
    import resil.models as rm

    d = rm.dataset("digits")
    x, y = d.x_test, d.y_test  # conv outputs of 359 images: ~1.5-3 MB each, 8.5 MB for all stages
    tables = {}
    for name, mode, mb in (("budget", "fast", 4), ("none", "fast", 0), ("plain", "plain", 2048)):
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=120), sites=rc.SiteSpec(kinds=("weight", "activation")),
                               run=rc.RunSpec(mode=mode, shard_size=120, memory_mb=mb))
        runner = rc.CampaignRunner(spec, rm.load("dense-cnn"), (x, y))
        tables[name] = pd.DataFrame(runner.run_shard(0)).drop(columns=["fault_sites", "fault_indices", "fault_masks"])
        if mode == "fast":
            replay = runner.evaluator.replay
            assert replay is not None and not runner.evaluator.suffix.stages  # the stage recordings passed the budget
            kept = sum(sum(t.numel() * 4 for calls in per_batch for t in calls) for per_batch in replay.recorded.values())
            assert kept <= mb << 20 and (kept > 0) == (mb > 0)
    pd.testing.assert_frame_equal(tables["budget"], tables["plain"])
    pd.testing.assert_frame_equal(tables["none"], tables["plain"])
