"""Fault models: pure, vectorized functions on integer codes.

A fault model receives the codes of the faulted elements (int64), one bit mask per element
(the bits the fault names) and the site's :class:`~resil.encodings.Encoding`, and returns the
faulty codes. Because it sees only codes, every model works on every encoding.

Example:
    >>> import torch
    >>> from resil.encodings import IntEncoding
    >>> from resil.fault_models import BitFlip, StuckAt
    >>> enc = IntEncoding(8)
    >>> BitFlip().apply(torch.tensor([5]), torch.tensor([0b10]), enc)
    tensor([7])
    >>> StuckAt(0).apply(torch.tensor([5]), torch.tensor([0b100]), enc)
    tensor([1])

Add your own with a frozen dataclass registered by name::

    @resil.register_fault_model("invert")
    @dataclass(frozen=True)
    class Invert(resil.FaultModel):
        uses_bits = False
        deterministic = True     # a pure function of each stored code
        def apply(self, codes, mask, encoding):
            return codes ^ ((1 << encoding.bits) - 1)

Campaigns know a model only by its declared traits (:attr:`FaultModel.deterministic`,
:attr:`FaultModel.can_leave_unchanged`, :attr:`FaultModel.stuck_value`, ``uses_bits``,
``span``), never by its class: a model of your own that declares them is treated as a built-in one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np
import torch

from .encodings import Encoding
from .errors import FaultError
from .registry import Registry

_REGISTRY: Registry[FaultModel] = Registry("fault model")
M = TypeVar("M", bound="type[FaultModel]")


def register_fault_model(name: str) -> Callable[[M], M]:
    """Class decorator that registers a fault model under ``name`` (used by :meth:`FaultModel.spec`)."""
    return _REGISTRY.register(name)


def fault_model_names() -> list[str]:
    """Names of every registered fault model."""
    return _REGISTRY.names()


class FaultModel:
    """Base class of fault models (subclasses are frozen dataclasses)."""

    registered_name: ClassVar[str] = ""
    #: whether the model acts on the bits a fault names (a fault then needs at least one bit)
    uses_bits: ClassVar[bool] = True
    #: whether the model is a pure XOR with the mask (lets injection merge duplicates by XOR)
    is_xor: ClassVar[bool] = False
    #: whether each faulty code is a pure function of that element's stored code and mask (no
    #: draws, no user function): campaigns may then apply it to stored codes ahead of a forward
    #: pass (masking scenarios that change nothing, recomputing touched channels alone)
    deterministic: ClassVar[bool] = False
    #: whether a fault can leave a stored code as it is (a stuck-at on a bit already at its value,
    #: zeroing a zero); with :attr:`deterministic`, campaigns mask such scenarios without simulating them
    can_leave_unchanged: ClassVar[bool] = False

    @property
    def stuck_value(self) -> int | None:
        """The value (0 or 1) the model forces every named bit to, or None: with a stuck value,
        data-aware sampling (``[sampler] data_aware``) leaves out the bits already holding it."""
        return None

    @property
    def span(self) -> int:
        """How many bits from a fault's bit the model touches (a burst's length; 1 otherwise)."""
        return 1

    def apply(self, codes: torch.Tensor, mask: torch.Tensor, encoding: Encoding) -> torch.Tensor:
        """Return the faulty codes for ``codes`` (int64) given per-element bit ``mask``."""
        raise NotImplementedError

    def mask(self, bits: Sequence[int]) -> int:
        """The bit mask a fault naming ``bits`` covers."""
        m = 0
        for b in bits:
            if not 0 <= int(b) < 64:
                raise FaultError(f"bit {b} is outside any encoding (bits are 0..63, 0 = least significant)")
            m |= 1 << int(b)
        return m - (1 << 64) if m >= 1 << 63 else m

    def masks(self, bits: np.ndarray) -> np.ndarray:
        """Vectorized :meth:`mask` for one bit per fault (``bits`` already checked to be 0..63)."""
        return np.left_shift(np.int64(1), bits.astype(np.int64))

    def not_applicable(self, encoding: Encoding, kind: str) -> str | None:
        """A reason why this model cannot act on a site of this encoding and kind, or None."""
        return None

    def spec(self) -> str:
        """A string that :func:`fault_model_from_spec` turns back into an equal model."""
        return _REGISTRY.spec(self)


def fault_model_from_spec(spec: str) -> FaultModel:
    """Rebuild a fault model from :meth:`FaultModel.spec` output, e.g. ``'stuck_at:{"value": 1}'``."""
    return _REGISTRY.from_spec(spec)


@register_fault_model("bitflip")
@dataclass(frozen=True)
class BitFlip(FaultModel):
    """Invert the named bits (one or several)."""

    is_xor: ClassVar[bool] = True
    deterministic: ClassVar[bool] = True

    def apply(self, codes: torch.Tensor, mask: torch.Tensor, encoding: Encoding) -> torch.Tensor:
        return codes ^ mask


@register_fault_model("burst")
@dataclass(frozen=True)
class Burst(BitFlip):
    """Invert ``length`` adjacent bits starting at the fault's bit (towards the most significant)."""

    length: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.length, bool) or not isinstance(self.length, (int, np.integer)) or not 1 <= self.length <= 64:
            raise FaultError(f"a burst needs an integer length in 1..64, not {self.length!r}")

    @property
    def span(self) -> int:
        return self.length

    def mask(self, bits: Sequence[int]) -> int:
        if len(bits) != 1:
            raise FaultError(f"a burst starts at exactly one bit, got {list(bits)}")
        return int(self.masks(np.array(bits))[0])

    def masks(self, bits: np.ndarray) -> np.ndarray:
        bits = bits.astype(np.int64)
        if (bits + self.length > 64).any():
            raise FaultError(f"a burst of {self.length} bits from bit {int(bits.max())} runs past bit 63")
        run = np.int64((1 << self.length) - 1) if self.length < 64 else np.int64(-1)
        return np.left_shift(run, bits)


@register_fault_model("stuck_at")
@dataclass(frozen=True)
class StuckAt(FaultModel):
    """Force the named bits to ``value`` (0 or 1)."""

    value: int
    deterministic: ClassVar[bool] = True
    can_leave_unchanged: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or self.value not in (0, 1):
            raise FaultError(f"StuckAt takes 0 or 1, not {self.value!r}")

    @property
    def stuck_value(self) -> int:
        return self.value

    def apply(self, codes: torch.Tensor, mask: torch.Tensor, encoding: Encoding) -> torch.Tensor:
        return codes | mask if self.value else codes & ~mask


@register_fault_model("zero")
@dataclass(frozen=True)
class Zero(FaultModel):
    """Replace the value by the encoding's zero (all bits of the word)."""

    uses_bits: ClassVar[bool] = False
    deterministic: ClassVar[bool] = True
    can_leave_unchanged: ClassVar[bool] = True

    def apply(self, codes: torch.Tensor, mask: torch.Tensor, encoding: Encoding) -> torch.Tensor:
        zero = encoding.encode(torch.zeros(codes.shape[-1:], device=codes.device))
        return zero.expand_as(codes).clone()


@register_fault_model("random_value")
@dataclass(frozen=True)
class RandomValue(FaultModel):
    """Replace the word by a code drawn uniformly over the encoding's codes.

    The draw is seeded: the same fault set gives the same values on every forward pass.
    """

    seed: int = 0
    uses_bits: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise FaultError(f"RandomValue needs a non-negative integer seed, not {self.seed!r}")

    def apply(self, codes: torch.Tensor, mask: torch.Tensor, encoding: Encoding) -> torch.Tensor:
        rng = np.random.default_rng(self.seed)  # uses every bit of the seed (torch's CPU generator keeps 32)
        if encoding.bits >= 64:
            drawn = rng.integers(-(1 << 63), (1 << 63) - 1, size=tuple(codes.shape), dtype=np.int64, endpoint=True)
        else:
            drawn = rng.integers(0, 1 << encoding.bits, size=tuple(codes.shape), dtype=np.int64)
        return torch.from_numpy(drawn).to(codes.device)


@dataclass(frozen=True)
class ValueFunction(FaultModel):
    """Apply a user function to the decoded values: ``new_values = fn(values)``.

    Example:
        >>> import torch
        >>> from resil.encodings import FLOAT32
        >>> neg = ValueFunction(lambda v: -v)
        >>> FLOAT32.decode(neg.apply(FLOAT32.encode(torch.tensor([2.0])), torch.tensor([0]), FLOAT32))
        tensor([-2.])
    """

    fn: Callable[[torch.Tensor], torch.Tensor]
    uses_bits: ClassVar[bool] = False

    def apply(self, codes: torch.Tensor, mask: torch.Tensor, encoding: Encoding) -> torch.Tensor:
        return encoding.encode(self.fn(encoding.decode(codes)))
