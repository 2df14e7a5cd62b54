"""Executors: bad worker counts refused before any work, dead workers rerun once or reported, a
local Dask cluster on 127.0.0.1 only.

The oracle of every table is the serial run of the same campaign in this process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import resil.campaign as rc
from resil.campaign.executors import make_executor
from resil.errors import FaultError

torch.set_num_threads(1)
TESTS = str(Path(__file__).parent)


@pytest.mark.parametrize("kind", ["serial", "process", "dask"])
@pytest.mark.parametrize("workers", [0, -1, 2.5, "2", True, None])
def test_bad_worker_counts_are_refused_before_any_work(kind: str, workers: object) -> None:
    with pytest.raises(FaultError, match=rf"^workers must be an integer >= 1, got {workers!r}$"):
        make_executor(kind, workers)  # type: ignore[arg-type]


def test_an_unknown_executor_is_refused() -> None:
    with pytest.raises(FaultError, match="unknown executor 'threads': serial, process, dask or slurm"):
        make_executor("threads", 2)


def frame(store: rc.Store):
    return store.table().to_pandas()


def dying_spec(tmp_path: Path, times: int) -> rc.CampaignSpec:
    return rc.spec_from_dict({
        "version": 1, "name": "dying", "seed": 4, "data": {"dataset": "digits", "inputs": 8},
        "model": {"names": ["dying_models:dying"], "kwargs": {"deaths": str(tmp_path / "deaths"), "times": times}},
        "sampler": {"kind": "uniform", "scenarios": 12}, "run": {"shard_size": 3}})


@pytest.fixture
def workers_import_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(TESTS)
    monkeypatch.setenv("PYTHONPATH", TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))  # spawned workers


def test_a_dead_process_worker_reruns_its_shard_in_a_fresh_pool(tmp_path: Path, workers_import_tests: None) -> None:
    spec = dying_spec(tmp_path, times=1)
    with pytest.warns(UserWarning, match=r"worker processes died running shard\(s\) \[.*\]; running them again in a fresh pool"):
        table = frame(rc.run(spec, tmp_path / "process", make_executor("process", 1)))
    assert (tmp_path / "deaths").read_bytes().startswith(b"x")  # a worker did die
    assert table.equals(frame(rc.run(spec, tmp_path / "serial")))


def test_workers_that_die_again_end_in_one_error_and_a_resumable_store(tmp_path: Path, workers_import_tests: None) -> None:
    spec = dying_spec(tmp_path, times=1000)
    out = tmp_path / "process"
    with pytest.warns(UserWarning, match="running them again in a fresh pool"), \
            pytest.raises(FaultError, match=rf"^{out}: worker processes died again in a fresh pool, running shard\(s\) \[.*\] "
                                            rf"\(killed, out of memory, or exited without an error\); the shards stored are intact: "
                                            rf"`resil resume {out}` runs the others$"):
        rc.run(spec, out, make_executor("process", 1))
    assert (out / ".lock").read_text() == ""
    assert frame(rc.resume(out)).equals(frame(rc.run(spec, tmp_path / "serial")))  # serial: the main process does not die


def test_a_dask_cluster_listens_on_localhost_and_a_task_killing_its_workers_is_reported(
        tmp_path: Path, workers_import_tests: None) -> None:
    dask = pytest.importorskip("dask")
    spec = dying_spec(tmp_path, times=1000)
    out = tmp_path / "dask"
    pytest.importorskip("distributed")  # its config loaded first: leaving config.set then restores it, not drops it
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        executor = make_executor("dask", 1)
        assert executor.client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert all(a.startswith("tcp://127.0.0.1:") for a in executor.client.scheduler_info()["workers"])
        died = rf"^{out}: worker processes died running shard\(s\) \[0(, 1)?\] .*`resil resume {out}` runs the others$"
        with pytest.raises(FaultError, match=died):
            rc.run(spec, out, executor)
    assert frame(rc.resume(out)).equals(frame(rc.run(spec, tmp_path / "serial")))
