"""resil.testing.AdapterTester over the four built-in families and a toy third-party adapter that
resil finds through a real ``resil.adapters`` entry point (a dist-info directory on sys.path)."""

import shutil
import sys
from pathlib import Path

import brevitas.nn as qnn
import numpy as np
import pandas as pd
import pytest
import snntorch as snn
import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune

import resil
import resil.adapter_registry as registry
import resil.campaign as rc
from resil.testing import AdapterTester
from resil.training import prepare
from resil.training.ftnas import AdSAF, MiBB

torch.set_num_threads(1)
TOY = Path(__file__).parent / "toy_adapter" / "toy_resil_adapter.py"


def dense():
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)), torch.rand(3, 1, 6, 6)


def pruned():
    net, x = dense()
    prune.l1_unstructured(net[0], "weight", amount=0.5)
    prune.l1_unstructured(net[3], "weight", amount=0.7)
    return net, x


def torch_pruned():
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    example = torch.rand(1, 1, 6, 6)
    tp.pruner.BasePruner(net, example, tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=[net[7]]).step()
    assert net[0].out_channels == 4  # channels physically removed
    return net, torch.rand(3, 1, 6, 6)


class Spiking(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.lif1 = nn.Linear(4, 6), snn.Leaky(beta=0.9, init_hidden=True)
        self.fc2, self.lif2 = nn.Linear(6, 3), snn.Leaky(beta=0.8, init_hidden=True, output=True)

    def forward(self, x):
        out = []
        for _ in range(3):
            _, mem = self.lif2(self.fc2(self.lif1(self.fc1(x))))
            out.append(mem)
        return torch.stack(out).mean(0)


def spiking():
    return Spiking(), torch.rand(3, 4) * 3


def quantized():
    net = nn.Sequential(qnn.QuantLinear(4, 6, bias=True), qnn.QuantReLU(), qnn.QuantLinear(6, 3, bias=True))
    return net, torch.rand(3, 4)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy family installed as a distribution in ``tmp_path``: its module and a dist-info
    directory whose entry_points.txt names its registering function; resil's registry then
    loads the entry points again (the built-in ones too), as at a fresh start."""
    shutil.copy(TOY, tmp_path / "toy_resil_adapter.py")
    info = tmp_path / "toy_resil_adapter-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-resil-adapter\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[resil.adapters]\ntoy = toy_resil_adapter:register\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_WHEN_IMPORTED", dict(registry._WHEN_IMPORTED))
    monkeypatch.setattr(registry, "_loaded", False)
    import toy_resil_adapter

    yield toy_resil_adapter
    sys.modules.pop("toy_resil_adapter", None)


def toy_model(module):
    torch.manual_seed(0)
    return nn.Sequential(module.ScaledLinear(8, 6), nn.ReLU(), module.ScaledLinear(6, 3))


@pytest.mark.parametrize("family", [dense, pruned, torch_pruned, spiking, quantized])
def test_builtin_families_pass_the_adapter_tester(family):
    torch.manual_seed(0)
    net, x = family()
    report = AdapterTester(net.eval(), x).run()
    assert report["restore"] and report["codes"] == report["restore"]
    assert report["per_sample"] and report["time_window"]
    assert report["transform"]  # every family transforms some of its sites


def test_the_tester_covers_each_familys_own_sites():
    torch.manual_seed(0)
    net, x = spiking()
    report = AdapterTester(net.eval(), x).run()
    assert {"lif1.mem", "lif1.spk"} <= set(report["per_sample"]) and "lif1.threshold" in report["restore"]
    net, x = quantized()
    report = AdapterTester(net.eval(), x).run()
    assert resil.sites(net, x)["0.weight"].encoding.name == "int8" and "0.weight" in report["transform"]
    net, x = pruned()
    s = resil.sites(net, x)["3.weight"]
    assert s.live is not None and s.size < s.numel and "3.weight" in AdapterTester(net.eval(), x).run()["transform"]


def test_the_tester_catches_an_adapter_that_does_not_restore():
    class Leaky(resil.Adapter):  # restores nothing: the fault stays
        name = "leaky"

        def sites(self, prefix, module, options):
            yield resil.Site(prefix + ".weight", "weight", tuple(module.weight.shape), resil.FLOAT32, self, module, "weight")

        def codes(self, site):
            return site.encoding.encode(site.module.weight.detach())

        def install(self, site, plan):
            from resil.injectors import corrupt_stored
            corrupt_stored(site.module.weight, site.encoding, plan.stored(), site.shape)
            return lambda: None

    class Own(nn.Linear):
        pass

    resil.adapters.register_adapter(Own, Leaky())
    with pytest.raises(AssertionError, match=r"site '.weight' \(no_grad\): tensors not restored bit for bit: \['weight'\]"):
        AdapterTester(Own(3, 2).eval(), torch.rand(2, 3)).check_restore()


def test_toy_adapter_is_found_through_its_entry_point_and_passes(toy):
    net = toy_model(toy).eval()
    x = torch.rand(4, 8)
    s = resil.sites(net, x)
    assert type(s["0.weight"].adapter).__name__ == "ScaledLinearAdapter" and s["0.weight"].encoding.name == "int8"
    assert s["0.weight"].codes().tolist() == (net[0].q.numpy().astype(np.int64) & 0xFF).reshape(-1).tolist()
    report = AdapterTester(net, x).run()
    assert "0.weight" in report["restore"] and "0.weight" in report["transform"]


def test_toy_adapter_runs_a_fast_campaign_identical_to_plain(toy, tmp_path):
    net = toy_model(toy).eval()
    x, y = torch.rand(32, 8), torch.randint(0, 3, (32,))
    tables = {}
    for mode in ("plain", "fast"):
        spec = rc.CampaignSpec(sites=rc.SiteSpec(kinds=("weight", "bias", "activation")),
                               sampler=rc.SamplerSpec(kind="uniform", scenarios=60, faults_per_scenario=1), run=rc.RunSpec(mode=mode))
        tables[mode] = rc.run(spec, tmp_path / mode, model=net, data=(x, y)).table().sort_by("scenario").to_pandas()
    pd.testing.assert_frame_equal(tables["fast"], tables["plain"])
    assert (tables["plain"]["masked"] < len(x)).any()  # faults that did something
    assert any(name.endswith("weight") for names in tables["plain"]["fault_sites"] for name in names)


def test_toy_adapter_takes_an_ftt_step(toy):
    net = toy_model(toy).train()
    x, y = torch.rand(16, 8), torch.randint(0, 3, (16,))
    ftt = prepare(net, [AdSAF(p=0.2), MiBB(p_m=0.05)], alpha=0.5, example=x[:2], seed=0)
    q = [m.q.clone() for m in (net[0], net[2])]
    with torch.no_grad(), ftt.faulty():
        faulty = net(x)
    clean = net(x).detach()
    assert not torch.equal(faulty, clean)  # the faults reached the toy layers
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    opt.zero_grad()
    ftt.loss(x, y).backward()
    opt.step()
    net = ftt.convert()
    assert all(torch.equal(a, m.q) for a, m in zip(q, (net[0], net[2]), strict=True))  # codes untouched
    assert not torch.equal(net(x).detach(), clean) and not net[0].transforms  # trained, and no transform left
