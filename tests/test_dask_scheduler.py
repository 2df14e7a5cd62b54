"""A Dask scheduler and workers started as separate processes (as on a cluster): ``--executor dask
--address`` gives the serial table."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import resil.campaign as rc
from resil.cli import main

DASK = str(Path(sys.executable).parent / "dask")


@pytest.mark.slow
def test_external_scheduler_gives_the_serial_table(tmp_path):
    pytest.importorskip("distributed")
    (tmp_path / "c.toml").write_text('version = 1\nseed = 4\n[data]\ninputs = 32\n[sampler]\nkind = "uniform"\nscenarios = 60\n'
                                     '[run]\nshard_size = 20\n')
    serial = rc.run(rc.load_spec(tmp_path / "c.toml"), tmp_path / "serial").table().to_pandas()
    info = tmp_path / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(info)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 60
        while not info.exists() and time.time() < deadline:
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        procs.append(subprocess.Popen([DASK, "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        assert address.startswith("tcp://127.0.0.1:")
        assert main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "dask"), "--executor", "dask", "--address", address]) == 0
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(30)
    assert rc.Store(tmp_path / "dask").table().to_pandas().equals(serial)
