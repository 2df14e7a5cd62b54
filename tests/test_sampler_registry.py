"""Samplers registered per kind and fault models known by their declared traits: a sampler and a
fault model defined here only get the treatment of the built-in ones."""

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import torch

import resil
import resil.campaign as rc
from resil.campaign.runner import CampaignRunner
from resil.campaign.samplers import Sampler, Scenarios, register_sampler, rng_for, sampler_class
from resil.report import Campaign, load_campaign, summary
from resil.report import by_group as report_by_group
from resil.statistics import Estimate, combine_strata

SITES = rc.SiteSpec(include=("fc2.bias",))
DATA = rc.DataSpec(inputs=16)


@register_sampler
class SystematicSampler(Sampler):
    """Every ``step``-th location from a seeded offset, without replacement (``scenarios`` of them)."""

    kind = "systematic"
    own_estimate = True

    @property
    def step(self) -> int:
        return max(self.space.total // self.spec.scenarios, 1)

    @classmethod
    def check(cls, spec: rc.SamplerSpec) -> str | None:
        return None if spec.faults_per_scenario == 1 else "[sampler] kind 'systematic' draws single faults"

    @classmethod
    def estimate(cls, manifest: Mapping[str, Any], table: pd.DataFrame, confidence: float = 0.95, *,
                 sequential: bool = False) -> Estimate:
        """One stratum sampled without replacement: the stratified estimator over the whole space."""
        fraction = ((table.critical + table.non_finite) / table.inputs).to_numpy()
        return combine_strata(np.array([fraction.sum()]), np.array([len(fraction)]), np.array([manifest["space"]]), confidence)

    def count(self) -> int:
        return min(self.spec.scenarios, self.space.total)

    def draw(self, ids: np.ndarray) -> Scenarios:
        offset = int(rng_for(self.seed, 0).integers(self.step))
        return self._scenarios(ids, [np.array([offset + i * self.step]) for i in ids])

    def manifest(self) -> dict[str, Any]:
        return {**super().manifest(), "step": self.step}


def systematic(scenarios: int = 100, **kw: Any) -> rc.CampaignSpec:
    return rc.CampaignSpec(sites=SITES, data=DATA, faults=rc.FaultSpec(bits=(29, 30, 31)),
                           sampler=rc.SamplerSpec(kind="systematic", scenarios=scenarios, **kw), run=rc.RunSpec(shard_size=7))


def test_a_sampler_of_one_class_runs_a_campaign_and_is_reported(tmp_path):
    assert sampler_class("systematic") is SystematicSampler
    store = rc.run(systematic(7), tmp_path / "sys")
    manifest = store.manifest()
    assert manifest["sampler"] == "systematic" and manifest["step"] == 4  # fc2.bias: 10 values x 3 bits = 30 locations
    df = store.table().to_pandas()
    assert len(df) == 7 and df.scenario.tolist() == list(range(7))
    # scenario i is location offset + 4 i of the space (element-major, then bits 29, 30, 31)
    offset = int(np.random.default_rng([0, 0]).integers(4))
    locations = offset + 4 * np.arange(7)
    assert df.fault_indices.map(lambda v: v[0]).tolist() == (locations // 3).tolist()
    assert df.bit.tolist() == (29 + locations % 3).tolist()
    # its estimator is what failure_estimate and the report's summary use (not by_group's mean over scenarios)
    fraction = ((df.critical + df.non_finite) / df.inputs).to_numpy()
    est = rc.failure_estimate(store)
    assert est.value == pytest.approx(fraction.mean())
    row = summary([load_campaign(tmp_path / "sys")]).iloc[0]
    assert (row.sampler, row.failure, row.failure_low, row.failure_high, row.failure_method) == (
        "systematic", est.value, est.low, est.high, est.method)
    plain = report_by_group(Campaign("sys", manifest, df), []).iloc[0]
    assert plain.failure == pytest.approx(est.value) and 0 < est.value < 1
    assert (plain.failure_low, plain.failure_high, plain.failure_method) != (est.low, est.high, est.method)


def test_a_registered_sampler_checks_its_own_fields_and_is_listed():
    with pytest.raises(resil.FaultError, match="kind 'systematic' draws single faults"):
        systematic(faults_per_scenario=2)
    with pytest.raises(resil.FaultError, match=r"kind must be one of exhaustive, uniform, ber, sfi, importance, .*systematic"):
        rc.CampaignSpec(sampler=rc.SamplerSpec(kind="nope"))
    with pytest.raises(resil.FaultError, match="stop_margin applies to the uniform, ber and sfi samplers, not 'systematic'"):
        rc.CampaignSpec(sampler=rc.SamplerSpec(kind="systematic", stop_margin=0.05, max_scenarios=500))


def test_a_sampler_needs_a_kind():
    class Nameless(Sampler):
        pass

    with pytest.raises(resil.FaultError, match="declares no kind"):
        register_sampler(Nameless)


def test_explicit_scenarios_beside_stop_margin_is_refused_in_python_as_in_toml(tmp_path):
    adaptive = {"stop_margin": 0.05, "max_scenarios": 500}
    for scenarios in (1000, 200):  # 1000 is the default's value: given explicitly, it is still given
        with pytest.raises(resil.FaultError, match=r"scenarios.*or stop_margin, not both"):
            rc.CampaignSpec(sampler=rc.SamplerSpec(scenarios=scenarios, **adaptive))
    spec = rc.CampaignSpec(sampler=rc.SamplerSpec(**adaptive))  # left at its default: accepted
    assert spec.sampler.scenarios == 1000 and not spec.sampler.scenarios_given
    again = rc.spec_from_dict(json.loads(json.dumps(spec.to_dict())))  # a stored manifest's spec holds every field
    assert again.hash() == spec.hash() and again == spec
    assert dataclasses.replace(spec.sampler, stop_margin=0.02).stop_margin == 0.02
    path = tmp_path / "c.toml"
    path.write_text("version = 1\n[sampler]\nscenarios = 1000\nstop_margin = 0.05\nmax_scenarios = 500\n")
    with pytest.raises(resil.FaultError, match=r"c.toml: \[sampler\] give either scenarios or stop_margin"):
        rc.load_spec(path)


@resil.register_fault_model("test_stuck_high")
@dataclass(frozen=True)
class StuckHigh(resil.FaultModel):
    """Forces the named bits to 1, declared by traits only (no subclass of StuckAt)."""

    deterministic: ClassVar[bool] = True
    can_leave_unchanged: ClassVar[bool] = True

    @property
    def stuck_value(self) -> int:
        return 1

    def apply(self, codes: torch.Tensor, mask: torch.Tensor, encoding: resil.encodings.Encoding) -> torch.Tensor:
        return codes | mask


@resil.register_fault_model("test_stuck_high_undeclared")
@dataclass(frozen=True)
class StuckHighUndeclared(resil.FaultModel):
    """The same faults without the traits."""

    def apply(self, codes: torch.Tensor, mask: torch.Tensor, encoding: resil.encodings.Encoding) -> torch.Tensor:
        return codes | mask


def stored_ones(runner: CampaignRunner) -> np.ndarray:
    """Per location of the fc2.bias space (element-major, bits 0..31): whether the stored bit is 1."""
    bias = runner.model.fc2.bias.detach().numpy().view(np.uint32)
    return np.array([(int(b) >> k) & 1 for b in bias for k in range(32)], dtype=bool)


def test_a_user_fault_model_declaring_a_stuck_value_gets_data_aware_sampling():
    spec = rc.CampaignSpec(sites=SITES, data=DATA, faults=rc.FaultSpec(model="test_stuck_high"),
                           sampler=rc.SamplerSpec(kind="sfi", margin=0.05, confidence=0.95, data_aware=True))
    runner = CampaignRunner(spec)
    (info,) = runner.sampler.strata().values()
    assert info["known_masked"] == int(stored_ones(runner).sum()) and info["population"] == 320
    with pytest.raises(resil.FaultError, match="data_aware applies to stuck-at fault models only"):
        dataclasses.replace(spec, faults=rc.FaultSpec(model="test_stuck_high_undeclared"))


@pytest.mark.parametrize("model, shortcut", [("test_stuck_high", True), ("test_stuck_high_undeclared", False)])
def test_a_user_fault_model_declaring_it_can_leave_codes_unchanged_is_masked_without_a_forward_pass(tmp_path, model, shortcut):
    spec = rc.CampaignSpec(sites=SITES, data=DATA, faults=rc.FaultSpec(model=model), sampler=rc.SamplerSpec(kind="exhaustive"),
                           run=rc.RunSpec(shard_size=400))
    runner = CampaignRunner(spec)
    counts = runner.run_shard(0)
    ones = stored_ones(runner)
    assert runner.evaluator.runs == (int((~ones).sum()) if shortcut else 320)  # stored 1s: nothing changes
    assert (counts["masked"][ones] == 16).all()  # the same outcome either way
