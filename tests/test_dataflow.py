"""The data-flow trace behind call-level replay, and fast == plain on models it replays more of."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from test_replay import Remember
from torch import nn
from torch.nn import functional as F

import resil.campaign as rc
from resil.campaign.dataflow import trace_faults
from resil.campaign.replay import ModuleReplay


def reached_names(model: nn.Module, x: torch.Tensor, targets: list[nn.Module]) -> list[tuple[str, int, bool]] | None:
    names = {id(m): n for n, m in model.named_modules()}
    t = trace_faults(model, x, targets)
    return None if t.reached is None else [(names[c.module], c.index, r) for c, r in zip(t.calls, t.reached, strict=True)]


class Branches(nn.Module):
    """``b`` reads only the input, ``c`` reads ``a``'s output through an identity, ``d`` reads ``a``'s weight functionally."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c, self.d = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)
        self.same = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        side = self.b(x)
        tied = self.d(F.linear(x, self.a.weight))
        return self.c(self.same(h)) + side + tied


def test_calls_that_read_the_target_directly_through_an_identity_or_its_weight_are_reached():
    net = Branches().eval()
    got = reached_names(net, torch.randn(2, 3), [net.a])
    # by construction: b reads x only; same returns a's output without an operation; d reads a.weight
    assert got == [("a", 0, True), ("b", 0, False), ("d", 0, True), ("same", 0, True), ("c", 0, True)]


class Peek(nn.Module):
    """Returns a tensor it was handed earlier, without an argument or an operation."""

    def forward(self) -> torch.Tensor:
        return self.value


class Handover(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.peek, self.b = nn.Linear(3, 3), Peek(), nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.peek.value = self.a(x)
        return self.b(self.peek())


def test_a_call_that_returns_a_reached_tensor_is_reached():
    net = Handover().eval()
    assert reached_names(net, torch.randn(2, 3), [net.a]) == [("a", 0, True), ("peek", 0, True), ("b", 0, True)]


class Loop(nn.Module):
    """A time loop: ``enc`` and ``neuron1`` at every step see only the input and their own state."""

    def __init__(self, steps: int = 3) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.steps = steps
        self.enc, self.fc, self.out = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mem = torch.zeros(len(x), 6)
        total = torch.zeros(())
        for _ in range(self.steps):
            mem = 0.5 * mem + self.enc(x)
            spk = (mem > 0.3).float()
            total = total + self.out(torch.relu(self.fc(spk)))
        return total


def test_a_time_loop_replays_the_calls_after_the_target_that_it_cannot_reach():
    net = Loop().eval()
    got = reached_names(net, torch.randn(5, 4), [net.fc])
    assert [(n, i) for n, i, r in got if not r] == [("enc", 0), ("enc", 1), ("enc", 2)]
    r = ModuleReplay(net, [torch.randn(5, 4)])
    r.golden()
    assert r.plan([net.fc], 0).calls == {id(net.enc): frozenset({0, 1, 2})}  # every step's enc replays, not only the first


class Steered(nn.Module):
    """Python control flow on the target's output: the trace must give up beyond the prefix."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.a, self.b, self.c = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 0:
            h = h * 2
        return self.b(x) + self.c(h)


def test_a_value_that_steers_python_escapes():
    net = Steered().eval()
    assert reached_names(net, torch.randn(2, 3), [net.a]) is None
    assert reached_names(net, torch.randn(2, 3), [net.c]) is not None  # c's output steers nothing


class StateLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.keep, self.a = Remember(), nn.Linear(3, 3)  # its state: replaying some calls only would go stale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.keep(x)
        y = self.keep(self.a(y))  # its second call is reached, so its first must compute too
        return y * self.keep.last


def test_a_module_with_state_replays_at_every_call_or_at_none():
    net = StateLoop().eval()
    r = ModuleReplay(net, [torch.randn(4, 3)])
    r.golden()
    assert id(net.keep) in r.stateful
    # keep's first call is clean, but its second is reached: keep computes at both (setting its state),
    # and only its stateless child's first call replays
    assert r.plan([net.a], 0).calls == {id(net.keep.lin): frozenset({0})}


class Recurrent(nn.Module):
    """An RNN cell written by hand: ``cell`` reads its own previous output at every step."""

    def __init__(self, steps: int = 4) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.steps = steps
        self.cell, self.out = nn.Linear(3 + 4, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(len(x), 4)
        for _ in range(self.steps):
            h = torch.tanh(self.cell(torch.cat([x, h], 1)))
        return self.out(h)


# every kind alone and mixed: a stage's weight and output faults are grouped apart, so each path runs
KINDS = [("weight", "bias"), ("activation",), ("weight", "bias", "activation")]


@pytest.mark.parametrize("kinds", KINDS, ids=["weights", "outputs", "mixed"])
@pytest.mark.parametrize("model", [Loop, Branches, Steered, StateLoop, Recurrent])
def test_fast_equals_plain_where_calls_after_the_target_replay(tmp_path, model, kinds):
    torch.manual_seed(4)
    x = torch.randn(24, 4 if model is Loop else 3)
    y = torch.randint(0, 3, (24,))
    tables = {}
    for mode in ("fast", "plain"):
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=150),
                               sites=rc.SiteSpec(kinds=kinds), run=rc.RunSpec(mode=mode, shard_size=150))
        runner = rc.CampaignRunner(spec, model().eval(), (x, y))
        tables[mode] = pd.DataFrame(runner.run_shard(0))
    pd.testing.assert_frame_equal(tables["fast"], tables["plain"])


def test_the_spiking_class_replays_its_encoder_at_every_step_and_matches_plain(tmp_path):
    import resil.models as rm
    from resil.models import architectures as arch

    d = rm.dataset("digits")
    tables, runners = {}, {}
    for mode in ("fast", "plain"):
        net = arch.SpikingClass()
        net.load_state_dict(torch.load(rm.info("snn").checkpoint, map_location="cpu", weights_only=True))
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=120), sites=rc.SiteSpec(kinds=("weight", "state", "spike")),
                               run=rc.RunSpec(mode=mode, shard_size=120))
        runners[mode] = rc.CampaignRunner(spec, net.eval(), (d.x_test[:48], d.y_test[:48]))
        tables[mode] = pd.DataFrame(runners[mode].run_shard(0))
    pd.testing.assert_frame_equal(tables["fast"], tables["plain"])
    replay = runners["fast"].evaluator.replay
    net = runners["fast"].model
    assert replay.plan([net.fc1], 0).calls[id(net.conv1)] == frozenset(range(net.steps))  # all 8 steps, after fc1's first call too


class Changing(nn.Module):
    """Calls ``a`` once more (its result unused) on every forward after the first: the calls differ from the golden run's."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
        self.forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        if self.forwards > 1:
            self.a(x * 2)
        return self.b(self.a(x))


def test_a_forward_whose_calls_leave_the_golden_order_is_not_trusted():
    net = Changing().eval()
    x = torch.randn(4, 3)
    r = ModuleReplay(net, [x])
    golden = r.golden()  # forward 1: a called once
    assert r.replayed([net.b]) == [("a", net.a)]
    assert not r.check([net.b])  # the check's forward calls a twice: refused, not trusted
    assert torch.equal(r.run([net.b]), golden)  # a full forward


class ListState(nn.Module):
    """An RNN-like cell keeping its state in a list attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.state = nn.Linear(3, 3), [torch.zeros(())]

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        self.state = [t.mean()]
        return self.lin(t) + self.state[0]


def test_state_kept_in_a_list_counts_as_state():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(6)
            self.cell, self.a = ListState(), nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.cell(self.a(self.cell(x)))

    net = Net().eval()
    r = ModuleReplay(net, [torch.randn(4, 3)])
    r.golden()
    assert id(net.cell) in r.stateful and id(net.cell) not in r.plan([net.a], 0).calls


def test_what_faults_in_several_modules_reach_is_the_union_of_what_each_ones_reach():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c, self.d = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.b(x) + self.a(x)
            return self.d(torch.relu(self.c(x)) * h)

    torch.manual_seed(0)
    net, x = Net().eval(), torch.randn(5, 4)
    replay = ModuleReplay(net, [x])
    replay.golden()
    for pair in ([net.a, net.c], [net.b, net.c], [net.a, net.d]):
        direct = trace_faults(net, x, pair)  # one trace with both modules as sources: the oracle
        assert replay._reached(replay._targets(pair), 0) == direct.reached
