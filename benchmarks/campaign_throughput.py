"""Campaign throughput: resil's fast mode (suffix execution) vs the plain loop, side by side.

For each reference model, one single-bit weight-flip campaign (uniform over every weight bit,
the same seeded scenarios for both modes) over the first 256 test inputs; the shards of the two
modes are interleaved (A B A B ...) so the machine's noise hits both alike. Prints scenarios
per second, the ratio fast / plain (median and range of per-shard ratios) and checks that the
two outcome tables are identical.

    python benchmarks/campaign_throughput.py            # 2,000 scenarios per model
    python benchmarks/campaign_throughput.py --quick    # 200, for a smoke run

Not yet here (issue 5): many scenarios per forward pass (vmap), pytorchfi for comparison, SNN
golden-state reuse, the suffix-limit estimate and the scaling table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import resil.campaign as rc
from resil.campaign.runner import CampaignRunner


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", nargs="+", default=["dense-cnn", "int8", "snn"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    scenarios = 200 if args.quick else 2000
    print(f"torch {torch.__version__}, 1 thread; {scenarios} single-bit weight flips per model, 256 inputs\n")
    print(f"{'model':12s} {'plain scen/s':>13s} {'fast scen/s':>12s} {'ratio':>7s} {'range':>13s}  tables")
    ok = True
    for model in args.models:
        def spec(mode: str) -> rc.CampaignSpec:
            return rc.CampaignSpec(model=rc.ModelSpec((model,)), data=rc.DataSpec(inputs=256), sites=rc.SiteSpec(kinds=("weight",)),
                                   sampler=rc.SamplerSpec(kind="uniform", scenarios=scenarios), run=rc.RunSpec(shard_size=50, mode=mode))
        runners = {m: CampaignRunner(spec(m)) for m in ("plain", "fast")}
        runners["fast"].run_shard(0), runners["plain"].run_shard(0)  # warm-up
        times: dict[str, list[float]] = {"plain": [], "fast": []}
        tables: dict[str, list[dict]] = {"plain": [], "fast": []}
        for shard in range(runners["fast"].shards):
            for mode in ("plain", "fast"):
                t0 = time.perf_counter()
                tables[mode].append(runners[mode].run_shard(shard))
                times[mode].append(time.perf_counter() - t0)
        same = all(
            all(np.array_equal(np.asarray(a[k], dtype=object), np.asarray(b[k], dtype=object)) for k in ("masked", "tolerable", "critical", "non_finite", "correct", "fault_indices"))
            for a, b in zip(tables["plain"], tables["fast"])
        )
        ok &= same
        ratios = np.array(times["plain"]) / np.array(times["fast"])
        rate = {m: scenarios / sum(t) for m, t in times.items()}
        print(f"{model:12s} {rate['plain']:13.1f} {rate['fast']:12.1f} {np.median(ratios):6.2f}x {ratios.min():5.2f}-{ratios.max():5.2f}x  {'identical' if same else 'DIFFERENT'}")
    print("\nheadline: fast/plain throughput ratios above; outcome tables", "identical" if ok else "DIFFER (failure)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
