"""The same code (faults built from resil.sites, inject, evaluate) runs on every reference model."""

import numpy as np
import pytest
import torch

import resil
import resil.models as rm


def evaluate(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", rm.names())
def test_the_same_campaign_code_runs_on_every_reference_model(name):
    model, x = rm.load(name), rm.dataset(name).x_test[:32]
    rng = np.random.default_rng(0)
    golden = evaluate(model, x)
    for policy in ("live", "dense"):
        sites = resil.sites(model, x[:2], pruned=policy)
        stored = [s for s in sites if s.kind in ("weight", "bias")]
        assert stored and any(s.kind == "activation" or s.kind == "state" for s in sites)

        # must change: the most significant bit of 50 weights per stored site
        picks = [(s, rng.choice(s.elements(), min(50, s.size))) for s in stored]
        msb = resil.FaultSet.concat([resil.FaultSet(site=s.name, index=idx, bit=s.bits - 2 if s.bits == 32 else s.bits - 1)
                                     for s, idx in picks])
        with resil.inject(model, msb, sites=sites):
            assert not torch.equal(evaluate(model, x), golden)

        # cannot change: stuck-at equal to the stored bit, on every stored site
        for s, idx in picks:
            bit = rng.integers(0, s.bits, len(idx))
            stored_bits = ((s.codes()[torch.from_numpy(idx)].numpy() >> bit) & 1).astype(int)
            same = resil.FaultSet(site=s.name, index=idx, bit=bit, model=[resil.StuckAt(int(v)) for v in stored_bits])
            with resil.inject(model, same, sites=sites):
                assert torch.equal(evaluate(model, x), golden), s.name

        # pruned cells: impossible under "live", a real stored zero under "dense"
        pruned_sites = 0
        for s in stored:
            dense_site = resil.sites(model, pruned="dense")[s.name]
            dead = np.setdiff1d(dense_site.elements(), resil.sites(model)[s.name].elements())
            if not len(dead):
                continue
            pruned_sites += 1
            fault = resil.FaultSet(site=s.name, index=dead[:20], bit=30)
            if policy == "live":
                with pytest.raises(resil.FaultError, match="is not stored"), resil.inject(model, fault, sites=sites):
                    pass
            else:
                with resil.inject(model, fault, sites=sites):
                    assert not torch.equal(evaluate(model, x), golden)
        assert (pruned_sites > 0) == name.startswith("pruned-")
        assert torch.equal(evaluate(model, x), golden)  # restored after every block
