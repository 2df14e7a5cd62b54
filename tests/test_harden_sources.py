"""Hardening, ``resil sites`` and ``resil demo`` on a user model class from a file and data files."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.nn import functional as F

from resil.campaign.sources import fingerprint_model, fingerprint_tensors
from resil.cli import main
from resil.errors import FaultError
from resil.models import Dataset, Recipe, train
from resil.training import faulty_accuracy, run_ftt
from resil.training.ftnas import AdSAF

torch.set_num_threads(1)

NETS = textwrap.dedent('''
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Net(nn.Module):
        """A user model with its own forward: conv, pool, linear; 1x8x8 inputs, 10 classes."""

        def __init__(self, width=4):
            super().__init__()
            self.conv = nn.Conv2d(1, width, 3, padding=1)
            self.fc = nn.Linear(width * 16, 10)

        def forward(self, x):
            return self.fc(torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 2), 1))

    def make(width=4):
        torch.manual_seed(0)
        return Net(width)
''')
TEMPLATES = np.random.default_rng(99).random((10, 1, 8, 8), dtype=np.float32)


def arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A learnable 10-class problem: one fixed 8x8 template per class plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    return (TEMPLATES[y] + 0.3 * rng.standard_normal((n, 1, 8, 8))).astype(np.float32), y


def make(width: int = 4) -> torch.nn.Module:
    """The factory of nets.py, run here without resil's loader."""
    namespace: dict = {}
    exec(NETS, namespace)
    return namespace["make"](width)


def hand_accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        return int((model(torch.from_numpy(x)).argmax(1) == torch.from_numpy(y)).sum()) / len(y)


def _trained() -> torch.nn.Module:
    """The model of nets.py with the weights of trained.pt (written by the fixture)."""
    net = make()
    net.load_state_dict(torch.load("trained.pt", weights_only=True))
    return net


def files(root: Path) -> dict[str, bytes]:
    """Every file under root (bytecode caches aside) and its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    (tmp_path / "nets.py").write_text(NETS)
    (tmp_path / "broken.py").write_text("raise RuntimeError('broken on purpose')\n")
    np.savez(tmp_path / "train.npz", x=arrays(200, 1)[0], y=arrays(200, 1)[1])
    np.savez(tmp_path / "test.npz", x=arrays(60, 2)[0], y=arrays(60, 2)[1])
    x, y = arrays(20, 3)
    np.savez(tmp_path / "two_channels.npz", x=np.repeat(x, 2, axis=1), y=y)
    np.savez(tmp_path / "short_labels.npz", x=x, y=y[:-1])
    np.savez(tmp_path / "label_12.npz", x=x, y=np.where(np.arange(20) == 0, 12, y))
    net = make()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt, yt = (torch.from_numpy(a) for a in arrays(200, 1))
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(net(xt), yt).backward()
        opt.step()
    torch.save(net.state_dict(), tmp_path / "trained.pt")
    torch.save(make(8).state_dict(), tmp_path / "width8.pt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_run_ftt_trains_both_arms_from_copies_of_a_live_model(folder):
    (x_tr, y_tr), (x_te, y_te) = arrays(200, 1), arrays(60, 2)
    net = make()
    before = fingerprint_model(net)
    recipe = Recipe(epochs=1, batch_size=32)
    r = run_ftt(net, AdSAF(p=0.08), data=(x_tr, y_tr, x_te, y_te), recipe=recipe, alpha=0.5, draws=2)
    assert (r.model, r.epochs, r.alpha, len(r.faulty_normal), len(r.faulty_ftt)) == ("Net", 1, 0.5, 2, 2)
    assert fingerprint_model(net) == before  # the given model is not trained
    # the normal arm: the same model trained by hand with the same recipe and the plain loss
    normal = make()
    train(normal, Dataset("d", *(torch.from_numpy(a) for a in (x_tr, y_tr, x_te, y_te)), 10), recipe)
    assert r.clean_normal == hand_accuracy(normal, x_te, y_te)
    x_test, y_test = torch.from_numpy(x_te), torch.from_numpy(y_te)
    assert faulty_accuracy(normal, AdSAF(p=0.08), x_test, y_test, draws=2, seed=1).tolist() == r.faulty_normal
    # the FTT arm: its returned model reproduces the stored accuracies, and it trained differently
    hardened = r.trained
    assert r.clean_ftt == hand_accuracy(hardened, x_te, y_te)
    again = faulty_accuracy(hardened, AdSAF(p=0.08), x_test, y_test, draws=2, seed=1)
    assert again.tolist() == r.faulty_ftt
    assert fingerprint_model(hardened) not in (before, fingerprint_model(normal))
    # deterministic
    r2 = run_ftt(net, AdSAF(p=0.08), data=(x_tr, y_tr, x_te, y_te), recipe=recipe, alpha=0.5, draws=2)
    assert {**r2.to_dict(), "seconds": 0} == {**r.to_dict(), "seconds": 0}
    assert fingerprint_model(r2.trained) == fingerprint_model(hardened)
    # the same model named by its source
    r3 = run_ftt("nets.py:make", AdSAF(p=0.08), data=(x_tr, y_tr, x_te, y_te), recipe=recipe, alpha=0.5, draws=2)
    assert r3.model == "nets.py:make" and {**r3.to_dict(), "seconds": 0, "model": "Net"} == {**r.to_dict(), "seconds": 0}


def test_run_ftt_needs_data_that_fits_a_user_model(folder):
    x, y = arrays(20, 3)
    with pytest.raises(FaultError, match="not a bundled reference model, so it has no data of its own"):
        run_ftt("nets.py:make", AdSAF(p=0.08))
    with pytest.raises(FaultError, match="the training data: labels has 19 entries for 20 inputs"):
        run_ftt(make(), AdSAF(p=0.08), data=(x, y[:-1], x, y))
    with pytest.raises(FaultError, match=r"the test data: the model failed on the first input batch of shape \(2, 2, 8, 8\)"):
        run_ftt(make(), AdSAF(p=0.08), data={"x_train": x, "y_train": y, "x_test": np.repeat(x, 2, axis=1), "y_test": y})
    with pytest.raises(FaultError, match="the data dict has no y_test"):
        run_ftt(make(), AdSAF(p=0.08), data={"x_train": x, "y_train": y, "x_test": x})


def test_harden_ftt_on_a_factory_records_its_sources_and_refuses_another_model(folder, capsys):
    import shutil

    shutil.copy("trained.pt", "w.pt")
    argv = ["harden", "ftt", "--model", "nets.py:make", "--checkpoint", "w.pt", "--data", "train.npz", "--test-data", "test.npz",
            "--epochs", "1", "--draws", "2", "--out", "run"]
    assert main(argv) == 0
    m = json.loads(Path("run/manifest.json").read_text())
    assert m["status"] == "complete"
    assert {k: m["spec"][k] for k in ("model", "checkpoint", "data", "test_data", "epochs")} == {
        "model": "nets.py:make", "checkpoint": "w.pt", "data": "train.npz", "test_data": "test.npz", "epochs": 1}
    start = make()
    start.load_state_dict(torch.load("w.pt", weights_only=True))
    (x_tr, y_tr), (x_te, y_te) = arrays(200, 1), arrays(60, 2)
    assert m["fingerprint"] == {"model": fingerprint_model(start),
                                "inputs": fingerprint_tensors(*(torch.from_numpy(a) for a in (x_tr, y_tr, x_te, y_te)))}
    results = pq.read_table("run/results.parquet").to_pydict()
    draws = pq.read_table("run/draws.parquet").to_pydict()
    # model.pt is the hardened model's state dict
    hardened = make()
    hardened.load_state_dict(torch.load("run/model.pt", weights_only=True))
    assert results["clean"][1] == hand_accuracy(hardened, x_te, y_te)
    assert draws["faulty_ftt"] == faulty_accuracy(hardened, AdSAF(p=0.08), torch.from_numpy(x_te), torch.from_numpy(y_te),
                                                  draws=2, seed=1).tolist()
    # the normal arm: Recipe() with --epochs 1, from the checkpoint
    train(start, Dataset("d", *(torch.from_numpy(a) for a in (x_tr, y_tr, x_te, y_te)), 10), Recipe(epochs=1))
    assert results["clean"][0] == hand_accuracy(start, x_te, y_te)
    capsys.readouterr()
    stored = files(Path("run"))
    torch.save(make().state_dict(), "w.pt")  # same spec, other weights
    assert main(argv) == 2
    assert "was run on a different model" in capsys.readouterr().err
    shutil.copy("trained.pt", "w.pt")
    np.savez("test.npz", x=arrays(60, 5)[0], y=arrays(60, 5)[1])  # same spec, other test data
    assert main(argv) == 2
    assert "was run on different inputs" in capsys.readouterr().err
    assert files(Path("run")) == stored


def test_harden_fat_on_a_factory(folder, capsys):
    assert main(["harden", "fat", "--model", "nets.py:make", "--checkpoint", "trained.pt", "--data", "train.npz",
                 "--test-data", "test.npz", "--epochs", "1", "--k", "1", "--max-trials", "200", "--out", "fat"]) == 0
    m = json.loads(Path("fat/manifest.json").read_text())
    assert m["spec"]["data"] == "train.npz" and m["fingerprint"]["model"] == fingerprint_model(_trained())
    trained = make()
    trained.load_state_dict(torch.load("fat/model.pt", weights_only=True))
    assert m["results"]["clean_after"] == pytest.approx(hand_accuracy(trained, *arrays(60, 2)))
    assert m["results"]["clean_before"] == pytest.approx(hand_accuracy(_trained(), *arrays(60, 2)))
    capsys.readouterr()


def test_sites_of_a_factory_with_kwargs(folder, capsys):
    assert main(["sites", "nets.py:make", "--kwargs", '{"width": 8}', "--input-shape", "1,8,8"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "(8, 1, 3, 3)" in rows["conv.weight"] and "(10, 128)" in rows["fc.weight"] and "(8, 8, 8)" in rows["conv:out"]
    assert main(["sites", "nets.py:make", "--kwargs", '{"width": 8}', "--checkpoint", "width8.pt"]) == 0
    assert "(8, 1, 3, 3)" in capsys.readouterr().out


def test_demo_on_a_factory_and_data_file(folder, capsys):
    assert main(["demo", "--model", "nets.py:make", "--checkpoint", "trained.pt", "--data", "test.npz", "--random-flips", "10"]) == 0
    out = capsys.readouterr().out
    assert f"{'fault':45s} {'accuracy':>9s} {'top-1 changed':>14s} {'max |logit change|':>19s}" in out
    golden = next(line for line in out.splitlines() if line.startswith("none (golden run)"))
    assert f"{hand_accuracy(_trained(), *arrays(60, 2)):9.2%}" in golden
    for label in ("conv.weight[0,0,1,1] bit 30 flip", "conv.weight[0,0,1,1] bit 22 flip", "fc.bias[3] bit 30 stuck-at-1",
                  "fc:out[5] bit 30 flip, every image", "10 random weight bit flips"):
        assert label in out
    assert "restored: True" in out


HARDEN = ["harden", "ftt", "--epochs", "1", "--draws", "1"]
USER = ["--model", "nets.py:make", "--data", "train.npz", "--test-data", "test.npz"]


@pytest.mark.parametrize("argv, message", [
    ([*HARDEN, "--model", "nope.py:make", "--data", "train.npz", "--test-data", "test.npz"], "source file nope.py does not exist"),
    ([*HARDEN, "--model", "broken.py:make", "--data", "train.npz", "--test-data", "test.npz"], "RuntimeError: broken on purpose"),
    ([*HARDEN, "--model", "nets.py:mkae", "--data", "train.npz", "--test-data", "test.npz"], "did you mean 'make'"),
    ([*HARDEN, *USER, "--kwargs", "[8]"], "is not a JSON object"),
    ([*HARDEN, *USER, "--kwargs", "{width: 8}"], "is not valid JSON"),
    ([*HARDEN, *USER, "--kwargs", '{"depth": 3}'], "model factory 'nets.py:make' raised TypeError"),
    ([*HARDEN, *USER, "--checkpoint", "width8.pt"], "does not fit the Net model"),
    ([*HARDEN, "--model", "nets.py:make", "--data", "train.npz"], "no data of its own: give --test-data"),
    ([*HARDEN, "--model", "nets.py:make", "--data", "missing.npz", "--test-data", "test.npz"],
     "--data missing.npz: data file missing.npz does not exist"),
    ([*HARDEN, "--model", "nets.py:make", "--data", "train.npz", "--test-data", "two_channels.npz"],
     "--test-data two_channels.npz: the model failed on the first input batch of shape (2, 2, 8, 8)"),
    ([*HARDEN, "--model", "nets.py:make", "--data", "short_labels.npz", "--test-data", "test.npz"],
     "--data short_labels.npz: labels has 19 entries for 20 inputs"),
    ([*HARDEN, "--model", "nets.py:make", "--data", "label_12.npz", "--test-data", "test.npz"],
     "the labels go up to 12 but the model outputs 10 class scores"),
    (["harden", "fat", "--model", "nets.py:make", "--test-data", "test.npz"], "no data of its own: give --data"),
    (["harden", "fat", "--model", "nets.py:make", "--data", "two_channels.npz", "--test-data", "test.npz"],
     "failed on the first input batch of shape (2, 2, 8, 8)"),
    (["sites", "nets.py:make", "--kwargs", "8"], "is not a JSON object"),
    (["sites", "nets.py:make", "--input-shape", "2,8,8"], "failed on the first input batch of shape (2, 2, 8, 8)"),
    (["sites", "nets.py:make", "--input-shape", "1,eight,8"], "--input-shape must be comma-separated"),
    (["sites", "broken.py:make"], "RuntimeError: broken on purpose"),
    (["demo", "--model", "nets.py:make"], "no test data of its own: give --data"),
    (["demo", "--model", "nets.py:make", "--data", "short_labels.npz"], "labels has 19 entries for 20 inputs"),
    (["demo", "--model", "nets.py:make", "--data", "two_channels.npz"], "failed on the first input batch of shape (2, 2, 8, 8)"),
    (["demo", "--model", "nets.py:make", "--data", "nope.npz"], "--data nope.npz: data file nope.npz does not exist"),
])
def test_bad_sources_exit_2_before_anything_is_written(folder, capsys, argv, message):
    before = files(folder)
    harden = argv[0] == "harden"
    assert main([*argv, "--out", "run"] if harden else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("resil: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert files(folder) == before and not Path("run").exists()
