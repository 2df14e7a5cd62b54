"""Campaigns: spec files, outcomes against a hand computation, sharding, store, resume, executors."""

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import resil
import resil.campaign as rc
import resil.models as rm

SPEC = """
version = 1
name = "t"
seed = 3
[model]
names = ["{model}"]
[data]
dataset = "digits"
inputs = {inputs}
[sampler]
kind = "uniform"
scenarios = {scenarios}
[run]
shard_size = {shard}
"""


def write_spec(tmp_path: Path, inputs=32, scenarios=40, shard=7, model="dense-cnn") -> Path:
    p = tmp_path / "spec.toml"
    p.write_text(SPEC.format(inputs=inputs, scenarios=scenarios, shard=shard, model=model))
    return p


def table(store: rc.Store):
    return store.table().to_pandas().drop(columns=[]).reset_index(drop=True)


@pytest.mark.parametrize("text, message", [
    ("version = 2", "version must be 1"),
    ("version = 1\nbogus = 3", "unknown key 'bogus'"),
    ("version = 1\n[sampler]\nkind = 'magic'", "kind must be one of"),
    ("version = 1\n[sampler]\nscenario = 5", r"unknown key\(s\) \['scenario'\] in \[sampler\]"),
    ("version = 1\n[faults]\nmodel = 'nope'", "unknown fault model 'nope'"),
    ("version = 1\n[sampler]\nkind = 'ber'", "needs rates"),
    ("version = 1\n[sites]\nkinds = ['weights']", "kinds must be one of"),
    ("version = [", "not valid TOML"),
])
def test_bad_campaign_files_are_named(tmp_path, text, message):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(resil.FaultError, match=message):
        rc.load_spec(p)


def test_outcomes_match_a_hand_computation(tmp_path):
    spec = rc.load_spec(write_spec(tmp_path, inputs=48, scenarios=30))
    df = table(rc.run(spec, tmp_path / "out"))
    model = rm.load("dense-cnn")
    x, y = rm.dataset("digits").x_test[:48], rm.dataset("digits").y_test[:48]
    with torch.no_grad():
        golden = model(x)
    for _, row in df.iterrows():
        (site,), (index,), (mask,) = row.fault_sites, row.fault_indices, row.fault_masks
        faulty_model = copy.deepcopy(model)
        w = dict(faulty_model.named_parameters())[site].detach().numpy().reshape(-1)
        w.view(np.uint32)[index] ^= np.uint32(mask)
        with torch.no_grad():
            out = faulty_model(x)
        finite = torch.isfinite(out).all(1)
        same = (out == golden).all(1) & finite
        critical = (out.argmax(1) != golden.argmax(1)) & ~same & finite
        assert row.non_finite == int((~finite).sum())
        assert row.masked == int(same.sum()) and row.critical == int(critical.sum())
        assert row.tolerable == 48 - row.masked - row.critical - row.non_finite
        assert row.correct == int(((out.argmax(1) == y) & finite).sum())
        assert row.bit == int(np.log2(mask)) and row.layer == site.rsplit(".", 1)[0]


def test_sharding_does_not_change_the_scenarios(tmp_path):
    a = rc.run(rc.load_spec(write_spec(tmp_path, shard=7)), tmp_path / "a")
    b = rc.run(rc.load_spec(write_spec(tmp_path, shard=40)), tmp_path / "b")
    assert table(a).equals(table(b))
    assert len(list((tmp_path / "a" / "parts").glob("*.parquet"))) == 6


def test_exhaustive_and_ber_samplers(tmp_path):
    spec = rc.CampaignSpec(sites=rc.SiteSpec(include=("fc2.bias",)), sampler=rc.SamplerSpec(kind="exhaustive"), data=rc.DataSpec(inputs=16))
    df = table(rc.run(spec, tmp_path / "ex"))
    assert len(df) == 10 * 32
    assert sorted(zip(df.fault_indices.map(lambda v: v[0]), df.bit, strict=True)) == [(i, b) for i in range(10) for b in range(32)]
    ber = rc.CampaignSpec(sites=rc.SiteSpec(include=("fc*",)), sampler=rc.SamplerSpec(kind="ber", rates=(1e-5, 1e-3), scenarios=30),
                          data=rc.DataSpec(inputs=8), run=rc.RunSpec(shard_size=16))
    df = table(rc.run(ber, tmp_path / "ber"))
    space = (512 * 64 + 64 + 640 + 10) * 32
    for p in (1e-5, 1e-3):
        n = df[df.rate == p].n_faults
        assert len(n) == 30
        assert abs(n.mean() - space * p) < 4 * np.sqrt(space * p * (1 - p) / 30) + 1  # binomial mean


def test_store_keeps_another_campaign_intact(tmp_path):
    rc.run(rc.load_spec(write_spec(tmp_path)), tmp_path / "out")
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "out" / "parts").iterdir())
    other = rc.load_spec(write_spec(tmp_path, scenarios=41))
    with pytest.raises(resil.FaultError, match="holds another campaign"):
        rc.run(other, tmp_path / "out")
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "out" / "parts").iterdir()) == before
    with pytest.raises(resil.FaultError, match="not a campaign directory"):
        rc.resume(tmp_path)


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    # every scenario takes >= 5 ms, so 60 shards of 25 take >= 7.5 s: time enough to kill the run
    spec_file = write_spec(tmp_path, inputs=64, scenarios=1500, shard=25, model="slow_models:slow_cnn")
    out = tmp_path / "killed"
    tests_dir = str(Path(__file__).parent)
    monkeypatch.syspath_prepend(tests_dir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": tests_dir + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "resil", "run", str(spec_file), "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list((out / "parts").glob("shard-*.parquet"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "parts").glob("shard-*.parquet")))
    assert 3 <= done < 60, "the run was not killed mid-way"
    with pytest.warns(UserWarning, match=f"taking over the lock of pid {proc.pid} on host .*, which is no longer running"):
        resumed = table(rc.resume(out))
    uninterrupted = table(rc.run(rc.load_spec(spec_file), tmp_path / "whole"))
    assert resumed.equals(uninterrupted)
    assert resumed.scenario.is_unique and len(resumed) == 1500
    assert not list((out / "parts").glob(".*tmp"))


def test_serial_process_and_dask_executors_give_identical_tables(tmp_path):
    spec = rc.load_spec(write_spec(tmp_path, inputs=16, scenarios=24, shard=6))
    serial = table(rc.run(spec, tmp_path / "serial"))
    process = table(rc.run(spec, tmp_path / "process", rc.make_executor("process", 2)))
    dask = table(rc.run(spec, tmp_path / "dask", rc.make_executor("dask", 2)))
    assert serial.equals(process) and serial.equals(dask)


def test_relative_criterion_for_non_classification_outputs():
    from resil.campaign.criteria import judge

    golden, labels = torch.tensor([[1.0, 2.0], [4.0, -2.0], [1.0, 1.0]]), torch.tensor([1, 0, 0])
    out = torch.tensor([[[1.0, 2.0], [4.2, -2.0], [1.0, 1.5]]])  # deviations 0, 0.2/4 = 5%, 0.5/1 = 50%
    relative = rc.OutcomeSpec("relative", threshold=0.1).build()
    assert relative == rc.Deviation(0.1, relative=True)
    counts = {k: v.tolist() for k, v in judge(relative, out, golden, labels).items()}
    assert counts == {"masked": [1], "tolerable": [1], "critical": [1], "non_finite": [0], "correct": [2]}
    assert judge(rc.Deviation(0.01, relative=True), out, golden, labels)["critical"].tolist() == [2]


@pytest.mark.parametrize("model, kinds", [("dense-cnn", ("weight", "bias", "activation")), ("pruned-80", ("weight",)),
                                          ("int8", ("weight", "activation")), ("snn", ("weight", "state", "spike"))])
def test_fast_mode_gives_the_plain_mode_table_bit_for_bit(tmp_path, model, kinds):
    def spec(mode):
        return rc.CampaignSpec(model=rc.ModelSpec((model,)), data=rc.DataSpec(inputs=40), sites=rc.SiteSpec(kinds=kinds),
                               sampler=rc.SamplerSpec(kind="uniform", scenarios=60, faults_per_scenario=2), run=rc.RunSpec(mode=mode))
    fast, plain = table(rc.run(spec("fast"), tmp_path / "fast")), table(rc.run(spec("plain"), tmp_path / "plain"))
    assert fast.equals(plain)
    assert (fast.masked < 40).any()  # faults that did something


def test_fast_mode_skips_stuck_at_faults_that_change_nothing(tmp_path, monkeypatch):
    def spec(mode):
        return rc.CampaignSpec(data=rc.DataSpec(inputs=24), faults=rc.FaultSpec(model='stuck_at:{"value": 0}'),
                               sampler=rc.SamplerSpec(kind="uniform", scenarios=80, faults_per_scenario=2), run=rc.RunSpec(mode=mode))
    forwards = []  # one entry per simulated scenario, alone or in a group
    original, grouped = rc.suffix.SuffixForward.run_from, rc.grouped.GroupedForward.outputs
    monkeypatch.setattr(rc.suffix.SuffixForward, "run_from", lambda self, k: forwards.append(k) or original(self, k))
    monkeypatch.setattr(rc.grouped.GroupedForward, "outputs",
                        lambda self, k, sc, pos, sites: forwards.extend([k] * len(pos)) or grouped(self, k, sc, pos, sites))
    fast = table(rc.run(spec("fast"), tmp_path / "fast"))
    fast_forwards = len(forwards)
    plain = table(rc.run(spec("plain"), tmp_path / "plain"))
    assert fast.equals(plain)
    # independent count: scenarios where some fault clears a bit that is set in the stored weight
    model = rm.load("dense-cnn")
    params = {n: p.detach().numpy().reshape(-1).view(np.uint32) for n, p in model.named_parameters()}
    changing = sum(any(int(params[s][i]) & m for s, i, m in zip(r.fault_sites, r.fault_indices, r.fault_masks, strict=True))
                   for r in fast.itertuples())
    assert fast_forwards == changing + 1 and changing < 80  # + the determinism check's second fault-free run


def test_each_finished_shard_is_stored_before_the_next_one_runs(tmp_path, monkeypatch):
    stored_before = []
    original = rc.runner.run_shard

    def spy(spec, shard, threads=1, live=""):
        stored_before.append(len(list((tmp_path / "c" / "parts").glob("shard-*.parquet"))))
        return original(spec, shard, threads, live)

    monkeypatch.setattr(rc.runner, "run_shard", spy)
    spec = rc.CampaignSpec(data=rc.DataSpec(inputs=8), sampler=rc.SamplerSpec(kind="uniform", scenarios=30), run=rc.RunSpec(shard_size=10))
    rc.run(spec, tmp_path / "c")
    assert stored_before == [0, 1, 2]  # results stream to the store; none pile up in memory
