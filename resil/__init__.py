"""resil: measure how neural networks survive hardware faults.

The core verbs are :func:`sites` (what can be faulted) and :func:`inject` (apply faults for a
block); faults are :class:`Fault` objects or a columnar :class:`FaultSet`, acting through
fault models (:class:`BitFlip`, :class:`StuckAt` ...) on a site's :mod:`encoding <resil.encodings>`.

Example:
    >>> import torch, resil
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 2))
    >>> with resil.inject(net, resil.Fault("0.weight", (1, 2), bit=30)):
    ...     pass
"""

from .discovery import reset, sites
from .encodings import BFLOAT16, FLOAT16, FLOAT32, FLOAT64, Encoding, FloatEncoding, IntEncoding, SpikeEncoding
from .errors import FaultError
from .fault_models import (
    BitFlip,
    Burst,
    FaultModel,
    RandomValue,
    StuckAt,
    ValueFunction,
    Zero,
    fault_model_from_spec,
    fault_model_names,
    register_fault_model,
)
from .faults import Fault, FaultSet
from .fixed_point_faults import BitBias, DifferentialStuckAt  # FT-NAS fault models (registered: bit_bias, adsaf)
from .injection import Injection, inject
from .injectors import reset_steps
from .site import Adapter, Site, SiteList

__version__ = "0.1.0"

__all__ = [
    "BFLOAT16",
    "FLOAT16",
    "FLOAT32",
    "FLOAT64",
    "Adapter",
    "BitBias",
    "BitFlip",
    "Burst",
    "DifferentialStuckAt",
    "Encoding",
    "Fault",
    "FaultError",
    "FaultModel",
    "FaultSet",
    "FloatEncoding",
    "Injection",
    "IntEncoding",
    "RandomValue",
    "Site",
    "SiteList",
    "SpikeEncoding",
    "StuckAt",
    "ValueFunction",
    "Zero",
    "fault_model_from_spec",
    "fault_model_names",
    "inject",
    "register_fault_model",
    "reset",
    "reset_steps",
    "sites",
]
