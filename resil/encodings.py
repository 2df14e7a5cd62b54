"""Encodings: how a site's values are stored as bits.

An encoding converts values to unsigned integer *codes* (the stored bit pattern, bit 0 = least
significant) and back, exactly. Fault models act on codes only, so every fault model works on
every encoding.

Codes are ``torch.int64`` tensors. For widths below 64 they hold the unsigned pattern
``0 <= code < 2**bits``; for 64-bit encodings they hold the raw pattern as a signed int64.

Example:
    >>> import torch
    >>> from resil.encodings import FLOAT32, IntEncoding
    >>> hex(int(FLOAT32.encode(torch.tensor([1.0]))[0]))
    '0x3f800000'
    >>> IntEncoding(4, signed=True).decode(torch.tensor([0b1111]))
    tensor([-1.], dtype=torch.float64)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import FaultError


class Encoding:
    """Base class: a bit width and an exact value <-> code conversion."""

    bits: int
    name: str

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """Convert values to int64 codes."""
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Convert int64 codes to values."""
        raise NotImplementedError

    @property
    def zero_code(self) -> int:
        """The code that represents the value 0."""
        return int(self.encode(torch.zeros(1))[0])

    def at(self, flat_index: torch.Tensor, shape: tuple[int, ...]) -> Encoding:
        """The encoding of the elements at ``flat_index`` (per-channel encodings narrow here)."""
        return self


@dataclass(frozen=True)
class FloatEncoding(Encoding):
    """IEEE floating point storage bits (float64, float32, float16, bfloat16)."""

    name: str
    dtype: torch.dtype
    int_dtype: torch.dtype
    bits: int

    def view(self, t: torch.Tensor) -> torch.Tensor:
        """The tensor's storage reinterpreted as signed integers of the same width (no copy)."""
        if t.dtype != self.dtype:
            raise FaultError(f"tensor of dtype {t.dtype} does not have the {self.name} encoding")
        return t.view(self.int_dtype)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        return to_unsigned(values.to(self.dtype).contiguous().view(self.int_dtype), self.bits)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return from_unsigned(codes, self.int_dtype, self.bits).view(self.dtype)


FLOAT64 = FloatEncoding("float64", torch.float64, torch.int64, 64)
FLOAT32 = FloatEncoding("float32", torch.float32, torch.int32, 32)
FLOAT16 = FloatEncoding("float16", torch.float16, torch.int16, 16)
BFLOAT16 = FloatEncoding("bfloat16", torch.bfloat16, torch.int16, 16)
FLOAT_ENCODINGS = {e.dtype: e for e in (FLOAT64, FLOAT32, FLOAT16, BFLOAT16)}


def to_unsigned(raw: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed storage integers -> int64 codes holding the unsigned ``bits``-wide pattern."""
    codes = raw.to(torch.int64)
    return codes if bits >= 64 else codes & ((1 << bits) - 1)


def from_unsigned(codes: torch.Tensor, int_dtype: torch.dtype, bits: int) -> torch.Tensor:
    """int64 codes -> signed storage integers of ``int_dtype`` (two's complement wrap)."""
    if bits < 64:
        codes = torch.where(codes >= (1 << (bits - 1)), codes - (1 << bits), codes)
    return codes.to(int_dtype)


@dataclass(frozen=True)
class IntEncoding(Encoding):
    """N-bit integer (1 <= N <= 32), signed (two's complement) or unsigned, with an affine map.

    ``value = (q - zero_point) * scale`` where ``q`` is the integer the code represents.
    ``scale`` and ``zero_point`` may be tensors broadcastable against the site's shape
    (per-channel quantization); :meth:`at` narrows them to given elements.
    """

    bits: int
    signed: bool = True
    scale: float | torch.Tensor = 1.0
    zero_point: int | torch.Tensor = 0
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 32:
            raise FaultError(f"integer encodings have 1 to 32 bits, not {self.bits}")
        if not self.name:
            object.__setattr__(self, "name", f"{'int' if self.signed else 'uint'}{self.bits}")

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def to_int(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes -> the integers they represent (two's complement if signed)."""
        codes = codes.to(torch.int64)
        if self.signed:
            return torch.where(codes >= (1 << (self.bits - 1)), codes - (1 << self.bits), codes)
        return codes

    def from_int(self, q: torch.Tensor) -> torch.Tensor:
        """Integers in [qmin, qmax] -> codes."""
        return q.to(torch.int64) & ((1 << self.bits) - 1)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """Values -> codes of the nearest integer in ``[qmin, qmax]`` (computed in float64)."""
        v = values.to(torch.float64)
        q = torch.round(v / _f64(self.scale, v)) + _f64(self.zero_point, v)
        return self.from_int(q.clamp(self.qmin, self.qmax).to(torch.int64))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes -> ``(q - zero_point) * scale`` as float64 (exact for every code)."""
        q = self.to_int(codes).to(torch.float64)
        return (q - _f64(self.zero_point, q)) * _f64(self.scale, q)

    def at(self, flat_index: torch.Tensor, shape: tuple[int, ...]) -> IntEncoding:
        if not isinstance(self.scale, torch.Tensor) and not isinstance(self.zero_point, torch.Tensor):
            return self

        def pick(v: torch.Tensor) -> torch.Tensor:
            return v.expand(shape).reshape(-1)[flat_index.to(v.device)]

        scale = pick(self.scale) if isinstance(self.scale, torch.Tensor) else self.scale
        zero_point = pick(self.zero_point) if isinstance(self.zero_point, torch.Tensor) else self.zero_point
        return IntEncoding(self.bits, self.signed, scale, zero_point, self.name)


@dataclass(frozen=True)
class SpikeEncoding(Encoding):
    """A binary spike: code 1 = a spike of value ``amplitude`` (snnTorch's graded_spikes_factor), 0 = none.

    Example:
        >>> SpikeEncoding().decode(torch.tensor([0, 1]))
        tensor([0., 1.])
    """

    amplitude: float | torch.Tensor = 1.0
    bits: int = 1
    name: str = "spike"

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        return (values != 0).to(torch.int64)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes & 1).to(torch.float32) * torch.as_tensor(self.amplitude, dtype=torch.float32, device=codes.device)


def _f64(v: float | int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float64, device=like.device)


def encoding_of(t: torch.Tensor) -> Encoding | None:
    """The storage encoding of a plain tensor: IEEE floats and integer dtypes up to 32 bits."""
    if t.dtype in FLOAT_ENCODINGS:
        return FLOAT_ENCODINGS[t.dtype]
    ints = {torch.int8: (8, True), torch.uint8: (8, False), torch.int16: (16, True), torch.int32: (32, True)}
    if t.dtype in ints:
        bits, signed = ints[t.dtype]
        return IntEncoding(bits, signed)
    return None
