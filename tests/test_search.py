"""Fault-tolerant architecture search (resil.training.search)."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import resil.models as rm
from resil import FaultError
from resil.training.ftnas import AdSAF, MiBB
from resil.training.search import (
    Arch,
    ArchSearchConfig,
    SearchSpace,
    compare,
    default_beta,
    live_parameters,
    load_found,
    param_count,
    reward,
    save_found,
    search,
)

torch.set_num_threads(1)

TINY = SearchSpace(conv1=(4, 8), conv2=(8,), hidden=(16,), kernel=(3,), pool=("max",), act=("relu", "hardtanh"), bits=(None,),
                   head=("single",))


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_reference_models_and_a_hand_count():
    # README: dense-cnn 38,282 and structured-50 (Conv8-Conv16-FC32) 9,802 parameters
    assert Arch().params == _n_params(Arch().build()) == 38_282 == _n_params(rm.load("dense-cnn"))
    assert Arch(8, 16, 32).params == _n_params(Arch(8, 16, 32).build()) == 9_802 == _n_params(rm.load("structured-50"))
    # 5x5 by hand: conv1 25*8+8, conv2 8*16*25+16, fc1 16*16*32+32 (4x4 after the pool), fc2 32*10+10
    hand = (25 * 8 + 8) + (8 * 16 * 25 + 16) + (16 * 16 * 32 + 32) + (32 * 10 + 10)
    assert param_count(8, 16, 32, kernel=5) == hand == _n_params(Arch(8, 16, 32, kernel=5, pool="avg").build())


def test_operation_choices_build_the_named_layers():
    net = Arch(4, 8, 16, kernel=5, pool="avg", act="hardtanh").build()
    assert net.conv1.kernel_size == (5, 5) and isinstance(net.pool, nn.AvgPool2d)
    x = torch.linspace(-3, 3, 13)
    assert torch.equal(net.act1(x), x.clamp(0, 1))  # a ReLU clipped at 1
    assert torch.equal(Arch(act="relu6").build().act2(x * 3), (x * 3).clamp(0, 6))
    q = Arch(8, 16, 32, bits=4).build()
    assert type(q.conv1).__name__ == "QuantConv2d" and q.conv1.weight_quant.bit_width() == 4


def test_bad_architectures_are_refused_with_the_reason():
    with pytest.raises(FaultError, match="act must be one of"):
        Arch(act="gelu")
    with pytest.raises(FaultError, match="digits_qcnn"):
        Arch(8, 16, 32, act="hardtanh", bits=8)
    with pytest.raises(FaultError, match="kernel"):
        Arch(kernel=4)
    with pytest.raises(FaultError, match="no architecture"):
        SearchSpace(max_params=100)


def test_reward_and_ftnas_beta():
    assert reward(0.9, 0.7, beta=0.5) == pytest.approx(0.8)
    assert reward(1.0, 0.5, beta=0.2) == pytest.approx(0.9)
    assert default_beta(AdSAF()) == 0.2 and default_beta(MiBB()) == 0.5
    with pytest.raises(FaultError, match="give beta"):
        default_beta([AdSAF(), MiBB()])


def test_space_members_sampling_and_mutation():
    # 2 conv1 x 2 activations, all within the budget
    assert sorted(a.describe() for a in TINY.members()) == sorted(
        f"Conv{c}k3-Conv8k3-maxpool-FC16-FC10 {act}" for c in (4, 8) for act in ("relu", "hardtanh"))
    # quantized choices take the reference operations: 2 float + 2 quantized (conv2 = 2 * conv1)
    q = SearchSpace(conv1=(4, 8), conv2=(8,), hidden=(16,), kernel=(3, 5), pool=("max",), act=("relu",), bits=(None, 8), head=("single",))
    assert len(q.members()) == 2 * 2 + 2
    assert all(a.params <= 20_000 for a in SearchSpace(max_params=20_000).members())
    rng = np.random.default_rng(0)
    space = SearchSpace(bits=(None,))
    for _ in range(30):
        a = space.sample(rng)
        b = space.mutate(a, rng)
        assert a.params <= space.max_params and b.params <= space.max_params
        assert sum(x != y for x, y in zip(a.to_dict().values(), b.to_dict().values(), strict=True)) == 1


def test_tmr_head_masks_a_fault_in_one_run_but_not_in_the_shared_weights():
    torch.manual_seed(0)
    net = Arch(4, 8, 16, act="hardtanh", head="tmr").build().eval()
    assert net.fc2.n == 3 and _n_params(net) == param_count(4, 8, 16)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        clean = net(x)
        runs = []
        h = net.fc2.layer.register_forward_hook(lambda m, a, out: (runs.append(1), out + (50.0 if len(runs) == 1 else 0.0))[1])
        masked = net(x)  # +50 on every logit of the first run only: the median of (a + 50, a, a) is a
        h.remove()
        h = net.fc2.layer.register_forward_hook(lambda m, a, out: out + 50.0)
        every = net(x)  # a fault in every run (as a stuck weight would be) is not masked
        h.remove()
    assert len(runs) == 3 and torch.equal(masked, clean)
    assert torch.allclose(every, clean + 50.0)
    with pytest.raises(FaultError, match="head='single'"):
        Arch(8, 16, 32, bits=8, head="tmr")


def test_live_parameters_count_unpruned_weights():
    total, live = live_parameters(rm.load("pruned-50"))
    # 19,080 of the 38,160 conv/linear weights are pruned (models docs); biases stay
    assert (total, live) == (38_282, 38_282 - 19_080)


def test_compare_uses_the_same_draws_for_models_of_the_same_shape():
    d = rm.dataset("digits")
    a = rm.load("dense-cnn")
    rows = compare({"a": (a, "normal"), "b": (copy.deepcopy(a), "normal")}, AdSAF(p=0.08), d.x_test, d.y_test, beta=0.2, draws=3)
    assert rows[0].faulty == rows[1].faulty
    with torch.no_grad():
        clean = float((a(d.x_test).argmax(1) == d.y_test).float().mean())
    assert rows[0].clean == pytest.approx(clean)
    assert rows[0].reward == pytest.approx(0.8 * clean + 0.2 * np.mean(rows[0].faulty))


def test_search_validates_on_a_held_out_split_and_compares_on_the_test_set():
    r = search(AdSAF(p=0.08), ArchSearchConfig(candidates=4, population=2, tournament=2, epochs=1, final_epochs=1, draws=2,
                                               final_draws=2, references=("structured-50",)), space=TINY, progress=False)
    d = rm.dataset("digits")
    # the validation split: 20% of each class of the training set, rounded per class (by hand)
    counts = np.bincount(d.y_train.numpy())
    n_val = int(sum(round(c * 0.2) for c in counts))
    assert n_val < len(d.y_train) and len(r.candidates) == 4
    for c in r.candidates:
        assert c.clean * n_val == pytest.approx(round(c.clean * n_val))  # accuracies over n_val images
        assert c.reward == pytest.approx(0.8 * c.clean + 0.2 * c.faulty)
        assert c.parent is None or (c.parent < c.index and sum(
            x != y for x, y in zip(c.arch.to_dict().values(), r.candidates[c.parent].arch.to_dict().values(), strict=True)) == 1)
    assert r.arch == max(r.candidates, key=lambda c: (c.reward, -c.params)).arch
    assert [row.model for row in r.comparison][1:] == ["structured-50"]
    with torch.no_grad():
        clean = float((r.model(d.x_test).argmax(1) == d.y_test).float().mean())
    assert r.found.clean == pytest.approx(clean) and r.found.params == r.arch.params
    arch, model = load_found(save_found(r))
    assert arch == r.arch and torch.equal(model(d.x_test), r.model(d.x_test))


def test_without_faults_the_faulty_accuracy_is_the_clean_one():
    r = search(AdSAF(p=0.0), ArchSearchConfig(candidates=2, population=2, epochs=1, final_epochs=1, draws=2, final_draws=2,
                                              alpha=0.0, references=("dense-cnn",)), space=TINY, progress=False)
    for row in r.comparison:
        assert row.faulty == (row.clean, row.clean) and row.reward == pytest.approx(row.clean)
    assert r.found.training == "normal"
    assert r.comparison[1].clean == rm.info("dense-cnn").accuracy


@pytest.mark.parametrize("kwargs, match", [
    ({"candidates": 0}, "candidates must be"), ({"beta": 1.5}, "beta must be"), ({"references": ("nope",)}, "unknown reference"),
    ({"reference_ftt": ("int8",), "references": ()}, "not in references"), ({"val_fraction": 1.0}, "val_fraction"),
])
def test_bad_search_arguments_fail_before_any_work(kwargs, match):
    with pytest.raises(FaultError, match=match):
        search(AdSAF(), ArchSearchConfig(**kwargs), progress=False)
