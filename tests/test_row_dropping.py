"""Row-level fault dropping in the grouped fast path of nn.Sequential models: only the (scenario,
input) pairs whose patched-in values differ from golden run the rest of the network."""

import numpy as np
import pandas as pd
import pytest
import torch
from test_fast_guards import BatchMax, coupled_sequential
from test_grouped import assert_same, tables
from torch import nn

import resil
import resil.campaign as rc
from resil.campaign import grouped
from resil.campaign.evaluator import Evaluator
from resil.campaign.runner import CampaignRunner
from resil.campaign.suffix import SuffixForward


def record_groups(monkeypatch) -> dict[str, list]:
    """Wrap the grouped path: the faults per grouped scenario, its outputs, each gathered batch of
    patched rows (padding cut), and each ``(first stage, verdict)`` of the check that allows gathering."""
    seen: dict[str, list] = {"faults": [], "outputs": [], "gathered": [], "allowed": []}
    outputs, patched, gather_exact = grouped.GroupedForward.outputs, grouped.GroupedForward._patched, grouped.GroupedForward._gather_exact

    def counted(self, stage, sc, positions, sites):
        seen["faults"] += [int((sc.owner == p).sum()) for p in positions]
        seen["outputs"].append(outputs(self, stage, sc, positions, sites))
        return seen["outputs"][-1]

    def gathered(golden, y, row_scen, row_channel, scen, inp, size):
        rows = patched(golden, y, row_scen, row_channel, scen, inp, size)
        seen["gathered"].append(rows[: len(scen)].clone())
        return rows

    def allowed(self, stage, batch, r):
        seen["allowed"].append((stage, gather_exact(self, stage, batch, r)))
        return seen["allowed"][-1][1]

    monkeypatch.setattr(grouped.GroupedForward, "outputs", counted)
    monkeypatch.setattr(grouped.GroupedForward, "_patched", staticmethod(gathered))
    monkeypatch.setattr(grouped.GroupedForward, "_gather_exact", allowed)
    return seen


@pytest.mark.parametrize("model, kinds, fault_model, faults", [
    ("dense-cnn", ("activation",), "bitflip", 1),
    ("dense-cnn", ("activation",), "bitflip", 2),
    ("dense-cnn", ("activation",), 'burst:{"length": 3}', 1),
    ("dense-cnn", ("weight", "bias"), "bitflip", 2),
    ("int8", ("activation",), "bitflip", 2),
    ("int8", ("weight",), 'burst:{"length": 3}', 2),
], ids=["cnn-act", "cnn-act-2", "cnn-act-burst", "cnn-weight-2", "int8-act-2", "int8-weight-burst-2"])
def test_row_dropping_gives_the_plain_tables(model, kinds, fault_model, faults, monkeypatch):
    seen = record_groups(monkeypatch)
    t = tables(model, kinds, fault_model, faults)  # 150 inputs in batches of 64, 64, 22
    assert_same(t)
    gf = t["fast_runner"].evaluator.grouped
    assert seen["gathered"] and gf.dropped_rows > 0  # rows were dropped and the others gathered
    assert any(k[0] == "gather" and v for k, v in gf._exact.items())
    if faults > 1:
        assert max(seen["faults"]) == faults  # scenarios with several faults in one stage went through it


def flip(values: np.ndarray, bit: int) -> np.ndarray:
    """float32 values with one bit flipped (the oracle: numpy bit patterns)."""
    return (values.astype(np.float32).view(np.int32) ^ np.int32(np.uint32(1 << bit).view(np.int32))).view(np.float32)


def test_only_the_inputs_a_flip_reaches_run_the_rest(monkeypatch):
    monkeypatch.setattr(grouped.GroupTimer, "EXPLORE", 0)  # every scenario grouped
    seen = record_groups(monkeypatch)
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    w1, b1 = np.array([[1, -1], [-1, 1], [0, 0]], np.float32), np.array([0, 0, -4], np.float32)
    w2, b2 = np.array([[1, 2, 1], [-1, 1, 3]], np.float32), np.array([0.5, -0.25], np.float32)
    with torch.no_grad():
        for layer, (w, b) in zip((net[0], net[2]), ((w1, b1), (w2, b2)), strict=True):
            layer.weight.copy_(torch.from_numpy(w))
            layer.bias.copy_(torch.from_numpy(b))
    x = np.array([[2, 0.5], [0.25, 1], [3, 1.5], [1, 1.75], [0.5, 0.25], [1.5, 3], [2.5, 1], [0, 0.75]], np.float32)
    hidden = x @ w1.T + b1  # channel 0: x0 - x1 (positive on inputs 0, 2, 4, 6), channel 1: its negative, channel 2: -4
    faults = [(0, 20), (1, 20), (2, 20), (0, 31)]  # (channel of 0:out, bit): mantissa flips keep a value's sign, bit 31 flips it
    inputs = torch.from_numpy(x)
    ev = Evaluator(net, inputs, net(inputs).argmax(1))
    ev.evaluate_faults([resil.FaultSet("0:out", [c], [bit]) for c, bit in faults])

    faulty = []  # per scenario, the hidden layer after the relu, by hand
    for c, bit in faults:
        h = hidden.copy()
        h[:, c] = flip(h[:, c], bit)
        faulty.append(np.maximum(h, 0))
    reached = [np.flatnonzero((f != np.maximum(hidden, 0)).any(1)) for f in faulty]
    assert [r.tolist() for r in reached] == [[0, 2, 4, 6], [1, 3, 5, 7], [], list(range(8))]
    want_rows = np.concatenate([faulty[s][r] for s, r in enumerate(reached)])
    assert seen["allowed"] == [(2, True)]  # one gathered run of the last Linear
    np.testing.assert_array_equal(seen["gathered"][0].numpy(), want_rows)  # exactly those 16 rows
    assert ev.grouped.dropped == 1 and ev.grouped.dropped_rows == 4 * 8 - 16
    (out,) = seen["outputs"]
    np.testing.assert_array_equal(out.numpy(), np.stack([f @ w2.T + b2 for f in faulty]))  # dyadic values: exact in float32


def test_a_model_that_mixes_the_batch_is_never_gathered_across_its_mixing_stage(monkeypatch):
    seen = record_groups(monkeypatch)
    torch.manual_seed(1)
    x, y = torch.randn(40, 6), torch.randint(0, 4, (40,))
    out = {}
    for mode in ("plain", "fast"):
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=150), sites=rc.SiteSpec(kinds=("weight", "activation")),
                               run=rc.RunSpec(mode=mode, shard_size=150))
        runner = CampaignRunner(spec, coupled_sequential(), (x, y))
        out[mode] = pd.DataFrame(runner.run_shard(0))
        out[mode + "_runner"] = runner
    assert_same(out)
    norm = 3  # the BatchMax stage of coupled_sequential
    exact = out["fast_runner"].evaluator.grouped._exact
    assert any(k[:2] == ("stack", s) and k[3] == 2 and not v for k, v in exact.items() for s in range(norm + 1))  # the check caught it
    assert seen["outputs"] and seen["allowed"] and not any(ok for stage, ok in seen["allowed"] if stage <= norm)


def test_a_perturbed_row_that_leaves_the_batch_maximum_alone_is_still_caught_by_its_reference():
    net = nn.Sequential(nn.Identity(), BatchMax(), nn.Identity()).eval()
    x = torch.full((8, 2), 0.5)
    x[0], x[7] = 10.0, 0.01  # input 0 holds the batch maximum; input 7, the probe's perturbed first row, stays below it
    sf = SuffixForward(net, x, batch_size=8)
    sf.golden()
    gf = grouped.GroupedForward(sf)
    every_input = np.arange(8)[::-1].copy()  # a gathered probe of 8 rows: inputs 7, 6, .. 0, the first perturbed
    probe = grouped.Probe(every_input, np.array([0]))
    out = gf._after_rows(1, probe.batch(x))
    assert torch.equal(out[1:], sf.outputs[0][torch.from_numpy(every_input[1:])])  # 2 * 0.01 + 1 < 10: the golden rows pass
    assert not gf._rest_exact(("probe",), 1, 0, probe)  # its reference, every input perturbed in place, moved the maximum
    assert not gf._stacking_exact(1, 0, 2)  # a whole perturbed copy moves it
    assert not gf._gather_exact(1, 0, 8)
