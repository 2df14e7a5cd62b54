"""Campaign throughput: resil's executor vs the plain loop, pytorchfi and the suffix limit, side by side.

Workloads (each the same seeded scenarios for every contender, over the first 256 test inputs,
one process, one thread):

* dense-cnn, single-bit weight flips: resil's fast mode; the plain loop (resil's ``plain`` mode:
  flip, full forward, restore); pytorchfi 0.6.0 declaring one weight fault per scenario (its
  ``declare_weight_fi`` with the flipped value, then a full forward of the corrupted model); and
  the suffix limit, an estimate of the best one-scenario-at-a-time suffix execution: per
  scenario, the summed golden cost of the stages after its fault (from the faulted layer on for
  a weight, from the next stage on for a faulty output).
* dense-cnn, single-bit activation flips (every sample): fast vs plain and the suffix limit.
* int8 (with its suffix limit) and snn, single-bit weight flips: fast vs plain.

Shards of the contenders are interleaved (A B C A B C ...) so the machine's noise hits all alike.
Every contender's outcome table (masked / tolerable / critical / non-finite / correct per
scenario) must equal the plain loop's; the script fails otherwise.

    python benchmarks/campaign_throughput.py            # 2,000 scenarios per workload
    python benchmarks/campaign_throughput.py --quick    # 200, for a smoke run

pytorchfi is not a dependency of resil: the script installs pytorchfi==0.6.0 (pure Python, no
dependencies beyond torch) into a cache folder on first use, or skips it when that fails.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

import resil.campaign as rc
from resil.campaign.runner import CampaignRunner

COLUMNS = ("masked", "tolerable", "critical", "non_finite", "correct")
CACHE = Path.home() / ".cache" / "resil-benchmarks" / "pytorchfi-0.6.0"


def pytorchfi_core():
    """pytorchfi's core module, installed into a cache folder on first use (None if impossible)."""
    if not CACHE.exists():
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(CACHE), "pytorchfi==0.6.0"]
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            return None
    sys.path.insert(0, str(CACHE))
    try:
        return importlib.import_module("pytorchfi.core")
    except ImportError:
        return None


def spec(model: str, kind: str, scenarios: int, mode: str, shard: int) -> rc.CampaignSpec:
    return rc.CampaignSpec(model=rc.ModelSpec((model,)), data=rc.DataSpec(inputs=256), sites=rc.SiteSpec(kinds=(kind,)),
                           sampler=rc.SamplerSpec(kind="uniform", scenarios=scenarios), run=rc.RunSpec(shard_size=shard, mode=mode))


class PytorchfiLoop:
    """One weight fault per scenario declared through pytorchfi, then a full forward."""

    def __init__(self, core, runner: CampaignRunner) -> None:
        self.runner = runner
        self.layers = [m for m in runner.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        self.fi = core.fault_injection(runner.model, batch_size=len(runner.inputs), input_shape=list(runner.inputs.shape[1:]),
                                       layer_types=[nn.Conv2d, nn.Linear])

    def run_shard(self, shard: int) -> dict[str, np.ndarray]:
        r = self.runner
        size = r.spec.run.shard_size
        sc = r.sampler.draw(np.arange(shard * size, min((shard + 1) * size, r.scenarios)))
        fs = sc.faults
        rows = {k: np.zeros(len(sc.ids), dtype=np.int64) for k in COLUMNS}
        for j in range(len(fs)):
            site = r.sites[fs.site_names[fs.site[j]]]
            layer = self.layers.index(site.module)
            where = np.unravel_index(int(fs.index[j]), site.shape)
            old = site.module.weight.detach()[where].reshape(1)
            value = float((old.view(torch.int32) ^ torch.tensor([int(fs.mask[j])], dtype=torch.int64).to(torch.int32)).view(torch.float32))
            k, c, *hw = (int(v) for v in where)
            kh, kw = (hw + [None, None])[:2]
            net = self.fi.declare_weight_fi(layer_num=[layer], k=[k], dim1=[c], dim2=[kh], dim3=[kw], value=[value])
            with torch.no_grad():
                out = torch.cat([net(x) for x in r.evaluator.suffix.batches])
            for key, v in r.evaluator.judge(out.unsqueeze(0)).items():
                rows[key][sc.owner[j]] = v[0]
        return rows


def suffix_limit(runner: CampaignRunner) -> Callable[[int], float]:
    """Per shard, the summed golden cost of the stages from each scenario's faulted stage on."""
    sf = runner.evaluator.suffix
    cost = []
    with torch.no_grad():
        for k, stage in enumerate(sf.stages):
            inputs = [sf.batches[b] if k == 0 else sf.recorded[b][k - 1][0] for b in range(len(sf.batches))]
            best = float("inf")
            for _ in range(20):
                t0 = time.perf_counter()
                for x in inputs:
                    stage(x)
                best = min(best, time.perf_counter() - t0)
            cost.append(best)
    after = np.cumsum(cost[::-1])[::-1]

    def shard_seconds(shard: int) -> float:
        size = runner.spec.run.shard_size
        sc = runner.sampler.draw(np.arange(shard * size, min((shard + 1) * size, runner.scenarios)))
        first = np.full(len(sc.ids), len(cost))
        for j in range(len(sc.faults)):
            site = runner.sites[sc.faults.site_names[sc.faults.site[j]]]
            stage = sf.stage_of[id(site.module)] + (1 if site.batched else 0)  # a faulty output: the stages after it
            first[sc.owner[j]] = min(first[sc.owner[j]], stage)
        return float(np.r_[after, 0.0][first].sum())

    return shard_seconds


def measure(contenders: dict[str, Callable[[int], dict]], shards: int) -> tuple[dict[str, float], dict[str, list[dict]]]:
    seconds = dict.fromkeys(contenders, 0.0)
    tables: dict[str, list[dict]] = {name: [] for name in contenders}
    for shard in range(shards):
        for name, run in contenders.items():
            t0 = time.perf_counter()
            tables[name].append(run(shard))
            seconds[name] += time.perf_counter() - t0
    return seconds, tables


def same(a: list[dict], b: list[dict]) -> bool:
    return all(np.array_equal(np.asarray(x[k]), np.asarray(y[k])) for x, y in zip(a, b) for k in COLUMNS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 scenarios per workload")
    parser.add_argument("--no-pytorchfi", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = 200 if args.quick else 2000
    shard = n // 4
    core = None if args.no_pytorchfi else pytorchfi_core()
    print(f"torch {torch.__version__}, 1 thread; {n} single-bit flips per workload, 256 inputs, shards of {shard}")
    print(f"pytorchfi: {'0.6.0' if core else 'not available'}\n")
    header = f"{'workload':22s} {'plain':>8s} {'resil':>8s} {'ratio':>7s} {'pytorchfi':>10s} {'resil/pfi':>10s} {'suffix limit':>13s} {'resil/limit':>12s}  tables"
    print(header + "\n" + "-" * len(header))
    ok = True
    for model, kind in (("dense-cnn", "weight"), ("dense-cnn", "activation"), ("int8", "weight"), ("snn", "weight")):
        runners = {m: CampaignRunner(spec(model, kind, n, m, shard)) for m in ("plain", "fast")}
        contenders: dict[str, Callable[[int], dict]] = {m: r.run_shard for m, r in runners.items()}
        with_pfi = core is not None and (model, kind) == ("dense-cnn", "weight")
        if with_pfi:
            contenders["pytorchfi"] = PytorchfiLoop(core, CampaignRunner(spec(model, kind, n, "plain", shard))).run_shard
        for run in contenders.values():
            run(0)  # warm-up (and the fast mode's exactness checks for the first shapes)
        seconds, tables = measure(contenders, runners["fast"].shards)
        identical = all(same(tables["plain"], t) for t in tables.values())
        ok &= identical
        rate = {name: n / s for name, s in seconds.items()}
        limit = ""
        if runners["fast"].evaluator.grouped.sequential:  # a time loop (the SNN) calls its stages many times: no per-stage cost
            estimate = suffix_limit(runners["fast"])
            limit_rate = n / sum(estimate(s) for s in range(runners["fast"].shards))
            limit = f"{limit_rate:13.0f} {rate['fast'] / limit_rate:11.2f}x"
        pfi = f"{rate['pytorchfi']:10.1f} {rate['fast'] / rate['pytorchfi']:9.1f}x" if "pytorchfi" in rate else f"{'':10s} {'':10s}"
        print(f"{model + ' ' + kind:22s} {rate['plain']:8.1f} {rate['fast']:8.1f} {rate['fast'] / rate['plain']:6.2f}x {pfi} {limit or ' ' * 26}  "
              f"{'identical' if identical else 'DIFFERENT'}")
    print("\nscenarios per second; ratios are resil's fast mode over each contender, measured in this run.")
    print("outcome tables", "identical for every contender" if ok else "DIFFER (failure)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
