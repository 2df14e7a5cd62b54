"""Brevitas networks for quantization-aware training: the digits CNN's shape in quantized layers.

The bundled ``int8`` / ``int4`` reference models and the quantized candidates of the FT-NAS
search (:mod:`resil.training.search`) are built here, so Brevitas' layer and quantizer names
stay inside the adapters.

Example:
    >>> net = digits_qcnn(8)
    >>> [name for name, _ in net.named_children()][:3], type(net.conv1).__name__
    (['quant_in', 'conv1', 'relu1'], 'QuantConv2d')
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


def digits_qcnn(bit_width: int, per_channel: bool = False, width: int = 16, hidden: int = 64) -> nn.Sequential:
    """The dense CNN's shape in Brevitas layers for quantization-aware training: an unsigned input
    quantizer, conv/linear weights of ``bit_width`` bits (narrow range, per-tensor or per-output-
    channel float scale), ``bit_width``-bit unsigned QuantReLU activations; biases and logits float."""
    import brevitas.nn as qnn
    from brevitas.quant import Int8WeightPerChannelFloat, Int8WeightPerTensorFloat, Uint8ActPerTensorFloat

    weights = {"weight_quant": Int8WeightPerChannelFloat if per_channel else Int8WeightPerTensorFloat, "weight_bit_width": bit_width}
    return nn.Sequential(
        OrderedDict(
            quant_in=qnn.QuantIdentity(act_quant=Uint8ActPerTensorFloat, bit_width=bit_width),
            conv1=qnn.QuantConv2d(1, width, 3, padding=1, **weights),
            relu1=qnn.QuantReLU(bit_width=bit_width),
            conv2=qnn.QuantConv2d(width, 2 * width, 3, padding=1, **weights),
            relu2=qnn.QuantReLU(bit_width=bit_width),
            pool=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=qnn.QuantLinear(2 * width * 16, hidden, bias=True, **weights),
            relu3=qnn.QuantReLU(bit_width=bit_width),
            fc2=qnn.QuantLinear(hidden, 10, bias=True, **weights),
        )
    )


__all__ = ["digits_qcnn"]
