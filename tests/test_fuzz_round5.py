"""Wrong fast answers and crashes found by fuzzing fast mode against plain mode (session 10), each
against the plain loop as the oracle:

- faults in the model's own parameters and buffers (a bare ``nn.Parameter``, input-normalisation
  buffers) were traced with no target, so fast mode replayed golden outputs and called them masked;
- a batch-level guard that only extreme values trip (``torch.where(h.abs().amax() > 1e5, 0, h)``,
  a gate on ``h.mean(0) > -1e3``) let stacked scenarios trip it for each other: the probes now hold
  an extreme row (``grouped.extreme``) and per-sample isolation tries extreme and NaN inputs;
- a BatchNorm on batch statistics cannot run one input (the data-flow trace tried), and
  ``torch.inference_mode`` inside a forward made tensors without version counters: both crashed.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import resil.campaign as rc


def _tables(make: Callable[[], nn.Module], kinds: tuple[str, ...], scenarios: int = 150, per_sample: bool = False,
            bits: tuple[int, ...] | None = None, batch_size: int = 32, inputs: int = 80,
            data: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, pd.DataFrame]:
    """Plain and fast tables of one campaign (``data``, or seeded random [inputs, 10] rows and labels)."""
    torch.manual_seed(12)
    data = data if data is not None else (torch.randn(inputs, 10), torch.randint(0, 4, (inputs,)))
    faults = rc.FaultSpec(per_sample=per_sample, **({"bits": bits} if bits else {}))
    out = {}
    for mode in ("plain", "fast"):
        torch.manual_seed(0)
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=scenarios), sites=rc.SiteSpec(kinds=kinds),
                               faults=faults, run=rc.RunSpec(mode=mode, shard_size=scenarios, batch_size=batch_size))
        out[mode] = pd.DataFrame(rc.CampaignRunner(spec, make().eval(), data).run_shard(0))
    return out


class RootParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(10, 10) * 0.3)  # the model's own, used before any submodule
        self.o = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(torch.relu(x @ self.w))


class RootBuffers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mu", torch.randn(10) * 0.1)
        self.register_buffer("sd", torch.rand(10) + 0.5)
        self.l, self.o = nn.Linear(10, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(torch.relu(self.l((x - self.mu) / self.sd)))


@pytest.mark.parametrize(("make", "kind"), [(RootParameter, "parameter"), (RootBuffers, "buffer")])
def test_faults_in_the_models_own_tensors_reach_what_reads_them_and_fast_equals_plain(make, kind):
    t = _tables(make, (kind,), 60)
    assert int(t["plain"]["critical"][1:].sum()) > 0  # the premise: later scenarios are not all masked
    pd.testing.assert_frame_equal(t["fast"], t["plain"])


class GuardWhere(nn.Module):
    """Zeroes the whole batch's features once any activation in the batch passes 1e5."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.o = nn.Linear(10, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.a(x))
        h = torch.where(h.abs().amax() > 1e5, torch.zeros_like(h), h)
        return self.o(F.relu(self.b(h)))


class BatchGate(GuardWhere):
    """Gates each feature by its batch mean, which only an extreme negative value moves past -1e3."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.o(F.relu(self.b(F.relu(h) * (h.mean(0) > -1e3))))


@pytest.mark.parametrize("make", [GuardWhere, BatchGate])
@pytest.mark.parametrize(("kinds", "per_sample"), [(("weight", "bias"), False), (("activation",), False), (("activation",), True)])
def test_a_batch_guard_only_extreme_values_trip_is_not_stacked_nor_gathered_and_fast_equals_plain(make, kinds, per_sample):
    torch.manual_seed(0)
    net, x = make().eval(), torch.randn(32, 10)
    with torch.no_grad():  # the premise: ordinary perturbations (2x + 1, x 1e4) of one input leave the others alone
        for change in (lambda t: 2 * t + 1, lambda t: t * 1e4):
            moved = x.clone()
            moved[0] = change(x[0])
            assert torch.equal(net(moved)[1:], net(x)[1:])
    t = _tables(make, kinds, 200, per_sample=per_sample, bits=(30,))
    pd.testing.assert_frame_equal(t["fast"], t["plain"])


class BatchStatistics(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.bn, self.l3 = nn.Linear(10, 16), nn.BatchNorm1d(16, track_running_stats=False), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(F.relu(self.bn(self.l1(x))))


class InferenceInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.o = nn.Linear(10, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.o(torch.relu(self.a(x)))


@pytest.mark.parametrize("make", [BatchStatistics, InferenceInside])
def test_models_that_cannot_run_one_input_or_make_inference_tensors_run_and_fast_equals_plain(make):
    t = _tables(make, ("weight",), 80, inputs=70)
    pd.testing.assert_frame_equal(t["fast"], t["plain"])


def _upsampling_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, dilation=2, padding=2), nn.GroupNorm(3, 6), nn.SiLU(), nn.Upsample(scale_factor=2),
                         nn.Conv2d(6, 6, 3, stride=2, groups=3), nn.AdaptiveMaxPool2d(3), nn.Flatten(), nn.Linear(54, 5),
                         nn.LogSoftmax(-1)).eval()


def test_per_sample_rows_gather_into_at_least_four_rows_and_fast_equals_plain(tmp_path):
    torch.manual_seed(15)
    x, y = torch.randn(47, 3, 8, 8), torch.randint(0, 5, (47,))
    net = _upsampling_cnn()
    with torch.no_grad():  # the premise, by torch alone: one input alone computes other bits than in its batch of 15
        assert not torch.equal(net(x[33:34])[0], net(x[32:47])[1])
    out = {}
    for mode in ("plain", "fast"):
        spec = rc.CampaignSpec(name=mode, sampler=rc.SamplerSpec(kind="uniform", scenarios=200), sites=rc.SiteSpec(kinds=("activation",)),
                               faults=rc.FaultSpec(per_sample=True), run=rc.RunSpec(mode=mode, batch_size=16))
        store = rc.run(spec, tmp_path / mode, model=_upsampling_cnn(), data=(x, y), progress=False)
        out[mode] = store.table().to_pandas().sort_values("scenario").reset_index(drop=True)
    pd.testing.assert_frame_equal(out["fast"], out["plain"])


class MaxNormEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.e, self.o = nn.Embedding(30, 8, max_norm=1.0), nn.Linear(8, 3)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.o(self.e(t).mean(1))


class ArgmaxCode(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.argmax(-1)


class Quantised(nn.Module):
    """A submodule returning integer indices, embedded again."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.q, self.e, self.o = nn.Linear(10, 8), ArgmaxCode(), nn.Embedding(8, 12), nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(self.e(self.q(self.a(x))))


class Squeezing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.fc = nn.Conv2d(3, 4, 8), nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.c(x)).squeeze())


class Scripted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b, self.o = torch.jit.script(nn.Linear(10, 10)), nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(self.b(x))


def test_integer_outputs_are_no_activation_sites():
    import resil

    names = [s.name for s in resil.sites(Quantised().eval(), torch.randn(2, 10)) if s.kind == "activation"]
    assert "q:out" not in names and {"a:out", "e:out", "o:out"} <= set(names)


@pytest.mark.parametrize(("make", "data", "words"), [
    (MaxNormEmbedding, lambda: torch.randint(0, 30, (60, 5)), ("changes its own parameters in place", "e.weight", "max_norm")),
    (Squeezing, lambda: torch.randn(65, 3, 8, 8), ("batch of 1 input is (5,)", "squeeze")),
    (Scripted, lambda: torch.randn(40, 10), ("b is a TorchScript module", "eager")),
])
def test_models_fast_mode_cannot_follow_are_refused_naming_the_cause_before_anything_is_written(tmp_path, make, data, words):
    from resil.errors import FaultError

    torch.manual_seed(0)
    spec = rc.CampaignSpec(name="bad", sampler=rc.SamplerSpec(kind="uniform", scenarios=20), sites=rc.SiteSpec(kinds=("weight",)),
                           run=rc.RunSpec(batch_size=32))
    with pytest.raises(FaultError) as e:
        rc.run(spec, tmp_path / "run", model=make().eval(), data=data(), progress=False)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert not (tmp_path / "run").exists()


# -- round 2 of session 10: guards a whole faulty scenario trips, NaN guards, keyword calls -----------


class ScenarioGuard(nn.Module):
    """A batch-level guard that one extreme row does not trip but a weight fault (a column huge in
    every input of its scenario) does."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.a, self.b, self.c = how, nn.Linear(10, 12), nn.Linear(12, 12), nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(torch.relu(self.a(x)))
        if self.how == "median":  # per-feature outliers replaced by the batch median
            m = h.median(dim=0).values
            h = torch.where(h.abs() > 50 * (m.abs() + 1), m, h)
        elif self.how == "isinf":
            h = torch.where(torch.isinf(h).any(), torch.zeros_like(h), h)
        elif self.how == "finite":
            h = torch.where(~torch.isfinite(h).all(), torch.zeros_like(h), h)
        elif self.how == "nan-feature":
            h = torch.where(torch.isnan(h).any(dim=0), 0.0, h)
        elif self.how == "majority":  # clamp once most rows hold an outlier
            h = torch.where((h.abs() > 100).any(1).float().mean() > 0.5, h.clamp(-100, 100), h)
        elif self.how == "saturated":  # a feature saturated over the whole batch is dropped
            t = torch.tanh(h)
            h = torch.where((t.abs() > 0.999).all(dim=0), 0.0, t)
        return self.c(torch.relu(h))


@pytest.mark.parametrize("how", ["median", "isinf", "finite", "nan-feature", "majority", "saturated"])
def test_a_batch_guard_a_whole_faulty_scenario_or_nan_trips_is_not_stacked_and_fast_equals_plain(how):
    t = _tables(lambda: ScenarioGuard(how), ("weight", "bias", "activation"), 200, bits=(30,), inputs=64)
    pd.testing.assert_frame_equal(t["fast"], t["plain"])


class HalfGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(10, 12), nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.b(torch.where(h.mean(0) > -1e3, h, -h))


def test_a_float16_batch_gate_is_not_stacked_and_fast_equals_plain():
    torch.manual_seed(3)
    data = (torch.randn(64, 10) * 3).half(), torch.randint(0, 4, (64,))
    t = _tables(lambda: HalfGate().half(), ("weight", "activation"), 200, bits=(14,), data=data)
    pd.testing.assert_frame_equal(t["fast"], t["plain"])


class KeywordCalls(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.fc = nn.Linear(10, 12), nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(input=torch.relu(self.a(x)))


def test_a_layer_called_with_its_input_as_a_keyword_runs_and_fast_equals_plain():
    t = _tables(KeywordCalls, ("weight", "activation"), 150)
    pd.testing.assert_frame_equal(t["fast"], t["plain"])


@pytest.mark.parametrize(("batch_size", "inputs"), [(2, 9), (3, 10), (5, 21)])
def test_per_sample_faults_on_an_input_alone_in_the_last_batch_equal_plain(batch_size, inputs):
    torch.manual_seed(5)
    data = torch.randn(inputs, 10), torch.randint(0, 4, (inputs,))

    def mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5))

    t = _tables(mlp, ("activation",), 150, per_sample=True, batch_size=batch_size, data=data)
    pd.testing.assert_frame_equal(t["fast"], t["plain"])
