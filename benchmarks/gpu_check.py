"""GPU check: on every device this machine has (the CPU, then ``cuda`` if there is one), fast-mode
tables must equal the plain loop's for the dense CNN and a ResNet-20-shaped network, with their
throughputs side by side.

Workloads: dense-cnn, single-bit weight and bias flips over 256 test inputs; ResNet20
(``resil.models.architectures``, seeded random weights, BatchNorm statistics of its 64 seeded
random 3x32x32 inputs), single-bit flips of its weights. The script fails when a fast table
differs from the plain one on the same device; a CUDA table that differs from the CPU's is
reported (other kernels may round differently), not failed. On a machine without CUDA it says
it skipped the CUDA part.

    python benchmarks/gpu_check.py                   # 400 scenarios per workload
    python benchmarks/gpu_check.py --scenarios 100   # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

import resil.campaign as rc
import resil.models.architectures as arch


def workloads(scenarios: int) -> list[tuple[str, rc.CampaignSpec, torch.nn.Module | None, torch.Tensor | None]]:
    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    resnet = arch.calibrate_batchnorm(arch.ResNet20(), x)
    sampler = rc.SamplerSpec(kind="uniform", scenarios=scenarios)
    return [
        ("dense-cnn weight", rc.CampaignSpec(data=rc.DataSpec(inputs=256), sampler=sampler, seed=1), None, None),
        ("resnet20 weight", rc.CampaignSpec(sites=rc.SiteSpec(kinds=("weight",)), sampler=sampler, seed=1), resnet, x),
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", type=int, default=400)
    args = p.parse_args()
    torch.set_num_threads(1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if len(devices) == 1:
        print("CUDA: skipped (torch.cuda.is_available() is False on this machine); running the CPU part")
    failed, cpu_tables = False, {}
    with tempfile.TemporaryDirectory() as tmp:
        for device in devices:
            for label, spec, model, data in workloads(args.scenarios):
                tables, rates = {}, {}
                for mode in ("plain", "fast"):
                    s = dataclasses.replace(spec, run=rc.RunSpec(shard_size=100, mode=mode, device=device))
                    out = Path(tmp) / f"{device}-{label}-{mode}".replace(" ", "_")
                    t = time.perf_counter()
                    store = rc.run(s, out, model=None if model is None else model.cpu(), data=data)
                    rates[mode] = args.scenarios / (time.perf_counter() - t)
                    tables[mode] = store.table().to_pandas()
                same = tables["fast"].equals(tables["plain"])
                failed |= not same
                note = ""
                if device == "cpu":
                    cpu_tables[label] = tables["plain"]
                else:
                    outcome = ["masked", "tolerable", "critical", "non_finite", "correct"]
                    rows = int((tables["plain"][outcome] != cpu_tables[label][outcome]).any(axis=1).sum())
                    note = f", {rows} of {args.scenarios} rows differ from the CPU's"
                print(f"{device:5s} {label:18s} plain {rates['plain']:8.1f} scen/s  fast {rates['fast']:8.1f} scen/s  "
                      f"({rates['fast'] / rates['plain']:.1f}x)  fast == plain: {same}{note}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
