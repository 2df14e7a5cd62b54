"""Sites of modules returning structures (LSTM, GRU, MultiheadAttention, dicts), checked against a
manual oracle: the golden structure with the float32 bit pattern of one element flipped by numpy,
seen through a forward hook of the test's own and fed through the rest of the model by hand."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import resil

BIT = 30


class Recurrent(nn.Module):
    """An LSTM or GRU (2 layers, hidden 4) over batch-first input, then a linear head fed with the
    last output step, the last layer's h_n and (LSTM) c_n, so a fault in any of them shows."""

    def __init__(self, kind: str, batch_first: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.batch_first = batch_first
        rnn = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = rnn(3, 4, num_layers=2, batch_first=batch_first)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, seq, 3)
        return self.tail(self.rnn(x if self.batch_first else x.transpose(0, 1)))

    def tail(self, out):
        seq, state = out
        last = seq[:, -1] if self.batch_first else seq[-1]
        if isinstance(state, tuple):  # LSTM: (h_n, c_n)
            return self.head(last + state[0][-1] + state[1][-1])
        return self.head(last + state[-1])


class Attention(nn.Module):
    """Self-attention over batch-first input; the head reads the attention output and weights."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, length, 8)
        q = x if self.batch_first else x.transpose(0, 1)
        return self.tail(self.attn(q, q, q))

    def tail(self, out):
        o, w = out  # o: (N, L, E) or (L, N, E); w: (N, L, S) either way
        o = o if self.batch_first else o.transpose(0, 1)
        return self.head(o.mean(1)) + w.sum(-1).mean(-1, keepdim=True)


# batch = sequence = hidden = 4: the batch dimension cannot be told by its size alone
N, T = 4, 4
SEQ_INPUT = torch.rand(N, T, 3, generator=torch.Generator().manual_seed(1))
ATTN_INPUT = torch.rand(N, T, 8, generator=torch.Generator().manual_seed(2))

# model, input, the module, and per site: (batch dim of its tensor, per-sample shape, an element the head reads)
CASES = {
    "lstm, batch first": (lambda: Recurrent("lstm", True), SEQ_INPUT, "rnn", {
        "rnn:out[0]": (0, (T, 4), (T - 1, 1)), "rnn:out[1][0]": (1, (2, 4), (1, 3)), "rnn:out[1][1]": (1, (2, 4), (1, 2))}),
    "lstm, seq first": (lambda: Recurrent("lstm", False), SEQ_INPUT, "rnn", {
        "rnn:out[0]": (1, (T, 4), (T - 1, 1)), "rnn:out[1][0]": (1, (2, 4), (1, 3)), "rnn:out[1][1]": (1, (2, 4), (1, 2))}),
    "gru, seq first": (lambda: Recurrent("gru", False), SEQ_INPUT, "rnn", {
        "rnn:out[0]": (1, (T, 4), (T - 1, 0)), "rnn:out[1]": (1, (2, 4), (1, 3))}),
    "attention, batch first": (lambda: Attention(True), ATTN_INPUT, "attn", {
        "attn:out[0]": (0, (T, 8), (2, 5)), "attn:out[1]": (0, (T, T), (1, 3))}),
    "attention, seq first": (lambda: Attention(False), ATTN_INPUT, "attn", {
        "attn:out[0]": (1, (T, 8), (2, 5)), "attn:out[1]": (0, (T, T), (1, 3))}),
}


def paths(site_name: str) -> tuple[int, ...]:
    """``rnn:out[1][0]`` -> (1, 0), parsed independently of resil."""
    return tuple(int(k) for k in site_name.split(":out")[1].strip("[]").split("]["))


def bits(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy().view(np.uint32)


def same_bits(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and np.array_equal(bits(a), bits(b))
    return type(a) is type(b) and len(a) == len(b) and all(same_bits(x, y) for x, y in zip(a, b, strict=True))


def flip(t: torch.Tensor, index: tuple) -> torch.Tensor:
    """A copy of ``t`` with bit ``BIT`` of the float32 pattern of ``t[index]`` flipped (numpy)."""
    a = t.detach().contiguous().numpy().copy()
    a.view(np.uint32)[index] ^= np.uint32(1 << BIT)
    return torch.from_numpy(a)


def flipped_structure(golden, path, index):
    if not path:
        return flip(golden, index)
    items = list(golden)
    items[path[0]] = flipped_structure(items[path[0]], path[1:], index)
    return type(golden)(items)


def run(model: nn.Module, x: torch.Tensor, module: nn.Module, faults=(), site_list=None):
    """The model output and ``module``'s output as the next layer receives it (a hook registered
    after resil's fault hooks)."""
    seen = []
    with resil.inject(model, list(faults), sites=site_list):
        handle = module.register_forward_hook(lambda m, a, out: seen.append(out))
        try:
            y = model(x)
        finally:
            handle.remove()
    return y, seen[0]


@pytest.mark.parametrize("case", CASES)
def test_structured_outputs_are_sites_with_their_batch_dims(case):
    make, x, name, expected = CASES[case]
    model = make().eval()
    site_list = resil.sites(model, x)
    outputs = {s.name: s for s in site_list if s.batched}
    assert set(outputs) == set(expected) | {"head:out"}  # none for the user class, nor attn.out_proj (never called)
    for site_name, (dim, shape, _) in expected.items():
        s = outputs[site_name]
        assert (s.shape, s.batch_dim, s.kind, s.encoding) == (shape, dim, "activation", resil.FLOAT32)
        assert s.module is getattr(model, name) and s.path == paths(site_name)
    table = site_list.table()
    for site_name, (dim, shape, _) in expected.items():
        line = next(row for row in table.splitlines() if row.startswith(site_name + " "))
        assert str(shape) in line and (dim == 0) == ("batch dim" not in line)


@pytest.mark.parametrize("batch", [None, 1])
@pytest.mark.parametrize("case", CASES)
def test_bit_flip_in_one_tensor_of_the_structure_matches_the_manual_flip(case, batch):
    make, x, name, expected = CASES[case]
    model = make().eval()
    module = getattr(model, name)
    site_list = resil.sites(model, x)
    with torch.no_grad():
        golden_y, golden = run(model, x, module)
        for site_name, (dim, _, element) in expected.items():
            fault = resil.Fault(site_name, element, bit=BIT, batch=batch)
            y, faulty = run(model, x, module, [fault], site_list)
            index = (*element[:dim], slice(None) if batch is None else batch, *element[dim:])
            want = flipped_structure(golden, paths(site_name), index)
            assert same_bits(faulty, want), site_name  # that element of that tensor, nothing else
            assert same_bits(y, model.tail(want)), site_name
            changed = (bits(y) != bits(golden_y)).any(axis=1)
            assert changed.tolist() == [batch is None or b == batch for b in range(N)], site_name
        assert same_bits(run(model, x, module)[0], golden_y)  # the hooks are gone


def test_faults_in_several_tensors_of_one_module_combine():
    model = Recurrent("lstm", False).eval()
    site_list = resil.sites(model, SEQ_INPUT)
    faults = [resil.Fault("rnn:out[0]", (1, 2), bit=BIT), resil.Fault("rnn:out[1][1]", (1, 0), bit=BIT, batch=2),
              resil.Fault("rnn:out[1][1]", (0, 3), bit=BIT), resil.Fault("head.weight", (0, 1), bit=BIT)]
    with torch.no_grad():
        _golden_y, (seq, (h, c)) = run(model, SEQ_INPUT, model.rnn)
        y, faulty = run(model, SEQ_INPUT, model.rnn, faults, site_list)
        want = (flip(seq, (1, slice(None), 2)), (h, flip(flip(c, (1, 2, 0)), (0, slice(None), 3))))
        assert same_bits(faulty, want)
        head = copy.deepcopy(model)
        head.head.weight.copy_(flip(model.head.weight, (0, 1)))
        assert same_bits(y, head.tail(want))


def test_flips_with_gradients_enabled_keep_values_and_gradients():
    model = Attention(False).train()  # no dropout: the same outputs in training mode
    site_list = resil.sites(model, ATTN_INPUT)
    with torch.no_grad():
        _golden_y, golden = run(model, ATTN_INPUT, model.attn)
    y, faulty = run(model, ATTN_INPUT, model.attn, [resil.Fault("attn:out[0]", (2, 5), bit=BIT, batch=3)], site_list)
    want = flipped_structure(golden, (0,), (2, 3, 5))
    assert same_bits(faulty, want) and same_bits(y, model.tail(want))
    assert faulty[0].stride() == golden[0].stride()  # the layout of the fault-free output
    y[:3].sum().backward()  # unaffected samples still have their gradient
    assert model.head.weight.grad is not None and torch.isfinite(model.head.weight.grad).all()


class Pair(nn.Module):
    """A leaf module returning a dict: a per-sample tensor and one that does not follow the batch
    (of the batch's size, 3, in the example: only the doubled batch tells them apart)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([0.5, 1.5, -2.0]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": x * self.scale, "scale": self.scale * 1.0}


class DictNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pair, self.fc = Pair(), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.pair(x))

    def tail(self, d: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fc(d["y"] * d["scale"])


def test_dict_outputs_and_a_tensor_without_batch_dim():
    model, x = DictNet().eval(), torch.rand(3, 3, generator=torch.Generator().manual_seed(3))
    site_list = resil.sites(model, x)
    y_site, scale_site = site_list["pair:out[y]"], site_list["pair:out[scale]"]
    assert (y_site.shape, y_site.batch_dim, y_site.path) == ((3,), 0, ("y",))
    assert (scale_site.shape, scale_site.batch_dim, scale_site.path) == ((3,), None, ("scale",))
    assert "(3,) no batch dim" in site_list.table()
    with torch.no_grad():
        golden_y, golden = run(model, x, model.pair)
        y, faulty = run(model, x, model.pair, [resil.Fault("pair:out[scale]", 1, bit=BIT)], site_list)
    want = {"y": golden["y"], "scale": flip(golden["scale"], (1,))}
    assert type(faulty) is dict and same_bits(faulty["y"], want["y"]) and same_bits(faulty["scale"], want["scale"])
    assert same_bits(y, model.tail(want)) and not same_bits(y, golden_y)
    weight = model.fc.weight.detach().clone()
    bad = [resil.Fault("fc.weight", 0, bit=BIT), resil.Fault("pair:out[scale]", 1, bit=BIT, batch=0)]
    with (pytest.raises(resil.FaultError, match=r"'pair:out\[scale\]' has no batch dimension.*cannot name a batch element"),
          resil.inject(model, bad, sites=site_list)):
        pass
    assert same_bits(model.fc.weight, weight) and not model.pair._forward_hooks


class Views(nn.Module):
    """A leaf returning its own input, a state it was passed inside a tuple, and a view of its
    result next to that result."""

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor]):
        y = x * 2
        return x, state[0], y, y[:, :2]


class ViewNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.views = Views()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c, d = self.views(x, (x + 1,))
        return a.sum(1) + b.sum(1) + c.sum(1) + d.sum(1)


def test_tensors_aliasing_an_input_or_each_other_are_not_corrupted_in_place():
    model, x = ViewNet(), torch.rand(3, 4, generator=torch.Generator().manual_seed(4))
    site_list = resil.sites(model, x)
    assert [s.name for s in site_list] == ["views:out[0]", "views:out[1]", "views:out[2]", "views:out[3]"]
    x_bits = bits(x).copy()
    faults = [resil.Fault("views:out[0]", 1, bit=BIT), resil.Fault("views:out[1]", 2, bit=BIT), resil.Fault("views:out[2]", 0, bit=BIT)]
    states = []
    handle = model.views.register_forward_pre_hook(lambda m, args: states.append((args[1][0], bits(args[1][0]).copy())))
    with torch.no_grad():
        _, golden = run(model, x, model.views)
        _, faulty = run(model, x, model.views, faults, site_list)
    handle.remove()
    assert np.array_equal(bits(x), x_bits)  # the caller's input is untouched
    state, state_bits = states[-1]
    assert np.array_equal(bits(state), state_bits)  # so is the tensor it passed inside a tuple
    want = (flip(golden[0], (slice(None), 1)), flip(golden[1], (slice(None), 2)), flip(golden[2], (slice(None), 0)), golden[3])
    assert same_bits(faulty, want)


def test_unknown_tensor_of_a_structure_fails_before_any_change():
    model = Recurrent("lstm", True).eval()
    site_list = resil.sites(model, SEQ_INPUT)
    weight = model.head.weight.detach().clone()
    with (pytest.raises(resil.FaultError) as err,
          resil.inject(model, [resil.Fault("head.weight", 0, bit=BIT), resil.Fault("rnn:out[5]", 0, bit=BIT)], sites=site_list)):
        pass
    assert "'rnn:out[5]'" in str(err.value) and "did you mean" in str(err.value) and "'rnn:out[0]'" in str(err.value)
    assert same_bits(model.head.weight, weight) and not model.rnn._forward_hooks


def test_without_an_example_the_output_is_one_unknown_site():
    model = Recurrent("lstm", True).eval()
    resil.sites(model, SEQ_INPUT)  # leaves nothing behind
    site_list = resil.sites(model)
    assert site_list["rnn:out"].shape is None and "rnn:out[0]" not in site_list
    assert resil.sites(Attention(True))["attn:out"].shape is None  # a declared non-leaf output
    with torch.no_grad():
        golden = model(SEQ_INPUT)
        with (pytest.raises(resil.FaultError, match=r"returned tuple, not a tensor; list the sites with an example input.*'rnn:out\[0\]'"),
              resil.inject(model, resil.Fault("rnn:out", 0, bit=BIT), sites=site_list)):
            model(SEQ_INPUT)
        assert same_bits(model(SEQ_INPUT), golden) and not model.rnn._forward_hooks


class FixedBatch(Recurrent):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != N:
            raise ValueError(f"this model takes batches of {N}")
        return super().forward(x)


def test_a_model_that_runs_only_at_the_example_batch_size_has_whole_tensor_sites():
    model = FixedBatch("gru", True).eval()
    site_list = resil.sites(model, SEQ_INPUT)
    assert (site_list["rnn:out[0]"].shape, site_list["rnn:out[0]"].batch_dim) == ((N, T, 4), None)
    with torch.no_grad():
        _golden_y, golden = run(model, SEQ_INPUT, model.rnn)
        y, faulty = run(model, SEQ_INPUT, model.rnn, [resil.Fault("rnn:out[1]", (1, 2, 3), bit=BIT)], site_list)
    want = flipped_structure(golden, (1,), (1, 2, 3))
    assert same_bits(faulty, want) and same_bits(y, model.tail(want))


def test_the_batch_probe_leaves_buffers_and_random_state_as_they_were():
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Dropout(0.5))
    net = nn.ModuleDict({"pre": model, "rnn": nn.GRU(3, 4, batch_first=True)})

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net["rnn"](self.net["pre"](x.transpose(1, 2)).transpose(1, 2))[0]

    m = Net().train()
    once = copy.deepcopy(m)
    torch.manual_seed(5)
    with torch.no_grad():
        once(SEQ_INPUT)  # the example pass alone
    after_once = torch.rand(3)
    torch.manual_seed(5)
    assert resil.sites(m, SEQ_INPUT)["net.rnn:out[1]"].batch_dim == 1  # the doubled pass ran
    assert torch.equal(torch.rand(3), after_once)
    for a, b in zip(m.buffers(), once.buffers(), strict=True):
        assert torch.equal(a, b)
