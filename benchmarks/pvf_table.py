"""PVF tables (Parameter Vulnerability Factor, Meta arXiv 2405.01741) for three model kinds.

Single bit flips (SBF) in float32 parameters, one fault per trial; a trial is scored as the share
of the evaluation inputs whose output is incorrect (``per_trial="fraction"``: PVF is the
probability that a random fault/input pair gives an incorrect output); 95% Wilson intervals.

- the dense reference CNN on the 359 digits test images (incorrect: top-1 differs from golden);
- a DLRM-like CTR model on 512 synthetic test clicks (incorrect: |CTR - golden CTR| > threshold,
  or non-finite), with the ordering check top MLP vs embedding tables;
- a 2-layer transformer encoder on the digits test images (rows as tokens; top-1 criterion).

Then the per-bit summary of every model (pooled over its per-layer trials) and the share of the
incorrect outcomes due to the sign and exponent-MSB bits.

    python benchmarks/pvf_table.py            # N = 2,000 per CNN layer, about 2-4 minutes on one core
    python benchmarks/pvf_table.py --quick    # N / 10, a smoke run
"""

from __future__ import annotations

import argparse
import time

import torch

import resil
import resil.models as rm
from resil.analysis.pvf import Deviation, PVFConfig, PVFResult, pvf
from resil.models import synthetic as syn

MARGIN = 0.01


def per_bit_table(results: dict[str, PVFResult]) -> str:
    per = {name: r.by_bit() for name, r in results.items()}
    head = f"{'bit':>9s}" + "".join(f"  {name:>29s}" for name in results)
    lines = [head, "-" * len(head)]
    for b in range(31, -1, -1):
        label = {31: "31 sign", 30: "30 expMSB", 23: "23 expLSB"}.get(b, str(b))
        row = f"{label:>9s}"
        for name in results:
            e = per[name].get(b)
            row += f"  {e.pvf:7.4f} [{e.low:6.4f},{e.high:6.4f}] {e.trials:4d}" if e else f"  {'-':>29s}"
        lines.append(row)
    lines.append("(each cell: PVF [95% Wilson] N; trials pooled over the model's per-layer runs)")
    for name, bits in per.items():
        total = sum(e.incorrect for e in bits.values())
        top = max(bits, key=lambda b: bits[b].pvf)
        share = (bits[30].incorrect + bits[31].incorrect) / total if total else float("nan")
        mant = sum(bits[b].incorrect for b in range(23)) / total if total else float("nan")
        lines.append(f"{name}: highest-PVF bit = {top}; bits 30+31 give {share:.1%} of all incorrect outcomes "
                     f"(bit 30 alone {bits[30].incorrect / total:.1%}), mantissa bits 0-22 {mant:.1%}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the trials")
    parser.add_argument("--threshold", type=float, default=0.05, help="DLRM: CTR deviation counted as incorrect (default 0.05)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    scale = 10 if args.quick else 1
    crit = Deviation(args.threshold)
    start = time.perf_counter()
    print(f"torch {torch.__version__}, resil {resil.__version__}, 1 thread; single bit flips in float32 parameters, "
          f"one per trial, trial = share of inputs incorrect; Wilson 95%; last columns: Leveugle N for +-{MARGIN:.0%} "
          "(normal approximation with finite population correction) at p = 0.5 and at p = the interval's upper end\n")
    layers: dict[str, PVFResult] = {}

    # (a) dense CNN ------------------------------------------------------------------------
    t0 = time.perf_counter()
    cnn, digits = rm.load("dense-cnn"), rm.dataset("digits")
    layers["dense-cnn"] = pvf(cnn, digits.x_test, "layer", config=PVFConfig(trials=2000 // scale, seed=args.seed))
    fast = time.perf_counter() - t0
    print(layers["dense-cnn"].format(f"(a) dense-cnn, {len(digits.x_test)} digits test images, criterion: top-1 differs from golden",
                                     MARGIN))
    t1 = time.perf_counter()
    plain = pvf(cnn, digits.x_test, "layer", config=PVFConfig(trials=2000 // scale, seed=args.seed, mode="plain"), progress=False)
    slow = time.perf_counter() - t1
    same = plain.records.equals(layers["dense-cnn"].records)
    print(f"    PVF step: fast {fast:.1f} s, plain (one full forward per trial) {slow:.1f} s, speed-up {slow / fast:.1f}x; "
          f"records {'identical' if same else 'DIFFER'}\n")
    if not same:
        raise SystemExit("fast and plain PVF records differ")

    # (b) DLRM-like ------------------------------------------------------------------------
    t0 = time.perf_counter()
    dlrm, clicks = syn.load("synthetic-dlrm"), syn.click_data()
    x = clicks.x_test[:512]
    components = {"embedding tables": "emb.*", "bottom MLP": "bottom.*", "top MLP": "top.*"}
    comp = pvf(dlrm, x, components, config=PVFConfig(trials=2000 // scale, criterion=crit, seed=args.seed))
    print(comp.format(f"(b) synthetic-dlrm (test AUC {syn.metric('synthetic-dlrm'):.3f}), {len(x)} test clicks, criterion: {crit} "
                      "(CTR), non-finite incorrect; by component", MARGIN))
    layers["synthetic-dlrm"] = pvf(dlrm, x, "layer", config=PVFConfig(trials=1000 // scale, criterion=crit, seed=args.seed))
    print(layers["synthetic-dlrm"].format("    by layer", MARGIN))
    anyone = pvf(dlrm, x, components, config=PVFConfig(trials=1000 // scale, criterion=crit, per_trial="any", seed=args.seed))
    print(anyone.format("    by component, per_trial='any' (a trial is incorrect if ANY of the 512 inputs is)"))
    top, emb = comp["top MLP"], comp["embedding tables"]
    verdict = ("REPRODUCED (intervals disjoint)" if top.low > emb.high else
               "point estimates ordered, intervals overlap" if top.pvf > emb.pvf else "NOT reproduced")
    print(f"\nDLRM ordering check (published: top-MLP layers more vulnerable than embedding tables):\n"
          f"    PVF(top MLP) = {top.pvf:.4f} [{top.low:.4f}, {top.high:.4f}]  vs  PVF(embedding tables) = {emb.pvf:.4f} "
          f"[{emb.low:.4f}, {emb.high:.4f}]  ratio {top.pvf / max(emb.pvf, 1e-12):.1f}x  -> {verdict}\n"
          f"    with per_trial='any': top MLP {anyone['top MLP'].pvf:.4f} vs embeddings {anyone['embedding tables'].pvf:.4f} "
          "(a corrupted embedding row hurts only the inputs that look it up; 'any' over 512 inputs hides that locality)")
    print(f"    run time {time.perf_counter() - t0:.1f} s\n")

    # (c) transformer -----------------------------------------------------------------------
    t0 = time.perf_counter()
    tf = syn.load("synthetic-transformer")
    parts = {"embedding (token + position)": ["embed.*", "pos.*"], "attention (in_proj, out_proj)": "*.self_attn.*",
             "feed-forward (linear1, linear2)": ["*.linear1.*", "*.linear2.*"], "layer norms": ["*norm1.*", "*norm2.*", "norm.*"],
             "classifier head": "head.*"}
    tcomp = pvf(tf, digits.x_test, parts, config=PVFConfig(trials=1000 // scale, seed=args.seed))
    print(tcomp.format(f"(c) synthetic-transformer (2 x TransformerEncoderLayer, d_model 32; "
                       f"test accuracy {syn.metric('synthetic-transformer'):.2%}), "
                       f"{len(digits.x_test)} digits test images, top-1 criterion; by component", MARGIN))
    layers["synthetic-transformer"] = pvf(tf, digits.x_test, "layer", config=PVFConfig(trials=400 // scale, seed=args.seed))
    print(layers["synthetic-transformer"].format("    by layer (module)", MARGIN))
    print(f"    run time {time.perf_counter() - t0:.1f} s\n")

    # per-bit summary -------------------------------------------------------------------------
    print("Per-bit PVF (float32: bit 31 sign, 30-23 exponent, 22-0 mantissa)")
    print(per_bit_table(layers))
    print(f"\ntotal run time {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
