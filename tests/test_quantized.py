"""Brevitas networks: faults on integer codes, checked against manual integer computations."""

import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from brevitas import nn as qnn
from brevitas.graph.calibrate import calibration_mode
from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerChannelFloat, Int32Bias
from torch import nn
from torch.nn.utils import prune

import resil
from resil.adapters import adapter_for

torch.set_num_threads(1)


def flip(q: int, bits: list[int], width: int) -> int:
    """Flip ``bits`` of the ``width``-bit two's complement integer ``q`` (Python ints)."""
    code = q & ((1 << width) - 1)
    for b in bits:
        code ^= 1 << b
    return code - (1 << width) if code >= 1 << (width - 1) else code


def stuck(q: int, bits: list[int], value: int, width: int) -> int:
    code = q & ((1 << width) - 1)
    mask = sum(1 << b for b in bits)
    code = code | mask if value else code & ~mask
    return code - (1 << width) if code >= 1 << (width - 1) else code


def int8_flip_struct(q: int, bit: int) -> int:
    """The same flip for int8 through struct's two's complement packing (a second oracle)."""
    (u,) = struct.unpack("B", struct.pack("b", q))
    (s,) = struct.unpack("b", struct.pack("B", u ^ (1 << bit)))
    return s


def float_bits(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().copy().view(np.uint32)


def codes(layer: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return layer.quant_weight().int().to(torch.int64)


def dequant(q: torch.Tensor, qt) -> torch.Tensor:
    """The manual dequantization ``(q - zero_point) * scale`` of integer codes ``q``."""
    return (q.to(torch.float32) - qt.zero_point) * qt.scale


def conv_layer(bits: int, per_channel: bool) -> qnn.QuantConv2d:
    torch.manual_seed(0)
    kwargs = {"weight_quant": Int8WeightPerChannelFloat} if per_channel else {}
    conv = qnn.QuantConv2d(2, 4, 3, padding=1, bias=True, weight_bit_width=bits, **kwargs).eval()
    with torch.no_grad():
        w = conv.weight.view(-1)
        w[5] = 0.0  # code 0
        w[int(w.abs().argmax())] *= -1  # the max-abs element has code -qmax
    return conv


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_weight_flips_match_a_manual_integer_convolution(bits, per_channel):
    conv = conv_layer(bits, per_channel)
    x = torch.randn(3, 2, 5, 5)
    qt = conv.quant_weight()
    q = codes(conv)
    flat = q.view(-1).tolist()
    qmax = (1 << (bits - 1)) - 1
    assert (qt.scale.shape == (4, 1, 1, 1)) == per_channel and max(abs(v) for v in flat) == qmax
    top, biggest, zero = bits - 1, int(conv.weight.detach().view(-1).abs().argmax()), 5
    assert flat[biggest] == -qmax and flat[zero] == 0
    positive = max(range(len(flat)), key=lambda i: flat[i])
    faults = [(biggest, [0]), (zero, [top]), (positive, [top])]  # -qmax -> min, 0 -> min, max-ish -> negative
    q2 = q.clone()
    for i, b in faults:
        q2.view(-1)[i] = flip(flat[i], b, bits)
    assert q2.view(-1)[biggest] == q2.view(-1)[zero] == -(1 << (bits - 1))
    if bits == 8:
        assert all(q2.view(-1)[i] == int8_flip_struct(flat[i], b[0]) for i, b in faults)
    expected = F.conv2d(x, dequant(q2, qt), conv.bias, padding=1)
    assert torch.equal(conv(x), F.conv2d(x, dequant(q, qt), conv.bias, padding=1))
    site = resil.sites(conv)["weight"]
    assert site.encoding.bits == bits and site.encoding.signed and torch.equal(site.encoding.scale, qt.scale)
    with torch.no_grad(), resil.inject(conv, [resil.Fault("weight", i, bit=b) for i, b in faults]):
        got = conv(x)
        assert torch.equal(codes(conv), q2)
    assert torch.equal(got, expected)


def test_stuck_at_multi_bit_and_value_faults_on_a_per_channel_linear():
    torch.manual_seed(1)
    lin = qnn.QuantLinear(6, 5, bias=True, weight_quant=Int8WeightPerChannelFloat).eval()
    x = torch.randn(4, 6)
    qt, q = lin.quant_weight(), codes(lin)
    flat = q.view(-1).tolist()
    faults = [
        resil.Fault("weight", (0, 1), bit=[0, 3, 7]),
        resil.Fault("weight", (2, 4), bit=[6, 7], model=resil.StuckAt(1)),
        resil.Fault("weight", (4, 0), bit=[0, 1, 2, 3, 4, 5, 6, 7], model=resil.StuckAt(0)),
        resil.Fault("weight", (4, 0), bit=2),  # after the stuck-at: bit 2 set
        resil.Fault("weight", (3, 5), model=resil.ValueFunction(lambda v: -v)),  # decoded with row 3's scale
    ]
    q2 = q.clone().view(-1)
    q2[1] = flip(flat[1], [0, 3, 7], 8)
    q2[16] = stuck(flat[16], [6, 7], 1, 8)
    q2[24] = flip(stuck(flat[24], list(range(8)), 0, 8), [2], 8)
    q2[23] = -flat[23]
    assert q2[24] == 4 and flat[23] != 0
    expected = F.linear(x, dequant(q2.view(q.shape), qt), lin.bias)
    with torch.no_grad(), resil.inject(lin, faults):
        got = lin(x)
    assert torch.equal(got, expected)


def test_a_bare_transposed_conv_lists_its_own_sites_and_matches_manual_computation():
    torch.manual_seed(6)
    ct = qnn.QuantConvTranspose2d(3, 5, 3, weight_quant=Int8WeightPerChannelFloat).eval()
    assert resil.sites(ct).names() == ["weight", "bias", ":out"]  # no quantizer internals
    x = torch.randn(2, 3, 4, 4)
    qt, q = ct.quant_weight(), codes(ct)
    assert qt.scale.shape == (1, 5, 1, 1) and q[2, 3, 1, 1] != 0  # output channels: dim 1 of the weight
    q2 = q.clone()
    q2[1, 4, 0, 0] = flip(int(q[1, 4, 0, 0]), [7], 8)
    q2[2, 3, 1, 1] = -q[2, 3, 1, 1]
    faults = [resil.Fault("weight", (1, 4, 0, 0), bit=7), resil.Fault("weight", (2, 3, 1, 1), model=resil.ValueFunction(lambda v: -v))]
    with torch.no_grad(), resil.inject(ct, faults):
        got = ct(x)
    assert torch.equal(got, F.conv_transpose2d(x, dequant(q2, qt), ct.bias))


def test_float_weights_are_never_touched_and_codes_restore():
    conv = conv_layer(8, per_channel=True)
    x = torch.randn(2, 2, 5, 5)
    before_bits = {n: float_bits(p) for n, p in conv.named_parameters()}
    before_codes, clean = codes(conv), conv(x)
    with torch.no_grad(), resil.inject(conv, [resil.Fault("weight", i, bit=7) for i in range(0, 72, 7)]):
        assert not torch.equal(codes(conv), before_codes)
        assert all(np.array_equal(float_bits(p), before_bits[n]) for n, p in conv.named_parameters())
    assert torch.equal(codes(conv), before_codes) and torch.equal(conv(x), clean)
    assert all(np.array_equal(float_bits(p), before_bits[n]) for n, p in conv.named_parameters())


def test_weight_faults_follow_changing_float_weights_and_let_gradients_flow():
    lin = qnn.QuantLinear(4, 3, bias=False).train()
    x = torch.randn(5, 4)
    with resil.inject(lin, resil.Fault("weight", (1, 2), bit=6)):
        with torch.no_grad():
            lin.weight.mul_(-3.0)  # a training step: new codes, new scale
        qt, q = lin.quant_weight(), codes(lin)
        scale = lin.weight.detach().abs().max() / 127  # Brevitas' default per-tensor scale, from the new weights
        assert torch.equal(qt.scale, scale) and q[1, 2] == flip(int(torch.round(lin.weight[1, 2] / scale)), [6], 8)
        y = lin(x)
        y.sum().backward()
    assert torch.isfinite(lin.weight.grad).all() and lin.weight.grad[0].abs().sum() > 0
    assert torch.equal(y.detach(), F.linear(x, dequant(q, qt)).detach())


def test_quantized_bias_is_an_integer_site_with_the_run_time_scale():
    torch.manual_seed(2)
    lin = qnn.QuantLinear(4, 3, bias=True, input_quant=Int8ActPerTensorFloat, bias_quant=Int32Bias).eval()
    x = torch.randn(2, 4)
    seen = []
    handle = lin.bias_quant.register_forward_hook(lambda m, a, out: seen.append(out))
    clean = lin(x)
    handle.remove()
    qb = seen[0]
    b = qb.int().to(torch.int64)
    site = resil.sites(lin)["bias"]
    assert site.kind == "bias" and site.encoding.bits == 32 and site.encoding.signed
    b2 = b.clone()
    b2[1] = flip(int(b[1]), [20], 32)
    expected = F.linear(lin.input_quant(x).value, lin.quant_weight().value, dequant(b2, qb))
    assert torch.equal(clean, F.linear(lin.input_quant(x).value, lin.quant_weight().value, qb.value))
    with torch.no_grad(), resil.inject(lin, resil.Fault("bias", 1, bit=20)):
        got = lin(x)
    assert torch.equal(got, expected)


def test_relu_activation_flip_in_the_uint8_domain():
    relu = qnn.QuantReLU().eval()
    scale = relu.act_quant.scale()
    x = torch.rand(3, 8) * 0.5
    x[:, 2] = 60 * scale  # code 60 in every sample
    site = resil.sites(relu, x)[":out"]
    assert (site.encoding.bits, site.encoding.signed, site.shape) == (8, False, (8,))
    clean = relu(x)
    with torch.no_grad(), resil.inject(relu, resil.Fault(":out", 2, bit=7)):
        got = relu(x)
    assert torch.equal(got[:, 2], torch.full((3,), 188.0) * scale)
    assert torch.equal(got[:, [0, 1, 3, 4, 5, 6, 7]], clean[:, [0, 1, 3, 4, 5, 6, 7]])
    with torch.no_grad(), resil.inject(relu, resil.Fault(":out", 2, bit=7, batch=1)):
        got = relu(x)
    assert ((got != clean).any(dim=1)).tolist() == [False, True, False]
    assert got[1, 2] == 188.0 * scale


def test_identity_activation_flip_in_the_signed_int8_domain_and_time_steps():
    ident = qnn.QuantIdentity(return_quant_tensor=True).eval()
    scale = ident.act_quant.scale()
    x = torch.zeros(2, 4)
    x[:, 1] = 5 * scale
    x[:, 3] = -3 * scale
    site = resil.sites(ident)[":out"]
    assert (site.encoding.bits, site.encoding.signed) == (8, True)
    faults = [resil.Fault(":out", 1, bit=7), resil.Fault(":out", 3, bit=[0, 1], step=1)]
    with torch.no_grad(), resil.inject(ident, faults):
        first, second, third = ident(x), ident(x), ident(x)
    assert isinstance(first, type(ident.act_quant(x)))  # still an IntQuantTensor
    assert first.int()[:, 1].tolist() == [int8_flip_struct(5, 7)] * 2 == [-123, -123]
    assert torch.equal(first.value[:, 1], torch.full((2,), -123.0) * scale)
    assert first.int()[:, 3].tolist() == [-3, -3] and third.int()[:, 3].tolist() == [-3, -3]
    assert second.int()[:, 3].tolist() == [flip(-3, [0, 1], 8)] * 2 == [-2, -2]


def test_calibrated_int8_activation_matches_manual_quantization():
    torch.manual_seed(3)
    ident = qnn.QuantIdentity()
    data = torch.randn(64, 10) * 2
    with torch.no_grad(), calibration_mode(ident):
        ident(data)
    ident.eval()
    scale = ident.act_quant.scale()
    assert not torch.isclose(scale, torch.tensor(1 / 128))
    assert torch.equal(resil.sites(ident)[":out"].encoding.scale, scale)
    x = torch.randn(4, 10) * 2
    q = torch.clamp(torch.round(x / scale), -128, 127).to(torch.int64)
    q2 = q.clone()
    q2[2, 7] = flip(int(q[2, 7]), [6], 8)
    with torch.no_grad(), resil.inject(ident, resil.Fault(":out", 7, bit=6, batch=2)):
        got = ident(x)
    assert torch.equal(got, q2.to(torch.float32) * scale)


@pytest.fixture
def pruned_linear() -> qnn.QuantLinear:
    torch.manual_seed(4)
    lin = qnn.QuantLinear(6, 4, bias=True).eval()
    prune.l1_unstructured(lin, "weight", amount=0.5)
    return lin


def test_pruned_layer_live_policy_excludes_pruned_cells(pruned_linear):
    mask = pruned_linear.weight_mask.reshape(-1)
    dead, live = int((mask == 0).nonzero()[0]), int(mask.nonzero()[0])
    s = resil.sites(pruned_linear)
    assert "weight_orig" not in s and s["weight"].size == int(mask.sum()) == 12
    assert s["weight"].elements().tolist() == mask.nonzero().reshape(-1).tolist()
    with pytest.raises(resil.FaultError, match=f"element {dead} of site 'weight' is not stored"), \
            resil.inject(pruned_linear, resil.Fault("weight", dead, bit=7)):
        pass
    x = torch.randn(3, 6)
    pruned_linear(x)  # the pruning pre-hook computes weight = weight_orig * weight_mask
    qt, q = pruned_linear.quant_weight(), codes(pruned_linear)
    q2 = q.clone()
    q2.view(-1)[live] = flip(int(q.view(-1)[live]), [7], 8)
    with torch.no_grad(), resil.inject(pruned_linear, resil.Fault("weight", live, bit=7)):
        got = pruned_linear(x)
    assert torch.equal(got, F.linear(x, dequant(q2, qt), pruned_linear.bias))


def test_pruned_layer_dense_policy_flips_the_int_zero_of_a_pruned_cell(pruned_linear):
    mask = pruned_linear.weight_mask.reshape(-1)
    dead = int((mask == 0).nonzero()[0])
    x = torch.randn(3, 6)
    pruned_linear(x)
    qt, q = pruned_linear.quant_weight(), codes(pruned_linear)
    assert q.view(-1)[dead] == 0
    q2 = q.clone()
    q2.view(-1)[dead] = -128
    before = {n: float_bits(t) for n, t in pruned_linear.state_dict().items()}
    s = resil.sites(pruned_linear, pruned="dense")
    assert s["weight"].size == 24
    with torch.no_grad(), resil.inject(pruned_linear, resil.Fault("weight", dead, bit=7), sites=s):
        got = pruned_linear(x)
    assert torch.equal(got, F.linear(x, dequant(q2, qt), pruned_linear.bias))
    assert all(np.array_equal(float_bits(t), before[n]) for n, t in pruned_linear.state_dict().items())


class QuantCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = qnn.QuantIdentity(return_quant_tensor=True)
        self.conv1 = qnn.QuantConv2d(1, 4, 3, padding=1, weight_quant=Int8WeightPerChannelFloat)
        self.relu1 = qnn.QuantReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = qnn.QuantConv2d(4, 8, 3, padding=1, weight_bit_width=4, output_quant=Int8ActPerTensorFloat)
        self.relu2 = qnn.QuantReLU(bit_width=4)
        self.fc = qnn.QuantLinear(8 * 4 * 4, 10, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.conv1(self.inp(x))))
        return self.fc(self.relu2(self.conv2(x)).flatten(1))


def test_sites_of_a_small_brevitas_cnn():
    torch.manual_seed(5)
    net = QuantCNN().eval()
    x = torch.rand(2, 1, 8, 8)
    s = resil.sites(net, x)
    got = {site.name: (site.kind, site.encoding.name, site.shape) for site in s}
    assert got == {
        "inp:out": ("activation", "int8", (1, 8, 8)),
        "conv1.weight": ("weight", "int8", (4, 1, 3, 3)),
        "conv1.bias": ("bias", "float32", (4,)),
        "conv1:out": ("activation", "float32", (4, 8, 8)),
        "relu1:out": ("activation", "uint8", (4, 8, 8)),
        "pool:out": ("activation", "float32", (4, 4, 4)),
        "conv2.weight": ("weight", "int4", (8, 4, 3, 3)),
        "conv2.bias": ("bias", "float32", (8,)),
        "conv2:out": ("activation", "int8", (8, 4, 4)),
        "relu2:out": ("activation", "uint4", (8, 4, 4)),
        "fc.weight": ("weight", "int8", (10, 128)),
        "fc.bias": ("bias", "float32", (10,)),
        "fc:out": ("activation", "float32", (10,)),
    }
    assert adapter_for(net.relu1).name == "quantized" and adapter_for(net.pool).name == "dense"
    assert s["conv1.weight"].encoding.scale.shape == (4, 1, 1, 1)
    assert s["relu2:out"].encoding.qmax == 15 and s["conv2:out"].batched
    clean = net(x)
    with torch.no_grad(), resil.inject(net, [resil.Fault("conv2:out", 17, bit=7), resil.Fault("conv1.weight", 3, bit=7)]):
        assert not torch.equal(net(x), clean)
    assert torch.equal(net(x), clean)


def test_listing_sites_inside_a_block_does_not_advance_activation_hooks():
    relu = qnn.QuantReLU().eval()
    x = torch.full((1, 3), 10 * relu.act_quant.scale().item())
    with torch.no_grad(), resil.inject(relu, resil.Fault(":out", 0, bit=7, step=0)):
        resil.sites(relu)  # reads the quantizer's encoding without running the fault hook
        y = relu(x)
    assert torch.equal(y[0, 0], 138 * relu.act_quant.scale())
