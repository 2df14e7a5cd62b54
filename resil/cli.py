"""Command line: ``resil sites MODEL``, ``resil demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .discovery import sites
from .errors import FaultError
from .fault_models import StuckAt
from .faults import Fault, FaultSet
from .injection import inject
from .loading import load_model

if TYPE_CHECKING:
    from .campaign import CampaignSpec


def model_and_example(spec: str) -> tuple[nn.Module, torch.Tensor | None]:
    """The model, and two example inputs when it is a bundled reference model."""
    import resil.models as rm

    return load_model(spec), (rm.dataset(spec).x_test[:2] if spec in rm.names() else None)


def cmd_sites(args: argparse.Namespace) -> int:
    model, example = model_and_example(args.model)
    if args.input_shape:
        example = torch.zeros(2, *(int(d) for d in args.input_shape.split(",")))
    print(sites(model, example).table())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import resil.models as rm

    torch.set_num_threads(1)
    model = rm.load(args.model)
    data = rm.dataset(args.model)
    x, y = data.x_test, data.y_test
    site_list = sites(model, x[:2])
    print(f"model {args.model}: {rm.info(args.model).description}, recorded test accuracy {rm.info(args.model).accuracy:.2%}\n")
    print(site_list.table(), "\n")
    rng = np.random.default_rng(args.seed)
    weights = [s for s in site_list if s.kind in ("weight", "bias")]
    pick = rng.integers(0, len(weights), args.random_flips)
    random_flips = FaultSet(
        site=[weights[p].name for p in pick],
        index=[int(rng.integers(0, weights[p].numel or 1)) for p in pick],
        bit=rng.integers(0, 32, args.random_flips),
    )
    scenarios: list[tuple[str, Fault | FaultSet]] = [
        ("conv1.weight[0,0,1,1] bit 30 flip", Fault("conv1.weight", (0, 0, 1, 1), bit=30)),
        ("conv1.weight[0,0,1,1] bit 22 flip", Fault("conv1.weight", (0, 0, 1, 1), bit=22)),
        ("fc2.bias[3] bit 30 stuck-at-1", Fault("fc2.bias", 3, bit=30, model=StuckAt(1))),
        ("conv2:out[5,2,2] bit 30 flip, every image", Fault("conv2:out", (5, 2, 2), bit=30)),
        (f"{args.random_flips} random weight bit flips", random_flips),
    ]
    with torch.no_grad():
        golden = model(x)
        print(f"{'fault':45s} {'accuracy':>9s} {'top-1 changed':>14s} {'max |logit change|':>19s}")
        print(f"{'none (golden run)':45s} {float((golden.argmax(1) == y).float().mean()):9.2%} {'-':>14s} {'-':>19s}")
        shown = None
        for label, faults in scenarios:
            with inject(model, faults, sites=site_list):
                out = model(x)
            acc = float((out.argmax(1) == y).float().mean())
            changed = int((out.argmax(1) != golden.argmax(1)).sum())
            delta = (out - golden).abs().nan_to_num(float("inf")).max().item()
            print(f"{label:45s} {acc:9.2%} {changed:8d}/{len(x):<5d} {delta:19.4g}")
            shown = shown or (changed and (label, out))
    if shown:
        label, out = shown
        i = int(((out.argmax(1) != golden.argmax(1)) & (golden.argmax(1) == y)).nonzero()[0])
        np.set_printoptions(precision=2, suppress=True, linewidth=120)
        print(f"\ntest image {i} (label {int(y[i])}) under '{label}':")
        print("  clean logits :", golden[i].numpy(), "-> class", int(golden[i].argmax()))
        print("  faulty logits:", out[i].numpy(), "-> class", int(out[i].argmax()))
    after = model(x)
    print("\nafter the inject blocks the model is restored:", bool(torch.equal(after, golden)))
    return 0


def _campaign_dirs(spec: "CampaignSpec", out: Path) -> list[tuple["CampaignSpec", Path]]:
    """One directory per model: ``out`` itself for one model, ``out/<model>`` for several."""
    specs = spec.per_model()
    return [(s, out if len(specs) == 1 else out / s.model.names[0].replace(":", "_").replace("/", "_")) for s in specs]


def _run_all(jobs: list[tuple["CampaignSpec | None", Path]], args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .campaign import make_executor, resume, run

    for spec, out in jobs:
        label = spec.name if spec else out.name
        with tqdm(desc=label, unit="scen", dynamic_ncols=True) as bar:
            def progress(n: int, remaining: int) -> None:
                if remaining:
                    bar.reset(total=remaining)
                bar.update(n)

            executor = make_executor(args.executor, args.workers, args.address)
            store = run(spec, out, executor, progress) if spec else resume(out, executor, progress)
        m = store.manifest()
        print(f"{label}: {m['scenarios']} scenarios x {m['inputs']} inputs -> {out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .campaign import load_spec

    specs = [load_spec(f) for f in args.spec]  # every file checked before any work starts
    out = Path(args.out)
    jobs = [job for spec in specs for job in _campaign_dirs(spec, out if len(specs) == 1 else out / spec.name)]
    _run_all(jobs, args)
    if args.report:
        print(write_report_for([d for _, d in jobs], Path(args.report)))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from .campaign import Store

    jobs: list[tuple[CampaignSpec | None, Path]] = []
    for d in map(Path, args.dirs):
        found = [d] if (d / "manifest.json").exists() else sorted(p.parent for p in d.glob("*/manifest.json"))
        if not found:
            raise FaultError(f"{d} holds no campaign (no manifest.json in it or its subdirectories)")
        jobs += [(None, f) for f in found]
        for f in found:
            Store(f).manifest()
    return _run_all(jobs, args)


def write_report_for(dirs: list[Path], out: Path) -> Path:
    """The report of the campaigns in ``dirs`` (each a campaign or a parent of several)."""
    from .report import write_report

    found: list[Path] = []
    for d in dirs:
        found += [d] if (d / "manifest.json").exists() else sorted(p.parent for p in d.glob("*/manifest.json"))
    if not found:
        raise FaultError(f"no campaign directory among {[str(d) for d in dirs]}")
    return write_report(found, out)


def cmd_report(args: argparse.Namespace) -> int:
    print(write_report_for([Path(d) for d in args.dirs], Path(args.out)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import dataclasses

    from .analysis.compare import DEFAULT, QUICK, compare

    base = QUICK if args.quick else DEFAULT
    changes: dict[str, object] = {k: getattr(args, k) for k in ("scenarios", "trials", "inputs", "seed") if getattr(args, k) is not None}
    if args.rates is not None:
        rates = []
        for text in args.rates.split(","):
            try:
                rates.append(float(text))
            except ValueError:
                raise FaultError(f"--rates: {text.strip()!r} is not a number; give comma-separated rates such as 1e-6,1e-5,1e-4") from None
        changes["rates"] = tuple(rates)
    settings = dataclasses.replace(base, **changes)  # type: ignore[arg-type]
    models = dict(_labelled(m) for m in args.models) if args.models else None
    data = None
    if args.data:
        from .campaign.sources import load_data

        data = load_data(args.data)
    print(compare(models, args.out, data=data, settings=settings).summary())
    return 0


def _labelled(arg: str) -> tuple[str, str]:
    """``label=source`` or a bare source (its own label)."""
    label, eq, source = arg.partition("=")
    if not eq:
        return arg, arg
    if not label or not source:
        raise FaultError(f"model {arg!r}: give label=source, e.g. pruned=mynets:pruned50")
    return label, source


def _executor_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=("serial", "process", "dask"), default="serial", help="where shards run (default: this process)")
    p.add_argument("--workers", type=int, default=2, help="processes for the process and dask executors")
    p.add_argument("--address", help="address of a running Dask scheduler (dask executor)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resil", description="Fault injection for dense, spiking, pruned and quantized PyTorch networks.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sites", help="list the fault sites of a model")
    s.add_argument("model", help="bundled reference model name or package.module:factory")
    s.add_argument("--input-shape", help="per-sample input shape, e.g. 1,8,8, to learn activation shapes")
    s.set_defaults(run=cmd_sites)
    d = sub.add_parser("demo", help="inject a few faults into a reference model and print clean vs faulty outputs")
    d.add_argument("--model", default="dense-cnn")
    d.add_argument("--random-flips", type=int, default=1000)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(run=cmd_demo)
    r = sub.add_parser("run", help="run a campaign file into a result directory")
    r.add_argument("spec", nargs="+", help="campaign TOML file(s)")
    r.add_argument("--out", required=True,
                   help="result directory (with several files, one subdirectory per file; with several models, one per model)")
    r.add_argument("--report", help="write the report of these campaigns into this directory afterwards")
    _executor_options(r)
    r.set_defaults(run=cmd_run)
    re = sub.add_parser("resume", help="run the missing shards of stored campaigns")
    re.add_argument("dirs", nargs="+")
    _executor_options(re)
    re.set_defaults(run=cmd_resume)
    rp = sub.add_parser("report", help="write PNG figures and one HTML report for campaigns (side by side)")
    rp.add_argument("dirs", nargs="+", help="campaign directories (or parents of several)")
    rp.add_argument("--out", default="report", help="report directory (default: ./report)")
    rp.set_defaults(run=cmd_report)
    cp = sub.add_parser("compare", help="compare the robustness of several models side by side (PVF per layer, accuracy vs bit error rate)")
    cp.add_argument("models", nargs="*", help="reference model names, package.module:factory or file.py:factory, each optionally "
                    "labelled as label=source (default: every reference model)")
    cp.add_argument("--data", help="evaluation data for every model: package.module:function, file.py:function, a .pt or .npz file "
                    "(default: each bundled model's test split)")
    cp.add_argument("--out", required=True, help="result directory: one campaign directory per model, the report in OUT/report")
    cp.add_argument("--quick", action="store_true", help="fewer rates, scenarios and PVF trials (about a minute)")
    cp.add_argument("--rates", help="comma-separated bit error rates, e.g. 1e-6,1e-5,1e-4")
    cp.add_argument("--scenarios", type=int, help="BER scenarios per rate")
    cp.add_argument("--trials", type=int, help="PVF trials (single bit flips) per layer")
    cp.add_argument("--inputs", type=int, help="evaluation inputs (the first N; default all)")
    cp.add_argument("--seed", type=int, help="random seed")
    cp.set_defaults(run=cmd_compare)
    from .training.cli import add_parser as add_harden_parser

    add_harden_parser(sub)  # resil harden ftt|fat|search
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``resil`` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (FaultError, KeyError) as e:
        print(f"resil: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
