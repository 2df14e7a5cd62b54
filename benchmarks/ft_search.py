"""Fault-tolerant architecture search (a small FT-NAS) on digits, against the bundled reference models.

For each fault process, a regularized evolution (40 candidates: 10 random, then tournament of 3 +
one-gene mutation) over :class:`resil.training.search.SearchSpace` (conv widths, hidden width,
3x3/5x5 kernels, max/avg pool, ReLU/ReLU6/Hardtanh(0,1), float32/int8/int4, and a single or
triple-run (median of three, time redundancy) output layer; at most the dense CNN's 38,282
parameters). Each candidate is trained for 10 epochs with FTT (alpha 0.5) on 80% of
the training images and scored on the other 20% (validation; the test set is not used) by
R = (1 - beta) * clean + beta * faulty (10 draws). The best is retrained for 15 epochs (the dense
reference's recipe) on the whole training set and evaluated on the 359 test images, 20 fault
draws, next to the reference models:

- as shipped (trained normally): the comparison the search must win;
- trained with FTT too (their own recipes, the same alpha, ``resil.training.run_ftt``): the
  like-for-like comparison, since the found model was trained with FTT.

Every model sees the same fault process and the same draw seed (identical draws for models of
the same shape). Fault processes: adSAF p = 8% per cell (FT-NAS's value, beta 0.2); MiBB
p_m = 5e-4 per MAC (beta 0.5; scaled from FT-NAS's 1e-4 to the tiny fan-ins of the digits CNN,
see benchmarks/ftt.py). Run (about 5 minutes on one core):

    .venv/bin/python benchmarks/ft_search.py [--candidates 40] [--no-reference-ftt] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from resil.training.ftnas import AdSAF, MiBB
from resil.training.search import REFERENCES, ArchSearchConfig, search

CASES = [("adSAF p=0.08", AdSAF(p=0.08)), ("MiBB p_m=5e-4", MiBB(p_m=5e-4))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--population", type=int, default=10)
    parser.add_argument("--final-draws", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-reference-ftt", action="store_true", help="skip training the references with FTT")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    out = []
    verdicts = []
    for label, proc in CASES:
        config = ArchSearchConfig(candidates=args.candidates, population=args.population, epochs=args.epochs, draws=args.draws,
                                  final_draws=args.final_draws, seed=args.seed, reference_ftt=() if args.no_reference_ftt else REFERENCES)
        r = search(proc, config, progress=False)
        print(f"\n== {label}: beta {r.beta}, FTT alpha {r.alpha}; search + comparison {r.seconds:.0f} s ==")
        print(f"candidates (validation split, {args.draws} draws):")
        for c in r.candidates:
            origin = "random" if c.parent is None else f"mutant of #{c.parent}"
            print(f"  #{c.index:<2d} {c.arch.describe():42s} {c.params:6d} params  clean {c.clean:6.2%}  faulty {c.faulty:6.2%}  "
                  f"R {c.reward:.4f}  ({origin})")
        print(f"best: {r.arch.describe()}\n\ntest set, {args.final_draws} fault draws per model:")
        print(r.table())
        found = r.found
        for training in ("normal", "FTT"):
            refs = [row for row in r.comparison[1:] if row.training.startswith(training)]
            if not refs:
                continue
            best = max(refs, key=lambda row: row.faulty_mean)
            se = np.hypot(found.faulty_std / np.sqrt(len(found.faulty)), best.faulty_std / np.sqrt(len(best.faulty)))
            margin = found.faulty_mean - best.faulty_mean
            ok = all(found.faulty_mean > row.faulty_mean for row in refs)
            line = (f"{label}: found {found.faulty_mean:.2%} vs best {training}-trained reference {best.model} "
                    f"{best.faulty_mean:.2%}: {100 * margin:+.2f} points ({margin / se:+.1f} standard errors) -> "
                    f"{'beats every' if ok else 'does NOT beat every'} {training}-trained reference")
            verdicts.append(line)
            print(line)
        out.append({"faults": label, **r.to_dict()})
    total = time.perf_counter() - start
    print("\n" + "\n".join(verdicts))
    print(f"\nrun time {total:.0f} s (torch threads: {torch.get_num_threads()})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
