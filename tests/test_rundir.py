"""Run directories: one manifest check for campaigns and hardening runs, fingerprints, atomic writes.

The oracles are the files themselves, read back with json and pyarrow.
"""

import hashlib
import json
import multiprocessing
import os
import re
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from resil.campaign.store import Store
from resil.errors import FaultError
from resil.rundir import atomic_write
from resil.training.store import RunStore, spec_hash

CHOOSE = "choose another --out directory or delete it"
SPEC = {"model": "dense-cnn", "epochs": 1}
H = spec_hash("ftt", SPEC)


def campaign(spec_hash: str = "c1", **fingerprint: str) -> dict:
    """A campaign manifest as the runner writes one (the fields the store cares about, and some)."""
    m = {"version": 1, "name": "t", "model": "dense-cnn", "spec": {}, "spec_hash": spec_hash, "scenarios": 4,
         "shard_size": 4}
    return {**m, "fingerprint": fingerprint} if fingerprint else m


def rows(ids: list[int], masked: int = 3) -> dict:
    """A part's columns (every column of the store's schema) for scenarios ``ids``, no faults."""
    n = len(ids)
    text, none, zero = [""] * n, [[] for _ in ids], [0] * n
    return {"scenario": ids, "stratum": text, "site": text, "layer": text, "kind": text, "bit": [-1] * n, "n_faults": zero,
            "rate": [0.0] * n, "weight": [1.0] * n, "fault_sites": none, "fault_indices": none, "fault_masks": none, "fault_inputs": none,
            "inputs": [masked] * n, "masked": [masked] * n, "tolerable": zero, "critical": zero, "non_finite": zero, "correct": zero}


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root``: its bytes and modification time."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def stored(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def refused(message: str) -> AbstractContextManager[Any]:
    return pytest.raises(FaultError, match="^" + re.escape(message) + "$")


@pytest.fixture
def harden_dir(tmp_path: Path) -> Path:
    d = tmp_path / "h"
    RunStore(d).create("ftt", SPEC)
    RunStore(d).write_table("results", {"arm": ["normal", "ftt"]})
    return d


@pytest.fixture
def campaign_dir(tmp_path: Path) -> Path:
    d = tmp_path / "c"
    Store(d).create(campaign())
    Store(d).write(0, rows([1, 0, 3, 2]))
    return d


def test_created_directories_hold_versioned_manifests_and_tables(campaign_dir: Path, harden_dir: Path) -> None:
    assert stored(campaign_dir) == {**campaign(), "kind": "campaign", "parts_schema": 2}
    assert stored(harden_dir) == {"version": 1, "kind": "harden", "command": "ftt", "spec": SPEC, "spec_hash": H, "status": "running"}
    assert pq.read_table(campaign_dir / "parts" / "shard-000000.parquet").to_pydict() == rows([1, 0, 3, 2])
    assert Store(campaign_dir).table().to_pydict()["scenario"] == [0, 1, 2, 3]
    assert pq.read_table(harden_dir / "results.parquet").to_pydict() == {"arm": ["normal", "ftt"]}
    # no temporary files; each table has its SHA-256 in a hidden sidecar
    assert sorted(p.name for p in harden_dir.iterdir()) == [".results.parquet.sha256", "manifest.json", "results.parquet"]
    digest = hashlib.sha256((harden_dir / "results.parquet").read_bytes()).hexdigest()
    assert (harden_dir / ".results.parquet.sha256").read_text() == f"{digest}  results.parquet\n"


def test_a_harden_run_is_refused_as_a_campaign(harden_dir: Path) -> None:
    before = snapshot(harden_dir)
    with refused(f"{harden_dir} holds a `resil harden ftt` run (spec {H}), not a campaign; {CHOOSE}"):
        Store(harden_dir).create(campaign())
    with refused(f"{harden_dir} holds a `resil harden ftt` run, not a campaign: "
                 "its results are the Parquet tables and report.png in it"):
        Store(harden_dir).manifest()
    assert snapshot(harden_dir) == before


def test_a_campaign_is_refused_as_a_harden_run(campaign_dir: Path) -> None:
    before = snapshot(campaign_dir)
    for attempt in (RunStore(campaign_dir).check, RunStore(campaign_dir).create):
        with refused(f"{campaign_dir} holds a campaign 't' (spec c1), not a `resil harden` run; {CHOOSE}"):
            attempt("ftt", SPEC)
    with refused(f"{campaign_dir} holds a campaign 't', not a `resil harden` run: its results are the Parquet parts in parts/"):
        RunStore(campaign_dir).manifest()
    assert snapshot(campaign_dir) == before


def test_an_old_campaign_without_kind_is_a_campaign(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(campaign()))
    assert Store(tmp_path).manifest() == campaign()
    with refused(f"{tmp_path} holds a campaign 't' (spec c1), not a `resil harden` run; {CHOOSE}"):
        RunStore(tmp_path).create("ftt", SPEC)


def test_another_spec_is_refused_and_nothing_is_written(campaign_dir: Path, harden_dir: Path) -> None:
    before = snapshot(campaign_dir), snapshot(harden_dir), sorted(campaign_dir.parent.iterdir())
    with refused(f"{campaign_dir} holds another campaign ('t', spec c1); {CHOOSE}"):
        Store(campaign_dir).create(campaign("c2"))
    with refused(f"{harden_dir} holds another run (ftt, spec {H}); {CHOOSE}"):
        RunStore(harden_dir).create("ftt", {**SPEC, "epochs": 2})
    with refused(f"{harden_dir} holds another run (ftt, spec {H}); {CHOOSE}"):
        RunStore(harden_dir).check("fat", SPEC)
    assert (snapshot(campaign_dir), snapshot(harden_dir), sorted(campaign_dir.parent.iterdir())) == before


MODEL = "was run on a different model (parameters/buffers hash m1 stored, m2 now); resuming would mix results of two models"
INPUTS = "was run on different inputs (inputs hash i1 stored, i2 now); resuming would mix results of two input sets"
BOTH = ("was run on a different model (parameters/buffers hash m1 stored, m2 now) and different inputs (inputs hash i1 stored, "
        "i2 now); resuming would mix results of two models and two input sets")


@pytest.mark.parametrize("now, message", [({"model": "m2", "inputs": "i1"}, MODEL), ({"model": "m1", "inputs": "i2"}, INPUTS),
                                          ({"model": "m2", "inputs": "i2"}, BOTH)])
def test_another_fingerprint_is_refused_naming_what_differs(tmp_path: Path, now: dict, message: str) -> None:
    c, h = tmp_path / "c", tmp_path / "h"
    Store(c).create(campaign(model="m1", inputs="i1"))
    RunStore(h).create("ftt", SPEC, {"model": "m1", "inputs": "i1"})
    before = snapshot(c), snapshot(h)
    with refused(f"{c} {message}: {CHOOSE}"):
        Store(c).create(campaign(**now))
    for attempt in (RunStore(h).check, RunStore(h).create):
        with refused(f"{h} {message}: {CHOOSE}"):
            attempt("ftt", SPEC, now)
    assert (snapshot(c), snapshot(h)) == before


def test_the_same_run_resumes(tmp_path: Path) -> None:
    c, h = tmp_path / "c", tmp_path / "h"
    Store(c).create(campaign(model="m1", inputs="i1"))
    Store(c).write(0, rows([0, 1, 2, 3]))
    before = snapshot(c)
    Store(c).create(campaign(model="m1", inputs="i1"))
    Store(c).create(campaign())  # a caller that computes no fingerprint cannot compare one
    assert snapshot(c) == before  # a campaign continues: its manifest and parts are kept
    RunStore(h).create("ftt", SPEC, {"model": "m1", "inputs": "i1"})
    RunStore(h).finish({"gain": 0.1})
    RunStore(h).create("ftt", SPEC, {"model": "m1", "inputs": "i1"})
    assert stored(h)["status"] == "running" and stored(h)["fingerprint"] == {"model": "m1", "inputs": "i1"}  # a run starts over


def test_an_old_manifest_without_fingerprint_is_accepted(tmp_path: Path) -> None:
    c, h = tmp_path / "c", tmp_path / "h"
    c.mkdir()
    h.mkdir()
    (c / "manifest.json").write_text(json.dumps(campaign()))
    (h / "manifest.json").write_text(json.dumps({"version": 1, "kind": "harden", "command": "ftt", "spec": SPEC, "spec_hash": H,
                                                 "status": "complete"}))
    old = (c / "manifest.json").read_bytes()
    Store(c).create(campaign(model="m1", inputs="i1"))
    assert (c / "manifest.json").read_bytes() == old and (c / "parts").is_dir()
    RunStore(h).create("ftt", SPEC, {"model": "m1", "inputs": "i1"})
    assert stored(h)["fingerprint"] == {"model": "m1", "inputs": "i1"} and stored(h)["status"] == "running"


def test_unknown_fingerprint_parts_are_refused(tmp_path: Path) -> None:
    with refused("unknown fingerprint part(s) ['weights']; a fingerprint has ['model', 'inputs']"):
        Store(tmp_path / "c").create(campaign(weights="w"))
    assert not (tmp_path / "c").exists()


def test_missing_or_damaged_manifests_are_named(tmp_path: Path) -> None:
    with refused(f"{tmp_path} is not a campaign directory (no manifest.json)"):
        Store(tmp_path).manifest()
    with refused(f"{tmp_path} is not a run directory (no manifest.json)"):
        RunStore(tmp_path).manifest()
    path = tmp_path / "manifest.json"
    path.write_text('{"name": "t", ')
    error = "^" + re.escape(f"{path} is not valid JSON: ") + ".*line 1 column 15.*" + re.escape("; the directory may be damaged") + "$"
    for attempt in (Store(tmp_path).manifest, lambda: Store(tmp_path).create(campaign()), RunStore(tmp_path).manifest,
                    lambda: RunStore(tmp_path).create("ftt", SPEC)):
        with pytest.raises(FaultError, match=error):
            attempt()
    assert path.read_text() == '{"name": "t", '
    path.write_text("[1]")
    with refused(f"{path} holds a JSON list, not an object; the directory may be damaged"):
        Store(tmp_path).manifest()
    path.write_text(json.dumps({**campaign(), "version": 2}))
    with refused(f"{path} has schema version 2; this resil reads version 1"):
        Store(tmp_path).manifest()
    path.write_text(json.dumps({**campaign(), "kind": "magic"}))
    with refused(f"{path} has an unknown kind 'magic' (known: ['campaign', 'harden']); the directory may be damaged"):
        RunStore(tmp_path).manifest()


def test_out_naming_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "results.txt"
    f.write_bytes(b"keep me")
    with refused(f"{f} exists and is not a directory: {CHOOSE}"):
        Store(f).create(campaign())
    for attempt in (RunStore(f).check, RunStore(f).create):
        with refused(f"{f} exists and is not a directory: {CHOOSE}"):
            attempt("ftt", SPEC)
    with refused(f"{f} is a file, so {f / 'run'} cannot be created: choose another --out directory"):
        RunStore(f / "run").create("ftt", SPEC)
    assert f.read_bytes() == b"keep me" and sorted(tmp_path.iterdir()) == [f]


def test_atomic_write_fsyncs_and_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), fsync(fd))[1])
    atomic_write(tmp_path / "a.bin", b"one")
    atomic_write(tmp_path / "a.bin", b"two")
    assert (tmp_path / "a.bin").read_bytes() == b"two" and os.listdir(tmp_path) == ["a.bin"] and len(synced) == 4  # file, directory
    with pytest.raises(TypeError):
        atomic_write(tmp_path / "a.bin", "not bytes")  # type: ignore[arg-type]
    assert (tmp_path / "a.bin").read_bytes() == b"two" and os.listdir(tmp_path) == ["a.bin"]


PAYLOADS = (b"a" * 300_000, b"b" * 200_000)


def _write_many(path: str, which: int, times: int, start: Any) -> None:
    start.wait()  # both writers write at once
    for _ in range(times):
        atomic_write(Path(path), PAYLOADS[which])


def test_concurrent_writers_never_race(tmp_path: Path) -> None:
    path = tmp_path / "same.bin"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    writers = [ctx.Process(target=_write_many, args=(str(path), i, 50, start)) for i in range(2)]
    for w in writers:
        w.start()
    while any(w.is_alive() for w in writers):  # every read sees a whole payload, never a partial one
        if path.exists():
            assert path.read_bytes() in PAYLOADS
    for w in writers:
        w.join()
    assert [w.exitcode for w in writers] == [0, 0]
    assert path.read_bytes() in PAYLOADS and os.listdir(tmp_path) == ["same.bin"]
