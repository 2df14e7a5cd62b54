"""``resil.sites(model)``: walk a model and collect the sites every adapter reports."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .adapter_registry import adapter_for
from .encodings import FloatEncoding, encoding_of
from .errors import FaultError
from .hooks import forward_hooks
from .site import OutputPath, OutputTensor, Site, SiteList, SiteOptions, is_structure, replace_at, tensors_in


def sites(model: nn.Module, example: Any = None, *, pruned: str = "live") -> SiteList:
    """Every site of ``model``, in module order.

    Args:
        model: any ``torch.nn.Module``; each submodule is described by the adapter registered
            for its type.
        example: optional example input (a tensor, or a tuple of positional arguments) whose
            first dimension is the batch. With it, one forward pass records the shape (per
            sample) and dtype of every computed site, into the returned list only: a later call
            without an example knows no shapes again. Stateful modules (spiking neurons) are
            reset afterwards. The outputs of modules that forward pass never calls are left
            out (e.g. ``nn.MultiheadAttention`` uses its ``out_proj`` weight without calling it),
            as are outputs of integers or booleans (indices from an argmax, a mask).
            A module whose output is a structure (tuple, list, dict, nested; e.g. ``nn.LSTM``'s
            ``(output, (h_n, c_n))``) gets one site per floating tensor in it, named by its path
            (``lstm:out[0]``, ``lstm:out[1][0]``, ``m:out[logits]``); each tensor's batch
            dimension is found by a second forward pass with the example's batch doubled
            (see :class:`ExampleOutputs`).
        pruned: policy for weights pruned with ``torch.nn.utils.prune``: ``"live"`` (only the
            unpruned weights are fault sites, as in sparse storage) or ``"dense"`` (the pruned
            zeros are stored cells too).

    Example:
        >>> import torch, resil
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
        >>> s = resil.sites(net, torch.zeros(2, 4))
        >>> [(x.name, x.kind, x.shape) for x in s]
        [('0.weight', 'weight', (3, 4)), ('0.bias', 'bias', (3,)), ('0:out', 'activation', (3,)), ('1:out', 'activation', (3,))]
        >>> lstm = torch.nn.LSTM(3, 4, batch_first=True)       # (output, (h_n, c_n)); h_n is (layers, batch, 4)
        >>> [(x.name, x.shape, x.batch_dim) for x in resil.sites(lstm, torch.zeros(2, 5, 3)) if x.batched]
        [(':out[0]', (5, 4), 0), (':out[1][0]', (1, 4), 1), (':out[1][1]', (1, 4), 1)]
    """
    scripted = [name or type(model).__name__ for name, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)]
    if scripted:
        raise FaultError(f"{', '.join(scripted[:3])} is a TorchScript module (torch.jit.script or trace): resil injects faults "
                         "through forward hooks, which TorchScript modules do not support; pass the eager module")
    outputs = ExampleOutputs(model, example) if example is not None else None
    options = SiteOptions(pruned=pruned, example=outputs)
    found: list[Site] = []
    claimed: list[str] = []
    for prefix, module in model.named_modules():
        if any(c == "" or prefix == c or prefix.startswith(c + ".") for c in claimed):  # "" = the model itself
            continue
        adapter = adapter_for(module)
        found.extend(_with_output_shape(s, outputs) for s in adapter.sites(prefix, module, options)
                     if outputs is None or s.kind != "activation" or (outputs.called(s.module) and not _integral(s, outputs)))
        if adapter.claims_children:
            claimed.append(prefix)
    return SiteList(found)


def reset(model: nn.Module) -> None:
    """Reset the state of every stateful module (e.g. spiking neurons' membranes) and the step
    count of every active fault hook in ``model``: call it before each input sequence.

    Unlike a library's global reset of the instances it tracks, it resets the modules of ``model``
    itself, deep copies included.
    """
    from .injectors import reset_steps

    for module in model.modules():
        adapter_for(module).reset(module)
    reset_steps(model)


@dataclasses.dataclass(frozen=True)
class _Seen:
    """A module's output in its first call of one forward pass."""

    #: per-sample shape (without dim 0) and dtype of the output tensor, or of the first entry of a tuple or list
    primary: tuple[tuple[int, ...], torch.dtype] | None
    #: for a structured output, the path, full shape and dtype of each floating tensor in it; else None
    tensors: tuple[tuple[OutputPath, tuple[int, ...], torch.dtype], ...] | None


class ExampleOutputs:
    """What the example forward pass of one :func:`sites` call showed of every module's output.

    It lives as long as that call (adapters read it through :class:`~resil.site.SiteOptions`);
    what it records ends up in the sites the call returns, nowhere else.

    The batch dimension of a tensor in a structured output is the one dimension whose size
    goes from N to 2N, every other dimension keeping its size, when the example runs again with
    its batch doubled (every tensor of the example whose first dimension is the example's batch
    size N, that of its first tensor, repeated along it). If no dimension or several change that
    way, or the model cannot run on the doubled batch, the tensor has no batch dimension. That
    second pass runs once, when an adapter first asks for a structured output, under a forked
    CPU random state, and puts every buffer back as it found it.

    Example:
        >>> gru = torch.nn.GRU(3, 4)                              # (seq, batch, 3) in, h_n is (1, batch, 4)
        >>> ex = ExampleOutputs(gru, torch.zeros(2, 6, 3))        # resil takes dim 0 as the batch: seq = 2 here
        >>> [(t.suffix, t.batch_dim) for t in ex.tensors(gru)]    # out[0] is (seq, 6, 4), h_n does not grow
        [('[0]', 0), ('[1]', None)]
    """

    def __init__(self, model: nn.Module, example: Any) -> None:
        self._model, self._example = model, example
        self._seen = _record(model, example)
        first = next((t for _, t in tensors_in(example) if t.dim() > 0), None)
        self._batch = None if first is None else int(first.shape[0])
        self._doubled: dict[nn.Module, _Seen] | None = None

    def called(self, module: nn.Module) -> bool:
        """Whether the example pass called ``module``."""
        return module in self._seen

    def primary(self, module: nn.Module) -> tuple[tuple[int, ...], torch.dtype] | None:
        """Per-sample shape and dtype of ``module``'s output tensor (the first entry of a tuple
        or list output); None if the pass did not call it or it returned no such tensor."""
        seen = self._seen.get(module)
        return None if seen is None else seen.primary

    def tensors(self, module: nn.Module) -> tuple[OutputTensor, ...] | None:
        """The floating tensors of ``module``'s output with their batch dims, if the output was a
        structure; None otherwise (a tensor, anything else, or a module the pass did not call)."""
        seen = self._seen.get(module)
        if seen is None or seen.tensors is None:
            return None
        if self._doubled is None:
            self._doubled = self._run_doubled()
        again = self._doubled.get(module)
        grown = {path: shape for path, shape, _ in (again.tensors or ())} if again is not None else {}
        return tuple(OutputTensor(path, shape, dtype, _batch_dim(shape, grown.get(path), self._batch))
                     for path, shape, dtype in seen.tensors)

    def _run_doubled(self) -> dict[nn.Module, _Seen]:
        n = self._batch
        if n is None:
            return {}
        doubled = self._example
        for path, t in list(tensors_in(self._example)):
            if t.dim() > 0 and t.shape[0] == n:
                doubled = replace_at(doubled, path, torch.cat([t, t]))
        with _leaving_no_trace(self._model):
            try:
                return _record(self._model, doubled)
            except Exception:  # a model that runs only at the example's batch size: batch dims unknown
                return {}


def _batch_dim(shape: tuple[int, ...], grown: tuple[int, ...] | None, n: int | None) -> int | None:
    """The one dimension that goes from ``n`` to ``2 n`` between ``shape`` and ``grown``, if any."""
    if grown is None or n is None or len(grown) != len(shape):
        return None
    changed = [d for d, (a, b) in enumerate(zip(shape, grown, strict=True)) if a != b]
    if len(changed) == 1 and shape[changed[0]] == n and grown[changed[0]] == 2 * n:
        return changed[0]
    return None


def _describe(out: Any) -> _Seen:
    first = out[0] if isinstance(out, (tuple, list)) and out else out
    primary = (tuple(first.shape[1:]), first.dtype) if isinstance(first, torch.Tensor) and first.dim() > 0 else None
    tensors = tuple((p, tuple(t.shape), t.dtype) for p, t in tensors_in(out) if t.is_floating_point()) if is_structure(out) else None
    return _Seen(primary, tensors)


def _record(model: nn.Module, example: Any) -> dict[nn.Module, _Seen]:
    """Run ``example`` through ``model``; describe the output of every module it calls (first
    call). A module whose calls return outputs of different shapes (one ``self.relu`` after layers
    of different widths) has no primary output: an element index would mean another element at
    each call."""
    seen: dict[nn.Module, _Seen] = {}

    names = {m: n for n, m in model.named_modules()}

    def record(mod: nn.Module, args: Any, out: Any) -> None:
        if any(t.is_nested for _, t in tensors_in(out)):
            raise FaultError(f"module {names.get(mod) or type(mod).__name__!r} returns a nested tensor, whose elements "
                             "resil cannot address (nn.TransformerEncoder with enable_nested_tensor=True and a padding "
                             "mask makes one): build it with enable_nested_tensor=False")
        if mod not in seen:
            seen[mod] = _describe(out)
        elif seen[mod].primary is not None and _describe(out).primary != seen[mod].primary:
            seen[mod] = dataclasses.replace(seen[mod], primary=None)

    try:
        with forward_hooks((m, record) for m in model.modules()), torch.no_grad():
            model(*example) if isinstance(example, tuple) else model(example)
    finally:
        reset(model)
    return seen


@contextmanager
def _leaving_no_trace(model: nn.Module) -> Iterator[None]:
    """Put every buffer of ``model`` (e.g. BatchNorm statistics in training mode) and the CPU
    random state back as they were before the block."""
    saved = [(m._buffers, name, b, b.detach().clone()) for m in model.modules() for name, b in m._buffers.items() if b is not None]
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        with torch.no_grad():
            for table, name, b, value in saved:
                b.copy_(value)
                table[name] = b


def _integral(site: Site, outputs: ExampleOutputs) -> bool:
    """Whether an activation site is a module's output tensor of integers or booleans (indices from
    an argmax, a mask): no value to corrupt, so no site (an output never computed is none either)."""
    out = outputs.primary(site.module)
    return not site.path and out is not None and not (out[1].is_floating_point or out[1].is_complex)


def _with_output_shape(site: Site, outputs: ExampleOutputs | None) -> Site:
    """A computed site whose adapter left the shape open takes its module's recorded output."""
    out = None if outputs is None else outputs.primary(site.module)
    if not site.batched or site.shape is not None or out is None:
        return site
    shape, dtype = out
    enc = site.encoding
    if isinstance(enc, FloatEncoding):
        enc = encoding_of(torch.empty(0, dtype=dtype)) or enc
    return dataclasses.replace(site, shape=shape, encoding=enc)
