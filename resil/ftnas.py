"""FT-NAS fault models (Ning et al., "FTT-NAS", arXiv 2003.10375): MiBB / iBB feature faults
and adSAF stuck-at weight faults.

Two layers, as everywhere in resil:

- **Fault models** (per element, registered, usable in any :func:`resil.inject` block or
  campaign): :class:`BitBias` adds the bias of an 8-bit dynamic fixed-point bit to a value and
  clamps it; :class:`DifferentialStuckAt` sticks the cells of a weight stored as a differential
  pair of RRAM cells.
- **Fault processes** (which elements are faulty, drawn at random): :class:`MiBB` (per-MAC rate
  ``p_m`` turned into a per-feature rate ``1 - (1 - p_m)**M``), :class:`IBB` (per-feature rate
  directly) and :class:`AdSAF` (each cell faulty with ``p``, 16.3% of faulty cells SAF1). Each
  corrupts tensors directly (:meth:`MiBB.corrupt`, :meth:`AdSAF.corrupt`; used by
  :mod:`resil.training` to resample faults on every forward pass) or draws a
  :class:`~resil.FaultSet` of the fault models above for :func:`resil.inject`
  (:meth:`MiBB.fault_set`, :meth:`AdSAF.fault_set`).

**8-bit dynamic fixed point** (FT-NAS quantizes every tensor this way): a tensor ``x`` has the
scale ``s = ceil(log2 max|x|)``, the step ``2**(s - 7)`` and the range ``[-2**s, 2**s]``. A
MiBB/iBB fault on a feature adds ``sign * 2**k * step`` (sign +-1 and ``k`` in ``0..7``, uniform:
16 values) and clamps the result to ``+-2**s``. resil computes ``s`` **per sample** (the maximum
over one sample's feature map), so a sample's faults do not depend on the rest of its batch; the
features themselves are not quantized (quantize the model, e.g. with Brevitas, for that).
The bias a :class:`BitBias` fault adds is named by its bit ``b`` in ``0..15``: ``k = b % 8``,
negative when ``b >= 8``.

**adSAF** (RRAM crossbars): a weight ``w`` is the difference of two cells, ``w = g+ - g-``, the
positive part in ``g+`` and the negative part in ``g-``. A cell stuck at 1 (SAF1) conducts
fully (``max|W|`` of its tensor), a cell stuck at 0 (SAF0) contributes nothing; the result is
clamped to ``+-max|W|``. A :class:`DifferentialStuckAt` fault names its cells by bits:
bit 0 = positive cell SAF0, 1 = positive cell SAF1, 2 = negative cell SAF0, 3 = negative cell
SAF1 (SAF1 wins if a cell names both). On integer (quantized) weights the full cell is the
largest code, ``qmax`` (127 for int8), so faults stay on the integer grid.

Example:
    >>> import torch, resil
    >>> from resil.ftnas import BitBias, DifferentialStuckAt, MiBB
    >>> enc = resil.FLOAT32
    >>> enc.decode(BitBias(scale=0).apply(enc.encode(torch.tensor([0.25])), torch.tensor([1 << 3]), enc))
    tensor([0.3125])
    >>> enc.decode(DifferentialStuckAt(max_abs=1.0).apply(enc.encode(torch.tensor([-0.25])), torch.tensor([0b0010]), enc))
    tensor([0.7500])
    >>> print(f"{MiBB(p_m=1e-4).feature_rate(576):.4f}")     # a 3x3 conv with 64 input channels
    0.0560
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .encodings import Encoding, FloatEncoding, IntEncoding, SpikeEncoding
from .errors import FaultError
from .fault_models import FaultModel, register_fault_model
from .faults import FaultSet
from .hooks import forward_hooks
from .site import Site, SiteList

#: fraction bits of FT-NAS's 8-bit dynamic fixed point: step = 2**(scale - 7)
FRACTION_BITS = 7
#: number of distinct MiBB/iBB biases: sign (2) x power k in 0..7 (8)
N_BIASES = 2 * (FRACTION_BITS + 1)
#: cell bits of an adSAF fault
POS_SAF0, POS_SAF1, NEG_SAF0, NEG_SAF1 = 1, 2, 4, 8


# -- value-level functions (shared by the fault models, the processes and the training hooks) -----

def fixed_point_scale(x: torch.Tensor, per_sample: bool = True) -> torch.Tensor:
    """The 8-bit dynamic fixed-point scale ``ceil(log2 max|x|)`` (int64), exactly.

    Args:
        x: a tensor; with ``per_sample`` its first dimension is the batch.
        per_sample: one scale per sample (shape ``[B]``), else one for the whole tensor (``[]``).

    A tensor of zeros gets the scale of the smallest normal float32 (-126).

    Example:
        >>> fixed_point_scale(torch.tensor([[0.5, -3.0], [1.0, 0.0]])).tolist()
        [2, 0]
    """
    a = x.detach().abs()
    m = a.reshape(a.shape[0], -1).amax(1) if per_sample and a.dim() > 0 else a.amax()
    m = m.to(torch.float32).clamp_min(torch.finfo(torch.float32).tiny)
    mantissa, exponent = torch.frexp(m)  # m = mantissa * 2**exponent, mantissa in [0.5, 1)
    return (exponent - (mantissa == 0.5).to(exponent.dtype)).to(torch.int64)


def bias_values(bias_index: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The bias of bit ``b`` (0..15): ``+-2**(b % 8) * 2**(scale - 7)``, negative when ``b >= 8``.

    Example:
        >>> bias_values(torch.tensor([0, 7, 8, 15]), torch.tensor(0)).tolist()
        [0.0078125, 1.0, -0.0078125, -1.0]
    """
    b = bias_index.to(torch.int64)
    sign = torch.where(b >= N_BIASES // 2, -1.0, 1.0).to(dtype)
    return torch.ldexp(sign, (b % (N_BIASES // 2) + scale.to(torch.int64) - FRACTION_BITS).to(dtype))


def add_bit_bias(values: torch.Tensor, bias_index: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``clamp(values + bias(bias_index, scale), -2**scale, 2**scale)`` elementwise (broadcasting)."""
    bound = torch.ldexp(torch.ones((), dtype=values.dtype, device=values.device), scale.to(values.dtype))
    return torch.maximum(torch.minimum(values + bias_values(bias_index, scale, values.dtype), bound), -bound)


def stuck_cells(w: torch.Tensor, cells: torch.Tensor, max_abs: torch.Tensor | float) -> torch.Tensor:
    """Weights ``w`` stored as differential cell pairs, with the cell faults ``cells`` (bits
    :data:`POS_SAF0`, :data:`POS_SAF1`, :data:`NEG_SAF0`, :data:`NEG_SAF1`; 0 = healthy).

    Example:
        >>> stuck_cells(torch.tensor([0.5, 0.5, -0.25, -0.25]), torch.tensor([1, 8, 4, 2]), 1.0).tolist()
        [0.0, -0.5, 0.0, 0.75]
    """
    full = torch.as_tensor(max_abs, dtype=w.dtype, device=w.device)
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    c = cells.to(torch.int64)
    pos, neg = w.clamp_min(0), (-w).clamp_min(0)
    pos = torch.where((c & POS_SAF1) != 0, full, torch.where((c & POS_SAF0) != 0, zero, pos))
    neg = torch.where((c & NEG_SAF1) != 0, full, torch.where((c & NEG_SAF0) != 0, zero, neg))
    return torch.maximum(torch.minimum(pos - neg, full), -full)


# -- fault models (per element, registered) --------------------------------------------------------

class NamedBits(FaultModel):
    """A fault model whose bits name one of ``choices`` faults (a bias, a stuck cell) rather than
    stored bits: bits past the choices are refused, and so are encodings narrower than them."""

    choices: ClassVar[int]
    named: ClassVar[str]

    def masks(self, bits: np.ndarray) -> np.ndarray:
        if len(bits) and int(bits.max()) >= self.choices:
            raise FaultError(f"{type(self).__name__} names {self.named} by bits 0..{self.choices - 1}, got bit {int(bits.max())}")
        return super().masks(bits)

    def mask(self, bits: Sequence[int]) -> int:
        self.masks(np.asarray(list(bits), dtype=np.int64))
        return super().mask(bits)

    def not_applicable(self, encoding: Encoding, kind: str) -> str | None:
        if isinstance(encoding, SpikeEncoding) or encoding.bits < self.choices:
            return f"it names {self.named} by bits 0..{self.choices - 1} and needs an encoding of at least {self.choices} bits, not {encoding.name}"
        return None


@register_fault_model("bit_bias")
@dataclass(frozen=True)
class BitBias(NamedBits):
    """MiBB/iBB feature fault: add the bias of a dynamic fixed-point bit, then clamp.

    The fault's bit ``b`` (0..15) names the bias ``+-2**(b % 8) * 2**(scale - 7)``, negative when
    ``b >= 8``; the result is clamped to ``+-2**scale``. Several bits add their biases. Needs an
    encoding of at least 16 bits (float32/16, bfloat16, int16 ...).

    Args:
        scale: the feature tensor's fixed-point scale, ``ceil(log2 max|x|)``
            (see :func:`fixed_point_scale`).
    """

    choices: ClassVar[int] = N_BIASES
    named: ClassVar[str] = "its bias"
    scale: int

    def __post_init__(self) -> None:
        if not isinstance(self.scale, (int, np.integer)) or isinstance(self.scale, bool):
            raise FaultError(f"BitBias needs an integer scale (ceil(log2 max|x|)), not {self.scale!r}")

    def apply(self, codes: torch.Tensor, mask: torch.Tensor, encoding: Encoding) -> torch.Tensor:
        if ((mask >> N_BIASES) != 0).any() or (mask < 0).any():
            raise FaultError(f"BitBias names its bias by bits 0..{N_BIASES - 1}, got mask {int(mask.max())}")
        values = encoding.decode(codes)
        scale = torch.tensor(int(self.scale), device=values.device)
        total = torch.zeros_like(values)
        for b in range(N_BIASES):
            hit = ((mask >> b) & 1).to(torch.bool)
            if hit.any():
                total = total + torch.where(hit, bias_values(torch.tensor(b, device=values.device), scale, values.dtype), 0.0)
        bound = 2.0 ** int(self.scale)
        return encoding.encode((values + total).clamp(-bound, bound))


@register_fault_model("adsaf")
@dataclass(frozen=True)
class DifferentialStuckAt(NamedBits):
    """adSAF weight fault: stuck cells of a weight stored as a differential pair of RRAM cells.

    Bits name the faulty cells: 0 = positive cell SAF0, 1 = positive cell SAF1, 2 = negative cell
    SAF0, 3 = negative cell SAF1 (see :func:`stuck_cells`).

    Args:
        max_abs: the conductance of a full cell, ``max|W|`` of the weight tensor. Required on
            float sites; on integer sites the default (None) is the largest code ``qmax``.
    """

    choices: ClassVar[int] = 4
    named: ClassVar[str] = "cells"
    max_abs: float | None = None

    def __post_init__(self) -> None:
        if self.max_abs is not None and not (isinstance(self.max_abs, (int, float)) and math.isfinite(self.max_abs) and self.max_abs >= 0):
            raise FaultError(f"DifferentialStuckAt needs a finite max_abs >= 0, not {self.max_abs!r}")

    def not_applicable(self, encoding: Encoding, kind: str) -> str | None:
        reason = super().not_applicable(encoding, kind)
        if reason:
            return reason
        if isinstance(encoding, FloatEncoding) and self.max_abs is None:
            return "a float weight needs max_abs (max|W| of its tensor): DifferentialStuckAt(max_abs=...)"
        if isinstance(encoding, IntEncoding) and not encoding.signed:
            return "a differential pair stores signed weights; the encoding is unsigned"
        return None

    def apply(self, codes: torch.Tensor, mask: torch.Tensor, encoding: Encoding) -> torch.Tensor:
        values = encoding.decode(codes)
        if self.max_abs is not None:
            full: torch.Tensor | float = float(self.max_abs)
        elif isinstance(encoding, IntEncoding):
            full = encoding.decode(encoding.from_int(torch.full_like(codes, encoding.qmax)))
        else:
            raise FaultError("DifferentialStuckAt on a float weight needs max_abs")
        return encoding.encode(stuck_cells(values, mask, full))


# -- fault processes ---------------------------------------------------------------------------------

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
    for name in ("weight_orig", "weight"):  # torch.nn.utils.prune keeps the parameter as weight_orig
        w = getattr(module, name, None)
        if isinstance(w, torch.Tensor) and w.dim() >= 2:
            return w
    return None


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
        return [(s, fan_in(s.module)) for s in site_list
                if s.kind == "activation" and s.name.endswith(":out") and _weight_of(s.module) is not None and _matches(s.name, self.include)]

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
        from .discovery import sites as list_sites

        site_list = sites if sites is not None else list_sites(model, x)
        chosen = self.sites(site_list)
        if not chosen:
            raise FaultError(f"no conv or linear layer output matches include={self.include!r}")
        calls: dict[nn.Module, list[torch.Tensor]] = {s.module: [] for s, _ in chosen}

        def record(mod: nn.Module, args: Any, out: Any) -> None:
            calls[mod].append(fixed_point_scale(_values(out)).cpu())

        with forward_hooks((m, record) for m in calls), torch.no_grad():
            model(x)
        rng = torch.Generator().manual_seed(int(seed))
        sets = []
        for site, m in chosen:
            n = site.numel
            if n is None:
                raise FaultError(f"site {site.name!r} has an unknown shape; list the sites with an example input")
            steps = calls[site.module]
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


def _values(out: Any) -> torch.Tensor:
    """The tensor of a module output (a tensor, or a quantized tensor with ``.value``)."""
    if isinstance(out, torch.Tensor):
        return out
    value = getattr(out, "value", None)
    if isinstance(value, torch.Tensor):
        return value
    raise FaultError(f"a layer returned {type(out).__name__}, not a tensor")


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
        from .discovery import sites as list_sites

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



__all__ = [
    "IBB",
    "AdSAF",
    "BitBias",
    "DifferentialStuckAt",
    "FaultProcess",
    "FeatureFaults",
    "MiBB",
    "add_bit_bias",
    "bias_values",
    "fan_in",
    "fixed_point_scale",
    "processes",
    "stuck_cells",
]
