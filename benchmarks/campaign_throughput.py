"""Campaign throughput: resil's executor vs the plain loop, pytorchfi and the suffix limit, side by side.

Workloads (each the same seeded scenarios for every contender, one process, one thread):

* dense-cnn, single-bit weight flips over the first 256 test inputs: resil's fast mode; the
  plain loop (resil's ``plain`` mode: flip, full forward, restore); pytorchfi 0.6.0 declaring one
  weight fault per scenario (its ``declare_weight_fi`` with the flipped value, then a full
  forward of the corrupted model); and the suffix limit, an estimate of the best
  one-scenario-at-a-time suffix execution: per scenario, the summed golden cost of the stages
  after its fault (from the faulted layer on for a weight, from the next stage on for a faulty
  output).
* dense-cnn, single-bit activation flips (every sample): fast vs plain and the suffix limit.
  For models that are not an ``nn.Sequential`` the suffix limit is measured: per scenario, a
  fault-free forward with the modules that finish before its faulted one replayed (best of 3).
* int8 (with its suffix limit) and snn, single-bit weight flips: fast vs plain.
* the bundled nn.Sequential models pruned-50 (weights) and int8 (activations), with their suffix
  limits.
* models that are classes with their own forward (``resil.models.architectures``), passed to
  the runner as live objects: the dense CNN as a class (the dense-cnn checkpoint; weight flips,
  with pytorchfi, and activation flips), the SNN as a class with its own time loop (the snn
  checkpoint), the bundled synthetic-transformer (digits rows as tokens), and ResNet20 and
  MobileNetV2 on seeded random 3x32x32 inputs (random weights, BatchNorm statistics set from
  those inputs; 64 of them, 16 with ``--quick``). ResNet20's weight flips hit its convolutions
  and ``fc`` (pytorchfi's fault space, which has no BatchNorm weights), with pytorchfi.

* per-sample activation faults (``[faults] per_sample``: each single-bit flip hits one input's
  activation, pytorchfi's main use) on the dense CNN and on ResNet20: fast vs plain (the plain loop
  runs every input under the fault, the reference semantics); pytorchfi is not run on them, since
  it sets values, not bit flips of the runtime activation.

Shards of the contenders are interleaved (A B C A B C ...) so the machine's noise hits all alike.
Every contender's outcome table (masked / tolerable / critical / non-finite / correct per
scenario) must equal the plain loop's; the script fails otherwise, and when a workload raises (its
row says so and the others still run).

    python benchmarks/campaign_throughput.py            # 2,000 scenarios per workload, about 10 minutes
    python benchmarks/campaign_throughput.py --quick    # 200 (ResNet20, MobileNetV2: 16 inputs), for a smoke run
    python benchmarks/campaign_throughput.py --only resnet20    # the workloads whose label contains a word

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import resil.campaign as rc
import resil.models as rm
from resil.campaign.runner import CampaignRunner
from resil.models import architectures as arch
from resil.models import synthetic

#: the weights of convolutions and linear layers (pytorchfi's fault space: no BatchNorm weights)
CONV_LINEAR = ("*conv*", "*shortcut.0.*", "fc.*")
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


#: a live model and its data
Live = Callable[[], tuple[nn.Module, Any]]


@dataclass(frozen=True)
class Workload:
    """One row of the table: a bundled model by name, or a ``live`` builder (a fresh model per
    contender), and the site kind its single-bit flips hit."""

    label: str
    kind: str
    scenarios: int
    model: str = "dense-cnn"
    live: Live | None = None
    pytorchfi: bool = False
    per_sample: bool = False
    include: tuple[str, ...] = ("*",)

    def runner(self, mode: str) -> CampaignRunner:
        inputs = 0 if self.live else 256
        spec = rc.CampaignSpec(model=rc.ModelSpec((self.model,)), data=rc.DataSpec(inputs=inputs),
                               sites=rc.SiteSpec(self.include, kinds=(self.kind,)),
                               faults=rc.FaultSpec(per_sample=self.per_sample),
                               sampler=rc.SamplerSpec(kind="uniform", scenarios=self.scenarios),
                               run=rc.RunSpec(shard_size=-(-self.scenarios // 4), mode=mode))
        return CampaignRunner(spec, *self.live()) if self.live else CampaignRunner(spec)


def digits_class(cls: type[nn.Module], checkpoint: str) -> Live:
    """A class from :mod:`resil.models.architectures` with a bundled checkpoint, on the first 256 digits test inputs."""

    def build() -> tuple[nn.Module, Any]:
        model = cls()
        model.load_state_dict(torch.load(rm.info(checkpoint).checkpoint, map_location="cpu", weights_only=True))
        d = rm.dataset("digits")
        return model.eval(), (d.x_test[:256], d.y_test[:256])

    return build


def transformer() -> tuple[nn.Module, Any]:
    """The bundled synthetic-transformer on the first 256 digits test inputs."""
    d = rm.dataset("digits")
    return synthetic.load("synthetic-transformer"), (d.x_test[:256], d.y_test[:256])


def cifar_shaped(cls: type[nn.Module], inputs: int) -> Live:
    """``cls()`` with seeded random weights and BatchNorm statistics of its seeded random 3x32x32 inputs (no labels)."""

    def build() -> tuple[nn.Module, Any]:
        torch.manual_seed(0)
        x = torch.rand(inputs, 3, 32, 32)
        return arch.calibrate_batchnorm(cls(), x), x

    return build


def workloads(quick: bool) -> tuple[list[Workload], str]:
    """The workloads and a line describing their sizes."""
    n, inputs = (200, 16) if quick else (2000, 64)
    return [
        Workload("dense-cnn weight", "weight", n, pytorchfi=True),
        Workload("dense-cnn activation", "activation", n),
        Workload("int8 weight", "weight", n, "int8"),
        Workload("snn weight", "weight", n, "snn"),
        Workload("pruned-50 weight", "weight", n, "pruned-50"),
        Workload("int8 activation", "activation", n, "int8"),
        Workload("dense-class weight", "weight", n, live=digits_class(arch.DenseCNNClass, "dense-cnn"), pytorchfi=True),
        Workload("dense-class activation", "activation", n, live=digits_class(arch.DenseCNNClass, "dense-cnn")),
        Workload("snn-class weight", "weight", n, live=digits_class(arch.SpikingClass, "snn")),
        Workload("transformer weight", "weight", n, live=transformer),
        Workload("resnet20 weight", "weight", n, live=cifar_shaped(arch.ResNet20, inputs), pytorchfi=True,
                 include=CONV_LINEAR),
        Workload("mobilenetv2 weight", "weight", n, live=cifar_shaped(arch.MobileNetV2, inputs)),
        Workload("dense-cnn per-sample act", "activation", n, per_sample=True),
        Workload("resnet20 per-sample act", "activation", n, live=cifar_shaped(arch.ResNet20, inputs), per_sample=True),
    ], f"{n} single-bit flips per workload over 256 digits inputs (resnet20, mobilenetv2: {inputs} random 3x32x32 inputs), 4 shards each"


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
            kh, kw = ([*hw, None, None])[:2]
            net = self.fi.declare_weight_fi(layer_num=[layer], k=[k], dim1=[c], dim2=[kh], dim3=[kw], value=[value])
            with torch.no_grad():
                out = torch.cat([net(x) for x in r.evaluator.suffix.batches])
            for key, v in r.evaluator.judge(out.unsqueeze(0)).items():
                rows[key][sc.owner[j]] = v[0]
        return rows


def tree_limit(runner: CampaignRunner) -> Callable[[int], float]:
    """For a model that is not an ``nn.Sequential``: per shard, the summed cost of a fault-free
    forward with the modules before each scenario's faulted modules replayed (measured per set
    of faulted modules, best of 3): the best one-scenario-at-a-time suffix execution there."""
    replay = runner.evaluator.replay
    cost: dict[frozenset[int], float] = {}

    def seconds_for(modules: list[nn.Module]) -> float:
        key = frozenset(id(m) for m in modules)
        if key not in cost:
            replay.check(modules)
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                replay.run(modules)
                best = min(best, time.perf_counter() - t0)
            cost[key] = best
        return cost[key]

    def shard_seconds(shard: int) -> float:
        size = runner.spec.run.shard_size
        sc = runner.sampler.draw(np.arange(shard * size, min((shard + 1) * size, runner.scenarios)))
        total = 0.0
        for i in range(len(sc.ids)):
            fs = sc.of(i)
            total += seconds_for([runner.sites[fs.site_names[c]].module for c in np.unique(fs.site)])
        return total

    return shard_seconds


def suffix_limit(runner: CampaignRunner) -> Callable[[int], float]:
    """Per shard, the summed golden cost of the stages from each scenario's faulted stage on."""
    if runner.evaluator.replay is not None:
        return tree_limit(runner)
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
    return all(np.array_equal(np.asarray(x[k]), np.asarray(y[k])) for x, y in zip(a, b, strict=True) for k in COLUMNS)


def row(w: Workload, core: Any) -> tuple[str, bool]:
    """Measure one workload: its table row and whether every contender's outcome table equals the plain loop's."""
    runners = {m: w.runner(m) for m in ("plain", "fast")}
    contenders: dict[str, Callable[[int], dict]] = {m: r.run_shard for m, r in runners.items()}
    if core is not None and w.pytorchfi:
        contenders["pytorchfi"] = PytorchfiLoop(core, w.runner("plain")).run_shard
    for run in contenders.values():
        run(0)  # warm-up (and the fast mode's exactness checks for the first shapes)
    seconds, tables = measure(contenders, runners["fast"].shards)
    identical = all(same(tables["plain"], t) for t in tables.values())
    rate = {name: w.scenarios / s for name, s in seconds.items()}
    limit = ""
    fast = runners["fast"].evaluator
    # a time loop in an nn.Sequential (the SNN) calls its stages many times: no per-stage cost; per-sample faults: no suffix
    if (fast.grouped.sequential or fast.replay is not None) and not w.per_sample:
        estimate = suffix_limit(runners["fast"])
        limit_rate = w.scenarios / sum(estimate(s) for s in range(runners["fast"].shards))
        limit = f"{limit_rate:13.0f} {rate['fast'] / limit_rate:11.2f}x"
    pfi = f"{rate['pytorchfi']:10.1f} {rate['fast'] / rate['pytorchfi']:9.1f}x" if "pytorchfi" in rate else f"{'':10s} {'':10s}"
    return (f"{w.label:22s} {rate['plain']:8.1f} {rate['fast']:8.1f} {rate['fast'] / rate['plain']:6.2f}x {pfi} {limit or ' ' * 26}  "
            f"{'identical' if identical else 'DIFFERENT'}"), identical


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 scenarios per workload, 16 inputs for resnet20 and mobilenetv2")
    parser.add_argument("--no-pytorchfi", action="store_true")
    parser.add_argument("--only", nargs="*", default=[], help="run the workloads whose label contains one of these words")
    args = parser.parse_args()
    torch.set_num_threads(1)
    core = None if args.no_pytorchfi else pytorchfi_core()
    todo, sizes = workloads(args.quick)
    todo = [w for w in todo if not args.only or any(word in w.label for word in args.only)]
    print(f"torch {torch.__version__}, 1 thread; {sizes}")
    print(f"pytorchfi: {'0.6.0' if core else 'not available'}\n")
    header = (f"{'workload':22s} {'plain':>8s} {'resil':>8s} {'ratio':>7s} {'pytorchfi':>10s} {'resil/pfi':>10s} "
              f"{'suffix limit':>13s} {'resil/limit':>12s}  tables")
    print(header + "\n" + "-" * len(header))
    ok = True
    for w in todo:
        try:
            line, identical = row(w, core)
        except Exception as e:  # a failing workload is reported (and fails the run) without hiding the others
            line, identical = f"{w.label:22s} FAILED: {type(e).__name__}: {e}", False
        ok &= identical
        print(line, flush=True)
    print("\nscenarios per second; ratios are resil's fast mode over each contender, measured in this run.")
    print("outcome tables", "identical for every contender" if ok else "DIFFER or FAILED (failure)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
