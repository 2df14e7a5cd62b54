"""Campaigns: sample fault scenarios, run them against a golden run, store outcome counts.

Example:
    >>> import tempfile, resil.campaign as rc
    >>> spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=3), data=rc.DataSpec(inputs=4))
    >>> rc.run(spec, tempfile.mkdtemp()).table().column("inputs").to_pylist()
    [4, 4, 4]
"""

from .criteria import OUTCOMES, AccuracyDrop, Criterion, Deviation, Top1, TopK, criterion_from_spec, criterion_names, register_criterion
from .evaluator import Evaluator, Golden
from .executors import SerialExecutor, make_executor
from .metrics import by_stratum, failure_estimate
from .runner import CampaignRunner, resume, run
from .samplers import Sampler, Scenarios
from .space import FaultSpace
from .spec import CampaignSpec, DataSpec, FaultSpec, ModelSpec, OutcomeSpec, RunSpec, SamplerSpec, SiteSpec, load_spec, spec_from_dict
from .store import Store

__all__ = [
    "OUTCOMES", "AccuracyDrop", "CampaignRunner", "CampaignSpec", "Criterion", "DataSpec", "Deviation", "Evaluator", "FaultSpace",
    "FaultSpec", "Golden", "ModelSpec", "OutcomeSpec", "RunSpec", "Sampler", "SamplerSpec", "Scenarios", "SerialExecutor", "SiteSpec",
    "Store", "Top1", "TopK", "by_stratum", "criterion_from_spec", "criterion_names", "failure_estimate", "load_spec", "make_executor",
    "register_criterion", "resume", "run", "spec_from_dict",
]
