"""Bad input is refused with one clear error, before anything is created or modified.

Every case asserts: a non-zero exit (CLI, ``resil.cli.main`` in-process; a few through a real
subprocess) or a ``FaultError`` (Python API); a message naming the problem (a key word of it);
no traceback and a single line on stderr; nothing created (the ``--out`` directory does not
exist afterwards) and nothing modified (a stored campaign's files, a bad manifest, a model's
parameters are byte-identical afterwards).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import tomllib
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resil
import resil.campaign as rc
from resil.campaign.spec import spec_from_dict
from resil.cli import RUN_EXAMPLE, main
from resil.fault_models import fault_model_from_spec

BASE = 'version = 1\nname = "c"\n[data]\ninputs = 4\n[sampler]\nscenarios = 2\n[run]\nshard_size = 2\n'
BASE_DICT = tomllib.loads(BASE)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the SHA-256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def cli(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    """Run ``resil ARGS`` in-process: its exit status and stderr (checked to be one line, no traceback)."""
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code:
        assert len(err.strip().splitlines()) == 1, err
    return code, err


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a stored good campaign (``good/``), its spec, a plain file and bad manifests."""
    root = tmp_path_factory.mktemp("bad-input")
    (root / "good.toml").write_text(BASE)
    assert main(["run", str(root / "good.toml"), "--out", str(root / "good")]) == 0
    (root / "afile").write_text("not a directory")
    (root / "binary.toml").write_bytes(bytes(range(256)) * 4)
    (root / "folder.toml").mkdir()
    for name, text in MANIFESTS.items():
        (root / name).mkdir()
        (root / name / "manifest.json").write_text(text)
    return root


# -- spec fields (Python API: spec_from_dict, as the command line reads campaign files) ----------

FIELDS = [
    # top level
    ("", "name", 5, "name must be a string"),
    ("", "name", ["c"], "name must be a string"),
    ("", "seed", -1, "seed must be an integer >= 0"),
    ("", "seed", "abc", "seed must be an integer"),
    ("", "seed", 1.5, "seed must be an integer"),
    ("", "seed", True, "seed must be an integer"),
    ("", "seed", 2**64, "at most"),
    ("", "version", 2, "version must be 1"),
    ("", "version", True, "version must be 1"),
    ("", "version", "1", "version must be 1"),
    ("", "version", 1.0, "version must be 1"),
    ("", "bogus", 1, "unknown key 'bogus'"),
    ("", "base", 3, "base must be a string"),
    ("", "sampler", "uniform", "[sampler] must be a table"),
    # [model]
    ("model", "names", "dense-cnn", "names must be a list of strings"),
    ("model", "names", [], "names must list at least one"),
    ("model", "names", [""], "empty name"),
    ("model", "names", [3], "names must be a list of strings"),
    ("model", "names", ["dense-cnn", "dense-cnn"], "twice"),
    ("model", "checkpoint", 3, "checkpoint must be a string"),
    ("model", "kwargs", "width=8", "kwargs must be a table"),
    ("model", "kwargs", {"w": math.nan}, "finite numbers"),
    ("model", "name", "x", "unknown key(s) ['name'] in [model]"),
    # [data]
    ("data", "inputs", -1, "inputs must be an integer >= 0"),
    ("data", "inputs", 2.5, "inputs must be an integer"),
    ("data", "inputs", "all", "inputs must be an integer"),
    ("data", "inputs", True, "inputs must be an integer"),
    ("data", "select", "last", "select must be one of first, random"),
    ("data", "source", 3, "source must be a string"),
    ("data", "dataset", ["digits"], "dataset must be a string"),
    ("data", "source", "a\0b", "NUL"),
    # [sites]
    ("sites", "include", "fc2*", "include must be a list of strings"),
    ("sites", "include", [], "include must list at least one"),
    ("sites", "include", [1], "include must be a list of strings"),
    ("sites", "kinds", "weight", "kinds must be a list of strings"),
    ("sites", "kinds", ["weights"], "kinds must be one of"),
    ("sites", "kinds", [], "kinds must list at least one"),
    ("sites", "pruned", "sparse", "pruned must be one of live, dense"),
    ("sites", "pruned", True, "pruned must be a string"),
    ("sites", "exclude", ["x"], "unknown key(s) ['exclude']"),
    # [faults]
    ("faults", "model", "nope", "unknown fault model 'nope'"),
    ("faults", "model", "stuck_at", 'stuck_at:{"value": 1}'),
    ("faults", "model", 'stuck_at:{"value": 2}', "0 or 1"),
    ("faults", "model", 'stuck_at:{"value": true}', "0 or 1"),
    ("faults", "model", 'burst:{"length": 0}', "length"),
    ("faults", "model", 'burst:{"length": 2.5}', "length"),
    ("faults", "model", "stuck_at:[1]", "bad parameters"),
    ("faults", "model", 'stuck_at:{"value"', "bad parameters"),
    ("faults", "model", 5, "model must be a string"),
    ("faults", "bits", 5, "bits must be a list of integers"),
    ("faults", "bits", "31", "bits must be a list of integers"),
    ("faults", "bits", [31.5], "bits must be a list of integers"),
    ("faults", "bits", [True], "bits must be a list of integers"),
    ("faults", "bits", [64], "bits must be in 0..63"),
    ("faults", "bits", [-1], "bits must be in 0..63"),
    ("faults", "bits", [3, 3], "lists 3 twice"),
    # [sampler]
    ("sampler", "kind", "magic", "kind must be one of"),
    ("sampler", "scenarios", 0, "scenarios must be an integer >= 1"),
    ("sampler", "scenarios", -5, "scenarios must be an integer >= 1"),
    ("sampler", "scenarios", 2.5, "scenarios must be an integer"),
    ("sampler", "scenarios", True, "scenarios must be an integer"),
    ("sampler", "scenarios", "10", "scenarios must be an integer"),
    ("sampler", "faults_per_scenario", 0, "faults_per_scenario must be an integer >= 1"),
    ("sampler", "faults_per_scenario", 1.5, "faults_per_scenario must be an integer"),
    ("sampler", "rates", 0.1, "rates must be a list of numbers"),
    ("sampler", "rates", [0.0], "rates must be in (0, 1)"),
    ("sampler", "rates", [1.5], "rates must be in (0, 1)"),
    ("sampler", "rates", ["1e-3"], "rates must be a list of numbers"),
    ("sampler", "rates", [math.inf], "rates must be a list of numbers"),
    ("sampler", "margin", 0, "margin must be in (0, 1)"),
    ("sampler", "margin", 1, "margin must be in (0, 1)"),
    ("sampler", "margin", math.nan, "margin must be a finite number"),
    ("sampler", "confidence", 1.5, "confidence must be in (0, 1)"),
    ("sampler", "p", -0.1, "p must be in (0, 1)"),
    ("sampler", "uniform_share", 0, "uniform_share must be in (0, 1]"),
    ("sampler", "uniform_share", 1.5, "uniform_share must be in (0, 1]"),
    ("sampler", "granularity", "stage", "granularity must be one of"),
    ("sampler", "trials", -1, "trials must be an integer >= 0"),
    ("sampler", "trials", 1.5, "trials must be an integer"),
    ("sampler", "data_aware", "yes", "data_aware must be true or false"),
    # [outcome]
    ("outcome", "criterion", "nope", "unknown criterion 'nope'"),
    ("outcome", "criterion", 'topk:{"k": 0}', "k must be"),
    ("outcome", "criterion", 5, "criterion must be a string"),
    ("outcome", "threshold", "x", "threshold must be a finite number"),
    ("outcome", "threshold", math.nan, "threshold must be a finite number"),
    # [run]
    ("run", "shard_size", 0, "shard_size must be an integer >= 1"),
    ("run", "shard_size", 1.5, "shard_size must be an integer"),
    ("run", "batch_size", 0, "batch_size must be an integer >= 1"),
    ("run", "mode", "turbo", "mode must be one of fast, plain"),
    ("run", "nondeterministic", 1, "nondeterministic must be true or false"),
    ("run", "memory_mb", -1, "memory_mb must be an integer >= 0"),
    ("run", "memory_mb", "big", "memory_mb must be an integer"),
    ("run", "device", "tpu", "device must be auto, cpu, cuda or cuda:N"),
    ("run", "device", "cuda:x", "device must be auto, cpu, cuda or cuda:N"),
    ("run", "device", 0, "device must be a string"),
]

#: bad combinations of fields
COMBINATIONS = [
    ({"faults": {"model": "zero", "bits": [3]}}, "replaces whole words"),
    ({"faults": {"model": 'burst:{"length": 4}', "bits": [62]}}, "runs past bit 63"),
    ({"sampler": {"kind": "ber"}}, "needs rates"),
    ({"sampler": {"kind": "importance", "faults_per_scenario": 2}}, "single faults"),
    ({"sampler": {"data_aware": True}}, "stuck-at fault models only"),
    ({"outcome": {"criterion": "relative", "threshold": -1}}, "threshold"),
]


def with_field(section: str, key: str, value: object) -> dict:
    d = copy.deepcopy(BASE_DICT)
    (d.setdefault(section, {}) if section else d)[key] = value
    return d


@pytest.mark.parametrize("section, key, value, keyword", FIELDS, ids=[f"{s or 'top'}.{k}={v!r:.20}" for s, k, v, _ in FIELDS])
def test_bad_spec_field_is_named(section: str, key: str, value: object, keyword: str) -> None:
    d = with_field(section, key, value)
    before = copy.deepcopy(d)
    with pytest.raises(resil.FaultError) as e:
        spec_from_dict(d)
    assert keyword in str(e.value)
    assert repr(d) == repr(before)  # the dict given is not modified


@pytest.mark.parametrize("changes, keyword", COMBINATIONS, ids=[k for _, k in COMBINATIONS])
def test_bad_combination_is_named(changes: dict, keyword: str) -> None:
    d = copy.deepcopy(BASE_DICT)
    for section, values in changes.items():
        d.setdefault(section, {}).update(values)
    with pytest.raises(resil.FaultError, match=re.escape(keyword)):
        spec_from_dict(d)


# -- campaign files on the command line -----------------------------------------------------------

#: bad campaign files: text (or a name in the folder fixture) and a key word of the message
FILES = [
    ("@binary.toml", "not a text file"),
    ("@folder.toml", "is a directory"),
    ("@missing.toml", "does not exist"),
    ("", "version must be 1"),
    ("version = [", "not valid TOML"),
    (BASE + "[data]\nsource = 'x.npz'\n", "not valid TOML"),  # [data] twice
    (BASE.replace('"c"', '"../../x"'), "single folder name"),
    (BASE.replace('"c"', '"/tmp/abs"'), "single folder name"),
    (BASE.replace('"c"', '""'), "single folder name"),
    (BASE.replace('"c"', '"."'), "single folder name"),
    (BASE.replace('"c"', '"a/b"'), "single folder name"),
    (BASE.replace('"c"', '"tab\\there"'), "single folder name"),
    (BASE + "[sites]\ninclude = 'fc2*'\n", "include must be a list of strings"),
    (BASE.replace("scenarios = 2", "scenarios = true"), "scenarios must be an integer"),
    (BASE.replace("scenarios = 2", "scenarios = 2.5"), "scenarios must be an integer"),
    (BASE.replace("seed", "x") + "seed = -1\n", "unknown key"),  # seed after a table belongs to [run]
    ('version = 1\nseed = -1\n[data]\ninputs = 4\n', "seed must be an integer >= 0"),
    ('version = 1\nseed = "abc"\n[data]\ninputs = 4\n', "seed must be an integer"),
    ('version = 1\nname = 5\n', "name must be a string"),
    (BASE + "[outcome]\ncriterion = 'relative'\nthreshold = 'x'\n", "threshold must be a finite number"),
    (BASE + "[faults]\nmodel = 'stuck_at'\n", 'stuck_at:{"value": 1}'),
    (BASE + "[faults]\nbits = [31.5]\n", "bits must be a list of integers"),
    # checked against the sites of the model (the fault space), still before anything is written
    (BASE + "[faults]\nbits = [40]\n", "bit 40 is outside the 32-bit float32 encoding"),
    (BASE + "[faults]\nmodel = 'burst'\nbits = [31]\n", "a 2-bit fault from bit 31 runs past"),
    (BASE + "[faults]\nmodel = 'burst:{\"length\": 40}'\n", "does not fit the 32-bit"),
    (BASE + "[model]\nnames = ['int4']\n[faults]\nbits = [5]\n", "bit 5 is outside the 4-bit int4 encoding"),
    (BASE + "[sites]\ninclude = ['nomatch*']\n", "no site matches"),
    (BASE + "[sites]\nkinds = ['spike']\n", "no site matches"),
    (BASE + "[model]\nnames = ['no-such-model']\n", "unknown model 'no-such-model'"),
    (BASE + "[model]\nnames = ['nowhere.py:make']\n", "nowhere.py does not exist"),
    (BASE + "[model]\nnames = ['dense-cnn']\nkwargs = { width = 8 }\n", "takes no kwargs"),
    (BASE + "[model]\nnames = ['dense-cnn']\ncheckpoint = 'missing.pt'\n", "missing.pt does not exist"),
    (BASE.replace("inputs = 4", "inputs = 4\nsource = 'missing.npz'"), "missing.npz"),
    (BASE.replace("inputs = 4", "inputs = 100000"), "requested"),
    (BASE + "[outcome]\ncriterion = 'topk:{\"k\": 50}'\n", "TopK"),
]


def _campaign_file(folder: Path, text: str, tmp_path: Path) -> str:
    if text.startswith("@"):
        return str(folder / text[1:])
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, keyword", FILES, ids=[f"{i}-{k[:30]}" for i, (_, k) in enumerate(FILES)])
def test_bad_campaign_file_fails_before_writing(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               text: str, keyword: str) -> None:
    spec = _campaign_file(folder, text, tmp_path)
    stored = snapshot(folder / "good")
    code, err = cli(capsys, ["run", spec, "--out", str(tmp_path / "out")])
    assert code == 2 and keyword in err
    assert not (tmp_path / "out").exists()
    code, err = cli(capsys, ["run", spec, "--out", str(folder / "good")])  # into a stored campaign: left as it was
    assert code == 2 and snapshot(folder / "good") == stored


# -- flags and directories on the command line ----------------------------------------------------

MANIFESTS = {
    "not-json": "{not json",
    "a-list": "[1, 2]",
    "harden-run": '{"kind": "harden", "command": "ftt", "spec_hash": "x"}',
    "new-schema": '{"version": 7}',
    "no-spec": '{"kind": "campaign"}',
    "bad-spec": '{"kind": "campaign", "spec": {"version": 1, "sampler": {"scenarios": 2.5}}}',
    "odd-kind": '{"kind": "weird"}',
    "empty": "",
}

#: bad command lines ({f} is the folder fixture, {t} this test's tmp_path) and a key word of the message
FLAGS = [
    (["run", "{f}/good.toml", "--out", "{t}/out", "--workers", "0"], "--workers: must be >= 1"),
    (["run", "{f}/good.toml", "--out", "{t}/out", "--workers", "-2"], "--workers: must be >= 1"),
    (["run", "{f}/good.toml", "--out", "{t}/out", "--workers", "two"], "is not an integer"),
    (["run", "{f}/good.toml", "--out", "{t}/out", "--executor", "dask", "--workers", "0"], "--workers: must be >= 1"),
    (["run", "{f}/good.toml", "--out", "{t}/out", "--executor", "gpu"], "invalid choice: 'gpu'"),
    (["run", "{f}/good.toml", "--out", "{f}/afile"], "exists and is not a directory"),
    (["run", "{f}/good.toml", "--out", "{f}/afile/sub"], "is a file"),
    (["run", "{f}/good.toml"], "--out"),
    (["run", "--out", "{t}/out"], "spec"),
    (["run", "{f}/good.toml", "{f}/good.toml", "--out", "{t}/out"], "would both write"),
    (["run", "{f}/good.toml", "{f}/missing.toml", "--out", "{t}/out"], "does not exist"),
    (["run", "{f}/good.toml", "{f}/binary.toml", "--out", "{t}/out"], "not a text file"),
    (["run", "{f}/good.toml", "--out", "{f}/harden-run"], "not a campaign"),
    (["demo", "--random-flips", "-1"], "--random-flips: must be >= 0"),
    (["demo", "--random-flips", "many"], "is not an integer"),
    (["demo", "--seed", "-1"], "--seed: must be >= 0"),
    (["demo", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["demo", "--kwargs", "{bad"], "is not valid JSON"),
    (["demo", "--kwargs", "[1]"], "is not a JSON object"),
    (["demo", "--checkpoint", "{f}/missing.pt"], "does not exist"),
    (["demo", "--checkpoint", "{f}/afile"], "cannot read checkpoint"),
    (["demo", "--data", "{f}/afile"], "unknown data file extension"),
    (["demo", "--model", "resil.models.nets:digits_cnn"], "give --data"),
    (["sites", "no-such-model"], "unknown model 'no-such-model'"),
    (["sites", "dense-cnn", "--input-shape", "0,8"], "--input-shape must be comma-separated positive integers"),
    (["sites", "dense-cnn", "--input-shape", "a,b"], "--input-shape must be comma-separated positive integers"),
    (["sites", "dense-cnn", "--input-shape", "1,,8"], "--input-shape must be comma-separated positive integers"),
    (["sites", "dense-cnn", "--input-shape", "-1"], "--input-shape must be comma-separated positive integers"),
    (["sites", "dense-cnn", "--input-shape", "1,8,8,99999999"], "at most 2**28 elements"),
    (["sites", "resil.models.nets:digits_cnn", "--input-shape", "3,8,8"], "failed on the first input batch"),
    (["sites", "dense-cnn", "--kwargs", '{"width": 8}'], "takes no kwargs"),
    (["resume", "{t}/nothing"], "holds no campaign"),
    (["resume", "{f}/not-json"], "is not valid JSON"),
    (["resume", "{f}/empty"], "is not valid JSON"),
    (["resume", "{f}/a-list"], "holds a JSON list"),
    (["resume", "{f}/harden-run"], "not a campaign"),
    (["resume", "{f}/new-schema"], "schema version 7"),
    (["resume", "{f}/no-spec"], "no campaign spec"),
    (["resume", "{f}/bad-spec"], "scenarios must be an integer"),
    (["resume", "{f}/odd-kind"], "unknown kind 'weird'"),
    (["resume", "{f}/good", "--workers", "0"], "--workers: must be >= 1"),
    (["report", "{t}/nothing", "--out", "{t}/report"], "no campaign directory"),
    (["report", "{f}/good", "--out", "{f}/afile"], "exists and is not a directory"),
    (["report", "{f}/not-json", "--out", "{t}/report"], "is not valid JSON"),
    (["compare", "--out", "{t}/out", "--rates", "x"], "is not a number"),
    (["compare", "--out", "{t}/out", "--scenarios", "0"], "scenarios must be an integer >= 1"),
    (["compare", "--out", "{t}/out", "--inputs", "-1"], "inputs must be an integer >= 0"),
    (["compare", "bad=", "--out", "{t}/out"], "give label=source"),
    (["harden", "ftt", "--epochs", "0", "--out", "{t}/out"], "--epochs must be >= 1"),
    (["harden", "ftt", "--alpha", "2", "--out", "{t}/out"], "--alpha must be in [0, 1]"),
    (["harden", "ftt", "--faults", "bogus", "--out", "{t}/out"], "unknown fault process 'bogus'"),
    (["harden", "ftt", "--faults", "adsaf:x", "--out", "{t}/out"], "is not a number"),
    (["harden", "ftt", "--draws", "many", "--out", "{t}/out"], "invalid int value"),
    (["harden", "fat", "--search-epochs", "x", "--out", "{t}/out"], "--search-epochs must be comma-separated integers"),
    (["harden", "fat", "--lr", "-1", "--out", "{t}/out"], "--lr must be a positive number"),
    (["harden", "search", "--val-fraction", "1.5", "--out", "{t}/out"], "--val-fraction must be in (0, 1)"),
    (["harden", "search", "--references", "nope", "--out", "{t}/out"], "unknown model(s) ['nope']"),
    (["bogus"], "invalid choice: 'bogus'"),
    ([], "required: command"),
]


@pytest.mark.parametrize("args, keyword", FLAGS, ids=[" ".join(a)[:50] for a, _ in FLAGS])
def test_bad_command_line_fails_before_writing(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              args: list[str], keyword: str) -> None:
    before = snapshot(folder)
    code, err = cli(capsys, [a.replace("{f}", str(folder)).replace("{t}", str(tmp_path)) for a in args])
    assert code == 2 and keyword in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "report").exists()
    assert snapshot(folder) == before


def test_a_corrected_spec_is_accepted_after_a_refused_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "c.toml"
    spec.write_text(BASE + "[faults]\nbits = [40]\n")
    assert cli(capsys, ["run", str(spec), "--out", str(tmp_path / "out")])[0] == 2
    spec.write_text(BASE + "[faults]\nbits = [30]\n")
    assert cli(capsys, ["run", str(spec), "--out", str(tmp_path / "out")])[0] == 0
    assert set(rc.Store(tmp_path / "out").table().column("bit").to_pylist()) == {30}


def test_progress_bar_starts_with_its_total(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.toml").write_text(BASE)
    assert main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "0/2" in err and "2/2" in err and not re.search(r"c: 0scen", err)


def test_run_help_shows_a_valid_campaign_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--help"]) == 0
    assert "[sampler]" in capsys.readouterr().out
    spec = spec_from_dict(tomllib.loads(RUN_EXAMPLE))
    assert spec.faults.model == 'stuck_at:{"value": 1}' and spec.sites.include == ("conv*", "fc*")
    assert main(["demo", "--help"]) == 0
    assert "random weight and bias bit flips" in capsys.readouterr().out


def test_interrupt_exits_130_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "nets.py").write_text("def make():\n    raise KeyboardInterrupt\n")  # Ctrl-C while the model is built
    (tmp_path / "c.toml").write_text(BASE + "[model]\nnames = ['nets.py:make']\n")
    code, err = cli(capsys, ["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "out")])
    assert code == 130 and "interrupted" in err and not (tmp_path / "out").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, where no directory can be created")
def test_a_directory_that_cannot_be_created_exits_1(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = cli(capsys, ["report", str(folder / "good"), "--out", "/proc/resil-report"])
    assert code == 1 and "/proc/resil-report" in err


def _resil(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_real_processes_print_one_line_and_debug_the_traceback(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(BASE.replace("scenarios = 2", "scenarios = 2.5"))
    bad = _resil("resil", "run", "c.toml", "--out", "out", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
    assert "scenarios must be an integer" in bad.stderr and not (tmp_path / "out").exists()
    debug = _resil("resil", "run", "c.toml", "--out", "out", "--debug", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "FaultError" in debug.stderr
    models = _resil("resil.models", "--help", cwd=tmp_path)
    assert models.returncode == 0 and "usage: python -m resil.models" in models.stdout


def test_retraining_an_unknown_reference_model_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from resil.models.__main__ import main as retrain

    with pytest.raises(SystemExit) as e:
        retrain(["no-such-model"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no reference model 'no-such-model'" in err and "Traceback" not in err


# -- faults and fault models (Python API) ---------------------------------------------------------

GOOD = dict(site="0.weight", index=(0, 0), bit=30)
FAULTS = [
    (dict(index=1.5), "index must be an int"),
    (dict(index=(0, 1.0)), "index must be an int"),
    (dict(index="0"), "index must be an int"),
    (dict(bit=2.0), "bit must be an int"),
    (dict(bit=True), "bit must be an int"),
    (dict(bit=[1, "2"]), "bit must be an int"),
    (dict(site=3), "site must be a site name"),
    (dict(model="stuck_at"), "fault_model_from_spec('stuck_at')"),
    (dict(model=1), "model must be a fault model"),
    (dict(batch="a"), "batch must be an int"),
    (dict(step=(1, 2, 3)), "step must be an int"),
    (dict(step=1.5), "step must be an int"),
]


@pytest.mark.parametrize("change, keyword", FAULTS, ids=[f"{k}={v!r:.15}" for c, _ in FAULTS for k, v in c.items()])
def test_bad_fault_is_refused(change: dict, keyword: str) -> None:
    with pytest.raises(resil.FaultError, match=re.escape(keyword)):
        resil.Fault(**{**GOOD, **change})


FAULT_SETS = [
    (dict(model="stuck_at"), "model must be a FaultModel"),
    (dict(index=[1.5]), "index must be integers"),
    (dict(bit=[0.5]), "bit must be integers"),
    (dict(site=5), "site must be a str"),
    (dict(bit=[64]), "bit 64 is outside any encoding"),
    (dict(index=[0, 1], bit=[1, 2, 3]), "different lengths"),
    (dict(index=[[0, 1]]), "flat list of ints"),
    (dict(mask=[1]), "either bit or mask"),
]


@pytest.mark.parametrize("change, keyword", FAULT_SETS, ids=[k for _, k in FAULT_SETS])
def test_bad_fault_set_is_refused(change: dict, keyword: str) -> None:
    with pytest.raises(resil.FaultError, match=re.escape(keyword)):
        resil.FaultSet(**{"site": "0.weight", "index": [0], "bit": [1], **change})


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).eval()


INJECTIONS = [
    (resil.Fault("fc.weight", 0, bit=1), "unknown site 'fc.weight'"),
    (resil.Fault("0.weight", (0, 0), bit=40), "bit 40 is outside the 32-bit"),
    (resil.Fault("0.weight", (3, 0), bit=1), "outside site '0.weight'"),
    (resil.Fault("0.weight", 12, bit=1), "index 12 is outside site"),
    (resil.Fault("0.weight", (0, 0)), "needs a bit"),
    (resil.Fault("0.weight", (0, 0), bit=1, batch=0), "cannot name a batch element"),
    (resil.Fault("0.weight", (0, 0), bit=1, step=2), "cannot name time steps"),
    (resil.Fault("0.weight", (0,), bit=1), "outside site '0.weight'"),
    ("0.weight", "inject takes a Fault"),
    ([resil.Fault("0.weight", 0, bit=1), resil.Fault("2.bias", 0, bit=70)], "outside any encoding"),
]


@pytest.mark.parametrize("faults, keyword", INJECTIONS, ids=[k for _, k in INJECTIONS])
def test_bad_injection_modifies_nothing(faults: object, keyword: str) -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(resil.FaultError, match=re.escape(keyword)), resil.inject(net, faults):  # type: ignore[arg-type]
        raise AssertionError("the block must not run")
    assert all(torch.equal(v.view(torch.int32), before[k].view(torch.int32)) for k, v in net.state_dict().items())
    assert not any(m._forward_hooks for m in net.modules())


FAULT_MODELS = [
    ("stuck_at", 'stuck_at:{"value": 1}'),
    ('stuck_at:{"value": 2}', "0 or 1"),
    ('burst:{"length": 0}', "length in 1..64"),
    ('burst:{"length": 65}', "length in 1..64"),
    ('random_value:{"seed": -1}', "non-negative integer seed"),
    ("stuck_at:{bad", "bad parameters"),
    ('bitflip:{"bits": 3}', "bad parameters"),
    ("bit_flip", "unknown fault model 'bit_flip'"),
    (3, "must be a string"),
]


@pytest.mark.parametrize("spec, keyword", FAULT_MODELS, ids=[str(s) for s, _ in FAULT_MODELS])
def test_bad_fault_model_spec_is_named(spec: object, keyword: str) -> None:
    with pytest.raises(resil.FaultError, match=re.escape(keyword)):
        fault_model_from_spec(spec)  # type: ignore[arg-type]


def test_at_least_120_bad_inputs() -> None:
    cases = FIELDS + COMBINATIONS + FILES + FLAGS + FAULTS + FAULT_SETS + INJECTIONS + FAULT_MODELS
    assert len(cases) >= 120, len(cases)


# -- results that would mislead ---------------------------------------------------------------------

def test_non_finite_golden_output_warns(tmp_path: Path) -> None:
    net = _net()
    with torch.no_grad():
        net[2].bias[1] = math.inf
    x, y = torch.rand(6, 4), torch.zeros(6, dtype=torch.long)
    spec = rc.CampaignSpec(sampler=rc.SamplerSpec(scenarios=3), run=rc.RunSpec(shard_size=3))
    with pytest.warns(RuntimeWarning, match="golden.*NaN or infinite on 6 of 6 inputs"):
        store = rc.run(spec, tmp_path / "out", model=net, data=(x, y))
    table = store.table().to_pandas()
    assert (table["non_finite"] == 6).all()  # why the warning matters: every scenario fails on every input
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rc.run(spec, tmp_path / "fine", model=_net(), data=(x, y))  # a finite golden output does not warn


# -- fuzzing: any mutation of a valid spec loads or raises FaultError ------------------------------

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12) | st.sampled_from(["*", "weight", "bitflip", "stuck_at", 'burst:{"length": 3}', "ber", "sfi", "top1"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
VALID = spec_from_dict(tomllib.loads(RUN_EXAMPLE)).to_dict()
KEYS = [(s, k) for s, v in VALID.items() if isinstance(v, dict) for k in v] + [("", k) for k, v in VALID.items() if not isinstance(v, dict)]


@st.composite
def mutated(draw: st.DrawFn) -> dict:
    d = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        section, key = draw(st.sampled_from([*KEYS, ("", "extra"), ("sites", "extra")]))
        target = d if not section else d.setdefault(section, {})
        if not isinstance(target, dict):
            continue
        action = draw(st.sampled_from(["set", "delete", "section"]))
        if action == "delete":
            target.pop(key, None)
        elif action == "section" and section:
            d[section] = draw(VALUES)
        else:
            target[key] = draw(VALUES)
    return d


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzzed_specs_load_or_raise_fault_error(d: dict) -> None:
    try:
        spec = spec_from_dict(d)
    except resil.FaultError:
        return
    assert spec_from_dict(spec.to_dict()) == spec and len(spec.hash()) == 16  # a valid spec round-trips and hashes
