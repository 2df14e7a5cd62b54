"""Fault-aware training: faults held applied in every training step, nothing left behind."""

import numpy as np
import pytest
import torch
from torch import nn

import resil
import resil.models as rm
from resil.training.fat import accuracy_under, fault_aware_training, search_critical, train_under_faults

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
    train_under_faults(net, resil.Fault("2.weight", (1, 4), bit=bit), x, y, epochs=2, batch_size=8, optimizer=opt,
                       sites=sites)
    assert len(seen) == 10 and len(clean) == 11  # 5 steps per epoch; the initial weights and one per step
    for before, got in zip(clean, seen):  # the forward of step i reads the weights after step i - 1
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
    train_under_faults(net, [resil.Fault("0.weight", (0, 0), bit=30), resil.Fault("2.weight", (0, 0), bit=30)], x, y, epochs=3, batch_size=8)
    for n, p in net.named_parameters():
        assert torch.isfinite(p).all(), n
        assert not torch.equal(p, before[n]), n


def test_bad_input_fails_before_training():
    net = small_net()
    x, y = data()
    w = net[0].weight.detach().clone()
    with pytest.raises(resil.FaultError, match="unknown site '0.wieght'"):
        train_under_faults(net, resil.Fault("0.wieght", 0, bit=1), x, y)
    with pytest.raises(resil.FaultError, match="bit 40 is outside"):
        train_under_faults(net, resil.Fault("0.weight", 0, bit=40), x, y)
    with pytest.raises(resil.FaultError, match="epochs must be an integer >= 1"):
        train_under_faults(net, None, x, y, epochs=0)
    with pytest.raises(resil.FaultError, match="same length"):
        train_under_faults(net, None, x, y[:3])
    assert torch.equal(net[0].weight, w)
    with pytest.raises(resil.FaultError, match="sampler must be"):
        search_critical(net, x, y, x, y, sampler="random")
    with pytest.raises(resil.FaultError, match="search_epochs must lie in 0..1"):
        fault_aware_training(net, x, y, x, y, epochs=2, search_epochs=(2,))
    with pytest.raises(resil.FaultError, match="kind must be one of"):
        fault_aware_training(net, x, y, x, y, epochs=1, kind="neurons")
    assert torch.equal(net[0].weight, w)


def test_fault_aware_training_on_the_reference_cnn():
    d = rm.dataset("digits")
    model = rm.load("dense-cnn")
    r = fault_aware_training(model, d.x_train, d.y_train, d.x_test, d.y_test, epochs=2, k=2, progress=False, seed=1)
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
