"""Per-sample faults (a fault in one input's activations, pytorchfi's main use), many scenarios per pass.

A fault that names an input (``batch = b``, counted over the evaluation inputs) changes the
forward of that input only, so every other input keeps its golden output. A group of such
scenarios therefore runs as one forward over just the inputs they touch, gathered into one
batch with a row per (scenario, input) pair and each fault moved to its row; the rows' outputs
then replace the golden rows of their scenario.

Guard: once per gathered size, a forward of that many inputs gathered out of their places, every
other one perturbed, must give the unperturbed rows their golden outputs and the perturbed ones
their outputs in a forward of the whole input set perturbed alike, bit for bit
(:class:`~resil.campaign.grouped.Probe`), and one input changed alone in a batch as plain mode runs
it must leave the others' outputs bit-identical (:meth:`SampleGather.isolated`). A model whose outputs depend on the batch (batch
statistics, normalising by the batch maximum, kernels whose reduction order changes with the
batch size or a row's position) fails it, and its per-sample scenarios then run one at a time
over the whole input set, as in plain mode.

Example:
    >>> import torch, resil
    >>> from resil.campaign.evaluator import Evaluator
    >>> _ = torch.manual_seed(0); net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3)).eval()
    >>> x = torch.rand(8, 4); ev = Evaluator(net, x, net(x).argmax(1))
    >>> sc = resil.FaultSet("1:out", [2], [30], batch=[5])  # input 5 only
    >>> counts = ev.evaluate_faults([sc]); int(counts["masked"][0]) >= 7
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..faults import FaultSet
from ..injection import inject
from ..site import SiteList
from .grouped import Probe, extreme, local_faults, non_finite, perturb, same_bits
from .samplers import Scenarios

__all__ = ["MIN_ROWS", "SampleGather", "split_by_batch"]

#: the fewest rows a gathered forward runs (padded with unfaulted copies of its inputs), unless plain
#: mode runs one of them in a smaller batch: matrix products over one or two rows take other kernels
#: (MKL's), whose bits differ on some values only, which a probe of so few rows cannot see
MIN_ROWS = 4


def split_by_batch(faults: FaultSet, sizes: Sequence[int]) -> list[FaultSet]:
    """The faults each input batch (of the given sizes, in order) sees: those on every sample,
    and those naming one of its inputs, moved to its own numbering.

    Example:
        >>> fs = FaultSet("a:out", [0, 1, 2], [3, 3, 3], batch=[-1, 1, 4])
        >>> [(p.batch.tolist()) for p in split_by_batch(fs, [3, 3])]
        [[-1, 1], [-1, 1]]
    """
    parts, start = [], 0
    for size in sizes:
        keep = (faults.batch < 0) | ((faults.batch >= start) & (faults.batch < start + size))
        part = faults[keep]
        parts.append(part.with_batch(np.where(part.batch < 0, -1, part.batch - start)))
        start += size
    return parts


class SampleGather:
    """Evaluates scenarios whose every fault names an input, many per forward over the touched inputs.

    Args:
        model: the network.
        inputs: the evaluation inputs ``[N, ...]``.
        golden: the golden output ``[N, ...]``.
        rows: the most gathered rows per forward (the campaign's batch size).
        budget: the most elements of the ``[S, N, ...]`` outputs handed to the criterion at once.
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, golden: torch.Tensor, rows: int, budget: int = 1 << 24) -> None:
        self.model, self.inputs, self.golden, self.rows = model, inputs, golden, max(1, rows)
        self.max_group = int(max(1, min(self.rows, budget // max(golden.numel(), 1))))
        self._exact: dict[tuple[int, bool], bool] = {}  # (gathered rows, only inputs of full-size batches) -> passed
        self._alone: torch.Tensor | None = None  # outputs of Probe.alone inputs, batch by batch as plain mode runs them
        self._isolated: bool | None = None
        starts = np.arange(len(inputs)) // self.rows * self.rows
        #: per input, the size of its batch as plain mode runs it
        self.sizes = np.minimum(starts + self.rows, len(inputs)) - starts
        from_end = starts + self.sizes - 1 - np.arange(len(inputs))
        #: the inputs probed first: every input batch's last ones (kernels compute a batch's tail rows apart)
        self.order = np.lexsort((-np.arange(len(inputs)), from_end))
        #: per input, whether its batch has the full size (all but a smaller last batch)
        self.full = self.sizes == self.sizes.max()

    @staticmethod
    def eligible(sc: Scenarios) -> np.ndarray:
        """Per scenario, whether it has faults and every one names an input."""
        n = len(sc.ids)
        some = np.zeros(n, dtype=bool)
        every = np.ones(n, dtype=bool)
        named = sc.faults.batch >= 0
        some[sc.owner] = True
        np.logical_and.at(every, sc.owner, named)
        return some & every

    def outputs(self, sc: Scenarios, positions: np.ndarray, sites: SiteList) -> torch.Tensor | None:
        """Model outputs ``[len(positions), N, ...]`` of per-sample scenarios, or None when the
        guard fails (run them one at a time)."""
        scen, take = local_faults(sc, positions)
        sample = sc.faults.batch[take]
        pairs, row_of = np.unique(scen * len(self.inputs) + sample, return_inverse=True)
        pair_scen, pair_sample = pairs // len(self.inputs), pairs % len(self.inputs)
        least = min(MIN_ROWS, int(self.sizes[pair_sample].min()))  # not past what plain mode runs them in
        rows = np.resize(pair_sample, max(len(pair_sample), least))  # unfaulted copies pad it
        if not self._gather_exact(len(rows), bool(self.full[pair_sample].all())):
            return None
        faults = sc.faults[take].with_batch(row_of.reshape(-1))
        with torch.no_grad(), inject(self.model, faults, sites=sites):
            y = self.model(self.inputs[torch.from_numpy(rows)])
        out = self.golden.unsqueeze(0).repeat(len(positions), *([1] * self.golden.dim()))
        out[torch.from_numpy(pair_scen), torch.from_numpy(pair_sample)] = y[: len(pair_sample)]
        return out

    def _gather_exact(self, r: int, full_only: bool = False) -> bool:
        """Whether a forward over ``r`` inputs gathered out of their places passes the check of
        :meth:`~resil.campaign.grouped.Probe.gathered` over the inputs in :attr:`order` (only those
        of full-size input batches if ``full_only``: a smaller last batch computes its inputs with
        other kernels, which must not keep the others from gathering), against outputs computed
        batch by batch (checked once per number of rows)."""
        key = (r, full_only)
        if key not in self._exact and not self.isolated():
            self._exact[key] = False
        if key not in self._exact:
            order = self.order[self.full[self.order]] if full_only else self.order
            gathered = Probe.gathered(len(order), r)
            probe = Probe(order[gathered.rows], gathered.perturbed)
            with torch.no_grad():
                if self._alone is None:
                    self._alone = torch.cat([self.model(probe.alone(x)) for x in self.inputs.split(self.rows)])
                self._exact[key] = probe.matches(self.model(probe.batch(self.inputs)), self.golden, self._alone)
        return self._exact[key]

    def isolated(self) -> bool:
        """Whether, in the first and the last input batch as plain mode runs them, one input changed
        alone (its first or its last, perturbed as by :func:`~resil.campaign.grouped.perturb`,
        scaled by 1e4 or by -1e4, filled with extreme values (:func:`~resil.campaign.grouped.extreme`,
        and negated), or with NaN and infinities)
        leaves every other input's output bit-identical: a model that compares each input with a
        batch statistic (its median, its maximum) fails it even where that comparison happens to
        agree on the gathered probe rows, and so does a batch-level guard that only extreme values
        trip (``torch.where(h.abs().amax() > 1e5, 0, h)``; checked once)."""
        if self._isolated is None:
            batches = self.inputs.split(self.rows)
            golden = self.golden.split(self.rows)
            changes = [perturb]
            if self.inputs.is_floating_point():
                changes += [lambda t: t * 1e4, lambda t: t * -1e4, extreme, lambda t: -extreme(t), non_finite]
            self._isolated = True
            with torch.no_grad():
                for b in sorted({0, len(batches) - 1}):
                    x = batches[b]
                    for row in sorted({0, len(x) - 1}):
                        for change in changes:
                            moved = x.clone()
                            moved[row] = change(x[row])
                            others = torch.arange(len(x)) != row
                            if not same_bits(self.model(moved)[others], golden[b][others]):
                                self._isolated = False
                                return False
        return self._isolated

    def run(self, sc: Scenarios, todo: np.ndarray, sites: SiteList, judge: object, counts: dict[str, np.ndarray]) -> np.ndarray:
        """Evaluate the per-sample scenarios among positions ``todo`` into ``counts``; return the rest."""
        mine = todo[self.eligible(sc)[todo]]
        if not len(mine):
            return todo
        apart = np.zeros(len(sc.ids), dtype=bool)  # scenarios with an input of a smaller last batch: grouped apart
        np.logical_or.at(apart, sc.owner, (sc.faults.batch >= 0) & ~self.full[np.maximum(sc.faults.batch, 0)])
        per = np.bincount(sc.owner, minlength=len(sc.ids))
        left: list[np.ndarray] = []
        for part in (mine[~apart[mine]], mine[apart[mine]]):
            start = 0
            while start < len(part):  # groups of scenarios whose rows fit one forward
                rows = np.cumsum(per[part[start:]])
                stop = start + max(1, min(self.max_group, int(np.searchsorted(rows, self.rows, side="right"))))
                chunk = part[start:stop]
                outputs = self.outputs(sc, chunk, sites)
                if outputs is None:
                    left.append(chunk)
                else:
                    for k, v in judge(outputs).items():  # type: ignore[operator]
                        counts[k][chunk] = v
                start = stop
        rest = np.setdiff1d(todo, mine)
        return np.sort(np.concatenate([rest, *left])) if left else rest
