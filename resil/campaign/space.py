"""The fault space of a campaign: the selected sites x their addressable elements x bit positions,
numbered 0 .. total-1 so that samplers can draw from it uniformly or by stratum."""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import FaultError
from ..hooks import forward_hooks
from ..site import Site, SiteList, tensor_at

if TYPE_CHECKING:
    from .spec import FaultSpec, SiteSpec


def layer_of(site: Site) -> str:
    """The module a site belongs to: ``conv1`` for ``conv1.weight`` and ``conv1:out``."""
    name = site.name.split(":")[0]
    return name if site.batched else name.rsplit(".", 1)[0] if "." in name else ""


def check_per_sample(sites: tuple[Site, ...], model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Refuse per-sample faults on computed sites whose module is called on other than the whole
    input batch (an expert of a mixture called on ``h[mask]``): a fault naming input ``b`` would hit
    row ``b`` of what the module received, another input or none; or whose output dimension taken
    for the batch only happens to be as long (``[L, B, F]`` with ``L == B``), which a forward over
    the first batch less one input shows. Forwards over the first and the last of ``batches``.

    Raises:
        FaultError: naming the sites and the rows their modules saw.
    """
    seen: dict[str, set[tuple[int, int]]] = {}
    run: dict[str, set[tuple[int, int]]] = {}  # this forward's (rows, batch size) per site
    size = 0

    def watch(site: Site) -> Any:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            t = tensor_at(out, site.path)
            if isinstance(t, torch.Tensor) and site.batch_dim is not None and t.dim() > site.batch_dim:
                run.setdefault(site.name, set()).add((int(t.shape[site.batch_dim]), size))
        return hook

    trials = [batches[0], batches[-1]] + ([batches[0][:-1]] if len(batches[0]) > 1 else [])
    with forward_hooks((s.module, watch(s)) for s in sites if s.batched), torch.no_grad():
        for i, x in enumerate(trials):
            run.clear()
            size = len(x)
            try:
                model(x)
            except Exception:
                if i < 2:
                    raise
                continue  # a model that runs only at its batch size: the first two forwards stand
            for name, calls in run.items():
                seen.setdefault(name, set()).update(calls)
    partial = {name: [(r, n) for r, n in calls if r != n] for name, calls in seen.items()}
    partial = {name: calls for name, calls in partial.items() if calls}
    if partial:
        shown = "; ".join(f"{name!r} got {min(calls)[0]} rows of a batch of {min(calls)[1]}" for name, calls in list(partial.items())[:3])
        raise FaultError(f"per_sample faults name an input by its row in a site's output, but {len(partial)} site(s) do not hold "
                         f"one row per input ({shown}: a module called on part of the batch, or a dimension as long as the "
                         "batch by chance): a fault would hit another input or none. Leave them out of [sites] include, "
                         "or set per_sample = false")


def _bits_of(site: Site, requested: tuple[int, ...], span: int) -> np.ndarray:
    """The start bits of faults on ``site``: ``requested`` (each must fit, with the ``span`` bits
    from it, in the site's encoding), or every start bit that fits."""
    width, what = site.bits, f"the {site.bits}-bit {site.encoding.name} encoding of site {site.name!r}"
    fits = f"start bits 0..{width - span}" if span <= width else "none fits"
    if not requested:
        if span > width:
            raise FaultError(f"a fault spanning {span} bits does not fit {what}; choose a shorter one or other [sites]")
        return np.arange(width - span + 1)
    outside = [b for b in requested if b + span > width]
    if outside:
        runs = f"bit {outside[0]} is outside" if span == 1 else f"a {span}-bit fault from bit {outside[0]} runs past"
        raise FaultError(f"[faults] bits: {runs} {what} ({fits}); every requested bit must fit every selected site: "
                         "narrow [sites] include/kinds or [faults] bits")
    return np.array(requested, dtype=np.int64)


@dataclass(frozen=True)
class FaultSpace:
    """Sites with their elements and bit positions; flat index = site offset + element * nbits + bit slot."""

    sites: tuple[Site, ...]
    elements: tuple[np.ndarray, ...]
    bits: tuple[np.ndarray, ...]
    offsets: np.ndarray  # (len(sites) + 1,), offsets[-1] == total

    @classmethod
    def select(cls, site_list: SiteList, sites: SiteSpec, faults: FaultSpec, uses_bits: bool = True, span: int = 1) -> FaultSpace:
        """The space of the sites matching ``sites`` with the bit positions of ``faults`` (for a
        fault model spanning ``span`` bits, the start bits whose span stays inside the element).

        Raises:
            FaultError: if no site matches, a site's shape is unknown, a requested bit (or the
                ``span`` bits from it) does not fit a selected site's encoding, or the space is empty.
        """
        chosen = [s for s in site_list if s.kind in sites.kinds and any(fnmatch.fnmatchcase(s.name, p) for p in sites.include)]
        shapeless = [s.name for s in chosen if s.shape is None and s.name not in sites.include]
        if shapeless:  # matched by a pattern only: left out, and said so
            warnings.warn(f"left out {len(shapeless)} site(s) of unknown shape matched by a pattern: {shapeless[:5]} (a module "
                          "whose calls return outputs of different shapes, such as one ReLU module after layers of different "
                          "widths, or one the example pass did not call)", RuntimeWarning, stacklevel=2)
            chosen = [s for s in chosen if s.name not in shapeless]
        if not chosen:
            raise FaultError(f"no site matches include={list(sites.include)} and kinds={list(sites.kinds)}; "
                             "list them with `resil sites MODEL`")
        no_samples = [s.name for s in chosen if faults.per_sample and (not s.batched or s.batch_dim is None)]
        if no_samples:
            raise FaultError(f"per_sample faults need sites with a batch dimension; {no_samples[:3]} have none")
        elements, bits = [], []
        for s in chosen:
            if s.shape is None:
                raise FaultError(f"site {s.name!r} has an unknown shape: its module returns outputs of different shapes at "
                                 "different calls, or the example pass did not call it")
            elements.append(s.elements())
            bits.append(_bits_of(s, faults.bits, span) if uses_bits else np.array([-1]))
        sizes = np.array([len(e) * len(b) for e, b in zip(elements, bits, strict=True)], dtype=np.int64)
        if not sizes.sum():
            raise FaultError(f"the fault space is empty: the {len(chosen)} selected site(s) store no element (every one pruned?)")
        return cls(tuple(chosen), tuple(elements), tuple(bits), np.r_[0, np.cumsum(sizes)])

    @property
    def total(self) -> int:
        """Number of (site, element, bit) fault locations."""
        return int(self.offsets[-1])

    def locate(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(site position, element index, bit)`` of flat fault locations (vectorized)."""
        flat = np.asarray(flat, dtype=np.int64)
        if len(flat) and (flat.min() < 0 or flat.max() >= self.total):
            raise FaultError(f"fault location outside the space of {self.total} locations")
        site = np.searchsorted(self.offsets, flat, side="right") - 1
        element, bit = np.empty_like(flat), np.empty_like(flat)
        for s in np.unique(site):
            sel = site == s
            local = flat[sel] - self.offsets[s]
            nb = len(self.bits[s])
            element[sel], bit[sel] = self.elements[s][local // nb], self.bits[s][local % nb]
        return site, element, bit

    def site_range(self, position: int) -> tuple[int, int]:
        """The flat locations ``[start, stop)`` of one site."""
        return int(self.offsets[position]), int(self.offsets[position + 1])
