"""Fault-aware training: faults held applied in every training step, nothing left behind."""

import numpy as np
import pytest
import torch
from torch import nn

import resil
import resil.models as rm
from resil.training.fat import (
    FATConfig,
    SearchConfig,
    TrainingConfig,
    _operand_penalty,
    _targets,
    accuracy_under,
    fault_aware_training,
    search_critical,
    train_under_faults,
)

torch.set_num_threads(1)


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def data(n: int = 40):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def u32(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().copy().view(np.uint32)


@pytest.mark.parametrize("bit", [30, 31, 3])
def test_the_fault_is_in_every_training_forward_and_gone_afterwards(bit):
    net = small_net()
    x, y = data()
    sites = resil.sites(net, x[:1])  # listed first: listing runs a forward of its own
    seen, clean = [], [u32(net[2].weight)]
    net[2].register_forward_pre_hook(lambda m, a: seen.append(u32(m.weight)))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    opt.register_step_post_hook(lambda o, a, k: clean.append(u32(net[2].weight)))
    plain = TrainingConfig(batch_size=8, neutralise="none", clean_loss=False)  # plain: only faulty forwards
    train_under_faults(net, resil.Fault("2.weight", (1, 4), bit=bit), x, y, plain, epochs=2, optimizer=opt, sites=sites)
    assert len(seen) == 10 and len(clean) == 11  # 5 steps per epoch; the initial weights and one per step
    for before, got in zip(clean[:-1], seen, strict=True):  # the forward of step i reads the weights after step i - 1
        expected = before.copy()
        expected[1, 4] ^= np.uint32(1 << bit)  # oracle: XOR on the IEEE bit pattern
        assert np.array_equal(got, expected)
    assert not np.array_equal(clean[0], clean[-1])  # the weights were trained
    assert np.array_equal(u32(net[2].weight), clean[-1])  # stored weights are fault-free
    assert all(len(m._forward_hooks) == 0 for m in net.modules())  # no injection hook left
    assert not net.training


def test_activation_fault_keeps_gradients_of_the_other_neurons():
    net = small_net()
    x, y = data(8)
    fault = resil.Fault("1:out", 2, bit=30)
    with resil.inject(net, fault):
        nn.functional.cross_entropy(net(x), y).backward()
    got = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    # oracle without resil: the ReLU output with neuron 2's bit 30 flipped by numpy, as a constant
    h = torch.relu(net[0](x))
    flipped = h.detach().numpy().copy()
    flipped.view(np.uint32)[:, 2] ^= np.uint32(1 << 30)
    keep = torch.ones_like(h, dtype=torch.bool)
    keep[:, 2] = False
    h2 = torch.where(keep, h, torch.from_numpy(flipped))
    nn.functional.cross_entropy(net[2](h2), y).backward()
    for n, p in net.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-6, atol=1e-7)
    assert got["0.weight"].abs().sum() > 0 and got["0.weight"][2].abs().sum() == 0


def test_training_survives_overflowing_faults():
    net = small_net()
    x, y = data()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    faults = [resil.Fault("0.weight", (0, 0), bit=30), resil.Fault("2.weight", (0, 0), bit=30)]
    train_under_faults(net, faults, x, y, TrainingConfig(batch_size=8), epochs=3)
    for n, p in net.named_parameters():
        assert torch.isfinite(p).all(), n
        assert not torch.equal(p, before[n]), n


def test_bad_input_fails_before_training():
    net = small_net()
    x, y = data()
    w = net[0].weight.detach().clone()
    with pytest.raises(resil.FaultError, match=r"unknown site '0.wieght'"):
        train_under_faults(net, resil.Fault("0.wieght", 0, bit=1), x, y)
    with pytest.raises(resil.FaultError, match="bit 40 is outside"):
        train_under_faults(net, resil.Fault("0.weight", 0, bit=40), x, y)
    with pytest.raises(resil.FaultError, match="epochs must be an integer >= 1"):
        train_under_faults(net, None, x, y, epochs=0)
    with pytest.raises(resil.FaultError, match="neutralise must be one of"):
        train_under_faults(net, None, x, y, TrainingConfig(neutralise="zero"))
    with pytest.raises(resil.FaultError, match="margin must be a finite number >= 0"):
        train_under_faults(net, None, x, y, TrainingConfig(margin=-1.0))
    with pytest.raises(resil.FaultError, match="same length"):
        train_under_faults(net, None, x, y[:3])
    assert torch.equal(net[0].weight, w)
    with pytest.raises(resil.FaultError, match="sampler must be"):
        search_critical(net, x, y, x, y, SearchConfig(sampler="random"))
    with pytest.raises(resil.FaultError, match=r"search_epochs must lie in 0..1"):
        fault_aware_training(net, x, y, x, y, FATConfig(epochs=2, search_epochs=(2,)))
    with pytest.raises(resil.FaultError, match="kind must be one of"):
        fault_aware_training(net, x, y, x, y, FATConfig(epochs=1, search=SearchConfig(kind="neurons")))
    assert torch.equal(net[0].weight, w)


def test_fault_aware_training_on_the_reference_cnn():
    d = rm.dataset("digits")
    model = rm.load("dense-cnn")
    r = fault_aware_training(model, d.x_train, d.y_train, d.x_test, d.y_test, FATConfig(epochs=2, seed=1, search=SearchConfig(k=2)),
                             progress=False)
    assert len(r.faults) == 2 and r.search_runs == r.history[0].runs >= 2
    assert [h.epoch for h in r.history] == [0, 1, 2] and all(h.faults == 2 for h in r.history)
    fresh = rm.load("dense-cnn")  # oracle: the given model under the found faults, evaluated directly
    with torch.no_grad(), resil.inject(fresh, r.faults):
        out = fresh(d.x_test)
    expected = float(((out.argmax(1) == d.y_test) & torch.isfinite(out).all(1)).float().mean())
    assert r.faulty_before == pytest.approx(expected)
    assert r.clean_before == pytest.approx(rm.info("dense-cnn").accuracy)
    assert r.faulty_after == pytest.approx(accuracy_under(r.model, r.faults, d.x_test, d.y_test))
    for f in r.faults:  # each found fault is critical for the given model on its own
        assert rm.info("dense-cnn").accuracy - accuracy_under(fresh, f, d.x_test, d.y_test) >= 0.10


def plan(net: nn.Module, fault: resil.Fault, x: torch.Tensor, mode: str = "auto"):
    sites = resil.sites(net, x[:1])
    return _targets(net, resil.injection.as_fault_set(fault, sites), sites, x[:1], mode, 1e6, 0.1)


def test_operand_penalty_touches_exactly_the_linear_operand():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))  # logits: no ReLU after
    x = torch.rand(5, 1, 4, 4)
    with torch.no_grad():
        net[3].weight[1, 21] = 0.25  # bit 30 -> 0.25 * 2**128
    (t,) = plan(net, resil.Fault("3.weight", (1, 21), bit=30), x)
    assert t.relu is net[1] and t.chain == (net[2],) and t.param is None
    z = torch.linspace(-1, 1, 5 * 32).reshape(5, 2, 4, 4).requires_grad_()
    _operand_penalty(t, z, 0.1).backward()
    # oracle by hand: flat feature 21 = channel 1, row 1, column 1; d/dz mean_n relu(z + 0.1) = 1/5 where z > -0.1
    expected = torch.zeros(5, 2, 4, 4)
    expected[:, 1, 1, 1] = (z[:, 1, 1, 1] > -0.1).float() / 5
    assert expected.sum() > 0
    torch.testing.assert_close(z.grad, expected)


def test_operand_penalty_touches_exactly_the_conv_taps():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 2, stride=2, padding=1))
    x = torch.rand(4, 1, 4, 4)
    with torch.no_grad():
        net[2].weight[1, 2, 0, 1] = 0.5
    (t,) = plan(net, resil.Fault("2.weight", (1, 2, 0, 1), bit=30), x)
    assert t.relu is net[1] and t.chain == ()
    z = torch.zeros(4, 3, 4, 4, requires_grad=True)
    _operand_penalty(t, z, 0.1).backward()
    # oracle by hand: output (r, s) in 3x3 reads padded (2r, 2s + 1) -> input rows {-1, 1, 3}, columns {0, 2, 4};
    # inside the 4x4 input: rows {1, 3} x columns {0, 2} of channel 2, each read once
    expected = torch.zeros(4, 3, 4, 4)
    for r in (1, 3):
        for c in (0, 2):
            expected[:, 2, r, c] = 1 / 4
    torch.testing.assert_close(z.grad, expected)


def test_routes_chosen_by_where_the_weight_sits():
    net = small_net()  # Linear -> ReLU -> Linear
    x, _ = data()
    with torch.no_grad():
        net[0].weight[2, 1], net[2].weight[0, 3], net[2].weight[1, 1] = 0.3, 0.3, -0.2
    (first,) = plan(net, resil.Fault("0.weight", (2, 1), bit=30), x)  # feeds a ReLU: sign route, stored value < 0
    assert first.param is net[0].weight and first.index == (2, 1) and first.side == -1.0 and first.relu is None
    (last,) = plan(net, resil.Fault("2.weight", (0, 3), bit=30), x)  # the logits: operand route
    assert last.relu is net[1] and last.param is None
    assert plan(net, resil.Fault("0.weight", (2, 1), bit=30), x, mode="operand") == []  # its operand: the raw input
    assert plan(net, resil.Fault("2.weight", (1, 1), bit=3), x) == []  # not huge: the faulty loss handles it
    train_under_faults(net, resil.Fault("0.weight", (2, 1), bit=30), x, _, TrainingConfig(batch_size=8), epochs=1)
    assert float(net[0].weight.detach()[2, 1]) <= -0.1  # projected to the margin on the negative side


@pytest.mark.parametrize("site", ["0.weight", "2.weight"])  # sign route; operand route
def test_fat_recovers_from_one_huge_stuck_weight(site):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(400, 3, generator=g)
    y = x.argmax(1)
    xt, yt, x, y = x[300:], y[300:], x[:300], y[:300]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 3))
    train_under_faults(net, None, x, y, TrainingConfig(lr=1e-2, batch_size=32), epochs=30)
    w = net.get_parameter(site).detach()
    idx = tuple(int(i) for i in torch.nonzero(w == torch.where(w < 1, w, -1).max())[0])  # largest weight < 1: finite, huge
    fault = resil.Fault(site, idx, bit=30)
    assert accuracy_under(net, None, xt, yt) >= 0.95 and accuracy_under(net, fault, xt, yt) <= 0.3
    train_under_faults(net, fault, x, y, TrainingConfig(lr=1e-2, batch_size=32), epochs=10)
    with torch.no_grad(), resil.inject(net, fault):
        out = net(xt)
        assert abs(float(net.get_parameter(site)[idx])) > 1e30  # the fault is really there
    assert torch.isfinite(out).all()
    assert accuracy_under(net, fault, xt, yt) >= 0.9 and accuracy_under(net, None, xt, yt) >= 0.9
