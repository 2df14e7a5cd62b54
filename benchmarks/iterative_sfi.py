"""Iterative SFI (Ruospo et al., IEEE TC 2025) against Leveugle's one-step n and exhaustive FI.

On the dense reference CNN, single weight bit flips, per layer (SFI granularity ``layer``) at
e = 1% and 99% confidence: an exhaustive campaign (every weight bit of the layers, on the same
``--inputs`` test images; cached under ``--cache``) gives each layer's exact vulnerability factor
(by default conv1, conv2 and fc2, 172,544 flips; ``--layers conv1 conv2 fc1 fc2`` adds fc1's
1,048,576: all four took 223 s here);
then ``--seeds`` adaptive SFI campaigns (``[sampler] stop_margin = 0.01``: a pilot for a 5%
margin, then n re-planned per layer from the observed rate, see :mod:`resil.campaign.adaptive`)
are run for real, each with another seed. Printed per layer: the population, Leveugle's
conservative n (p = 0.5), the mean scenarios iterative SFI used, and how often its estimate lay
within +-e of the exhaustive value.

    .venv/bin/python benchmarks/iterative_sfi.py              # about 10 minutes the first time (the exhaustive run)
    .venv/bin/python benchmarks/iterative_sfi.py --seeds 5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import resil.campaign as rc
from resil.statistics import leveugle_sample_size

MARGIN, CONFIDENCE = 0.01, 0.99


def spec(sampler: rc.SamplerSpec, seed: int, inputs: int, shard: int, layers: list[str]) -> rc.CampaignSpec:
    return rc.CampaignSpec(name="iterative-sfi", seed=seed, model=rc.ModelSpec(("dense-cnn",)), data=rc.DataSpec(inputs=inputs),
                           sites=rc.SiteSpec(include=tuple(f"{layer}.weight" for layer in layers), kinds=("weight",)),
                           sampler=sampler, run=rc.RunSpec(shard_size=shard))


def failure_by_layer(store: rc.Store) -> dict[str, tuple[float, int]]:
    t = store.table().to_pandas()
    t = t.assign(f=(t.critical + t.non_finite) / t.inputs)
    return {layer: (float(g.f.mean()), len(g)) for layer, g in t.groupby("layer", sort=False)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="iterative SFI campaigns (default 20)")
    parser.add_argument("--inputs", type=int, default=100, help="evaluation inputs (default 100)")
    parser.add_argument("--layers", nargs="+", default=["conv1", "conv2", "fc2"])
    parser.add_argument("--cache", type=Path, default=Path("runs/iterative_sfi"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    exhaustive = rc.run(spec(rc.SamplerSpec(kind="exhaustive"), 0, args.inputs, 5000, args.layers),
                        args.cache / ("exhaustive-" + "-".join(args.layers)))
    truth = failure_by_layer(exhaustive)
    print(f"exhaustive: {exhaustive.table().num_rows} single bit flips ({time.perf_counter() - start:.0f} s)")
    used: dict[str, list[int]] = {layer: [] for layer in truth}
    inside: dict[str, int] = {layer: 0 for layer in truth}
    iterative = rc.SamplerSpec(kind="sfi", granularity="layer", stop_margin=MARGIN, confidence=CONFIDENCE)
    for seed in range(args.seeds):
        folder = args.cache / f"iterative-{'-'.join(args.layers)}-{seed + 1}"
        store = rc.run(spec(iterative, seed + 1, args.inputs, 250, args.layers), folder)
        for layer, (value, n) in failure_by_layer(store).items():
            used[layer].append(n)
            inside[layer] += abs(value - truth[layer][0]) <= MARGIN
    print(f"\nper layer at e = {MARGIN:.0%}, {CONFIDENCE:.0%} confidence; {args.seeds} iterative SFI campaigns:")
    print(f"{'layer':8s} {'population':>10s} {'exact VF':>9s} {'Leveugle n':>10s} {'iterative n':>11s} {'saved':>6s} {'within e':>9s}")
    total_l = total_i = 0
    for layer, (value, population) in truth.items():
        n_lev = leveugle_sample_size(population, MARGIN, CONFIDENCE, 0.5)
        n_it = float(np.mean(used[layer]))
        total_l, total_i = total_l + n_lev, total_i + n_it
        print(f"{layer:8s} {population:10d} {value:9.4%} {n_lev:10d} {n_it:11.0f} {1 - n_it / n_lev:6.0%} "
              f"{inside[layer] / args.seeds:9.0%}")
    print(f"{'all':8s} {'':10s} {'':9s} {total_l:10d} {total_i:11.0f} {1 - total_i / total_l:6.0%}")
    print(f"run time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
