"""Parameter Vulnerability Factor (PVF; Meta, arXiv 2405.01741) per parameter group.

PVF(P) = Pr[output incorrect | corruption in parameter set P], estimated as D / N from N
fault-injection trials on P. One **trial** is one fault scenario (one fault, or several, drawn in
P) applied with :func:`resil.inject` and evaluated over all the evaluation inputs (one faulty
forward pass over the batch, METHODS.md section 0). What makes a trial count as incorrect is
explicit, ``per_trial``:

- ``"fraction"`` (default): a trial contributes the share of evaluation inputs whose output is
  incorrect, so D is the sum of the shares and PVF the mean share over trials: the probability
  that a random (fault, input) pair gives an incorrect output. This is the failure probability of
  :mod:`resil.campaign.metrics`.
- ``"any"``: a trial counts 1 if the output of at least one evaluation input is incorrect.

An output is **incorrect** by the task's criterion: :class:`Top1` (classification: top-1 differs
from the golden top-1) or :class:`Deviation` (CTR / regression: ``|faulty - golden| > threshold``,
absolute or relative); a non-finite output (NaN, inf) is always incorrect.

Intervals are over trials, by resil's one rule (:func:`resil.statistics.scenario_estimate`): Wilson
score intervals for single-fault trials (exact binomial coverage for ``"any"``; conservative for
``"fraction"``, a share in [0, 1] with mean p has variance at most p (1 - p)), the t rule that keeps
what the number of trials cannot rule out for multi-fault and BER trials. Trials are drawn without replacement when one fault location per
trial is used, and a group with no more locations than the requested trials is injected
exhaustively (PVF exact). :func:`trials_needed` sizes N with Leveugle's formula, which is the
normal (Wald) approximation with a finite population correction.

Fault models: any of resil's (default a single bit flip, SBF). Several flips per trial
(``faults_per_trial=k``: k distinct locations of P, MBF), adjacent bits (``Burst(length)``: one
start bit per trial, MBBF) or a bit error rate (``ber=p``: every bit of P flips with probability p;
a trial in which no bit flipped counts as correct).

Example:
    >>> import torch, resil
    >>> from resil.analysis.pvf import PVFConfig, pvf
    >>> _ = torch.manual_seed(0); net = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    >>> result = pvf(net, torch.rand(8, 4), config=PVFConfig(trials=50), progress=False)
    >>> est = result["0"]                     # the layer "0": weight and bias, 15 x 32 bit locations
    >>> est.trials, est.population, 0 <= est.low <= est.pvf <= est.high <= 1
    (50, 480, True)
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..campaign.criteria import AccuracyDrop, Criterion, Deviation, Top1, criterion_from_spec
from ..campaign.evaluator import Evaluator, scenarios_of
from ..campaign.runner import describe
from ..campaign.samplers import PVF_STUDY
from ..campaign.sources import fingerprint_model, fingerprint_tensors
from ..campaign.space import FaultSpace, layer_of
from ..campaign.store import Store
from ..discovery import sites as list_sites
from ..errors import FaultError
from ..fault_models import BitFlip, FaultModel
from ..faults import FaultSet
from ..site import Site, SiteList
from ..statistics import leveugle_sample_size, scenario_estimate

__all__ = [
    "PARAMETER_KINDS",
    "Criterion",
    "Deviation",
    "PVFConfig",
    "PVFEstimate",
    "PVFResult",
    "ParameterGroup",
    "Top1",
    "parameter_groups",
    "pvf",
    "trials_needed",
]

#: site kinds that are model parameters (stored, learned): the default scope of PVF
PARAMETER_KINDS = ("weight", "bias", "parameter")


#: trials evaluated per call of the evaluator (one progress-bar step)
_CHUNK = 256


def _multi(total: int, seed: int, group: int, trial: int, ber: float | None, k: int) -> np.ndarray:
    """The sorted flat locations of one multi-fault (or BER) trial, seeded from (seed, group, trial)."""
    r = np.random.default_rng([seed, group, trial])
    count = r.binomial(total, ber) if ber is not None else min(k, total)
    return np.sort(r.choice(total, count, replace=False))


def _criterion(criterion: Criterion | str) -> Criterion:
    c = criterion_from_spec(criterion)
    if isinstance(c, AccuracyDrop):
        raise FaultError("PVF judges each input's output: use Top1(), TopK(k) or Deviation(...), not AccuracyDrop")
    return c


# --------------------------------------------------------------------------- groups


@dataclass(frozen=True)
class ParameterGroup:
    """A parameter set P: stored sites, optionally restricted to some bit positions."""

    name: str
    sites: tuple[Site, ...]
    bits: tuple[int, ...] | None = None

    def locations(self, width_bits: int = 1, whole_word: bool = False) -> FaultSpace:
        """The fault locations: (site, element, start bit); a start bit leaves room for ``width_bits`` bits."""
        elements, bits = [], []
        for s in self.sites:
            allowed = np.array([-1]) if whole_word else np.array(
                [b for b in (self.bits if self.bits is not None else range(s.bits)) if b + width_bits <= s.bits], dtype=np.int64)
            elements.append(s.elements())
            bits.append(allowed)
        sizes = np.array([len(e) * len(b) for e, b in zip(elements, bits, strict=True)], dtype=np.int64)
        return FaultSpace(self.sites, tuple(elements), tuple(bits), np.r_[0, np.cumsum(sizes)])

    @property
    def population(self) -> int:
        """Number of single-bit fault locations (element x bit) in the group."""
        return self.locations().total


def parameter_groups(
    sites: SiteList,
    by: str | Mapping[str, str | Sequence[str]] | Sequence[str] = "layer",
    *,
    kinds: Sequence[str] = PARAMETER_KINDS,
    bits: Sequence[int] | None = None,
) -> dict[str, ParameterGroup]:
    """Group a model's parameter sites.

    Args:
        sites: the model's sites (:func:`resil.sites`).
        by: ``"layer"`` (the module owning the parameters, e.g. ``conv1``), ``"site"`` (each
            tensor), ``"network"`` (all parameters), ``"bit"`` (one group per bit position over all
            parameters), a mapping ``{group: glob or globs on site names}`` (components, e.g.
            ``{"embedding": "emb.*"}``), or a list of layer or site names.
        kinds: site kinds counted as parameters.
        bits: restrict every group to these bit positions.

    Raises:
        FaultError: for an unknown grouping, a name or pattern that matches no parameter site
            (with the closest names), or a bit outside every site's encoding.

    Example:
        >>> import torch, resil
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
        >>> g = parameter_groups(resil.sites(net), {"first": "0.*", "last": ["2.weight", "2.bias"]})
        >>> {k: v.population for k, v in g.items()}
        {'first': 192, 'last': 96}
    """
    params = [s for s in sites if s.kind in kinds and not s.batched]
    if not params:
        raise FaultError(f"the model has no parameter sites of kinds {list(kinds)}")
    if bits is not None:
        bits = tuple(int(b) for b in bits)
        width = max(s.bits for s in params)
        bad = [b for b in bits if not 0 <= b < width]
        if not bits or bad:
            raise FaultError(f"bits must be a non-empty list of positions in 0..{width - 1}, got {list(bits)}")
    layers = {layer_of(s): None for s in params}
    groups: dict[str, list[Site]] = {}
    if isinstance(by, str):
        if by == "layer":
            for s in params:
                groups.setdefault(layer_of(s) or "(model)", []).append(s)
        elif by == "site":
            groups = {s.name: [s] for s in params}
        elif by == "network":
            groups = {"network": params}
        elif by == "bit":
            width = max(s.bits for s in params)
            return {f"bit {b}": ParameterGroup(f"bit {b}", tuple(s for s in params if b < s.bits), (b,))
                    for b in (bits if bits is not None else range(width))}
        else:
            raise FaultError(f"unknown grouping {by!r}: 'layer', 'site', 'network', 'bit', a mapping or a list of names")
    elif isinstance(by, Mapping):
        if not by:
            raise FaultError("the group mapping is empty")
        for name, patterns in by.items():
            pats = [patterns] if isinstance(patterns, str) else list(patterns)
            chosen = [s for s in params if any(fnmatch.fnmatchcase(s.name, p) for p in pats)]
            if not chosen:
                raise FaultError(f"group {name!r}: {pats} matches no parameter site{_closest(pats[0], [s.name for s in params])}")
            groups[str(name)] = chosen
    else:
        names = list(by)
        if not names:
            raise FaultError("the list of groups is empty")
        for name in names:
            chosen = [s for s in params if layer_of(s) == name] or [s for s in params if s.name == name]
            if not chosen:
                hint = _closest(name, [*layers, *(s.name for s in params)])
                raise FaultError(f"unknown group {name!r}: no layer or parameter site of that name{hint}")
            groups[name] = chosen
    return {k: ParameterGroup(k, tuple(v), bits) for k, v in groups.items()}


def _closest(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.5)
    return f"; closest: {', '.join(close)}" if close else f"; known: {', '.join(list(dict.fromkeys(names))[:12])}"


# --------------------------------------------------------------------------- results


def trials_needed(margin: float, confidence: float = 0.95, population: int | float = float("inf"), p: float = 0.5,
                  *, t: float | None = None) -> int:
    """Trials for a PVF known within +-``margin`` at ``confidence``: Leveugle et al. (DATE 2009),
    i.e. the normal (Wald) approximation n = t^2 p (1 - p) / e^2 with the finite population
    correction n / (1 + (n - 1) / N); ``p = 0.5`` is the conservative choice.

    Example:
        >>> trials_needed(0.01), trials_needed(0.01, 0.99, t=2.58), trials_needed(0.01, 0.99, 2304, t=2.58)
        (9604, 16641, 2024)
    """
    return leveugle_sample_size(population, margin, confidence, p, t=t)


@dataclass(frozen=True)
class PVFEstimate:
    """PVF of one group: D / N with its interval over trials.

    Attributes:
        pvf: D / N.
        low, high: the interval at ``confidence`` (``method``: Wilson for single faults, see
            :func:`resil.statistics.scenario_estimate`).
        trials: N.
        incorrect: D (a sum of shares for ``per_trial="fraction"``).
        population: fault locations in the group (the trials' universe for one location per trial).
        confidence: confidence level of the interval.
        exhaustive: every location was injected once (PVF exact for single-location trials).
    """

    pvf: float
    low: float
    high: float
    trials: int
    incorrect: float
    population: int
    confidence: float
    exhaustive: bool = False
    method: str = "wilson"

    @property
    def margin(self) -> float:
        """Half-width of the interval."""
        return (self.high - self.low) / 2

    @classmethod
    def of(cls, outcomes: np.ndarray, population: int, confidence: float, exhaustive: bool = False,
           single_fault: bool = True) -> PVFEstimate:
        """The estimate from the trials' outcomes (share of incorrect inputs, or 0/1)."""
        e = scenario_estimate(outcomes, confidence, single_fault=single_fault)
        return cls(e.value, e.low, e.high, e.n, float(np.sum(outcomes)), population, confidence, exhaustive, e.method)


@dataclass(frozen=True)
class PVFResult:
    """PVF per group, with every trial's record.

    Attributes:
        estimates: group name -> :class:`PVFEstimate`, in group order.
        records: one row per trial: ``group``, ``trial``, ``n_faults``, ``site``, ``element`` and
            ``bit`` of its first fault (bit -1 for whole-word models), ``incorrect`` (share of
            inputs), ``any`` (some input incorrect), ``non_finite`` (share of inputs).
        criterion, per_trial, fault_model, inputs: how the trials were judged and on how many inputs.
    """

    estimates: dict[str, PVFEstimate]
    records: pd.DataFrame = field(repr=False)
    criterion: Criterion
    per_trial: str
    fault_model: str
    inputs: int

    def __getitem__(self, group: str) -> PVFEstimate:
        if group not in self.estimates:
            raise FaultError(f"no group {group!r}{_closest(group, list(self.estimates))}")
        return self.estimates[group]

    def _outcome(self, df: pd.DataFrame) -> np.ndarray:
        return (df["incorrect"] if self.per_trial == "fraction" else df["any"].astype(float)).to_numpy()

    def by_bit(self, confidence: float | None = None) -> dict[int, PVFEstimate]:
        """PVF per bit position of the trials' (first) fault, pooled over every group run (each
        group weighted by its number of trials; use ``by="bit"`` for network-wide per-bit PVF)."""
        conf = confidence or next(iter(self.estimates.values())).confidence
        out = {}
        for b, df in self.records[self.records.bit >= 0].groupby("bit"):
            out[int(b)] = PVFEstimate.of(self._outcome(df), 0, conf, single_fault=bool((df["n_faults"] <= 1).all()))
        return dict(sorted(out.items()))

    def table(self, margin: float = 0.01) -> pd.DataFrame:
        """One row per group: PVF, interval, N, D, population, and the Leveugle N for +-``margin``
        with p = 0.5 (``n_for_margin``) and with p = the interval's upper end (``n_for_margin_p``)."""
        rows = []
        for name, e in self.estimates.items():
            pop = e.population or float("inf")
            rows.append({
                "group": name, "pvf": e.pvf, "low": e.low, "high": e.high, "margin": e.margin, "trials": e.trials,
                "incorrect": e.incorrect, "population": e.population, "exhaustive": e.exhaustive,
                "n_for_margin": trials_needed(margin, e.confidence, pop),
                "n_for_margin_p": trials_needed(margin, e.confidence, pop, p=min(0.5, max(e.high, 1e-9))),
            })
        return pd.DataFrame(rows).set_index("group")

    def format(self, title: str = "", margin: float | None = None) -> str:
        """A text table: group, PVF, interval, N, D, population; with ``margin``, also the
        Leveugle N for +-``margin`` at p = 0.5 and at p = the interval's upper end."""
        conf = next(iter(self.estimates.values())).confidence
        extra = f" {f'N(+-{margin:.0%}) p=.5':>15s} {'p=high':>7s}" if margin else ""
        head = f"{'group':36s} {'PVF':>8s}  {f'{conf:.0%} Wilson interval':>20s} {'N':>6s} {'D':>8s} {'population':>11s}{extra}"
        lines = [title] if title else []
        lines += [head, "-" * len(head)]
        table = self.table(margin) if margin else None
        for name, e in self.estimates.items():
            line = f"{name:36s} {e.pvf:8.4f}  [{e.low:7.4f}, {e.high:7.4f}] {e.trials:6d} {e.incorrect:8.2f} {e.population:11,d}"
            if table is not None:
                line += f" {table.loc[name, 'n_for_margin']:15,d} {table.loc[name, 'n_for_margin_p']:7,d}"
            lines.append(line + (" exhaustive" if e.exhaustive else ""))
        return "\n".join(lines)


# --------------------------------------------------------------------------- estimation


def _run_group(evaluator: Evaluator, space: FaultSpace, c: PVFConfig, n: int, g_pos: int, name: str, offset: int,
               bar: tqdm) -> dict[str, Any]:
    """The campaign columns of group ``g_pos``'s ``n`` trials (scenario ids from ``offset``), evaluated in chunks."""
    fm, ber = c.fault_model, c.ber
    order = np.random.default_rng([c.seed, g_pos]).permutation(space.total)[:n] if c.single else None
    names = np.array([s.name for s in space.sites])
    trials_flat = [order[i : i + 1] if order is not None else _multi(space.total, c.seed, g_pos, i, ber, c.faults_per_trial)
                   for i in range(n)]
    parts = []
    for chunk in range(0, n, _CHUNK):
        sets = []
        for flat in trials_flat[chunk : chunk + _CHUNK]:
            site, element, bit = space.locate(flat)
            sets.append(FaultSet(site=names[site], index=element, bit=bit if fm.uses_bits else None, model=fm))
        sc = scenarios_of(sets, np.arange(offset + chunk, offset + chunk + len(sets)))
        sc = dataclasses.replace(sc, stratum=np.full(len(sets), name, dtype=object),
                                 rate=np.full(len(sets), np.nan if ber is None else ber))
        counts = evaluator.evaluate(sc)
        parts.append({**describe(sc, space), "inputs": np.full(len(sets), len(evaluator.inputs), dtype=np.int64), **counts})
        bar.update(len(sets))
    return {k: (np.concatenate([p[k] for p in parts]) if isinstance(parts[0][k], np.ndarray) else [v for p in parts for v in p[k]])
            for k in parts[0]}


def _records(columns: Mapping[str, Any], group: str, inputs: int) -> pd.DataFrame:
    """One row per trial, from a group's campaign columns."""
    wrong = np.asarray(columns["critical"]) + np.asarray(columns["non_finite"])
    indices = columns["fault_indices"]
    return pd.DataFrame({
        "group": group, "trial": np.arange(len(wrong)), "n_faults": np.asarray(columns["n_faults"]),
        "site": [str(x[0]) if len(x) else "" for x in columns["fault_sites"]],
        "element": [int(x[0]) if len(x) else -1 for x in indices],
        "bit": [(int(m[0]) & -int(m[0])).bit_length() - 1 if len(m) and m[0] else -1 for m in columns["fault_masks"]],  # the start bit
        "incorrect": wrong / inputs, "any": wrong > 0, "non_finite": np.asarray(columns["non_finite"]) / inputs,
    })


def _part_columns(table: Any) -> dict[str, Any]:
    """A stored part's columns (lists for the list columns)."""
    return {c: (table.column(c).to_pylist() if c.startswith("fault_") else table.column(c).to_numpy()) for c in table.column_names}


def _study_store(out: Any, settings: dict[str, Any], model: nn.Module, evaluator: Evaluator, spaces: Mapping[str, FaultSpace],
                 plan: Mapping[str, tuple[int, bool]], locks: ExitStack) -> Store:
    """The PVF study's run directory: a campaign directory with one part per group (created or
    resumed), its writer lock held in ``locks``."""
    digest = hashlib.sha256(json.dumps({"pvf": settings}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    store = Store(out)
    manifest = {
        "version": 1, "name": "pvf", "model": type(model).__name__, "spec": settings, "spec_hash": digest, "sampler": PVF_STUDY,
        "fingerprint": {"model": fingerprint_model(model), "inputs": fingerprint_tensors(evaluator.inputs, None)},
        "live": {"model": True, "data": True}, "criterion": evaluator.criterion.spec(), "labels": False, "inputs": len(evaluator.inputs),
        "scenarios": sum(n for n, _ in plan.values()), "shards": len(spaces), "golden_accuracy": None,
        "space": sum(s.total for s in spaces.values()), "shard_scenarios": [plan[k][0] for k in spaces],
        "strata": {k: {"population": s.total, "known_masked": 0, "samples": plan[k][0]} for k, s in spaces.items()},
    }
    store.check(manifest)
    locks.enter_context(store.lock())
    store.create(manifest)
    return store


def _int_at_least_1(name: str, v: object) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise FaultError(f"{name} must be an integer >= 1, got {v!r}")


@dataclass(frozen=True)
class PVFConfig:
    """How :func:`pvf` samples and judges trials (checked when built).

    Attributes:
        trials: N per group (capped at the group's locations when one location is drawn per
            trial: then every location is injected once). None: use ``margin``.
        margin: with ``trials=None``, N per group = :func:`trials_needed` (``margin``,
            ``confidence``, the group's population, p = 0.5).
        confidence: confidence level of the intervals.
        fault_model: a resil fault model (default :class:`~resil.BitFlip`, one bit).
        faults_per_trial: k >= 1 distinct fault locations per trial (k bit flips: MBF).
        ber: instead of a fixed count, every bit of the group is faulty with probability ``ber``.
        bits: restrict faults to these bit positions.
        criterion: ``"top1"`` / :class:`Top1`, or :class:`Deviation` (threshold on the output).
        per_trial: ``"fraction"`` (share of inputs incorrect) or ``"any"`` (some input incorrect).
        kinds: site kinds treated as parameters.
        seed: random seed.
        batch_size: inputs per forward pass.
        mode: ``fast`` (many trials per forward pass, :class:`~resil.campaign.evaluator.Evaluator`)
            or ``plain`` (one full forward per trial); the results are identical.

    Example:
        >>> PVFConfig(trials=None, margin=0.05).margin
        0.05
    """

    trials: int | None = 1000
    margin: float | None = None
    confidence: float = 0.95
    fault_model: FaultModel = field(default_factory=BitFlip)
    faults_per_trial: int = 1
    ber: float | None = None
    bits: Sequence[int] | None = None
    criterion: Criterion | str = "top1"
    per_trial: Literal["fraction", "any"] = "fraction"
    kinds: Sequence[str] = PARAMETER_KINDS
    seed: int = 0
    batch_size: int = 512
    mode: str = "fast"

    def __post_init__(self) -> None:
        _criterion(self.criterion)
        fm = self.fault_model
        if not isinstance(fm, FaultModel):
            raise FaultError(f"fault_model must be a resil FaultModel, got {fm!r}")
        if self.per_trial not in ("fraction", "any"):
            raise FaultError(f"per_trial must be 'fraction' or 'any', got {self.per_trial!r}")
        if not 0 < self.confidence < 1:
            raise FaultError(f"confidence must be in (0, 1), got {self.confidence!r}")
        if self.trials is None:
            if self.margin is None or not 0 < self.margin < 1:
                raise FaultError(f"with trials=None give a margin in (0, 1), got {self.margin!r}")
        else:
            _int_at_least_1("trials", self.trials)
        _int_at_least_1("faults_per_trial", self.faults_per_trial)
        if self.ber is not None:
            if self.faults_per_trial != 1:
                raise FaultError("give either ber or faults_per_trial, not both")
            if isinstance(self.ber, bool) or not isinstance(self.ber, (int, float)) or not 0 < self.ber < 1:
                raise FaultError(f"ber must be in (0, 1), got {self.ber!r}")
            if not fm.uses_bits:
                raise FaultError(f"ber needs a bit-level fault model, not {type(fm).__name__}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise FaultError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")

    @property
    def single(self) -> bool:
        """Whether each trial is one fault location (drawn without replacement)."""
        return self.ber is None and self.faults_per_trial == 1

    def plan(self, spaces: Mapping[str, FaultSpace]) -> dict[str, tuple[int, bool]]:
        """Per group: the trials to run and whether they inject every location (exhaustive)."""
        plan: dict[str, tuple[int, bool]] = {}
        for name, space in spaces.items():
            n = int(self.trials) if self.trials is not None else trials_needed(self.margin, self.confidence, space.total)  # type: ignore[arg-type]
            plan[name] = (min(n, space.total), n >= space.total) if self.single else (n, False)
        return plan

    def settings(self, groups: Any, plan: Mapping[str, tuple[int, bool]]) -> dict[str, Any]:
        """What a stored study is identified by (its run directory's spec)."""
        return {"groups": groups if isinstance(groups, (str, Mapping)) else list(groups), "plan": {k: v[0] for k, v in plan.items()},
                "confidence": self.confidence, "fault_model": self.fault_model.spec(), "faults_per_trial": self.faults_per_trial,
                "ber": self.ber, "bits": None if self.bits is None else list(self.bits), "criterion": _criterion(self.criterion).spec(),
                "kinds": list(self.kinds), "seed": self.seed}


def pvf(
    model: nn.Module,
    inputs: torch.Tensor,
    groups: str | Mapping[str, str | Sequence[str]] | Sequence[str] = "layer",
    config: PVFConfig | None = None,
    *,
    sites: SiteList | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> PVFResult:
    """Estimate the PVF of each parameter group of ``model`` by fault injection.

    Each trial draws its faults in the group (seeded from ``(seed, group position, trial)``),
    applies them with :func:`resil.inject`, runs the evaluation inputs (only the stages from the
    first faulted one for ``nn.Sequential`` models, bit-identical to a full pass) and judges the
    outputs against the golden run with ``criterion``; see the module docstring for ``per_trial``.

    Args:
        model: the network (in the mode you want it evaluated, normally ``eval()``).
        inputs: the evaluation inputs, one tensor ``[B, ...]``.
        groups: parameter groups, see :func:`parameter_groups` (``"layer"``, ``"site"``,
            ``"network"``, ``"bit"``, ``{name: globs}``, or a list of layer names).
        config: trials, fault model, criterion ... (default :class:`PVFConfig`: 1000 single bit flips per group, top-1).
        sites: the model's sites, if already listed.
        out: a run directory to store the study in: a campaign directory with one part per group
            (the trials' faults and outcome counts), so a killed study resumes where it stopped
            when called again with the same arguments, and ``resil report`` draws it; another
            study, model or input set there is refused.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`PVFResult`.

    Raises:
        FaultError: before any injection, for bad arguments (unknown group, trials < 1, bad
            threshold, bits outside the encoding, incompatible options).
    """
    c = config or PVFConfig()
    crit, fm = _criterion(c.criterion), c.fault_model
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1 or len(inputs) < 1:
        raise FaultError("inputs must be a tensor [B, ...] with B >= 1")
    site_list = sites if sites is not None else list_sites(model)
    chosen = parameter_groups(site_list, groups, kinds=c.kinds, bits=c.bits)
    spaces = {name: g.locations(fm.span, whole_word=not fm.uses_bits) for name, g in chosen.items()}
    for name, space in spaces.items():
        if space.total == 0:
            raise FaultError(f"group {name!r} has no fault locations for {type(fm).__name__} with bits {c.bits}")
    plan = c.plan(spaces)
    evaluator = Evaluator(model, inputs, None, crit, sites=site_list, batch_size=c.batch_size, mode=c.mode)
    locks = ExitStack()
    store = _study_store(out, c.settings(groups, plan), model, evaluator, spaces, plan, locks) if out is not None else None
    bar = tqdm(total=sum(n for name, (n, _) in plan.items()), desc="PVF trials", disable=not progress, leave=False)
    try:
        estimates, frames = _estimate_groups(evaluator, spaces, plan, c, store, bar)
    finally:
        bar.close()
        locks.close()
    records = pd.concat(frames, ignore_index=True)
    return PVFResult(estimates, records, crit, c.per_trial, repr(fm) if c.ber is None else f"{fm!r}, BER {c.ber:g}", len(inputs))


def _estimate_groups(evaluator: Evaluator, spaces: Mapping[str, FaultSpace], plan: Mapping[str, tuple[int, bool]], c: PVFConfig,
                     store: Store | None, bar: tqdm) -> tuple[dict[str, PVFEstimate], list[pd.DataFrame]]:
    """Every group's trials (read back from ``store`` where it holds them, else run and stored): estimates and records."""
    frames: list[pd.DataFrame] = []
    estimates: dict[str, PVFEstimate] = {}
    offset = 0
    done = store.done() if store is not None else set()
    for g_pos, (name, space) in enumerate(spaces.items()):
        n, exhaustive = plan[name]
        if store is not None and g_pos in done:
            columns = _part_columns(store.read(g_pos))
            bar.update(n)
        else:
            columns = _run_group(evaluator, space, c, n, g_pos, name, offset, bar)
            if store is not None:
                store.write(g_pos, columns)
        offset += n
        df = _records(columns, name, len(evaluator.inputs))
        frames.append(df)
        outcomes = (df["incorrect"] if c.per_trial == "fraction" else df["any"].astype(float)).to_numpy()
        estimates[name] = PVFEstimate.of(outcomes, space.total, c.confidence, exhaustive, bool((df["n_faults"] <= 1).all()))
    return estimates, frames
