import torch
from torch import nn

import resil
from resil.adapters import adapter_for, register_adapter
from resil.site import Adapter


def test_dense_sites_name_every_parameter_buffer_and_leaf_output(cnn, images):
    s = resil.sites(cnn, images)
    expected_stored = {n for n, _ in cnn.named_parameters()} | {"bn1.running_mean", "bn1.running_var"}
    stored = {x.name for x in s if not x.batched}
    assert stored == expected_stored
    leaves = {n for n, m in cnn.named_modules() if n and not list(m.children())}
    assert {x.name for x in s if x.batched} == {f"{n}:out" for n in leaves}
    assert s["conv1.weight"].kind == "weight" and s["fc.bias"].kind == "bias"
    assert s["bn1.weight"].kind == "weight" and s["bn1.running_var"].kind == "buffer"
    assert s["conv1.weight"].shape == (4, 1, 3, 3) and s["conv1.weight"].bits == 32
    assert s["conv1:out"].shape == (4, 16, 16) and s["conv1:out"].kind == "activation"
    assert s["fc:out"].shape == (10,)
    # num_batches_tracked is an int64 counter, not a stored value of the network
    assert "bn1.num_batches_tracked" not in s


def test_embedding_and_half_precision_sites():
    emb = nn.Embedding(5, 3).to(torch.float16)
    s = resil.sites(emb)
    assert s["weight"].encoding is resil.FLOAT16 and s["weight"].numel == 15


def test_shapes_live_in_the_returned_list_only_and_table_lists_bits(cnn, images):
    def listing(site_list):
        return [(x.name, x.kind, x.shape, x.encoding.name, x.batched, x.size) for x in site_list]

    before = listing(resil.sites(cnn))
    with_example = resil.sites(cnn, images)
    assert with_example["conv2:out"].shape == (8, 8, 8)
    after = listing(resil.sites(cnn))
    assert after == before  # the example pass left nothing behind in the model or in resil
    computed = [row for row in after if row[4]]
    assert computed and all(row[2] is None and row[5] is None for row in computed)
    assert listing(with_example) == listing(resil.sites(cnn, images))  # the same every time
    table = with_example.table()
    assert "conv1.weight" in table and f"{36 * 32:,}" in table and "(8, 8, 8)" in table


def test_two_models_do_not_share_recorded_shapes(images):
    from conftest import SmallCNN

    a, b = SmallCNN().eval(), SmallCNN().eval()
    seen_a = resil.sites(a, images)
    assert seen_a["fc:out"].shape == (10,)
    assert resil.sites(b)["fc:out"].shape is None and resil.sites(a)["fc:out"].shape is None
    b.fc = nn.Linear(128, 3)  # b now computes another shape: a's list and a's next listing keep theirs
    assert resil.sites(b, images[:2])["fc:out"].shape == (3,)
    assert seen_a["fc:out"].shape == (10,) and resil.sites(a, images[:1])["fc:out"].shape == (10,)
    assert resil.sites(a)["fc:out"].shape is None


def test_unknown_site_suggests_closest(cnn):
    s = resil.sites(cnn)
    try:
        s["conv1.wieght"]
    except resil.FaultError as e:
        assert "'conv1.weight'" in str(e)
    else:
        raise AssertionError("no error")


def test_registered_adapter_takes_over_its_module_type():
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    class CustomAdapter(Adapter):
        name = "custom"
        claims_children = True

        def sites(self, prefix, module, options):
            dense = adapter_for(nn.Linear(1, 1))
            for site in dense.sites(prefix + ".inner", module.inner, options):
                if not site.batched:
                    yield site

    register_adapter(Custom, CustomAdapter())
    net = nn.Sequential(Custom(), nn.ReLU())
    names = resil.sites(net).names()
    assert names == ["0.inner.weight", "0.inner.bias", "1:out"]


def test_of_kind_filters_sites(cnn, images):
    s = resil.sites(cnn, images)
    assert [x.name for x in s.of_kind("bias")] == ["conv1.bias", "bn1.bias", "conv2.bias", "fc.bias"]
    assert all(x.batched for x in s.of_kind("activation")) and len(s.of_kind("weight", "bias")) == 8


def test_outputs_the_example_forward_never_computes_are_no_sites():
    # MultiheadAttention multiplies by out_proj.weight itself and never calls out_proj
    layer = torch.nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True).eval()
    names = resil.sites(layer, torch.zeros(2, 3, 8)).names()
    assert "self_attn.out_proj.weight" in names and "self_attn.out_proj:out" not in names
    assert "linear1:out" in names and "norm1:out" in names
    assert "self_attn.out_proj:out" in resil.sites(layer).names()  # without an example nothing is known


class _SharedActivation(nn.Module):
    """One ReLU module after two layers of different widths (and once more at the second's width)."""

    def __init__(self, widths: tuple[int, int] = (6, 4)) -> None:
        super().__init__()
        self.a, self.b, self.relu = nn.Linear(3, widths[0]), nn.Linear(widths[0], widths[1]), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.b(self.relu(self.a(x))))


def test_a_module_whose_calls_return_different_shapes_has_no_output_shape():
    shapes = {s.name: s.shape for s in resil.sites(_SharedActivation(), torch.zeros(2, 3)) if s.batched}
    assert shapes["relu:out"] is None and shapes["a:out"] == (6,) and shapes["b:out"] == (4,)
    same = {s.name: s.shape for s in resil.sites(_SharedActivation((4, 4)), torch.zeros(2, 3)) if s.batched}
    assert same["relu:out"] == (4,)  # the same shape at every call: one element index means one place


def test_a_campaign_leaves_out_a_shapeless_site_matched_by_a_pattern_and_refuses_one_named(tmp_path):
    import pytest

    import resil.campaign as rc
    from resil.errors import FaultError

    x, y = torch.randn(8, 3), torch.randint(0, 4, (8,))
    spec = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=20), sites=rc.SiteSpec(kinds=("activation",)))
    with pytest.warns(RuntimeWarning, match="relu:out"):
        runner = rc.CampaignRunner(spec, _SharedActivation(), (x, y))
    assert "relu:out" not in [s.name for s in runner.space.sites] and len(runner.space.sites) == 2
    named = rc.CampaignSpec(sampler=rc.SamplerSpec(kind="uniform", scenarios=20), sites=rc.SiteSpec(("relu:out",), kinds=("activation",)))
    with pytest.raises(FaultError, match="outputs of different shapes"):
        rc.CampaignRunner(named, _SharedActivation(), (x, y))
