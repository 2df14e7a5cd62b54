"""Modules that take a fused path only without forward hooks (nn.TransformerEncoderLayer): fast mode
replays inside them with a no-op hook where both paths agree (resil/campaign/hookpaths.py), and
fast == plain whether they agree or not."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F

import resil.campaign as rc
from resil.campaign import hookpaths
from resil.campaign.dataflow import Call, CallTracker


class RowTransformer(nn.Module):
    """8x8 digits rows as tokens, a positional table of its own, ``nn.TransformerEncoder``, a head."""

    def __init__(self, heads: int = 2) -> None:
        super().__init__()
        self.embed, self.pos = nn.Linear(8, 16), nn.Embedding(8, 16)
        layer = nn.TransformerEncoderLayer(16, heads, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 10)
        self.register_buffer("positions", torch.arange(8), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x.reshape(len(x), 8, 8)) + self.pos(self.positions)).mean(1))


class Sneaky(nn.Module):
    """Calls its Linear only while hooked; without hooks it computes the Linear itself and zeroes
    values past 10, which the golden values never reach: the paths agree on golden inputs only."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._forward_pre_hooks:
            return self.lin(x)
        y = F.linear(x, self.lin.weight, self.lin.bias)
        return torch.where(y.abs() > 10, torch.zeros_like(y), y)


class SneakyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner, self.out = Sneaky(), nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.inner(x)))


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    return torch.tensor(d.data[:37], dtype=torch.float32) / 16, torch.tensor(d.target[:37])


def _tables(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], scenarios: int = 150,
            batch_size: int = 512) -> dict[str, tuple[pd.DataFrame, rc.CampaignRunner]]:
    out = {}
    for mode in ("plain", "fast"):
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=scenarios), sites=rc.SiteSpec(kinds=("weight",)),
                               run=rc.RunSpec(mode=mode, shard_size=scenarios, batch_size=batch_size))
        runner = rc.CampaignRunner(spec, model, data)
        out[mode] = (pd.DataFrame(runner.run_shard(0)), runner)
    return out


@pytest.mark.parametrize("batch_size", [512, 16])
def test_encoder_layers_replay_inside_with_a_hook_and_fast_equals_plain(digits, batch_size):
    torch.manual_seed(0)
    model = RowTransformer().eval()
    tables = _tables(model, digits, batch_size=batch_size)
    pd.testing.assert_frame_equal(tables["fast"][0], tables["plain"][0])
    replay = tables["fast"][1].evaluator.replay
    assert replay is not None and replay.hooked == list(model.encoder.layers)
    last = model.encoder.layers[1]
    assert "encoder.layers.1.self_attn" in [n for n, _ in replay.replayed([last.linear2])]
    assert replay.check([last.linear2])


def test_an_odd_head_count_takes_the_slow_path_everywhere_and_its_positional_table_is_not_gathered(digits):
    torch.manual_seed(1)
    model = RowTransformer(heads=1).eval()  # an odd head count: no fused path, with or without hooks
    tables = _tables(model, digits)
    pd.testing.assert_frame_equal(tables["fast"][0], tables["plain"][0])
    assert tables["fast"][1].evaluator.replay.hooked == []


def test_paths_that_agree_only_on_golden_values_are_not_mirrored(digits):
    torch.manual_seed(2)
    model = SneakyNet().eval()
    x = digits[0]
    with hookpaths.hooked([model.inner]):
        hooked_out = model(x)
    assert torch.equal(hooked_out, model(x))  # golden values: both paths agree
    assert [m is model.inner for m in hookpaths.hook_dependent(model, x, _golden_calls(model, x))] == [True]
    assert not hookpaths.paths_agree(model.inner, (x,), {})
    tables = _tables(model, digits, scenarios=200)
    pd.testing.assert_frame_equal(tables["fast"][0], tables["plain"][0])
    replay = tables["fast"][1].evaluator.replay
    # inside it the golden (hooked) run's calls and data flow are not a replay's: never stacked through a
    # glue traced on the hooked path (that gave bit-30 flips of inner.lin critical where plain masks them)
    assert replay.hooked == [] and replay.unfollowed == {id(model.inner.lin)}


def _golden_calls(model: nn.Module, x: torch.Tensor) -> list[Call]:
    with torch.no_grad(), CallTracker(model) as t:
        model(x)
    return t.calls
