"""Fault-tolerant training (resil.training) against hand computations."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import resil
import resil.training
from resil.training import FTT, prepare
from resil.training.ftnas import IBB, AdSAF, MiBB

torch.set_num_threads(1)


def test_straight_through_weight_gradient_equals_clean_gradient():
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0]]))
    x = torch.tensor([[3.0, 5.0]])
    ftt = prepare(lin, AdSAF(p=1.0, saf1=0.0))  # every cell stuck at 0: the faulty weight is 0
    with ftt.faulty():
        out = lin(x)
    assert out.item() == 0.0
    out.sum().backward()
    assert lin.weight.grad.tolist() == [[3.0, 5.0]]  # d(w.x)/dw = x, as without the fault
    assert lin.weight.tolist() == [[1.0, -2.0]]


def test_straight_through_feature_gradient_equals_clean_gradient():
    lin = nn.Linear(2, 2)
    x, c = torch.tensor([[3.0, 5.0]]), torch.tensor([[2.0, -1.0]])
    ftt = prepare(lin, IBB(p=1.0), range_gradient=False)
    with ftt.faulty():
        out = lin(x)
    assert (out != lin(x)).all()
    (c * out).sum().backward()
    assert lin.weight.grad.tolist() == [[6.0, 10.0], [-3.0, -5.0]]  # outer(c, x)
    assert lin.bias.grad.tolist() == [2.0, -1.0]


def test_range_gradient_keeps_the_faulty_values():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.rand(32, 8)
    outs = []
    for rg in (True, False):
        ftt = prepare(net, MiBB(p_m=0.05), seed=5, range_gradient=rg)
        with ftt.faulty():
            outs.append(net(x))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], net(x))


def test_ftt_loss_by_hand():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4))
    x, y = torch.rand(5, 3), torch.tensor([0, 1, 2, 3, 1])
    alpha = 0.3
    ftt = prepare(net, AdSAF(p=1.0, saf1=0.0), alpha=alpha)  # fixed draw: zero weights, faulty logits = bias
    loss = ftt.loss(x, y)

    def ce(logits: np.ndarray) -> float:
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(y)), y.numpy()].mean())

    w, b = net[0].weight.detach().numpy().astype(np.float64), net[0].bias.detach().numpy().astype(np.float64)
    clean = ce(x.numpy() @ w.T + b)
    faulty = ce(np.tile(b, (5, 1)))
    assert loss.item() == pytest.approx((1 - alpha) * clean + alpha * faulty, rel=1e-6)
    assert ftt.last == pytest.approx((clean, faulty), rel=1e-6)


def _state(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _hooks(model: nn.Module) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]


@pytest.mark.parametrize("pruned", [False, True])
def test_model_unchanged_after_convert(pruned):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10))
    if pruned:
        prune.global_unstructured([(net[0], "weight"), (net[3], "weight")], prune.L1Unstructured, amount=0.5)
    before, hooks, params = _state(net), _hooks(net), list(net.parameters())
    ftt = prepare(net, [MiBB(p_m=1e-2), AdSAF(p=0.08)], alpha=0.5, seed=1)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    ftt.loss(x, y).backward()
    with torch.no_grad(), ftt.faulty():
        net(x)
    assert ftt.convert() is net
    after = _state(net)
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k].view(np.uint8), after[k].view(np.uint8)) for k in before)
    assert _hooks(net) == hooks and list(net.parameters()) == params
    assert all(p.grad is not None for p in params)
    with pytest.raises(resil.FaultError, match="converted"):
        ftt.loss(x, y)


def test_pruned_cells_stay_zero():
    torch.manual_seed(0)
    lin = nn.Linear(20, 10)
    prune.l1_unstructured(lin, "weight", amount=0.6)
    seen = []
    ftt = prepare(nn.Sequential(lin), AdSAF(p=0.5, saf1=0.5), seed=2)
    with torch.no_grad(), ftt.faulty():
        h = lin.register_forward_pre_hook(lambda m, a: seen.append(m.weight.clone()))  # after FTT's: what the layer computes with
        ftt.model(torch.rand(2, 20))
        h.remove()
    mask = lin.weight_mask.bool()
    assert torch.equal(lin.weight, lin.weight_orig * lin.weight_mask)  # the clean weight is back
    assert (seen[0][~mask] == 0).all() and (seen[0][mask] != lin.weight[mask]).any()


def test_weight_draw_is_fixed_for_one_model_call():
    """A spiking network keeps one weight-fault draw for all its time steps."""
    snn = pytest.importorskip("snntorch")
    net = nn.Sequential(nn.Linear(4, 6), snn.Leaky(beta=0.9, init_hidden=True, output=True))

    class Steps(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            resil.reset(self.net)
            return torch.stack([self.net(x)[1] for _ in range(3)])

    model = Steps()
    seen = []
    ftt = prepare(model, AdSAF(p=0.3), seed=0)
    with torch.no_grad(), ftt.faulty():
        h = net[0].register_forward_pre_hook(lambda m, a: seen.append(m.weight.clone()))  # after FTT's: what the layer computes with
        model(torch.rand(2, 4))
        model(torch.rand(2, 4))
        h.remove()
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[0], seen[2]) and not torch.equal(seen[0], seen[3])
    assert not torch.equal(seen[0], net[0].weight)


def test_quantized_weights_faulted_on_the_integer_grid():
    qnn = pytest.importorskip("brevitas.nn")
    torch.manual_seed(0)
    net = nn.Sequential(qnn.QuantLinear(16, 8, bias=True))
    clean = net[0].quant_weight()
    seen = []
    ftt = prepare(net, AdSAF(p=0.3), seed=0)
    with torch.no_grad(), ftt.faulty():
        h = net[0].weight_quant.register_forward_hook(lambda m, a, o: seen.append(o))
        net(torch.rand(2, 16))
        h.remove()
    q = (seen[0].value / clean.scale).detach()
    assert (q - torch.round(q)).abs().max() < 1e-4 and torch.round(q).abs().max() <= 127
    assert (torch.round(q) != clean.int().float()).any()
    assert torch.equal(net[0].quant_weight().value, clean.value)  # nothing left behind
    loss = ftt.loss(torch.rand(4, 16), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss) and net[0].weight.grad is not None


def test_faulty_accuracy_pairs_draws():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 4))
    x, y = torch.rand(50, 8), torch.randint(0, 4, (50,))
    a = resil.training.faulty_accuracy(net, AdSAF(p=0.3), x, y, draws=3, seed=4)
    b = resil.training.faulty_accuracy(copy.deepcopy(net), AdSAF(p=0.3), x, y, draws=3, seed=4)
    assert np.array_equal(a, b) and len(set(a.tolist())) > 1


def test_bad_input():
    net = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(resil.FaultError, match="alpha"):
        FTT(net, AdSAF(), alpha=1.5)
    with pytest.raises(resil.FaultError, match="selects no site"):
        FTT(net, MiBB(include=("conv*",)))
    with pytest.raises(resil.FaultError, match="fault processes"):
        FTT(net, "adsaf")
    with pytest.raises(resil.FaultError, match="draws"):
        FTT(net, AdSAF()).accuracy(torch.rand(2, 3), torch.zeros(2, dtype=torch.long), draws=0)


def test_a_registered_training_reference_trains_by_name_as_its_recipe_says() -> None:
    from resil.errors import FaultError
    from resil.training.data import Dataset
    from resil.training.recipe import Recipe, accuracy, train
    from resil.training.references import TrainingReference, register_training_reference, training_reference

    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(48, 6, generator=g), torch.randint(0, 3, (48,), generator=g)
    data = Dataset("toy", x[:32], y[:32], x[32:], y[32:], 3)
    recipe = Recipe(epochs=2, batch_size=8, seed=5)

    def start() -> nn.Module:
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

    register_training_reference("toy-reference", TrainingReference(data=lambda: data, recipe=recipe, start=start,
                                                                   trained=lambda: start().eval()))
    assert training_reference("toy-reference") is not None and training_reference("no-such-reference") is None
    r = resil.training.run_ftt("toy-reference", AdSAF(p=0.05), alpha=0.5, draws=2)
    torch.manual_seed(recipe.seed)
    by_hand = train(start(), data, recipe).eval()  # the normal arm: the reference's start trained with its recipe
    assert (r.model, r.epochs) == ("toy-reference", 2)
    assert r.clean_normal == accuracy(by_hand, data.x_test, data.y_test)
    with pytest.raises(FaultError, match="register_training_reference needs a non-empty name"):
        register_training_reference("", TrainingReference(data=lambda: data, recipe=recipe, start=start, trained=start))
