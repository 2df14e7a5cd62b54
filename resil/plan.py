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
        keys: sorted distinct element keys (int64, numpy); for an unmerged XOR plan, the keys
            of the faults as given (duplicates allowed).
        xor: when every fault is a pure XOR, the mask per key (int64 codes); else None.
        rounds: otherwise, ordered steps ``(positions into keys, masks, model)``.
        merged: False for an XOR plan whose duplicate keys are not merged yet; such a plan is
            applied with an accumulating XOR (``numpy.bitwise_xor.at``) or merged first.
    """

    keys: np.ndarray
    xor: torch.Tensor | None
    rounds: list[tuple[torch.Tensor, torch.Tensor, FaultModel]]
    merged: bool = True

    @classmethod
    def build(cls, keys: np.ndarray, masks: np.ndarray, model_codes: np.ndarray, models: tuple[FaultModel, ...]) -> ElementPlan:
        """The plan of faults given in order; XOR-only plans stay unmerged until :meth:`merge`."""
        used = np.unique(model_codes) if len(models) > 1 else (0,)
        if all(models[m].is_xor for m in used):
            return cls(keys, torch.from_numpy(masks), [], merged=False)
        order = np.argsort(keys, kind="stable")
        skeys, smasks = keys[order], masks[order]
        first = np.r_[True, skeys[1:] != skeys[:-1]]
        starts = np.flatnonzero(first)
        group = np.cumsum(first) - 1
        rank = np.arange(len(skeys)) - starts[group]
        smodels = model_codes[order]
        rounds = []
        for r in range(int(rank.max()) + 1):
            in_round = rank == r
            for m in np.unique(smodels[in_round]):
                sel = in_round & (smodels == m)
                rounds.append((torch.from_numpy(group[sel]), torch.from_numpy(smasks[sel]), models[m]))
        return cls(skeys[starts], None, rounds)

    def merge(self) -> ElementPlan:
        """The same plan with distinct sorted keys (XOR masks of one key combined)."""
        if self.merged:
            return self
        assert self.xor is not None
        order = np.argsort(self.keys, kind="stable")
        skeys, smasks = self.keys[order], self.xor.numpy()[order]
        starts = np.flatnonzero(np.r_[True, skeys[1:] != skeys[:-1]])
        return ElementPlan(skeys[starts], torch.from_numpy(np.bitwise_xor.reduceat(smasks, starts)), [])

    def to(self, device: torch.device) -> ElementPlan:
        """The merged plan with its tensors on ``device``."""
        plan = self.merge()
        if plan.xor is not None:
            return ElementPlan(plan.keys, plan.xor.to(device), [])
        return ElementPlan(plan.keys, None, [(p.to(device), m.to(device), fm) for p, m, fm in plan.rounds])

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
