"""ISimDL importance-sampling precision: bit weightings, sensitivities, proposals, estimates."""

import math
import struct

import numpy as np
import pytest
import torch
from torch import nn

import resil
import resil.models as rm
from resil.analysis.precision import (
    FaultEvaluator,
    PrecisionConfig,
    Proposal,
    activation_conductance,
    bit_distribution,
    float32_bit_derivatives,
    gradient_bit_distribution,
    isimdl_proposal,
    precision_at_k,
    precision_study,
    sample_until_critical,
    select_space,
    uniform_proposal,
    weight_sensitivity,
)
from resil.campaign.criteria import AccuracyDrop
from resil.statistics import importance_estimate

torch.set_num_threads(1)


def f32_bits(v: float) -> int:
    return struct.unpack("<I", struct.pack("<f", v))[0]


def f32_value(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


# --------------------------------------------------------------------------- precision@k


def test_precision_at_k_on_a_hand_made_sequence():
    seq = [True, False, False, True, True, False, True, False, False, False]
    assert precision_at_k(seq, 1) == 1.0
    assert precision_at_k(seq, 5) == 3 / 5
    assert precision_at_k(seq, 10) == 4 / 10
    assert precision_at_k(np.array([0, 0, 1]), 3) == pytest.approx(1 / 3)


@pytest.mark.parametrize("args, message", [
    (([True, False], 3), "needs at least 3 sampled faults"),
    (([True], 0), "k must be an integer >= 1"),
    (([0.5, 1.0], 1), "booleans"),
])
def test_precision_at_k_rejects_bad_input(args, message):
    with pytest.raises(resil.FaultError, match=message):
        precision_at_k(*args)


# --------------------------------------------------------------------------- bit weightings


def test_bit_distributions_match_the_formulas_exactly():
    b = np.arange(32)
    assert np.array_equal(bit_distribution("uniform"), np.full(32, 1 / 32))
    assert np.array_equal(bit_distribution("linear"), (b + 1) / 528.0)  # sum of 1..32 = 528
    assert np.array_equal(bit_distribution("exponential"), np.array([2.0**k for k in b]) / (2.0**32 - 1))
    assert np.array_equal(bit_distribution("linear", 8), (np.arange(8) + 1) / 36.0)


def test_proposal_bit_marginal_follows_the_weighting():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2))
    space = select_space(resil.sites(net))
    x, y = torch.rand(4, 3), torch.zeros(4, dtype=torch.long)
    for name, formula in [("linear", np.arange(1, 33) / 528.0), ("exponential", 2.0 ** np.arange(32) / (2.0**32 - 1))]:
        q = isimdl_proposal(net, x, y, space, bit_weighting=name, tau=0.0).q.reshape(6, 32)
        per_element = q / q.sum(1, keepdims=True)
        np.testing.assert_allclose(per_element, np.broadcast_to(formula, (6, 32)), rtol=1e-12, atol=0)
        # with tau the bit choice mixes in a uniform share: tau / 32 + (1 - tau) * formula
        q = isimdl_proposal(net, x, y, space, bit_weighting=name, tau=0.25).q.reshape(6, 32)
        np.testing.assert_allclose(q / q.sum(1, keepdims=True), np.broadcast_to(0.25 / 32 + 0.75 * formula, (6, 32)), rtol=1e-12)


@pytest.mark.parametrize("value", [0.15625, -6.5, 3.0e-5, 123.456, -1.3e-3])  # normal, and normal after every single-bit change
def test_float32_bit_derivatives_match_struct_oracle(value):
    code = f32_bits(value)
    v = f32_value(code)
    oracle = np.empty(32)
    for b in range(32):
        one, zero = f32_value(code | (1 << b)), f32_value(code & ~(1 << b))
        if 23 <= b <= 30:  # v = ... 2^(E - 127): dv/de_j = v ln 2 * 2^j = v ln(v[e_j=1] / v[e_j=0])
            oracle[b] = v * math.log(one / zero)
        else:  # v is affine in a mantissa or the sign bit: the derivative is the finite difference
            oracle[b] = one - zero
    got = float32_bit_derivatives(np.float32([value]))[0]
    np.testing.assert_allclose(got, oracle, rtol=1e-12, atol=0)
    # the gradient bit weighting is |g dv/db| normalised, whatever the (nonzero) g
    np.testing.assert_allclose(gradient_bit_distribution(np.float32([value]), np.array([-2.5]))[0],
                               np.abs(oracle) / np.abs(oracle).sum(), rtol=1e-12)


def test_gradient_bit_weighting_falls_back_to_exponential_when_all_zero():
    p = gradient_bit_distribution(np.float32([0.5, 0.5]), np.array([0.0, 1.0]))
    assert np.array_equal(p[0], bit_distribution("exponential"))
    assert not np.array_equal(p[1], bit_distribution("exponential"))


def test_bit_weighting_rejects_bad_input():
    with pytest.raises(resil.FaultError, match="unknown bit weighting 'cubic'"):
        bit_distribution("cubic")
    with pytest.raises(resil.FaultError, match="sensitivity has 1 entries for 2 elements"):
        gradient_bit_distribution(np.float32([1.0, 2.0]), np.array([1.0]))


# --------------------------------------------------------------------------- sensitivities


def test_weight_sensitivity_is_the_gradient_of_the_summed_logits():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    x = torch.rand(5, 3)
    s = weight_sensitivity(net, x, resil.sites(net))
    w2 = net[1].weight.detach().numpy().astype(np.float64)
    xs = x.numpy().astype(np.float64)
    # d(sum of logits)/dW1[o, i] = sum_x (sum_c W2[c, o]) x_i ; d/dW2[c, o] = sum_x h_o(x)
    np.testing.assert_allclose(s["0.weight"], np.outer(w2.sum(0), xs.sum(0)).reshape(-1), rtol=1e-5)
    h = xs @ net[0].weight.detach().numpy().T.astype(np.float64) + net[0].bias.detach().numpy()
    np.testing.assert_allclose(s["1.weight"], np.tile(h.sum(0), 2), rtol=1e-5)
    assert net[0].weight.grad is None  # gradients left as they were


def test_activation_conductance_of_a_linear_hidden_layer_is_exact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    x, t = torch.rand(5, 3), torch.tensor([0, 1, 1, 0, 1])
    sites = resil.sites(net, x)
    cond, values = activation_conductance(net, x, t, [sites["0:out"]], steps=7)
    w1, b1 = net[0].weight.detach().double().numpy(), net[0].bias.detach().double().numpy()
    w2 = net[1].weight.detach().double().numpy()
    h, h0 = x.double().numpy() @ w1.T + b1, b1
    # F = W2[t] h + b2[t] is linear in h: conductance_i = (h_i(x) - h_i(0)) W2[t, i], averaged over x
    expected = ((h - h0) * w2[t.numpy()]).mean(0)
    np.testing.assert_allclose(cond["0:out"], expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(values["0:out"], h.astype(np.float32), rtol=1e-6)


# --------------------------------------------------------------------------- proposals and estimates


def test_unbiased_estimate_with_q_equal_p_is_the_plain_mean():
    net = nn.Sequential(nn.Linear(2, 3))
    p = uniform_proposal(select_space(resil.sites(net)))
    flat = p.draw(50, seed=3)
    f = (flat % 7 == 0).astype(float)
    w = p.weights(flat)
    assert np.array_equal(w, np.ones(50))
    assert importance_estimate(f, w).value == pytest.approx(f.mean(), abs=1e-15)


def test_isimdl_weights_reweight_to_the_uniform_mean_exactly():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    space = select_space(resil.sites(net))
    prop = isimdl_proposal(net, torch.rand(6, 3), torch.zeros(6, dtype=torch.long), space, bit_weighting="gradient", tau=0.1)
    f = np.random.default_rng(0).random(space.total)  # any function of the location
    every = np.arange(space.total)
    # E_q[w f] = sum_f q(f) p(f)/q(f) f = E_p[f], the plain mean over the space
    assert np.sum(prop.q * prop.weights(every) * f) == pytest.approx(f.mean(), rel=1e-12)
    # layers are chosen uniformly: each of the two layers carries half of q
    half = space.site_range(1)[0]
    assert prop.q[:half].sum() == pytest.approx(0.5, rel=1e-12)


def test_element_choice_is_proportional_to_sensitivity_with_tau_zero():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2))
    x = torch.rand(4, 3)
    space = select_space(resil.sites(net))
    q = isimdl_proposal(net, x, torch.zeros(4, dtype=torch.long), space, bit_weighting="uniform").q.reshape(6, 32).sum(1)
    s = np.tile(x.double().numpy().sum(0), 2)  # d(sum of logits)/dW[o, i] = sum_x x_i
    np.testing.assert_allclose(q, s / s.sum(), rtol=1e-6)


def test_distinct_draws_and_their_errors():
    net = nn.Sequential(nn.Linear(1, 1, bias=False))
    p = uniform_proposal(select_space(resil.sites(net)))
    assert sorted(p.draw(32, seed=0, distinct=True).tolist()) == list(range(32))
    with pytest.raises(resil.FaultError, match="cannot draw 33 distinct faults"):
        p.draw(33, distinct=True)
    with pytest.raises(resil.FaultError, match="q must have one entry per location"):
        Proposal(p.space, np.ones(3) / 3)


def test_proposal_rejects_bad_input():
    net = nn.Sequential(nn.Linear(2, 2))
    space = select_space(resil.sites(net))
    x, y = torch.rand(3, 2), torch.zeros(3, dtype=torch.long)
    with pytest.raises(resil.FaultError, match="tau must be a number in"):
        isimdl_proposal(net, x, y, space, tau=1.5)
    with pytest.raises(resil.FaultError, match="unknown bit weighting"):
        isimdl_proposal(net, x, y, space, bit_weighting="quadratic")
    with pytest.raises(resil.FaultError, match="kind must be one of"):
        select_space(resil.sites(net), "neuron")
    with pytest.raises(resil.FaultError, match="theta must be a finite number in"):
        AccuracyDrop(theta=5)


# --------------------------------------------------------------------------- evaluation on the reference CNN


@pytest.fixture(scope="module")
def cnn_data():
    return rm.load("dense-cnn"), rm.dataset("digits")


def test_evaluator_matches_a_direct_faulty_forward(cnn_data):
    model, d = cnn_data
    ev = FaultEvaluator(model, d.x_test, d.y_test, AccuracyDrop(0.10))
    assert ev.golden_accuracy == pytest.approx(rm.info("dense-cnn").accuracy)
    with torch.no_grad():
        golden = model(d.x_test).argmax(1)
    for fault in [resil.Fault("fc2.weight", (3, 7), bit=30), resil.Fault("conv2:out", 100, bit=30), resil.Fault("fc1.weight", 5, bit=2)]:
        with torch.no_grad(), resil.inject(model, fault):
            out = model(d.x_test)  # the full forward, no golden replay
        ok = torch.isfinite(out).all(1)
        acc = float(((out.argmax(1) == d.y_test) & ok).float().mean())
        changed = float(((out.argmax(1) != golden) | ~ok).float().mean())
        index = np.ravel_multi_index(fault.index, (10, 64)) if fault.site == "fc2.weight" else fault.index
        o = ev.evaluate(resil.FaultSet([fault.site], [index], [fault.bits[0]]))
        assert (o.accuracy, o.changed) == (pytest.approx(acc), pytest.approx(changed))
        assert o.critical == (ev.golden_accuracy - acc >= 0.10)
    assert ev.runs == 3


def test_found_faults_are_critical_and_importance_finds_them_sooner(cnn_data):
    model, d = cnn_data
    ev = FaultEvaluator(model, d.x_test, d.y_test)
    space = select_space(ev.sites, "weight")
    prop = isimdl_proposal(model, d.x_train[:32], d.y_train[:32], space, bit_weighting="gradient")
    s = sample_until_critical(prop, ev, k=3, seed=0)
    assert s.found == 3 and s.runs >= 3
    for f in s.critical:
        with torch.no_grad(), resil.inject(model, f):
            acc = rm.accuracy(model, d.x_test, d.y_test)
        assert ev.golden_accuracy - acc >= 0.10


def test_precision_study_reports_every_weighting(cnn_data):
    model, d = cnn_data
    config = PrecisionConfig(kind="activation", seeds=(0,), k=10, weightings=("exponential",))
    r = precision_study(model, d.x_test, d.y_test, d.x_train[:32], d.y_train[:32], config, progress=False)
    assert set(r["precision"]) == {"uniform", "is-exponential"}
    assert all(0 <= v[0] <= 1 for v in r["precision"].values())
    with pytest.raises(resil.FaultError, match="unknown bit weighting"):
        precision_study(model, d.x_test, d.y_test, d.x_train[:32], d.y_train[:32], PrecisionConfig(weightings=("bad",)))
