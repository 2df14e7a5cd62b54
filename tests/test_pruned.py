"""Pruned networks: torch.nn.utils.prune (live and dense policies) and torch-pruning."""

import struct

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune

import resil


@pytest.fixture
def pruned_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    prune.global_unstructured([(net[0], "weight"), (net[2], "weight")], pruning_method=prune.L1Unstructured, amount=0.5)
    return net


def flat_state(net):
    return {k: v.detach().clone().reshape(-1).view(torch.int32 if v.dtype == torch.float32 else v.dtype)
            for k, v in net.state_dict().items()}


def manual_forward(net, w0, w2, x):
    return F.linear(torch.relu(F.linear(x, w0, net[0].bias)), w2, net[2].bias)


def test_live_sites_cover_the_unpruned_weights_only(pruned_mlp):
    s = resil.sites(pruned_mlp)
    assert "0.weight_orig" not in s and "0.weight_mask" not in s
    w = s["0.weight"]
    mask = pruned_mlp[0].weight_mask.reshape(-1)
    assert w.shape == (8, 6) and w.size == int(mask.sum()) and w.elements().tolist() == mask.nonzero().reshape(-1).tolist()
    assert w.sparsity == pytest.approx(1 - int(mask.sum()) / 48)
    total_live = sum(int(m.sum()) for m in (pruned_mlp[0].weight_mask, pruned_mlp[2].weight_mask))
    assert total_live == (48 + 32) // 2  # global 50%
    assert resil.sites(pruned_mlp, pruned="dense")["0.weight"].size == 48


def test_live_policy_rejects_pruned_cells_and_faults_live_ones_exactly(pruned_mlp):
    x = torch.randn(5, 6)
    mask = pruned_mlp[0].weight_mask.reshape(-1)
    dead, live = int((mask == 0).nonzero()[0]), int(mask.nonzero()[0])
    before = flat_state(pruned_mlp)
    with pytest.raises(resil.FaultError, match=rf"element {dead} of site '0\.weight' is not stored"), \
            resil.inject(pruned_mlp, resil.Fault("0.weight", dead, bit=30)):
        pass
    w0 = (pruned_mlp[0].weight_orig * pruned_mlp[0].weight_mask).detach().clone()
    bits = struct.unpack("<I", struct.pack("<f", float(w0.reshape(-1)[live])))[0] ^ (1 << 30)
    w0.reshape(-1)[live] = struct.unpack("<f", struct.pack("<I", bits))[0]
    expected = manual_forward(pruned_mlp, w0, pruned_mlp[2].weight, x)
    with torch.no_grad(), resil.inject(pruned_mlp, resil.Fault("0.weight", live, bit=30)):
        got = pruned_mlp(x)
    assert torch.equal(got, expected)
    after = flat_state(pruned_mlp)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_dense_policy_flips_the_stored_zero_of_a_pruned_cell(pruned_mlp):
    x = torch.randn(5, 6)
    mask = pruned_mlp[2].weight_mask.reshape(-1)
    dead = int((mask == 0).nonzero()[0])
    before = flat_state(pruned_mlp)
    site_list = resil.sites(pruned_mlp, pruned="dense")
    w2 = (pruned_mlp[2].weight_orig * pruned_mlp[2].weight_mask).detach().clone()
    w2.reshape(-1)[dead] = 2.0  # 0.0 with bit 30 set is 2.0
    expected = manual_forward(pruned_mlp, pruned_mlp[0].weight, w2, x)
    with torch.no_grad(), resil.inject(pruned_mlp, resil.Fault("2.weight", dead, bit=30), sites=site_list):
        got = pruned_mlp(x)
    assert torch.equal(got, expected)
    after = flat_state(pruned_mlp)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_torch_pruning_gives_a_smaller_dense_network_with_the_right_sites():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    example = torch.randn(1, 1, 8, 8)
    pruner = tp.pruner.BasePruner(net, example, tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=[net[7]])
    pruner.step()
    s = resil.sites(net, example)
    assert s["0.weight"].shape == (8, 1, 3, 3) and s["3.weight"].shape == (16, 8, 3, 3) and s["7.weight"].shape == (10, 16)
    assert s["1.running_mean"].shape == (8,)
    assert sum(x.size for x in s if not x.batched and x.kind != "buffer") == sum(p.numel() for p in net.parameters())
    assert s["3:out"].shape == (16, 8, 8)
    sd = tp.state_dict(net)
    fresh = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    tp.load_state_dict(fresh, state_dict=sd)
    fresh.eval()
    stored = {k: v for k, v in s.shapes().items() if not s[k].batched}
    assert {k: v for k, v in resil.sites(fresh).shapes().items() if k in stored} == stored
    with torch.no_grad(), resil.inject(fresh, resil.Fault("7.weight", (3, 15), bit=30)):
        y = fresh(example)
    assert not torch.equal(y, fresh(example))


def test_weight_attribute_follows_the_fault_in_and_out(pruned_mlp):
    """``weight`` (recomputed by the pruning pre-hook before each forward) used to keep the faulty
    value after the block until the next forward."""
    pruned_mlp(torch.zeros(1, 6))
    before = pruned_mlp[0].weight.detach().clone()
    live = int(resil.sites(pruned_mlp)["0.weight"].elements()[0])
    (code,) = struct.unpack("<I", struct.pack("<f", float(before.reshape(-1)[live])))
    faulty = struct.unpack("<f", struct.pack("<I", code ^ (1 << 30)))[0]
    with resil.inject(pruned_mlp, resil.FaultSet("0.weight", [live], [30])):
        assert float(pruned_mlp[0].weight.reshape(-1)[live]) == faulty
    assert torch.equal(pruned_mlp[0].weight.detach().view(torch.int32), before.view(torch.int32))
