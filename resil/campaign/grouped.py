"""Many scenarios per forward pass.

Scenarios whose faults all sit in one stage ``k`` of an ``nn.Sequential`` (every fault on every
sample, permanent) share everything but stage ``k``'s output, which the golden run recorded:

- faults in the weights and biases of a ``Conv2d``/``Linear`` stage (float, or quantized: the
  layer then computes with its sites' decoded codes) touch a few output channels; only those
  are recomputed, for the whole group in one call;
- faults in the output of a stage touch a few channels of the golden output: only those are
  faulted, in place;
- otherwise stage ``k`` runs once per scenario under :func:`resil.inject`.

In a plain ``nn.Sequential`` the touched channels are then carried alone through the
stages after ``k`` that compute each channel from the same input channel alone
(:meth:`resil.site.Adapter.channel_map`: ReLU, pooling, eval BatchNorm, depthwise convolutions ...), patched
into stacked copies of the golden output there, and the rest of the network runs once over the
whole group. Rows are dropped there too: only the (scenario, input) pairs whose patched values
differ from golden (a flip the ReLU did not zero, say) run the rest, gathered into one batch,
where that costs less than the stacked copies (measured); the others keep their golden output.
A subclass with its own forward loop over its stages (a spiking network's time
loop) runs that forward once per group, stage ``k`` returning the stacked patched outputs at
each of its calls and the stages before it their golden outputs.

Every shortcut is used only where a check on the golden run shows that it reproduces the
per-scenario computation bit for bit for the exact shapes involved (kernels may pick other
reduction orders for other shapes), once per shape: recomputed channels equal the same channels
of the full layer at every call, a channel-local stage on picked channels equals those channels
of its output, and a stacked suffix (or replayed forward) gives each copy's golden output, and
gathered golden rows (out of their places, one perturbed) give theirs at each padded size. Where
a check fails, the group runs one scenario at a time, so outcome tables stay identical to the
plain path.

Example:
    >>> import torch
    >>> from resil.campaign.suffix import SuffixForward
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> sf = SuffixForward(net, torch.randn(5, 4), batch_size=5); _ = sf.golden()
    >>> GroupedForward(sf).sequential
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..adapter_registry import adapter_for
from ..channel_layers import ChannelLayer, ChannelMap
from ..encodings import FloatEncoding
from ..faults import FOREVER
from ..injection import inject
from ..site import Site, SiteList
from .samplers import Scenarios
from .suffix import SuffixForward, sharing_modules


def channels_on_1(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` seen with its dimension ``dim`` (a layer's output channels) on dimension 1.

    Example:
        >>> tuple(channels_on_1(torch.zeros(4, 7, 3), 2).shape)
        (4, 3, 7)
    """
    return t if dim == 1 else t.movedim(dim, 1)


class Touched(NamedTuple):
    """The touched rows of a group's faults in one stage: the scenario (position in the group) and
    output channel of each, and a function ``(input batch, call) -> [B, rows, ...]`` giving their
    faulty values (channels on dimension 1, wherever ``dim``, the stage's output has them)."""

    scen: np.ndarray
    channel: np.ndarray
    rows: Callable[[int, int], torch.Tensor]
    dim: int = 1

    def channels(self, out: torch.Tensor) -> torch.Tensor:
        """A stage output ``[B, ...]`` seen with its channels on dimension 1, as :attr:`rows` gives them."""
        return channels_on_1(out, self.dim)

    def back(self, h: torch.Tensor, lead: int) -> torch.Tensor:
        """Outputs with ``lead`` leading dimensions before the batch's (stacked copies: 1; gathered
        rows: 0), channels after them, in the stage's own layout again.

        Example:
            >>> t = Touched(np.zeros(0), np.zeros(0), lambda b, c: torch.zeros(0), dim=2)
            >>> tuple(t.back(torch.zeros(5, 4, 3, 7), 1).shape)
            (5, 4, 7, 3)
        """
        return h if self.dim == 1 else h.movedim(lead + 1, lead + self.dim).contiguous()


def bit_pattern(t: torch.Tensor) -> torch.Tensor:
    """``t`` as integers of its storage width (floats reinterpreted), so that ``==`` compares bits
    (NaN payloads and signed zeros included)."""
    if not t.is_floating_point():
        return t
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors hold the same values bit for bit (NaN payloads included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(torch.equal(bit_pattern(a), bit_pattern(b)))


def local_faults(sc: Scenarios, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The faults of the scenarios at ``positions``: their scenario's place among ``positions``, and their rows."""
    local = np.full(len(sc.ids), -1, dtype=np.int64)
    local[positions] = np.arange(len(positions))
    take = np.flatnonzero(local[sc.owner] >= 0)
    return local[sc.owner[take]], take


def stacked_copies(t: torch.Tensor, s: int) -> torch.Tensor:
    """``s`` copies of a batch ``t`` stacked along the batch dimension.

    Example:
        >>> stacked_copies(torch.tensor([[1.0], [2.0]]), 2).flatten().tolist()
        [1.0, 2.0, 1.0, 2.0]
    """
    return t.unsqueeze(0).expand(s, *t.shape).reshape(s * len(t), *t.shape[1:])


def gathered_size(r: int) -> int:
    """``r`` gathered rows padded up to a multiple of ``2 ** max(0, floor(log2 r) - 3)`` (at most
    12.5% more; at least 2), so that few sizes need their own exactness check.

    Example:
        >>> [gathered_size(r) for r in (1, 9, 17, 100)]
        [2, 9, 18, 104]
    """
    step = 1 << max(0, r.bit_length() - 4)
    return max(2, -(-r // step) * step)


#: what a check's forward over a trial layout may raise where the layout does not work for the
#: model (shape checks, torch's own asserts such as MultiheadAttention's): the check then fails
LAYOUT_FAILURES = (RuntimeError, ValueError, IndexError, AssertionError, StopIteration)


def own_storage(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` (a copy's view into a stacked tensor) in storage of its own, as the golden
    tensors are: MKL's GEMM computes other bits on data that starts off a 16-byte boundary.

    Example:
        >>> h = torch.zeros(3, 5)
        >>> h[1].storage_offset(), own_storage(h[1]).storage_offset()
        (5, 0)
    """
    return t.clone(memory_format=torch.contiguous_format)


def perturb(t: torch.Tensor) -> torch.Tensor:
    """Other values for a probe's rows: doubled plus one (integers: lowest bit flipped; booleans negated)."""
    if t.is_floating_point() or t.is_complex():
        return t * 2 + 1
    return ~t if t.dtype == torch.bool else t ^ 1


def extreme(t: torch.Tensor) -> torch.Tensor:
    """``t`` (floating-point) filled with its dtype's largest finite value, negated at every third element.

    Example:
        >>> extreme(torch.zeros(4, dtype=torch.float16)).tolist()
        [65504.0, 65504.0, -65504.0, 65504.0]
    """
    big = torch.finfo(t.dtype).max
    signs = torch.where(torch.arange(t.numel(), device=t.device) % 3 == 2, -1.0, 1.0).to(t.dtype)
    return (signs * big).reshape(t.shape)


def non_finite(t: torch.Tensor) -> torch.Tensor:
    """``t`` (floating-point) filled with NaN, infinity and minus infinity in turn.

    Example:
        >>> non_finite(torch.zeros(4)).tolist()
        [nan, inf, -inf, nan]
    """
    cycle = torch.tensor([float("nan"), float("inf"), float("-inf")], dtype=t.dtype, device=t.device)
    return cycle[torch.arange(t.numel(), device=t.device) % 3].reshape(t.shape)


@dataclass(frozen=True)
class Probe:
    """A layout for the exactness checks of stacked and gathered rows: the golden rows ``rows``
    of a batch (the input of each) gathered into one batch, those at positions ``perturbed``
    perturbed (:func:`perturb`).

    A computation passes (:meth:`matches`) when every unperturbed row gives its golden output bit
    for bit (a model that mixes the batch, normalising by its maximum, fails) and every perturbed
    row gives what the same computation gives that input, perturbed alike, in its own place in
    the batch (:meth:`alone`): kernels may sum in an order that depends on a row's position (MKL's
    GEMM does, by row parity), which golden values can hide (sparse ones, after a ReLU or a
    spike), so perturbed rows sit away from their own places too. Where more than two rows are
    perturbed, the last holds extreme values instead (:attr:`extreme`): the largest finite value,
    and its negative at every third element, as exponent flips give them (one row, so that no two
    cancel in a batch sum; no NaN, which would hide it from a batch maximum); only the unperturbed
    rows are compared there, so a batch-level guard that only such values trip
    (``torch.where(h.abs().amax() > 1e5, 0, h)``, a gate on ``h.mean(0) > -1e3``) fails the check too.

    Example:
        >>> p = Probe.gathered(3, 4)
        >>> p.rows.tolist(), p.perturbed.tolist(), p.extreme.tolist()
        ([2, 0, 1, 2], [0, 1, 3], [3])
        >>> t = torch.tensor([[1.0], [2.0], [4.0]])
        >>> p.batch(t).flatten().tolist(), p.alone(t).flatten().tolist()
        ([9.0, 3.0, 2.0, 3.4028234663852886e+38], [3.0, 5.0, 9.0])
    """

    rows: np.ndarray
    perturbed: np.ndarray
    #: what the perturbed rows hold instead of :func:`perturb`'s values (floating point only):
    #: ``"non_finite"`` (:func:`non_finite`; only the other rows are compared) or ``"extreme"``
    #: (:func:`extreme`, compared with the same inputs so filled in their own places)
    fill: str = ""

    @staticmethod
    def isolating(n: int) -> tuple[Probe, Probe]:
        """Two stacked copies of a batch of ``n`` each: the last row NaN and infinities, and the
        whole second copy extreme, as a fault in a weight makes a channel of every input of its
        scenario. A batch-level guard that only such values trip (``if torch.isnan(h).any()``, a
        feature dropped where the whole batch saturates, an outlier replaced by the batch median)
        then changes the golden copy, or computes the extreme copy otherwise than it computes those
        inputs alone. Apart from the other probes, where a NaN row would hide their extreme row from
        a batch maximum.

        Example:
            >>> nan, big = Probe.isolating(2)
            >>> t = torch.tensor([[1.0], [2.0]])
            >>> nan.batch(t).flatten().tolist(), big.batch(t).flatten().tolist()[2:], big.alone(t).flatten().tolist()
            ([1.0, 2.0, 1.0, nan], [3.4028234663852886e+38, 3.4028234663852886e+38], [3.4028234663852886e+38, 3.4028234663852886e+38])
        """
        rows = np.tile(np.arange(n), 2)
        return Probe(rows, np.array([2 * n - 1]), "non_finite"), Probe(rows, np.arange(n, 2 * n), "extreme")

    @staticmethod
    def copies(n: int, s: int) -> Probe:
        """``s`` stacked copies of a batch of ``n``, the second and the last perturbed (a row's
        position then moves by ``n`` rows, so a kernel whose order depends on the position modulo
        anything that does not divide ``n`` shows it; the last copy holds the batch's tail rows)."""
        return Probe(np.tile(np.arange(n), s), np.unique(np.r_[np.arange(n, 2 * n), np.arange((s - 1) * n, s * n)]) if s > 1 else
                     np.zeros(0, dtype=np.int64))

    @staticmethod
    def gathered(n: int, size: int) -> Probe:
        """``size`` rows of a batch of ``n``, each the previous input's (none in its own place; the
        last input first, whose kernels may differ most: a batch's tail), the first two and every
        other one after them perturbed."""
        return Probe((np.arange(size) - 1) % n, np.union1d([0], np.arange(1, size, 2)))

    @property
    def extreme(self) -> np.ndarray:
        """The perturbed row of an ordinary probe that holds extreme values: none, or the last where
        more than two are perturbed, so that two ordinary ones stay."""
        return self.perturbed[-1:] if not self.fill and len(self.perturbed) > 2 else self.perturbed[:0]

    @property
    def some(self) -> bool:
        """Whether any row is perturbed."""
        return len(self.perturbed) > 0

    def batch(self, t: torch.Tensor) -> torch.Tensor:
        """The probe's batch from the golden batch ``t``."""
        out = t[torch.from_numpy(self.rows)]
        picked = torch.from_numpy(self.perturbed)
        if self.fill and out.is_floating_point():
            out[picked] = (non_finite if self.fill == "non_finite" else extreme)(out[picked])
            return out
        out[picked] = perturb(out[picked])
        if out.is_floating_point():
            for row in self.extreme.tolist():
                out[row] = extreme(out[row])
        return out

    def alone(self, t: torch.Tensor) -> torch.Tensor:
        """The golden batch ``t`` with every input perturbed in its own place (the same for every
        probe of one :attr:`fill`, so callers compute its outputs once per fill)."""
        return extreme(t) if self.fill == "extreme" and t.is_floating_point() else perturb(t)

    def matches(self, out: torch.Tensor, golden: torch.Tensor, alone: torch.Tensor) -> bool:
        """Whether outputs ``out`` of :meth:`batch` rows equal the golden outputs ``golden`` where
        unperturbed and the outputs ``alone`` of :meth:`alone` inputs where perturbed."""
        if len(out) != len(self.rows):
            return False
        golden_rows = np.setdiff1d(np.arange(len(self.rows)), self.perturbed)
        if not same_bits(out[torch.from_numpy(golden_rows)], golden[torch.from_numpy(self.rows[golden_rows])]):
            return False
        ordinary = self.perturbed[:0] if self.fill == "non_finite" else np.setdiff1d(self.perturbed, self.extreme)
        return same_bits(out[torch.from_numpy(ordinary)], alone[torch.from_numpy(self.rows[ordinary])])


def differing_pairs(h: torch.Tensor, golden: torch.Tensor) -> np.ndarray:
    """Per scenario and input ``[S, B]``: whether the stage output ``h[s, i]`` differs from ``golden[i]`` bit for bit
    (everywhere when their shapes or dtypes differ).

    Example:
        >>> differing_pairs(torch.tensor([[[1.0], [2.0]], [[1.0], [-2.0]]]), torch.tensor([[1.0], [2.0]])).tolist()
        [[False, False], [False, True]]
    """
    if h.shape[1:] != golden.shape or h.dtype != golden.dtype:
        return np.ones(h.shape[:2], dtype=bool)
    ne = bit_pattern(h) != bit_pattern(golden).unsqueeze(0)
    return ne.reshape(*h.shape[:2], -1).any(2).cpu().numpy()


class GroupedForward:
    """Outputs of many single-stage scenarios per pass over the later stages of a sequential model.

    Args:
        suffix: the campaign's :class:`SuffixForward`, after its golden run.
        budget: the most elements one stacked stage output may hold: bounds memory, and keeps
            stacked convolutions cache-sized (on CPU they slow down per sample past a few MB).
        max_group: the most scenarios evaluated together.
    """

    def __init__(self, suffix: SuffixForward, budget: int = 1 << 20, max_group: int = 256) -> None:
        self.suffix = suffix
        self.sequential = type(suffix.model).forward is nn.Sequential.forward and bool(suffix.stages)
        self.staged = bool(suffix.stages)  # stage outputs recorded: own forward loops group by replay
        self.budget = budget
        self.max_group = max_group
        self._exact: dict[tuple[object, ...], bool] = {}
        self._alone: dict[tuple[object, ...], torch.Tensor] = {}  # per check and input batch: outputs of Probe.alone inputs
        self._codes: dict[str, torch.Tensor] = {}
        self._layers: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._dims: dict[int, int | None] = {}  # per stage: the dimension of its layer's output channels
        self._batched: dict[int, bool] = {}
        self._sharing: dict[int, set[int]] | None = None
        #: scenarios found masked where their faulty values were patched in (fault dropping)
        self.dropped = 0
        #: (scenario, input) pairs of sequential models given their golden output without running the rest
        self.dropped_rows = 0
        self._row_seconds: dict[tuple[str, int], float] = {}  # measured: the rest from a stage, and gathering for it
        #: measured costs that choose each stage's group size
        self.timer = GroupTimer()
        #: seconds spent in exactness checks (each paid once: not a cost of the groups that met it)
        self.check_seconds = 0.0
        self._checking = 0  # depth of nested checks

    @contextmanager
    def checking(self) -> Iterator[None]:
        """Within: an exactness check, its time added to :attr:`check_seconds` (nested checks once)."""
        t0 = time.perf_counter()
        self._checking += 1
        try:
            yield
        finally:
            self._checking -= 1
            if not self._checking:
                self.check_seconds += time.perf_counter() - t0

    def _check(self, key: tuple[object, ...], compute: Callable[[], bool]) -> bool:
        """The outcome of exactness check ``key``: ``compute()``, run (and timed as checking) once."""
        if key not in self._exact:
            with self.checking():
                self._exact[key] = compute()
        return self._exact[key]

    def stored_codes(self, site: Site) -> torch.Tensor:
        """The stored codes of ``site`` (flat), read once: the model is not changed between scenarios."""
        if site.name not in self._codes:
            self._codes[site.name] = site.codes()
        return self._codes[site.name]

    # -- which scenarios, how many at once ---------------------------------------------------

    def stages(self, sc: Scenarios, sites: SiteList) -> np.ndarray:
        """Per scenario, the one stage all its faults sit in, or -1 when it must run alone."""
        n = len(sc.ids)
        fs = sc.faults
        if not self.staged or not len(fs):
            return np.full(n, -1, dtype=np.int64)
        site_stage = np.array([self.suffix.stage_of.get(id(sites[name].module), -1) for name in fs.site_names], dtype=np.int64)
        stage = site_stage[fs.site.astype(np.int64)]
        stage[(fs.batch >= 0) | (fs.t_start != 0) | (fs.t_stop != FOREVER)] = -1
        return common_value(stage, sc)

    def group_size(self, stage: int) -> int:
        """How many scenarios of ``stage`` fit in the memory budget at once (counting the stacked
        outputs from where touched channels stop being carried alone, through the end)."""
        stacked = stage
        while self.sequential and stacked + 1 < len(self.suffix.stages) and channel_map(self.suffix.stages[stacked + 1]) is not None:
            stacked += 1
        widest = max(
            (o.numel() for calls in self.suffix.recorded for outs in calls[stacked:] for o in outs if isinstance(o, torch.Tensor)),
            default=1,
        )
        return int(max(1, min(self.max_group, self.budget // max(widest, 1))))

    # -- running a group ----------------------------------------------------------------------

    def outputs(self, stage: int, sc: Scenarios, positions: np.ndarray, sites: SiteList) -> torch.Tensor | None:
        """The model outputs ``[len(positions), inputs, ...]`` of scenarios whose faults all sit
        in ``stage``, or None when they cannot be evaluated together (run them alone).

        Fault dropping: a scenario whose faulty values equal the golden ones bit for bit where
        they are patched in (after the channel-local stages they were carried through, at every
        call and input batch) is masked there: it gets the golden output without running the rest.
        In an ``nn.Sequential`` this holds per input too: only the (scenario, input) pairs that
        differ there run the rest, gathered into one batch (:meth:`_rest`)."""
        if not self.batched(stage):
            return None
        touched = self._touched_weights(stage, sc, positions, sites) or self._touched_output(stage, sc, positions, sites)
        return self._outputs(stage, sc, positions, sites, touched)

    def batched(self, stage: int) -> bool:
        """Whether every call of ``stage`` returned a tensor batched like its input batch (dimension
        0 the inputs): scenarios are stacked along it. A module called on a table of its own (a
        positional embedding of ``torch.arange(L)``, a Linear on learned queries) is not."""
        if stage not in self._batched:
            self._batched[stage] = all(
                isinstance(o, torch.Tensor) and o.dim() > 0 and len(o) == len(x)
                for b, x in enumerate(self.suffix.batches) for o in self.suffix.recorded[b][stage])
        return self._batched[stage]

    def _outputs(self, stage: int, sc: Scenarios, positions: np.ndarray, sites: SiteList, touched: Touched | None) -> torch.Tensor | None:
        """:meth:`outputs` from the group's touched rows (None: the stage computes them, run alone)."""
        n = len(positions)
        batches = range(len(self.suffix.batches))
        if not self.sequential:  # the model's own forward, the faulted stage's calls replaced
            if touched is None:
                return None
            row_scen, row_channel, rows, _ = touched
            calls = [[rows(b, c) for c in range(len(self.suffix.recorded[b][stage]))] for b in batches]
            per_call = [[touched.channels(self._golden_out(b, stage, c)) for c in range(len(calls[b]))] for b in batches]
            live = self._live(n, row_scen, [(y, per_call[b][c]) for b in batches for c, y in enumerate(calls[b])], row_channel)
            keep, row_scen, row_channel, calls = self._keep(live, row_scen, row_channel, calls)
            outs = [self._replayed(stage, b, [touched.back(self._stack(per_call[b][c], y, row_scen, row_channel, len(keep)), 1)
                                              for c, y in enumerate(calls[b])]) if len(keep) else None for b in batches]
            if len(keep) and any(o is None for o in outs):
                return None
        elif touched is None:
            alone = self._stage_alone(stage, sc, positions, sites)
            differ = [differing_pairs(h, self._golden_out(b, stage)) for b, h in enumerate(alone)]
            return self._rest(n, [stage + 1] * len(alone), differ, lambda b, scen, inp, size: self._gather(alone[b], scen, inp, size),
                              lambda b, keep: alone[b][torch.from_numpy(keep)])
        else:
            row_scen, row_channel, rows, _ = touched
            channels = torch.from_numpy(row_channel)
            # channels carried through the channel-local stages after it (those read channels on dimension 1)
            carried = [self._carry(stage, b, rows(b, 0), channels) if touched.dim == 1 else (stage, rows(b, 0)) for b in batches]
            golden = [touched.channels(self._golden_out(b, reached)) for b, (reached, _) in enumerate(carried)]
            differ = [self._live_pairs(n, row_scen, y, golden[b], row_channel) for b, (_, y) in enumerate(carried)]

            def stacked(b: int, keep: np.ndarray) -> torch.Tensor:
                _, scen_k, channel_k, ys = self._keep(np.isin(np.arange(n), keep), row_scen, row_channel, [[carried[b][1]]])
                return touched.back(self._stack(golden[b], ys[0][0], scen_k, channel_k, len(keep)), 1)

            def gathered(b: int, scen: np.ndarray, inp: np.ndarray, size: int) -> torch.Tensor:
                return touched.back(self._patched(golden[b], carried[b][1], row_scen, row_channel, scen, inp, size), 0)

            return self._rest(n, [reached + 1 for reached, _ in carried], differ, gathered, stacked)
        return self._assemble(n, keep, outs)

    def _assemble(self, n: int, keep: np.ndarray, outs: list[torch.Tensor | None]) -> torch.Tensor:
        """The outputs ``[n, inputs, ...]`` of ``n`` scenarios: golden, but for the scenarios at
        positions ``keep`` (the others were dropped), whose outputs per input batch are ``outs``."""
        self.dropped += n - len(keep)
        full = [self.suffix.outputs[b].unsqueeze(0).repeat(n, *([1] * self.suffix.outputs[b].dim())) for b in range(len(outs))]
        for b, out in enumerate(outs):
            if out is not None:
                full[b][torch.from_numpy(keep)] = out
        return torch.cat(full, dim=1)

    @staticmethod
    def _live_pairs(n: int, row_scen: np.ndarray, y: torch.Tensor, golden: torch.Tensor, row_channel: np.ndarray) -> np.ndarray:
        """Per scenario and input ``[n, B]``: whether one of the scenario's faulty rows ``y[:, r]``
        ``[B, rows, ...]`` differs from its golden channel ``golden[:, row_channel[r]]`` on that input.

        Example:
            >>> golden = torch.zeros(3, 2); y = torch.tensor([[0.0], [5.0], [0.0]])  # scenario 1's row on channel 0
            >>> GroupedForward._live_pairs(2, np.array([1]), y, golden, np.array([0])).astype(int).tolist()
            [[0, 0, 0], [0, 1, 0]]
        """
        ne = bit_pattern(y) != bit_pattern(golden[:, torch.from_numpy(row_channel)])
        differs = ne.reshape(*ne.shape[:2], -1).any(2).transpose(0, 1).to(torch.int32)  # [rows, B]
        live = torch.zeros(n, len(golden), dtype=torch.int32).index_add_(0, torch.from_numpy(row_scen), differs.cpu())
        return (live > 0).numpy()

    @staticmethod
    def _live(n: int, row_scen: np.ndarray, pairs: list[tuple[torch.Tensor, torch.Tensor]], row_channel: np.ndarray) -> np.ndarray:
        """Per scenario, whether some faulty row ``y[:, r]`` differs from its golden channel in one of ``pairs``."""
        live = np.zeros(n, dtype=bool)
        for y, golden in pairs:
            live |= GroupedForward._live_pairs(n, row_scen, y, golden, row_channel).any(1)
        return live

    @staticmethod
    def _keep(live: np.ndarray, row_scen: np.ndarray, row_channel: np.ndarray,
              rows: list[list[torch.Tensor]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[torch.Tensor]]]:
        """The live scenarios' positions, and their rows renumbered among them."""
        keep = np.flatnonzero(live)
        new = np.full(len(live), -1, dtype=np.int64)
        new[keep] = np.arange(len(keep))
        sel = live[row_scen]
        pick = torch.from_numpy(np.flatnonzero(sel))
        return keep, new[row_scen[sel]], row_channel[sel], [[y[:, pick] for y in calls] for calls in rows]

    def _input(self, batch: int, stage: int, call: int = 0) -> torch.Tensor:
        return self.suffix.batches[batch] if stage == 0 else self.suffix.recorded[batch][stage - 1][call]

    def _golden_out(self, batch: int, stage: int, call: int = 0) -> torch.Tensor:
        return self.suffix.recorded[batch][stage][call]

    def _replayed(self, stage: int, batch: int, calls: list[torch.Tensor]) -> torch.Tensor | None:
        """The model's own forward over input batch ``batch`` with the stages before ``stage``
        replaying their golden outputs and ``stage`` returning the stacked ``calls`` ``[S, B, ...]``;
        one copy at a time where stacking fails its check; None where that fails too (the
        scenarios then run alone: a full forward where the replay leaves the golden calls)."""
        s, b = calls[0].shape[:2]
        if not self._replay_exact(stage, batch, s):
            if s > 1 and self._replay_exact(stage, batch, 1):
                outs = [o for i in range(s) if (o := self._replay(stage, batch, [own_storage(c[i]) for c in calls])) is not None]
                return torch.stack(outs) if len(outs) == s else None
            return None
        out = self._replay(stage, batch, [c.reshape(s * b, *c.shape[2:]) for c in calls])
        return None if out is None else out.reshape(s, b, *out.shape[1:])

    def _replay(self, stage: int, batch: int, calls: list[torch.Tensor]) -> torch.Tensor | None:
        sources = {k: self.suffix.recorded[batch][k] for k in range(stage)}
        with torch.no_grad():
            return self.suffix.forward_with(batch, {**sources, stage: calls})

    def _replay_exact(self, stage: int, batch: int, s: int) -> bool:
        """Whether the replayed forward over ``s`` stacked copies of the golden outputs of
        ``stage`` passes the check of :meth:`Probe.copies` (checked once per shape)."""
        def replayed(calls: list[torch.Tensor]) -> torch.Tensor:
            out = self._replay(stage, batch, calls)
            if out is None:
                raise ValueError("the replay left the golden module calls")
            return out

        def exact(probe: Probe) -> bool:
            recorded = self.suffix.recorded[batch][stage]
            try:
                alone = self._alone_out(("replay", stage, batch, probe.fill), lambda: replayed([probe.alone(o) for o in recorded]))
                return probe.matches(replayed([probe.batch(o) for o in recorded]), self.suffix.outputs[batch], alone)
            except LAYOUT_FAILURES:
                return False
        n = len(self.suffix.recorded[batch][stage][0])
        return (self._check(("replay", stage, batch, s), lambda: exact(Probe.copies(n, s)))
                and (s < 2 or all(self._check(("replay", stage, batch, p.fill), partial(exact, p)) for p in Probe.isolating(n))))

    def _stage_alone(self, stage: int, sc: Scenarios, positions: np.ndarray, sites: SiteList) -> list[torch.Tensor]:
        """Stage ``stage`` run once per scenario under its faults: ``[batch] -> [S, B, ...]``."""
        module = self.suffix.stages[stage]
        outs: list[list[torch.Tensor]] = [[] for _ in self.suffix.batches]
        with torch.no_grad():
            for p in positions:
                with inject(self.suffix.model, sc.of(int(p)), sites=sites):
                    for b in range(len(self.suffix.batches)):
                        outs[b].append(module(self._input(b, stage)))
        return [torch.stack(o) for o in outs]

    def _rest(self, n: int, starts: list[int], differ: list[np.ndarray],
              gathered: Callable[[int, np.ndarray, np.ndarray, int], torch.Tensor],
              stacked: Callable[[int, np.ndarray], torch.Tensor]) -> torch.Tensor:
        """The model outputs ``[n, inputs, ...]`` of ``n`` scenarios from their versions of the
        output of stage ``starts[b] - 1`` in input batch ``b``, where ``differ[b]`` ``[n, B]`` tells
        which (scenario, input) pairs differ from golden there: only those run the stages from
        ``starts[b]`` on, as the batch ``gathered(b, scenarios, inputs, size)`` (padded to ``size``
        rows, whose outputs are discarded), and the others keep their golden output. Where that is
        not exact (:meth:`_gather_exact`) or saves nothing, the scenarios with a differing pair in
        some batch run over all inputs: ``stacked(b, scenarios)`` ``[S, B, ...]``."""
        keep = np.flatnonzero(np.logical_or.reduce([pairs.any(1) for pairs in differ]))
        self.dropped += n - len(keep)
        full = [out.unsqueeze(0).repeat(n, *([1] * out.dim())) for out in self.suffix.outputs]
        for b, (start, pairs) in enumerate(zip(starts, differ, strict=True)):
            live = int(pairs.sum())
            if not live:  # the stage output of this batch is golden for every scenario
                self.dropped_rows += pairs.size
                continue
            size, copies = gathered_size(live), len(keep) * pairs.shape[1]
            if size < copies and self._gathering_pays(start, size, copies) and self._gather_exact(start, b, size):
                t0 = time.perf_counter()
                scen, inp = np.nonzero(pairs)
                rows, golden = gathered(b, scen, inp, size), self._input(b, start)
                self._note_cost(("gather", start), time.perf_counter() - t0, size)
                if rows.shape[1:] == golden.shape[1:] and rows.dtype == golden.dtype:
                    full[b][torch.from_numpy(scen), torch.from_numpy(inp)] = self._after_rows(start, rows)[: len(scen)]
                    self.dropped_rows += pairs.size - live
                    continue
            full[b][torch.from_numpy(keep)] = self._after(start, b, stacked(b, keep))
            self.dropped_rows += pairs.size - len(keep) * pairs.shape[1]
        return torch.cat(full, dim=1)

    @staticmethod
    def _gather(h: torch.Tensor, scen: np.ndarray, inp: np.ndarray, size: int) -> torch.Tensor:
        """The rows ``h[scen[p], inp[p]]`` of stacked outputs ``h`` ``[S, B, ...]`` as one batch,
        padded to ``size`` rows with rows of copy 0 (whose outputs are discarded).

        Example:
            >>> h = torch.arange(6.0).reshape(2, 3, 1)
            >>> GroupedForward._gather(h, np.array([1, 0]), np.array([2, 1]), 4).flatten().tolist()
            [5.0, 1.0, 0.0, 1.0]
        """
        pad = size - len(scen)
        take = np.r_[scen, np.zeros(pad, dtype=np.int64)], np.r_[inp, np.arange(pad) % h.shape[1]]
        return h[torch.from_numpy(take[0]), torch.from_numpy(take[1])]

    def _after_rows(self, stage: int, flat: torch.Tensor) -> torch.Tensor:
        """Stages ``stage``.. over a batch ``flat`` of outputs of the stage before."""
        with torch.no_grad():
            for m in self.suffix.stages[stage:]:
                flat = m(flat)
        return flat

    def _after(self, stage: int, batch: int, h: torch.Tensor) -> torch.Tensor:
        """Stages ``stage``.. over the stacked outputs ``h`` ``[S, B, ...]`` of the stage before."""
        if stage >= len(self.suffix.stages):
            return h
        s, b = h.shape[:2]
        if self._stacking_exact(stage, batch, s):
            flat = self._after_rows(stage, h.reshape(s * b, *h.shape[2:]))
            return flat.reshape(s, b, *flat.shape[1:])
        return torch.stack([self._after_rows(stage, own_storage(one)) for one in h])

    def _note_cost(self, key: tuple[str, int], seconds: float, rows: int) -> None:
        """Note a measured cost per row (the least seen counts: noise only adds)."""
        self._row_seconds[key] = min(self._row_seconds.get(key, np.inf), seconds / max(rows, 1))

    def _gathering_pays(self, stage: int, size: int, copies: int) -> bool:
        """Whether running the stages from ``stage`` on over ``size`` gathered rows instead of
        ``copies`` stacked ones saves more than gathering them costs, by the costs per row
        measured so far (True until both are known)."""
        rest, gather = self._row_seconds.get(("rest", stage)), self._row_seconds.get(("gather", stage))
        return rest is None or gather is None or (copies - size) * rest > size * gather

    def _rest_exact(self, key: tuple[object, ...], stage: int, batch: int, probe: Probe) -> bool:
        """Whether the stages from ``stage`` on pass the check of ``probe`` (:class:`Probe`) over the
        golden inputs of batch ``batch`` there (checked once per ``key``)."""
        def exact() -> bool:
            x = self._input(batch, stage)
            t0 = time.perf_counter()
            out = self._after_rows(stage, probe.batch(x))
            self._note_cost(("rest", stage), time.perf_counter() - t0, len(probe.rows))
            alone = self._alone_out(("rest", stage, batch, probe.fill), lambda: self._after_rows(stage, probe.alone(x)))
            return probe.matches(out, self._golden_out(batch, len(self.suffix.stages) - 1), alone)
        return self._check(key, exact)

    def _alone_out(self, key: tuple[object, ...], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The outputs of a check's :meth:`Probe.alone` inputs, computed once per ``key``."""
        if key not in self._alone:
            self._alone[key] = compute()
        return self._alone[key]

    def _stacking_exact(self, stage: int, batch: int, s: int) -> bool:
        """Whether the stages from ``stage`` on give, over ``s`` stacked copies of the golden
        input, each copy's golden output bit for bit, copies 1.. perturbed (:meth:`Probe.copies`;
        checked once per shape), and the :meth:`Probe.isolating` probes pass."""
        n = len(self._input(batch, stage))
        return (self._rest_exact(("stack", stage, batch, s), stage, batch, Probe.copies(n, s))
                and (s < 2 or all(self._rest_exact(("stack", stage, batch, p.fill), stage, batch, p) for p in Probe.isolating(n))))

    def _gather_exact(self, stage: int, batch: int, r: int) -> bool:
        """Whether the stages from ``stage`` on may run over ``r`` rows gathered from the scenarios'
        versions of input batch ``batch``: the model does not mix the batch (two stacked copies,
        the second perturbed, give the first's golden outputs), and ``r`` golden rows gathered out
        of their own places (:meth:`Probe.gathered`) pass the check at this size (kernels may pick
        other reduction orders for other shapes). Checked once per size.

        ``r`` is a :func:`gathered_size` size: one check covers every group whose rows pad up to it."""
        if stage >= len(self.suffix.stages):
            return True
        b = len(self._input(batch, stage))
        return self._stacking_exact(stage, batch, 2) and self._rest_exact(("gather", stage, batch, r), stage, batch, Probe.gathered(b, r))

    # -- recomputing only the touched output channels ------------------------------------------

    @staticmethod
    def _deterministic(sc: Scenarios, take: np.ndarray) -> bool:
        """Whether the faults at rows ``take`` all come from fault models that are pure functions of the code."""
        return all(sc.faults.models[m].deterministic for m in np.unique(sc.faults.model[take]))

    def patch_allowed(self, module: nn.Module) -> bool:
        """Whether a layer's touched channels may be recomputed alone: not when another module
        shares its stored tensors (tied weights would see the fault too)."""
        if self._sharing is None:
            self._sharing = sharing_modules(self.suffix.model)
        return self._sharing.get(id(module), {id(module)}) == {id(module)}

    def _channel_layer(self, stage: int) -> ChannelLayer | None:
        """How to recompute output channels of ``stage`` alone (its adapter says), if it can be."""
        module = self.suffix.stages[stage]
        return adapter_for(module).channel_layer(module)

    def _channel_dim(self, stage: int) -> int | None:
        """The dimension of ``stage``'s output channels (its layer says), the same at every call; None where it has none."""
        if stage not in self._dims:
            layer = self._channel_layer(stage)
            dims = {None} if layer is None else {layer.channel_dim(self._input(b, stage, c)) for b in range(len(self.suffix.batches))
                                                 for c in range(len(self.suffix.recorded[b][stage]))}
            self._dims[stage] = dims.pop() if len(dims) == 1 else None
        return self._dims[stage]

    def _patchable(self, stage: int, sc: Scenarios, take: np.ndarray, sites: SiteList) -> list[Site] | None:
        module = self.suffix.stages[stage]
        if self._channel_dim(stage) is None:
            return None
        if not self.patch_allowed(module):
            return None
        fs = sc.faults
        if not self._deterministic(sc, take):
            return None
        chosen = [sites[name] for name in fs.site_names]
        for site in (chosen[c] for c in np.unique(fs.site[take])):
            stored = getattr(module, site.attr, None)
            if (site.module is not module or site.kind not in ("weight", "bias") or site.attr != site.kind or site.batched
                    or not isinstance(stored, torch.Tensor) or site.shape != tuple(stored.shape)):
                return None
        return chosen

    @staticmethod
    def _values(site: Site, dtype: torch.dtype) -> torch.Tensor:
        """The values a layer computes with for a stored site (its adapter says), flat."""
        return site.adapter.values(site).reshape(-1).to(dtype)

    def _touched_weights(self, stage: int, sc: Scenarios, positions: np.ndarray, sites: SiteList) -> Touched | None:
        """For faults in the weights and biases of a Conv2d/Linear ``stage``: the touched output
        channels and a function giving them, recomputed alone, at any call of the stage; None
        when the stage or the faults do not allow it (or the exactness check fails). The layer
        computes with the decoded codes of its weight and bias sites (for quantized layers: the
        dequantized integers); the check on the golden run confirms that this reproduces it."""
        scen, take = local_faults(sc, positions)
        chosen = self._patchable(stage, sc, take, sites)
        if chosen is None:
            return None
        layer = self._channel_layer(stage)
        assert layer is not None  # _patchable checked it
        weight, bias = self._layer_values(stage, sites)
        channels = weight.shape[0]
        per_channel = weight[0].numel()
        fs = sc.faults
        is_w = np.array([s.kind == "weight" for s in chosen])[fs.site[take].astype(np.int64)]
        index = fs.index[take]
        channel = np.where(is_w, index // per_channel, index)
        element = np.where(is_w, index, channels * per_channel + index)  # bias elements after the weights
        if len(np.unique(scen * (channels * (per_channel + 1)) + element)) != len(take):
            return None  # two faults on one element of one scenario: let injection merge them
        rows, row_of = np.unique(scen * channels + channel, return_inverse=True)
        batches = range(len(self.suffix.batches))
        alone = all(self._rows_exact(stage, b, rows % channels, sites) for b in batches)
        if not alone and not all(self._full_exact(stage, b, sites) for b in batches):
            return None
        values = self._faulty_values(sc, take, chosen, weight)
        w_rows = weight.reshape(channels, -1)[torch.from_numpy(rows % channels)].clone()
        w_rows[torch.from_numpy(row_of[is_w]), torch.from_numpy(index[is_w] % per_channel)] = values[torch.from_numpy(is_w)]
        b_rows = None if bias is None else bias[torch.from_numpy(rows % channels)].clone()
        if (~is_w).any():
            if b_rows is None:
                return None
            b_rows[torch.from_numpy(row_of[~is_w])] = values[torch.from_numpy(~is_w)]
        w_rows = w_rows.reshape(len(rows), *weight.shape[1:])

        dim = self._channel_dim(stage)
        assert dim is not None  # _patchable checked it

        def recompute(batch: int, call: int) -> torch.Tensor:
            with torch.no_grad():
                x = self._input(batch, stage, call)
                if alone:
                    return channels_on_1(layer.rows(x, w_rows, b_rows, rows % channels), dim)
                return self._packed(layer, x, weight, bias, w_rows, b_rows, rows % channels, dim)

        return Touched(rows // channels, rows % channels, recompute, dim)

    @staticmethod
    def _packed(layer: ChannelLayer, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                w_rows: torch.Tensor, b_rows: torch.Tensor | None, channels: np.ndarray, dim: int) -> torch.Tensor:
        """Faulty output channels computed in their own positions of full-shape layer calls: each
        call holds at most one faulty row per channel (the rest golden), so every channel comes
        from the very kernel and position the full layer uses. For layers whose result for a
        channel computed alone differs from the full call's (``_rows_exact`` fails)."""
        order = np.argsort(channels, kind="stable")
        starts = np.r_[0, np.flatnonzero(np.diff(channels[order])) + 1]
        rank = np.empty(len(channels), dtype=np.int64)
        rank[order] = np.arange(len(channels)) - np.repeat(starts, np.diff(np.r_[starts, len(channels)]))
        out: torch.Tensor | None = None
        for p in range(int(rank.max()) + 1):
            sel = torch.from_numpy(np.flatnonzero(rank == p))
            ch = torch.from_numpy(channels)[sel]
            w = weight.clone()
            w[ch] = w_rows[sel]
            b = None if bias is None else bias.clone()
            if b is not None and b_rows is not None:
                b[ch] = b_rows[sel]
            y = channels_on_1(layer.full(x, w, b), dim)
            if out is None:
                out = y.new_empty((y.shape[0], len(channels), *y.shape[2:]))
            out[:, sel] = y[:, ch]
        assert out is not None
        return out

    def _full_exact(self, stage: int, batch: int, sites: SiteList) -> bool:
        """Whether the full layer computed from its sites' values reproduces its golden output at every call."""
        def exact() -> bool:
            weight, bias = self._layer_values(stage, sites)
            layer = self._channel_layer(stage)
            assert layer is not None  # _patchable checked it
            return all(same_bits(layer.full(self._input(batch, stage, c), weight, bias), self._golden_out(batch, stage, c))
                       for c in range(len(self.suffix.recorded[batch][stage])))
        return self._check(("full", stage, batch), exact)

    def _carry(self, stage: int, batch: int, y: torch.Tensor, channels: torch.Tensor) -> tuple[int, torch.Tensor]:
        """Carry the faulty channels ``y`` ``[B, rows, ...]`` (channel ``channels[r]`` in row ``r``)
        of ``stage`` through the channel-local stages after it: the stage reached and the channels there."""
        reached = stage
        while (carry := self._local_map(reached + 1, batch, y.shape[1])) is not None:
            reached += 1
            y = carry(y, channels)
        return reached, y

    @staticmethod
    def _patched(golden: torch.Tensor, y: torch.Tensor, row_scen: np.ndarray, row_channel: np.ndarray,
                 scen: np.ndarray, inp: np.ndarray, size: int) -> torch.Tensor:
        """The rows of (scenario, input) pairs ``p`` without building every copy (:meth:`_stack`):
        ``golden[inp[p]]`` ``[C, ...]`` with channel ``row_channel[r]`` replaced by ``y[inp[p], r]``
        for each row ``r`` of scenario ``scen[p]`` (``row_scen[r]``); padded to ``size`` rows with golden rows.

        Example:
            >>> golden = torch.zeros(2, 3); y = torch.tensor([[7.0], [8.0]])  # scenario 0 touches channel 2
            >>> GroupedForward._patched(golden, y, np.array([0]), np.array([2]), np.array([0, 1]), np.array([1, 0]), 3).tolist()
            [[0.0, 0.0, 8.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
        """
        pair_of = np.full((1 + max(int(row_scen.max(initial=-1)), int(scen.max(initial=-1))), len(golden)), -1, dtype=np.int64)
        pair_of[scen, inp] = np.arange(len(scen))
        at = pair_of[row_scen]  # [rows, B]: the pair each faulty row goes to, per input
        r, i = np.nonzero(at >= 0)
        h = golden[torch.from_numpy(np.r_[inp, np.arange(size - len(scen)) % len(golden)])]
        h[torch.from_numpy(at[r, i]), torch.from_numpy(row_channel[r])] = y[torch.from_numpy(i), torch.from_numpy(r)]
        return h

    @staticmethod
    def _stack(golden: torch.Tensor, y: torch.Tensor, row_scen: np.ndarray, row_channel: np.ndarray, n_scen: int) -> torch.Tensor:
        """``n_scen`` copies of ``golden`` ``[B, C, ...]`` with channel ``row_channel[r]`` of copy
        ``row_scen[r]`` replaced by ``y[:, r]``."""
        h = golden.unsqueeze(0).repeat(n_scen, *([1] * golden.dim()))
        h[torch.from_numpy(row_scen), :, torch.from_numpy(row_channel)] = y.transpose(0, 1)
        return h

    def _touched_output(self, stage: int, sc: Scenarios, positions: np.ndarray, sites: SiteList) -> Touched | None:
        """Like :meth:`_touched_weights` for faults in the output activation of ``stage`` (on
        every sample): the golden output's touched channels with the faults applied to their bits."""
        module = self.suffix.stages[stage]
        fs = sc.faults
        scen, take = local_faults(sc, positions)
        if not self._deterministic(sc, take):
            return None
        site_codes = np.unique(fs.site[take])
        if len(site_codes) != 1:
            return None
        site = sites[fs.site_names[site_codes[0]]]
        golden = self._golden_out(0, stage)
        if (site.module is not module or site.kind != "activation" or not site.adapter.faults_act_on_output(site)
                or not isinstance(site.encoding, FloatEncoding) or not site.shape or not isinstance(golden, torch.Tensor)
                or golden.dtype != site.encoding.dtype or tuple(golden.shape[1:]) != site.shape):
            return None
        per_channel = int(np.prod(site.shape[1:], dtype=np.int64))
        index = fs.index[take]
        if len(np.unique(scen * int(np.prod(site.shape)) + index)) != len(take):
            return None  # two faults on one element of one scenario: let injection merge them
        rows, row_of = np.unique(scen * site.shape[0] + index // per_channel, return_inverse=True)
        row_channel = rows % site.shape[0]
        row_t, offset = torch.from_numpy(row_of), torch.from_numpy(index % per_channel)

        def faulted(batch: int, call: int) -> torch.Tensor:
            gold = self._golden_out(batch, stage, call)
            y = gold[:, torch.from_numpy(row_channel)].clone()
            flat = y.view(len(gold), len(rows), per_channel)
            for m in np.unique(fs.model[take]):
                sel = torch.from_numpy(np.flatnonzero(fs.model[take] == m))
                codes = site.encoding.encode(flat[:, row_t[sel], offset[sel]])
                mask = torch.from_numpy(fs.mask[take])[sel].to(codes.device).expand_as(codes)
                flat[:, row_t[sel], offset[sel]] = site.encoding.decode(fs.models[m].apply(codes, mask, site.encoding))
            return y

        return Touched(rows // site.shape[0], row_channel, faulted)

    def _layer_values(self, stage: int, sites: SiteList) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight and bias a Conv2d/Linear stage computes with, from its sites' codes (decoded once)."""
        if stage not in self._layers:
            module = self.suffix.stages[stage]
            found = {s.kind: s for s in sites if s.module is module and s.kind in ("weight", "bias") and s.attr == s.kind and not s.batched}
            stored_w, stored_b = module.weight, module.bias
            assert isinstance(stored_w, torch.Tensor) and (stored_b is None or isinstance(stored_b, torch.Tensor))  # _patchable checked
            dtype = stored_w.dtype
            weight = self._values(found["weight"], dtype).reshape(stored_w.shape) if "weight" in found else stored_w.detach()
            bias = None if stored_b is None else self._values(found["bias"], dtype) if "bias" in found else stored_b.detach()
            self._layers[stage] = weight, bias
        return self._layers[stage]

    def _rows_exact(self, stage: int, batch: int, channels: np.ndarray, sites: SiteList) -> bool:
        """Whether recomputing exactly these output channels, in this arrangement, reproduces them
        bit for bit at every call (a kernel's result for a channel may depend on where the channel
        sits in the matrix it computes, not only on the shape)."""
        def exact() -> bool:
            weight, bias = self._layer_values(stage, sites)
            pick = torch.from_numpy(channels)
            w, b = weight[pick], None if bias is None else bias[pick]
            layer, dim = self._channel_layer(stage), self._channel_dim(stage)
            assert layer is not None and dim is not None  # _patchable checked it
            return all(  # every call: a loop must feed the stage the previous stage's output
                same_bits(channels_on_1(layer.rows(self._input(batch, stage, c), w, b, channels), dim),
                          channels_on_1(self._golden_out(batch, stage, c), dim)[:, pick])
                for c in range(len(self.suffix.recorded[batch][stage])))
        if len(self._exact) > 100_000:  # bounded: a long campaign meets many channel sets
            self._exact = {k: v for k, v in self._exact.items() if k[0] != "rows"}
        return self._check(("rows", stage, batch, channels.tobytes()), exact)

    def _local_map(self, stage: int, batch: int, n_rows: int) -> ChannelMap | None:
        """How ``stage`` computes each channel from the same input channel alone
        (:func:`channel_map`), where that reproduces ``n_rows`` picked channels of its golden output
        from those of its golden input bit for bit, and of its output on a perturbed input
        (:func:`perturb`: golden values, zeros after a ReLU, can hide a kernel that computes
        otherwise); None where it does not."""
        if stage >= len(self.suffix.stages):
            return None
        module = self.suffix.stages[stage]
        carry = channel_map(module)
        if carry is None:
            return None
        def exact() -> bool:
            before = self._golden_out(batch, stage - 1)
            pick = torch.arange(n_rows) % before.shape[1]
            perturbed = perturb(before)
            with torch.no_grad():
                return (same_bits(carry(before[:, pick], pick), self._golden_out(batch, stage)[:, pick])
                        and same_bits(carry(perturbed[:, pick], pick), module(perturbed)[:, pick]))
        return carry if self._check(("local", stage, batch, n_rows), exact) else None

    def _faulty_values(self, sc: Scenarios, take: np.ndarray, chosen: list[Site], like: torch.Tensor) -> torch.Tensor:
        """The faulty value of every fault in ``take`` (in the dtype and on the device of the layer's
        weight ``like``), from the fault models on the stored codes."""
        fs = sc.faults
        dtype = like.dtype
        values = torch.empty(len(take), dtype=dtype, device=like.device)
        site_col, model_col = fs.site[take].astype(np.int64), fs.model[take].astype(np.int64)
        for s_code, site in enumerate(chosen):
            for m_code, model in enumerate(fs.models):
                rows = np.flatnonzero((site_col == s_code) & (model_col == m_code))
                if not len(rows):
                    continue
                idx = torch.from_numpy(fs.index[take[rows]])
                codes = self.stored_codes(site)[idx]
                faulty = model.apply(codes, torch.from_numpy(fs.mask[take[rows]]).to(codes.device), site.encoding.at(idx, site.shape or ()))
                values[torch.from_numpy(rows)] = site.encoding.at(idx, site.shape or ()).decode(faulty).to(dtype)
        return values


def channel_map(module: nn.Module) -> ChannelMap | None:
    """How ``module`` computes output channels from the same input channels alone, if it does (its adapter says)."""
    return adapter_for(module).channel_map(module)


class GroupTimer:
    """Chooses, per stage, how many scenarios to evaluate together from measured seconds per
    scenario: grouped evaluation and one scenario at a time give identical outcomes, but which is
    faster depends on the model, the shapes and the machine (stacked convolutions over tensors
    past the cache size cost more per sample than one at a time on a CPU). A stage whose groups
    cost more per scenario than its scenarios alone runs one at a time from then on.

    Example:
        >>> t = GroupTimer()
        >>> for seconds in (0.5, 0.010, 0.010): t.record(3, 1, seconds, 1)  # the first: a warm-up
        >>> for seconds in (0.5, 0.160): t.record(3, 8, seconds, 8)
        >>> t.per_scenario(3, 1), t.per_scenario(3, 8), t.size(3, 8)   # 20 ms per grouped scenario against 10 alone
        (0.01, 0.02, 1)
    """

    #: scenarios a stage runs alone first, to learn what one at a time costs there (the first is a warm-up)
    EXPLORE = 3

    def __init__(self) -> None:
        self._seconds: dict[tuple[int, int], float] = {}
        self._count: dict[tuple[int, int], int] = {}
        self._warm: set[tuple[int, int]] = set()

    def record(self, stage: int, size: int, seconds: float, scenarios: int) -> None:
        """Note that ``scenarios`` of ``stage`` took ``seconds`` at group size ``size`` (1: alone).
        The first record per stage and size is a warm-up (it pays the exactness checks) and not counted."""
        key = (stage, size)
        if key not in self._warm:
            self._warm.add(key)
            return
        self._seconds[key] = self._seconds.get(key, 0.0) + seconds
        self._count[key] = self._count.get(key, 0) + scenarios

    def per_scenario(self, stage: int, size: int) -> float | None:
        n = self._count.get((stage, size), 0)
        return self._seconds[(stage, size)] / n if n else None

    def exploring(self, stage: int) -> int:
        """How many of a stage's scenarios should still run alone to measure it."""
        return max(0, self.EXPLORE - self._count.get((stage, 1), 0) - ((stage, 1) in self._warm))

    def size(self, stage: int, largest: int) -> int:
        """The group size to use for ``stage``: ``largest``, or 1 once its groups were measured to
        cost more per scenario than its scenarios alone."""
        alone, grouped = self.per_scenario(stage, 1), self.per_scenario(stage, largest)
        return 1 if alone is not None and grouped is not None and grouped >= alone else largest


def common_value(values: np.ndarray, sc: Scenarios) -> np.ndarray:
    """Per scenario, the value all its faults share (``values[j]`` for fault ``j``), -1 where
    they differ or it has none.

    Example:
        >>> import resil
        >>> from resil.campaign.evaluator import scenarios_of
        >>> sc = scenarios_of([resil.FaultSet("w", [0, 1], [1, 1]), resil.FaultSet("w", [0], [1]), resil.FaultSet("w", [], [])])
        >>> common_value(np.array([3, 3, 5]), sc).tolist()
        [3, 5, -1]
    """
    lo = np.full(len(sc.ids), np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full(len(sc.ids), np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(lo, sc.owner, values)
    np.maximum.at(hi, sc.owner, values)
    return np.where(lo == hi, lo, -1)


def faults_on_outputs(sc: Scenarios, sites: SiteList) -> np.ndarray:
    """Per scenario: 0 if its faults all sit in stored tensors (weights, biases), 1 if all in
    computed outputs, -1 if both (a group is evaluated one way, so the kinds are grouped apart).

    Example:
        >>> import resil
        >>> from resil.campaign.evaluator import scenarios_of
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2)); sites = resil.sites(net, torch.zeros(1, 2))
        >>> sc = scenarios_of([resil.FaultSet("0.weight", [0], [1]), resil.FaultSet("0:out", [0], [1])])
        >>> faults_on_outputs(sc, sites).tolist()
        [0, 1]
    """
    fs = sc.faults
    return common_value(np.array([sites[name].batched for name in fs.site_names], dtype=np.int64)[fs.site.astype(np.int64)], sc)


def run_grouped(
    grouped: GroupedForward, sc: Scenarios, todo: np.ndarray, sites: SiteList,
    classify: Callable[[torch.Tensor], dict[str, np.ndarray]], counts: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate the groupable scenarios among positions ``todo`` into ``counts``; return the rest
    and every scenario's stage (-1: none), so that the caller can time the rest for :attr:`GroupedForward.timer`."""
    stage_of = grouped.stages(sc, sites)
    on_outputs = faults_on_outputs(sc, sites)
    left = np.zeros(len(sc.ids), dtype=bool)
    for stage in np.unique(stage_of[todo]):
        if stage < 0:
            continue
        at_stage = todo[stage_of[todo] == stage]
        for kind in np.unique(on_outputs[at_stage]):  # weight faults and output faults are grouped apart
            members = at_stage[on_outputs[at_stage] == kind]
            explore = grouped.timer.exploring(int(stage)) if len(members) > GroupTimer.EXPLORE else 0
            left[members[:explore]] = True
            members = members[explore:]
            size = grouped.timer.size(int(stage), grouped.group_size(int(stage)))
            if size < 2:  # one at a time: the suffix replay costs less here than the grouped machinery
                left[members] = True
                continue
            chunks = -(-len(members) // size)
            for chunk in np.array_split(members, chunks):
                t0, checks = time.perf_counter(), grouped.check_seconds
                outputs = grouped.outputs(int(stage), sc, chunk, sites)
                if outputs is None:
                    left[chunk] = True
                    continue
                for k, v in classify(outputs).items():
                    counts[k][chunk] = v
                grouped.timer.record(int(stage), size, time.perf_counter() - t0 - (grouped.check_seconds - checks), len(chunk))
    return todo[(stage_of[todo] < 0) | left[todo]], stage_of
