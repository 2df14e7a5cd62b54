"""Vulnerability analysis: semi-analytical vulnerability factors, PVF, importance-sampling precision."""

from .pvf import Deviation, PVFEstimate, PVFResult, Top1, parameter_groups, pvf, trials_needed  # noqa: E402,F401  (PVF, issue 6)
from .vulnerability import LayerFaults, LayerVF, ModelVF, Sampling, VulnerabilityAnalysis, flip_errors  # noqa: E402,F401  (DeepVigor+ VFs, issue 6)
from .vf_reference import FIResult, fault_injection_vf  # noqa: E402,F401  (reference FI for the VFs, issue 6)
