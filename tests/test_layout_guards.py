"""Fast == plain where kernels compute a value's bits by where it sits in its tensor, where PyTorch
skips submodules without hooks, where a module's output is not batched, and where per-sample
faults sit in a smaller last input batch (each case gave a different table, or crashed, before)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import resil.campaign as rc
from resil.campaign.layout import layout_sensitive_op


class SigmoidMLP(nn.Module):
    """Two sigmoid units: 74 elements per batch of 37, a scalar tail of 10."""

    def __init__(self) -> None:
        super().__init__()
        self.f1, self.f2 = nn.Linear(784, 2), nn.Linear(2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f2(torch.sigmoid(self.f1(x.flatten(1))))


class Regression(nn.Module):
    """One output column: MKL computes an odd batch's last row in its own path."""

    def __init__(self) -> None:
        super().__init__()
        self.f1, self.f2 = nn.Linear(784, 16), nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f2(F.relu(self.f1(x.flatten(1))))


class SqueezeExcite(nn.Module):
    """A conv with a squeeze-excitation gate (sigmoid of a pooled branch), then a SiLU head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc1, self.fc2 = nn.Conv2d(1, 6, 5, stride=2), nn.Linear(6, 3), nn.Linear(3, 6)
        self.head = nn.Linear(6 * 12 * 12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(h.mean((2, 3))))))
        return self.head(F.silu(h * gate[:, :, None, None]).flatten(1))


class Encoder(nn.Module):
    """nn.TransformerEncoderLayer: PyTorch takes its fused path, calling no submodule, when none has a hook."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Linear(28, 16), nn.Linear(16, 10)
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.emb(x.squeeze(1))).mean(1))


class Positional(nn.Module):
    """A positional table ``pos(arange(28))`` ``[28, 8]``: a module output without the batch dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.pos, self.inp, self.head = nn.Embedding(28, 8), nn.Linear(28, 8), nn.Linear(8, 10)
        self.register_buffer("positions", torch.arange(28), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.inp(x.squeeze(1)) + self.pos(self.positions)[None]).mean(1))


class PointwiseConv(nn.Module):
    """A 1x1 conv, whose last rows MKL computes apart, between 3x3 convs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.point = nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.point(F.relu(self.stem(x)))).mean((2, 3)))


def _tables(cls, data, n, kinds, scenarios=150, per_sample=False, **run):
    out = {}
    for mode in ("fast", "plain"):
        torch.manual_seed(3)
        model = cls().eval()
        labels = data[1][:n].float()[:, None] / 9 if cls is Regression else data[1][:n]
        criterion = 'deviation:{"threshold": 0.05}' if cls is Regression else "top1"
        torch.manual_seed(0)
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=scenarios), sites=rc.SiteSpec(kinds=kinds),
                               faults=rc.FaultSpec(per_sample=per_sample),
                               outcome=rc.OutcomeSpec(criterion=criterion), run=rc.RunSpec(mode=mode, shard_size=scenarios, **run))
        runner = rc.CampaignRunner(spec, model, (data[0][:n], labels))
        out[mode] = pd.DataFrame(runner.run_shard(0))
        out[mode + "_runner"] = runner
    pd.testing.assert_frame_equal(out["fast"], out["plain"])
    return out


@pytest.mark.parametrize("kinds", [("weight", "bias"), ("activation",)], ids=["weights", "outputs"])
@pytest.mark.parametrize("cls", [SigmoidMLP, Regression, SqueezeExcite], ids=lambda c: c.__name__)
def test_position_dependent_kernels_turn_stacking_off_and_fast_equals_plain(cls, kinds, mnist):
    t = _tables(cls, mnist, 37, kinds)
    assert t["fast_runner"].manifest()["stacking_off"] in {"sigmoid", "silu", "addmm"}


def test_the_layout_audit_passes_kernels_that_compute_alike_everywhere():
    torch.manual_seed(0)
    relu_net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10), nn.Tanh())
    assert layout_sensitive_op(relu_net.eval(), torch.rand(37, 1, 28, 28)) is None
    # sigmoid rows of 128 elements: no layout of whole rows leaves a tail, so no vector/scalar difference can show
    wide = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.Sigmoid(), nn.Linear(128, 10))
    assert layout_sensitive_op(wide.eval(), torch.rand(37, 1, 28, 28)) is None


@pytest.mark.parametrize("kinds", [("weight", "bias"), ("activation",)], ids=["weights", "outputs"])
@pytest.mark.parametrize("cls", [Encoder, Positional], ids=lambda c: c.__name__)
def test_fused_submodules_and_unbatched_module_outputs_run_and_fast_equals_plain(cls, kinds, mnist):
    _tables(cls, mnist, 37, kinds, scenarios=100)


def test_per_sample_faults_in_a_smaller_last_batch_match_plain(mnist):
    _tables(PointwiseConv, mnist, 37, ("activation",), scenarios=120, per_sample=True, batch_size=16)
