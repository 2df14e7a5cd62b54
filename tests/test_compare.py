"""resil.analysis.compare: the best-model logic on hand-made tables, a tiny real comparison whose
stored records are recounted (and re-simulated) independently, the report, resuming, bad input."""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

import resil  # noqa: E402
import resil.models as rm  # noqa: E402
from resil.analysis.compare import CompareSettings, compare, layer_order  # noqa: E402
from resil.campaign.metrics import verdicts  # noqa: E402
from resil.cli import main  # noqa: E402
from resil.errors import FaultError  # noqa: E402
from resil.report.comparison import comparison_summary, write_comparison  # noqa: E402

torch.set_num_threads(1)

TINY = CompareSettings(rates=(1e-4, 1e-2), scenarios=3, trials=12, inputs=40)
MODELS = ["structured-50", "int4", "snn"]


def wilson(k: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval, written out from the formula (Wilson 1927)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def rule_by_hand(x: np.ndarray, confidence: float = 0.95, single: bool = False) -> tuple[float, float]:
    """resil's interval rule from its definition: Wilson for all-or-nothing scenarios, else the t
    interval (scipy) widened to [(1 - u) m, (1 - u) m + u], u the Clopper-Pearson bound for 0 of n."""
    n, m = len(x), float(np.mean(x))
    if single or np.isin(x, [0, 1]).all():
        return wilson(m * n, n, stats.norm.ppf(0.5 + confidence / 2))
    u = stats.beta.ppf(1 - (1 - confidence) / 2, 1, n)
    low, high = stats.t.interval(confidence, n - 1, loc=m, scale=stats.sem(x)) if np.ptp(x) > 0 else (m, m)
    return max(0.0, min(low, (1 - u) * m)), min(1.0, max(high, (1 - u) * m + u))


def campaign(accuracy: list[float], rate: float = 1e-4, seed: int = 0, space: int = 100) -> tuple[dict, pd.DataFrame]:
    """A BER campaign's manifest and per-scenario rows with the given accuracies (100 inputs each)."""
    manifest = {"spec": {"seed": seed, "sampler": {"kind": "ber"}, "faults": {}, "sites": {}}, "space": space,
                "fingerprint": {"inputs": "x"}}
    correct = np.round(np.array(accuracy) * 100).astype(int)
    return manifest, pd.DataFrame({"scenario": np.arange(len(correct)), "rate": rate, "inputs": 100, "correct": correct,
                                   "critical": 100 - correct, "non_finite": 0, "n_faults": 5})


# --------------------------------------------------------------------------- verdicts


def test_separated_verdict_uses_the_unpaired_difference_interval_by_hand() -> None:
    a, b = [0.9, 0.92, 0.91] * 20, [0.5, 0.55, 0.6] * 20
    v = verdicts({"dense": campaign(a, space=10), "int8": campaign(b, space=20)}).iloc[0]
    la, ha = rule_by_hand(np.array(a), 0.975)
    lb, hb = rule_by_hand(np.array(b), 0.975)
    assert (v.best, v.runner_up, v.separated, v.paired) == ("dense", "int8", True, False)
    assert (v.difference_low, v.difference_high) == pytest.approx((la - hb, ha - lb))
    assert v.verdict == "dense more robust than int8 (95%)"


def test_campaigns_sharing_scenarios_are_paired() -> None:
    rng = np.random.default_rng(0)
    a = np.clip(rng.normal(0.9, 0.05, 200), 0, 1).round(2)
    b = np.clip(a - 0.02 + rng.normal(0, 0.005, 200), 0, 1).round(2)
    v = verdicts({"pruned": campaign(list(b)), "dense": campaign(list(a))}).iloc[0]
    low, high = rule_by_hand((a - b + 1) / 2)
    assert v.paired and v.best == "dense"
    assert (v.difference_low, v.difference_high) == pytest.approx((2 * low - 1, 2 * high - 1))
    unpaired = verdicts({"pruned": campaign(list(b), seed=1), "dense": campaign(list(a))}).iloc[0]
    assert not unpaired.paired and unpaired.difference_high - unpaired.difference_low > v.difference_high - v.difference_low


def test_no_difference_verdict_names_the_scenarios_that_would_resolve_it() -> None:
    a, b, c = [0.95, 0.96] * 20, [0.93, 0.94] * 20, [0.2, 0.3] * 20
    v = verdicts({"a": campaign(a), "b": campaign(b, seed=3), "c": campaign(c, seed=4)}).iloc[0]
    assert not v.separated and v.tied == ("a", "b") and v.needed > 40
    assert v.verdict == (f"no difference detected between a, b; about {v.needed} scenarios per rate would resolve a difference "
                         "of 2.0 points; a, b more robust than c (95%)")
    k = v.needed // 2 + 1  # with that many scenarios of the same spread the difference is resolved
    more = verdicts({"a": campaign([0.95, 0.96] * k), "b": campaign([0.93, 0.94] * k, seed=3)}).iloc[0]
    assert more.separated and more.verdict == "a more robust than b (95%)"


def test_lower_is_better_and_a_group_only_one_model_has() -> None:
    ma, ta = campaign([0.9] * 30, rate=1e-4)
    mb, tb = campaign([0.5] * 30, rate=1e-4)
    ta = pd.concat([ta, campaign([0.8] * 30, rate=1e-3)[1].assign(scenario=range(30, 60))], ignore_index=True)
    v = verdicts({"a": (ma, ta), "b": (mb, tb)}, "rate", "failure", higher_is_better=False).set_index("rate")
    assert v.loc[1e-4, "best"] == "a" and v.loc[1e-4, "verdict"] == "a more robust than b (95%)"
    assert v.loc[1e-3, "verdict"] == "a (only model)" and pd.isna(v.loc[1e-3, "runner_up"])
    with pytest.raises(FaultError, match="metric"):
        verdicts({"a": (ma, ta)}, "rate", "pvf")


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


@pytest.fixture(scope="module")
def page(tiny) -> Path:
    return write_comparison(tiny)


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
            assert (mine.loc[rate, "accuracy_low"], mine.loc[rate, "accuracy_high"]) == pytest.approx(rule_by_hand(share), abs=1e-9)
        net, d = rm.load(m), rm.dataset(m)
        with torch.no_grad():
            clean = (net(d.x_test[: TINY.inputs]).argmax(1) == d.y_test[: TINY.inputs]).float().mean().item()
        assert tiny.clean[m] == pytest.approx(clean, abs=1e-7)
    assert list(tiny.best.rate) == list(TINY.rates)


def test_report_embeds_every_figure(tiny, page: Path) -> None:
    report = tiny.root / "report"
    assert page == report / "index.html"
    page = page.read_text(encoding="utf-8")
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert pngs == ["ber_accuracy.png", "ber_failure.png", "layers_pvf.png"]
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted((report / p).read_bytes() for p in pngs)
    assert not re.search(r"(src|href)=\"(https?:|//)|<script|<link", page)  # self-contained
    for text in ["Most robust model per bit error rate", "Parameter vulnerability factor (PVF) per layer", *MODELS]:
        assert text in page
    conclusion = page[page.index("<h2>Conclusion</h2>"):page.index("<h2>Settings</h2>")]  # the verdicts come first
    assert page.index("<h2>Conclusion</h2>") < page.index("<h2>Settings</h2>") < page.index("<figure>")
    for r in tiny.best.itertuples():
        assert html.escape(r.verdict) in conclusion


def test_rerun_skips_finished_work_and_other_settings_are_refused(tiny) -> None:
    root = tiny.root
    stamps = {p: p.stat().st_mtime_ns for p in root.glob("*/parts/*.parquet")}
    assert len({p.parent.parent for p in stamps}) == 2 * len(MODELS)
    again = compare(MODELS, root, settings=TINY, progress=False)
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


def test_summary_lists_every_verdict_and_the_report(tiny, page: Path) -> None:
    text = comparison_summary(tiny, page, seconds=12.4)
    for r in tiny.best.itertuples():
        assert r.verdict in text
    for r in tiny.layer_best.itertuples():
        assert f"{r.layer}: {r.verdict}" in text
    assert text.endswith(f"report: {page}\nrun time: 12 s")
    clean = text.splitlines()[3]  # the fault-free row: every model's clean accuracy with three significant digits
    assert clean.split(None, 2)[2].strip() == ", ".join(f"{m} {100 * tiny.clean[m]:.3g}%" for m in MODELS)
