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
    # per_sample = true          # each fault hits one input's activations (drawn per scenario), not every input's

    [sampler]
    kind = "uniform"             # exhaustive | uniform | ber | sfi | importance
    scenarios = 2000
    faults_per_scenario = 1

    [outcome]
    criterion = "top1"           # a registered criterion: top1, 'topk:{"k": 5}', 'deviation:{"threshold": 0.05}', ...

    [run]
    shard_size = 100
    # device = "cuda"            # auto | cpu (default) | cuda | cuda:N
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import tomllib

from ..errors import FaultError
from ..fault_models import fault_model_from_spec
from .criteria import Criterion, Deviation, criterion_from_spec
from .device import check_device_name
from .samplers import adaptive_kinds, sampler_class, sampler_kinds

SPEC_VERSION = 1
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
    """Which fault model, on which bit positions (empty: all); ``per_sample``: each fault hits
    the computed values (activations, neuron state, spikes) of one input only, drawn uniformly
    from the campaign's inputs (seeded per scenario), instead of every input's."""

    model: str = "bitflip"
    bits: tuple[int, ...] = ()
    per_sample: bool = False


class _DefaultCount(int):
    """The default of :attr:`SamplerSpec.scenarios`: an ``int`` equal to 1000 that tells that it
    was not given, so that an explicit ``scenarios`` beside ``stop_margin`` is refused."""


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
            ``importance`` (sensitivity-driven with a ``uniform_share`` defensive mixture), or
            the kind of a sampler of your own (:func:`resil.campaign.samplers.register_sampler`).
        scenarios: the number of scenarios (per rate for ``ber``); left at its default, it may
            give way to ``stop_margin`` (:attr:`scenarios_given` tells an explicit 1000 from the default).
        stop_margin: adaptive campaign (``uniform``, ``ber``, ``sfi``; 0: off): run in rounds of
            one shard per stratum (per rate for ``ber``, per layer/bit stratum for ``sfi``) and
            stop each stratum once the half-width of its 95% interval is at most this; see
            :mod:`resil.campaign.adaptive`. Replaces ``scenarios`` (and ``margin`` / ``trials`` for ``sfi``).
        max_scenarios: with ``stop_margin``, the most scenarios per stratum (needed for
            ``uniform`` and ``ber``; ``sfi`` defaults to Leveugle's conservative n).
    """

    kind: str = "uniform"
    scenarios: int = _DefaultCount(1000)
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

    @property
    def scenarios_given(self) -> bool:
        """Whether ``scenarios`` was given (even as the default's value), not left at its default.

        Example:
            >>> SamplerSpec().scenarios_given, SamplerSpec(scenarios=1000).scenarios_given
            (False, True)
        """
        return not isinstance(self.scenarios, _DefaultCount)


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
    ``memory_mb`` bounds the golden outputs recorded for replay (the rest is recomputed).
    ``device``: ``cpu`` (default), ``cuda``, ``cuda:N`` or ``auto`` (CUDA if there is one), see
    :mod:`resil.campaign.device`."""

    shard_size: int = 100
    batch_size: int = 512
    mode: str = "fast"
    nondeterministic: bool = False
    memory_mb: int = 2048
    device: str = "cpu"


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
        """A short hash of everything that determines the results (not :attr:`base`; the device
        only when it is not the default ``cpu``, so directories written before it existed resume)."""
        d = {k: v for k, v in self.to_dict().items() if k != "base"}
        if d["run"]["device"] == "cpu":
            del d["run"]["device"]
        for key in ("stop_margin", "max_scenarios"):  # unset adaptive fields: the hashes of campaigns stored before them
            if not d["sampler"][key]:
                del d["sampler"][key]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


_SECTIONS = {"model": ModelSpec, "data": DataSpec, "sites": SiteSpec, "faults": FaultSpec, "sampler": SamplerSpec, "outcome": OutcomeSpec,
             "run": RunSpec}


def spec_from_dict(d: dict[str, Any], source: str = "campaign spec") -> CampaignSpec:
    """Build a :class:`CampaignSpec` from a dict (as read from TOML), naming any unknown key."""
    if not isinstance(d, dict):
        raise FaultError(f"{source}: a campaign spec is a table of keys, not a {type(d).__name__}")
    d = dict(d)
    version = d.pop("version", None)
    if type(version) is not int or version != SPEC_VERSION:
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
            if key == "sampler" and value.get("stop_margin") and value.get("scenarios") == SamplerSpec.scenarios:
                value = {k: v for k, v in value.items() if k != "scenarios"}  # a stored spec holds every field: the default
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
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FaultError(f"campaign file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise FaultError(f"campaign file {str(path)!r} is a directory; give a TOML file such as examples/quick_uniform.toml") from None
    except UnicodeDecodeError:
        raise FaultError(f"campaign file {str(path)!r} is not a text file (not UTF-8); a campaign file is TOML") from None
    except OSError as e:
        raise FaultError(f"cannot read campaign file {str(path)!r}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise FaultError(f"{path}: not valid TOML: {e}") from None
    data.setdefault("base", str(path.resolve().parent))
    sampler = data.get("sampler")
    if isinstance(sampler, dict) and sampler.get("stop_margin") and "scenarios" in sampler:
        raise FaultError(f"{path}: [sampler] give either scenarios or stop_margin (with max_scenarios), not both")
    spec = spec_from_dict(data, str(path))
    check_name(spec.name, str(path))
    return spec


def check_name(name: str, source: str = "campaign spec") -> None:
    """Refuse a campaign name that is not one safe path component (the command line runs
    several campaign files into ``OUT/<name>``).

    Example:
        >>> check_name("../x")
        Traceback (most recent call last):
        ...
        resil.errors.FaultError: campaign spec: name '../x' must be a single folder name ...
    """
    if not name or name in (".", "..") or any(c in name for c in "/\\") or not name.isprintable() or name != name.strip():
        raise FaultError(f"{source}: name {name!r} must be a single folder name (no '/', '\\', '..', surrounding spaces "
                         "or control characters, not empty): results go to OUT/<name> when several files run together")


def _validate(s: CampaignSpec) -> None:
    """Every field's type and range, then the rules that tie fields together (one pass, first problem raised)."""
    def bad(msg: str) -> FaultError:
        return FaultError(f"campaign {s.name!r:.80}: {msg}")

    for section, obj in (("", s), *((k, getattr(s, k)) for k in _SECTIONS)):
        if section and not isinstance(obj, _SECTIONS[section]):
            raise bad(f"[{section}] must be a resil.campaign.{_SECTIONS[section].__name__}, not {type(obj).__name__}")
        hints = _hints(_SECTIONS[section] if section else CampaignSpec)
        for f in dataclasses.fields(obj):
            if not (section == "" and f.name in _SECTIONS):
                problem = _check_field(section, f.name, getattr(obj, f.name), hints[f.name])
                if problem:
                    raise bad(problem + _LIVE.get((section, f.name), ""))
    if s.version != SPEC_VERSION:
        raise bad(f"version must be {SPEC_VERSION}")
    if any(not n for n in s.model.names):
        raise bad("[model] names must not hold an empty name")
    try:
        fault_model = fault_model_from_spec(s.faults.model)
    except FaultError as e:
        raise bad(f"[faults] model: {e}") from None
    if s.faults.bits and not fault_model.uses_bits:
        raise bad(f"[faults] bits restricts bit positions, but fault model {s.faults.model!r} replaces whole words: remove bits")
    if any(not 0 <= b < 64 for b in s.faults.bits):
        raise bad(f"[faults] bits must be in 0..63 (0 = least significant), not {list(s.faults.bits)}")
    past = [b for b in s.faults.bits if b + fault_model.span > 64]
    if past:
        raise bad(f"[faults] bits: fault model {s.faults.model!r} spans {fault_model.span} bits, so from bit {past[0]} it runs past bit 63")
    if s.faults.per_sample and set(s.sites.kinds) - {"activation", "state", "spike"}:
        raise bad(f"[faults] per_sample faults hit one input's computed values: [sites] kinds must be among activation, "
                  f"state, spike (stored weights are shared by every input), not {list(s.sites.kinds)}")
    try:
        check_device_name(s.run.device)
    except FaultError as e:
        raise bad(str(e)) from None
    sm = s.sampler
    problem = sampler_class(sm.kind).check(sm)
    if problem:
        raise bad(problem)
    if sm.data_aware and fault_model.stuck_value is None:
        raise bad("[sampler] data_aware applies to stuck-at fault models only (those with a stuck_value)")
    try:
        s.outcome.build()
    except FaultError as e:
        raise bad(f"[outcome] {e}") from None
    _validate_stop(s, bad)


#: how to pass what a field cannot hold (a live object)
_LIVE = {("model", "names"): "; pass a live model as resil.campaign.run(spec, out, model=...)",
         ("data", "source"): "; pass live data as resil.campaign.run(spec, out, data=...)",
         ("data", "dataset"): "; pass live data as resil.campaign.run(spec, out, data=...)"}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


#: the largest integer a spec field takes (results are stored as int64)
INT_MAX = (1 << 63) - 1

#: range checks per ``(section, field)`` after the type checks: an integer's least value, a
#: number's interval within [0, 1] (each item of a list), the allowed strings, lists that need an entry
_INT_MIN = {("", "seed"): 0, ("data", "inputs"): 0, ("sampler", "scenarios"): 1, ("sampler", "faults_per_scenario"): 1,
            ("sampler", "trials"): 0, ("run", "shard_size"): 1, ("run", "batch_size"): 1, ("run", "memory_mb"): 0}
_UNIT = {("sampler", "margin"): "(0, 1)", ("sampler", "confidence"): "(0, 1)", ("sampler", "p"): "(0, 1)",
         ("sampler", "uniform_share"): "(0, 1]", ("sampler", "rates"): "(0, 1)"}
_CHOICES: dict[tuple[str, str], tuple[str, ...] | Callable[[], tuple[str, ...]]] = {
            ("data", "select"): ("first", "random"), ("sites", "kinds"): KINDS, ("sites", "pruned"): ("live", "dense"),
            ("sampler", "kind"): sampler_kinds, ("sampler", "granularity"): ("network", "layer", "layer_bit"),
            ("run", "mode"): ("fast", "plain")}
_NONEMPTY = {("model", "names"), ("sites", "include"), ("sites", "kinds")}


def _where(section: str, name: str) -> str:
    return f"[{section}] {name}" if section else name


def _type_problem(value: Any, hint: Any) -> str | None:
    """What is wrong with ``value`` as a ``hint`` (int, float, str, bool, tuple[X, ...], dict), or None."""
    if hint is bool:
        return None if isinstance(value, bool) else f"must be true or false, not {value!r:.80}"
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            return f"must be an integer, not {value!r:.80}"
        return None if abs(value) <= INT_MAX else f"must be an integer of at most {INT_MAX} in magnitude, not {value}"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else f"must be a finite number, not {value!r:.80}"
    if hint is str:
        if not isinstance(value, str):
            return f"must be a string, not {value!r:.80}"
        return "must not contain a NUL character" if "\0" in value else None
    if get_origin(hint) is tuple:
        item = get_args(hint)[0]
        if not isinstance(value, (tuple, list)):
            return f"must be a list of {_PLURAL[item]} (e.g. [{_EXAMPLE[item]}]), not the single value {value!r:.80}"
        bad = [v for v in value if _type_problem(v, item)]
        return f"must be a list of {_PLURAL[item]}; {bad[0]!r:.80} is not one" if bad else None
    if get_origin(hint) is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return f"must be a table, not {value!r:.80}"
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            return f"must hold only strings, finite numbers, booleans, lists and tables, not {value!r:.80}"
        return None
    raise TypeError(f"no check for a spec field of type {hint}")  # a new field type needs a rule here


_PLURAL = {str: "strings", int: "integers", float: "numbers"}
_EXAMPLE = {str: '"*"', int: "0, 1", float: "0.001"}


def _check_field(section: str, name: str, value: Any, hint: Any) -> str | None:
    """The problem with one field's value (type, then range), or None."""
    problem = _type_problem(value, hint)
    if problem:
        return f"{_where(section, name)} {problem}"
    key = (section, name)
    items = list(value) if isinstance(value, (tuple, list)) else [value]
    if key in _NONEMPTY and not items:
        return f"{_where(section, name)} must list at least one entry"
    if key in _INT_MIN and value < _INT_MIN[key]:
        return f"{_where(section, name)} must be an integer >= {_INT_MIN[key]}, not {value!r}"
    if key in _UNIT:
        interval = _UNIT[key]
        bad = [v for v in items if not (0 < v < 1 or (interval.endswith("]") and v == 1))]
        if bad:
            return f"{_where(section, name)} must be in {interval}, not {bad[0]!r}"
    if key in _CHOICES:
        choices = _CHOICES[key]
        allowed = choices() if callable(choices) else choices
        bad = [v for v in items if v not in allowed]
        if bad:
            return f"{_where(section, name)} must be one of {', '.join(allowed)}, not {bad[0]!r}"
    twice = [v for v in items if items.count(v) > 1] if isinstance(value, (tuple, list)) else []
    if twice:
        return f"{_where(section, name)} lists {twice[0]!r} twice"
    return None


def _validate_stop(s: CampaignSpec, bad: Any) -> None:
    """The adaptive-campaign fields: ``stop_margin`` and ``max_scenarios`` (see :mod:`resil.campaign.adaptive`)."""
    sm = s.sampler  # their types: checked with every field's, from the annotations
    if not sm.stop_margin:
        if sm.max_scenarios:
            raise bad("[sampler] max_scenarios applies to adaptive campaigns only: set stop_margin too")
        return
    if not 0 < sm.stop_margin < 0.5:
        raise bad(f"[sampler] stop_margin (the half-width each stratum's 95% interval must reach) must be in (0, 0.5), "
                  f"not {sm.stop_margin!r}")
    sampler = sampler_class(sm.kind)
    if not sampler.adaptive:
        *most, last = adaptive_kinds()
        raise bad(f"[sampler] stop_margin applies to the {', '.join(most)} and {last} samplers, not {sm.kind!r}")
    problem = sampler.check_adaptive(sm, s.run.shard_size)
    if problem:
        raise bad(problem)
