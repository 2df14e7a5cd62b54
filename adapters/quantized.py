"""Brevitas (quantized) layers: faults act on the integer codes the layer computes with.

A quantized weight is stored as integer codes ``q`` with ``value = (q - zero_point) * scale``.
Brevitas recomputes the codes and the scale from the float weight on every forward, so resil
never touches the float weight: a forward hook on the layer's quantizer (``weight_quant``,
``bias_quant``, ``act_quant``, ``output_quant``) replaces the codes of the faulted elements and
keeps the scale, zero point and bit width. Faulting the maximum-magnitude weight, or producing
the code -128 of a narrow-range int8 quantizer, therefore behaves as in integer hardware.

Sites of a Brevitas layer ``<prefix>``:

- ``<prefix>.weight`` / ``<prefix>.bias`` with quantization enabled: :class:`~resil.IntEncoding`
  of the quantizer's bit width, signedness, scale and zero point (per-channel scales are
  ``[C, 1, ...]`` tensors). A bias quantizer whose scale derives from the input (``Int32Bias``
  ...) only knows it during a forward: the site's encoding then has scale 1 (integer units),
  and the hook uses the run-time scale. Weights pruned with ``torch.nn.utils.prune`` honour
  :class:`~resil.site.SiteOptions` ``pruned`` (a pruned weight's code is 0).
- every other float parameter and buffer, and a weight or bias with quantization disabled:
  ordinary float sites of the dense adapter.
- ``<prefix>:out``: the integer codes of the activation (``act_quant``) or output quantizer
  (``output_quant``) if enabled, else the layer's float output. The encoding is read from the
  quantizer in eval mode when listing (uncalibrated quantizers have scale 1/255); the hook uses
  the scale of the current forward.

Quantizer internals (learned scales, zero points, bit widths) are not sites. Value-level fault
models (``Zero``, ``ValueFunction``) on an activation need a per-tensor activation scale.

Example:
    >>> import torch, brevitas.nn as qnn, resil
    >>> net = torch.nn.Sequential(qnn.QuantLinear(4, 2, bias=True), qnn.QuantReLU())
    >>> [(s.name, s.encoding.name) for s in resil.sites(net)]
    [('0.weight', 'int8'), ('0.bias', 'float32'), ('0:out', 'float32'), ('1:out', 'uint8')]
    >>> code = net[0].quant_weight().int()[1, 2].item()
    >>> with resil.inject(net, resil.Fault("0.weight", (1, 2), bit=7)):
    ...     flipped = net[0].quant_weight().int()[1, 2].item()
    >>> flipped == (code ^ -128)
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch
from brevitas.nn import (
    QuantCat,
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantConvTranspose1d,
    QuantConvTranspose2d,
    QuantConvTranspose3d,
    QuantEltwiseAdd,
    QuantEmbedding,
    QuantIdentity,
    QuantLinear,
    QuantReLU,
    QuantScaleBias,
)
from brevitas.nn.mixin.base import QuantLayerMixin
from brevitas.nn.quant_layer import QuantNonLinearActLayer
from brevitas.nn.quant_rnn import QuantRecurrentStackBase
from brevitas.quant_tensor import IntQuantTensor
from torch import nn

from resil.adapter_registry import UnsupportedAdapter, register_adapter
from resil.encodings import FLOAT_ENCODINGS, IntEncoding, to_unsigned
from resil.errors import FaultError
from resil.injectors import DeviceWindow, StepHook, register_step_hook
from resil.plan import ElementPlan
from resil.site import Adapter, Site, SiteOptions, SitePlan, Undo, ValueTransform

from .dense import DenseAdapter
from .pruning import is_pruning_hook

#: the Brevitas layer types this adapter describes (and their subclasses)
LAYER_TYPES: tuple[type[nn.Module], ...] = (
    QuantNonLinearActLayer,  # QuantReLU, QuantIdentity, QuantHardTanh, QuantSigmoid, QuantTanh ...
    QuantConv1d, QuantConv2d, QuantConv3d, QuantConvTranspose1d, QuantConvTranspose2d, QuantConvTranspose3d,
    QuantLinear, QuantScaleBias, QuantEmbedding, QuantEltwiseAdd, QuantCat,
)


def register() -> None:
    """Register :class:`QuantizedAdapter` for the Brevitas layer types; other Brevitas layers
    (recurrent layers, pooling with truncation ...) get a clear error rather than a wrong site list."""
    unsupported = UnsupportedAdapter("resil's quantized adapter does not describe this Brevitas layer yet")
    register_adapter(QuantLayerMixin, unsupported)
    register_adapter(QuantRecurrentStackBase, unsupported)
    adapter = QuantizedAdapter()
    for layer_type in LAYER_TYPES:
        register_adapter(layer_type, adapter)


#: Brevitas layers that act on every channel alone (elementwise; per-tensor scales are checked on the golden run)
CHANNEL_LOCAL = (QuantReLU, QuantIdentity)


def encoding_of_quant(qt: IntQuantTensor) -> IntEncoding:
    """The integer encoding of a Brevitas ``IntQuantTensor`` (bit width, signedness, scale, zero point)."""
    return IntEncoding(int(qt.bit_width), bool(qt.signed), qt.scale.detach(), qt.zero_point.detach())


class QuantizedAdapter(Adapter):
    """Sites of Brevitas layers, faulted in the integer domain (see the module docstring)."""

    name = "quantized"
    claims_children = True

    def __init__(self) -> None:
        self._dense = DenseAdapter()

    def sites(self, prefix: str, module: nn.Module, options: SiteOptions) -> Iterable[Site]:
        for site in self._dense.sites(prefix, module, options):
            proxy = getattr(module, site.attr + "_quant", None) if site.attr in ("weight", "bias") else None
            if proxy is not None and proxy.is_quant_enabled:
                site = dataclasses.replace(site, encoding=_parameter_encoding(module, site.attr), adapter=self)
            yield site
        attr = _output_quantizer(module)
        if attr is None:
            float_out = FLOAT_ENCODINGS[torch.get_default_dtype()]
            yield Site(prefix + ":out", "activation", None, float_out, self._dense, module, "out", batched=True)
        else:
            yield Site(prefix + ":out", "activation", None, _probe_encoding(getattr(module, attr)), self, module, attr, batched=True)

    def codes(self, site: Site) -> torch.Tensor:
        with torch.no_grad():
            qt = _layer(site.module).quant_weight() if site.attr == "weight" else _layer(site.module).quant_bias()
        enc = site.encoding
        assert isinstance(enc, IntEncoding)
        return enc.from_int(torch.round(qt.value / qt.scale + qt.zero_point).to(torch.int64))

    def install(self, site: Site, plan: SitePlan) -> Undo:
        if site.batched:
            proxy = getattr(site.module, site.attr)
            return register_step_hook(site.module, ActivationCodeHook(site, plan), register=proxy.register_forward_hook)
        handle = getattr(site.module, site.attr + "_quant").register_forward_hook(ParameterCodeHook(site, plan.stored()))
        return handle.remove

    def trainable(self, site: Site) -> nn.Parameter | None:
        """The float parameter the quantizer reads (``weight_orig`` if pruned)."""
        return self._dense.trainable(site)

    def transform(self, site: Site, fn: ValueTransform) -> Undo:
        """A quantized weight or bias: on the quantizer's output, with its run-time scale and zero
        point (so faults stay on the integer grid); a quantized activation: on the layer's output values."""
        if site.batched:
            return site.module.register_forward_hook(_on_values(site, fn)).remove
        return getattr(site.module, site.attr + "_quant").register_forward_hook(_on_values(site, fn)).remove

    def channel_local(self, module: nn.Module) -> bool:
        return type(module) in CHANNEL_LOCAL or super().channel_local(module)

    def recomputes_from_sites(self, pre_hook: object) -> bool:
        return is_pruning_hook(pre_hook)


def _on_values(site: Site, fn: ValueTransform) -> Callable[[nn.Module, object, object], object]:
    """A forward hook applying ``fn`` to the values of the (quantized) tensor a module returns."""
    def hook(module: nn.Module, args: object, out: object) -> object:
        if isinstance(out, torch.Tensor):
            return fn(out, site.encoding)
        qt = _require_int(site, out)
        enc = site.encoding
        if isinstance(enc, IntEncoding):
            enc = dataclasses.replace(enc, scale=qt.scale, zero_point=qt.zero_point)
        return qt.set(value=fn(qt.value, enc))
    return hook


def _layer(module: nn.Module) -> Any:
    """A Brevitas layer or quantizer as the untyped object it is (Brevitas has no type information)."""
    return module


def _int_encoding(site: Site) -> IntEncoding:
    assert isinstance(site.encoding, IntEncoding)  # the adapter lists its own sites with integer encodings
    return site.encoding


def _output_quantizer(module: nn.Module) -> str | None:
    """The name of the enabled activation or output quantizer of ``module``, if any."""
    for attr in ("act_quant", "output_quant"):
        proxy = getattr(module, attr, None)
        if proxy is not None and proxy.is_quant_enabled:
            return attr
    return None


def _parameter_encoding(module: nn.Module, attr: str) -> IntEncoding:
    """The encoding of a quantized weight or bias, read from its quantizer now."""
    proxy = getattr(module, attr + "_quant")
    if attr == "bias" and proxy.requires_input_scale:
        # the scale is input scale x weight scale, known only during a forward
        return IntEncoding(int(proxy.quant_injector.bit_width), bool(proxy.is_signed))
    with torch.no_grad():
        return encoding_of_quant(_layer(module).quant_weight() if attr == "weight" else _layer(module).quant_bias())


def _probe_encoding(proxy: nn.Module) -> IntEncoding:
    """The encoding of an activation quantizer in eval mode (as Brevitas' ``proxy.scale()`` reads
    it, but calling ``forward`` directly so that no fault hook sees the probe)."""
    training = proxy.training
    proxy.eval()
    try:
        with torch.no_grad():
            return encoding_of_quant(proxy.forward(_layer(proxy)._zero_hw_sentinel()))
    finally:
        proxy.train(training)


def _require_int(site: Site, out: object) -> IntQuantTensor:
    if not isinstance(out, IntQuantTensor):
        raise FaultError(f"site {site.name!r}: the quantizer returned {type(out).__name__}, not an IntQuantTensor (export mode?)")
    return out


class ParameterCodeHook:
    """Forward hook of a weight or bias quantizer: replaces the codes of the faulted elements.

    The codes are recomputed from the quantizer's output on every call, so the faults follow
    the float weights if they change (training); the other elements keep their exact values.
    """

    def __init__(self, site: Site, plan: ElementPlan) -> None:
        assert site.shape is not None
        self.site, self.shape, self.plan = site, site.shape, plan.merge()
        self.index = torch.unravel_index(torch.tensor(self.plan.keys), site.shape)

    def __call__(self, proxy: nn.Module, args: object, out: object) -> IntQuantTensor:
        qt = _require_int(self.site, out)
        value = qt.value
        if self.index[0].device != value.device:
            self.index = tuple(i.to(value.device) for i in self.index)
            self.plan = self.plan.to(value.device)
        enc = dataclasses.replace(_int_encoding(self.site), scale=qt.scale, zero_point=qt.zero_point)
        scale, zero_point = qt.scale.expand(self.shape)[self.index], qt.zero_point.expand(self.shape)[self.index]
        q = torch.round(value[self.index] / scale + zero_point).to(torch.int64)
        q2 = enc.to_int(self.plan.apply(enc.from_int(q), enc, self.plan.narrowed(enc, self.shape)))
        return qt.set(value=value.index_put(self.index, ((q2 - zero_point) * scale).to(value.dtype)))


class ActivationCodeHook(StepHook):
    """Forward hook of an activation or output quantizer: corrupts the integer codes of the
    activation (per time window and batch element) and returns their values."""

    def corrupt(self, module: nn.Module, args: tuple[object, ...], out: object, windows: list[DeviceWindow]) -> IntQuantTensor:
        qt = _require_int(self.site, out)
        value, scale, zero_point = qt.value, qt.scale, qt.zero_point
        enc = dataclasses.replace(_int_encoding(self.site), scale=scale, zero_point=zero_point)
        q = torch.round(value / scale + zero_point).to(torch.int64)
        raw = q.clone()
        self.corrupt_rows(raw.view(value.shape[0] if value.dim() else 1, -1), enc, windows)
        q2 = enc.to_int(to_unsigned(raw, enc.bits))
        return qt.set(value=torch.where(q2 != q, ((q2 - zero_point) * scale).to(value.dtype), value))
