"""Command line: ``resil sites MODEL``, ``resil demo``."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import torch

from resil.discovery import sites
from resil.encodings import FloatEncoding
from resil.errors import FaultError
from resil.fault_models import StuckAt
from resil.faults import Fault, FaultSet
from resil.injection import inject
from resil.site import Site, SiteList

if TYPE_CHECKING:
    from resil.campaign import CampaignSpec


def cmd_sites(args: argparse.Namespace) -> int:
    import resil.models as rm
    from resil.campaign.sources import check_forward
    from resil.cli.harden import load_model_option

    model = load_model_option(args).eval()
    example = rm.dataset(args.model).x_test[:2] if args.model in rm.names() else None
    if args.input_shape:
        try:
            shape = tuple(int(d) for d in args.input_shape.split(","))
        except ValueError:
            shape = ()
        if not shape or min(shape) < 1 or math.prod(shape) > 1 << 28:
            raise FaultError(f"--input-shape must be comma-separated positive integers such as 1,8,8 (one input's shape, "
                             f"at most 2**28 elements), not {args.input_shape!r}")
        example = torch.zeros(2, *shape)
    if example is not None:
        check_forward(model, example)
    print(sites(model, example).table())
    return 0


def _element(site: Site, want: tuple[int, ...]) -> tuple[int, ...]:
    """``want`` clamped into the site's shape (missing dimensions 0), moved on to a stored element if it is not stored."""
    assert site.shape is not None  # listed with an example input
    index = tuple(min(want[d] if d < len(want) else 0, n - 1) for d, n in enumerate(site.shape))
    stored = site.elements()
    flat = int(np.ravel_multi_index(index, site.shape))
    flat = int(stored[min(int(np.searchsorted(stored, flat)), len(stored) - 1)])
    return tuple(int(i) for i in np.unravel_index(flat, site.shape))


def _bits(site: Site) -> tuple[int, int]:
    """A high and a low bit to flip: a float's top exponent and top mantissa bit, else the bit below the top and bit 0."""
    high = max(site.encoding.bits - 2, 0)
    if isinstance(site.encoding, FloatEncoding):
        return high, round(-math.log2(torch.finfo(site.encoding.dtype).eps)) - 1
    return high, 0


def _demo_faults(site_list: SiteList, flips: int, rng: np.random.Generator) -> list[tuple[str, Fault | FaultSet]]:
    """The demo's faults on any model: a high and a low bit flip in the first weight's first kernel
    centre, a stuck-at-1 high bit in the last bias, a high bit flip in the output of the second
    layer with weights on every image, and ``flips`` random bit flips of stored weights and biases.
    The elements are those of the dense CNN (README), clamped into each site's shape."""
    weights = [s for s in site_list if s.kind == "weight"]
    if not weights:
        raise FaultError("the model has no weight sites to inject faults into")
    first, biases = weights[0], [s for s in site_list if s.kind == "bias"]
    layer = weights[min(1, len(weights) - 1)].module
    out = next((s for s in site_list if s.kind == "activation" and s.module is layer and s.shape is not None), None)

    def at(site: Site, index: tuple[int, ...]) -> str:
        return f"{site.name}[{','.join(map(str, index))}]"

    centre = _element(first, (0, 0, *(n // 2 for n in (first.shape or ())[2:])))
    high, low = _bits(first)
    faults: list[tuple[str, Fault | FaultSet]] = [(f"{at(first, centre)} bit {b} flip", Fault(first.name, centre, bit=b))
                                                  for b in (high, low)]
    if biases:
        bias = biases[-1]
        i, b = _element(bias, (3,)), _bits(bias)[0]
        faults.append((f"{at(bias, i)} bit {b} stuck-at-1", Fault(bias.name, i, bit=b, model=StuckAt(1))))
    if out is not None:
        i, b = _element(out, (5, 2, 2)), _bits(out)[0]
        faults.append((f"{at(out, i)} bit {b} flip, every image", Fault(out.name, i, bit=b)))
    stored = [s for s in site_list if s.kind in ("weight", "bias")]
    elements = [s.elements() for s in stored]
    pick = rng.integers(0, len(stored), flips)
    random_flips = FaultSet(
        site=[stored[p].name for p in pick],
        index=[int(elements[p][rng.integers(0, len(elements[p]))]) for p in pick],
        bit=rng.integers(0, np.array([stored[p].encoding.bits for p in pick], dtype=np.int64)),
    )
    return [*faults, (f"{flips} random weight bit flips", random_flips)]


def cmd_demo(args: argparse.Namespace) -> int:
    import resil.models as rm
    from resil.campaign.sources import load_data
    from resil.cli.harden import load_model_option
    from resil.training.ftt import check_classifier

    torch.set_num_threads(1)
    model = load_model_option(args).eval()
    bundled = args.model in rm.names()
    if not bundled and args.data is None:
        raise FaultError(f"--model {args.model} is not a bundled reference model, so it has no test data of its own: give --data "
                         "(a .pt or .npz file with x and labels y, or file.py:function returning them)")
    try:
        x, y = load_data(args.data or args.model)
    except FaultError as e:
        raise FaultError(f"--data {args.data}: {e}") from e
    check_classifier(model, x, y, f"--data {args.data}" if args.data else f"the test split of {args.model}")
    assert y is not None  # check_classifier refuses data without labels
    site_list = sites(model, x[:2])
    if bundled and args.data is None and args.checkpoint is None:
        about = f"{rm.info(args.model).description}, recorded test accuracy {rm.info(args.model).accuracy:.2%}"
    else:
        described = rm.info(args.model).description if bundled else type(model).__name__
        parameters = sum(p.numel() for p in model.parameters())
        about = f"{described}, {parameters:,} parameters, {len(x)} inputs from {args.data or 'its test split'}"
    print(f"model {args.model}: {about}\n")
    print(site_list.table(), "\n")
    scenarios = _demo_faults(site_list, args.random_flips, np.random.default_rng(args.seed))
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
        flipped = out.argmax(1) != golden.argmax(1)
        rows = (flipped & (golden.argmax(1) == y)).nonzero()  # prefer an image the model got right
        i = int((rows if len(rows) else flipped.nonzero())[0])
        np.set_printoptions(precision=2, suppress=True, linewidth=120)
        print(f"\ntest image {i} (label {int(y[i])}) under '{label}':")
        print("  clean logits :", golden[i].numpy(), "-> class", int(golden[i].argmax()))
        print("  faulty logits:", out[i].numpy(), "-> class", int(out[i].argmax()))
    after = model(x)
    print("\nafter the inject blocks the model is restored:", bool(torch.equal(after, golden)))
    return 0


def _campaign_dirs(spec: CampaignSpec, out: Path) -> list[tuple[CampaignSpec, Path]]:
    """One directory per model: ``out`` itself for one model, ``out/<model>`` for several."""
    specs = spec.per_model()
    return [(s, out if len(specs) == 1 else out / s.model.names[0].replace(":", "_").replace("/", "_")) for s in specs]


def _bar_progress(label: str, bars: list[Any]) -> Callable[[int, int], None]:
    """A campaign progress callback drawing one tqdm bar, appended to ``bars`` on the first call
    (which gives the total)."""
    from tqdm import tqdm

    def progress(n: int, remaining: int) -> None:
        if not bars:
            bars.append(tqdm(desc=label, total=remaining, unit="scen", dynamic_ncols=True))
        bars[0].update(n)

    return progress


def _run_all(jobs: list[tuple[CampaignSpec | None, Path]], args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from resil.campaign import make_executor, resume, run

    for spec, out in jobs:
        label = spec.name if spec else out.name
        bars: list[tqdm] = []
        progress = _bar_progress(label, bars)
        try:
            executor = make_executor(args.executor, args.workers, args.address, folder=out / "slurm", slurm=args.slurm)
            store = run(spec, out, executor, progress) if spec else resume(out, executor, progress)
        finally:
            for bar in bars:
                bar.close()
        m = store.manifest()
        print(f"{label}: {m['scenarios']} scenarios x {m['inputs']} inputs -> {out}")
    return 0


def _check_jobs(jobs: list[tuple[CampaignSpec, Path]]) -> None:
    """Refuse, before any campaign runs, two campaigns into one directory and any campaign that
    :func:`resil.campaign.run` would refuse (its model, data, sites, fault space or directory)."""
    from resil.campaign import Store
    from resil.campaign.runner import runner_for

    seen: dict[Path, str] = {}
    for spec, out in jobs:
        key = out.resolve()
        if key in seen:
            raise FaultError(f"campaigns {seen[key]!r} and {spec.name!r} would both write {out}: give each campaign file its own name")
        seen[key] = spec.name
    for spec, out in jobs:
        Store(out).check(runner_for(spec).manifest())


def cmd_run(args: argparse.Namespace) -> int:
    from resil.campaign import load_spec

    _slurm_options(args)
    specs = [load_spec(f) for f in args.spec]  # every file checked before any work starts
    if args.device is not None:
        specs = [dataclasses.replace(s, run=dataclasses.replace(s.run, device=args.device)) for s in specs]
    out = Path(args.out)
    jobs = [job for spec in specs for job in _campaign_dirs(spec, out if len(specs) == 1 else out / spec.name)]
    _check_jobs(jobs)
    _run_all(jobs, args)  # type: ignore[arg-type]
    if args.report:
        print(write_report_for([d for _, d in jobs], Path(args.report)))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from resil.campaign import Store

    _slurm_options(args)
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
    from resil.report import write_report

    if out.exists() and not out.is_dir():
        raise FaultError(f"report directory {out} exists and is not a directory: choose another --out")
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

    from resil.analysis.compare import DEFAULT, QUICK, compare
    from resil.report.comparison import comparison_summary, write_comparison

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
        from resil.campaign.sources import load_data

        data = load_data(args.data)
    start = time.perf_counter()
    comparison = compare(models, args.out, data=data, settings=settings)
    page = write_comparison(comparison)
    print(comparison_summary(comparison, page, time.perf_counter() - start))
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
    p.add_argument("--executor", choices=("serial", "process", "dask", "slurm"), default="serial",
                   help="where shards run (default: this process)")
    p.add_argument("--workers", type=_count(1), default=2, help="processes for the process and dask executors (default: %(default)s)")
    p.add_argument("--address", help="address of a running Dask scheduler (dask executor)")
    g = p.add_argument_group("slurm executor", "one array job with a task per shard; its files in DIR/slurm "
                                             "(README \"Beyond one machine\")")
    g.add_argument("--slurm-cluster", choices=("slurm", "local", "debug"), help="submitit backend: sbatch (default), "
                   "a process per task on this machine, or this process")
    g.add_argument("--slurm-partition", help="partition (default: the cluster's)")
    g.add_argument("--slurm-time", type=_count(1), metavar="MINUTES", help="time limit per task (default: 60)")
    g.add_argument("--slurm-cpus", type=_count(1), help="CPUs (torch threads) per task (default: 1)")
    g.add_argument("--slurm-gpus", type=_count(0), help="GPUs per task (default: 0)")
    g.add_argument("--slurm-array-parallelism", type=_count(1), metavar="N", help="tasks running at once (default: 256)")
    g.add_argument("--slurm-extra", action="append", metavar="KEY=VALUE", help="another sbatch option, e.g. account=myproject "
                   "(repeatable)")


def _slurm_options(args: argparse.Namespace) -> None:
    """Check the executor options before any work: ``args.slurm`` becomes the Slurm options (or None)."""
    from resil.campaign.slurm import SlurmOptions, parse_extra

    given = {k: v for k, v in vars(args).items() if k.startswith("slurm_") and v is not None}
    args.slurm = None
    if args.executor != "slurm":
        if given:
            raise FaultError(f"--{next(iter(given)).replace('_', '-')} applies to --executor slurm only")
        return
    extra = parse_extra(given.pop("slurm_extra", None))
    args.slurm = SlurmOptions(**{k[len("slurm_"):]: v for k, v in given.items()}, extra=extra)


def build_parser() -> argparse.ArgumentParser:
    from resil.cli.harden import add_parser as add_harden_parser

    p = _Parser(prog="resil", description="Fault injection for dense, spiking, pruned and quantized PyTorch networks.")
    sub = p.add_subparsers(dest="command", required=True)
    _model_parsers(sub)
    _campaign_parsers(sub)
    _compare_parser(sub)
    add_harden_parser(sub)  # resil harden ftt|fat|search
    _add_debug(p)
    return p


def _model_parsers(sub: Any) -> None:
    """``resil sites`` and ``resil demo``."""
    from resil.cli.harden import add_model_options

    s = sub.add_parser("sites", help="list the fault sites of a model")
    s.add_argument("model", help="bundled reference model name, package.module:factory or path/file.py:factory")
    add_model_options(s)
    s.add_argument("--input-shape", help="per-sample input shape, e.g. 1,8,8, to learn activation shapes (default: a bundled "
                                         "model's data)")
    s.set_defaults(run=cmd_sites)
    d = sub.add_parser("demo", help="inject a few faults into a model and print clean vs faulty outputs")
    d.add_argument("--model", default="dense-cnn", metavar="SOURCE",
                   help="bundled reference model, package.module:factory or path/file.py:factory (default: %(default)s)")
    add_model_options(d)
    d.add_argument("--data", metavar="SOURCE", help="inputs and integer labels: a .pt or .npz file with x and y, or file.py:function "
                                                    "returning them (default: a bundled model's test split; required for other models)")
    d.add_argument("--random-flips", type=_count(0), default=1000, metavar="N",
                   help="random weight and bias bit flips in the last scenario (default: %(default)s)")
    d.add_argument("--seed", type=_count(0), default=0, help="seed of the random flips (default: %(default)s)")
    d.set_defaults(run=cmd_demo)


def _campaign_parsers(sub: Any) -> None:
    """``resil run``, ``resil resume`` and ``resil report``."""
    r = sub.add_parser("run", help="run a campaign file into a result directory", description=RUN_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("spec", nargs="+", help="campaign TOML file(s)")
    r.add_argument("--out", required=True,
                   help="result directory (with several files, one subdirectory per file; with several models, one per model)")
    r.add_argument("--report", help="write the report of these campaigns into this directory afterwards")
    r.add_argument("--device", help="auto, cpu, cuda or cuda:N: replaces the files' [run] device (default: theirs, cpu if unset)")
    _executor_options(r)
    r.set_defaults(run=cmd_run)
    re = sub.add_parser("resume", help="run the missing shards of stored campaigns")
    re.add_argument("dirs", nargs="+", help="campaign directories (or parents of several)")
    _executor_options(re)
    re.set_defaults(run=cmd_resume)
    rp = sub.add_parser("report", help="write PNG figures and one HTML report for campaigns (side by side)")
    rp.add_argument("dirs", nargs="+", help="campaign directories (or parents of several)")
    rp.add_argument("--out", default="report", help="report directory (default: ./report)")
    rp.set_defaults(run=cmd_report)


def _compare_parser(sub: Any) -> None:
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


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (with where to find the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_debug(p: argparse.ArgumentParser) -> None:
    """``--debug`` on ``p`` and on every (sub)command under it: show the traceback of an error."""
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                _add_debug(sub)


def _count(least: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``least``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, not {value}")
        return value

    parse.__name__ = f"integer >= {least}"
    return parse


#: the campaign file ``resil run --help`` shows (valid: a test loads it)
RUN_EXAMPLE = """\
version = 1
name = "quick"                  # a folder name: OUT/<name> when several files run together
seed = 0
[model]
names = ["dense-cnn"]           # bundled, "package.module:factory" or "file.py:factory"
[data]
inputs = 64                     # how many inputs (0: all)
[sites]
include = ["conv*", "fc*"]      # a list of globs on site names (see `resil sites MODEL`)
kinds = ["weight", "bias"]
[faults]
model = 'stuck_at:{"value": 1}' # or "bitflip", 'burst:{"length": 2}'
bits = [30, 31]                 # must fit every selected site; empty: every bit
[sampler]
kind = "uniform"                # exhaustive | uniform | ber | sfi | importance
scenarios = 200
[outcome]
criterion = "top1"              # or 'topk:{"k": 5}', 'deviation:{"threshold": 0.05}'
[run]
shard_size = 25
"""

RUN_DESCRIPTION = f"""Run campaign files (TOML) into result directories. Every file, model, data set, fault
space and result directory is checked before anything is written.

A campaign file (every key but version is optional; README "Campaigns" and examples/*.toml):

{textwrap.indent(RUN_EXAMPLE, "    ")}"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``resil`` command: 0 on success, 2 for bad input (one line on stderr),
    1 for another failure (a file that cannot be written, a damaged store, a worker lost), 130
    when interrupted; ``--debug`` shows the traceback instead."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad flag (argparse has printed why)
        return e.code if isinstance(e.code, int) else 2
    try:
        return int(args.run(args))
    except BaseException as e:
        code = exit_code(e)
        if code is None or getattr(args, "debug", False):
            raise
        print(f"resil: {'interrupted' if code == 130 else 'error'}: {describe_error(e)}", file=sys.stderr)
        return code


def exit_code(e: BaseException) -> int | None:
    """The exit status of an expected failure: 2 bad input, 130 interrupted, 1 another failure
    the user can act on; None for a bug (its traceback is shown)."""
    from concurrent.futures import BrokenExecutor

    import pyarrow as pa

    if isinstance(e, KeyboardInterrupt):
        return 130
    if isinstance(e, (FaultError, KeyError)):
        return 2
    if isinstance(e, (OSError, MemoryError, BrokenExecutor, pa.ArrowException)):
        return 1
    return None


def describe_error(e: BaseException) -> str:
    """One line saying what went wrong."""
    if isinstance(e, KeyboardInterrupt):
        return "stopped before the end; completed shards are stored, `resil resume DIR` runs the rest"
    if isinstance(e, KeyError):
        return str(e.args[0] if e.args else e)
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.strerror or type(e).__name__}: {e.filename}"
    text = str(e) or type(e).__name__
    if not isinstance(e, FaultError):
        text = f"{type(e).__name__}: {text}"
    return " ".join(text.split())  # one line


if __name__ == "__main__":
    sys.exit(main())
