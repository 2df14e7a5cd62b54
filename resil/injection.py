"""``resil.inject``: scoped, nestable, exception-safe fault injection."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from torch import nn

from .discovery import sites as list_sites
from .errors import FaultError, unknown_site
from .fault_models import FaultModel
from .faults import FOREVER, Fault, FaultSet
from .injectors import ELEMENT_BITS
from .plan import ElementPlan
from .site import Site, SiteList, SitePlan, Undo, WindowPlan

Faults = Fault | Sequence[Fault] | FaultSet


@dataclass(frozen=True)
class Injection:
    """What an :func:`inject` block applied: the fault set and the sites it touched."""

    faults: FaultSet
    sites: tuple[Site, ...]


def as_fault_set(faults: Faults, site_list: SiteList) -> FaultSet:
    """A :class:`FaultSet` from a Fault, a list of Faults or a FaultSet."""
    if isinstance(faults, FaultSet):
        return faults
    if isinstance(faults, Fault):
        faults = [faults]
    if not all(isinstance(f, Fault) for f in faults):
        raise FaultError("inject takes a Fault, a list of Faults or a FaultSet")
    names = {f.site for f in faults}
    for n in names:
        if n not in site_list:
            raise unknown_site(n, site_list.names())
    return FaultSet.from_faults(faults, {n: site_list[n].shape for n in names})


def compile_faults(fs: FaultSet, site_list: SiteList) -> list[tuple[Site, SitePlan]]:
    """Validate ``fs`` against the sites and merge it into one plan per site.

    Raises:
        FaultError: naming the first problem found; nothing has been modified.
    """
    n_sites = len(fs.site_names)
    needed = [("index", fs.index), ("mask", fs.mask)]
    if fs.per_sample:
        needed.append(("batch", fs.batch))
    if len(fs.models) > 1:
        needed.append(("model", fs.model))
    if not fs.permanent:
        needed += [("t_start", fs.t_start), ("t_stop", fs.t_stop)]
    if n_sites == 1:
        cols, bounds = dict(needed), np.array([0, len(fs)])
    else:
        order = np.argsort(fs.site, kind="stable")  # int16 codes: a radix sort
        cols = {c: v[order] for c, v in needed}
        bounds = np.searchsorted(fs.site[order], np.arange(n_sites + 1))
    plans = []
    for s_code in range(n_sites):
        a, b = int(bounds[s_code]), int(bounds[s_code + 1])
        if a < b:
            site = site_list[fs.site_names[s_code]]
            plans.append((site, _site_plan(site, fs.models, {c: v[a:b] for c, v in cols.items()})))
    return plans


def _site_plan(site: Site, models: tuple[FaultModel, ...], cols: dict[str, np.ndarray]) -> SitePlan:
    index, mask = cols["index"], cols["mask"]
    n = len(index)
    batch = cols.get("batch", np.full(n, -1, dtype=np.int64))
    model = cols.get("model", np.zeros(n, dtype=np.int32))
    top = int(index.max())
    if site.numel is not None and top >= site.numel:
        bad = int(index[index >= site.numel][0])
        shape = tuple(site.shape or ())
        raise FaultError(f"index {bad} is outside site {site.name!r} of shape {shape} ({site.numel} elements)")
    if site.live is not None:
        pos = np.minimum(np.searchsorted(site.live, index), len(site.live) - 1)
        missing = site.live[pos] != index if len(site.live) else np.ones(len(index), dtype=bool)
        if missing.any():
            raise FaultError(
                f"element {int(index[missing][0])} of site {site.name!r} is not stored "
                f"(the site stores {len(site.live)} of its {site.numel} elements; sample from site.elements())"
            )
    bits = site.encoding.bits
    if bits < 64 and (mask.min() < 0 or mask.max() >= (1 << bits)):
        bad_mask = int(mask[(mask < 0) | (mask >= (1 << bits))][0]) & ((1 << 64) - 1)
        raise FaultError(f"bit {bad_mask.bit_length() - 1} is outside the {bits}-bit {site.encoding.name} encoding of site {site.name!r}")
    for m in np.unique(model) if len(models) > 1 else (0,):
        why = models[m].not_applicable(site.encoding, site.kind)
        if why:
            raise FaultError(f"{type(models[m]).__name__} does not apply to site {site.name!r}: {why}")
    if top > (1 << ELEMENT_BITS) - 1:
        raise FaultError(f"index {top} is too large")
    per = batch >= 0
    any_per = "batch" in cols and bool(per.any())
    if any_per and not site.batched:
        raise FaultError(f"site {site.name!r} is a stored {site.kind}; faults on it cannot name a batch element")
    if any_per and site.batch_dim is None:
        raise FaultError(f"site {site.name!r} has no batch dimension (none of its tensor's dimensions follows the batch size); "
                         "its faults hit the whole tensor and cannot name a batch element")
    if "t_start" not in cols:
        return SitePlan([_window_plan(0, FOREVER, index, mask, model, batch, per if any_per else None, models)])
    start, stop = cols["t_start"], cols["t_stop"]
    windows = sorted({(int(a), int(b)) for a in np.unique(start) for b in np.unique(stop[start == a])})
    if not site.batched and windows != [(0, FOREVER)]:
        raise FaultError(f"site {site.name!r} is a stored {site.kind}: its faults are permanent and cannot name time steps")
    plans = []
    for t0, t1 in windows:
        inside = (start == t0) & (stop == t1)
        plans.append(_window_plan(t0, t1, index[inside], mask[inside], model[inside], batch[inside], per[inside], models))
    return SitePlan(plans)


def _window_plan(t0: int, t1: int, index: np.ndarray, mask: np.ndarray, model: np.ndarray, batch: np.ndarray,
                 per: np.ndarray | None, models: tuple[FaultModel, ...]) -> WindowPlan:
    """The plan of one time window: every-sample faults and per-sample faults (``per``)."""
    if per is None or not per.any():
        return WindowPlan(t0, t1, ElementPlan.build(index, mask, model, models) if len(index) else None, None)
    every = ~per
    return WindowPlan(
        t0, t1,
        ElementPlan.build(index[every], mask[every], model[every], models) if every.any() else None,
        ElementPlan.build((batch[per] << ELEMENT_BITS) | index[per], mask[per], model[per], models),
    )


@contextmanager
def inject(model: nn.Module, faults: Faults, *, sites: SiteList | None = None) -> Iterator[Injection]:
    """Apply ``faults`` to ``model`` for the duration of the block.

    Stored tensors (weights, buffers) are corrupted in place and restored bit-exactly on exit,
    however the block exits; computed tensors (activations) are corrupted by forward hooks that
    are removed on exit. Faults on the same element combine in order (two flips of one bit
    cancel). Blocks nest and must exit last-in-first-out: a block that exits while a block
    entered after it on the same model is still open restores the model correctly, then raises
    :class:`FaultError` (do not share a model across threads during injection: each thread's
    forwards would see the other's faults). Works under ``no_grad``, ``inference_mode`` and
    with gradients on.

    Args:
        model: the model.
        faults: a :class:`Fault`, a list of them, or a :class:`FaultSet`.
        sites: the model's sites, if already listed (saves the walk in tight loops).

    Raises:
        FaultError: before anything is modified, if a fault names an unknown site, an element
            outside its tensor, a bit outside its encoding, or a fault model that does not apply.

    Example:
        >>> import torch, resil
        >>> lin = torch.nn.Linear(1, 1, bias=False); _ = lin.weight.data.fill_(1.0)
        >>> with resil.inject(lin, resil.Fault("weight", 0, bit=31)):
        ...     lin(torch.ones(1, 1)).item()
        -1.0
        >>> lin.weight.item()
        1.0
    """
    site_list = sites if sites is not None else list_sites(model)
    fs = as_fault_set(faults, site_list)
    scope = _Scope(compile_faults(fs, site_list))
    with _LOCK:
        scope.apply()
        _OPEN.append(scope)
    try:
        yield Injection(fs, tuple(s for s, _ in scope.plans))
    finally:
        _close(scope)


class _Scope:
    """An open :func:`inject` block: its plans, the modules they touch and how to undo them."""

    def __init__(self, plans: list[tuple[Site, SitePlan]]) -> None:
        self.plans = plans
        self.modules = {id(site.module) for site, _ in plans}
        self.undo: list[Undo] = []

    def apply(self) -> None:
        """Install every plan (all or none: a failing install undoes the ones before it)."""
        undo: list[Undo] = []
        try:
            for site, plan in self.plans:
                undo.append(site.install(plan))
        except BaseException:
            for u in reversed(undo):
                u()
            raise
        self.undo = undo

    def restore(self) -> None:
        for u in reversed(self.undo):
            u()
        self.undo = []


#: every open inject block of this process, in the order they were entered
_OPEN: list[_Scope] = []
_LOCK = threading.RLock()


def _close(scope: _Scope) -> None:
    """Undo ``scope``. Blocks must exit last-in-first-out; one that exits while blocks entered
    after it on the same modules are still open (two threads sharing a model, say) would write
    back codes saved under their faults. So those blocks are undone first, then this one, then
    they are applied again: the model holds exactly the faults of the open blocks (bit-exact
    once all exit), and the out-of-order exit is raised."""
    with _LOCK:
        i = next(j for j in range(len(_OPEN) - 1, -1, -1) if _OPEN[j] is scope)
        touched, later = set(scope.modules), []
        for other in _OPEN[i + 1:]:
            if other.modules & touched:
                later.append(other)
                touched |= other.modules
        for other in reversed(later):
            other.restore()
        scope.restore()
        del _OPEN[i]
        for other in later:
            other.apply()
    if later:
        raise FaultError(f"inject blocks exited out of order: this block exited while {len(later)} block(s) entered after it on "
                         "the same model were still open. The model is restored correctly (this block's faults are removed, "
                         "the open blocks' faults stay until they exit), but outputs computed while the blocks overlapped mix "
                         "their faults: nest inject blocks (last in, first out) and do not share a model across threads "
                         "during injection")
