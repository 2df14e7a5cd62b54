"""Many scenarios per forward pass must give the plain path's outcome table bit for bit."""

import numpy as np
import pandas as pd
import pytest
import torch

import resil.campaign as rc
from resil.campaign import grouped
from resil.campaign.runner import CampaignRunner


def tables(model, kinds, fault_model="bitflip", faults=2, inputs=150, batch_size=64, scenarios=240, shard_size=120):
    out = {}
    for mode in ("plain", "fast"):
        spec = rc.CampaignSpec(
            model=rc.ModelSpec((model,)), data=rc.DataSpec(inputs=inputs), sites=rc.SiteSpec(kinds=kinds),
            faults=rc.FaultSpec(model=fault_model),
            sampler=rc.SamplerSpec(kind="uniform", scenarios=scenarios, faults_per_scenario=faults),
            run=rc.RunSpec(mode=mode, batch_size=batch_size, shard_size=shard_size))
        runner = CampaignRunner(spec)
        out[mode] = pd.concat([pd.DataFrame(runner.run_shard(s)) for s in range(runner.shards)], ignore_index=True)
        out[mode + "_runner"] = runner
    return out


def assert_same(t):
    for col in ("masked", "tolerable", "critical", "non_finite", "correct"):
        np.testing.assert_array_equal(t["fast"][col].to_numpy(), t["plain"][col].to_numpy(), err_msg=col)


@pytest.mark.parametrize("fault_model, faults", [("bitflip", 1), ("bitflip", 3), ('stuck_at:{"value": 1}', 2), ('burst:{"length": 3}', 1)])
def test_grouped_weight_and_bias_faults_match_plain_over_several_input_batches(fault_model, faults):
    t = tables("dense-cnn", ("weight", "bias"), fault_model, faults)
    assert_same(t)
    exact = t["fast_runner"].evaluator.grouped._exact
    assert any(k[0] == "rows" and v for k, v in exact.items())  # channels were recomputed alone
    assert any(k[0] == "local" and v for k, v in exact.items())  # and carried through relu/pool alone
    assert (t["fast"].masked < 150).sum() > 10


def test_single_fault_scenarios_are_evaluated_in_groups(monkeypatch):
    sizes = []
    original = grouped.GroupedForward.outputs
    def counted(self, k, sc, pos, sites):
        sizes.append(len(pos))
        return original(self, k, sc, pos, sites)

    monkeypatch.setattr(grouped.GroupedForward, "outputs", counted)
    t = tables("dense-cnn", ("weight",), faults=1, scenarios=200, shard_size=200)
    assert_same(t)
    # every single-stage scenario went through a group, but the few each stage runs alone to time them (4 weighted stages)
    assert max(sizes) > 50 and 200 - 4 * grouped.GroupTimer.EXPLORE <= sum(sizes) < 200


def test_failed_exactness_checks_fall_back_to_one_scenario_at_a_time(monkeypatch):
    monkeypatch.setattr(grouped, "same_bits", lambda a, b: False)
    t = tables("dense-cnn", ("weight", "bias"), scenarios=120)
    assert_same(t)
    assert not any(t["fast_runner"].evaluator.grouped._exact.values())


def test_grouped_activation_faults_match_plain():
    assert_same(tables("dense-cnn", ("activation",), faults=1, scenarios=160))


@pytest.mark.parametrize("model", ["int8", "pruned-80"])
def test_grouped_faults_on_quantized_and_pruned_models_match_plain(model):
    t = tables(model, ("weight",), faults=1, scenarios=200, shard_size=200)
    assert_same(t)
    assert (t["fast"].masked < 150).any()


def test_same_bits_tells_nan_payloads_apart():
    a = torch.tensor([float("nan")])
    b = a.view(torch.int32).bitwise_xor(torch.tensor([1], dtype=torch.int32)).view(torch.float32)
    assert grouped.same_bits(a, a.clone()) and not grouped.same_bits(a, b)
    assert not grouped.same_bits(torch.zeros(2), torch.zeros(3))


@pytest.mark.parametrize("kinds", [("weight", "bias"), ("activation",)])
def test_spiking_model_groups_through_its_own_time_loop_and_matches_plain(kinds, monkeypatch):
    grouped_sizes = []
    original = grouped.GroupedForward._replayed
    monkeypatch.setattr(grouped.GroupedForward, "_replayed",
                        lambda self, k, b, calls: grouped_sizes.append(calls[0].shape[0]) or original(self, k, b, calls))
    t = tables("snn", kinds, faults=1, inputs=60, batch_size=40, scenarios=120, shard_size=120)
    assert_same(t)
    assert max(grouped_sizes) > 5  # many scenarios per replayed forward
    assert any(k[0] == "replay" and v for k, v in t["fast_runner"].evaluator.grouped._exact.items())


@pytest.mark.parametrize("as_class", [False, True])
def test_faults_that_a_relu_hides_are_dropped_before_the_rest_runs(as_class, monkeypatch):
    from torch import nn

    monkeypatch.setattr(grouped.GroupTimer, "EXPLORE", 0)  # every scenario grouped: none run alone to time them
    import resil
    from resil.campaign.evaluator import Evaluator

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        net[0].bias[0] = -100.0  # channel 0 is negative on every input: the ReLU zeroes it whatever its low bits
        net[0].bias[1] = 100.0  # channel 1 is positive on every input: a flip there reaches the output
    model = net
    if as_class:
        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.a, self.b = net[0], net[2]

            def forward(self, x):
                return self.b(torch.relu(self.a(x)))

        model = Net().eval()
    x = torch.rand(16, 5)
    site = "0:out" if not as_class else "a:out"
    hidden = [resil.FaultSet(site, [0], [b]) for b in (0, 3, 10, 20)]  # mantissa bits of a value near -100: stays negative
    seen = [resil.FaultSet(site, [1], [b]) for b in (10, 20)]
    ev = Evaluator(model, x, model(x).argmax(1))
    counts = ev.evaluate_faults(hidden + seen)
    assert counts["masked"][:4].tolist() == [16] * 4  # the oracle: relu(negative) == 0 bit for bit
    assert (counts["masked"][4:] < 16).all()
    if not as_class:  # the class model's activation faults sit in its Linear 'a', whose output the F.relu glue reads
        assert ev.grouped.dropped == 4
