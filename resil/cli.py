"""Command line: ``resil sites MODEL``, ``resil demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .discovery import sites
from .errors import FaultError
from .fault_models import StuckAt
from .faults import Fault, FaultSet
from .injection import inject
from .loading import load_model


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
