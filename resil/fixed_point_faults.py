"""Fixed-point and crossbar fault models of FT-NAS (Ning et al., "FTT-NAS", arXiv 2003.10375),
per element and registered, usable in any :func:`resil.inject` block or campaign:
:class:`BitBias` adds the bias of an 8-bit dynamic fixed-point bit to a value and clamps it;
:class:`DifferentialStuckAt` sticks the cells of a weight stored as a differential pair of RRAM
cells. The random fault processes that draw them for hardening (MiBB, iBB, adSAF) are in
:mod:`resil.training.ftnas`.

**8-bit dynamic fixed point** (FT-NAS quantizes every tensor this way): a tensor ``x`` has the
scale ``s = ceil(log2 max|x|)``, the step ``2**(s - 7)`` and the range ``[-2**s, 2**s]``. A
bit-bias fault on a feature adds ``sign * 2**k * step`` (sign +-1 and ``k`` in ``0..7``: 16
values) and clamps the result to ``+-2**s``. The bias a :class:`BitBias` fault adds is named by
its bit ``b`` in ``0..15``: ``k = b % 8``, negative when ``b >= 8``.

**adSAF** (RRAM crossbars): a weight ``w`` is the difference of two cells, ``w = g+ - g-``, the
positive part in ``g+`` and the negative part in ``g-``. A cell stuck at 1 (SAF1) conducts
fully (``max|W|`` of its tensor), a cell stuck at 0 (SAF0) contributes nothing; the result is
clamped to ``+-max|W|``. A :class:`DifferentialStuckAt` fault names its cells by bits:
bit 0 = positive cell SAF0, 1 = positive cell SAF1, 2 = negative cell SAF0, 3 = negative cell
SAF1 (SAF1 wins if a cell names both). On integer (quantized) weights the full cell is the
largest code, ``qmax`` (127 for int8), so faults stay on the integer grid.

Example:
    >>> import torch, resil
    >>> from resil.fixed_point_faults import BitBias, DifferentialStuckAt
    >>> enc = resil.FLOAT32
    >>> enc.decode(BitBias(scale=0).apply(enc.encode(torch.tensor([0.25])), torch.tensor([1 << 3]), enc))
    tensor([0.3125])
    >>> enc.decode(DifferentialStuckAt(max_abs=1.0).apply(enc.encode(torch.tensor([-0.25])), torch.tensor([0b0010]), enc))
    tensor([0.7500])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .encodings import Encoding, FloatEncoding, IntEncoding, SpikeEncoding
from .errors import FaultError
from .fault_models import FaultModel, register_fault_model

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
            return (f"it names {self.named} by bits 0..{self.choices - 1} and needs an encoding of at least {self.choices} bits, "
                    f"not {encoding.name}")
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


__all__ = [
    "FRACTION_BITS",
    "NEG_SAF0",
    "NEG_SAF1",
    "N_BIASES",
    "POS_SAF0",
    "POS_SAF1",
    "BitBias",
    "DifferentialStuckAt",
    "NamedBits",
    "add_bit_bias",
    "bias_values",
    "fixed_point_scale",
    "stuck_cells",
]
