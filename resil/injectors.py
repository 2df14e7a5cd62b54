"""Building blocks adapters use to inject: corrupt a stored tensor, corrupt a module's output.

Stored tensors are corrupted in place and restored by writing back the saved codes of the
faulted elements only. Computed tensors are corrupted by a forward hook applying a
precomputed plan.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.hooks import RemovableHandle

from .encodings import Encoding, FloatEncoding, encoding_of, from_unsigned, to_unsigned
from .errors import FaultError
from .plan import ElementPlan
from .site import Site, SitePlan, Undo, WindowPlan, is_structure, replace_at, tensor_at, tensors_in

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
    """Apply ``plan`` (keys = flat element indices) to ``t`` in place; return the restore function.

    Only the faulted elements are touched, and restored by writing back their saved codes.
    """
    raw = int_view(t, encoding)
    if plan.xor is not None and raw.device.type == "cpu" and raw.is_contiguous():
        flat, np_keys = raw.view(-1).numpy(), plan.keys
        saved = flat[np_keys]  # duplicates save the same original code, so writing back is exact
        np.bitwise_xor.at(flat, np_keys, plan.xor.numpy().astype(flat.dtype))  # wraps to two's complement

        def write_back() -> None:
            flat[np_keys] = saved

        return write_back
    plan = plan.to(t.device)
    keys = torch.from_numpy(plan.keys).to(t.device)
    index: torch.Tensor | tuple[torch.Tensor, ...]
    if raw.is_contiguous():
        raw = raw.view(-1)
        index = keys
    else:
        index = torch.unravel_index(keys, shape)
    old = raw[index]
    if plan.xor is not None:
        raw[index] = old ^ from_unsigned(plan.xor, raw.dtype, encoding.bits)
    else:
        new = plan.apply(to_unsigned(old, encoding.bits), encoding, plan.narrowed(encoding, shape))
        raw[index] = from_unsigned(new, raw.dtype, encoding.bits)

    def restore() -> None:
        raw[index] = old

    return restore


class StepHook:
    """Base of forward hooks that corrupt computed tensors according to a :class:`SitePlan`.

    Counts its calls as time steps (reset by :func:`reset_steps`) and corrupts only with the
    windows active at the current step.
    """

    def __init__(self, site: Site, plan: SitePlan) -> None:
        self.site, self.plan = site, plan
        self.step = 0
        self._device: torch.device | None = None
        self._windows: list[DeviceWindow] = []
        self.active(device_of(site.module))  # prepare the plans now, not in the first forward

    def active(self, device: torch.device) -> list[DeviceWindow]:
        """The windows that apply at the current step, with their plans on ``device``."""
        if self._device != device:
            self._windows = [DeviceWindow(w, device) for w in self.plan.windows]
            self._device = device
        return [w for w in self._windows if w.start <= self.step < w.stop]

    def corrupt_rows(self, raw: torch.Tensor, encoding: Encoding, windows: list[DeviceWindow]) -> None:
        """Corrupt ``raw`` in place: signed storage integers shaped ``(batch, elements)``."""
        batch, n = raw.shape
        for w in windows:
            w.apply(raw, batch, n, encoding, self.site.name)

    def __call__(self, module: torch.nn.Module, args: tuple[object, ...], out: torch.Tensor) -> object:
        try:
            windows = self.active(_device_of_output(out, self._device))
            return self.corrupt(module, args, out, windows) if windows else None
        finally:
            self.step += 1

    def corrupt(self, module: torch.nn.Module, args: tuple[object, ...], out: object, windows: list[DeviceWindow]) -> object:
        """Return the corrupted output (or None to keep ``out``)."""
        raise NotImplementedError


class OutputHook(StepHook):
    """Corrupts a module's output tensor, or one tensor of a structured output (``site.path``),
    which is then returned in a copy of the structure.

    Elements are numbered per sample over the tensor's dimensions other than ``site.batch_dim``
    (or over the whole tensor when it is None). The tensor is corrupted in place when nothing
    else can see it (no gradient recorded through it, no storage shared with the module's
    inputs or with another tensor of its output); otherwise a corrupted copy is returned.
    Windows whose XOR faults cover many elements apply as one dense mask.
    """

    def corrupt(self, module: torch.nn.Module, args: tuple[object, ...], out: object, windows: list[DeviceWindow]) -> object:
        path, dim = self.site.path, self.site.batch_dim
        t = tensor_at(out, path)
        if not isinstance(t, torch.Tensor):
            raise FaultError(self._not_a_tensor(out, t))
        others = [x for p, x in tensors_in(out) if p != path] if path else []
        x = t.movedim(dim, 0) if dim and t.dim() else t  # samples first
        y = self._corrupted(x, 1 if dim is None or not x.dim() else x.shape[0], _private(x, args, others), windows)
        if x is not t:
            assert dim is not None  # x was moved
            y = y.movedim(0, dim)
        if y.stride() != t.stride():  # keep the layout: later kernels then round as in the fault-free run
            y = torch.empty_like(t).copy_(y)
        return replace_at(out, path, y)

    def _corrupted(self, out: torch.Tensor, batch: int, private: bool, windows: list[DeviceWindow]) -> torch.Tensor:
        """``out`` (samples on dim 0, ``batch`` of them) with the faults of ``windows``."""
        enc = encoding_of(out)
        if not isinstance(enc, FloatEncoding):
            raise FaultError(f"site {self.site.name!r}: cannot corrupt an output of dtype {out.dtype}")
        n = out.numel() // max(batch, 1)
        y = out if private else None
        rest = []
        for w in windows:
            row = w.dense_row(n, enc, self.site.name)
            if row is None:
                rest.append(w)
            elif y is None:
                y = (out.contiguous().view(enc.int_dtype).view(batch, n) ^ row).view(enc.dtype).view(out.shape)
            else:
                y.view(enc.int_dtype).view(batch, n).bitwise_xor_(row)
        if y is None:
            y = out.clone(memory_format=torch.contiguous_format)
        if rest:
            self.corrupt_rows(y.view(enc.int_dtype).view(batch, n), enc, rest)
        if out.requires_grad and torch.is_grad_enabled() and not y.requires_grad:
            # the one-mask XOR ran on integer views, outside autograd: route the gradient of the
            # unchanged elements through (values stay bit-exact; faulted elements get none)
            same = y.view(enc.int_dtype) == out.contiguous().view(enc.int_dtype)
            y = torch.where(same, out, y)
        return y

    def _not_a_tensor(self, out: object, found: object) -> str:
        name = self.site.name
        if not self.site.path:
            hint = (f"; list the sites with an example input, resil.sites(model, x), for one site per tensor in it (e.g. {name + '[0]'!r})"
                    if is_structure(out) else "")
            return f"site {name!r}: the module returned {type(out).__name__}, not a tensor{hint}"
        return (f"site {name!r}: the module's output ({type(out).__name__}) holds {type(found).__name__} there, not a tensor "
                "(its structure differs from the example pass the sites were listed with)")


def _private(out: torch.Tensor, args: tuple[object, ...], others: list[torch.Tensor]) -> bool:
    """Whether ``out`` may be corrupted in place: contiguous, no autograd history to protect, and
    no storage shared with an input (modules such as Flatten or Dropout return views; inputs
    nested in tuples count too) or with ``others``, the other tensors of a structured output."""
    if not out.is_contiguous() or (out.requires_grad and torch.is_grad_enabled()):
        return False
    ptr = out.untyped_storage().data_ptr()
    inputs = (t for _, t in tensors_in(args))
    return not any(t.untyped_storage().data_ptr() == ptr for t in (*inputs, *others))


class DeviceWindow:
    """One window of a site plan with its element plans and index tensors on one device."""

    def __init__(self, w: WindowPlan, device: torch.device) -> None:
        self.start, self.stop = w.start, w.stop
        self.all = w.all_samples.to(device) if w.all_samples else None
        self.per = w.per_sample.to(device) if w.per_sample else None
        if self.all:
            self.keys_all = torch.from_numpy(self.all.keys).to(device)
            self.top_all = int(self.all.keys[-1])
        if self.per:
            k = torch.from_numpy(self.per.keys).to(device)
            self.b, self.e = k >> ELEMENT_BITS, k & ELEMENT_MASK
            self.top_per = int((self.per.keys & ELEMENT_MASK).max())
            self.top_batch = int(self.per.keys[-1] >> ELEMENT_BITS)

    #: an every-sample XOR plan touching at least this share of a sample's elements applies as a dense mask
    DENSE_SHARE = 1 / 16

    def dense_row(self, n: int, enc: FloatEncoding, name: str) -> torch.Tensor | None:
        """The plan as one XOR row over a sample's ``n`` elements, if it is a large XOR-only plan."""
        if self.per is not None or self.all is None or self.all.xor is None or len(self.all.keys) < n * self.DENSE_SHARE:
            return None
        if getattr(self, "_row_n", None) != n:
            _check_element(self.top_all, n, name)
            row = torch.zeros(n, dtype=enc.int_dtype, device=self.keys_all.device)
            row[self.keys_all] = from_unsigned(self.all.xor, enc.int_dtype, enc.bits)
            self._row, self._row_n = row, n
        return self._row

    def apply(self, raw: torch.Tensor, batch: int, n: int, enc: Encoding, name: str) -> None:
        if self.all:
            _check_element(self.top_all, n, name)
            _apply_at(raw, (slice(None), self.keys_all), self.all, enc)
        if self.per:
            _check_element(self.top_per, n, name)
            if self.top_batch >= batch:
                raise FaultError(f"site {name!r}: batch element {self.top_batch} is outside the batch of {batch}")
            if getattr(self, "_pos_n", None) != n:
                self._pos, self._pos_n = self.b * n + self.e, n
            _apply_at(raw.view(-1), self._pos, self.per, enc)


def _device_of_output(out: object, default: torch.device | None) -> torch.device:
    """The device of a module output: a tensor, a tuple starting with one, or anything with ``.device``."""
    first = out[0] if isinstance(out, (tuple, list)) and out else out
    device = getattr(first, "device", None)
    return device if isinstance(device, torch.device) else default or torch.device("cpu")


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU if it has none).

    Example:
        >>> device_of(torch.nn.ReLU()).type, device_of(torch.nn.Linear(1, 1)).type
        ('cpu', 'cpu')
    """
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def _check_element(top: int, n: int, name: str) -> None:
    if top >= n:
        raise FaultError(f"site {name!r}: element {top} is outside the computed tensor ({n} elements per sample)")


def _apply_at(raw: torch.Tensor, index: tuple[slice | torch.Tensor, ...] | torch.Tensor, plan: ElementPlan, enc: Encoding) -> None:
    """Corrupt ``raw[index]`` in place (``index`` selects the plan's keys, which are distinct)."""
    if raw.device.type == "cpu" and not raw.requires_grad:  # numpy indexing is much faster on the CPU
        arr = raw.numpy()
        np_index: tuple[slice | np.ndarray, ...] | np.ndarray
        np_index = tuple(i.numpy() if isinstance(i, torch.Tensor) else i for i in index) if isinstance(index, tuple) else index.numpy()
        if plan.xor is not None:
            arr[np_index] ^= plan.xor.numpy().astype(arr.dtype)
        else:
            old = torch.from_numpy(arr[np_index])
            arr[np_index] = from_unsigned(plan.apply(to_unsigned(old, enc.bits), enc), raw.dtype, enc.bits).numpy()
        return
    old = raw[index]
    if plan.xor is not None:
        raw[index] = old ^ from_unsigned(plan.xor, raw.dtype, enc.bits)
    else:
        raw[index] = from_unsigned(plan.apply(to_unsigned(old, enc.bits), enc), raw.dtype, enc.bits)


_ACTIVE: weakref.WeakKeyDictionary[torch.nn.Module, list[StepHook]] = weakref.WeakKeyDictionary()


def register_step_hook(module: torch.nn.Module, hook: StepHook, register: Callable[[StepHook], RemovableHandle] | None = None) -> Undo:
    """Register ``hook`` (as a forward hook of ``module``, or through ``register``); return its remover."""
    handle = register(hook) if register else module.register_forward_hook(hook)
    _ACTIVE.setdefault(module, []).append(hook)

    def remove() -> None:
        handle.remove()
        _ACTIVE[module].remove(hook)

    return remove


def reset_steps(model: torch.nn.Module) -> None:
    """Restart the step count of every active fault hook in ``model`` (call it before each sequence)."""
    for m in model.modules():
        for h in _ACTIVE.get(m, ()):
            h.step = 0


def hook_output(site: Site, plan: SitePlan) -> Undo:
    """Install an :class:`OutputHook` on ``site.module``; return its remover."""
    return register_step_hook(site.module, OutputHook(site, plan))
