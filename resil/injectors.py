"""Building blocks adapters use to inject: corrupt a stored tensor, corrupt a module's output.

Stored tensors are corrupted in place and restored by writing back the saved codes of the
faulted elements only. Computed tensors are corrupted by a forward hook applying a
precomputed plan.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .encodings import Encoding, FloatEncoding, encoding_of, from_unsigned, to_unsigned
from .errors import FaultError
from .plan import ElementPlan
from .site import Site, SitePlan, Undo

ELEMENT_BITS = 40
ELEMENT_MASK = (1 << ELEMENT_BITS) - 1


def int_view(t: torch.Tensor, encoding: Encoding) -> torch.Tensor:
    """The storage of ``t`` as signed integers of the encoding's width (no copy)."""
    if isinstance(encoding, FloatEncoding):
        return encoding.view(t.detach())
    if t.dtype.is_floating_point:
        raise FaultError(f"a {t.dtype} tensor does not store {encoding.name} codes; the adapter must inject through its own hook")
    return t.detach()


def corrupt_stored(t: torch.Tensor, encoding: Encoding, plan: ElementPlan, shape: tuple[int, ...]) -> Undo:
    """Apply ``plan`` (keys = flat element indices) to ``t`` in place; return the restore function."""
    raw = int_view(t, encoding)
    keys = torch.from_numpy(plan.keys).to(t.device)
    index: torch.Tensor | tuple[torch.Tensor, ...]
    if raw.is_contiguous():
        raw = raw.view(-1)
        index = keys
    else:
        index = torch.unravel_index(keys, shape)
    old = raw[index]
    plan = plan.to(t.device)
    if plan.xor is not None:
        raw[index] = old ^ from_unsigned(plan.xor, raw.dtype, encoding.bits)
    else:
        new = plan.apply(to_unsigned(old, encoding.bits), encoding, plan.narrowed(encoding, shape))
        raw[index] = from_unsigned(new, raw.dtype, encoding.bits)

    def restore() -> None:
        raw[index] = old

    return restore


class OutputHook:
    """A forward hook that corrupts a module's output tensor according to a :class:`SitePlan`."""

    def __init__(self, site: Site, plan: SitePlan) -> None:
        self.site, self.plan = site, plan
        self._device: torch.device | None = None

    def _plans_on(self, device: torch.device) -> tuple[ElementPlan | None, ElementPlan | None]:
        if self._device != device:
            self._all = self.plan.all_samples.to(device) if self.plan.all_samples else None
            self._per = self.plan.per_sample.to(device) if self.plan.per_sample else None
            self._keys_all = torch.from_numpy(self._all.keys).to(device) if self._all else None
            if self._per:
                k = torch.from_numpy(self._per.keys).to(device)
                self._b, self._e = k >> ELEMENT_BITS, k & ELEMENT_MASK
            self._device = device
        return self._all, self._per

    def corrupt(self, out: torch.Tensor) -> torch.Tensor:
        """A corrupted copy of ``out`` (batch dimension first)."""
        if not isinstance(out, torch.Tensor):
            raise FaultError(f"site {self.site.name!r}: the module returned {type(out).__name__}, not a tensor")
        enc = encoding_of(out)
        if not isinstance(enc, FloatEncoding):
            raise FaultError(f"site {self.site.name!r}: cannot corrupt an output of dtype {out.dtype}")
        y = out.clone(memory_format=torch.contiguous_format)
        batch = y.shape[0] if y.dim() else 1
        iv = y.view(enc.int_dtype).view(batch, -1)
        n = iv.shape[1]
        all_plan, per_plan = self._plans_on(y.device)
        if all_plan is not None:
            self._check_elements(int(all_plan.keys[-1]), n, y)
            _apply_at(iv, (slice(None), self._keys_all), all_plan, enc)
        if per_plan is not None:
            self._check_elements(int((per_plan.keys & ELEMENT_MASK).max()), n, y)
            top = int(per_plan.keys[-1] >> ELEMENT_BITS)
            if top >= batch:
                raise FaultError(f"site {self.site.name!r}: batch element {top} is outside the batch of {batch}")
            _apply_at(iv.view(-1), self._b * n + self._e, per_plan, enc)
        return y

    def _check_elements(self, top: int, n: int, y: torch.Tensor) -> None:
        if top >= n:
            raise FaultError(f"site {self.site.name!r}: element {top} is outside the output of shape {tuple(y.shape[1:])} ({n} elements per sample)")

    def __call__(self, module: torch.nn.Module, args: object, out: torch.Tensor) -> torch.Tensor:
        return self.corrupt(out)


def _apply_at(iv: torch.Tensor, index: object, plan: ElementPlan, enc: FloatEncoding) -> None:
    old = iv[index]
    if plan.xor is not None:
        iv[index] = old ^ from_unsigned(plan.xor, iv.dtype, enc.bits)
    else:
        iv[index] = from_unsigned(plan.apply(to_unsigned(old, enc.bits), enc), iv.dtype, enc.bits)


def hook_output(site: Site, plan: SitePlan, register: Callable[[OutputHook], torch.utils.hooks.RemovableHandle] | None = None) -> Undo:
    """Install an :class:`OutputHook` on ``site.module`` (or through ``register``); return its remover."""
    hook = OutputHook(site, plan)
    handle = register(hook) if register else site.module.register_forward_hook(hook)
    return handle.remove
