#!/usr/bin/env python
"""Injection overhead of resil, measured side by side with a plain forward pass.

Set-up (BENCHMARKS.md): a CNN of 286,100 weights (conv 3->32, 32->64, 64->64, 3x3, padding 1,
ReLU, 2x2 max pooling after each conv, then linear 1024->222->10) on random 3x32x32 inputs,
batch 64, random seeded weights, eval mode, ``torch.set_num_threads(1)``, under
``torch.no_grad()``.

Cases, each timed against its own plain forward (pairs A B, order alternating per repetition,
all cases interleaved in every repetition after a warm-up):

* forward inside ``resil.inject`` with 1, 100 and 100,000 weight bit flips (random elements of
  all weight and bias parameters, random bits 0..31); only the forward is timed;
* set-up + restore of 100,000 weight flips: entering and leaving ``resil.inject`` without a
  forward (FaultSet built beforehand, ``sites=`` given), and the same including building the
  FaultSet from plain arrays; reported as a fraction of one plain forward;
* forward with 1 and 100,000 activation bit flips spread over all activation sites (uniform over
  their elements), ``batch=None`` (every batch element) and per-sample (a random batch element).

Reported: median time per case and the per-pair ratio to the plain forward (median, min-max).
The last line states the headline ratios and whether each target is met:
forward with weight faults <= 1.02x, set-up + restore of 100k weight flips <= 0.10 of a
forward, forward with activation faults <= 1.10x.

Correctness (checked before timing, and the parameters again after every timed ``inject``):
inside the block the parameters equal the saved ones with exactly the expected bits flipped
(an independent numpy reference), activations equal the uncorrupted module output XOR the
expected masks, after exit every parameter is bit-identical to the saved copy
(``torch.equal`` on ``.view(torch.int32)``) and no hook is left; the faulty forward differs from
the clean one in the 100k cases.

Usage::

    python benchmarks/injection_overhead.py            # full run, about 3-5 minutes on 2 cores
    python benchmarks/injection_overhead.py --quick    # CI smoke run, well under 30 s

Exit status: 1 if a correctness check fails; with ``--strict`` also 2 if a target is missed.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

import resil

BATCH = 64
HIDDEN = 222  # makes the model 286,100 weights
TARGET_WEIGHT = 1.02
TARGET_SETUP = 0.10
TARGET_ACT = 1.10


def build_model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 32, 3, padding=1), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(32, 64, 3, padding=1), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
            conv3=nn.Conv2d(64, 64, 3, padding=1), relu3=nn.ReLU(), pool3=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(64 * 4 * 4, HIDDEN), relu4=nn.ReLU(),
            fc2=nn.Linear(HIDDEN, 10),
        )
    )
    return model.eval()


# -- fault sets -----------------------------------------------------------------------------------


@dataclass
class Columns:
    """The plain arrays a FaultSet is built from (kept for the reference computations)."""

    site: np.ndarray  # str
    index: np.ndarray
    bit: np.ndarray
    batch: np.ndarray | None = None

    def fault_set(self) -> resil.FaultSet:
        return resil.FaultSet(site=self.site, index=self.index, bit=self.bit, batch=self.batch)


def spread(rng: np.random.Generator, sites: list, n: int, per_sample: bool = False) -> Columns:
    """``n`` faults uniform over all elements of ``sites``, random bits 0..31."""
    names = np.array([s.name for s in sites])
    sizes = np.array([s.numel for s in sites], dtype=np.int64)
    ends = np.cumsum(sizes)
    flat = rng.integers(0, ends[-1], n)
    k = np.searchsorted(ends, flat, side="right")
    return Columns(names[k], flat - (ends[k] - sizes[k]), rng.integers(0, 32, n), rng.integers(0, BATCH, n) if per_sample else None)


def expected_xor(cols: Columns, name: str, numel: int) -> np.ndarray:
    """Reference: the merged uint32 XOR mask per element of site ``name`` (rows = batch elements
    for per-sample faults, one row for every-sample faults)."""
    sel = cols.site == name
    bits = (np.uint32(1) << cols.bit[sel].astype(np.uint32)).astype(np.uint32)
    if cols.batch is None:
        out = np.zeros((1, numel), dtype=np.uint32)
        np.bitwise_xor.at(out[0], cols.index[sel], bits)
    else:
        out = np.zeros((BATCH, numel), dtype=np.uint32)
        np.bitwise_xor.at(out, (cols.batch[sel], cols.index[sel]), bits)
    return out


# -- correctness ----------------------------------------------------------------------------------


def bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


def params_restored(model: nn.Module, saved: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(bits_of(p), saved[n]) for n, p in model.named_parameters())


def hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def as_u32(t: torch.Tensor) -> np.ndarray:
    return bits_of(t).numpy().view(np.uint32)


def verify(model, x, site_list, saved, clean_out, name, cols: Columns, kind: str, must_differ: bool) -> list[str]:
    """Run one injected forward under independent checks; return the failures (empty = OK)."""
    fails: list[str] = []
    fs = cols.fault_set()
    act_sites = [s for s in site_list if s.batched and (cols.site == s.name).any()]
    before: dict[str, torch.Tensor] = {}
    after: dict[str, torch.Tensor] = {}
    handles = []
    # a hook registered before inject sees the module's true output, one registered inside the
    # block runs after resil's hook and sees the corrupted output
    for s in act_sites:
        handles.append(s.module.register_forward_hook(lambda m, a, o, n=s.name: before.__setitem__(n, o.detach().clone())))
    try:
        with resil.inject(model, fs, sites=site_list):
            for s in act_sites:
                handles.append(s.module.register_forward_hook(lambda m, a, o, n=s.name: after.__setitem__(n, o.detach().clone())))
            out = model(x)
            if kind == "weights":
                for pname, p in model.named_parameters():
                    want = saved[pname].numpy().view(np.uint32).reshape(-1) ^ expected_xor(cols, pname, p.numel())[0]
                    if not np.array_equal(as_u32(p).reshape(-1), want):
                        fails.append(f"{name}: {pname} inside the block is not the saved tensor with the expected bits flipped")
    finally:
        for h in handles:
            h.remove()
    for s in act_sites:
        got = as_u32(after[s.name]).reshape(BATCH, -1)
        want = as_u32(before[s.name]).reshape(BATCH, -1) ^ expected_xor(cols, s.name, s.numel)
        if not np.array_equal(got, want):
            fails.append(f"{name}: {s.name} is not the module output XOR the expected masks "
                         f"({int((got != want).sum())} of {got.size} elements differ)")
    if not params_restored(model, saved):
        fails.append(f"{name}: parameters not bit-identical after inject exited")
    if hooks_left(model):
        fails.append(f"{name}: {hooks_left(model)} forward hook(s) left after inject exited")
    if not torch.equal(bits_of(model(x)), bits_of(clean_out)):
        fails.append(f"{name}: plain forward after inject exited differs from the clean output")
    differs = not torch.equal(bits_of(out), bits_of(clean_out))
    if must_differ and not differs:
        fails.append(f"{name}: the forward with faults equals the clean output")
    return fails


# -- timing ---------------------------------------------------------------------------------------


@dataclass
class Case:
    label: str
    run: Callable[[], float]  # returns the timed seconds
    group: str  # "plain", "weights", "setup", "setup-info", "act"
    times: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke run: few repetitions (< 30 s)")
    ap.add_argument("--reps", type=int, help="interleaved repetitions per case (default 300, quick 6)")
    ap.add_argument("--warmup", type=int, help="warm-up rounds over all cases (default 3, quick 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strict", action="store_true", help="exit 2 if a target is missed")
    args = ap.parse_args()
    reps = args.reps or (6 if args.quick else 300)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    t_start = time.perf_counter()

    torch.set_num_threads(1)
    model = build_model(args.seed)
    x = torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(args.seed + 1))
    site_list = resil.sites(model, x)
    weight_sites = [s for s in site_list if not s.batched]
    act_sites = [s for s in site_list if s.batched]
    n_weights = sum(s.numel for s in weight_sites)
    saved = {n: bits_of(p).clone() for n, p in model.named_parameters()}
    rng = np.random.default_rng(args.seed)

    cols = {
        "w1": spread(rng, weight_sites, 1),
        "w100": spread(rng, weight_sites, 100),
        "w100k": spread(rng, weight_sites, 100_000),
        "a1": spread(rng, act_sites, 1),
        "a100k": spread(rng, act_sites, 100_000),
        "p1": spread(rng, act_sites, 1, per_sample=True),
        "p100k": spread(rng, act_sites, 100_000, per_sample=True),
    }
    fsets = {k: c.fault_set() for k, c in cols.items()}

    torch.autograd.set_grad_enabled(False)
    clean_out = model(x).clone()

    # correctness, before any timing
    checks = [
        ("1 weight flip", "w1", "weights", False), ("100 weight flips", "w100", "weights", False),
        ("100k weight flips", "w100k", "weights", True),
        ("1 activation flip, every sample", "a1", "act", False), ("100k activation flips, every sample", "a100k", "act", True),
        ("1 activation flip, per sample", "p1", "act", False), ("100k activation flips, per sample", "p100k", "act", True),
    ]
    failures: list[str] = []
    for label, key, kind, must_differ in checks:
        failures += verify(model, x, site_list, saved, clean_out, label, cols[key], kind, must_differ)

    restore_failures = 0

    def plain() -> float:
        t0 = time.perf_counter()
        model(x)
        return time.perf_counter() - t0

    def forward_in(fs: resil.FaultSet) -> Callable[[], float]:
        def run() -> float:
            nonlocal restore_failures
            with resil.inject(model, fs, sites=site_list):
                t0 = time.perf_counter()
                model(x)
                t = time.perf_counter() - t0
            if not params_restored(model, saved):
                restore_failures += 1
            return t
        return run

    def setup_restore() -> float:
        nonlocal restore_failures
        fs = fsets["w100k"]
        t0 = time.perf_counter()
        with resil.inject(model, fs, sites=site_list):
            pass
        t = time.perf_counter() - t0
        if not params_restored(model, saved):
            restore_failures += 1
        return t

    def build_setup_restore() -> float:
        nonlocal restore_failures
        c = cols["w100k"]
        t0 = time.perf_counter()
        with resil.inject(model, c.fault_set(), sites=site_list):
            pass
        t = time.perf_counter() - t0
        if not params_restored(model, saved):
            restore_failures += 1
        return t

    a1_site = str(cols["a1"].site[0])
    p1_site = str(cols["p1"].site[0])
    cases = [
        Case("plain forward", plain, "plain"),
        Case("forward, 1 weight flip", forward_in(fsets["w1"]), "weights"),
        Case("forward, 100 weight flips", forward_in(fsets["w100"]), "weights"),
        Case("forward, 100k weight flips", forward_in(fsets["w100k"]), "weights"),
        Case("set-up + restore, 100k weight flips", setup_restore, "setup"),
        Case("  same, incl. building the FaultSet", build_setup_restore, "setup-info"),
        Case("forward, 1 act. flip, every sample", forward_in(fsets["a1"]), "act"),
        Case("forward, 100k act. flips, every sample", forward_in(fsets["a100k"]), "act"),
        Case("forward, 1 act. flip, per sample", forward_in(fsets["p1"]), "act"),
        Case("forward, 100k act. flips, per sample", forward_in(fsets["p100k"]), "act"),
    ]
    base, others = cases[0], cases[1:]

    for _ in range(warmup):
        for c in cases:
            c.run()
    gc.collect()
    gc.disable()
    try:
        for r in range(reps):
            for c in others:
                if r % 2 == 0:
                    a, b = base.run(), c.run()
                else:
                    b, a = c.run(), base.run()
                base.times.append(a)
                c.times.append(b)
                c.ratios.append(b / a)
            gc.collect()
    finally:
        gc.enable()
    if restore_failures:
        failures.append(f"parameters not bit-identical after {restore_failures} timed inject block(s)")

    # -- report ------------------------------------------------------------------------------
    print(f"resil {resil.__version__}, torch {torch.__version__}, numpy {np.__version__}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPU(s), torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    print(f"model: CNN, {n_weights:,} weights in {len(weight_sites)} tensors, {len(act_sites)} activation sites "
          f"({sum(s.numel for s in act_sites):,} values per sample), batch {BATCH}, {reps} interleaved pairs per case "
          f"after {warmup} warm-up round(s){' (--quick)' if args.quick else ''}")
    distinct = len(np.unique(cols["w100k"].site.astype(object) + ":" + cols["w100k"].index.astype(str)))
    print(f"distinct elements flipped: 100k weight set {distinct:,}; "
          f"1-flip activation cases hit {a1_site} (every sample) and {p1_site} (per sample)")
    if failures:
        print("correctness: FAILED")
        for f in failures:
            print(f"  - {f}")
    else:
        print("correctness: OK (expected bits flipped inside each block, parameters bit-identical and no hooks after exit, "
              "100k faults change the output)")

    def target_of(c: Case) -> float | None:
        return {"weights": TARGET_WEIGHT, "setup": TARGET_SETUP, "act": TARGET_ACT}.get(c.group)

    rows = [("case", "median ms", "ratio", "ratio min-max", "target", "")]
    rows.append((base.label, f"{np.median(base.times) * 1e3:.2f}", "1.000", "", "", ""))
    for c in others:
        med = float(np.median(c.ratios))
        tgt = target_of(c)
        rows.append((
            c.label, f"{np.median(c.times) * 1e3:.2f}", f"{med:.3f}", f"{min(c.ratios):.3f}-{max(c.ratios):.3f}",
            f"<= {tgt:.2f}" if tgt else "", ("met" if med <= tgt else "MISSED") if tgt else "",
        ))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for i, r in enumerate(rows):
        print("  ".join(v.ljust(w[j]) if j == 0 else v.rjust(w[j]) for j, v in enumerate(r)).rstrip())
        if i == 0:
            print("  ".join("-" * n for n in w))

    def verdict(group: str, tgt: float) -> tuple[str, bool]:
        meds = [float(np.median(c.ratios)) for c in others if c.group == group]
        ok = max(meds) <= tgt
        return "/".join(f"{m:.3f}" for m in meds), ok

    wr, wok = verdict("weights", TARGET_WEIGHT)
    sr, sok = verdict("setup", TARGET_SETUP)
    ar, aok = verdict("act", TARGET_ACT)
    yn = {True: "met", False: "NOT met"}
    print(f"\n[{time.perf_counter() - t_start:.0f} s] headline: forward with 1/100/100k weight flips {wr}x "
          f"(target <= {TARGET_WEIGHT}: {yn[wok]}); "
          f"set-up + restore of 100k weight flips {sr} of a forward (target <= {TARGET_SETUP}: {yn[sok]}); "
          f"forward with activation flips 1/100k every sample, 1/100k per sample {ar}x (target <= {TARGET_ACT}: {yn[aok]}); "
          f"correctness {'OK' if not failures else 'FAILED'}")
    if failures:
        return 1
    if args.strict and not (wok and sok and aok):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
