"""Fast == plain on models written the way users write them, not as an nn.Sequential, on real
MNIST: per fault kind (weights, outputs, both), on an even batch and on an odd one, where
stacked copies shift every row's position (MKL's GEMM sums odd rows in another order)."""

from __future__ import annotations

import pandas as pd
import pytest
import snntorch as snn
import torch
from torch import nn
from torch.nn import functional as F

import resil.campaign as rc


class LeNet(nn.Module):
    """LeNet-5 with functional ReLU and pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
        self.f1, self.f2, self.f3 = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.c2(F.max_pool2d(F.relu(self.c1(x)), 2))), 2)
        return self.f3(F.relu(self.f2(F.relu(self.f1(torch.flatten(x, 1))))))


class ResBlockNet(nn.Module):
    """A residual block with BatchNorm modules, an in-place ReLU module and ``out += identity``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c1, self.b1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.relu, self.fc = nn.ReLU(inplace=True), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn0(self.stem(x)))
        out = self.b2(self.c2(self.relu(self.b1(self.c1(x)))))
        out += x
        return self.fc(F.adaptive_avg_pool2d(self.relu(out), 1).flatten(1))


class TBlock(nn.Module):
    """A transformer block written by hand: rows as tokens, attention, LayerNorm, a GELU feed-forward."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.emb, self.attn = nn.Linear(28, d), nn.MultiheadAttention(d, 2, batch_first=True)
        self.n1, self.ff1, self.ff2, self.n2 = nn.LayerNorm(d), nn.Linear(d, 32), nn.Linear(32, d), nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.emb(x.squeeze(1))
        a, _ = self.attn(x, x, x, need_weights=False)
        x = self.n1(x + a)
        x = self.n2(x + self.ff2(F.gelu(self.ff1(x))))
        return self.head(x.mean(1))


class GRUNet(nn.Module):
    """A GRU cell stepped by hand over image rows: the cell reads its own last output."""

    def __init__(self) -> None:
        super().__init__()
        self.cell, self.head = nn.GRUCell(28, 16), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.squeeze(1)
        h = torch.zeros(len(x), 16)
        for t in range(0, 28, 4):
            h = self.cell(x[:, t], h)
        return self.head(h)


class LSTMNet(nn.Module):
    """An nn.LSTM over image rows (a module returning a tuple)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.head = nn.LSTM(28, 12, batch_first=True), nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.squeeze(1))
        return self.head(out[:, -1])


class Tied(nn.Module):
    """A layer called twice, and a weight also read functionally."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(784, 32), nn.Linear(32, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.b(torch.relu(self.b(torch.relu(self.a(x.flatten(1)))))))
        return self.head(h) + F.linear(h, self.head.weight) * 0.1


class Branchy(nn.Module):
    """Two branches concatenated, a 1x1 mix, average pooling and an eval-mode dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 5, padding=2)
        self.mix, self.fc, self.drop = nn.Conv2d(8, 6, 1), nn.Linear(6 * 7 * 7, 10), nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([F.relu(self.left(x)), torch.sigmoid(self.right(x))], 1)
        return self.fc(self.drop(torch.flatten(F.avg_pool2d(self.mix(h), 4), 1)))


class DepthSep(nn.Module):
    """A depthwise-separable block: depthwise conv, BatchNorm, ReLU6, pointwise conv, hardswish."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.dw, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.pw, self.bn2, self.fc = nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12), nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn(self.dw(F.relu6(self.stem(x)))))
        return self.fc(F.hardswish(self.bn2(self.pw(x))).mean((2, 3)))


class SNNClass(nn.Module):
    """An snnTorch network with its own time loop, membranes passed explicitly."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.lif1, self.fc2, self.lif2 = nn.Linear(784, 64), snn.Leaky(beta=0.9), nn.Linear(64, 10), snn.Leaky(beta=0.9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m1, m2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        total = torch.zeros(())
        for _ in range(5):
            s1, m1 = self.lif1(self.fc1(x.flatten(1)), m1)
            s2, m2 = self.lif2(self.fc2(s1), m2)
            total = total + s2
        return total


MODELS = [LeNet, ResBlockNet, TBlock, GRUNet, LSTMNet, Tied, Branchy, DepthSep, SNNClass]
KINDS = {"weights": ("weight", "bias"), "outputs": ("activation",), "mixed": ("weight", "bias", "activation")}


def _with_statistics(m: nn.Module) -> nn.Module:
    """BatchNorm statistics and affine parameters that are not the identity."""
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 2)
            nn.init.uniform_(mod.weight, 0.5, 1.5)
            nn.init.uniform_(mod.bias, -0.2, 0.2)
    return m


def _same_tables(cls: type[nn.Module], kinds: tuple[str, ...], n: int, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    if cls is SNNClass and kinds == ("activation",):
        kinds = ("state", "spike")
    tables = {}
    for mode in ("fast", "plain"):
        torch.manual_seed(0)
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=120), sites=rc.SiteSpec(kinds=kinds),
                               run=rc.RunSpec(mode=mode, shard_size=120))
        tables[mode] = pd.DataFrame(rc.CampaignRunner(spec, _with_statistics(cls()).eval(), (data[0][:n], data[1][:n])).run_shard(0))
    pd.testing.assert_frame_equal(tables["fast"], tables["plain"])


@pytest.mark.parametrize("n", [37, 64], ids=["odd-batch", "even-batch"])
@pytest.mark.parametrize("kinds", list(KINDS), ids=list(KINDS))
@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_fast_equals_plain_on_every_kind_and_batch_parity(cls, kinds, n, mnist):
    _same_tables(cls, KINDS[kinds], n, mnist)


class PrunedLeNet(LeNet):
    """LeNet with half the weights of three layers pruned by ``torch.nn.utils.prune`` (pre-hooks)."""

    def __init__(self) -> None:
        super().__init__()
        for layer in (self.c1, self.c2, self.f1):
            torch.nn.utils.prune.l1_unstructured(layer, "weight", 0.5)


class QuantNet(nn.Module):
    """A Brevitas class model: 8-bit conv, QuantReLU, functional pooling, 8-bit linear."""

    def __init__(self) -> None:
        super().__init__()
        import brevitas.nn as qnn

        self.c1, self.act = qnn.QuantConv2d(1, 6, 5, padding=2, weight_bit_width=8), qnn.QuantReLU(bit_width=8)
        self.fc = qnn.QuantLinear(6 * 14 * 14, 10, bias=True, weight_bit_width=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.max_pool2d(self.act(self.c1(x)), 2), 1))


RUNS = {"batches of 24": ({"batch_size": 24}, {}), "per-sample": ({}, {"per_sample": True}), "memory_mb 1": ({"memory_mb": 1}, {})}


@pytest.mark.parametrize("run", list(RUNS))
@pytest.mark.parametrize("cls", [LeNet, ResBlockNet, TBlock, GRUNet, PrunedLeNet, QuantNet], ids=lambda c: c.__name__)
def test_fast_equals_plain_over_several_batches_per_sample_and_a_tight_memory_budget(cls, run, mnist):
    """61 inputs: in batches of 24 (the last of 13), per-sample output faults, and recordings past a 1 MiB budget recomputed."""
    run_kw, fault_kw = RUNS[run]
    kinds = ("activation",) if fault_kw else ("weight", "bias", "activation")
    tables = {}
    for mode in ("fast", "plain"):
        torch.manual_seed(0)
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=100), sites=rc.SiteSpec(kinds=kinds),
                               faults=rc.FaultSpec(**fault_kw), run=rc.RunSpec(mode=mode, shard_size=100, **run_kw))
        runner = rc.CampaignRunner(spec, _with_statistics(cls()).eval(), (mnist[0][:61], mnist[1][:61]))
        tables[mode] = pd.DataFrame(runner.run_shard(0))
    pd.testing.assert_frame_equal(tables["fast"], tables["plain"])
