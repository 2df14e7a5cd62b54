"""The class-based reference architectures: shapes, parameter counts, checkpoint equivalence with
the bundled nn.Sequential models, and fast == plain campaigns on a model with its own forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import resil.campaign as rc
import resil.models as rm
from resil.models.architectures import DenseCNNClass, MobileNetV2, ResNet20, SpikingClass, calibrate_batchnorm

OUTCOMES = ("masked", "tolerable", "critical", "non_finite", "correct")


def bits(t: torch.Tensor) -> torch.Tensor:
    """The float32 tensor's bit patterns, so that equality is bit for bit."""
    return t.contiguous().view(torch.int32)


def loaded(cls: type[nn.Module], name: str) -> nn.Module:
    model = cls()
    model.load_state_dict(torch.load(rm.info(name).checkpoint, map_location="cpu", weights_only=True))
    return model.eval()


@pytest.mark.parametrize("cls, shape", [(ResNet20, (3, 32, 32)), (MobileNetV2, (3, 32, 32)),
                                        (DenseCNNClass, (1, 8, 8)), (SpikingClass, (1, 8, 8))])
def test_builds_and_runs_deterministically(cls: type[nn.Module], shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = cls().eval()
    assert not isinstance(model, nn.Sequential)
    x = torch.rand(3, *shape)
    with torch.no_grad():
        first, second = model(x), model(x)
    assert first.shape == (3, 10) and torch.isfinite(first).all()
    assert torch.equal(bits(first), bits(second))


def test_resnet20_parameter_count() -> None:
    n = sum(p.numel() for p in ResNet20().parameters())
    assert abs(n - 272_474) <= 0.05 * 272_474
    # by hand: 3x3 convs (no bias), BN weight + bias per channel, two 1x1 shortcut convs + BN, fc
    convs = 3 * 16 + 6 * 16 * 16 + 16 * 32 + 5 * 32 * 32 + 32 * 64 + 5 * 64 * 64
    norms = 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64)
    shortcuts = 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    assert n == 9 * convs + norms + shortcuts + 64 * 10 + 10 == 272_474


def test_mobilenetv2_blocks() -> None:
    net = MobileNetV2(width=1.0)
    depthwise = [m for name, m in net.named_modules() if name.endswith(".depthwise")]
    assert len(depthwise) == sum(n for _, _, n, _ in MobileNetV2.STAGES)
    assert all(isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels for m in depthwise)
    residual = [b.residual for b in net.blocks]
    assert residual == [False, False, True, False, True, False, True, False, False]


def test_dense_class_equals_the_bundled_dense_cnn() -> None:
    x = rm.dataset("digits").x_test
    with torch.no_grad():
        assert torch.equal(bits(loaded(DenseCNNClass, "dense-cnn")(x)), bits(rm.load("dense-cnn")(x)))


def test_spiking_class_equals_the_bundled_snn() -> None:
    x = rm.dataset("digits").x_test
    with torch.no_grad():
        assert torch.equal(bits(loaded(SpikingClass, "snn")(x)), bits(rm.load("snn")(x)))


def test_resnet20_fast_campaign_equals_plain(tmp_path) -> None:
    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    net = calibrate_batchnorm(ResNet20(), x)
    tables = {}
    for mode in ("plain", "fast"):
        spec = rc.CampaignSpec(sites=rc.SiteSpec(kinds=("weight", "bias", "activation")),
                               sampler=rc.SamplerSpec(kind="uniform", scenarios=30), run=rc.RunSpec(shard_size=10, mode=mode))
        tables[mode] = rc.run(spec, tmp_path / mode, model=net, data=x).table().sort_by("scenario").to_pandas()
    for k in ("scenario", "fault_sites", "fault_indices", "fault_masks", *OUTCOMES):
        assert [np.asarray(v).tolist() for v in tables["plain"][k]] == [np.asarray(v).tolist() for v in tables["fast"][k]], k
    assert (tables["plain"]["masked"] < len(x)).any()  # some faults change outputs: the comparison is not vacuous
    assert np.all(tables["plain"][list(OUTCOMES[:4])].sum(axis=1) == len(x))


@pytest.mark.parametrize("case", ["snn-class fc2", "transformer"])
def test_fast_equals_plain_where_row_recompute_depends_on_the_row(tmp_path, case) -> None:
    """Regressions: recomputing fc2's row 9 alone differs in its last bits from the full GEMM on this
    CPU (the check must test the exact rows), and a Linear on [B, T, F] has its channels last."""
    import pandas as pd

    from resil.models import synthetic

    if case == "transformer":
        d = rm.dataset("digits")
        make, data, include = (lambda: synthetic.load("synthetic-transformer")), (d.x_test[:64], d.y_test[:64]), ("*",)
    else:
        d = rm.dataset("digits")
        make, data, include = (lambda: loaded(SpikingClass, "snn")), (d.x_test[:256], d.y_test[:256]), ("fc2.weight",)
    tables = {}
    for mode in ("fast", "plain"):
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=200), sites=rc.SiteSpec(include=include, kinds=("weight",)),
                               run=rc.RunSpec(mode=mode, shard_size=200))
        tables[mode] = pd.DataFrame(rc.CampaignRunner(spec, make().eval(), data).run_shard(0)).drop(
            columns=["fault_sites", "fault_indices", "fault_masks"])
    pd.testing.assert_frame_equal(tables["fast"], tables["plain"])
