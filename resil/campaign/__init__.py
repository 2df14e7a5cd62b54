"""Campaigns: sample fault scenarios, run them against a golden run, store outcome counts.

Example:
    >>> import tempfile, resil.campaign as rc
    >>> spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=3), data=rc.DataSpec(inputs=4))
    >>> rc.run(spec, tempfile.mkdtemp()).table().column("inputs").to_pylist()
    [4, 4, 4]
"""

from .executors import SerialExecutor, make_executor
from .metrics import by_stratum, failure_estimate
from .outcomes import OUTCOMES, Golden, classify
from .runner import CampaignRunner, resume, run
from .samplers import Sampler, Scenarios
from .space import FaultSpace
from .spec import CampaignSpec, DataSpec, FaultSpec, ModelSpec, OutcomeSpec, RunSpec, SamplerSpec, SiteSpec, load_spec, spec_from_dict
from .store import Store

__all__ = [
    "OUTCOMES", "CampaignRunner", "CampaignSpec", "DataSpec", "FaultSpace", "FaultSpec", "Golden", "ModelSpec", "OutcomeSpec",
    "RunSpec", "Sampler", "by_stratum", "failure_estimate", "SamplerSpec", "Scenarios", "SerialExecutor", "SiteSpec", "Store", "classify", "load_spec",
    "make_executor", "resume", "run", "spec_from_dict",
]
