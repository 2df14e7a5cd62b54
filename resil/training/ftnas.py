"""FT-NAS fault processes for hardening (Ning et al., "FTT-NAS", arXiv 2003.10375): MiBB / iBB
feature faults and adSAF stuck-at weight faults, drawn at random.

:class:`MiBB` (per-MAC rate ``p_m`` turned into a per-feature rate ``1 - (1 - p_m)**M``),
:class:`IBB` (per-feature rate directly) and :class:`AdSAF` (each cell faulty with ``p``, 16.3%
of faulty cells SAF1). Each corrupts tensors directly (:meth:`MiBB.corrupt`, :meth:`AdSAF.corrupt`;
used by :mod:`resil.training.ftt` to resample faults on every forward pass) or draws a
:class:`~resil.FaultSet` of the per-element fault models of :mod:`resil.fixed_point_faults`
(:class:`~resil.BitBias`, :class:`~resil.DifferentialStuckAt`) for :func:`resil.inject`
(:meth:`MiBB.fault_set`, :meth:`AdSAF.fault_set`).

Feature faults follow FT-NAS's 8-bit dynamic fixed point (see :mod:`resil.fixed_point_faults`);
resil computes the scale **per sample** (the maximum over one sample's feature map), so a
sample's faults do not depend on the rest of its batch; the features themselves are not
quantized (quantize the model, e.g. with Brevitas, for that).

Example:
    >>> from resil.training.ftnas import MiBB
    >>> print(f"{MiBB(p_m=1e-4).feature_rate(576):.4f}")     # a 3x3 conv with 64 input channels
    0.0560
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..discovery import sites as list_sites
from ..encodings import Encoding, IntEncoding
from ..errors import FaultError
from ..faults import FaultSet
from ..fixed_point_faults import (
    N_BIASES,
    NEG_SAF0,
    NEG_SAF1,
    POS_SAF0,
    POS_SAF1,
    BitBias,
    DifferentialStuckAt,
    add_bit_bias,
    fixed_point_scale,
    stuck_cells,
)
from ..site import Site, SiteList


def fan_in(module: nn.Module) -> int:
    """Multiplications per output feature ``M`` of a conv or linear layer:
    ``(C_in / groups) * k_h * k_w`` for convolutions, ``in_features`` for linear layers.

    Example:
        >>> fan_in(nn.Conv2d(8, 16, 3, groups=2)), fan_in(nn.Linear(512, 64))
        (36, 512)
    """
    w = _weight_of(module)
    if w is None:
        raise FaultError(f"{type(module).__name__} is not a multiply-accumulate layer (no weight of 2 or more dimensions)")
    if isinstance(module, nn.modules.conv._ConvTransposeNd):  # weight [C_in, C_out/groups, *k]
        return int(w.shape[0] // module.groups * math.prod(w.shape[2:]))
    return int(math.prod(w.shape[1:]))


def _weight_of(module: nn.Module) -> torch.Tensor | None:
    if isinstance(module, nn.Embedding):
        return None
    w = getattr(module, "weight", None)  # a pruned layer's too: its pruning pre-hook keeps it computed
    return w if isinstance(w, torch.Tensor) and w.dim() >= 2 else None


def _matches(name: str, include: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in include)


def _check_rate(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise FaultError(f"{name} must be a probability in [0, 1], not {value!r}")


def _check_include(include: Any) -> None:
    if isinstance(include, str) or not all(isinstance(p, str) for p in include):
        raise FaultError(f"include must be a tuple of site-name globs such as ('conv*:out',), not {include!r}")


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device)


@dataclass(frozen=True)
class FeatureFaults:
    """Base of the feature fault processes: faults on the outputs of multiply-accumulate layers.

    Attributes:
        include: globs on site names selecting which layer outputs (``<layer>:out`` sites of conv
            and linear layers) get faults; default all.
    """

    include: tuple[str, ...] = field(default=("*",), kw_only=True)
    kind: ClassVar[str] = "feature"

    def feature_rate(self, fan_in: int) -> float:
        """Probability that one output feature of a layer with ``fan_in`` multiplications is faulty."""
        raise NotImplementedError

    def sites(self, site_list: SiteList) -> list[tuple[Site, int]]:
        """The selected computed sites of multiply-accumulate layers, with their fan-in."""
        return [(s, fan_in(s.module)) for s in site_list if s.kind == "activation" and s.name.endswith(":out")
                and _weight_of(s.module) is not None and _matches(s.name, self.include)]

    def draw(self, shape: tuple[int, ...], fan_in: int, generator: torch.Generator | None = None,
             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Random faults for features of ``shape``: (faulty flat positions, their bias bits 0..15)."""
        n = math.prod(shape)
        hit = torch.nonzero(_uniform((n,), generator, torch.device(device)) < self.feature_rate(fan_in)).reshape(-1)
        bits = torch.randint(0, N_BIASES, (len(hit),), generator=generator, device=torch.device(device))
        return hit, bits

    def corrupt(self, x: torch.Tensor, fan_in: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x`` (``[B, ...]`` features of a layer with ``fan_in``) with fresh random faults:
        each feature is faulty with :meth:`feature_rate`, gets a uniform one of the 16 biases at
        its sample's fixed-point scale, and is clamped. Not differentiable through the faults
        (see :mod:`resil.training` for straight-through gradients).

        Example:
            >>> x = torch.full((2, 1000), 0.3)               # scale -1: step 2**-8, range +-0.5
            >>> y = IBB(p=1.0).corrupt(x, fan_in=1)       # every feature faulty
            >>> bool((y != x).all()), bool((y.abs() <= 0.5).all())
            (True, True)
        """
        flat = x.detach().reshape(x.shape[0] if x.dim() else 1, -1)
        hit, bits = self.draw(tuple(flat.shape), fan_in, generator, flat.device)
        out = flat.clone()
        if len(hit):
            scale = fixed_point_scale(flat)[hit // flat.shape[1]]
            view = out.view(-1)
            view[hit] = add_bit_bias(view[hit], bits, scale)
        return out.view(x.shape)

    def fault_set(self, model: nn.Module, x: torch.Tensor, *, sites: SiteList | None = None, seed: int = 0) -> FaultSet:
        """A fault set of :class:`BitBias` faults for :func:`resil.inject`, drawn for the inputs ``x``.

        The per-sample scales come from a clean forward pass on ``x``; faults name their batch
        element (so inject them with the same batch ``x``). A layer called several times per
        forward (a spiking network's time steps) gets independent faults per call, as
        transient faults at steps 0, 1, ...

        Example:
            >>> import resil
            >>> net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
            >>> x = torch.rand(8, 64)
            >>> fs = MiBB(p_m=1e-3).fault_set(net, x, seed=1)
            >>> with torch.no_grad(), resil.inject(net, fs):
            ...     y = net(x)
        """
        site_list = sites if sites is not None else list_sites(model, x)
        chosen = self.sites(site_list)
        if not chosen:
            raise FaultError(f"no conv or linear layer output matches include={self.include!r}")
        calls = _recorded_scales(model, x, [s for s, _ in chosen])
        rng = torch.Generator().manual_seed(int(seed))
        sets = []
        for site, m in chosen:
            n = site.numel
            if n is None:
                raise FaultError(f"site {site.name!r} has an unknown shape; list the sites with an example input")
            steps = calls[site.name]
            for t, scale in enumerate(steps):
                hit, bits = self.draw((len(scale), n), m, rng)
                if not len(hit):
                    continue
                batch = (hit // n).numpy()
                models = {int(s): BitBias(int(s)) for s in scale[batch].unique()}
                sets.append(FaultSet(site=site.name, index=(hit % n).numpy(), bit=bits.numpy(), batch=batch,
                                     model=[models[int(s)] for s in scale[batch]],
                                     step=None if len(steps) == 1 else t))
        return FaultSet.concat(sets)


def _recorded_scales(model: nn.Module, x: Any, chosen: list[Site]) -> dict[str, list[torch.Tensor]]:
    """The per-sample fixed-point scales of each computed site at every call, in a clean forward
    pass on ``x`` (read through the sites' adapters, :meth:`resil.site.Adapter.transform`)."""
    calls: dict[str, list[torch.Tensor]] = {s.name: [] for s in chosen}

    def recorder(name: str) -> Any:
        def record(values: torch.Tensor, encoding: Encoding) -> torch.Tensor:
            calls[name].append(fixed_point_scale(values).cpu())
            return values
        return record

    undos = []
    try:
        for site in chosen:
            undos.append(site.adapter.transform(site, recorder(site.name)))
        with torch.no_grad():
            model(x)
    finally:
        for undo in reversed(undos):
            undo()
    return calls


@dataclass(frozen=True)
class MiBB(FeatureFaults):
    """MAC-wise independent bit-bias (FT-NAS's feature fault model): each multiply-accumulate is
    faulty with ``p_m``, so a feature computed from ``M`` of them is faulty with
    ``1 - (1 - p_m)**M``; a faulty feature gets a :class:`BitBias`.

    Example:
        >>> print(f"{MiBB(p_m=1e-4).feature_rate(144):.5f}")
        0.01430
    """

    p_m: float = 1e-4

    def __post_init__(self) -> None:
        _check_rate("MiBB p_m", self.p_m)
        _check_include(self.include)

    def feature_rate(self, fan_in: int) -> float:
        return 1.0 - (1.0 - self.p_m) ** int(fan_in)


@dataclass(frozen=True)
class IBB(FeatureFaults):
    """Independent bit-bias: every feature is faulty with ``p`` (whatever its fan-in)."""

    p: float = 1e-3

    def __post_init__(self) -> None:
        _check_rate("IBB p", self.p)
        _check_include(self.include)

    def feature_rate(self, fan_in: int) -> float:
        return float(self.p)


@dataclass(frozen=True)
class AdSAF:
    """adSAF (FT-NAS's weight fault model): every weight of a conv or linear layer is a
    differential pair of RRAM cells, each cell faulty with ``p``; a faulty cell is SAF1 with
    probability ``saf1`` (16.3%) and SAF0 otherwise (83.7%).

    Attributes:
        p: per-cell fault probability (FT-NAS: 0.08).
        saf1: share of faulty cells stuck at 1.
        include: globs on weight site names (default all weights of 2 or more dimensions).

    Example:
        >>> w = torch.linspace(-1, 1, 10_000)
        >>> y = AdSAF(p=0.08).corrupt(w, generator=torch.Generator().manual_seed(0))
        >>> float(y.abs().max()) <= 1.0, 0.05 < float((y != w).float().mean()) < 0.2
        (True, True)
    """

    p: float = 0.08
    saf1: float = 0.163
    include: tuple[str, ...] = ("*",)
    kind: ClassVar[str] = "weight"

    def __post_init__(self) -> None:
        _check_rate("AdSAF p", self.p)
        _check_rate("AdSAF saf1", self.saf1)
        _check_include(self.include)

    def sites(self, site_list: SiteList) -> list[Site]:
        """The selected weight sites (kind ``weight``, 2 or more dimensions)."""
        return [s for s in site_list if s.kind == "weight" and s.shape is not None and len(s.shape) >= 2 and _matches(s.name, self.include)]

    def cell_states(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu") -> torch.Tensor:
        """Random cell faults (int64 bits :data:`POS_SAF0` ... :data:`NEG_SAF1`, 0 = healthy) for
        weights of ``shape``: each of the two cells of a weight independently."""
        device = torch.device(device)
        u = _uniform((2, *shape), generator, device)
        faulty = u < self.p
        stuck1 = u < self.p * self.saf1  # given faulty, SAF1 with probability saf1
        pos = torch.where(stuck1[0], POS_SAF1, torch.where(faulty[0], POS_SAF0, 0))
        neg = torch.where(stuck1[1], NEG_SAF1, torch.where(faulty[1], NEG_SAF0, 0))
        return (pos | neg).to(torch.int64)

    def corrupt(self, w: torch.Tensor, generator: torch.Generator | None = None,
                max_abs: torch.Tensor | float | None = None) -> torch.Tensor:
        """``w`` with fresh random cell faults; ``max_abs`` defaults to ``max|w|``."""
        w = w.detach()
        full = w.abs().max() if max_abs is None else max_abs
        return stuck_cells(w, self.cell_states(tuple(w.shape), generator, w.device), full)

    def fault_set(self, model: nn.Module, *, sites: SiteList | None = None, seed: int = 0) -> FaultSet:
        """A fault set of :class:`DifferentialStuckAt` faults (one random chip) for :func:`resil.inject`.

        Only stored (live) elements get faults; a float weight's full cell is ``max|W|`` of its
        live elements, an integer weight's is its largest code.

        Example:
            >>> import resil
            >>> net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
            >>> fs = AdSAF(p=0.08).fault_set(net, seed=0)
            >>> with torch.no_grad(), resil.inject(net, fs):
            ...     y = net(torch.rand(4, 64))
        """
        site_list = sites if sites is not None else list_sites(model)
        chosen = self.sites(site_list)
        if not chosen:
            raise FaultError(f"no weight site matches include={self.include!r}")
        rng = torch.Generator().manual_seed(int(seed))
        sets = []
        for site in chosen:
            elements = site.elements()
            cells = self.cell_states((len(elements),), rng).numpy()
            hit = np.flatnonzero(cells)
            if not len(hit):
                continue
            if isinstance(site.encoding, IntEncoding):
                model_ = DifferentialStuckAt()
            else:
                values = site.encoding.decode(site.codes()[torch.from_numpy(elements)])
                model_ = DifferentialStuckAt(float(values.abs().max()))
            sets.append(FaultSet(site=site.name, index=elements[hit], mask=cells[hit], model=model_))
        return FaultSet.concat(sets)


FaultProcess = FeatureFaults | AdSAF
"""A random fault process of this module (:class:`MiBB`, :class:`IBB` or :class:`AdSAF`)."""


def processes(faults: FaultProcess | Sequence[FaultProcess]) -> tuple[FaultProcess, ...]:
    """``faults`` as a tuple of fault processes, checked."""
    items = (faults,) if isinstance(faults, (FeatureFaults, AdSAF)) else tuple(faults)
    if not items or not all(isinstance(f, (FeatureFaults, AdSAF)) for f in items):
        raise FaultError(f"expected MiBB, IBB or AdSAF fault processes, got {faults!r}")
    return items



def process_spec(proc: FaultProcess) -> str:
    """A fault process as its constructor call, without the default ``include``.

    Example:
        >>> process_spec(MiBB(p_m=1e-4)), process_spec(AdSAF(p=0.1, include=("fc*",)))
        ('MiBB(p_m=0.0001)', "AdSAF(p=0.1, saf1=0.163, include=('fc*',))")
    """
    params = ", ".join(f"{k}={v!r}" for k, v in asdict(proc).items() if not (k == "include" and v == ("*",)))
    return f"{type(proc).__name__}({params})"


__all__ = [
    "IBB",
    "AdSAF",
    "FaultProcess",
    "FeatureFaults",
    "MiBB",
    "fan_in",
    "process_spec",
    "processes",
]
