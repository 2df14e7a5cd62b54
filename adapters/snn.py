"""The spiking adapter (snnTorch 1.0): neuron state, output spikes and neuron parameters.

Sites of a neuron module ``lif1`` (any ``snntorch.SpikingNeuron``: Leaky, Synaptic, Alpha,
Lapicque, RLeaky, RSynaptic ...):

- ``lif1.mem`` (and ``lif1.syn``, ``lif1.syn_exc``, ``lif1.syn_inh`` where the neuron has
  them), kind ``state``, float32, per sample. **A state fault at step t corrupts the value the
  neuron stores at the end of step t** (after its update and reset), i.e. the value it reads
  at step t+1. The spike the neuron emitted at step t is not recomputed (no re-firing within
  the step); the first spike that can change is the one of step t+1.
- ``lif1.spk``, kind ``spike``, a 1-bit :class:`~resil.encodings.SpikeEncoding`: the spike
  the neuron emits at step t, as the next layer (and, for RLeaky/RSynaptic, the recurrent
  connection) receives it. The neuron's own membrane and reset are not affected.
- ``lif1.threshold``, ``lif1.beta``, ``lif1.alpha``, kind ``parameter``: once the neuron
  shape is known (list the sites with an example input), one element per neuron, so a fault
  hits one neuron's threshold; before that, the stored (layer-wide) tensor. Other float
  buffers (``graded_spikes_factor``, ``R``, ``C``, ``V`` ...) are stored sites of their own
  shape. Parameter faults are permanent.

Time steps are the neuron's forward calls since the inject block began or since the last
:func:`resil.reset`, which also resets every neuron's state (call it before each sequence;
unlike ``snntorch.utils.reset`` it reaches the neurons of the given model, deep copies
included). Works with ``init_hidden=True`` and ``False``.

Example:
    >>> import torch, snntorch as snn, resil
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), snn.Leaky(beta=0.9, init_hidden=True))
    >>> [s.name for s in resil.sites(net, torch.zeros(1, 3)) if s.module is net[1]]
    ['1.threshold', '1.graded_spikes_factor', '1.beta', '1.mem', '1.spk']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import snntorch
import torch
from torch import nn

from resil.adapter_registry import UnsupportedAdapter, register_adapter
from resil.encodings import FLOAT_ENCODINGS, SpikeEncoding, encoding_of
from resil.errors import FaultError
from resil.injectors import DeviceWindow, StepHook, corrupt_stored, register_step_hook
from resil.site import Adapter, Site, SiteOptions, SitePlan, Undo, ValueTransform

from .dense import parameter_kind

STATES = ("syn", "syn_exc", "syn_inh", "mem")
PER_NEURON = ("threshold", "beta", "alpha")


class SpikingAdapter(Adapter):
    """Sites and injection for ``snntorch.SpikingNeuron`` modules (see the module docstring)."""

    name = "snn"
    temporal = True

    def sites(self, prefix: str, module: nn.Module, options: SiteOptions) -> Iterable[Site]:
        dot = prefix + "." if prefix else ""
        out = options.recorded_output(module)
        neurons = out[0] if out else None
        for name, t in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)):
            if name in STATES or name == "spk" or not t.dtype.is_floating_point:
                continue
            shape = neurons if name in PER_NEURON and neurons is not None and t.dim() == 0 else tuple(t.shape)
            kind = "parameter" if name in PER_NEURON or t.dim() == 0 else parameter_kind(name)
            yield Site(dot + name, kind, shape, FLOAT_ENCODINGS[t.dtype], self, module, name)
        for name in STATES:
            if hasattr(module, name) and isinstance(getattr(module, name), torch.Tensor):
                yield Site(dot + name, "state", None, FLOAT_ENCODINGS[torch.get_default_dtype()], self, module, name, batched=True)
        factor = _neuron(module).graded_spikes_factor
        amplitude = float(factor) if factor.dim() == 0 else factor
        yield Site(dot + "spk", "spike", None, SpikeEncoding(amplitude), self, module, "spk", batched=True)

    def install(self, site: Site, plan: SitePlan) -> Undo:
        if site.kind == "spike":
            return register_step_hook(site.module, SpikeHook(site, plan))
        if site.kind == "state":
            return register_step_hook(site.module, StateHook(site, plan))
        assert site.shape is not None
        stored = getattr(site.module, site.attr)
        if tuple(stored.shape) == site.shape:
            return corrupt_stored(stored, site.encoding, plan.stored(), site.shape)
        return _per_neuron(site, stored, plan)

    def codes(self, site: Site) -> torch.Tensor:
        assert site.shape is not None
        return site.encoding.encode(getattr(site.module, site.attr).detach().expand(site.shape))

    def reset(self, module: nn.Module) -> None:
        _neuron(module).reset_mem()

    def transform(self, site: Site, fn: ValueTransform) -> Undo:
        """Stored tensors of their own shape only: a neuron's state and spikes, and a layer-wide
        parameter listed per neuron, are not values a layer computes with in one place."""
        stored = getattr(site.module, site.attr, None) if not site.batched else None
        if not isinstance(stored, torch.Tensor) or tuple(stored.shape) != site.shape:
            raise FaultError(f"site {site.name!r}: the spiking adapter transforms stored tensors of their own shape only")
        return super().transform(site, fn)


def _neuron(module: nn.Module) -> Any:
    """A snnTorch neuron as the untyped object it is (snnTorch has no type information)."""
    return module


def _per_neuron(site: Site, stored: torch.Tensor, plan: SitePlan) -> Undo:
    """Replace a layer-wide parameter by one value per neuron, corrupted; undo puts it back."""
    assert site.shape is not None
    expanded = stored.detach().expand(site.shape).clone()
    corrupt_stored(expanded, site.encoding, plan.stored(), site.shape)
    table: dict[str, Any] = site.module._parameters if site.attr in site.module._parameters else site.module._buffers
    table[site.attr] = nn.Parameter(expanded, requires_grad=stored.requires_grad) if isinstance(stored, nn.Parameter) else expanded

    def restore() -> None:
        table[site.attr] = stored

    return restore


class StateHook(StepHook):
    """Corrupts a neuron's stored state (e.g. ``mem``) in place after the step's update."""

    def corrupt(self, module: nn.Module, args: tuple[object, ...], out: object, windows: list[DeviceWindow]) -> None:
        state = getattr(module, self.site.attr)
        enc = encoding_of(state)
        if enc is None or not state.is_contiguous() or state.dim() == 0:
            raise FaultError(f"site {self.site.name!r}: cannot corrupt a state of dtype {state.dtype} and shape {tuple(state.shape)}")
        with torch.no_grad():
            self.corrupt_rows(enc.view(state.detach()).view(state.shape[0], -1), enc, windows)  # type: ignore[attr-defined]
        return None


class SpikeHook(StepHook):
    """Corrupts the spikes a neuron emits, in place (so recurrent neurons see them too)."""

    def corrupt(self, module: nn.Module, args: tuple[object, ...], out: object, windows: list[DeviceWindow]) -> None:
        spk = out[0] if isinstance(out, tuple) else out
        assert isinstance(spk, torch.Tensor)
        with torch.no_grad():
            codes = (spk != 0).to(torch.int64).reshape(spk.shape[0], -1)
            self.corrupt_rows(codes, self.site.encoding, windows)
            amplitude = _neuron(module).graded_spikes_factor.to(spk.dtype)
            spk.copy_(torch.where(codes.view(spk.shape) != 0, amplitude, torch.zeros_like(amplitude)))
        return None


#: neurons that advance one time step per forward call (and their subclasses)
STEP_NEURONS = ("Leaky", "Synaptic", "Alpha", "Lapicque", "RLeaky", "RSynaptic", "SLSTM", "SConv2dLSTM")


def register() -> None:
    """Register the spiking adapter for the step-wise snnTorch neurons (done automatically).

    Other ``SpikingNeuron`` subclasses (the sequence neurons of snnTorch 1.0 such as
    ``StateLeaky``) process a whole sequence per call, which the step semantics above do not
    describe: listing their sites raises a clear error.
    """
    register_adapter(snntorch.SpikingNeuron, UnsupportedAdapter(
        "it processes whole sequences per call; resil's spiking adapter covers step-wise neurons", temporal=True))
    adapter = SpikingAdapter()
    for name in STEP_NEURONS:
        register_adapter(getattr(snntorch, name), adapter)
