"""Semi-analytical vulnerability factors (DeepVigor+ style) vs reference fault injection.

For every Conv2d / Linear layer of a reference model (default ``dense-cnn``) and both fault modes
(weight bit flips; MAC-operand bit flips, i.e. activation mode), on the same evaluation inputs
(the first 100 test images by default):

- analytical: :class:`resil.analysis.VulnerabilityAnalysis` (VVR search + error sets); weight
  mode analyses every channel (``--weight-sample`` for DeepVigor+'s sampled mode), activation mode
  the sampled mode (``--ratio`` of the channels, ``--positions`` per channel; DeepVigor+'s
  default is 0.1 and log2(H*W));
- reference: :func:`resil.analysis.fault_injection_vf`, real weight bit flips (every one of the 32
  bits) or the operand error added to its single output neuron; exhaustive when the layer has at
  most ``--exhaustive`` faults, else statistical FI sized by Leveugle's formula for a margin of
  0.5 pp at 99% confidence with p from a 2,000-fault pilot (Wilson upper bound, 99%);
- forward passes: one pass = one batched forward over the evaluation inputs (rows evaluated /
  inputs; both methods run only the layers after the analysed one). Leveugle SFI at e = 1%,
  t = 2.58 is sized per layer and mode on the same fault space.

    .venv/bin/python benchmarks/vf_accuracy.py            # about 5 minutes on one core
    .venv/bin/python benchmarks/vf_accuracy.py --quick    # fc layers only, smaller FI samples
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import resil.models as rm
from resil.analysis.vf_reference import fault_injection_vf, population, summarize
from resil.analysis.vulnerability import Sampling, VulnerabilityAnalysis
from resil.statistics import leveugle_sample_size, wilson_interval


def reference(va: VulnerabilityAnalysis, layer: str, mode: str, exhaustive: int, pilot: int, margin: float, seed: int):
    lf = va.faults(layer)
    N = population(lf, mode)
    if exhaustive >= N:
        return fault_injection_vf(lf, mode, None), "exhaustive"
    n_max = leveugle_sample_size(N, margin=margin, confidence=0.99, p=0.5)
    ids = np.random.default_rng(seed).choice(N, n_max, replace=False)
    first = fault_injection_vf(lf, mode, ids[:pilot])
    p_plan = float(wilson_interval(round(first.value * pilot), pilot, confidence=0.99)[1])
    n = max(pilot, leveugle_sample_size(N, margin=margin, confidence=0.99, p=min(0.5, max(p_plan, 1e-3))))
    if n == pilot:
        return first, f"SFI n={n}"
    rest = fault_injection_vf(lf, mode, ids[pilot:n])  # the pilot's faults are the first of the sample
    bits = lf.weight_encoding.bits if mode == "weight" else lf.operand_encoding.bits
    ids_n = ids[:n]
    res = summarize(np.concatenate([first.outcomes, rest.outcomes]), ids_n, ids_n % bits, N, bits, first.passes + rest.passes)
    return res, f"SFI n={n}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dense-cnn")
    parser.add_argument("--inputs", type=int, default=100, help="evaluation inputs (first N test images)")
    parser.add_argument("--ratio", type=float, default=0.25, help="activation mode: share of channels analysed")
    parser.add_argument("--positions", default="log2", help="activation mode: positions per channel ('log2' or a number)")
    parser.add_argument("--weight-sample", type=float, default=None, help="weight mode: channel ratio (default: all channels)")
    parser.add_argument("--exhaustive", type=int, default=25_000, help="exhaustive reference FI up to this many faults")
    parser.add_argument("--margin", type=float, default=0.005, help="SFI margin of the reference (99%% confidence)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fc layers only, reference margin 1 pp")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model, data = rm.load(args.model), rm.dataset("digits")
    x = data.x_test[: args.inputs]
    va = VulnerabilityAnalysis(model, x)
    layers = va.layers()
    if args.quick:
        layers, args.margin = [n for n in layers if n.startswith("fc")], 0.01
    positions = args.positions if args.positions == "log2" else int(args.positions)
    act_sample = Sampling(channel_ratio=args.ratio, positions=positions, seed=args.seed)
    w_sample = None if args.weight_sample is None else Sampling(channel_ratio=args.weight_sample, seed=args.seed)
    head = (f"{'layer':6} {'mode':10} {'analysed':>13} {'LVF an. %':>9} {'LVF FI %':>9} {'+-99%':>6} {'|err| pp':>8} "
            f"{'passes an.':>10} {'passes FI':>10} {'reference':>14} {'Leveugle n':>10}")
    print(f"model {args.model}, {len(x)} evaluation inputs (first test images); pass = one batched forward over them")
    print(head)
    print("-" * len(head))
    rows = []
    for layer in layers:
        for mode in ("weight", "activation"):
            sample = w_sample if mode == "weight" else act_sample
            an = va.layer(layer, mode, sample=sample)
            ref, how = reference(va, layer, mode, args.exhaustive, 2000, args.margin, args.seed)
            lev = leveugle_sample_size(an.sites, margin=0.01, t=2.58)
            err = abs(an.value - ref.value) * 100
            what = f"{len(an.units)} {'ch' if mode == 'weight' else 'neur'}"
            rows.append((an.passes, ref.passes, lev, err))
            print(f"{layer:6} {mode:10} {what:>13} {an.value * 100:9.3f} {ref.value * 100:9.3f} {ref.margin * 100:6.3f} "
                  f"{err:8.3f} {an.passes:10.1f} {ref.passes:10.0f} {how:>14} {lev:10d}", flush=True)
    a = np.array(rows)
    print("-" * len(head))
    print(f"mean |error| {a[:, 3].mean():.3f} pp (max {a[:, 3].max():.3f} pp); forward passes: analytical {a[:, 0].sum():.0f}, "
          f"reference FI {a[:, 1].sum():.0f}, Leveugle SFI (e=1%, t=2.58, per layer and mode) {a[:, 2].sum():.0f} "
          f"-> {a[:, 2].sum() / a[:, 0].sum():.1f}x fewer than Leveugle SFI")
    print(f"run time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
