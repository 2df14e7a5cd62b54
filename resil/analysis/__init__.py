"""Vulnerability analysis: semi-analytical vulnerability factors, PVF, importance-sampling precision,
robustness comparison across compression variants.

``resil.analysis.compare`` is the comparison function (its module stays importable as
``from resil.analysis.compare import ...``).
"""

from .compare import CompareSettings, Comparison, compare
from .pvf import Deviation, PVFConfig, PVFEstimate, PVFResult, Top1, parameter_groups, pvf, trials_needed
from .vf_reference import FIResult, fault_injection_vf
from .vulnerability import LayerFaults, LayerVF, ModelVF, Sampling, VulnerabilityAnalysis, flip_errors

__all__ = [
    "CompareSettings", "Comparison", "Deviation", "FIResult", "LayerFaults", "LayerVF", "ModelVF", "PVFConfig", "PVFEstimate", "PVFResult",
    "Sampling", "Top1", "VulnerabilityAnalysis", "compare", "fault_injection_vf", "flip_errors",
    "parameter_groups", "pvf", "trials_needed",
]
