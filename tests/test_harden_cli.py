"""``resil harden ftt|fat|search``: run directories checked against independent recomputation."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import resil
import resil.models as rm
from resil.cli import main
from resil.training import faulty_accuracy
from resil.training.ftnas import AdSAF
from resil.training.search import load_found

torch.set_num_threads(1)
PNG = b"\x89PNG\r\n\x1a\n"


def _hand_accuracy(model, x, y, faults=None):
    """Top-1 accuracy by hand (non-finite outputs wrong), optionally inside resil.inject."""
    model.eval()
    with torch.no_grad():
        if faults is None:
            out = model(x)
        else:
            with resil.inject(model, faults):
                out = model(x)
    return float(((out.argmax(1) == y) & torch.isfinite(out).all(1)).float().mean())


def _manifest(d):
    return json.loads((d / "manifest.json").read_text())


def test_ftt_writes_a_run_whose_numbers_the_stored_model_reproduces(tmp_path, capsys):
    out = tmp_path / "ftt"
    assert main(["harden", "ftt", "--model", "dense-cnn", "--faults", "adsaf", "--epochs", "1", "--draws", "3", "--out", str(out)]) == 0
    m = _manifest(out)
    assert m["command"] == "ftt" and m["status"] == "complete" and m["spec"]["faults"] == ["AdSAF(p=0.08, saf1=0.163)"]
    assert (out / "report.png").read_bytes()[:8] == PNG
    results = pq.read_table(out / "results.parquet").to_pydict()
    draws = pq.read_table(out / "draws.parquet").to_pydict()
    assert results["arm"] == ["normal", "ftt"] and draws["draw"] == [0, 1, 2]
    ref = rm.info("dense-cnn")
    model = ref.restore(ref.build(), torch.load(out / "model.pt", weights_only=True)).eval()
    d = rm.dataset("digits")
    assert results["clean"][1] == pytest.approx(_hand_accuracy(model, d.x_test, d.y_test))
    again = faulty_accuracy(model, AdSAF(p=0.08), d.x_test, d.y_test, draws=3, seed=1)
    assert draws["faulty_ftt"] == pytest.approx(list(again))
    assert results["faulty_mean"] == pytest.approx([np.mean(draws["faulty_normal"]), np.mean(draws["faulty_ftt"])])
    assert m["results"]["faulty_gain"] == pytest.approx(np.mean(draws["faulty_ftt"]) - np.mean(draws["faulty_normal"]))
    capsys.readouterr()
    # the same spec may run again into its directory; another spec is refused and nothing changes
    before = (out / "manifest.json").read_text()
    assert main(["harden", "ftt", "--epochs", "2", "--draws", "3", "--out", str(out)]) == 2
    assert "holds another run" in capsys.readouterr().err
    assert (out / "manifest.json").read_text() == before
    # campaign commands name what the directory is instead of failing on its manifest
    assert main(["resume", str(out)]) == 2
    assert "holds a `resil harden ftt` run, not a campaign" in capsys.readouterr().err


def test_fat_stores_faults_that_give_the_stored_accuracy(tmp_path, capsys):
    out = tmp_path / "fat"
    assert main(["harden", "fat", "--epochs", "1", "--k", "1", "--out", str(out)]) == 0
    m = _manifest(out)
    assert (m["spec"]["neutralise"], m["spec"]["clean_loss"]) == ("auto", True)
    history = pq.read_table(out / "history.parquet").to_pydict()
    assert history["epoch"] == [0, 1] and history["found"][0] == 1 == m["results"]["faults"]
    faults = resil.FaultSet.from_dict(pq.read_table(out / "faults.parquet").to_pydict())
    model = rm.load("dense-cnn")
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    d = rm.dataset("digits")
    assert m["results"]["clean_after"] == pytest.approx(_hand_accuracy(model, d.x_test, d.y_test))
    assert m["results"]["faulty_after"] == pytest.approx(_hand_accuracy(model, d.x_test, d.y_test, faults))
    # the fault was critical for the given model: accuracy drop >= 10 points (the default theta)
    before = rm.load("dense-cnn")
    assert _hand_accuracy(before, d.x_test, d.y_test) - _hand_accuracy(before, d.x_test, d.y_test, faults) >= 0.10
    assert history["faulty_accuracy"][0] == pytest.approx(m["results"]["faulty_before"])
    assert (out / "report.png").read_bytes()[:8] == PNG
    capsys.readouterr()


def test_search_stores_candidates_comparison_and_the_found_model(tmp_path, capsys):
    out = tmp_path / "search"
    assert main(["harden", "search", "--faults", "mibb", "--candidates", "2", "--population", "2", "--epochs", "1",
                 "--final-epochs", "1", "--draws", "1", "--final-draws", "2", "--references", "structured-50",
                 "--out", str(out)]) == 0
    m = _manifest(out)
    assert m["spec"]["beta"] == 0.5 and m["results"]["arch_name"]  # FT-NAS's beta for MiBB
    cands = pq.read_table(out / "candidates.parquet").to_pydict()
    comp = pq.read_table(out / "comparison.parquet").to_pydict()
    assert len(cands["index"]) == 2 and comp["model"][1] == "structured-50" and comp["training"] == ["FTT alpha=0.5", "normal"]
    for clean, faulty, r in zip(cands["clean"], cands["faulty"], cands["reward"], strict=True):
        assert r == pytest.approx(0.5 * clean + 0.5 * faulty)
    arch, model = load_found(out / "model.pt")
    d = rm.dataset("digits")
    assert comp["clean"][0] == pytest.approx(_hand_accuracy(model, d.x_test, d.y_test))
    assert comp["clean"][1] == rm.info("structured-50").accuracy
    assert comp["params"][0] == sum(p.numel() for p in model.parameters())
    assert comp["faulty_mean"] == pytest.approx([np.mean(f) for f in comp["faulty"]])
    assert arch.describe() == m["results"]["arch_name"]
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["ftt", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["ftt", "--faults", "bitrot"], "unknown fault process 'bitrot'"),
    (["ftt", "--faults", "adsaf:lots"], "is not a number"),
    (["ftt", "--faults", "adsaf:1.5"], "AdSAF p must be a probability"),
    (["ftt", "--alpha", "2"], "--alpha must be in [0, 1]"),
    (["ftt", "--epochs", "0"], "--epochs must be >= 1"),
    (["fat", "--epochs", "2", "--search-epochs", "0,5"], "--search-epochs must lie in 0..1"),
    (["fat", "--tau", "-1"], "--tau must be in [0, 1]"),
    (["search", "--candidates", "0"], "--candidates must be >= 1"),
    (["search", "--references", "dense-cnn", "--reference-ftt", "int8"], "not in --references"),
    (["search", "--faults", "adsaf,mibb"], "give beta explicitly"),
])
def test_bad_arguments_exit_2_without_creating_the_directory(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(["harden", *argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_argparse_errors_exit_2(tmp_path, capsys):
    assert main(["harden", "ftt", "--draws", "many", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    assert main(["harden", "ftt"]) == 2  # --out is required
    assert "--out" in capsys.readouterr().err
