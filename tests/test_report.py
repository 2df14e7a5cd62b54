"""resil.report on synthetic campaign directories with known counts."""

from __future__ import annotations

import math
import re
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
from scipy import stats

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")
pytest.importorskip("matplotlib")

from resil.campaign.store import Store  # noqa: E402
from resil.errors import FaultError  # noqa: E402
from resil.report import (  # noqa: E402
    Campaign,
    by_group,
    load_campaign,
    plot_bit_heatmap,
    plot_bits,
    plot_layers,
    plot_rate,
    rank_campaigns,
    summary,
    write_report,
)

INPUTS = 20
LAYERS = {"conv1": "weight", "conv2": "weight", "fc": "activation"}


def bit_risk(bit: int) -> float:
    """A float32-like vulnerability profile: exponent MSB fatal, other exponent bits risky."""
    return 0.9 if bit == 30 else 0.2 if 23 <= bit <= 29 else 0.05 if bit == 31 else 0.002


def rows_per_bit(seed: int, scale: float, layers: dict[str, str] = LAYERS) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for layer, kind in layers.items():
        for bit in range(32):
            for _ in range(3):
                rows.append(outcome(rng, min(1.0, bit_risk(bit) * scale * (1.5 if layer == "fc" else 1.0)),
                                    layer=layer, kind=kind, site=f"{layer}.weight", bit=bit, n_faults=1, rate=math.nan))
    return rows


def rows_ber(seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for rate in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2):
        for _ in range(10):
            layer = str(rng.choice(list(LAYERS)))
            rows.append(outcome(rng, min(1.0, 3000 * rate), layer=layer, kind=LAYERS[layer], site=f"{layer}.weight", bit=-1,
                                n_faults=int(rng.integers(1, 5)), rate=rate, stratum=f"p={rate:.0e}"))
    return rows


def outcome(rng: np.random.Generator, p: float, **columns: object) -> dict:
    failures = int(rng.binomial(INPUTS, p))
    non_finite = int(rng.binomial(failures, 0.3))
    masked = int(rng.integers(0, INPUTS - failures + 1))
    correct = int(rng.binomial(INPUTS - failures, 0.9) + rng.binomial(failures - non_finite, 0.1))
    return {"stratum": str(columns.get("layer")), **columns, "weight": 1.0, "inputs": INPUTS, "masked": masked,
            "tolerable": INPUTS - failures - masked, "critical": failures - non_finite, "non_finite": non_finite, "correct": correct}


def write_campaign(root: Path, name: str, rows: list[dict], sampler: str = "uniform") -> Path:
    """A campaign directory (written by resil's store) whose two parts are written last shard first,
    each holding its scenarios in reverse order."""
    rows = [{"scenario": i, **r} for i, r in enumerate(rows)]
    manifest = {"version": 1, "name": name, "model": name.split("-")[0] + "-cnn", "spec": {}, "spec_hash": "abc123",
                "golden_accuracy": 0.9, "inputs": INPUTS, "scenarios": len(rows), "shard_size": len(rows) // 2 + 1, "sampler": sampler}
    store = Store(root)
    store.create(manifest)
    frame = pd.DataFrame(rows).astype({"scenario": "int64", "bit": "int64", "n_faults": "int64", "rate": "float64"})
    frame = frame.assign(fault_sites=[[s] for s in frame.site], fault_indices=[[0]] * len(frame), fault_masks=[[1]] * len(frame),
                         fault_inputs=[[-1]] * len(frame))
    for shard in (1, 0):
        part = frame.iloc[shard * manifest["shard_size"]:(shard + 1) * manifest["shard_size"]][::-1]
        store.write(shard, {c: part[c].tolist() for c in part.columns})
    return root


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("campaigns")
    return {
        "dense-cnn": write_campaign(base / "dense", "dense-cnn", rows_per_bit(0, 1.0)),
        "pruned-cnn": write_campaign(base / "pruned", "pruned-cnn", rows_per_bit(1, 0.6)),
        "dense-ber": write_campaign(base / "ber", "dense-ber", rows_ber(2), sampler="ber"),
    }


def wilson(k: float, n: float, z: float = NormalDist().inv_cdf(0.975)) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_load_campaign_concatenates_parts_in_scenario_order(dirs: dict[str, Path]) -> None:
    c = load_campaign(dirs["dense-cnn"])
    expected = rows_per_bit(0, 1.0)
    assert c.name == "dense-cnn" and c.manifest["sampler"] == "uniform"
    assert c.table["scenario"].tolist() == list(range(len(expected)))
    assert c.table["critical"].tolist() == [r["critical"] for r in expected]
    assert c.table["layer"].tolist() == [r["layer"] for r in expected]


@pytest.mark.parametrize("by", ["layer", "bit", "kind", "rate", ["layer", "bit"]])
def test_by_group_matches_hand_computed_proportions(dirs: dict[str, Path], by: str | list[str]) -> None:
    name = "dense-ber" if by == "rate" else "dense-cnn"
    c = load_campaign(dirs[name])
    rows = rows_ber(2) if by == "rate" else rows_per_bit(0, 1.0)
    keys = [by] if isinstance(by, str) else by
    sums: dict[tuple, list] = {}
    for r in rows:
        s = sums.setdefault(tuple(r[k] for k in keys), [0, 0, 0, 0, [], [], True])
        s[0] += 1
        s[1] += r["inputs"]
        s[2] += r["critical"] + r["non_finite"]
        s[3] += r["correct"]
        s[4].append((r["critical"] + r["non_finite"]) / r["inputs"])
        s[5].append(r["correct"] / r["inputs"])
        s[6] &= r["n_faults"] == 1
    g = by_group(c, by)
    assert len(g) == len(sums)
    for row in g.itertuples():
        scenarios, n, failures, correct, fail_fractions, accuracies, single = sums[tuple(getattr(row, k) for k in keys)]
        assert (row.scenarios, row.inputs, row.failures, row.correct) == (scenarios, n, failures, correct)
        assert row.failure == pytest.approx(failures / n) and row.accuracy == pytest.approx(correct / n)
        assert row.failure_low <= row.failure <= row.failure_high and row.accuracy_low <= row.accuracy <= row.accuracy_high
        # intervals count scenarios: Wilson over scenarios for single faults (successes = mean fraction x scenarios),
        # else t over scenarios widened to what their number cannot rule out
        for value, fractions, low, high, method in ((row.failure, fail_fractions, row.failure_low, row.failure_high, row.failure_method),
                                                    (row.accuracy, accuracies, row.accuracy_low, row.accuracy_high, row.accuracy_method)):
            x = np.array(fractions)
            if single or np.isin(x, [0, 1]).all():
                assert method == "wilson" and (low, high) == pytest.approx(wilson(value * scenarios, scenarios), abs=1e-4)
            else:
                assert method == "t"
                u = stats.beta.ppf(0.975, 1, scenarios)
                t_low, t_high = stats.t.interval(0.95, scenarios - 1, loc=x.mean(), scale=stats.sem(x))
                expected = max(0, min(t_low, (1 - u) * x.mean())), min(1, max(t_high, (1 - u) * x.mean() + u))
                assert (low, high) == pytest.approx(expected, abs=1e-9)


def test_by_group_orders_groups(dirs: dict[str, Path]) -> None:
    c = load_campaign(dirs["dense-cnn"])
    assert by_group(c, "layer")["layer"].tolist() == ["conv1", "conv2", "fc"]
    assert by_group(c, "bit")["bit"].tolist() == list(range(32))
    assert by_group(c, ["layer", "bit"])[["layer", "bit"]].values.tolist()[31:33] == [["conv1", 31], ["conv2", 0]]
    assert by_group(c, "rate").empty  # no bit error rates in a uniform campaign
    assert len(by_group(c, [])) == 1
    with pytest.raises(FaultError, match="cannot group 'dense-cnn' by 'critical'"):
        by_group(c, "critical")


def test_by_group_weighted_estimate() -> None:
    w = np.array([0.5, 2.0, 1.0, 4.0])
    t = pd.DataFrame({"layer": ["a", "a", "b", "b"], "inputs": 10, "masked": 0, "tolerable": [6, 9, 10, 2],
                      "critical": [3, 1, 0, 8], "non_finite": [1, 0, 0, 0], "correct": [5, 8, 9, 2], "weight": w})
    g = by_group(Campaign("is", {"sampler": "importance"}, t), "layer")
    assert g["failure"].tolist() == pytest.approx([(0.5 * 4 + 2.0 * 1) / (0.5 * 10 + 2.0 * 10), (4.0 * 8) / (1.0 * 10 + 4.0 * 10)])
    assert g["accuracy"].tolist() == pytest.approx([(0.5 * 5 + 2.0 * 8) / 25, (1.0 * 9 + 4.0 * 2) / 50])
    assert (g["failure_low"] < g["failure"]).all() and (g["failure"] < g["failure_high"]).all()
    n_eff = 2.5**2 / (0.25 + 4.0)  # Kish's effective number of scenarios: (sum w)^2 / sum w^2
    assert (g.loc[0, "failure_low"], g.loc[0, "failure_high"]) == pytest.approx(wilson(g.loc[0, "failure"] * n_eff, n_eff), abs=1e-4)


def test_summary_and_ranking(dirs: dict[str, Path]) -> None:
    cs = [load_campaign(dirs[n]) for n in ("dense-cnn", "pruned-cnn")]
    s = summary(cs)
    assert s["campaign"].tolist() == ["dense-cnn", "pruned-cnn"] and s["scenarios"].tolist() == [288, 288]
    r = rank_campaigns(cs)
    assert r["campaign"].tolist() == ["pruned-cnn", "dense-cnn"] and r["rank"].tolist() == [1, 2]
    by_layer = rank_campaigns(cs, "layer")
    assert by_layer["layer"].tolist() == ["conv1", "conv1", "conv2", "conv2", "fc", "fc"]
    assert rank_campaigns(cs, "rate").empty
    assert summary([cs[0], cs[0]])["campaign"].tolist() == ["dense-cnn (uniform) #1", "dense-cnn (uniform) #2"]


def test_figures_return_labelled_axes(dirs: dict[str, Path]) -> None:
    cs = [load_campaign(dirs[n]) for n in ("dense-cnn", "pruned-cnn", "dense-ber")]
    _fig, ax = plot_rate(cs)
    assert ax.get_xscale() == "log" and ax.get_xlabel() and ax.get_title()
    assert next(t.get_text() for t in ax.get_legend().get_texts()) == "dense-ber"
    _fig, ax = plot_layers(cs)  # the BER campaign is left out: its scenarios hold many faults
    assert len(ax.patches) == 6 and [t.get_text() for t in ax.get_yticklabels()] == ["conv1", "conv2", "fc"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["dense-cnn", "pruned-cnn"]
    _fig, ax = plot_bits(cs[:2])
    assert len(ax.lines) == 2 and ax.get_yscale() == "symlog"
    _fig, ax = plot_bit_heatmap(cs[0])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["conv1", "conv2", "fc"] and len(ax.texts) == 96
    with pytest.raises(FaultError, match="bit error rates"):
        plot_rate(cs[:2])
    with pytest.raises(FaultError, match="single-bit"):
        plot_bit_heatmap(cs[2])
    with pytest.raises(FaultError, match="plot_rate"):
        plot_layers(cs[2])


def test_write_report(dirs: dict[str, Path], tmp_path: Path) -> None:
    path = write_report([dirs["dense-cnn"], dirs["pruned-cnn"], dirs["dense-ber"]], tmp_path / "out")
    assert path == tmp_path / "out" / "report.html"
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    assert pngs == sorted(["accuracy_vs_rate.png", "failure_vs_rate.png", "failure_by_layer.png", "failure_by_bit.png",
                           "heatmap_campaigns.png", "heatmap_dense-cnn.png", "heatmap_pruned-cnn.png"])
    for p in path.parent.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = path.read_text(encoding="utf-8")
    for name in ("dense-cnn", "pruned-cnn", "dense-ber", "Which variant is most robust"):
        assert name in page
    assert page.count('<img src="data:image/png;base64,') == len(pngs)
    assert page.index("Which variant is most robust") < page.index("<h2>Summary</h2>")  # the conclusion first
    ranking = page[page.index("Which variant is most robust"):page.index("<h2>Summary</h2>")]
    assert "pruned-cnn" in ranking and "dense-ber" not in ranking  # ranked only against the same sampler
    assert re.search(r"(dense|pruned)-cnn more robust than (dense|pruned)-cnn \(95%\)|no difference detected between", ranking)
    outside_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "http" not in outside_images and "<script" not in outside_images and "<link" not in outside_images


def test_write_report_skips_figures_without_data(dirs: dict[str, Path], tmp_path: Path) -> None:
    path = write_report([dirs["dense-cnn"]], tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["failure_by_bit.png", "failure_by_layer.png", "heatmap_dense-cnn.png"]
    assert "Which variant" not in path.read_text(encoding="utf-8")


def test_missing_manifest_or_parts_names_the_directory(tmp_path: Path) -> None:
    with pytest.raises(FaultError, match=re.escape(str(tmp_path / "nowhere")) + ".*manifest.json"):
        load_campaign(tmp_path / "nowhere")
    root = write_campaign(tmp_path / "empty", "empty", rows_per_bit(0, 1.0))
    for p in (root / "parts").iterdir():
        p.unlink()
    with pytest.raises(FaultError, match=re.escape(str(root)) + ".*no parts"):
        load_campaign(root)
    with pytest.raises(FaultError, match=re.escape(str(tmp_path / "nowhere"))):
        write_report([root.parent / "nowhere"], tmp_path / "out")
