"""Reference fault injection for the vulnerability factors of one layer (what the analysis predicts).

- Weight mode: a real bit flip of one stored weight (its code in the weight's encoding),
  evaluated by the evaluation core (:class:`~resil.campaign.evaluator.Evaluator`: injection,
  the fast path where it applies, bit-identical to a full faulty forward).
- Activation mode (a fault in one MAC operand, ``../shared/METHODS.md`` section 1): the error
  ``(flip_b(a_k) - a_k) * w_k`` is added to the one output neuron that MAC belongs to; the
  activation tensor itself is not corrupted.

Each fault is simulated on every evaluation input; its outcome is the share of inputs whose
top-1 changes (or whose scores are not finite) and the layer VF is the mean over faults. A fault
costs one forward pass (over the evaluation inputs) of the layers after the analysed one.

Example:
    >>> import torch
    >>> from resil.analysis.vulnerability import LayerFaults
    >>> torch.manual_seed(0); net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    <torch._C.Generator object at ...>
    >>> lf = LayerFaults(net, torch.rand(8, 3), "0")
    >>> r = fault_injection_vf(lf, "weight")          # exhaustive: 6 weights x 32 bits
    >>> r.faults, r.population, r.passes
    (192, 192, 192.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..campaign.criteria import Top1
from ..campaign.evaluator import Evaluator
from ..errors import FaultError
from ..faults import FaultSet
from ..statistics import normal_quantile
from .vulnerability import MODES, LayerFaults, flip_delta


@dataclass
class FIResult:
    """A layer VF measured by fault injection.

    Attributes:
        value: mean share of critical inputs over the simulated faults.
        margin: half-width of the ``confidence`` interval (0 when exhaustive).
        faults: faults simulated; population: faults in the layer's fault space.
        passes: forward passes (faults x inputs / inputs).
        by_bit: mean per bit position (NaN for bits never drawn).
        outcomes: per simulated fault, the share of critical inputs; fault_ids: their flat ids
            (weight mode: ``live_weight * bits + bit``; activation mode:
            ``(live_weight * positions + position) * bits + bit``, live weights in row-major order).
    """

    value: float
    margin: float
    faults: int
    population: int
    passes: float
    by_bit: np.ndarray
    outcomes: np.ndarray
    fault_ids: np.ndarray


def population(lf: LayerFaults, mode: str) -> int:
    """Size of the layer's fault space (live weights or live MAC operands, x bits)."""
    if mode not in MODES:
        raise FaultError(f"mode must be one of {MODES}, got {mode!r}")
    return lf.site_count(mode)


def fault_injection_vf(lf: LayerFaults, mode: str, faults: int | np.ndarray | None = None, *, seed: int = 0,
                       confidence: float = 0.99, faults_per_call: int = 64, progress: bool = False) -> FIResult:
    """Measure the layer VF by injecting faults one at a time.

    Args:
        lf: the layer's fault space (:class:`~resil.analysis.vulnerability.LayerFaults`).
        mode: ``"weight"`` or ``"activation"``.
        faults: None for every fault (exhaustive), a number of faults drawn uniformly without
            replacement, or explicit flat fault ids in ``[0, population)``.
        seed: seed of the draw.
        confidence: confidence of the reported margin.
        faults_per_call: faults simulated together in one batched call (speed only).
        progress: show a tqdm bar.
    """
    N = population(lf, mode)
    if faults is None:
        ids = np.arange(N, dtype=np.int64)
    elif isinstance(faults, (int, np.integer)):
        if not 0 < int(faults) <= N:
            raise FaultError(f"faults must be in [1, {N}], got {faults}")
        ids = np.random.default_rng(seed).choice(N, int(faults), replace=False).astype(np.int64)
    else:
        ids = np.asarray(faults, dtype=np.int64)
        if ids.ndim != 1 or len(ids) == 0 or ids.min() < 0 or ids.max() >= N:
            raise FaultError(f"fault ids must be a non-empty 1-d array in [0, {N})")
    probe, B = lf.probe, lf.batch
    start = probe.rows
    outcomes = np.zeros(len(ids))
    bits_of = np.zeros(len(ids), dtype=np.int64)
    live_pairs = torch.nonzero(lf.live).cpu().numpy()  # [(c, k)] in row-major order
    evaluator = Evaluator(probe.model, probe.x, None, Top1(), sites=lf.sites) if mode == "weight" else None
    steps = range(0, len(ids), faults_per_call)
    for a in tqdm(steps, desc=f"FI {lf.layer} ({mode})", disable=not progress, leave=False):
        chunk = ids[a : a + faults_per_call]
        if evaluator is not None:  # a real bit flip of the stored weight, through the evaluation core
            nb = lf.weight_encoding.bits
            pair, bit = chunk // nb, chunk % nb
            flat = live_pairs[pair, 0] * lf.k + live_pairs[pair, 1]
            counts = evaluator.evaluate_faults([FaultSet(lf.weight_site.name, [int(f)], [int(b)]) for f, b in zip(flat, bit, strict=True)])
            crit = (counts["critical"] + counts["non_finite"]) / B
        else:
            nb, L = lf.operand_encoding.bits, lf.positions
            pair, pos, bit = chunk // (L * nb), (chunk // nb) % L, chunk % nb
            rows = _operand_rows(lf, live_pairs[pair], pos, bit)
            images = torch.arange(B, device=rows.device).repeat(len(chunk))
            crit = probe.critical(rows, images).reshape(len(chunk), B).float().mean(1).cpu().numpy()
        outcomes[a : a + len(chunk)] = crit
        bits_of[a : a + len(chunk)] = bit
    nbits = (lf.weight_encoding if mode == "weight" else lf.operand_encoding).bits
    passes = float(len(ids)) if mode == "weight" else (probe.rows - start) / B  # one suffix pass per fault either way
    return summarize(outcomes, ids, bits_of, N, nbits, passes, confidence)


def summarize(outcomes: np.ndarray, ids: np.ndarray, bits: np.ndarray, population: int, nbits: int, passes: float,
              confidence: float = 0.99) -> FIResult:
    """An :class:`FIResult` from per-fault outcomes (e.g. those of several calls, concatenated).

    The margin is ``t * sd / sqrt(n)`` with the finite-population correction (0 when every fault
    was simulated).

    Example:
        >>> r = summarize(np.array([0.0, 1.0]), np.array([0, 1]), np.array([0, 0]), 2, 1, 2.0)
        >>> r.value, r.margin, r.by_bit.tolist()
        (0.5, 0.0, [0.5])
    """
    n = len(outcomes)
    by_bit = np.array([outcomes[bits == b].mean() if (bits == b).any() else np.nan for b in range(nbits)])
    margin = 0.0
    if n < population:
        sd = outcomes.std(ddof=1) if n > 1 else 0.5
        margin = float(normal_quantile(confidence) * sd / np.sqrt(n) * np.sqrt((population - n) / max(population - 1, 1)))
    return FIResult(float(outcomes.mean()), margin, n, population, passes, by_bit, outcomes, ids)


def _operand_rows(lf: LayerFaults, pairs: np.ndarray, pos: np.ndarray, bits: np.ndarray) -> torch.Tensor:
    """Layer outputs plus ``(flip_b(a_k) - a_k) * w_k`` at the fault's neuron: ``[F * B, ...]``."""
    out = lf.probe.output
    c = torch.as_tensor(pairs[:, 0], device=out.device)
    k = torch.as_tensor(pairs[:, 1], device=out.device)
    p = torch.as_tensor(pos, device=out.device)
    operand = lf.cols[:, k, p]  # [B, F]
    b = torch.as_tensor(bits, device=out.device).expand_as(operand)
    err = flip_delta(operand, torch.ones_like(b, dtype=torch.int64) << b.to(torch.int64), lf.operand_encoding) * lf.weight[c, k]  # [B, F]
    rows = out.unsqueeze(0).repeat(len(pairs), *([1] * out.ndim))  # [F, B, C, ...]
    r = torch.arange(len(pairs), device=out.device)
    flat = rows.view(len(pairs), out.shape[0], out.shape[1], -1)
    flat[r, :, c, p] += err.transpose(0, 1)
    return rows.reshape(-1, *out.shape[1:])
