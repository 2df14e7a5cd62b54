"""ISimDL importance sampling vs uniform fault injection on the dense reference CNN (digits).

Prints, for weight faults and for activation faults (single bit flips; activation faults hit
every image): precision@k (share of the first k distinct sampled faults that are critical,
critical = accuracy drop >= theta over the 359 test images) of uniform sampling and of ISimDL
importance sampling (tau = 0) with each bit weighting, mean over seeds and ratio to uniform;
then the failure rate (share of critical faults over the whole space) estimated by N uniform
draws (Wilson 95% interval) and by N importance draws re-weighted by p/q (tau > 0, unbiased,
CLT 95% interval), with the same criterion.

    .venv/bin/python benchmarks/is_precision.py [--seeds 5] [--k 100] [--samples 2000] [--theta 0.10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import resil.models as rm
from resil.analysis.precision import BIT_WEIGHTINGS, PrecisionConfig, precision_study
from resil.campaign.criteria import AccuracyDrop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--samples", type=int, default=2000, help="draws per estimator for the failure-rate check")
    ap.add_argument("--theta", type=float, default=0.10, help="critical: accuracy drop >= theta")
    ap.add_argument("--tau", type=float, default=0.1, help="random_threshold of the re-weighted estimate")
    ap.add_argument("--estimate-bits", default="exponential", choices=BIT_WEIGHTINGS)
    ap.add_argument("--kinds", default="weight,activation")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, d = rm.load("dense-cnn"), rm.dataset("digits")
    g = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(d.x_train), generator=g)[:32]  # ISimDL: sensitivities on 32 training images
    crit = AccuracyDrop(args.theta)
    print(f"dense-cnn, golden accuracy {rm.info('dense-cnn').accuracy:.2%}; critical = accuracy drop >= {args.theta:.0%} "
          f"over {len(d.x_test)} test images; seeds 0..{args.seeds - 1}; single bit flips")
    target_met = []
    for kind in args.kinds.split(","):
        t0 = time.perf_counter()
        config = PrecisionConfig(kind=kind, seeds=tuple(range(args.seeds)), k=args.k, tau=0.0, criterion=crit,
                                 estimate_samples=args.samples, estimate_tau=args.tau, estimate_weighting=args.estimate_bits)
        r = precision_study(model, d.x_test, d.y_test, d.x_train[rows], d.y_train[rows], config, progress=True)
        prec = {n: np.array(v) for n, v in r["precision"].items()}
        base = prec["uniform"].mean()
        print(f"\n{kind} faults ({r['space']:,} locations), precision@{args.k}")
        print(f"{'sampler':<26}{'mean':>8}{'min':>8}{'max':>8}{'x uniform':>11}  target")
        for name, v in prec.items():
            ratio = v.mean() / base if base > 0 else float("inf")
            label = "uniform FI" if name == "uniform" else f"ISimDL, {name[3:]} bits"
            tgt = "" if name == "uniform" else (">= 5x met" if ratio >= 5 else ">= 5x missed")
            if name != "uniform":
                target_met.append((kind, name, ratio >= 5))
            print(f"{label:<26}{v.mean():>8.3f}{v.min():>8.3f}{v.max():>8.3f}{ratio:>10.1f}x  {tgt}")
        rate, low, high = r["uniform_estimate"]
        e = r["is_estimate"]
        inside = low <= e.value <= high
        print(f"failure rate, uniform FI ({args.samples} draws):           {rate:.4f}  95% CI [{low:.4f}, {high:.4f}] (Wilson)")
        print(f"failure rate, ISimDL {args.estimate_bits} tau={args.tau:g} re-weighted ({e.n} draws): {e.value:.4f}  "
              f"95% CI [{e.low:.4f}, {e.high:.4f}] (CLT), ESS {e.ess:.0f}, {r['is_critical_share']:.1%} of draws critical")
        print(f"IS estimate inside the uniform 95% interval: {'yes' if inside else 'NO'}")
        print(f"({r['runs']} distinct fault simulations, {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
