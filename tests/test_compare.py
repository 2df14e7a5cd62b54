"""resil.analysis.compare: the best-model logic on hand-made tables, a tiny real comparison whose
stored records are recounted (and re-simulated) independently, the report, resuming, bad input."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

import resil  # noqa: E402
import resil.models as rm  # noqa: E402
from resil.analysis.compare import CompareSettings, best_per_group, compare, layer_order  # noqa: E402
from resil.cli import main  # noqa: E402
from resil.errors import FaultError  # noqa: E402

torch.set_num_threads(1)

TINY = CompareSettings(rates=(1e-4, 1e-2), scenarios=3, trials=12, inputs=40)
MODELS = ["structured-50", "int4", "snn"]


def wilson(k: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval, written out from the formula (Wilson 1927)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# --------------------------------------------------------------------------- best model per group


def test_best_per_rate_on_a_hand_made_table_with_a_tie() -> None:
    rows = [  # rate, model, accuracy, low, high
        (1e-5, "dense", 0.97, 0.93, 0.99), (1e-5, "int8", 0.96, 0.92, 0.99), (1e-5, "snn", 0.95, 0.91, 0.98),  # all overlap
        (1e-3, "dense", 0.10, 0.05, 0.20), (1e-3, "int8", 0.90, 0.85, 0.94), (1e-3, "snn", 0.60, 0.50, 0.70),  # int8 separated
        (1e-2, "dense", 0.00, 0.00, 0.05), (1e-2, "int8", 0.40, 0.30, 0.50), (1e-2, "snn", 0.35, 0.25, 0.45),  # int8 ~ snn
    ]
    t = pd.DataFrame(rows, columns=["rate", "model", "accuracy", "accuracy_low", "accuracy_high"])
    b = best_per_group(t, "rate", "accuracy").set_index("rate")
    assert b.loc[1e-5, "best"] == "dense" and b.loc[1e-5, "runner_up"] == "int8"
    assert not b.loc[1e-5, "separated"] and b.loc[1e-5, "verdict"] == "tie: dense, int8, snn"
    assert b.loc[1e-3, "best"] == "int8" and b.loc[1e-3, "runner_up"] == "snn"
    assert b.loc[1e-3, "separated"] and b.loc[1e-3, "verdict"] == "int8" and b.loc[1e-3, "tied"] == ("int8",)
    assert b.loc[1e-2, "best"] == "int8" and b.loc[1e-2, "verdict"] == "tie: int8, snn"  # dense's interval ends at 5% < 30%
    assert list(b.index) == [1e-5, 1e-3, 1e-2]


def test_best_per_group_lower_is_better_equal_values_and_one_model() -> None:
    t = pd.DataFrame({"layer": ["fc1", "fc1", "fc1", "fc2"], "model": ["a", "b", "c", "a"], "pvf": [0.02, 0.001, 0.001, 0.3],
                      "low": [0.015, 0.0, 0.0, 0.2], "high": [0.027, 0.004, 0.004, 0.4]})
    b = best_per_group(t, "layer", "pvf", higher_is_better=False).set_index("layer")
    assert b.loc["fc1", "best"] == "b" and b.loc["fc1", "runner_up"] == "c"  # equal values: the first row wins, as a tie
    assert b.loc["fc1", "verdict"] == "tie: b, c" and not b.loc["fc1", "separated"]
    assert pd.isna(b.loc["fc2", "runner_up"]) and not b.loc["fc2", "separated"] and b.loc["fc2", "verdict"] == "a (only model)"
    with pytest.raises(FaultError, match="lacks"):
        best_per_group(t, "rate", "pvf")


def test_layer_order_keeps_every_model_order() -> None:
    assert layer_order([["conv1", "fc1", "fc2"], ["conv1", "conv2", "fc1", "fc2"]]) == ["conv1", "conv2", "fc1", "fc2"]
    assert layer_order([["a", "c"], ["b", "c"]]) == ["b", "a", "c"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("models, message", [
    (["dense-cnn", "resnet-9000"], r"unknown model 'resnet-9000'; known: dense-cnn, snn, pruned-50"),
    ([], "the model list is empty"),
    ("dense-cnn", "a list of model names"),
    (["int8", "int8"], "listed twice: int8"),
])
def test_bad_models_fail_before_any_work(tmp_path: Path, models: object, message: str) -> None:
    out = tmp_path / "cmp"
    with pytest.raises(FaultError, match=message):
        compare(models, out, settings=TINY)  # type: ignore[arg-type]
    assert not out.exists()


@pytest.mark.parametrize("rates, message", [
    ((), "non-empty list"), ((0.0, 1e-3), r"in \(0, 1\); got 0.0"), ((1e-3, 1.5), "got 1.5"), ((float("nan"),), "got nan"),
    (("1e-3",), "got '1e-3'"), ((1e-3, 1e-4), "strictly increasing"), ((1e-3, 1e-3), "strictly increasing"),
])
def test_bad_rates_are_named(rates: tuple, message: str) -> None:
    with pytest.raises(FaultError, match=message):
        CompareSettings(rates=rates)


def test_bad_counts_and_too_many_inputs(tmp_path: Path) -> None:
    for field in ("scenarios", "trials"):
        with pytest.raises(FaultError, match=f"{field} must be an integer >= 1"):
            CompareSettings(**{field: 0})
    with pytest.raises(FaultError, match="inputs must be an integer >= 0"):
        CompareSettings(inputs=-1)
    out = tmp_path / "cmp"
    with pytest.raises(FaultError, match="5000 inputs requested but the data has 359"):
        compare(["int8"], out, settings=CompareSettings(inputs=5000))
    assert not out.exists()


def test_cli_reports_bad_input_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "dense", "--out", str(tmp_path / "a")]) == 2
    assert "unknown model 'dense'; known: dense-cnn" in capsys.readouterr().err
    assert main(["compare", "int8", "--out", str(tmp_path / "b"), "--rates", "1e-4,lots"]) == 2
    assert "--rates: 'lots' is not a number" in capsys.readouterr().err
    assert main(["compare", "int8", "--out", str(tmp_path / "c"), "--rates", "1e-4,2"]) == 2
    assert "every bit error rate must be a number in (0, 1); got 2.0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- a tiny real comparison


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("compare")
    return compare(MODELS, out, settings=TINY, progress=False)


def test_layers_are_aligned_by_name_with_equal_trials(tiny) -> None:
    layers = tiny.layers
    assert set(layers.model) == set(MODELS)
    assert sorted(layers[layers.model == "structured-50"].layer) == ["conv1", "conv2", "fc1", "fc2"]
    assert sorted(layers[layers.model == "snn"].layer) == ["conv1", "fc1", "fc2"]  # the SNN has no conv2
    assert (layers.trials == TINY.trials).all()
    # populations: weights x bits of the stored encoding (float32 bits; int4 codes have 4 bits)
    expect = {("structured-50", "conv1"): 8 * 1 * 3 * 3 * 32, ("int4", "conv1"): 16 * 9 * 4, ("snn", "fc2"): 64 * 10 * 32}
    for (m, layer), pop in expect.items():
        assert int(layers[(layers.model == m) & (layers.layer == layer)].population.iloc[0]) == pop


def test_pvf_per_layer_equals_an_independent_recount_of_the_stored_records(tiny) -> None:
    for m in MODELS:
        records = pvf_records(tiny, m)
        mine = tiny.layers[tiny.layers.model == m].set_index("layer")
        for layer, r in records.groupby("layer"):
            n, k = len(r), float(r.incorrect.sum())
            low, high = wilson(k, n)
            assert n == TINY.trials
            assert mine.loc[layer, "pvf"] == pytest.approx(k / n, abs=1e-12)
            assert (mine.loc[layer, "low"], mine.loc[layer, "high"]) == pytest.approx((low, high), abs=1e-9)
            assert r.bit.between(0, 3).all() if m == "int4" else r.bit.between(0, 31).all()


def pvf_records(tiny, model: str) -> pd.DataFrame:
    """The PVF campaign's rows: one single bit flip per row, its share of incorrect inputs."""
    t = pd.read_parquet(tiny.root / f"{model}-pvf" / "parts")
    return t.assign(incorrect=(t.critical + t.non_finite) / t.inputs, element=[int(i[0]) for i in t.fault_indices],
                    trial=t.scenario)


@pytest.mark.parametrize("model", MODELS)
def test_stored_records_match_a_plain_full_forward(tiny, model: str) -> None:
    """Re-inject a few recorded faults with a plain full forward pass and count the incorrect inputs."""
    records = pvf_records(tiny, model)
    net = rm.load(model)
    x = rm.dataset(model).x_test[: TINY.inputs]
    sites = resil.sites(net, x[:2])
    with torch.no_grad():
        golden = net(x).argmax(1)
        chosen = pd.concat([records[records.incorrect > 0].head(4), records.groupby("layer").head(2)]).drop_duplicates(["layer", "trial"])
        for r in chosen.itertuples():
            with resil.inject(net, resil.Fault(r.site, int(r.element), bit=int(r.bit)), sites=sites):
                out = net(x)
            wrong = (out.argmax(1) != golden) | ~torch.isfinite(out).all(1)
            assert r.incorrect == pytest.approx(int(wrong.sum()) / len(wrong), abs=1e-12), (model, r.site, r.element, r.bit)


def test_ber_curves_and_clean_accuracy_recount(tiny) -> None:
    for m in MODELS:
        parts = pd.read_parquet(tiny.root / f"{m}-ber" / "parts")
        mine = tiny.rates[tiny.rates.model == m].set_index("rate")
        assert sorted(mine.index) == list(TINY.rates)
        for rate, r in parts.groupby("rate"):
            share = (r.correct / r.inputs).to_numpy()
            assert len(share) == TINY.scenarios
            assert mine.loc[rate, "accuracy"] == pytest.approx(share.mean(), abs=1e-12)
            assert (mine.loc[rate, "accuracy_low"], mine.loc[rate, "accuracy_high"]) == pytest.approx(wilson(share.sum(), len(share)), abs=1e-9)
        net, d = rm.load(m), rm.dataset(m)
        with torch.no_grad():
            clean = (net(d.x_test[: TINY.inputs]).argmax(1) == d.y_test[: TINY.inputs]).float().mean().item()
        assert tiny.clean[m] == pytest.approx(clean, abs=1e-7)
    assert list(tiny.best.rate) == list(TINY.rates)


def test_report_embeds_every_figure(tiny) -> None:
    report = tiny.root / "report"
    assert tiny.report == report / "index.html"
    page = tiny.report.read_text(encoding="utf-8")
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert pngs == ["ber_accuracy.png", "ber_failure.png", "layers_pvf.png"]
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted((report / p).read_bytes() for p in pngs)
    assert not re.search(r"(src|href)=\"(https?:|//)|<script|<link", page)  # self-contained
    for text in ["Most robust model per bit error rate", "Parameter vulnerability factor (PVF) per layer", *MODELS]:
        assert text in page


def test_rerun_skips_finished_work_and_other_settings_are_refused(tiny) -> None:
    root = tiny.root
    stamps = {p: p.stat().st_mtime_ns for p in root.glob("*/parts/*.parquet")}
    assert len({p.parent.parent for p in stamps}) == 2 * len(MODELS)
    again = compare(MODELS, root, settings=TINY, progress=False, report=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    pd.testing.assert_frame_equal(again.layers, tiny.layers)
    pd.testing.assert_frame_equal(again.rates, tiny.rates)
    with pytest.raises(FaultError, match="holds another campaign"):
        compare(MODELS, root, settings=CompareSettings(rates=(1e-4,), scenarios=3, trials=12, inputs=40), progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_resume_and_report_commands_work_on_the_comparison(tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resume", str(tiny.root)]) == 0
    assert main(["report", str(tiny.root), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.html").exists() and (tmp_path / "rep" / "accuracy_vs_rate.png").exists()


def test_cli_compare_prints_the_verdicts_and_run_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["compare", "int4", "structured-50", "--out", str(out), "--rates", "1e-3,1e-1", "--scenarios", "2",
                 "--trials", "4", "--inputs", "20"]) == 0
    text = capsys.readouterr().out
    assert "most robust model per bit error rate" in text and "PVF per layer" in text and re.search(r"run time: \d+ s", text)
    assert (out / "report" / "index.html").exists()
    manifest = json.loads((out / "int4-ber" / "manifest.json").read_text())
    assert manifest["spec"]["sampler"]["rates"] == [1e-3, 1e-1] and manifest["scenarios"] == 4
    assert np.isclose(json.loads((out / "int4-pvf" / "manifest.json").read_text())["spec"]["sampler"]["trials"], 4)
