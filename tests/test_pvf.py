"""PVF (resil.analysis.pvf) against hand computations, numpy/struct enumerations and published
figures; the synthetic DLRM and transformer models; site discovery for Embedding, MHA, LayerNorm."""

from __future__ import annotations

import math
import struct
from statistics import NormalDist

import numpy as np
import pytest
import torch
from torch import nn

import resil
from resil.analysis.pvf import PVFConfig, PVFEstimate, parameter_groups, pvf, trials_needed
from resil.campaign.criteria import Deviation, Top1, judge
from resil.models import synthetic as syn

torch.set_num_threads(1)


def flip(value: float, bit: int) -> np.float32:
    """The float32 ``value`` with ``bit`` inverted, through its IEEE bit pattern (struct)."""
    (word,) = struct.unpack("<I", struct.pack("<f", value))
    return np.float32(struct.unpack("<f", struct.pack("<I", word ^ (1 << bit)))[0])


def linear(weight: list[list[float]], bias: list[float] | None = None) -> nn.Linear:
    w = torch.tensor(weight)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias is not None:
            lin.bias.copy_(torch.tensor(bias))
    return lin.eval()


# --------------------------------------------------------------------------- sample sizes, intervals


def test_trials_needed_reproduces_leveugle_published_figures():
    assert trials_needed(0.01, 0.95) == 9604  # N -> inf, e = 1%, 95%
    assert trials_needed(0.01, 0.99, t=2.58) == 16641  # 99% with the published t = 2.58
    assert trials_needed(0.01, 0.99, population=2304, t=2.58) == 2024  # METHODS.md section 6


def test_trials_needed_matches_the_hand_formula_with_finite_population():
    z = NormalDist().inv_cdf(0.975)
    for big_n, e, p in [(5000, 0.02, 0.5), (148480, 0.01, 0.1), (320, 0.05, 0.5)]:
        n_inf = z * z * p * (1 - p) / (e * e)
        assert trials_needed(e, 0.95, big_n, p) == math.ceil(big_n / (1 + (big_n - 1) / n_inf))


@pytest.mark.parametrize("d,n", [(30, 1000), (0, 50), (50, 50), (7.5, 200)])
def test_estimate_interval_is_the_wilson_score_interval(d, n):
    z = NormalDist().inv_cdf(0.975)
    p = d / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    whole = int(d)
    outcomes = np.array([1.0] * whole + ([d - whole] if d > whole else []) + [0.0] * (n - whole - (d > whole)))
    e = PVFEstimate.of(outcomes, 10_000, 0.95)  # single-fault trials: Wilson
    assert e.pvf == pytest.approx(p) and e.method == "wilson" and e.trials == n
    assert e.low == pytest.approx(0.0 if d == 0 else center - half, abs=1e-12)
    assert e.high == pytest.approx(1.0 if d == n else center + half, abs=1e-12)
    if d == 0:  # the published closed form at zero failures: z^2 / (n + z^2)
        assert e.high == pytest.approx(z * z / (n + z * z))


# --------------------------------------------------------------------------- exact PVF by enumeration


def test_hand_computed_pvf_of_a_two_weight_classifier():
    # y = (1.0 x, 0.4 x), x = 1: golden top-1 = 0. By hand, top-1 changes for
    # w0 = 1.0 (exponent 127): sign (31), exponent MSB (30 -> inf), bits 24..29 (w0 <= 0.25): 8 bits;
    # w1 = 0.4 (exponent 125): bit 24 (exponent 127: 1.6 > 1) and bit 30 (huge): 2 bits.
    net = linear([[1.0], [0.4]])
    r = pvf(net, torch.ones(1, 1), config=PVFConfig(trials=10_000), progress=False)
    e = r["(model)"]  # parameters of the model itself (a bare Linear)
    assert (e.trials, e.population, e.exhaustive) == (64, 64, True)
    assert e.incorrect == 10 and e.pvf == 10 / 64
    changed = r.records[r.records.incorrect > 0]
    assert sorted(zip(changed.element, changed.bit, strict=True)) == [(0, b) for b in range(24, 32)] + [(1, 24), (1, 30)]


def oracle_top1(weight: np.ndarray, bias: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Per (parameter, bit): share of inputs whose top-1 changes (or output non-finite), in float32 numpy."""
    params = np.concatenate([weight.ravel(), bias])
    golden = x @ weight.T + bias
    shares = np.zeros((len(params), 32))
    closest = np.inf
    with np.errstate(over="ignore", invalid="ignore"):
        for i, v in enumerate(params):
            for b in range(32):
                p = params.copy()
                p[i] = flip(float(v), b)
                w, c = p[: weight.size].reshape(weight.shape), p[weight.size :]
                y = (x @ w.T + c).astype(np.float32)
                bad = ~np.isfinite(y).all(1)
                srt = np.sort(y, 1)
                closest = min(closest, float(np.min(np.where(bad, np.inf, srt[:, -1] - srt[:, -2]))))
                shares[i, b] = np.mean(bad | (y.argmax(1) != golden.argmax(1)))
    return shares, closest


def test_exhaustive_pvf_equals_numpy_struct_enumeration():
    rng = np.random.default_rng(3)
    weight = rng.uniform(-1, 1, (3, 4)).astype(np.float32)
    bias = rng.uniform(-0.5, 0.5, 3).astype(np.float32)
    x = rng.uniform(0, 1, (5, 4)).astype(np.float32)
    shares, closest = oracle_top1(weight, bias, x)
    assert closest > 1e-4  # no near-tie: float32 summation order cannot change any decision
    net = linear(weight.tolist(), bias.tolist())
    sites = resil.sites(net)
    inputs = torch.from_numpy(x)
    by_site = pvf(net, inputs, "site", config=PVFConfig(trials=10_000), sites=sites, progress=False)
    assert by_site["weight"].exhaustive and by_site["weight"].trials == 12 * 32
    assert by_site["weight"].pvf == pytest.approx(shares[:12].mean(), abs=1e-12)
    assert by_site["bias"].pvf == pytest.approx(shares[12:].mean(), abs=1e-12)
    anyone = pvf(net, inputs, "network", config=PVFConfig(trials=10_000, per_trial="any"), sites=sites, progress=False)["network"]
    assert anyone.incorrect == int((shares > 0).sum()) and anyone.population == 15 * 32
    per_bit = by_site.by_bit()
    for b in (0, 23, 30, 31):
        assert per_bit[b].pvf == pytest.approx(shares[:, b].mean(), abs=1e-12)
        assert per_bit[b].trials == 15


def test_bit_restriction_and_bit_groups_count_the_right_locations():
    net = linear([[1.0, -2.0], [0.5, 0.25]], [0.1, -0.1])
    sites = resil.sites(net)
    only = pvf(net, torch.ones(2, 2), "network", config=PVFConfig(bits=[30, 31], trials=10_000), sites=sites, progress=False)["network"]
    assert only.population == 6 * 2 and only.exhaustive
    records = pvf(net, torch.ones(2, 2), "network", config=PVFConfig(bits=[30, 31], trials=10_000), sites=sites, progress=False).records
    assert set(records.bit) == {30, 31}
    groups = parameter_groups(sites, "bit")
    assert list(groups)[:2] == ["bit 0", "bit 1"] and len(groups) == 32
    assert all(g.population == 6 for g in groups.values())


# --------------------------------------------------------------------------- criteria


def test_deviation_threshold_switches_the_criterion():
    # regression y = 0.75 x + 0.1 on x = 1, 2; one trial = one flip of w or b (64 locations)
    net = linear([[0.75]], [0.1])
    x = torch.tensor([[1.0], [2.0]])
    golden = np.float32(0.75) * x.numpy().ravel() + np.float32(0.1)

    def oracle(t: float) -> float:
        shares = []
        with np.errstate(over="ignore", invalid="ignore"):
            for i, v in enumerate([0.75, 0.1]):
                for b in range(32):
                    w, c = (flip(v, b), np.float32(0.1)) if i == 0 else (np.float32(0.75), flip(v, b))
                    y = (w * x.numpy().ravel() + c).astype(np.float32)
                    bad = ~np.isfinite(y) | (np.abs(y.astype(np.float64) - golden) > t)
                    shares.append(bad.mean())
        return float(np.mean(shares))

    results = {t: pvf(net, x, "network", config=PVFConfig(trials=1000, criterion=Deviation(t)), progress=False)["network"].pvf
               for t in (1e-3, 0.05, 1.0)}
    for t, value in results.items():
        assert value == pytest.approx(oracle(t), abs=1e-12)
    assert results[1e-3] > results[0.05] > results[1.0] > 0
    # relative threshold: |dy| > t * |golden| per input
    rel = pvf(net, x, "network", config=PVFConfig(trials=1000, criterion=Deviation(0.5, relative=True)), progress=False)["network"].pvf
    assert results[1.0] < rel <= results[1e-3]


def test_non_finite_outputs_are_incorrect_under_any_threshold():
    net = linear([[1.5]], [0.0])  # 1.5 has exponent 127: a flip of bit 30 gives +inf
    x = torch.tensor([[1.0]])
    r = pvf(net, x, "site", config=PVFConfig(trials=1000, criterion=Deviation(1e300)), progress=False)
    assert r["weight"].incorrect == 1  # only bit 30 of the weight: inf
    assert r.records.loc[r.records.incorrect > 0, "bit"].tolist() == [30]
    assert r["bias"].incorrect == 0  # 0.0 flipped is finite: within 1e300
    counts = judge(Top1(), torch.tensor([[[float("nan"), 0.0]]]), torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    assert (counts["non_finite"].tolist(), counts["critical"].tolist(), counts["correct"].tolist()) == ([1], [0], [0])


# --------------------------------------------------------------------------- fault models


def test_fault_models_multiple_flips_burst_and_ber():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    x = torch.rand(10, 6)
    mbf = pvf(net, x, "layer", config=PVFConfig(trials=40, faults_per_trial=3), progress=False)
    assert (mbf.records.n_faults == 3).all() and mbf["0"].trials == 40
    burst = pvf(net, x, "layer", config=PVFConfig(trials=40, fault_model=resil.Burst(2)), progress=False)
    assert burst["0"].population == 28 * 31 and burst.records.bit.max() <= 30  # start bits 0..30 leave room for 2 bits
    ber = pvf(net, x, ["0"], config=PVFConfig(trials=300, ber=0.01), progress=False)
    mean, sd = 0.01 * 28 * 32, math.sqrt(28 * 32 * 0.01 * 0.99 / 300)
    assert abs(ber.records.n_faults.mean() - mean) < 5 * sd
    stuck = pvf(net, x, ["2"], config=PVFConfig(trials=50, fault_model=resil.StuckAt(1)), progress=False)
    assert stuck["2"].trials == 50
    zero = pvf(net, x, ["2"], config=PVFConfig(trials=1000, fault_model=resil.Zero()), progress=False)
    assert zero["2"].population == 15 and zero["2"].exhaustive and (zero.records.bit == -1).all()


def test_faulty_runs_leave_the_model_bit_identical():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pvf(net, torch.rand(4, 6), config=PVFConfig(trials=100), progress=False)
    assert all(torch.equal(before[k].view(torch.int32), v.view(torch.int32)) for k, v in net.state_dict().items())


# --------------------------------------------------------------------------- bad input


def test_bad_input_fails_clearly_before_any_injection():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    x = torch.rand(4, 6)
    with pytest.raises(resil.FaultError, match="unknown group 'fc9'"):
        pvf(net, x, ["fc9"], progress=False)
    with pytest.raises(resil.FaultError, match=r"group 'top': \['top\.\*'\] matches no parameter site"):
        pvf(net, x, {"top": "top.*"}, progress=False)
    with pytest.raises(resil.FaultError, match="unknown grouping"):
        pvf(net, x, "component", progress=False)
    for bad in (0, -5, 2.5):
        with pytest.raises(resil.FaultError, match="trials must be an integer >= 1"):
            pvf(net, x, config=PVFConfig(trials=bad), progress=False)
    with pytest.raises(resil.FaultError, match="margin"):
        pvf(net, x, config=PVFConfig(trials=None), progress=False)
    for bad in (-0.1, float("nan"), float("inf"), "0.1"):
        with pytest.raises(resil.FaultError, match="threshold must be a finite number >= 0"):
            Deviation(bad)  # type: ignore[arg-type]
    with pytest.raises(resil.FaultError, match="criterion"):
        pvf(net, x, config=PVFConfig(criterion="mse"), progress=False)
    with pytest.raises(resil.FaultError, match="per_trial"):
        pvf(net, x, config=PVFConfig(per_trial="all"), progress=False)  # type: ignore[arg-type]
    with pytest.raises(resil.FaultError, match="bits must be"):
        pvf(net, x, config=PVFConfig(bits=[32]), progress=False)
    with pytest.raises(resil.FaultError, match="ber must be in"):
        pvf(net, x, config=PVFConfig(ber=1.5), progress=False)
    with pytest.raises(resil.FaultError, match="either ber or faults_per_trial"):
        pvf(net, x, config=PVFConfig(ber=0.01, faults_per_trial=2), progress=False)
    with pytest.raises(resil.FaultError, match="inputs"):
        pvf(net, torch.zeros(0, 6), progress=False)
    with pytest.raises(resil.FaultError, match="no group 'fc9'"):
        pvf(net, x, config=PVFConfig(trials=5), progress=False)["fc9"]


# --------------------------------------------------------------------------- synthetic models, discovery


def test_synthetic_checkpoints_reproduce_their_recorded_metrics():
    for name in syn.names():
        model = syn.load(name)
        assert not any(m.training for m in model.modules())
        assert syn.evaluate(name, model) == syn.metric(name)
    assert syn.metric("synthetic-transformer") > 0.95
    d = syn.click_data()
    oracle = syn.auc(d.p_test, d.y_test)  # the ground-truth click probability: the best achievable ranking
    assert 0.7 < syn.metric("synthetic-dlrm") < oracle
    again = syn.click_data()
    assert torch.equal(d.x_test, again.x_test) and torch.equal(d.y_train, again.y_train)


def test_synthetic_recipes_retrain_to_the_recorded_metrics():
    torch.manual_seed(123)  # the recipes seed themselves
    assert abs(syn.evaluate("synthetic-dlrm", syn.train_dlrm(syn.click_data())) - syn.metric("synthetic-dlrm")) < 0.01
    assert abs(syn.evaluate("synthetic-transformer", syn.train_transformer()) - syn.metric("synthetic-transformer")) < 0.01


def test_discovery_finds_embedding_attention_and_layernorm_parameters():
    tf = syn.DigitsTransformer().eval()
    sites = resil.sites(tf, torch.zeros(2, 1, 8, 8))
    expect = {
        "pos.weight": ("weight", (8, 32)),
        "encoder.layers.0.self_attn.in_proj_weight": ("weight", (96, 32)),
        "encoder.layers.0.self_attn.in_proj_bias": ("bias", (96,)),
        "encoder.layers.0.self_attn.out_proj.weight": ("weight", (32, 32)),
        "encoder.layers.0.self_attn.out_proj.bias": ("bias", (32,)),
        "encoder.layers.1.norm1.weight": ("weight", (32,)),
        "encoder.layers.1.norm2.bias": ("bias", (32,)),
        "norm.weight": ("weight", (32,)),
    }
    for name, (kind, shape) in expect.items():
        assert (sites[name].kind, sites[name].shape) == (kind, shape)
    dlrm = syn.TinyDLRM()
    dsites = resil.sites(dlrm)
    assert [(dsites[f"emb.{f}.weight"].kind, dsites[f"emb.{f}.weight"].shape) for f in range(4)] == [
        ("weight", (c, 8)) for c in (100, 50, 20, 10)]
    n_params = sum(p.numel() for p in tf.parameters())
    assert sum(s.size for s in sites if s.kind in ("weight", "bias")) == n_params  # every parameter is a site


def test_parameter_faults_apply_on_the_transformer_fast_path(monkeypatch):
    tf = syn.load("synthetic-transformer")
    x = resil.models.dataset("digits").x_test[:16]
    calls = []
    fused = torch._transformer_encoder_layer_fwd
    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", lambda *a, **k: calls.append(1) or fused(*a, **k))
    fault = resil.Fault("encoder.layers.0.self_attn.in_proj_weight", (40, 3), bit=30)
    with torch.no_grad():
        golden = tf(x)
        with resil.inject(tf, fault):
            faulty = tf(x)
        assert calls, "eval + no_grad without hooks should take the fused fast path"
        restored = tf(x)
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            slow_golden = tf(x)
            with resil.inject(tf, fault):
                slow_faulty = tf(x)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    assert not torch.equal(faulty, golden) and torch.equal(restored, golden)
    assert torch.allclose(golden, slow_golden, atol=1e-4)
    both = torch.isfinite(faulty) & torch.isfinite(slow_faulty)
    assert torch.equal(torch.isfinite(faulty), torch.isfinite(slow_faulty))
    assert torch.allclose(faulty[both], slow_faulty[both], rtol=1e-3, atol=1e-3)


def test_dlrm_top_mlp_more_vulnerable_than_embeddings():
    model, d = syn.load("synthetic-dlrm"), syn.click_data()
    r = pvf(model, d.x_test[:256], {"embedding": "emb.*", "top MLP": "top.*"}, config=PVFConfig(trials=600, criterion=Deviation(0.05)),
            progress=False)
    # point estimates (seeded run); the benchmark separates the intervals with more trials
    assert r["top MLP"].pvf > 3 * r["embedding"].pvf > 0
