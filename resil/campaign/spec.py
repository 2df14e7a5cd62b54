"""Campaign specifications: frozen dataclasses, loadable from TOML (``version = 1``).

Example campaign file::

    version = 1
    name = "dense-uniform"
    seed = 0

    [model]
    names = ["dense-cnn"]        # bundled models, "package.module:factory" or "file.py:factory"
    # checkpoint = "net.pt"      # a state dict loaded (weights_only) into the factory's model
    # kwargs = { width = 16 }    # arguments of the factory

    [data]
    inputs = 256                 # how many inputs (0: all)
    # source = "mnist.npz"       # "package.module:function", "file.py:function", a .pt or .npz file
    # select = "random"          # "first" N (default) or a seeded random subset

    [sites]
    include = ["*"]              # glob patterns on site names
    kinds = ["weight", "bias"]   # weight, bias, parameter, buffer, activation, state, spike
    pruned = "live"              # or "dense"

    [faults]
    model = "bitflip"            # a registered fault model spec, e.g. 'stuck_at:{"value": 1}'
    bits = []                    # restrict bit positions (empty: every bit of each site)

    [sampler]
    kind = "uniform"             # exhaustive | uniform | ber | sfi | importance
    scenarios = 2000
    faults_per_scenario = 1

    [outcome]
    criterion = "top1"           # a registered criterion: top1, 'topk:{"k": 5}', 'deviation:{"threshold": 0.05}', ...

    [run]
    shard_size = 100
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FaultError
from ..fault_models import fault_model_from_spec
from .criteria import Criterion, Deviation, criterion_from_spec

SPEC_VERSION = 1
SAMPLERS = ("exhaustive", "uniform", "ber", "sfi", "importance")
KINDS = ("weight", "bias", "parameter", "buffer", "activation", "state", "spike")


@dataclass(frozen=True)
class ModelSpec:
    """Which models (one campaign each): bundled reference names, ``package.module:factory`` or
    ``path/to/file.py:factory`` (resolved from the current folder and the campaign file's), the
    factory called with ``kwargs``, then ``checkpoint`` (a state dict file) loaded into it.
    A live model passed to :func:`resil.campaign.run` replaces this section."""

    names: tuple[str, ...] = ("dense-cnn",)
    checkpoint: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSpec:
    """Which inputs: ``inputs`` of them (0: all), the first ones or a seeded random subset
    (``select = "random"``, seeded by the campaign seed), from ``source`` (a function or a
    ``.pt`` / ``.npz`` file, see :func:`resil.campaign.sources.load_data`) or else the test split
    of the bundled ``dataset`` (default: the bundled model's). Live data passed to
    :func:`resil.campaign.run` replaces ``source`` and ``dataset``."""

    dataset: str = ""
    source: str = ""
    inputs: int = 0
    select: str = "first"


@dataclass(frozen=True)
class SiteSpec:
    """Which sites: names matching any ``include`` glob, of one of ``kinds``."""

    include: tuple[str, ...] = ("*",)
    kinds: tuple[str, ...] = ("weight", "bias")
    pruned: str = "live"


@dataclass(frozen=True)
class FaultSpec:
    """Which fault model, on which bit positions (empty: all)."""

    model: str = "bitflip"
    bits: tuple[int, ...] = ()


@dataclass(frozen=True)
class SamplerSpec:
    """How scenarios are drawn.

    Attributes:
        kind: ``exhaustive`` (every site x element x bit), ``uniform`` (``scenarios`` scenarios of
            ``faults_per_scenario`` faults), ``ber`` (every bit faulty with probability p, for each
            p in ``rates``, ``scenarios`` scenarios per rate), ``sfi`` (Leveugle sample size for
            ``margin``/``confidence``/``p`` per stratum of ``granularity``: network, layer,
            layer_bit; ``trials > 0`` draws that many per stratum instead, every location when a
            stratum has fewer: a PVF study per layer; ``data_aware`` skips stuck-at faults equal
            to the stored bit), or
            ``importance`` (sensitivity-driven with a ``uniform_share`` defensive mixture).
        stop_margin: adaptive campaign (``uniform``, ``ber``, ``sfi``; 0: off): run in rounds of
            one shard per stratum (per rate for ``ber``, per layer/bit stratum for ``sfi``) and
            stop each stratum once the half-width of its 95% interval is at most this; see
            :mod:`resil.campaign.adaptive`. Replaces ``scenarios`` (and ``margin`` / ``trials`` for ``sfi``).
        max_scenarios: with ``stop_margin``, the most scenarios per stratum (needed for
            ``uniform`` and ``ber``; ``sfi`` defaults to Leveugle's conservative n).
    """

    kind: str = "uniform"
    scenarios: int = 1000
    faults_per_scenario: int = 1
    rates: tuple[float, ...] = ()
    margin: float = 0.01
    confidence: float = 0.99
    p: float = 0.5
    granularity: str = "network"
    trials: int = 0
    data_aware: bool = False
    uniform_share: float = 0.1
    stop_margin: float = 0.0
    max_scenarios: int = 0


@dataclass(frozen=True)
class OutcomeSpec:
    """How a faulty output is judged: a registered criterion's spec (:mod:`resil.campaign.criteria`:
    ``top1``, ``'topk:{"k": 5}'``, ``'deviation:{"threshold": 0.05, "relative": true}'``,
    ``'accuracy_drop:{"theta": 0.1}'`` or your own); ``relative`` with ``threshold`` is short for
    a relative deviation."""

    criterion: str = "top1"
    threshold: float = 0.0

    def build(self) -> Criterion:
        """The criterion this section names."""
        if self.criterion == "relative":
            return Deviation(self.threshold, relative=True)
        return criterion_from_spec(self.criterion)


@dataclass(frozen=True)
class RunSpec:
    """Execution: scenarios per shard (the unit of storage and resumption), input batch size, and
    ``mode``: ``fast`` (scenarios whose faults provably change no stored code, such as a stuck-at
    equal to the stored bit, are masked without a forward pass; the others run from their first
    faulted stage on, from cached golden stage inputs; bit-identical results) or ``plain`` (a
    full forward per scenario, the reference). A model whose fault-free runs differ (dropout
    active) is refused unless ``nondeterministic = true``, which runs it in plain mode.
    ``memory_mb`` bounds the golden outputs recorded for replay (the rest is recomputed)."""

    shard_size: int = 100
    batch_size: int = 512
    mode: str = "fast"
    nondeterministic: bool = False
    memory_mb: int = 2048


@dataclass(frozen=True)
class CampaignSpec:
    """A whole campaign; one model per campaign (see :meth:`per_model`)."""

    name: str = "campaign"
    seed: int = 0
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    sites: SiteSpec = field(default_factory=SiteSpec)
    faults: FaultSpec = field(default_factory=FaultSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    outcome: OutcomeSpec = field(default_factory=OutcomeSpec)
    run: RunSpec = field(default_factory=RunSpec)
    version: int = SPEC_VERSION
    #: the folder sources resolve from besides the current one (the campaign file's); not hashed
    base: str = ""

    def __post_init__(self) -> None:
        _validate(self)

    def per_model(self) -> list[CampaignSpec]:
        """One spec per model name (named ``<name>/<model>`` when there are several)."""
        if len(self.model.names) == 1:
            return [self]
        return [dataclasses.replace(self, name=f"{self.name}/{m}", model=ModelSpec((m,))) for m in self.model.names]

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready dict (the inverse of :func:`spec_from_dict`)."""
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """A short hash of everything that determines the results (not :attr:`base`)."""
        d = {k: v for k, v in self.to_dict().items() if k != "base"}
        for key in ("stop_margin", "max_scenarios"):  # unset adaptive fields: the hashes of campaigns stored before them
            if not d["sampler"][key]:
                del d["sampler"][key]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


_SECTIONS = {"model": ModelSpec, "data": DataSpec, "sites": SiteSpec, "faults": FaultSpec, "sampler": SamplerSpec, "outcome": OutcomeSpec, "run": RunSpec}


def spec_from_dict(d: dict[str, Any], source: str = "campaign spec") -> CampaignSpec:
    """Build a :class:`CampaignSpec` from a dict (as read from TOML), naming any unknown key."""
    d = dict(d)
    version = d.pop("version", None)
    if version != SPEC_VERSION:
        raise FaultError(f"{source}: version must be {SPEC_VERSION}, got {version!r}")
    top = {f.name for f in dataclasses.fields(CampaignSpec)} - set(_SECTIONS) - {"version"}
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise FaultError(f"{source}: [{key}] must be a table")
            cls = _SECTIONS[key]
            known = {f.name: f for f in dataclasses.fields(cls)}
            unknown = set(value) - set(known)
            if unknown:
                raise FaultError(f"{source}: unknown key(s) {sorted(unknown)} in [{key}]; known: {sorted(known)}")
            kwargs[key] = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
        elif key in top:
            kwargs[key] = value
        else:
            raise FaultError(f"{source}: unknown key {key!r}; known: {sorted(top | set(_SECTIONS) | {'version'})}")
    try:
        return CampaignSpec(**kwargs)
    except TypeError as e:
        raise FaultError(f"{source}: {e}") from None


def load_spec(path: str | Path) -> CampaignSpec:
    """Read a campaign TOML file.

    Raises:
        FaultError: naming the file and the problem (syntax, unknown key, bad value).
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FaultError(f"campaign file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise FaultError(f"{path}: not valid TOML: {e}") from None
    data.setdefault("base", str(path.resolve().parent))
    sampler = data.get("sampler")
    if isinstance(sampler, dict) and sampler.get("stop_margin") and "scenarios" in sampler:
        raise FaultError(f"{path}: [sampler] give either scenarios or stop_margin (with max_scenarios), not both")
    return spec_from_dict(data, str(path))


def _validate(s: CampaignSpec) -> None:
    def bad(msg: str) -> FaultError:
        return FaultError(f"campaign {s.name!r}: {msg}")

    if s.version != SPEC_VERSION:
        raise bad(f"version must be {SPEC_VERSION}")
    if isinstance(s.model.names, str) or not isinstance(s.model.names, tuple) or not s.model.names:
        raise bad(f"[model] names must be a list of at least one model name, got {s.model.names!r}")
    for n in s.model.names:
        if not isinstance(n, str) or not n:
            raise bad(f"[model] names must be model names or 'package.module:factory' strings, got a {type(n).__name__} ({n!r:.60}); "
                      "pass a live model as resil.campaign.run(spec, out, model=...)")
    if not isinstance(s.model.checkpoint, str) or not isinstance(s.model.kwargs, dict):
        raise bad("[model] checkpoint must be a file path and kwargs a table of factory arguments")
    for key in ("dataset", "source"):
        v = getattr(s.data, key)
        if not isinstance(v, str):
            raise bad(f"[data] {key} must be a string, got a {type(v).__name__}; pass live data as resil.campaign.run(spec, out, data=...)")
    if isinstance(s.data.inputs, bool) or not isinstance(s.data.inputs, int) or s.data.inputs < 0:
        raise bad(f"[data] inputs must be an integer >= 0 (0: all), not {s.data.inputs!r}")
    if s.data.select not in ("first", "random"):
        raise bad(f"[data] select must be 'first' or 'random', not {s.data.select!r}")
    if not s.sites.kinds or set(s.sites.kinds) - set(KINDS):
        raise bad(f"[sites] kinds must be among {KINDS}, not {list(s.sites.kinds)}")
    if s.sites.pruned not in ("live", "dense"):
        raise bad(f"[sites] pruned must be 'live' or 'dense', not {s.sites.pruned!r}")
    fault_model_from_spec(s.faults.model)  # raises FaultError naming an unknown model
    if any(not 0 <= b < 64 for b in s.faults.bits):
        raise bad(f"[faults] bits must be in 0..63, not {list(s.faults.bits)}")
    sm = s.sampler
    if sm.kind not in SAMPLERS:
        raise bad(f"[sampler] kind must be one of {SAMPLERS}, not {sm.kind!r}")
    if sm.scenarios < 1 or sm.faults_per_scenario < 1:
        raise bad("[sampler] scenarios and faults_per_scenario must be >= 1")
    if sm.kind == "ber" and (not sm.rates or any(not 0 < r < 1 for r in sm.rates)):
        raise bad(f"[sampler] kind 'ber' needs rates in (0, 1), got {list(sm.rates)}")
    if sm.kind == "importance" and sm.faults_per_scenario != 1:
        raise bad("[sampler] kind 'importance' draws single faults: faults_per_scenario must be 1")
    if sm.data_aware and not s.faults.model.startswith("stuck_at"):
        raise bad("[sampler] data_aware applies to stuck-at fault models only")
    if isinstance(sm.trials, bool) or not isinstance(sm.trials, int) or sm.trials < 0:
        raise bad(f"[sampler] trials must be an integer >= 0 (0: the Leveugle sample size), not {sm.trials!r}")
    if sm.kind == "sfi" and sm.granularity not in ("network", "layer", "layer_bit"):
        raise bad(f"[sampler] granularity must be network, layer or layer_bit, not {sm.granularity!r}")
    if not (0 < sm.margin < 1 and 0 < sm.confidence < 1 and 0 < sm.p < 1 and 0 < sm.uniform_share <= 1):
        raise bad("[sampler] margin, confidence and p must be in (0, 1), uniform_share in (0, 1]")
    try:
        s.outcome.build()
    except FaultError as e:
        raise bad(f"[outcome] {e}") from None
    if s.run.mode not in ("fast", "plain"):
        raise bad(f"[run] mode must be 'fast' or 'plain', not {s.run.mode!r}")
    if not isinstance(s.run.nondeterministic, bool):
        raise bad(f"[run] nondeterministic must be true or false, not {s.run.nondeterministic!r}")
    if isinstance(s.run.memory_mb, bool) or not isinstance(s.run.memory_mb, int) or s.run.memory_mb < 0:
        raise bad(f"[run] memory_mb must be an integer >= 0, not {s.run.memory_mb!r}")
    if s.run.shard_size < 1 or s.run.batch_size < 1:
        raise bad("[run] shard_size and batch_size must be >= 1")
    _validate_stop(s, bad)


def _validate_stop(s: CampaignSpec, bad: Any) -> None:
    """The adaptive-campaign fields: ``stop_margin`` and ``max_scenarios`` (see :mod:`resil.campaign.adaptive`)."""
    sm, default = s.sampler, SamplerSpec()
    for key in ("stop_margin", "max_scenarios"):
        v = getattr(sm, key)
        if isinstance(v, bool) or not isinstance(v, int if key == "max_scenarios" else (int, float)):
            raise bad(f"[sampler] {key} must be a number, not {v!r}")
    if not sm.stop_margin:
        if sm.max_scenarios:
            raise bad("[sampler] max_scenarios applies to adaptive campaigns only: set stop_margin too")
        return
    if not 0 < sm.stop_margin < 0.5:
        raise bad(f"[sampler] stop_margin (the half-width each stratum's 95% interval must reach) must be in (0, 0.5), "
                  f"not {sm.stop_margin!r}")
    if sm.kind not in ("uniform", "ber", "sfi"):
        raise bad(f"[sampler] stop_margin applies to the uniform, ber and sfi samplers, not {sm.kind!r}")
    if sm.scenarios != default.scenarios or (sm.kind == "sfi" and sm.trials):
        raise bad("[sampler] give either a fixed number of scenarios (scenarios, trials) or stop_margin, not both; "
                  "with stop_margin, max_scenarios bounds the scenarios per stratum")
    pilot = s.run.shard_size
    if sm.kind == "sfi":
        from ..statistics import leveugle_sample_size

        pilot = leveugle_sample_size(float("inf"), 0.05, sm.confidence)
    if sm.max_scenarios < 0 or (sm.kind != "sfi" and not sm.max_scenarios):
        raise bad(f"[sampler] stop_margin needs max_scenarios (an integer >= the pilot of {pilot} scenarios per stratum)")
    if sm.max_scenarios and sm.max_scenarios < pilot:
        what = "[run] shard_size, the first round" if sm.kind != "sfi" else "Leveugle's n for a 5% margin, iterative SFI's pilot"
        raise bad(f"[sampler] max_scenarios ({sm.max_scenarios}) is below the pilot size {pilot} ({what})")
