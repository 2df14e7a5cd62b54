"""Adaptive campaigns ([sampler] stop_margin): rounds until each stratum's interval is narrow
enough, resumable in the middle with the same result, bad input refused before any work, and
iterative SFI against Leveugle's n."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import resil.campaign as rc
from resil.campaign.store import Store
from resil.errors import FaultError
from resil.statistics import leveugle_sample_size, sequence_interval

torch.set_num_threads(1)


def ber_spec(**sampler) -> rc.CampaignSpec:
    return rc.CampaignSpec(name="adaptive", seed=1, model=rc.ModelSpec(("dense-cnn",)), data=rc.DataSpec(inputs=40),
                           sites=rc.SiteSpec(kinds=("weight",)),
                           sampler=rc.SamplerSpec(kind="ber", rates=(1e-4, 1e-2), **{"stop_margin": 0.08, "max_scenarios": 200, **sampler}),
                           run=rc.RunSpec(shard_size=20))


class Interrupt(Exception):
    pass


def test_adaptive_campaign_stops_each_stratum_on_its_confidence_sequence(tmp_path: Path) -> None:
    store = rc.run(ber_spec(), tmp_path / "a")
    t = store.table().to_pandas()
    stop = store.manifest()["stop"]
    for name, rate in (("p=1e-04", 1e-4), ("p=1e-02", 1e-2)):
        rows = t[t.rate == rate].sort_values("scenario")
        info = stop["strata"][name]
        assert info["scenarios"] == len(rows) and len(rows) % 20 == 0
        halves = []
        for k in range(20, len(rows) + 1, 20):  # recomputed by hand round by round: it stopped at the first narrow one
            part = rows.iloc[:k]
            series = [(part.critical + part.non_finite) / part.inputs, part.correct / part.inputs]
            halves.append(max((h - lo) / 2 for lo, h in (sequence_interval(s.to_numpy()) for s in series)))
        narrow = [h <= 0.08 for h in halves]
        assert info["stopped"] == ("margin" if narrow[-1] else "max_scenarios")
        assert not any(narrow[:-1]) and info["half_width"] == pytest.approx(halves[-1])
    assert stop["scenarios"] == len(t) < 400  # stopped before max_scenarios in at least one stratum


def test_resume_in_the_middle_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    whole = rc.run(ber_spec(), tmp_path / "whole")
    seen = []

    def stop_after_three(n: int, remaining: int) -> None:  # a round is two shards (two rates): stop in the second
        if n and len(seen) == 3:
            raise Interrupt
        if n:
            seen.append(n)

    with pytest.raises(Interrupt):
        rc.run(ber_spec(), tmp_path / "cut", progress=stop_after_three)
    cut = Store(tmp_path / "cut")
    assert 0 < cut.table().num_rows < whole.table().num_rows and "stop" not in cut.manifest()
    resumed = rc.resume(tmp_path / "cut")
    pd.testing.assert_frame_equal(resumed.table().to_pandas(), whole.table().to_pandas())
    assert resumed.manifest()["stop"] == whole.manifest()["stop"]


@pytest.mark.parametrize("sampler, message", [
    (dict(stop_margin=0.5), r"stop_margin .* must be in \(0, 0.5\)"),
    (dict(stop_margin=-0.01), r"stop_margin .* must be in \(0, 0.5\)"),
    (dict(max_scenarios=10), "below the pilot size 20"),
    (dict(scenarios=40), "either a fixed number of scenarios"),
    (dict(max_scenarios=0), "needs max_scenarios"),
])
def test_bad_adaptive_settings_fail_before_anything_runs(tmp_path: Path, sampler: dict, message: str) -> None:
    with pytest.raises(FaultError, match=message):
        rc.run(ber_spec(**sampler), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_toml_with_scenarios_and_stop_margin_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('version = 1\n[sampler]\nkind = "ber"\nrates = [1e-4]\nscenarios = 1000\nstop_margin = 0.01\nmax_scenarios = 500\n')
    with pytest.raises(FaultError, match="either scenarios or stop_margin"):
        rc.load_spec(p)
    with pytest.raises(FaultError, match="applies to adaptive campaigns only"):
        rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", max_scenarios=500))


def test_iterative_sfi_replans_each_layer_from_its_observed_rate(tmp_path: Path) -> None:
    spec = rc.CampaignSpec(name="it", seed=0, model=rc.ModelSpec(("dense-cnn",)), data=rc.DataSpec(inputs=20),
                           sites=rc.SiteSpec(include=("fc*",), kinds=("weight",)),
                           sampler=rc.SamplerSpec(kind="sfi", granularity="layer", stop_margin=0.02, confidence=0.95),
                           run=rc.RunSpec(shard_size=200))
    store = rc.run(spec, tmp_path / "it")
    m = store.manifest()
    t = store.table().to_pandas()
    for layer, info in m["stop"]["strata"].items():
        population = m["strata"][layer]["population"]
        rows = t[t.stratum == layer]
        p = float(((rows.critical + rows.non_finite) / rows.inputs).mean())
        pilot = leveugle_sample_size(population, 0.05, 0.95, 0.5)
        planned = max(pilot, leveugle_sample_size(population, 0.02, 0.95, p))
        assert info["scenarios"] == len(rows) and info["planned"] == planned
        assert len(rows) < leveugle_sample_size(population, 0.02, 0.95, 0.5)  # fewer than Leveugle's conservative n
        assert planned <= len(rows) < planned + 200 or info["stopped"] == "population"
    assert json.loads((tmp_path / "it" / "manifest.json").read_text())["stop"]["reason"]
