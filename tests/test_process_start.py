"""A local process pool: workers start forked from a forkserver that imported torch and resil once,
and the calling process runs shards itself until the first worker reports (so the seconds workers
take to start are not lost). The oracle of every table is the serial run in this process."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch

import resil.campaign as rc
from resil.campaign.executors import make_executor, worker_context

torch.set_num_threads(1)
TESTS = str(Path(__file__).parent)


def counting_spec(log: Path, mode: str) -> rc.CampaignSpec:
    return rc.spec_from_dict({
        "version": 1, "name": "counting", "seed": 5, "data": {"dataset": "digits", "inputs": 16},
        "model": {"names": ["counting_models:counting"], "kwargs": {"log": str(log)}},
        "sampler": {"kind": "uniform", "scenarios": 24}, "run": {"shard_size": 3, "mode": mode}})


def forwards_by_process(log: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for line in log.read_text().split():
        counts[int(line)] = counts.get(int(line), 0) + 1
    return counts


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver on this platform")
def test_workers_are_forked_from_a_preloaded_forkserver() -> None:
    context = worker_context()
    assert context.get_start_method() == "forkserver"
    pool = make_executor("process", 1)
    try:
        assert pool.submit(os.getppid).result() != os.getpid()  # the forkserver is the workers' parent, not us
    finally:
        pool.shutdown()


@pytest.mark.parametrize("mode", ["plain", "fast"])
def test_the_caller_runs_shards_until_a_worker_reports_and_the_table_is_the_serial_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.syspath_prepend(TESTS)
    monkeypatch.setenv("PYTHONPATH", TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = tmp_path / "forwards"
    spec = counting_spec(log, mode)
    serial = rc.run(spec, tmp_path / "serial").table().to_pandas()  # builds this process's runner for spec, kept
    log.unlink()
    pooled = rc.run(spec, tmp_path / "process", make_executor("process", 1)).table().to_pandas()
    counts = forwards_by_process(log)
    assert counts.pop(os.getpid(), 0) > 0, "this process ran shards (its runner was built already: no other forwards here)"
    assert counts, "a worker ran shards too"
    assert pooled.equals(serial)


def test_a_pool_starts_slowly_only_until_its_first_task_finishes() -> None:
    from resil.campaign.executors import starts_slowly

    pool = make_executor("process", 1)
    try:
        assert starts_slowly(pool)
        pool.submit(os.getpid).result()
        for _ in range(500):  # the done callback runs just after result() returns
            if not starts_slowly(pool):
                break
            time.sleep(0.01)
        assert not starts_slowly(pool)  # warm: a later round's shards all go to the workers
    finally:
        pool.shutdown()
    assert not starts_slowly(make_executor("serial"))
