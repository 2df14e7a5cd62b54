"""Campaign scaling: time per scenario and peak memory as the number of scenarios grows.

Each size runs as its own process (so its peak resident memory is its own): a uniform
single-bit weight-flip campaign, fast mode, one thread, written shard by shard to a Parquet
store in a temporary folder, on the dense reference CNN over 256 test inputs, or on ResNet20
(``resil.models.architectures``; seeded random weights, BatchNorm statistics of its 64 seeded
random 3x32x32 inputs, passed to the runner as live objects) under ``[run] memory_mb``.
Linear total cost shows as a flat time per scenario; bounded memory as a flat peak.

    python benchmarks/campaign_scaling.py                        # dense-cnn: 1k, 10k, 100k scenarios
    python benchmarks/campaign_scaling.py --model resnet20 --sizes 1000 10000
    python benchmarks/campaign_scaling.py --sizes 1000 1000000   # any sizes
    python benchmarks/campaign_scaling.py --model resnet20 --inputs 1000 --sizes 200 --memory-mb 1024  # inputs past the budget
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(scenarios: int, model: str, memory_mb: int, inputs: int) -> dict[str, float]:
    import pyarrow.parquet as pq
    import torch

    import resil.campaign as rc

    torch.set_num_threads(1)
    live: dict[str, object] = {}
    if model == "resnet20":
        from resil.models import architectures as arch

        torch.manual_seed(0)
        x = torch.rand(inputs, 3, 32, 32)
        live, inputs = {"model": arch.calibrate_batchnorm(arch.ResNet20(), x), "data": x}, 0
    spec = rc.CampaignSpec(model=rc.ModelSpec(("dense-cnn",)), data=rc.DataSpec(inputs=inputs), sites=rc.SiteSpec(kinds=("weight",)),
                           sampler=rc.SamplerSpec(kind="uniform", scenarios=scenarios),
                           run=rc.RunSpec(shard_size=1000, memory_mb=memory_mb))
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        store = rc.run(spec, Path(out) / "campaign", **live)
        seconds = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before anything reads the results back
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in store.parts.glob("shard-*.parquet"))
        size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    return {"scenarios": scenarios, "rows": rows, "seconds": seconds, "peak_mb": peak_mb, "store_mb": size / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--model", choices=["dense-cnn", "resnet20"], default="dense-cnn")
    parser.add_argument("--memory-mb", type=int, default=2048, help="[run] memory_mb of the campaigns")
    parser.add_argument("--inputs", type=int, help="evaluation inputs (default: 256 digits; 64 random 3x32x32 for resnet20)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    n_inputs = args.inputs or (64 if args.model == "resnet20" else 256)
    if args.one:
        print(json.dumps(one(args.one, args.model, args.memory_mb, n_inputs)))
        return 0
    inputs = f"{n_inputs} random 3x32x32 inputs" if args.model == "resnet20" else f"{n_inputs} inputs"
    print(f"{args.model}, uniform single-bit weight flips, {inputs}, fast mode, 1 thread, shards of 1,000, memory_mb {args.memory_mb}\n")
    print(f"{'scenarios':>10s} {'total s':>9s} {'ms/scenario':>12s} {'peak RSS MB':>12s} {'store MB':>9s}")
    ok = True
    for n in args.sizes:
        done = subprocess.run([sys.executable, __file__, "--one", str(n), "--model", args.model, "--memory-mb", str(args.memory_mb),
                               "--inputs", str(n_inputs)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr)
            return 1
        r = json.loads(done.stdout.strip().splitlines()[-1])
        ok &= r["rows"] == n
        print(f"{n:>10,d} {r['seconds']:9.1f} {1000 * r['seconds'] / n:12.3f} {r['peak_mb']:12.0f} {r['store_mb']:9.1f}")
    print("\nevery scenario stored once" if ok else "\nROW COUNT MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
