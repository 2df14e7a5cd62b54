"""Adapters compose on one model; third-party adapters plug in; unknown families fail clearly."""

import brevitas.nn as qnn
import numpy as np
import pytest
import snntorch as snn
import torch
from torch import nn
from torch.nn.utils import prune

import resil
import resil.adapters as adapters


class Mixed(nn.Module):
    """A pruned Brevitas conv, a quantized ReLU, a pruned float linear feeding spiking neurons,
    and a Brevitas read-out: every adapter in one model."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.qconv = qnn.QuantConv2d(1, 4, 3, padding=1, weight_bit_width=4)
        self.qrelu = qnn.QuantReLU(bit_width=8)
        self.fc = nn.Linear(4 * 8 * 8, 16)
        self.lif = snn.Leaky(beta=0.9, init_hidden=True)
        self.head = qnn.QuantLinear(16, 10, bias=True)
        prune.l1_unstructured(self.qconv, "weight", amount=0.5)
        prune.l1_unstructured(self.fc, "weight", amount=0.8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        resil.reset(self)
        h = self.fc(self.qrelu(self.qconv(x)).flatten(1))
        return sum(self.head(self.lif(h * 3)) for _ in range(4))


def bits(net: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().reshape(-1).copy().view(np.uint8) for k, v in net.state_dict().items() if v.dim()}


def test_one_model_one_site_list_every_family():
    net, x = Mixed().eval(), torch.rand(3, 1, 8, 8)
    s = resil.sites(net, x)
    kinds = {n: (s[n].kind, s[n].encoding.name) 
             for n in ("qconv.weight", "qrelu:out", "fc.weight", "lif.mem", "lif.spk", "lif.threshold", "head.weight")}
    assert kinds == {
        "qconv.weight": ("weight", "int4"), "qrelu:out": ("activation", "uint8"), "fc.weight": ("weight", "float32"),
        "lif.mem": ("state", "float32"), "lif.spk": ("spike", "spike"), "lif.threshold": ("parameter", "float32"),
        "head.weight": ("weight", "int8"),
    }
    assert s["qconv.weight"].size == 18 and s["fc.weight"].size == round(0.2 * 4 * 64 * 16)
    assert not [n for n in s.names() if "_orig" in n or "_mask" in n or "quant" in n.split(".")[-1]]

    snap = bits(net)
    with torch.no_grad():
        clean = net(x)
        for site in s:
            if site.kind in ("buffer",) or site.size == 0:
                continue
            fault = resil.Fault(site.name, int(site.elements()[0]), bit=site.bits - 1)
            with resil.inject(net, fault, sites=s):
                net(x)  # every family injects through the same call
        assert all(np.array_equal(v, snap[k]) for k, v in bits(net).items())
        assert torch.equal(net(x), clean)


def test_adapters_from_entry_points_are_loaded(monkeypatch):
    class Marker(nn.Module):
        def forward(self, x):
            return x

    class MarkerAdapter(resil.Adapter):
        name = "marker"

        def sites(self, prefix, module, options):
            yield resil.Site(prefix + ":marker", "activation", (1,), resil.FLOAT32, self, module, batched=True)

    class EntryPoint:
        def load(self):
            return lambda: adapters.register_adapter(Marker, MarkerAdapter())

    monkeypatch.setattr(adapters, "entry_points", lambda group: [EntryPoint()] if group == "resil.adapters" else [])
    monkeypatch.setattr(adapters, "_entry_points_loaded", False)
    assert resil.sites(nn.Sequential(Marker())).names() == ["0:marker"]


@pytest.mark.parametrize("module, name", [
    (lambda: snn.StateLeaky(beta=0.9, channels=4), "StateLeaky"),
    (lambda: qnn.QuantLSTM(4, 4), "QuantLSTM"),
])
def test_module_families_without_an_adapter_fail_clearly(module, name):
    with pytest.raises(resil.FaultError, match=rf"no adapter describes module '1' of type .*{name}.*register_adapter\({name}, adapter\)"):
        resil.sites(nn.Sequential(nn.Linear(4, 4), module()))


def test_stored_codes_of_every_family_match_the_storage():
    net, x = Mixed().eval(), torch.rand(2, 1, 8, 8)
    s = resil.sites(net, x)
    # a pruned cell stores +0.0 (orig * mask would give -0.0 for negative orig)
    fc = np.where(net.fc.weight_mask.numpy() != 0, net.fc.weight_orig.detach().numpy(), np.float32(0)).reshape(-1)
    assert s["fc.weight"].codes().tolist() == fc.view(np.uint32).tolist()
    q = net.qconv.quant_weight().int().reshape(-1).tolist()
    assert s["qconv.weight"].codes().tolist() == [v & 0xF for v in q]  # 4-bit two's complement
    assert s["lif.threshold"].codes().tolist() == [0x3F800000] * 16
    with pytest.raises(ValueError, match="no stored codes"):
        s["lif.mem"].codes()
