"""Process executor scaling: one campaign run serially, with ``--executor process --workers 1`` and
with ``--workers 2``, side by side (and where the time goes).

The campaign: dense-cnn, single-bit weight and bias flips over 256 test inputs, 2,000 scenarios
(``--scenarios``) in shards of ``--shard-size``. Each contender runs it into a fresh directory in a
fresh interpreter, as ``resil run`` would (its pool's start-up included); the tables must be equal.
Reported per contender: the median wall time of ``--repeats`` interleaved runs (pool start-up
included) and scenarios/s; then the parts of the overhead: building the runner in one process
(imports done: the golden run, sites, sampler), and in a new worker its start (forked from resil's
preloaded forkserver where the platform has one, else a spawned interpreter importing torch), its
runner build and its time per shard; and how many cores two busy workers actually get on the machine
(two warm workers running the same shards side by side against one alone): on a machine shared with
other work, the ceiling of the 2-worker speed-up. Every worker runs one torch thread
(``run_shard(..., threads=1)``), as does the serial run, so two workers on two cores do not
oversubscribe them.

    python benchmarks/process_scaling.py                   # 2,000 scenarios, 3 interleaved runs each, about 3 minutes
    python benchmarks/process_scaling.py --scenarios 400   # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

import resil.campaign as rc
from resil.campaign.executors import worker_context
from resil.campaign.runner import CampaignRunner, run_shard, runner_for
from resil.campaign.spec import spec_from_dict


def busy(spec: dict, shards: range) -> float:
    """In a worker: seconds to run ``shards`` (its runner already built)."""
    t = time.perf_counter()
    for shard in shards:
        run_shard(spec, shard, 1)
    return time.perf_counter() - t


def free_cores(spec: dict, shards: range) -> float:
    """How many cores two busy workers actually get: 2 x (one worker's time alone) / (their time side by side)."""
    ctx = worker_context()
    with ProcessPoolExecutor(1, mp_context=ctx) as a, ProcessPoolExecutor(1, mp_context=ctx) as b:
        for f in [a.submit(run_shard, spec, 0, 1), b.submit(run_shard, spec, 0, 1)]:
            f.result()  # both warm
        alone = a.submit(busy, spec, shards).result()
        together = [f.result() for f in [a.submit(busy, spec, shards), b.submit(busy, spec, shards)]]
    return 2 * alone / max(together)


def timed_shards(spec: dict) -> tuple[float, float]:
    """In a fresh worker: seconds to build its runner (golden run, sites, sampler) and to run one shard."""
    t0 = time.perf_counter()
    runner_for(spec_from_dict(spec))
    t1 = time.perf_counter()
    run_shard(spec, 0, 1)
    return t1 - t0, time.perf_counter() - t1


#: one contender in a fresh interpreter, as `resil run` would be: its runner build, its pool's start
#: (the forkserver's imports included) and every shard, timed after resil is imported
CONTENDER = """
import json, sys, time, torch
import resil.campaign as rc
from resil.campaign.spec import spec_from_dict
torch.set_num_threads(1)
spec, out, kind, workers = spec_from_dict(json.loads(sys.argv[1])), sys.argv[2], sys.argv[3], int(sys.argv[4])
t = time.perf_counter()
rc.run(spec, out, rc.make_executor(kind, workers))
print(time.perf_counter() - t)
"""


def contender(spec: dict, out: Path, kind: str, workers: int) -> float:
    """Seconds one contender takes in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", CONTENDER, json.dumps(spec), str(out), kind, str(workers)],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", type=int, default=2000)
    p.add_argument("--shard-size", type=int, default=100)
    p.add_argument("--inputs", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3, help="runs of each contender, interleaved (the median is shown)")
    p.add_argument("--mode", choices=("fast", "plain"), default="plain", help="plain: a full forward per scenario (default)")
    args = p.parse_args()
    torch.set_num_threads(1)
    spec = rc.CampaignSpec(name="scaling", data=rc.DataSpec(inputs=args.inputs),
                           sampler=rc.SamplerSpec(kind="uniform", scenarios=args.scenarios),
                           run=rc.RunSpec(shard_size=args.shard_size, mode=args.mode))
    print(f"dense-cnn, {args.scenarios} weight/bias bit flips x {args.inputs} inputs, {args.mode} mode, shards of {args.shard_size}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    t = time.perf_counter()
    CampaignRunner(spec)
    build = time.perf_counter() - t
    tables, walls = {}, {}
    contenders = (("serial", "serial", 1), ("process x1", "process", 1), ("process x2", "process", 2))
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # interleaved, so a slow spell of the machine hits every contender
            for label, kind, workers in contenders:
                out = Path(tmp) / f"{label.replace(' ', '')}-{repeat}"
                walls.setdefault(label, []).append(contender(dataclasses.asdict(spec), out, kind, workers))
                tables[label] = rc.Store(out).table().to_pandas()
        t = time.perf_counter()
        with ProcessPoolExecutor(1, mp_context=worker_context()) as ex:
            build_w, shard = ex.submit(timed_shards, dataclasses.asdict(spec)).result()
        spawn = time.perf_counter() - t - build_w - shard
        cores = free_cores(dataclasses.asdict(spec), range(min(5, -(-args.scenarios // args.shard_size))))
    assert all(t.equals(tables["serial"]) for t in tables.values()), "an executor's table differs from the serial one"
    median = {label: float(np.median(w)) for label, w in walls.items()}
    for label, wall in median.items():
        runs = ", ".join(f"{w:.1f}" for w in walls[label])
        print(f"{label:12s} {wall:7.1f} s  {args.scenarios / wall:7.1f} scenarios/s  {median['serial'] / wall:5.2f}x serial"
              f"  (median of {runs} s)")
    print(f"runner build in one process (golden run, sites, sampler): {build:.2f} s")
    print(f"first worker ({worker_context().get_start_method()}): {spawn:.2f} s to start (a forkserver: its imports, once per run), "
          f"{build_w:.1f} s to build its runner, {shard:.2f} s per shard of {args.shard_size} scenarios")
    print(f"cores two busy workers get on this machine now: {cores:.2f} of 2 (2 x one worker alone / both side by side): "
          f"the most two workers can gain over one")


if __name__ == "__main__":
    main()
