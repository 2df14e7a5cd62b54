"""Guards that keep the fast mode right: batch-coupled models, nondeterministic models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import resil
import resil.campaign as rc


class BatchMax(nn.Module):
    """Normalises by the largest magnitude over the whole batch: samples depend on each other."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.abs().amax().clamp_min(1e-12)


def coupled_sequential() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), BatchMax(), nn.Linear(12, 4)).eval()


class CoupledNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.norm, self.c = nn.Linear(6, 12), nn.Linear(12, 12), BatchMax(), nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.norm(self.b(torch.relu(self.a(x)))))


def table(store: rc.Store) -> pd.DataFrame:
    return store.table().to_pandas().drop(columns=["fault_sites", "fault_indices", "fault_masks"])


@pytest.mark.parametrize("make", [coupled_sequential, CoupledNet])
def test_a_model_that_mixes_the_batch_gets_the_plain_answer(tmp_path, make):
    torch.manual_seed(1)
    x, y = torch.randn(40, 6), torch.randint(0, 4, (40,))

    def spec(mode: str) -> rc.CampaignSpec:
        return rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=150), sites=rc.SiteSpec(kinds=("weight", "activation")),
                               run=rc.RunSpec(mode=mode, shard_size=150))

    fast = table(rc.run(spec("fast"), tmp_path / "fast", model=make().eval(), data=(x, y)))
    plain = table(rc.run(spec("plain"), tmp_path / "plain", model=make().eval(), data=(x, y)))
    pd.testing.assert_frame_equal(fast, plain)
    # the oracle for one scenario: a full faulty forward by hand
    model = make().eval()
    row = rc.Store(tmp_path / "fast").table().to_pandas().iloc[0]
    fs = resil.FaultSet(site=row.fault_sites, index=row.fault_indices, bit=[int(m).bit_length() - 1 for m in row.fault_masks])
    with torch.no_grad():
        golden = model(x)
        with resil.inject(model, fs, sites=resil.sites(model, x[:2])):
            out = model(x)
    finite = torch.isfinite(out).all(1)
    assert row.critical == int(((out.argmax(1) != golden.argmax(1)) & finite & ~(out == golden).all(1)).sum())


def test_the_probe_perturbs_the_second_and_the_last_copy():
    from resil.campaign.grouped import Probe

    t = torch.tensor([[1.0, -2.0, 4.0], [3.0, 0.5, 1.0]])
    big = float(np.finfo(np.float32).max)  # the last perturbed row holds extreme values, negated at every third element
    extreme = torch.tensor([[big, big, -big]])
    assert torch.equal(Probe.copies(2, 4).batch(t), torch.cat([t, t * 2 + 1, t, t[:1] * 2 + 1, extreme]))
    probe = Probe.copies(2, 3)
    stacked = probe.batch(t)
    assert torch.equal(stacked[:2], t) and torch.equal(stacked[2:], torch.cat([t * 2 + 1, t[:1] * 2 + 1, extreme]))
    relu = torch.relu
    assert probe.matches(relu(stacked), relu(t), relu(probe.alone(t)))  # a per-sample layer passes
    assert not probe.matches(BatchMax()(stacked), BatchMax()(t), BatchMax()(probe.alone(t)))  # the batch maximum moved


def _by_parity(x: torch.Tensor) -> torch.Tensor:
    """Row sums of non-negative rows, computed otherwise on odd rows (max + min): equal on rows with
    one non-zero term, unequal on denser ones; a stand-in for a kernel whose result depends on the
    row's position only for some values (MKL's GEMM sums in another order on odd rows)."""
    odd = torch.arange(len(x)) % 2 == 1
    return torch.where(odd, x.amax(1) + x.amin(1), x.sum(1)).unsqueeze(1)


def _row_sums(x: torch.Tensor) -> torch.Tensor:
    return x.sum(1).unsqueeze(1)


def test_the_probe_catches_a_kernel_whose_result_depends_on_the_row_position():
    from resil.campaign.grouped import Probe

    sparse = torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.7, 0.0], [0.0, 0.0, 0.3], [0.9, 0.0, 0.0]])  # one term per row: any order agrees
    golden = _by_parity(sparse)
    moved = torch.tensor([1, 2, 3, 0, 1, 2])
    assert torch.equal(_by_parity(sparse[moved]), golden[moved])  # golden rows alone cannot tell
    dense = sparse * 2 + 1
    assert not torch.equal(dense.sum(1), dense.amax(1) + dense.amin(1))  # the premise: perturbed rows can tell
    for probe, x in ((Probe.gathered(4, 6), sparse), (Probe.copies(3, 2), sparse[:3])):  # shifted by one; by three rows
        assert not probe.matches(_by_parity(probe.batch(x)), _by_parity(x), _by_parity(probe.alone(x)))
        assert probe.matches(_row_sums(probe.batch(x)), _row_sums(x), _row_sums(probe.alone(x)))
    even = Probe.copies(4, 3)  # offsets of 4 and 8 rows keep every row's parity: stacking is exact there
    assert even.matches(_by_parity(even.batch(sparse)), golden, _by_parity(even.alone(sparse)))


def dropout_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))


def test_a_nondeterministic_model_is_refused_before_anything_is_written(tmp_path):
    x, y = torch.randn(30, 6), torch.randint(0, 3, (30,))
    spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=20))
    with pytest.warns(UserWarning, match="training mode"), pytest.raises(resil.FaultError, match=r"different outputs.*training mode"):
        rc.run(spec, tmp_path / "refused", model=dropout_net().train(), data=(x, y))
    assert not (tmp_path / "refused").exists()


class RunningMean(nn.Module):
    """An eval-mode model whose forward updates a buffer of its own: each run sees the last one's state."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.register_buffer("mean", torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        self.mean.mul_(0.9).add_(0.1 * y.mean(0))
        return y - self.mean


def test_a_model_that_updates_its_own_buffer_is_refused_naming_it(tmp_path):
    x, y = torch.randn(30, 6), torch.randint(0, 3, (30,))
    spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=20))
    with pytest.raises(resil.FaultError, match=r"changes the model's own tensors \(mean"):
        rc.run(spec, tmp_path / "refused", model=RunningMean().eval(), data=(x, y))
    assert not (tmp_path / "refused").exists()


def test_nondeterminism_accepted_runs_plain_and_says_so(tmp_path):
    x, y = torch.randn(30, 6), torch.randint(0, 3, (30,))
    spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=20), run=rc.RunSpec(nondeterministic=True))
    with pytest.warns(UserWarning, match="training mode"):
        store = rc.run(spec, tmp_path / "accepted", model=dropout_net().train(), data=(x, y))
    m = store.manifest()
    assert m["mode"] == "plain" and m["nondeterministic"] is True and store.table().num_rows == 20
    # in eval mode the same network is deterministic and keeps the fast path
    det = rc.run(spec, tmp_path / "eval", model=dropout_net().eval(), data=(x, y)).manifest()
    assert det["mode"] == "fast" and det["nondeterministic"] is False


class HookSensitive(nn.Module):
    """Takes another arithmetic path while a child has forward hooks, as nn.TransformerEncoderLayer
    leaves its fused fast path when hooks are attached."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.a, self.b = nn.Linear(5, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.b._forward_hooks or self.b._forward_pre_hooks:
            h = (h * 3.0) / 3.0  # the same values up to rounding
        return self.b(h)


def test_a_model_whose_bits_change_under_hooks_runs_plain_with_a_warning_not_a_refusal():
    torch.manual_seed(7)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    net = HookSensitive().eval()
    with torch.no_grad():
        plain_out = net(x)
        handle = net.b.register_forward_hook(lambda m, a, o: None)
        hooked = net(x)
        handle.remove()
    assert not torch.equal(plain_out, hooked)  # the premise: hooks change the bits
    tables = {}
    for mode in ("fast", "plain"):
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=60), run=rc.RunSpec(mode=mode, shard_size=60))
        if mode == "fast":
            with pytest.warns(RuntimeWarning, match="fast mode is off"):
                runner = rc.CampaignRunner(spec, HookSensitive().eval(), (x, y))
            assert runner.evaluator.mode == "plain" and "hooks" in runner.manifest()["fast_off"]
            assert torch.equal(runner.evaluator.golden.output, plain_out)
        else:
            runner = rc.CampaignRunner(spec, HookSensitive().eval(), (x, y))
            assert runner.manifest()["fast_off"] is None
        tables[mode] = pd.DataFrame(runner.run_shard(0))
    pd.testing.assert_frame_equal(tables["fast"], tables["plain"])


class LoopedSequential(nn.Sequential):
    """An nn.Sequential subclass whose own loop feeds stage 1's output back into stage 0."""

    def __init__(self) -> None:
        torch.manual_seed(8)
        super().__init__(nn.Linear(3 + 4, 6), nn.Linear(6, 4), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = torch.zeros(len(x), 4)
        for _ in range(4):
            b = torch.tanh(self[1](torch.tanh(self[0](torch.cat([x, b], 1)))))
        return self[2](b)


@pytest.mark.parametrize("kinds", [("weight", "bias"), ("activation",)])
def test_a_sequential_subclass_that_loops_back_through_its_stages_runs_as_a_module_tree(kinds):
    torch.manual_seed(9)
    x, y = torch.randn(40, 3), torch.randint(0, 3, (40,))
    tables, runners = {}, {}
    for mode in ("fast", "plain"):
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=200), sites=rc.SiteSpec(kinds=kinds),
                               run=rc.RunSpec(mode=mode, shard_size=200))
        runners[mode] = rc.CampaignRunner(spec, LoopedSequential().eval(), (x, y))
        tables[mode] = pd.DataFrame(runners[mode].run_shard(0))
    pd.testing.assert_frame_equal(tables["fast"], tables["plain"])  # stage 0 sees stage 1's faults: no stage replay
    assert runners["fast"].evaluator.replay is not None and not runners["fast"].evaluator.suffix.stages
