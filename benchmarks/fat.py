"""ISimDL fault-aware training on the dense reference CNN (digits).

1. Search overhead: fault-injection runs needed to find K critical single bit flips (accuracy
   drop >= theta over the 359 test images) with ISimDL importance sampling (gradient and
   exponential bit weightings, tau = 0) and with uniform sampling, over several seeds, for weight
   and activation faults.
2. Fault-aware training: for each seed, K critical weight faults found by importance sampling
   are fixed into the trained model, which is trained on for E epochs with them applied in every
   step (Adam); prints clean accuracy and accuracy under the found faults before and after, for
   the default (huge weights neutralised, clean loss), the plain variant and the operand route
   alone; and, as a baseline, the accuracy under the same faults after E epochs of ordinary training.
3. The same per fault: each found fault alone, before and after FAT with only that fault.

    .venv/bin/python benchmarks/fat.py [--seeds 5] [--k 3] [--epochs 12] [--lr 1e-3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import resil.models as rm
from resil.campaign.criteria import AccuracyDrop
from resil.training.fat import (
    FATConfig,
    SearchConfig,
    TrainingConfig,
    accuracy_under,
    fault_aware_training,
    search_critical,
    train_under_faults,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--search-seeds", type=int, default=10)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--theta", type=float, default=0.10)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-trials", type=int, default=5000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    d = rm.dataset("digits")
    model = rm.load("dense-cnn")
    g = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(d.x_train), generator=g)[:32]
    sx, sy = d.x_train[rows], d.y_train[rows]
    crit = AccuracyDrop(args.theta)
    clean = rm.info("dense-cnn").accuracy
    print(f"dense-cnn, clean accuracy {clean:.2%}; critical = accuracy drop >= {args.theta:.0%} over {len(d.x_test)} test images")

    print(f"\n1. fault-injection runs to find K={args.k} critical faults (seeds 0..{args.search_seeds - 1}, cap {args.max_trials})")
    print(f"{'faults':<12}{'sampler':<24}{'mean runs':>10}{'min':>6}{'max':>6}{'uniform / this':>16}  target")
    t0 = time.perf_counter()
    for kind in ("weight", "activation"):
        runs = {}
        for name, sampler, bits in (("uniform", "uniform", "gradient"), ("ISimDL exponential", "importance", "exponential"),
                                    ("ISimDL gradient", "importance", "gradient")):
            search = SearchConfig(sampler=sampler, kind=kind, k=args.k, criterion=crit, bit_weighting=bits, max_trials=args.max_trials)
            r = [search_critical(model, d.x_test, d.y_test, sx, sy, search, seed=s) for s in range(args.search_seeds)]
            assert all(x.found == args.k for x in r), f"{name}: fewer than {args.k} critical faults within the cap"
            runs[name] = np.array([x.runs for x in r])
        for name, v in runs.items():
            ratio = runs["uniform"].mean() / v.mean()
            tgt = "" if name == "uniform" else (">= 5x met" if ratio >= 5 else ">= 5x missed")
            print(f"{kind:<12}{name:<24}{v.mean():>10.1f}{v.min():>6}{v.max():>6}{ratio:>15.1f}x  {tgt}")
    print(f"({time.perf_counter() - t0:.0f} s)")

    print(f"\n2. FAT with the K={args.k} weight faults found by ISimDL (gradient bits), {args.epochs} epochs, Adam lr {args.lr:g}")
    variants = (("FAT (neutralise=auto, clean loss)", {}),
                ("plain FAT (neutralise=none, no clean loss)", {"neutralise": "none", "clean_loss": False}),
                ("FAT operand route only (+ clean loss)", {"neutralise": "operand"}))
    results = []
    for title, kw in variants:
        print(f"{title}")
        print(f"{'seed':<6}{'FI runs':>8}{'clean before':>14}{'faulty before':>15}{'faulty after':>14}{'clean after':>13}"
              f"{'plain-trained under faults':>28}")
        t0 = time.perf_counter()
        rs, plain = [], []
        for seed in range(args.seeds):
            config = FATConfig(epochs=args.epochs, seed=seed, search=SearchConfig(k=args.k, criterion=crit, max_trials=args.max_trials),
                               training=TrainingConfig(lr=args.lr, **kw))
            r = fault_aware_training(rm.load("dense-cnn"), d.x_train, d.y_train, d.x_test, d.y_test, config, progress=False)
            rs.append(r)
            if not results:  # baseline: the same epochs of ordinary training, then the found faults
                net = train_under_faults(rm.load("dense-cnn"), None, d.x_train, d.y_train, TrainingConfig(lr=args.lr), epochs=args.epochs,
                                         seed=seed)
                plain.append(accuracy_under(net, r.faults, d.x_test, d.y_test))
            pl = f"{plain[-1]:>28.2%}" if plain else ""
            print(f"{seed:<6}{r.search_runs:>8}{r.clean_before:>14.2%}{r.faulty_before:>15.2%}{r.faulty_after:>14.2%}"
                  f"{r.clean_after:>13.2%}{pl}")
        fb, fa = np.mean([r.faulty_before for r in rs]), np.mean([r.faulty_after for r in rs])
        pl = f"{np.mean(plain):>28.2%}" if plain else ""
        print(f"{'mean':<6}{np.mean([r.search_runs for r in rs]):>8.1f}{clean:>14.2%}{fb:>15.2%}{fa:>14.2%}"
              f"{np.mean([r.clean_after for r in rs]):>13.2%}{pl}")
        print(f"({time.perf_counter() - t0:.0f} s)")
        if not results:
            results = rs

    print(f"\n3. FAT per found fault (each alone), {args.epochs} epochs")
    before, after = [], []
    t0 = time.perf_counter()
    for r in results:
        for f in r.faults:
            net = rm.load("dense-cnn")
            before.append(accuracy_under(net, f, d.x_test, d.y_test))
            train_under_faults(net, f, d.x_train, d.y_train, TrainingConfig(lr=args.lr), epochs=args.epochs, seed=0)
            after.append(accuracy_under(net, f, d.x_test, d.y_test))
    before, after = np.array(before), np.array(after)
    print(f"{len(before)} faults: accuracy under the fault {before.mean():.2%} before -> {after.mean():.2%} after FAT "
          f"(clean {clean:.2%}); recovered to within 5 points of clean: {int((after >= clean - 0.05).sum())} of {len(after)}")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
