"""Fault-tolerant training (FT-NAS's FTT) on the digits reference models: normal vs FTT training.

Each model is trained with its reference recipe (same epochs, learning rate, seed and data order)
normally and with the FTT loss ``(1 - alpha) * CE(clean) + alpha * CE(faulty)`` (fresh faults
every step), then evaluated on the 359 test images: clean accuracy, and faulty accuracy as the
mean over 20 fault draws (the same draws for both models).

Fault rates:

- adSAF: p = 8% per RRAM cell, FT-NAS's value (16.3% of faulty cells SAF1).
- MiBB: p_m = 5e-4 per MAC, scaled from FT-NAS's 1e-4 to the model: the digits CNN's fan-ins are
  tiny (conv2: M = 16*3*3 = 144), so at 1e-4 its conv2 features would be faulty with 1.4% only.
  At 5e-4 they are faulty with 1 - (1 - 5e-4)**144 = 6.95%, the rate p_m = 1e-4 gives a 3x3 conv
  on 80 channels (M = 720), the widest convolution of FT-NAS's own CIFAR-10 networks (20 initial
  channels, doubled twice). At the paper's 1e-4 the normal CNN loses under 3 points, too few to
  measure a 5-point gain.

The normal dense CNN is retrained here (it reproduces the shipped checkpoint); the normal SNN and
int8 models are their shipped checkpoints, which their recipes reproduce. Run:

    .venv/bin/python benchmarks/ftt.py [--draws 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import resil.models as rm
from resil.training import FTTResult, run_ftt
from resil.training.ftnas import AdSAF, MiBB

MIBB = MiBB(p_m=5e-4)
ADSAF = AdSAF(p=0.08)
ALPHA = {"MiBB": 0.5, "AdSAF": 0.5}  # FT-NAS used 0.7 for adSAF: shown as an extra row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    runs: list[tuple[str, FTTResult, str]] = []
    normal_dense, _ = rm.retrain("dense-cnn")
    cases = [("dense-cnn", MIBB, True, None, "target"), ("dense-cnn", ADSAF, True, None, "target"),
             ("dense-cnn", ADSAF, True, 0.7, "FT-NAS alpha"), ("dense-cnn", MIBB, False, None, "plain STE"),
             ("snn", MIBB, True, None, ""), ("snn", ADSAF, True, None, ""), ("int8", MIBB, True, None, ""), ("int8", ADSAF, True, None, "")]
    for name, proc, range_gradient, alpha, note in cases:
        normal = normal_dense if name == "dense-cnn" else rm.load(name)
        alpha = ALPHA[type(proc).__name__] if alpha is None else alpha
        r = run_ftt(name, proc, alpha=alpha, draws=args.draws, normal=normal, range_gradient=range_gradient)
        runs.append((name, r, note))
        print(f"  {name:9s} {r.faults:28s} done in {r.seconds:5.1f} s", flush=True)
    print()
    head = (f"{'model':9s}  {'faults':28s}  {'alpha':>5s}  {'clean normal':>12s}  {'clean FTT':>9s}  "
            f"{'faulty normal':>15s}  {'faulty FTT':>15s}  {'gain':>6s}  {'drop':>5s}  target")
    print(head)
    print("-" * len(head))
    for name, r, note in runs:
        fn, ff = np.array(r.faulty_normal), np.array(r.faulty_ftt)
        verdict = ""
        if note == "target":
            ok = r.faulty_gain >= 0.05 and r.clean_drop <= 0.02
            verdict = f"{'met' if ok else 'MISSED'} (gain >= 5.0, drop <= 2.0)"
        elif note:
            verdict = note
        print(f"{name:9s}  {r.faults:28s}  {r.alpha:5.2f}  {100 * r.clean_normal:11.2f}%  {100 * r.clean_ftt:8.2f}%  "
              f"{100 * fn.mean():6.2f}% +-{100 * fn.std(ddof=1):5.2f}  {100 * ff.mean():6.2f}% +-{100 * ff.std(ddof=1):5.2f}  "
              f"{100 * r.faulty_gain:+6.2f}  {100 * r.clean_drop:5.2f}  {verdict}")
    total = time.perf_counter() - start
    print(f"\nfaulty accuracy: mean +- std over {args.draws} fault draws on the {len(rm.dataset('digits').y_test)} test images; "
          f"gain and drop in points; 'plain STE' = range_gradient=False; run time {total:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{**r.to_dict(), "note": note} for _, r, note in runs], f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
