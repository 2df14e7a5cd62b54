"""Element plans: the faults of one site, merged per element and ready to apply to codes.

A plan holds the distinct element keys it touches (sorted) and how to turn their codes into
faulty codes. Faults on the same element apply in the order given: flips of the same bit
cancel, flips of different bits combine, a stuck-at after a flip wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .encodings import Encoding
from .fault_models import FaultModel


@dataclass
class ElementPlan:
    """Faults of one site merged per element.

    Attributes:
        keys: sorted distinct element keys (int64, numpy).
        xor: when every fault is a pure XOR, the merged mask per key (int64 codes); else None.
        rounds: otherwise, ordered steps ``(positions into keys, masks, model)``.
    """

    keys: np.ndarray
    xor: torch.Tensor | None
    rounds: list[tuple[torch.Tensor, torch.Tensor, FaultModel]]

    @classmethod
    def build(cls, keys: np.ndarray, masks: np.ndarray, model_codes: np.ndarray, models: tuple[FaultModel, ...]) -> ElementPlan:
        """Merge faults (in their given order) that hit the same key."""
        order = np.argsort(keys, kind="stable")
        skeys, smasks = keys[order], masks[order]
        starts = np.flatnonzero(np.r_[True, skeys[1:] != skeys[:-1]])
        ukeys = skeys[starts]
        used = np.unique(model_codes)
        if all(models[m].is_xor for m in used):
            merged = np.bitwise_xor.reduceat(smasks, starts) if len(smasks) else smasks
            return cls(ukeys, torch.from_numpy(merged), [])
        group = np.cumsum(np.r_[True, skeys[1:] != skeys[:-1]]) - 1
        rank = np.arange(len(skeys)) - starts[group]
        smodels = model_codes[order]
        rounds = []
        for r in range(int(rank.max()) + 1):
            in_round = rank == r
            for m in np.unique(smodels[in_round]):
                sel = in_round & (smodels == m)
                rounds.append((torch.from_numpy(group[sel]), torch.from_numpy(smasks[sel]), models[m]))
        return cls(ukeys, None, rounds)

    def to(self, device: torch.device) -> ElementPlan:
        if self.xor is not None:
            return ElementPlan(self.keys, self.xor.to(device), [])
        return ElementPlan(self.keys, None, [(p.to(device), m.to(device), fm) for p, m, fm in self.rounds])

    def apply(self, codes: torch.Tensor, encoding: Encoding, encodings: list[Encoding] | None = None) -> torch.Tensor:
        """Faulty codes for ``codes[..., k]`` = the codes of ``keys[k]`` (leading dims broadcast).

        ``encodings`` optionally gives one (narrowed) encoding per round.
        """
        if self.xor is not None:
            return codes ^ self.xor
        codes = codes.clone()
        for r, (pos, mask, fm) in enumerate(self.rounds):
            enc = encodings[r] if encodings else encoding
            codes[..., pos] = fm.apply(codes[..., pos], mask, enc)
        return codes

    def narrowed(self, encoding: Encoding, shape: tuple[int, ...] | None) -> list[Encoding] | None:
        """Per-round encodings narrowed to the elements each round touches (per-channel scales)."""
        if shape is None or not self.rounds or encoding.at(torch.zeros(0, dtype=torch.int64), shape) is encoding:
            return None
        return [encoding.at(torch.from_numpy(self.keys)[p.cpu()], shape) for p, _, _ in self.rounds]
