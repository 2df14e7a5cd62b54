"""Statistical samplers against exhaustive fault injection on a space small enough to enumerate."""

import numpy as np
import pandas as pd
import pytest

import resil.campaign as rc
from resil.campaign.runner import CampaignRunner
from resil.campaign.samplers import ImportanceSampler, StatisticalSampler
from resil.campaign.sensitivity import sensitivity_scores

SITES = rc.SiteSpec(include=("fc2.bias", "conv1.bias", "fc1.bias"))
DATA = rc.DataSpec(inputs=32)
BITS = rc.FaultSpec(bits=(26, 27, 28, 29, 30, 31))  # sign and high exponent bits: many failures


@pytest.fixture(scope="module")
def exhaustive(tmp_path_factory):
    """Every location of the space once: the truth."""
    out = tmp_path_factory.mktemp("exhaustive")
    spec = rc.CampaignSpec(sites=SITES, data=DATA, faults=BITS, sampler=rc.SamplerSpec(kind="exhaustive"), run=rc.RunSpec(shard_size=200))
    df = rc.run(spec, out).table().to_pandas()
    rate = float((df.critical + df.non_finite).sum() / df.inputs.sum())
    assert 0.05 < rate < 0.95, rate  # a biased sampler (e.g. missing the high bits) would leave the margin
    return spec, df, rate


def lookup(df: pd.DataFrame, sc) -> pd.DataFrame:
    """The rows of drawn scenarios, taken from the exhaustive table (outcomes are deterministic)."""
    key = {(s[0], i[0], m[0]): r for r, (s, i, m) in enumerate(zip(df.fault_sites, df.fault_indices, df.fault_masks, strict=True))}
    names = np.array(sc.faults.site_names)[sc.faults.site]
    rows = [key[(n, int(i), int(m))] for n, i, m in zip(names, sc.faults.index, sc.faults.mask, strict=True)]
    return df.iloc[rows].assign(scenario=sc.ids, stratum=sc.stratum.astype(str), weight=sc.weight).reset_index(drop=True)


def estimate_from(rows: pd.DataFrame, manifest: dict, tmp_path, name: str) -> rc.failure_estimate:
    store = rc.Store(tmp_path / name)
    store.create({**manifest, "scenarios": len(rows), "shard_size": len(rows)})  # one shard holds every row
    store.write(0, {c: rows[c].tolist() for c in rows.columns})
    return rc.failure_estimate(store)


@pytest.mark.parametrize("granularity", ["network", "layer_bit"])
def test_sfi_is_within_its_margin_of_exhaustive_fi_in_95_percent_of_seeds(exhaustive, tmp_path, granularity):
    spec, df, truth = exhaustive
    runner = CampaignRunner(spec)
    sampler_spec = rc.SamplerSpec(kind="sfi", margin=0.05, confidence=0.95, granularity=granularity)
    inside = 0
    seeds = 60
    for seed in range(seeds):
        sampler = StatisticalSampler(sampler_spec, runner.space, runner.fault_model, seed)
        rows = lookup(df, sampler.draw(np.arange(sampler.count())))
        manifest = {**runner.manifest(), "sampler": "sfi", "strata": sampler.strata(), "spec_hash": f"s{seed}{granularity}"}
        est = estimate_from(rows, manifest, tmp_path, f"{granularity}-{seed}")
        inside += abs(est.value - truth) <= 0.05
    assert inside >= 0.95 * seeds


def test_sfi_campaign_run_matches_the_lookup(exhaustive, tmp_path):
    _, df, _ = exhaustive
    sfi = rc.CampaignSpec(sites=SITES, data=DATA, faults=BITS, sampler=rc.SamplerSpec(kind="sfi", margin=0.05, confidence=0.95))
    ran = rc.run(sfi, tmp_path / "sfi").table().to_pandas()
    runner = CampaignRunner(sfi)
    again = lookup(df, runner.sampler.draw(np.arange(runner.scenarios)))
    assert ran.critical.tolist() == again.critical.tolist() and ran.masked.tolist() == again.masked.tolist()
    # Leveugle for N = (10 + 16 + 64) x 6 = 540 locations at e = 5%, 95% (t = 1.96): n = N / (1 + e^2 (N - 1) / (t^2 / 4))
    n = 540 / (1 + 0.05**2 * 539 / (1.959963984540054**2 * 0.25))
    assert len(ran) == int(np.ceil(n))


def test_importance_sampling_interval_covers_exhaustive_and_agrees_with_uniform(exhaustive, tmp_path):
    spec, df, truth = exhaustive
    runner = CampaignRunner(spec)
    scores = sensitivity_scores(runner.model, runner.inputs, runner.golden.top1, runner.space)
    covered, estimates = 0, []
    for seed in range(20):
        sampler = ImportanceSampler(rc.SamplerSpec(kind="importance", scenarios=200), runner.space, runner.fault_model, seed, scores)
        rows = lookup(df, sampler.draw(np.arange(200)))
        est = estimate_from(rows, {**runner.manifest(), "sampler": "importance", "spec_hash": f"is{seed}"}, tmp_path, f"is-{seed}")
        covered += est.low <= truth <= est.high
        estimates.append(est.value)
    assert covered >= 17  # 95% intervals: at least 85% of 20 runs
    uniform = rc.run(rc.CampaignSpec(sites=SITES, data=DATA, faults=BITS, sampler=rc.SamplerSpec(kind="uniform", scenarios=400)),
                     tmp_path / "u")
    u = rc.failure_estimate(uniform)
    assert u.low <= np.mean(estimates) <= u.high  # the same answer as uniform sampling
    assert abs(np.mean(estimates) - truth) < 0.02


def test_importance_sampling_campaign_runs_end_to_end(tmp_path):
    spec = rc.CampaignSpec(sites=SITES, data=DATA, faults=BITS, sampler=rc.SamplerSpec(kind="importance", scenarios=50))
    est = rc.failure_estimate(rc.run(spec, tmp_path / "is"))
    assert 0 <= est.low <= est.value <= est.high <= 1 and est.n == 50


def test_data_aware_sfi_skips_stuck_at_equal_to_the_stored_bit(tmp_path):
    spec = rc.CampaignSpec(sites=rc.SiteSpec(include=("fc2.bias",)), data=DATA, faults=rc.FaultSpec(model='stuck_at:{"value": 1}'),
                           sampler=rc.SamplerSpec(kind="sfi", margin=0.05, confidence=0.95, data_aware=True))
    runner = CampaignRunner(spec)
    bias = runner.model.fc2.bias.detach().numpy().view(np.uint32)
    ones = sum(int(b >> k) & 1 for b in bias for k in range(32))  # stored 1s: stuck-at-1 is masked there
    (info,) = runner.sampler.strata().values()
    assert info["known_masked"] == ones and info["population"] == 320
    sc = runner.sampler.draw(np.arange(runner.scenarios))
    stored = (bias[sc.faults.index] >> np.log2(sc.faults.mask).astype(np.uint32)) & 1
    assert (stored == 0).all()  # only locations where stuck-at-1 changes the bit are simulated
    est = rc.failure_estimate(rc.run(spec, tmp_path / "da"))
    assert 0 <= est.value <= 1
