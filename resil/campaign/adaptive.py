"""Adaptive campaigns: rounds of one shard per stratum, until every stratum knows enough.

With ``[sampler] stop_margin = e`` (and ``max_scenarios``) a campaign runs its strata (the rates
of a ``ber`` campaign, the whole space of a ``uniform`` one, the layers or layer x bit strata of
an ``sfi`` one) in rounds: each round runs the next shard (``[run] shard_size`` scenarios) of
every stratum still open; then each stratum is checked:

- ``uniform`` / ``ber``: closed once the 95% betting confidence sequence of its failure fraction
  and, with labelled data, of its accuracy (:func:`resil.statistics.sequence_interval`: hedged
  capital, Waudby-Smith & Ramdas, JRSS-B 2024, Theorem 3) has a half-width <= e. A confidence
  sequence holds at every round at once, so stopping on it keeps the 95% coverage; the
  campaign's tables then show that interval (method ``betting``).
- ``sfi``: iterative SFI (Ruospo et al., IEEE TC 2025): a pilot of Leveugle's n for a 5% margin
  (p = 0.5), then, after every round, n re-planned from the observed failure rate p^ (Leveugle's
  n for the margin e at p^, with the finite population correction) until the stratum has that
  many; the stratified estimate (Wald with the finite population correction) as before;

or once it has ``max_scenarios`` (or all its locations). Each stratum's decision depends only on
its own scenarios, so a campaign resumed after an interruption ends exactly as an uninterrupted
one would. The manifest's ``stop`` entry records, per stratum, the scenarios run, the half-width
reached and why it stopped.

Shards are numbered ``block * rounds + round`` (:func:`round_ids`), block = stratum.

Example:
    >>> round_ids([("p=1e-05", 0, 250), ("p=1e-04", 250, 250)], 100, 4).tolist()[:3]  # block 1, round 1
    [350, 351, 352]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..statistics import leveugle_sample_size, normal_quantile, sequence_interval

Blocks = Sequence[tuple[str, int, int]]


def rounds(blocks: Blocks, size: int) -> int:
    """Rounds of the largest stratum: shards per stratum in the numbering."""
    return max([-(-count // size) for _, _, count in blocks] or [1])


def shard_count(blocks: Blocks, size: int) -> int:
    """Shards in the numbering of an adaptive campaign (some may stay empty)."""
    return len(blocks) * rounds(blocks, size)


def round_ids(blocks: Blocks, size: int, shard: int) -> np.ndarray:
    """The scenario ids of ``shard``: round ``shard % rounds`` of stratum ``shard // rounds``."""
    block, j = divmod(shard, rounds(blocks, size))
    _, start, count = blocks[block]
    return start + np.arange(j * size, min((j + 1) * size, count), dtype=np.int64)


def decide(runner: Any, table: Any) -> dict[str, dict[str, Any]]:
    """Per stratum: whether it is ``open``, its ``next`` round, ``scenarios`` run, ``half_width`` and
    ``stopped`` reason, by the sampler's :meth:`~resil.campaign.samplers.Sampler.stop_rule`."""
    size = runner.spec.run.shard_size
    sampler = runner.sampler
    out = {}
    for b, (name, start, count) in enumerate(sampler.blocks()):
        rows = table[(table.scenario >= start) & (table.scenario < start + count)] if table is not None else None
        n = 0 if rows is None else len(rows)
        state: dict[str, Any] = {"block": b, "next": -(-n // size), "scenarios": n, "half_width": None, "stopped": ""}
        if rows is not None and n:
            failure = ((rows.critical + rows.non_finite) / rows.inputs).to_numpy(dtype=float)
            accuracy = (rows.correct / rows.inputs).to_numpy(dtype=float) if runner.labels is not None else None
            state.update(sampler.stop_rule(b, failure, accuracy))
        if not state["stopped"] and n >= count:
            locations = sampler.locations(b)
            state["stopped"] = "population" if locations is not None and count >= locations else "max_scenarios"
        state["open"] = not state["stopped"]
        out[name] = state
    return out


def sequence_stop(series: Sequence[np.ndarray], margin: float) -> dict[str, Any]:
    """The stop rule of ``uniform`` / ``ber`` strata: the widest 95% betting confidence sequence
    of ``series`` (failure, accuracy fractions) has a half-width <= ``margin``.

    Example:
        >>> sequence_stop([np.zeros(400)], 0.05)["stopped"], sequence_stop([np.zeros(4)], 0.05)["stopped"]
        ('margin', '')
    """
    half = max((high - low) / 2 for low, high in (sequence_interval(v) for v in series))
    return {"half_width": half, "stopped": "margin" if half <= margin else ""}


def iterative_sfi(failure: np.ndarray, population: int, margin: float, confidence: float) -> dict[str, Any]:
    """Ruospo et al.'s iterative SFI step: pilot for 5%, then n re-planned from the observed rate."""
    n, p = failure.size, float(failure.mean())
    pilot = leveugle_sample_size(population, 0.05, confidence, 0.5)
    planned = max(pilot, leveugle_sample_size(population, margin, confidence, min(max(p, 1e-9), 1 - 1e-9)))
    fpc = (population - n) / (population - 1) if population > 1 else 0.0
    half = normal_quantile(confidence) * math.sqrt(max(p * (1 - p) / n * fpc, 0.0))
    return {"planned": planned, "half_width": half, "stopped": "margin" if n >= planned else ""}


def run_rounds(runner: Any, store: Any, complete: Callable[[list[int]], None]) -> dict[str, Any]:
    """Run rounds through ``complete(shards)`` until no stratum is open; record why in the manifest."""
    size = runner.spec.run.shard_size
    per = rounds(runner.sampler.blocks(), size)
    while True:
        table = store.table().to_pandas() if store.done() else None
        states = decide(runner, table)
        todo = [s["block"] * per + s["next"] for s in states.values() if s["open"]]
        if not todo:
            break
        complete(todo)
    reasons = {s["stopped"] for s in states.values()}
    stop = {
        "reason": "every stratum reached the stop margin" if reasons == {"margin"} else
                  "strata stopped by " + ", ".join(sorted(reasons)) + " (margin: reached stop_margin)",
        "stop_margin": runner.spec.sampler.stop_margin,
        "scenarios": sum(s["scenarios"] for s in states.values()),
        "strata": {name: {k: s[k] for k in ("scenarios", "half_width", "stopped", *(("planned",) if "planned" in s else ()))}
                   for name, s in states.items()},
    }
    store.update_manifest(stop=stop)
    return stop
