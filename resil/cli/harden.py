"""``resil harden ftt|fat|search``: the hardening methods from the command line.

Each subcommand runs one method and writes a run directory
(:class:`resil.training.store.RunStore`): ``manifest.json`` (the command, its spec and hash, the
status and a summary of the results), Parquet result tables, ``model.pt`` and ``report.png``
(when matplotlib is installed). Every argument, the model and the data are checked before
anything is created; a directory holding a run of another spec, or of the same spec on another
model or other data (``fingerprint`` in the manifest: a hash of the given model's state dict and
one of the training and test data), is refused.

``ftt`` and ``fat`` take any model source of :func:`resil.campaign.sources.load_model`: ``--model``
a bundled name, ``package.module:factory`` or ``path/file.py:factory``, ``--kwargs JSON`` the
factory's arguments, ``--checkpoint FILE`` a state dict loaded into it (``weights_only=True``).
``--data`` (training) and ``--test-data`` are :func:`resil.campaign.sources.load_data` sources
(``file.py:function``, a ``.pt`` or ``.npz`` file with ``x`` and integer labels ``y``, or a bundled
dataset name for its training / test split); a bundled model defaults to its bundled split, any
other model needs both. The spec records the given sources. ``model.pt`` holds the trained model:
in the reference's checkpoint format for a bundled model (load it with
``resil.models.info(name).restore``), else its ``state_dict()`` (pass it back as ``--checkpoint``).

- ``resil harden ftt --model dense-cnn --faults adsaf --out DIR``: FT-NAS fault-tolerant
  training vs normal training (:func:`resil.training.run_ftt`; a non-bundled model trains with
  ``resil.models.Recipe()``, ``--epochs`` overriding). Tables ``results`` (one row per arm) and
  ``draws`` (faulty accuracy per draw, paired).
- ``resil harden fat --model dense-cnn --out DIR``: ISimDL fault-aware training
  (:func:`resil.training.fat.fault_aware_training`). Tables ``history`` (per epoch) and
  ``faults`` (the critical faults found, :meth:`resil.FaultSet.to_dict` columns).
- ``resil harden search --faults adsaf --out DIR``: fault-tolerant architecture search
  (:func:`resil.training.search.search`) on the bundled digits data. Tables ``candidates`` and
  ``comparison``; ``model.pt`` loads with :func:`resil.training.search.load_found`.

Fault specs (``--faults``): ``adsaf[:P]`` (per-cell rate, default 0.08), ``mibb[:P_M]`` (per-MAC
rate, default 5e-4), ``ibb[:P]`` (per-feature rate, default 1e-3); several joined by commas.

Example:
    >>> parse_faults("adsaf:0.05,mibb")
    (AdSAF(p=0.05, saf1=0.163, include=('*',)), MiBB(include=('*',), p_m=0.0005))
    >>> parse_kwargs('{"width": 8}')
    {'width': 8}
"""

from __future__ import annotations

import argparse
import io
import json
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from resil.campaign.sources import fingerprint_model, fingerprint_tensors, load_data, load_model
from resil.errors import FaultError
from resil.training.ftnas import IBB, AdSAF, FaultProcess, MiBB

__all__ = ["add_model_options", "add_parser", "load_model_option", "parse_faults", "parse_kwargs"]

#: fault spec name -> (process class, its rate field, default rate)
FAULTS: dict[str, tuple[type, str, float]] = {"adsaf": (AdSAF, "p", 0.08), "mibb": (MiBB, "p_m", 5e-4), "ibb": (IBB, "p", 1e-3)}


def parse_faults(text: str) -> tuple[FaultProcess, ...]:
    """Fault processes from a spec such as ``adsaf``, ``mibb:1e-4`` or ``adsaf:0.08,mibb:5e-4``.

    Raises:
        FaultError: for an unknown name or a rate that is not a probability.
    """
    procs = []
    for part in str(text).split(","):
        name, _, rate = part.strip().partition(":")
        if name.lower() not in FAULTS:
            raise FaultError(f"unknown fault process {name!r} in --faults {text!r}; choose from {', '.join(FAULTS)} "
                             "(optionally with a rate, e.g. adsaf:0.08)")
        cls, field_name, default = FAULTS[name.lower()]
        try:
            value = float(rate) if rate else default
        except ValueError:
            raise FaultError(f"the rate of {name!r} in --faults {text!r} is not a number: {rate!r}") from None
        procs.append(cls(**{field_name: value}))
    return tuple(procs)


def _positive(name: str, v: int | None) -> None:
    if v is not None and v < 1:
        raise FaultError(f"{name} must be >= 1, not {v}")


def _unit(name: str, v: float | None) -> None:
    if v is not None and not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise FaultError(f"{name} must be in [0, 1], not {v}")


def parse_kwargs(text: str | None) -> dict[str, Any] | None:
    """The factory arguments of ``--kwargs`` (a JSON object), None when not given.

    Raises:
        FaultError: for text that is not JSON or not a JSON object.
    """
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise FaultError(f"--kwargs {text!r} is not valid JSON ({e}); give an object such as '{{\"width\": 8}}'") from None
    if not isinstance(value, dict):
        raise FaultError(f"--kwargs {text!r} is not a JSON object; give the factory's arguments as one, e.g. '{{\"width\": 8}}'")
    return value


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Add ``--checkpoint FILE`` and ``--kwargs JSON``, which complete a model source argument ``model``."""
    p.add_argument("--checkpoint", metavar="FILE",
                   help="state dict to load into the model (torch.save of model.state_dict(), read with weights_only=True)")
    p.add_argument("--kwargs", metavar="JSON", help="keyword arguments of the model factory as a JSON object, e.g. '{\"width\": 8}'")


def load_model_option(args: argparse.Namespace) -> nn.Module:
    """The model of ``args.model`` with ``args.checkpoint`` and ``args.kwargs``
    (:func:`resil.campaign.sources.load_model`; in the mode its factory returns)."""
    return load_model(args.model, checkpoint=args.checkpoint, kwargs=parse_kwargs(args.kwargs))


def _split(source: str, train: bool, option: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The inputs and labels of a data source: a bundled dataset (or model) name gives its training or test split."""
    import resil.models as rm

    if source in rm.DATASETS or source in rm.names():
        d = rm.dataset(source)
        return (d.x_train, d.y_train) if train else (d.x_test, d.y_test)
    try:
        return load_data(source)
    except FaultError as e:
        raise FaultError(f"{option} {source}: {e}") from e


def _model_and_data(args: argparse.Namespace) -> tuple[nn.Module, Any, dict[str, Any], dict[str, str]]:
    """The model and the training and test data (a :class:`resil.models.Dataset`) of ``harden
    ftt|fat``, checked (:func:`resil.training.ftt.check_classifier`); the given sources, for the
    spec; the run's fingerprint."""
    import resil.models as rm
    from resil.training.ftt import as_dataset, check_classifier

    kwargs = parse_kwargs(args.kwargs)
    model = load_model(args.model, checkpoint=args.checkpoint, kwargs=kwargs)
    bundled = args.model in rm.names()
    missing = [option for option, v in (("--data", args.data), ("--test-data", args.test_data)) if v is None]
    if missing and not bundled:
        raise FaultError(f"--model {args.model} is not a bundled reference model, so it has no data of its own: give "
                         f"{' and '.join(missing)} (a .pt or .npz file with x and labels y, or file.py:function returning them)")
    parts: list[torch.Tensor | None] = []
    for option, source, train in (("--data", args.data, True), ("--test-data", args.test_data, False)):
        x, y = _split(source or args.model, train, option)
        check_classifier(model, x, y, f"{option} {source}" if source else f"the bundled {'training' if train else 'test'} split")
        parts += [x, y]
    data = as_dataset(tuple(parts), name=f"{args.data or args.model} / {args.test_data or args.model}")
    given = {"checkpoint": args.checkpoint, "kwargs": kwargs, "data": args.data, "test_data": args.test_data}
    fingerprint = {"model": fingerprint_model(model), "inputs": fingerprint_tensors(*parts)}
    return model, data, {k: v for k, v in given.items() if v is not None}, fingerprint


def _checkpoint(name: str, model: nn.Module) -> Any:
    """What ``model.pt`` holds: a bundled model's checkpoint format, else the state dict."""
    import resil.models as rm

    return rm.info(name).save(model) if name in rm.names() else model.state_dict()


def _names(text: str, option: str) -> tuple[str, ...]:
    import resil.models as rm

    names = tuple(n.strip() for n in text.split(",") if n.strip()) if text else ()
    bad = [n for n in names if n not in rm.names()]
    if bad:
        raise FaultError(f"unknown model(s) {bad} in {option}; bundled: {', '.join(rm.names())}")
    return names


def _bars(labels: list[str], clean: list[float], faulty: list[float], faulty_err: list[float], title: str) -> bytes | None:
    """A PNG of clean vs faulty accuracy bars per model, or None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(max(5.0, 1.1 * len(labels) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(labels))
    ax.bar(x - 0.2, clean, 0.4, label="clean", color="#9ecae1")
    ax.bar(x + 0.2, faulty, 0.4, yerr=faulty_err, capsize=3, label="faulty (mean +- std over draws)", color="#de2d26")
    ax.set_xticks(x, labels, rotation=30 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center", fontsize=8)
    low = max(0.0, min([*clean, *faulty]) - 0.1)
    ax.set_ylim(low, 1.0)
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _finish(store: Any, png: bytes | None, summary: dict[str, Any]) -> None:
    if png is not None:
        store.write_bytes("report.png", png)
    store.finish({**summary, "report": "report.png" if png is not None else None})


# -- ftt ------------------------------------------------------------------------------------------

def cmd_ftt(args: argparse.Namespace) -> int:
    import resil.models as rm
    from resil.training.ftnas import process_spec
    from resil.training.ftt import prepare, run_ftt
    from resil.training.store import RunStore

    procs = parse_faults(args.faults)
    _unit("--alpha", args.alpha)
    _positive("--epochs", args.epochs)
    _positive("--draws", args.draws)
    model, data, given, fingerprint = _model_and_data(args)
    prepare(model, procs)  # a fault process without sites fails before the directory exists (prepare modifies nothing)
    spec = {"model": args.model, "faults": [process_spec(p) for p in procs], "alpha": args.alpha, "epochs": args.epochs,
            "draws": args.draws, "seed": args.seed, "eval_seed": args.eval_seed, "range_gradient": not args.plain_ste, **given}
    store = RunStore(args.out)
    store.create("ftt", spec, fingerprint)
    torch.set_num_threads(1)
    bundled = args.model in rm.names()  # without --checkpoint, trained as its reference is (from scratch or its checkpoint)
    r = run_ftt(args.model if bundled and args.checkpoint is None else model, procs, data=data,
                recipe=rm.info(args.model).recipe if bundled else None, alpha=args.alpha, epochs=args.epochs, draws=args.draws,
                seed=args.seed, eval_seed=args.eval_seed, range_gradient=not args.plain_ste, progress=True)
    fn, ff = np.array(r.faulty_normal), np.array(r.faulty_ftt)

    def std(a: np.ndarray) -> float:
        return float(a.std(ddof=1)) if len(a) > 1 else 0.0

    store.write_table("results", {"arm": ["normal", "ftt"], "clean": [r.clean_normal, r.clean_ftt],
                                  "faulty_mean": [float(fn.mean()), float(ff.mean())], "faulty_std": [std(fn), std(ff)],
                                  "draws": [len(fn), len(ff)]})
    store.write_table("draws", {"draw": np.arange(len(fn)), "faulty_normal": fn, "faulty_ftt": ff})
    assert r.trained is not None
    store.save_model(_checkpoint(args.model, r.trained))
    png = _bars(["normal", f"FTT (alpha {r.alpha:g})"], [r.clean_normal, r.clean_ftt], [float(fn.mean()), float(ff.mean())],
                [std(fn), std(ff)], f"{args.model} under {r.faults}, {r.epochs} epochs")
    _finish(store, png, r.to_dict())
    print(f"{args.model} under {r.faults}: clean {r.clean_normal:.2%} -> {r.clean_ftt:.2%} with FTT; faulty "
          f"{fn.mean():.2%} -> {ff.mean():.2%} ({100 * r.faulty_gain:+.2f} points, {len(fn)} draws) -> {args.out}")
    return 0


# -- fat ------------------------------------------------------------------------------------------

def _fat_options(args: argparse.Namespace) -> tuple[int, ...]:
    """Check the options of ``resil harden fat``; returns the search epochs."""
    from resil.analysis.precision import BIT_WEIGHTINGS

    _positive("--epochs", args.epochs)
    _positive("--k", args.k)
    _positive("--max-trials", args.max_trials)
    _positive("--batch-size", args.batch_size)
    if args.stagger < 0:
        raise FaultError(f"--stagger must be >= 0, not {args.stagger}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise FaultError(f"--lr must be a positive number, not {args.lr}")
    _unit("--tau", args.tau)
    if args.bit_weighting not in BIT_WEIGHTINGS:
        raise FaultError(f"unknown --bit-weighting {args.bit_weighting!r}; choose one of {list(BIT_WEIGHTINGS)}")
    try:
        search_epochs = tuple(int(e) for e in args.search_epochs.split(",") if e.strip())
    except ValueError:
        raise FaultError(f"--search-epochs must be comma-separated integers, not {args.search_epochs!r}") from None
    bad = [e for e in search_epochs if not 0 <= e < args.epochs]
    if bad or not search_epochs:
        raise FaultError(f"--search-epochs must lie in 0..{args.epochs - 1}, got {args.search_epochs!r}")
    return search_epochs


def _fat_figure(args: argparse.Namespace, r: Any) -> bytes | None:
    """The PNG of clean and faulty accuracy per epoch of a fault-aware training run (None without matplotlib)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    h = r.history
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.subplots()
    ax.plot([e.epoch for e in h], [e.clean_accuracy for e in h], "o-", label="clean")
    ax.plot([e.epoch for e in h], [e.faulty_accuracy for e in h], "s-", color="#de2d26", label="with the faults found so far")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"fault-aware training of {args.model}: {len(r.faults)} critical {args.kind} faults ({args.sampler})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _fat_results(store: Any, args: argparse.Namespace, r: Any) -> None:
    """Store the history, the faults found, the hardened model and the figure of a fault-aware training run."""
    h = r.history
    store.write_table("history", {"epoch": [e.epoch for e in h], "runs": [e.runs for e in h], "found": [e.found for e in h],
                                  "faults": [e.faults for e in h], "clean_accuracy": [e.clean_accuracy for e in h],
                                  "faulty_accuracy": [e.faulty_accuracy for e in h]})
    store.write_table("faults", {k: np.asarray(v) for k, v in r.faults.to_dict().items()})
    store.save_model(_checkpoint(args.model, r.model))
    summary = {"search_runs": r.search_runs, "faults": len(r.faults), "clean_before": r.clean_before, "faulty_before": r.faulty_before,
               "clean_after": r.clean_after, "faulty_after": r.faulty_after}
    _finish(store, _fat_figure(args, r), summary)


def cmd_fat(args: argparse.Namespace) -> int:
    from resil.analysis.precision import select_space
    from resil.campaign.criteria import AccuracyDrop
    from resil.discovery import sites
    from resil.training.fat import FATConfig, SearchConfig, TrainingConfig, fault_aware_training
    from resil.training.store import RunStore

    search_epochs = _fat_options(args)
    criterion = AccuracyDrop(args.theta)
    spec = {"model": args.model, "epochs": args.epochs, "search_epochs": list(search_epochs), "k": args.k, "stagger": args.stagger,
            "sampler": args.sampler, "kind": args.kind, "theta": args.theta, "bit_weighting": args.bit_weighting, "tau": args.tau,
            "max_trials": args.max_trials, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
            "neutralise": args.neutralise, "clean_loss": not args.no_clean_loss}
    model, d, given, fingerprint = _model_and_data(args)
    spec.update(given)
    store = RunStore(args.out)
    store.check("fat", spec, fingerprint)
    torch.set_num_threads(1)
    select_space(sites(model, d.x_test[:1]), args.kind)  # a kind without sites fails before the directory exists
    store.create("fat", spec, fingerprint)
    config = FATConfig(epochs=args.epochs, search_epochs=search_epochs, stagger=args.stagger, seed=args.seed,
                       search=SearchConfig(sampler=args.sampler, kind=args.kind, k=args.k, criterion=criterion,
                                           bit_weighting=args.bit_weighting, tau=args.tau, max_trials=args.max_trials),
                       training=TrainingConfig(lr=args.lr, batch_size=args.batch_size, neutralise=args.neutralise,
                                               clean_loss=not args.no_clean_loss))
    r = fault_aware_training(model, d.x_train, d.y_train, d.x_test, d.y_test, config, progress=True)
    _fat_results(store, args, r)
    print(f"{args.model}: {len(r.faults)} critical faults in {r.search_runs} fault-injection runs; accuracy under them "
          f"{r.faulty_before:.2%} -> {r.faulty_after:.2%} (clean {r.clean_before:.2%} -> {r.clean_after:.2%}) -> {args.out}")
    return 0


# -- search ---------------------------------------------------------------------------------------

def cmd_search(args: argparse.Namespace) -> int:
    from resil.training.ftnas import process_spec
    from resil.training.search import ArchSearchConfig, default_beta, save_found, search
    from resil.training.store import RunStore

    procs = parse_faults(args.faults)
    beta = default_beta(procs) if args.beta is None else args.beta
    _unit("--beta", beta)
    _unit("--alpha", args.alpha)
    for name in ("candidates", "population", "tournament", "epochs", "final_epochs", "draws", "final_draws"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    if not 0.0 < args.val_fraction < 1.0:
        raise FaultError(f"--val-fraction must be in (0, 1), not {args.val_fraction}")
    references = _names(args.references, "--references")
    reference_ftt = _names(args.reference_ftt, "--reference-ftt")
    if set(reference_ftt) - set(references):
        raise FaultError(f"--reference-ftt names models not in --references: {sorted(set(reference_ftt) - set(references))}")
    spec = {"faults": [process_spec(p) for p in procs], "beta": beta, "alpha": args.alpha, "candidates": args.candidates,
            "population": args.population, "tournament": args.tournament, "epochs": args.epochs, "final_epochs": args.final_epochs,
            "draws": args.draws, "final_draws": args.final_draws, "val_fraction": args.val_fraction, "references": list(references),
            "reference_ftt": list(reference_ftt), "seed": args.seed, "eval_seed": args.eval_seed}
    store = RunStore(args.out)
    store.create("search", spec)
    torch.set_num_threads(1)
    config = ArchSearchConfig(beta=beta, candidates=args.candidates, population=args.population, tournament=args.tournament,
                              epochs=args.epochs, final_epochs=args.final_epochs, alpha=args.alpha, draws=args.draws,
                              final_draws=args.final_draws, val_fraction=args.val_fraction, references=tuple(references),
                              reference_ftt=tuple(reference_ftt), seed=args.seed, eval_seed=args.eval_seed)
    r = search(procs, config, progress=True)
    cands = [c.to_dict() for c in r.candidates]
    store.write_table("candidates", {k: [c[k] for c in cands] for k in cands[0]})
    rows = r.comparison
    store.write_table("comparison", {"model": [x.model for x in rows], "training": [x.training for x in rows],
                                     "params": [x.params for x in rows], "live": [x.live for x in rows],
                                     "clean": [x.clean for x in rows], "faulty_mean": [x.faulty_mean for x in rows],
                                     "faulty_std": [x.faulty_std for x in rows], "reward": [x.reward for x in rows],
                                     "faulty": [list(x.faulty) for x in rows]})
    store.save_model(save_found(r))
    labels = ["found" if i == 0 else (x.model if x.training == "normal" else f"{x.model} FTT") for i, x in enumerate(rows)]
    png = _bars(labels, [x.clean for x in rows], [x.faulty_mean for x in rows], [x.faulty_std for x in rows],
                f"found {r.arch.describe()} vs references under {r.faults}")
    summary = {k: v for k, v in r.to_dict().items() if k not in ("candidates", "comparison")}
    _finish(store, png, summary)
    print(r.table())
    print(f"found {r.arch.describe()} ({r.found.params} parameters) in {len(r.candidates)} candidates, {r.seconds:.0f} s -> {args.out}")
    return 0


# -- parser ---------------------------------------------------------------------------------------

def _source_options(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--checkpoint``, ``--kwargs``, ``--data`` and ``--test-data`` of ``harden ftt|fat``."""
    p.add_argument("--model", default="dense-cnn", metavar="SOURCE",
                   help="bundled reference model, package.module:factory or path/file.py:factory (default: %(default)s)")
    add_model_options(p)
    data = ("(a .pt or .npz file with x and integer labels y, file.py:function or package.module:function returning them, "
            "or a bundled dataset name; default: a bundled model's {} split, required for other models)")
    p.add_argument("--data", metavar="SOURCE", help="training data " + data.format("training"))
    p.add_argument("--test-data", metavar="SOURCE", help="test data " + data.format("test"))


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``harden`` and its subcommands to the ``resil`` subparsers ``sub``."""
    h = sub.add_parser("harden", help="harden a network: fault-tolerant training, fault-aware training, architecture search",
                       description="Hardening methods: ftt and fat on a bundled model or yours (--model SOURCE, --data, "
                                   "--test-data), search on the bundled digits data; each writes a run directory "
                                   "(manifest.json, Parquet tables, model.pt, report.png).")
    hs = h.add_subparsers(dest="method", required=True)
    _ftt_parser(hs)
    _fat_parser(hs)
    _search_parser(hs)
    return h


#: help of --faults
FAULT_HELP = ("fault process(es): adsaf[:P] (RRAM stuck-at cells, default P 0.08), mibb[:P_M] (per-MAC bit bias, default "
              "5e-4), ibb[:P] (per-feature bit bias, default 1e-3); several joined by commas (default: %(default)s)")


def _ftt_parser(hs: Any) -> None:
    f = hs.add_parser("ftt", help="FT-NAS fault-tolerant training vs normal training of a model",
                      description="Train a model normally and with FT-NAS's fault-tolerant training (loss "
                                  "(1-alpha)*CE(clean) + alpha*CE(faulty), fresh faults every step), both from the same start, "
                                  "then compare clean and faulty test accuracy over paired fault draws.")
    _source_options(f)
    f.add_argument("--faults", default="adsaf", help=FAULT_HELP)
    f.add_argument("--alpha", type=float, default=0.5, help="weight of the faulty loss (FT-NAS: 0.7 adSAF, ~0.5 MiBB; default %(default)s)")
    f.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: a bundled model's recipe; other models train with resil.models.Recipe(): "
                        "10 epochs, Adam lr 3e-3, batch 64)")
    f.add_argument("--draws", type=int, default=20, help="fault draws of the evaluation (default: %(default)s)")
    f.add_argument("--seed", type=int, default=0, help="seed of the training fault draws (default: %(default)s)")
    f.add_argument("--eval-seed", type=int, default=1, help="seed of the evaluation fault draws (default: %(default)s)")
    f.add_argument("--plain-ste", action="store_true", help="plain straight-through gradient for feature faults (range_gradient=False)")
    f.add_argument("--out", required=True, help="run directory")
    f.set_defaults(run=cmd_ftt)


def _fat_parser(hs: Any) -> None:
    a = hs.add_parser("fat", help="ISimDL fault-aware training with critical faults found by importance sampling",
                      description="Search critical single bit flips of a model (ISimDL importance sampling or "
                                  "uniform), fix them into the model and keep training; report accuracy under them per epoch.")
    _source_options(a)
    a.add_argument("--epochs", type=int, default=5, help="training epochs (default: %(default)s)")
    a.add_argument("--search-epochs", default="0", help="comma-separated epochs after which to search faults (0 = before training)")
    a.add_argument("--k", type=int, default=3, help="critical faults to find per search (default: %(default)s)")
    a.add_argument("--stagger", type=int, default=0, help="apply the j-th fault j*stagger epochs later (default: %(default)s)")
    a.add_argument("--sampler", choices=("importance", "uniform"), default="importance", help="fault search sampler")
    a.add_argument("--kind", choices=("weight", "activation"), default="weight", help="fault kind (default: %(default)s)")
    a.add_argument("--theta", type=float, default=0.10, help="critical: accuracy drop >= theta (default: %(default)s)")
    a.add_argument("--bit-weighting", default="gradient", help="ISimDL bit weighting (default: %(default)s)")
    a.add_argument("--tau", type=float, default=0.0, help="ISimDL uniform share (default: %(default)s)")
    a.add_argument("--max-trials", type=int, default=5000, help="cap on fault-injection runs per search (default: %(default)s)")
    a.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    a.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default: %(default)s)")
    a.add_argument("--neutralise", choices=("auto", "operand", "sign", "none"), default="auto",
                   help="how training silences huge stuck weights: keep their faulty value on the side a ReLU zeroes (sign), "
                        "drive their input operand to zero (operand), whichever fits (auto), or not at all (default: %(default)s)")
    a.add_argument("--no-clean-loss", action="store_true", help="train on the faulty loss only (ISimDL's original FAT)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", required=True, help="run directory")
    a.set_defaults(run=cmd_fat)


def _search_parser(hs: Any) -> None:
    s = hs.add_parser("search", help="fault-tolerant architecture search (small FT-NAS) vs the reference models",
                      description="On the bundled digits data (no --model or --data): regularized evolution over small "
                                  "digits CNNs (widths, 3x3/5x5, max/avg pool, ReLU/ReLU6/Hardtanh, float/int8/int4), "
                                  "candidates trained briefly with FTT and ranked on a validation split by R = (1-beta)*clean + "
                                  "beta*faulty; the best is retrained and compared on the test set with the reference models "
                                  "under the same faults.")
    s.add_argument("--faults", default="adsaf", help=FAULT_HELP)
    s.add_argument("--beta", type=float, default=None, help="reward weight of faulty accuracy (default: FT-NAS's, 0.2 adSAF, 0.5 MiBB)")
    s.add_argument("--alpha", type=float, default=0.5, help="FTT weight of the faulty loss; 0 = normal training (default: %(default)s)")
    s.add_argument("--candidates", type=int, default=20, help="architectures evaluated (default: %(default)s)")
    s.add_argument("--population", type=int, default=8, help="evolution population; the first ones are random (default: %(default)s)")
    s.add_argument("--tournament", type=int, default=3, help="tournament size (default: %(default)s)")
    s.add_argument("--epochs", type=int, default=6, help="training epochs per candidate (default: %(default)s)")
    s.add_argument("--final-epochs", type=int, default=15, help="training epochs of the best (default: %(default)s)")
    s.add_argument("--draws", type=int, default=5, help="fault draws per candidate on the validation split (default: %(default)s)")
    s.add_argument("--final-draws", type=int, default=20, help="fault draws per model on the test set (default: %(default)s)")
    s.add_argument("--val-fraction", type=float, default=0.2, help="training share held out for validation (default: %(default)s)")
    s.add_argument("--references", default="dense-cnn,pruned-50,pruned-80,structured-50,int8,int4,snn",
                   help="comma-separated reference models to compare with (default: all)")
    s.add_argument("--reference-ftt", default="", help="comma-separated references also to train with FTT (default: none)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--eval-seed", type=int, default=1)
    s.add_argument("--out", required=True, help="run directory")
    s.set_defaults(run=cmd_search)

