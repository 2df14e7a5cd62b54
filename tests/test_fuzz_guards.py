"""Wrong fast answers and confusing errors found by fuzzing fast mode against plain mode on small
user models (session 9), each against the plain loop as the oracle:

- copies run one at a time as views into a stacked tensor start off a 16-byte boundary, where
  MKL's GEMM computes other bits (``grouped.own_storage``);
- the per-sample probe skipped the very last input, computed in a smaller last batch;
- a model that compares each input with the batch median passes the gathered probe by chance
  (``SampleGather.isolated``);
- per-sample faults on a module called on part of the batch, and one-hot labels, are refused
  with errors naming them, before anything is written.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import resil.campaign as rc
from resil.campaign.grouped import own_storage
from resil.campaign.per_sample import SampleGather
from resil.errors import FaultError


def _tables(make: type[nn.Module] | object, data: tuple[torch.Tensor, torch.Tensor], kinds: tuple[str, ...], scenarios: int,
            per_sample: bool = False, batch_size: int = 512) -> dict[str, pd.DataFrame]:
    out = {}
    for mode in ("plain", "fast"):
        torch.manual_seed(0)
        spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=scenarios), sites=rc.SiteSpec(kinds=kinds),
                               faults=rc.FaultSpec(per_sample=per_sample),
                               run=rc.RunSpec(mode=mode, shard_size=scenarios, batch_size=batch_size))
        out[mode] = pd.DataFrame(rc.CampaignRunner(spec, make().eval(), data).run_shard(0))  # type: ignore[operator]
    return out


@pytest.fixture(scope="module")
def mnist37(mnist: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return mnist[0][:37], mnist[1][:37]


def test_a_copy_in_storage_of_its_own_starts_aligned_as_the_golden_tensors_do():
    h = torch.arange(3 * 33 * 7, dtype=torch.float32).reshape(3, 33, 7)
    assert h[1].storage_offset() == 33 * 7  # 231 floats: off a 16-byte boundary
    copy = own_storage(h[1])
    assert copy.storage_offset() == 0 and copy.data_ptr() % 16 == 0 and torch.equal(copy, h[1])


def test_a_tabular_mlp_whose_copies_run_one_at_a_time_equals_plain():
    torch.manual_seed(0)
    data = torch.randn(33, 10), torch.randint(0, 3, (33,))

    def mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(10, 13), nn.ReLU(), nn.Linear(13, 7), nn.Tanh(), nn.Linear(7, 3))

    t = _tables(mlp, data, ("weight", "bias"), 150)
    pd.testing.assert_frame_equal(t["fast"], t["plain"])


class ConvFlat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.flat, self.fc = nn.Conv2d(1, 6, 3, stride=2), nn.Flatten(), nn.Linear(6 * 13 * 13, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(F.relu(self.stem(x))))


def test_a_class_model_whose_copies_run_one_at_a_time_equals_plain(mnist37):
    data = mnist37[0][:33], mnist37[1][:33]
    t = _tables(ConvFlat, data, ("activation",), 150)
    pd.testing.assert_frame_equal(t["fast"], t["plain"])


def test_per_sample_faults_in_a_last_batch_of_one_input_equal_plain():
    torch.manual_seed(0)
    data = torch.rand(5, 784, dtype=torch.float64), torch.randint(0, 10, (5,))

    def mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)).double()

    t = _tables(mlp, data, ("activation",), 80, per_sample=True, batch_size=4)
    pd.testing.assert_frame_equal(t["fast"], t["plain"])


class MedianGate(nn.Module):
    """Routes each input by comparing its confidence with the batch median."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(784, 20), nn.Linear(20, 10), nn.Linear(20, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x.flatten(1))
        conf = h.max(1).values
        return torch.where((conf > conf.median())[:, None], self.b(F.relu(h)), self.c(torch.tanh(h)))


def test_a_model_gating_by_the_batch_median_is_not_gathered_and_equals_plain(mnist37):
    torch.manual_seed(0)
    model = MedianGate().eval()
    with torch.no_grad():
        golden = torch.cat([model(b) for b in mnist37[0].split(16)])
    assert not SampleGather(model, mnist37[0], golden, 16).isolated()
    linear = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    with torch.no_grad():
        assert SampleGather(linear, mnist37[0], torch.cat([linear(b) for b in mnist37[0].split(16)]), 16).isolated()
    t = _tables(MedianGate, mnist37, ("activation",), 100, per_sample=True, batch_size=16)
    pd.testing.assert_frame_equal(t["fast"], t["plain"])


class Experts(nn.Module):
    """A mixture of experts: each expert sees only the inputs routed to it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.gate = nn.Linear(20, 16), nn.Linear(16, 3)
        self.experts = nn.ModuleList([nn.Linear(16, 10) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        route, out = self.gate(h).argmax(1), torch.zeros(len(x), 10)
        for e, expert in enumerate(self.experts):
            if (mask := route == e).any():
                out[mask] = expert(h[mask])
        return out


def test_per_sample_faults_on_a_module_called_on_part_of_the_batch_are_refused_before_anything_is_written(tmp_path):
    torch.manual_seed(0)
    model = Experts().eval()
    x = torch.randn(37, 20)
    with torch.no_grad():
        routed = model.gate(F.relu(model.stem(x))).argmax(1)
    assert len(routed.unique()) > 1  # the premise: no expert sees the whole batch
    spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=20), sites=rc.SiteSpec(kinds=("activation",)),
                           faults=rc.FaultSpec(per_sample=True), run=rc.RunSpec(batch_size=16))
    with pytest.raises(FaultError, match=r"experts\.\d:out' got \d+ rows of a batch of \d+"):
        rc.run(spec, tmp_path / "campaign", model=model, data=(x, torch.randint(0, 10, (37,))))
    assert not (tmp_path / "campaign").exists()
    ok = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=20),
                         sites=rc.SiteSpec(("stem:*", "gate:*"), kinds=("activation",)),
                         faults=rc.FaultSpec(per_sample=True), run=rc.RunSpec(batch_size=16))
    assert len(pd.DataFrame(rc.CampaignRunner(ok, model, (x, torch.randint(0, 10, (37,)))).run_shard(0))) == 20


def test_one_hot_labels_are_refused_naming_their_shape_and_labels_past_the_outputs_warn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 10)).eval()
    x, y = torch.randn(20, 8), torch.randint(0, 10, (20,))
    spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=10), sites=rc.SiteSpec(kinds=("weight",)))
    with pytest.raises(FaultError, match=r"labels have shape \[20, 10\].*labels.argmax\(1\)"):
        rc.CampaignRunner(spec, model, (x, F.one_hot(y, 10)))
    with pytest.warns(RuntimeWarning, match=r"labels run from \d+ to 14, but the model gives 10 scores"):
        rc.CampaignRunner(spec, model, (x, y + 5))


class Clamped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 13), nn.Linear(13, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.relu(self.a(x)))


def _digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data[:n], dtype=torch.float32) / 16, torch.tensor(d.target[:n])


def _hooked_sequential() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 13), nn.ReLU(), nn.Linear(13, 7), nn.Tanh(), nn.Linear(7, 10))
    m[2].register_forward_hook(lambda mod, args, out: out * 2 + 1)  # applied twice, the stage's output replayed
    return m


def _hooked_class() -> nn.Module:
    torch.manual_seed(0)
    m = Clamped()
    m.a.register_forward_hook(lambda mod, args, out: out.clamp(-1, 1))  # plain injects after it; a patch before it
    return m


@pytest.mark.parametrize("make", [_hooked_sequential, _hooked_class])
def test_modules_carrying_the_users_hooks_are_neither_replayed_nor_patched_and_fast_equals_plain(make):
    t = _tables(make, _digits(17), ("activation",), 300)
    pd.testing.assert_frame_equal(t["fast"], t["plain"])


class KeyValueAttention(nn.Module):
    """Cross-attention shapes: keys and values of their own widths (MultiheadAttention asserts on shapes)."""

    def __init__(self) -> None:
        super().__init__()
        self.k, self.v = nn.Linear(12, 7), nn.Linear(12, 5)
        self.attn = nn.MultiheadAttention(12, 2, batch_first=True, kdim=7, vdim=5)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, _ = self.attn(x, self.k(x), self.v(x), need_weights=False)
        return self.fc(a.mean(1))


def test_a_check_layout_that_trips_a_torch_assert_fails_the_check_and_does_not_crash_the_campaign():
    torch.manual_seed(0)
    data = torch.randn(37, 9, 12), torch.randint(0, 4, (37,))
    t = _tables(KeyValueAttention, data, ("weight",), 100)
    pd.testing.assert_frame_equal(t["fast"], t["plain"])


class SequenceFirst(nn.Module):
    """A Linear on ``x.transpose(0, 1)``: its output ``[L, B, F]`` has the sequence on dimension 0."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.rnn, self.fc = nn.Linear(4, 8), nn.GRU(8, 12), nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.rnn(self.lin(x.transpose(0, 1)))
        return self.fc(h[-1])


def test_per_sample_faults_on_a_dimension_as_long_as_the_batch_by_chance_are_refused():
    torch.manual_seed(0)
    x = torch.randn(18, 9, 4)  # 9 steps, batches of 9 inputs: lin:out is [9, 9, 8]
    spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=20), sites=rc.SiteSpec(("lin*",), kinds=("activation",)),
                           faults=rc.FaultSpec(per_sample=True), run=rc.RunSpec(batch_size=9))
    with pytest.raises(FaultError, match=r"'lin:out' got 9 rows of a batch of 8.*as long as the batch by chance"):
        rc.CampaignRunner(spec, SequenceFirst().eval(), (x, torch.randint(0, 4, (18,))))


class NestedEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc = nn.Embedding(40, 12), nn.Linear(12, 4)
        layer = nn.TransformerEncoderLayer(12, 2, 20, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.enc(self.emb(x), src_key_padding_mask=x == 0).mean(1))


def test_a_module_returning_a_nested_tensor_is_refused_naming_it():
    torch.manual_seed(0)
    tokens = torch.randint(1, 40, (37, 9))
    tokens[::3, -3:] = 0  # padding: the encoder layers pass nested tensors
    spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=10))
    with pytest.raises(FaultError, match=r"'enc.layers.0.self_attn' returns a nested tensor.*enable_nested_tensor=False"):
        rc.CampaignRunner(spec, NestedEncoder().eval(), (tokens, torch.randint(0, 4, (37,))))


class Doubles(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(2)  # changes what the stage before returned


def _in_place_stage() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), Doubles(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 10))


def _in_place_pre_hook() -> nn.Module:
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 10))
    m[2].register_forward_pre_hook(lambda mod, args: (args[0].mul_(2), None)[1])
    return m


@pytest.mark.parametrize("make", [_in_place_stage, _in_place_pre_hook])
def test_a_sequential_whose_stage_changes_its_input_in_place_runs_as_a_module_tree_and_equals_plain(make):
    x, y = _digits(33)
    t = _tables(make, (x.reshape(-1, 1, 8, 8), y), ("activation",), 100, batch_size=11)
    pd.testing.assert_frame_equal(t["fast"], t["plain"])


def test_a_one_output_head_on_batches_under_17_is_audited_as_two_stacked_copies():
    from resil.campaign.layout import layout_sensitive_op

    x, _ = _digits(33)

    def head() -> nn.Module:
        torch.manual_seed(2)
        return nn.Sequential(nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 1))

    net = head().eval()
    with torch.no_grad():  # the premise, by torch alone: these 5 rows stacked twice compute other bits
        h = net[1](net[0](x[:5]))
        alone, twice = net[2](h), net[2](torch.cat([h, h]))
    assert not (torch.equal(twice[:5], alone) and torch.equal(twice[5:], alone))
    assert layout_sensitive_op(net, x[:5]) == "addmm"
    t = _tables(head, (x, torch.zeros(33, dtype=torch.long)), ("weight",), 200, batch_size=5)
    pd.testing.assert_frame_equal(t["fast"], t["plain"])


def test_inputs_of_full_batches_are_gathered_when_a_last_batch_of_one_input_is_not():
    x, y = _digits(65)  # batches of 32, 32 and 1

    def cnn() -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 10))

    data = x.reshape(-1, 1, 8, 8), y
    t = _tables(cnn, data, ("activation",), 300, per_sample=True, batch_size=32)
    pd.testing.assert_frame_equal(t["fast"], t["plain"])
    torch.manual_seed(0)
    spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=300), sites=rc.SiteSpec(kinds=("activation",)),
                           faults=rc.FaultSpec(per_sample=True), run=rc.RunSpec(shard_size=300, batch_size=32))
    runner = rc.CampaignRunner(spec, cnn().eval(), data)
    runner.run_shard(0)
    checked = runner.evaluator.per_sample._exact
    assert any(ok for (_, full_only), ok in checked.items() if full_only)  # the 64 inputs of full batches gathered
