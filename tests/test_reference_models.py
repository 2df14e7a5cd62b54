"""The bundled reference models: recorded accuracies, checkpoints, and what makes each variant
what it claims to be (sparsity, removed channels, bit widths, spiking state reset)."""

import copy
import functools
import json

import pytest
import snntorch as snn
import torch
from brevitas.nn import QuantConv2d, QuantLinear, QuantReLU
from torch import nn

import resil.models as rm
from resil.models.nets import SpikingCNN, digits_cnn

torch.set_num_threads(1)

ALL = ["dense-cnn", "snn", "pruned-50", "pruned-80", "structured-50", "int8", "int4"]
DENSE_PARAMS = 38_282


@functools.cache
def model(name: str) -> nn.Module:
    """Loaded once per session; tests that change a model work on a deep copy."""
    return rm.load(name)


@functools.cache
def digits() -> rm.Dataset:
    return rm.dataset("digits")


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def prunable(m: nn.Module) -> list[nn.Module]:
    return [x for x in m.modules() if isinstance(x, (nn.Conv2d, nn.Linear))]


def test_registry_lists_every_model_with_its_accuracy():
    assert rm.names() == ALL
    recorded = json.loads((rm.CHECKPOINTS / "accuracy.json").read_text())
    assert set(recorded) == set(ALL)
    assert all(rm.dataset(name).name == "digits" for name in ALL)


@pytest.mark.parametrize("name", ALL)
def test_model_loads_in_eval_mode_and_reproduces_its_recorded_accuracy(name):
    net, d = model(name), digits()
    assert not any(m.training for m in net.modules())
    acc = rm.accuracy(net, d.x_test, d.y_test)
    assert acc == rm.info(name).accuracy  # exactly
    assert acc >= (0.97 if name == "dense-cnn" else 0.94)
    assert rm.info(name).checkpoint.stat().st_size < 1_000_000
    assert net(d.x_test[:3]).shape == (3, 10)


@pytest.mark.parametrize("name", ALL)
def test_description_states_the_parameter_count(name):
    assert f"{n_params(model(name)):,} parameters" in rm.info(name).description


def test_load_returns_independent_identical_models():
    a, b = rm.load("int4"), rm.load("int4")
    x = digits().x_test[:16]
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert a.conv1.weight.data_ptr() != b.conv1.weight.data_ptr()


# --- unstructured pruning ------------------------------------------------------------------


@pytest.mark.parametrize("name, amount", [("pruned-50", 0.5), ("pruned-80", 0.8)])
def test_pruned_model_keeps_masks_with_the_global_sparsity(name, amount):
    net = model(name)
    layers = prunable(net)
    assert len(layers) == 4
    for m in layers:
        assert "weight_orig" in dict(m.named_parameters(recurse=False))
        assert "weight_mask" in dict(m.named_buffers(recurse=False))
        assert "weight" not in m._parameters
    zeros = sum(int((m.weight_mask == 0).sum()) for m in layers)
    total = sum(m.weight_mask.numel() for m in layers)
    assert total == 38_160
    assert zeros == round(amount * total)
    # global, not per-layer: the layers end up with different sparsities
    assert len({round(float((m.weight_mask == 0).float().mean()), 3) for m in layers}) > 1
    for m in layers:  # the effective weight and the stored one are 0 exactly where the mask is
        pruned = m.weight_mask == 0
        assert torch.all(m.weight[pruned] == 0) and torch.all(m.weight_orig[pruned] == 0)
        assert torch.all(m.weight_mask[~pruned] == 1)


def test_pruned_models_were_fine_tuned_from_the_dense_checkpoint():
    dense, pruned = model("dense-cnn"), model("pruned-50")
    live = pruned.fc1.weight_mask != 0
    changed = (pruned.fc1.weight_orig != dense.fc1.weight)[live].float().mean()
    assert changed > 0  # fine-tuned ...
    assert torch.corrcoef(torch.stack([pruned.fc1.weight_orig[live], dense.fc1.weight[live]]))[0, 1] > 0.9  # ... from dense


# --- structured pruning --------------------------------------------------------------------


def test_structured_model_has_half_the_channels_and_no_masks():
    net, dense = model("structured-50"), model("dense-cnn")
    assert (net.conv1.out_channels, net.conv2.in_channels, net.conv2.out_channels) == (8, 8, 16)
    assert (dense.conv1.out_channels, dense.conv2.out_channels) == (16, 32)
    assert (net.fc1.in_features, net.fc1.out_features, net.fc2.in_features, net.fc2.out_features) == (256, 32, 32, 10)
    assert n_params(net) == 9_802 < DENSE_PARAMS
    assert net.conv1.weight.shape == (8, 1, 3, 3)
    assert not any(n.endswith(("_orig", "_mask")) for n, _ in net.named_parameters())
    assert not any(m._forward_pre_hooks for m in net.modules())
    # a plain smaller dense network: its weights load into the half-width CNN
    small = digits_cnn(8, 32)
    small.load_state_dict(net.state_dict())
    x = digits().x_test[:32]
    with torch.no_grad():
        assert torch.equal(small.eval()(x), net(x))


# --- quantization --------------------------------------------------------------------------


@pytest.mark.parametrize("name, bits, per_channel", [("int8", 8, False), ("int4", 4, True)])
def test_quantized_layers_report_their_bit_width(name, bits, per_channel):
    net = model(name)
    layers = [m for m in net.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert [type(m) for m in layers] == [QuantConv2d, QuantConv2d, QuantLinear, QuantLinear]
    limit = 2 ** (bits - 1) - 1  # narrow range
    for m in layers:
        assert int(m.weight_quant.bit_width()) == bits
        qw = m.quant_weight()
        assert int(qw.bit_width) == bits
        q = qw.int()
        assert int(q.abs().max()) == limit and int(q.min()) >= -limit
        assert torch.equal(qw.value, (q.float() - qw.zero_point) * qw.scale)
        scale = m.weight_quant.scale()
        assert scale.numel() == (m.weight.shape[0] if per_channel else 1)
    acts = [m for m in net.modules() if isinstance(m, QuantReLU)]
    assert len(acts) == 3
    for m in [net.quant_in, *acts]:
        assert int(m.act_quant.bit_width()) == bits
        assert not m.act_quant.is_signed
    with torch.no_grad():
        # calibrated during QAT and loaded from the checkpoint: the input range is [0, 1] ...
        assert float(net.quant_in.act_quant.scale()) == pytest.approx(1 / (2**bits - 1), rel=1e-3)
        # ... and the ReLU scales are not the uncalibrated 1/255
        assert all(abs(float(m.act_quant.scale()) - 1 / 255) > 1e-3 for m in acts)


def test_quantized_activation_scales_come_from_the_checkpoint():
    state = torch.load(rm.info("int8").checkpoint, weights_only=True)
    keys = [k for k in state if k.endswith("scaling_impl.value")]
    assert len(keys) == 4
    net = model("int8")
    for k in keys:
        assert torch.equal(net.get_parameter(k), state[k])


# --- spiking -------------------------------------------------------------------------------


def test_snn_is_a_spiking_sequential_of_init_hidden_leaky_neurons():
    net = model("snn")
    assert isinstance(net, SpikingCNN) and net.steps == 8
    neurons = [m for m in net.modules() if isinstance(m, snn.SpikingNeuron)]
    assert [type(m) for m in neurons] == [snn.Leaky] * 3
    assert all(m.init_hidden for m in neurons)


def test_snn_forward_is_deterministic_and_resets_its_state():
    net, x = model("snn"), digits().x_test
    with torch.no_grad():
        first = net(x[:20])
        net(x[100:150])  # a different batch (and batch size) in between
        assert torch.equal(net(x[:20]), first)
        assert torch.equal(net(x[:20]), first)


def test_snn_deep_copy_resets_its_own_state():
    net, x = model("snn"), digits().x_test[:20]
    with torch.no_grad():
        ref = net(x)
    twin = copy.deepcopy(net)
    for m in twin.neurons():  # garbage state of the right shape in the copy
        m.mem = torch.full_like(m.mem, 1e3)
    with torch.no_grad():
        assert torch.equal(twin(x), ref)
        assert torch.equal(twin(x), ref)


def test_snn_can_be_deep_copied_after_a_grad_enabled_forward():
    net = copy.deepcopy(model("snn"))
    net(digits().x_test[:4]).sum().backward()  # snnTorch keeps non-leaf states unless detached
    twin = copy.deepcopy(net)
    x = digits().x_test[:8]
    with torch.no_grad():
        assert torch.equal(twin(x), net(x))


# --- retraining ----------------------------------------------------------------------------


def test_pruned_80_retrains_bit_identically():
    """The one cheap retraining check (a 5-epoch fine-tune, about 1 s): same weights twice."""
    a, acc_a = rm.retrain("pruned-80")
    b, acc_b = rm.retrain("pruned-80")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert acc_a == acc_b
    assert abs(acc_a - rm.info("pruned-80").accuracy) <= 0.01
    assert not a.training


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_retraining_reproduces_the_recorded_accuracy_within_one_point(name):
    _, acc = rm.retrain(name)
    assert abs(acc - rm.info(name).accuracy) <= 0.01
