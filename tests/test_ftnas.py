"""FT-NAS fault models (resil.fixed_point_faults, resil.training.ftnas) against hand computations, numpy and binomial statistics."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import resil
import resil.training
from resil.fixed_point_faults import BitBias, DifferentialStuckAt, bias_values, fixed_point_scale, stuck_cells
from resil.training.ftnas import IBB, AdSAF, MiBB, fan_in

torch.set_num_threads(1)

ALL_BIASES = sorted([s * 2.0 ** (k - 7) for s in (1, -1) for k in range(8)])


def binomial_ok(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_fixed_point_scale_by_hand():
    x = torch.tensor([[0.5], [1.0], [1.0000001], [3.0], [4.0], [4.0001], [0.3], [-6.0]])
    assert fixed_point_scale(x).tolist() == [-1, 0, 1, 2, 2, 3, -1, 3]
    assert int(fixed_point_scale(torch.tensor([0.5, -3.0]), per_sample=False)) == 2


def test_mibb_feature_rate_matches_formula():
    """The share of faulty features is 1 - (1 - p_m)^M (binomial, 4 sigma, 1e6 features)."""
    p_m, m = 5e-4, 144
    p = 1 - (1 - p_m) ** m  # 0.0695...
    assert MiBB(p_m=p_m).feature_rate(m) == pytest.approx(p, rel=1e-12)
    x = torch.rand(200, 5000, generator=torch.Generator().manual_seed(0)) - 0.5  # |x| < 0.5: no fault is clamped away
    y = MiBB(p_m=p_m).corrupt(x, fan_in=m, generator=torch.Generator().manual_seed(1))
    assert binomial_ok(int((y != x).sum()), x.numel(), p)


def test_mibb_rate_per_layer_through_training_hooks():
    """Through the FTT hooks on a grouped conv, M = (C_in / groups) * k_h * k_w."""
    conv = nn.Conv2d(8, 16, 3, groups=2, padding=1)
    assert fan_in(conv) == 4 * 9
    p = 1 - (1 - 2e-3) ** 36
    ftt = resil.training.FTT(nn.Sequential(conv), MiBB(p_m=2e-3), seed=3)
    x = torch.rand(64, 8, 16, 16)
    with torch.no_grad():
        clean = conv(x)
        with ftt.faulty():
            faulty = conv(x)
    assert binomial_ok(int((faulty != clean).sum()), clean.numel(), p)


def test_bias_uniform_over_its_16_values():
    x = torch.zeros(100, 1000)
    x[:, 0] = 0.75  # scale 0: step 2**-7, range +-1; the other features are 0, so y = bias exactly
    y = IBB(p=1.0).corrupt(x, fan_in=1, generator=torch.Generator().manual_seed(2))[:, 1:].reshape(-1).numpy()
    values, counts = np.unique(y, return_counts=True)
    assert values.tolist() == ALL_BIASES
    assert stats.chisquare(counts).pvalue > 1e-3  # uniform over 16 values (99,900 draws)


def test_clamp_holds():
    gen = torch.Generator().manual_seed(4)
    x = (torch.rand(50, 400, generator=gen) - 0.5) * torch.logspace(-3, 3, 50).unsqueeze(1)
    y = IBB(p=1.0).corrupt(x, fan_in=1, generator=gen).numpy()
    bound = 2.0 ** np.ceil(np.log2(np.abs(x.numpy()).max(axis=1, keepdims=True)))
    assert (np.abs(y) <= bound).all()
    assert (np.abs(y) == bound).any()  # some faults were clamped
    enc = resil.FLOAT32
    def one(v, bit):
        return float(enc.decode(BitBias(0).apply(enc.encode(torch.tensor([v])), torch.tensor([1 << bit]), enc))[0])

    assert one(0.9, 7) == 1.0  # 0.9 + 1 clamped to 2**0
    assert one(0.5, 6) == 1.0  # 0.5 + 0.5
    assert one(0.5, 15) == -0.5  # 0.5 - 1
    assert one(-0.9, 15) == -1.0  # clamped below


def test_bias_values_by_hand():
    assert bias_values(torch.arange(16), torch.tensor(3)).tolist() == [s * 2.0 ** (k - 4) for s in (1, -1) for k in range(8)]


def test_bit_bias_through_inject():
    net = nn.Sequential(nn.Linear(4, 6))
    x = torch.rand(3, 4)
    with torch.no_grad():
        clean = net(x)
        with resil.inject(net, resil.Fault("0:out", 3, bit=2, model=BitBias(1), batch=1)):
            faulty = net(x)
    expected = clean.clone()
    expected[1, 3] = min(max(clean[1, 3].item() + 2.0 ** (2 + 1 - 7), -2.0), 2.0)
    assert torch.equal(faulty, expected)


def test_mibb_fault_set_injects_the_formula():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32))
    x = torch.rand(20, 64) * 3
    fs = MiBB(p_m=5e-3).fault_set(net, x, seed=7)
    assert 0 < len(fs) < 20 * 32
    with torch.no_grad():
        clean = net(x).numpy()
        with resil.inject(net, fs):
            faulty = net(x).numpy()
    expected = clean.copy()
    scales = np.ceil(np.log2(np.abs(clean).max(axis=1)))
    for f in fs:
        assert f.model.scale == scales[f.batch]
        (b,) = f.bits
        bias = (-1 if b >= 8 else 1) * 2.0 ** (b % 8 + f.model.scale - 7)
        bound = 2.0 ** f.model.scale
        expected[f.batch, f.index] = np.clip(np.float32(clean[f.batch, f.index]) + np.float32(bias), -bound, bound)
    np.testing.assert_array_equal(faulty, expected)


def test_adsaf_cell_shares():
    """Faulty cells ~ p = 8%, SAF1 among them ~ 16.3% (binomial, 4 sigma)."""
    cells = AdSAF(p=0.08).cell_states((500_000,), torch.Generator().manual_seed(5)).numpy()
    pos, neg = cells & 3, cells >> 2
    faulty = np.concatenate([pos != 0, neg != 0])
    saf1 = np.concatenate([pos == 2, neg == 2])
    assert set(np.unique(pos)) <= {0, 1, 2}
    assert binomial_ok(int(faulty.sum()), faulty.size, 0.08)
    assert binomial_ok(int(saf1.sum()), int(faulty.sum()), 0.163)


def test_stuck_cells_by_hand():
    w = torch.tensor([0.5, 0.5, 0.5, -0.25, -0.25, -0.25, 0.0, 0.3])
    cells = torch.tensor([1, 2, 8, 4, 2, 1, 10, 0])
    assert stuck_cells(w, cells, 1.0).tolist() == pytest.approx([0.0, 1.0, -0.5, 0.0, 0.75, -0.25, 0.0, 0.3])


def test_adsaf_fault_set_matches_numpy():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 5))
    w0 = {n: p.detach().numpy().copy() for n, p in net.named_parameters()}
    fs = AdSAF(p=0.2).fault_set(net, seed=1)
    assert {n for n in fs.site_names} == {"0.weight", "2.weight"}
    expected = {n: w.copy() for n, w in w0.items()}
    for f in fs:
        name = f.site.replace(".weight", ".weight")
        w = w0[name].reshape(-1)
        full = np.abs(w).max()
        g_pos, g_neg = max(w[f.index], 0.0), max(-w[f.index], 0.0)
        bits = set(f.bits)
        g_pos = full if 1 in bits else 0.0 if 0 in bits else g_pos
        g_neg = full if 3 in bits else 0.0 if 2 in bits else g_neg
        expected[name].reshape(-1)[f.index] = np.clip(g_pos - g_neg, -full, full)
    with resil.inject(net, fs):
        for n, p in net.named_parameters():
            np.testing.assert_allclose(p.detach().numpy(), expected[n], rtol=0, atol=1e-7)
    for n, p in net.named_parameters():
        assert np.array_equal(p.detach().numpy().view(np.int32), w0[n].view(np.int32))


def test_adsaf_on_int8_codes():
    qnn = pytest.importorskip("brevitas.nn")
    torch.manual_seed(0)
    net = nn.Sequential(qnn.QuantLinear(16, 8, bias=False))
    q = net[0].quant_weight().int().to(torch.int64)
    i = tuple(int(v) for v in (q < 0).nonzero()[0])
    j = tuple(int(v) for v in (q > 0).nonzero()[0])
    faults = [resil.Fault("0.weight", i, bit=1, model=DifferentialStuckAt()),  # positive cell SAF1: 127 - |q|
              resil.Fault("0.weight", j, bit=[0, 3], model=DifferentialStuckAt())]  # pos SAF0, neg SAF1: -127
    with resil.inject(net, faults):
        q2 = net[0].quant_weight().int().to(torch.int64)
    assert int(q2[i]) == 127 + int(q[i]) and int(q2[j]) == -127
    assert int((q2 != q).sum()) == 2


def test_bad_input():
    with pytest.raises(resil.FaultError, match="p_m"):
        MiBB(p_m=2.0)
    with pytest.raises(resil.FaultError, match="include"):
        AdSAF(include="conv*")
    with pytest.raises(resil.FaultError, match="integer scale"):
        BitBias(1.5)
    with pytest.raises(resil.FaultError, match=r"bits 0\.\.15"):
        resil.FaultSet(site="0:out", index=[0], bit=[16], model=BitBias(0))
    net = nn.Sequential(nn.Linear(4, 2))
    stuck = resil.Fault("0.weight", 0, bit=1, model=DifferentialStuckAt())
    with pytest.raises(resil.FaultError, match="max_abs"), resil.inject(net, stuck):
        pass
    with pytest.raises(resil.FaultError, match="no weight site"):
        AdSAF(include=("nothing*",)).fault_set(net)
    with pytest.raises(resil.FaultError, match="not a multiply-accumulate"):
        fan_in(nn.ReLU())


def test_registered_specs_round_trip():
    for m in (BitBias(-3), DifferentialStuckAt(0.5), DifferentialStuckAt()):
        assert resil.fault_model_from_spec(m.spec()) == m
