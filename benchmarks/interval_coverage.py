"""Coverage of confidence intervals for the mean of per-scenario fractions, on real campaigns.

Design (cheap, and exact about what it measures): one large campaign per workload is run once
(``--big`` scenarios, cached under ``--cache``; a second run reads them back), its per-scenario
outcome table is the population and its mean the truth. Each repetition draws ``n`` scenarios
from that table without replacement and computes every candidate interval from them; coverage is
the share of repetitions whose interval holds the truth, width the mean width (relative to
Wilson's, the interval resil used before). Workloads: single weight bit flips on the dense CNN
and int8 (failure fraction per scenario), and BER at 1e-5 and 1e-4 on dense, int8 and the SNN
(accuracy per scenario), all on the 359 digits test images.

Candidates:

- ``wilson``: Wilson over scenarios with the summed fractions as successes (what resil used);
- ``t``: Student t with the finite population correction;
- ``bca``: BCa bootstrap over scenarios (scipy.stats.bootstrap, 999 resamples);
- ``bernstein``: the empirical Bernstein bound (Maurer & Pontil 2009, Thm 4), alpha/2 per side;
- ``betting``: the anytime-valid betting confidence sequence (Waudby-Smith & Ramdas 2024) at n,
  :func:`resil.statistics.confidence_sequence` (what adaptive campaigns stop on);
- ``resil``: the rule resil applies, :func:`resil.statistics.scenario_estimate`: Wilson for
  single-fault scenarios, else t never narrower than what n scenarios cannot rule out.

The adaptive stop: per workload, up to 200 simulated adaptive campaigns draw scenarios in
random order from the table in rounds of 50 and stop once the betting confidence sequence
(:func:`resil.statistics.sequence_interval`, what ``[sampler] stop_margin`` stops on) has a
half-width <= 0.02, or at 2,000 scenarios; their coverage is that interval's, next to the
coverage of the fixed-n rule's interval computed at the same data-chosen n (which stopping on
the data does not license).

    .venv/bin/python benchmarks/interval_coverage.py             # about 10 minutes the first time
    .venv/bin/python benchmarks/interval_coverage.py --reps 200 --sizes 20 40
    .venv/bin/python benchmarks/interval_coverage.py --cache runs/interval_coverage   # reuse the large campaigns
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

import resil.campaign as rc
from resil.statistics import confidence_sequence, scenario_estimate, sequence_interval, t_interval, wilson_interval

WORKLOADS = {  # name: (model, sampler, rate, metric)
    "single dense": ("dense-cnn", "uniform", None, "failure"),
    "single int8": ("int8", "uniform", None, "failure"),
    "ber 1e-5 dense": ("dense-cnn", "ber", 1e-5, "accuracy"),
    "ber 1e-4 dense": ("dense-cnn", "ber", 1e-4, "accuracy"),
    "ber 1e-5 int8": ("int8", "ber", 1e-5, "accuracy"),
    "ber 1e-4 int8": ("int8", "ber", 1e-4, "accuracy"),
    "ber 1e-5 snn": ("snn", "ber", 1e-5, "accuracy"),
    "ber 1e-4 snn": ("snn", "ber", 1e-4, "accuracy"),
}


STOP, ROUND, MOST = 0.02, 50, 2000


def population(name: str, big: int, cache: Path) -> tuple[np.ndarray, bool]:
    """The per-scenario fractions of the workload's large campaign (run once, then read back),
    and whether its scenarios hold single faults."""
    model, kind, rate, metric = WORKLOADS[name]
    spec = rc.CampaignSpec(name=name, seed=7, model=rc.ModelSpec((model,)), sites=rc.SiteSpec(kinds=("weight",)),
                           sampler=rc.SamplerSpec(kind=kind, rates=(rate,) if rate else (), scenarios=big),
                           run=rc.RunSpec(shard_size=500))
    t = rc.run(spec, cache / name.replace(" ", "_")).table().to_pandas()
    bad = t.critical + t.non_finite if metric == "failure" else t.correct
    return (bad / t.inputs).to_numpy(dtype=float), bool((t.n_faults == 1).all())


def bca(x: np.ndarray, confidence: float) -> tuple[float, float]:
    from scipy.stats import bootstrap

    if np.ptp(x) == 0:
        return float(x[0]), float(x[0])
    r = bootstrap((x,), np.mean, confidence_level=confidence, method="BCa", n_resamples=999, rng=np.random.default_rng(0))
    low, high = r.confidence_interval
    return (float(x.mean()), float(x.mean())) if math.isnan(low) else (float(low), float(high))


def bernstein(x: np.ndarray, confidence: float) -> tuple[float, float]:
    n, log_term = x.size, math.log(4 / (1 - confidence))
    half = math.sqrt(2 * x.var(ddof=1) * log_term / n) + 7 * log_term / (3 * (n - 1))
    return max(0.0, x.mean() - half), min(1.0, x.mean() + half)


def methods(single: bool, big: int):
    def resil_rule(x: np.ndarray, c: float) -> tuple[float, float]:
        e = scenario_estimate(x, c, population=big, single_fault=single)
        return e.low, e.high

    return {
        "wilson": lambda x, c: wilson_interval(float(x.sum()), x.size, c),
        "t": lambda x, c: t_interval(x, c, population=big),
        "bca": bca,
        "bernstein": bernstein,
        "betting": lambda x, c: tuple(float(v[-1]) for v in confidence_sequence(x, c)),
        "resil": resil_rule,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=400, help="repetitions per workload and size (default 400)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 40, 100, 400], help="scenarios per repetition")
    parser.add_argument("--big", type=int, default=5000, help="scenarios of each large campaign (single flips: 4x)")
    parser.add_argument("--cache", type=Path, default=Path("runs/interval_coverage"))
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    confidence = 0.95
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    print(f"nominal {confidence:.0%}; {args.reps} repetitions per row; truth = mean of the large campaign")
    print(f"{'workload':16s} {'N':>6s} {'truth':>7s} {'n':>4s}  " + "  ".join(f"{m:>14s}" for m in methods(False, 1)))
    print(f"{'':16s} {'':>6s} {'':>7s} {'':>4s}  " + "  ".join(f"{'cover  width':>14s}" for _ in methods(False, 1)))
    for name in args.workloads:
        big = args.big * (4 if WORKLOADS[name][1] == "uniform" else 1)
        x, single = population(name, big, args.cache)
        truth = float(x.mean())
        ms = methods(single, x.size)
        for n in args.sizes:
            cover = {m: 0 for m in ms}
            width = {m: 0.0 for m in ms}
            for _ in range(args.reps):
                sample = x[rng.choice(x.size, n, replace=False)]
                for m, f in ms.items():
                    low, high = f(sample, confidence)
                    cover[m] += low <= truth <= high
                    width[m] += high - low
            w0 = width["wilson"] or 1.0
            cells = [f"{cover[m] / args.reps:6.1%} {width[m] / w0:6.2f}" for m in ms]
            print(f"{name:16s} {x.size:6d} {truth:7.4f} {n:4d}  " + "  ".join(cells), flush=True)
    print("cover: share of repetitions whose interval holds the truth; width: mean width / Wilson's mean width")
    reps = min(args.reps, 200)
    print(f"\nadaptive stop (half-width <= {STOP}, rounds of {ROUND}, at most {MOST}); {reps} campaigns per row:")
    print(f"{'workload':16s} {'truth':>7s} {'mean n':>7s} {'stopped':>8s}  {'betting cover':>13s}  {'fixed-n rule at that n':>22s}")
    for name in args.workloads:
        if WORKLOADS[name][1] != "ber":
            continue
        x, _ = population(name, args.big, args.cache)
        truth = float(x.mean())
        cover = naive = stopped = 0
        ns = []
        for _ in range(reps):
            order = x[rng.permutation(x.size)][:MOST]
            lows, highs = confidence_sequence(order)  # the whole path once (grid ends); the stop round exactly
            rounds = [n for n in range(ROUND, MOST + 1, ROUND) if (highs[n - 1] - lows[n - 1]) / 2 <= STOP + 1 / 800]
            n = MOST
            for n in [*rounds, MOST]:
                low, high = sequence_interval(order[:n])
                if (high - low) / 2 <= STOP:
                    stopped += 1
                    break
            ns.append(n)
            cover += low <= truth <= high
            e = scenario_estimate(order[:n], population=x.size)
            naive += e.low <= truth <= e.high
        print(f"{name:16s} {truth:7.4f} {np.mean(ns):7.0f} {stopped / reps:8.0%}  {cover / reps:13.1%}  {naive / reps:22.1%}",
              flush=True)
    print(f"run time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
