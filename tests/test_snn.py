"""Spiking networks (snnTorch): state, spike and parameter faults with time steps."""

import copy

import numpy as np
import pytest
import snntorch as snn
import torch
from torch import nn

import resil

T = 6


def flip_bit(t: torch.Tensor, flat: int, bit: int, batch: int | None = None) -> torch.Tensor:
    """A copy of ``t`` with one bit flipped in numpy (every sample, or one)."""
    a = t.detach().numpy().copy().reshape(t.shape[0], -1)
    rows = slice(None) if batch is None else batch
    a.view(np.uint32)[rows, flat] ^= np.uint32(1 << bit)
    return torch.from_numpy(a.reshape(t.shape))


class ExplicitNet(nn.Module):
    """Linear -> Leaky -> Linear -> Leaky with explicit state, mem read-out per step."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.lif1 = nn.Linear(4, 5), snn.Leaky(beta=0.8)
        self.fc2, self.lif2 = nn.Linear(5, 3), snn.Leaky(beta=0.8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mem1, mem2 = self.lif1.reset_mem(), self.lif2.reset_mem()
        out = []
        for t in range(x.shape[0]):
            spk1, mem1 = self.lif1(self.fc1(x[t]), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            out.append(torch.stack([spk2, mem2]))
        return torch.stack(out)  # [T, 2, B, 3]

    def by_hand(self, x: torch.Tensor, t0: int, flat: int, bit: int) -> torch.Tensor:
        """The same loop, corrupting lif1's stored membrane after step t0 by hand."""
        mem1, mem2 = self.lif1.reset_mem(), self.lif2.reset_mem()
        out = []
        for t in range(x.shape[0]):
            spk1, mem1 = self.lif1(self.fc1(x[t]), mem1)
            if t == t0:
                mem1 = flip_bit(mem1, flat, bit)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            out.append(torch.stack([spk2, mem2]))
        return torch.stack(out)


def hidden_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), snn.Leaky(beta=0.8, init_hidden=True), nn.Linear(5, 3),
                         snn.Leaky(beta=0.8, init_hidden=True, output=True))


def run_hidden(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    resil.reset(net)
    return torch.stack([torch.stack(net(x[t])) for t in range(x.shape[0])])


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(T, 2, 4, generator=torch.Generator().manual_seed(0)) * 3


@pytest.mark.parametrize("t0", [0, 2, 4])
def test_membrane_fault_matches_a_hand_written_loop_explicit_state(x, t0):
    net = ExplicitNet().eval()
    site_list = resil.sites(net, x)
    assert site_list["lif1.mem"].shape == (5,) and site_list["lif1.mem"].kind == "state"
    with torch.no_grad():
        clean = net(x)
        expected = net.by_hand(x, t0, flat=1, bit=30)
        with resil.inject(net, resil.Fault("lif1.mem", 1, bit=30, step=t0)):  # neuron 1 then fires at every later step
            got = net(x)
    assert torch.equal(got, expected)
    assert torch.equal(got[: t0 + 1], clean[: t0 + 1])  # steps up to t0 unchanged (no re-firing)
    assert not torch.equal(got, clean)


def test_membrane_fault_with_init_hidden_matches_explicit(x):
    net, ref = hidden_net().eval(), ExplicitNet().eval()
    renamed = {k.replace("0.", "fc1.").replace("2.", "fc2."): v for k, v in net.state_dict().items() if "." in k and k[0] in "02"}
    ref.load_state_dict(renamed, strict=False)
    resil.sites(net, x[0])
    with torch.no_grad():
        expected = ref.by_hand(x, 2, flat=1, bit=30)
        with resil.inject(net, resil.Fault("1.mem", 1, bit=30, step=2)):
            got = run_hidden(net, x)
            again = run_hidden(net, x)  # resil.reset restarts the step count: same result
    assert torch.equal(got, expected) and torch.equal(again, expected)


def test_spike_flip_changes_only_that_step_and_neuron_of_the_layer(x):
    net = hidden_net().eval()
    resil.sites(net, x[0])
    spikes = {}  # what the next layer receives
    net[2].register_forward_pre_hook(lambda m, a: spikes.setdefault("rec", []).append(a[0].clone()))
    with torch.no_grad():
        run_hidden(net, x)
        clean = torch.stack(spikes.pop("rec"))
        with resil.inject(net, resil.Fault("1.spk", 2, bit=0, step=3, batch=1)):
            run_hidden(net, x)
        faulty = torch.stack(spikes.pop("rec"))
    diff = (faulty != clean).nonzero().tolist()
    assert diff == [[3, 1, 2]]
    assert faulty[3, 1, 2] == 1 - clean[3, 1, 2]


def test_stuck_spike_range_and_permanent_windows(x):
    net = hidden_net().eval()
    resil.sites(net, x[0])
    rec = []
    net[2].register_forward_pre_hook(lambda m, a: rec.append(a[0].clone()))
    for step, steps in [((1, 4), [1, 2, 3]), (None, list(range(T)))]:
        rec.clear()
        with torch.no_grad(), resil.inject(net, resil.Fault("1.spk", 0, bit=0, model=resil.StuckAt(1), step=step)):
            run_hidden(net, x)
        fired = [t for t in range(T) if bool((rec[t][:, 0] == 1).all())]
        assert set(steps) <= set(fired)


def test_per_neuron_threshold_fault(x):
    net = hidden_net().eval()
    site_list = resil.sites(net, x[0])
    assert site_list["1.threshold"].shape == (5,) and site_list["1.threshold"].kind == "parameter"
    with torch.no_grad():
        with resil.inject(net, resil.Fault("1.threshold", 2, bit=31), sites=site_list):  # threshold of neuron 2 becomes -1.0
            got = run_hidden(net, x)
            assert net[1].threshold.shape == (5,)
        assert net[1].threshold.shape == () and float(net[1].threshold) == 1.0
        manual = hidden_net().eval()
        manual[1].threshold = torch.tensor([1.0, 1.0, -1.0, 1.0, 1.0])
        expected = run_hidden(manual, x)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("neuron, states", [
    (lambda: snn.Leaky(beta=0.5), ["mem"]),
    (lambda: snn.Synaptic(alpha=0.9, beta=0.8), ["syn", "mem"]),
    (lambda: snn.Alpha(alpha=0.9, beta=0.8), ["syn_exc", "syn_inh", "mem"]),
    (lambda: snn.Lapicque(beta=0.9), ["mem"]),
    (lambda: snn.RLeaky(beta=0.9, linear_features=5), ["mem"]),
    (lambda: snn.RSynaptic(alpha=0.9, beta=0.8, linear_features=5), ["syn", "mem"]),
])
def test_every_neuron_type_has_state_spike_and_parameter_sites(neuron, states):
    net = nn.Sequential(nn.Linear(4, 5), neuron())
    x = torch.rand(3, 4)
    s = resil.sites(net, x)
    names = [n[2:] for n in s.names() if n.startswith("1.")]
    assert [n for n in names if n in ("syn", "syn_exc", "syn_inh", "mem")] == states
    assert "spk" in names and "threshold" in names and s["1.threshold"].shape == (5,)
    assert s["1.spk"].encoding.bits == 1 and s["1.mem"].shape == (5,)
    clean = [net(x) for _ in range(3)]
    resil.reset(net)
    charge = resil.ValueFunction(lambda v: torch.full_like(v, 10.0))
    with torch.no_grad(), resil.inject(net, [resil.Fault(f"1.{st}", 0, model=charge, step=0) for st in states]):
        faulty = [net(x) for _ in range(3)]
    def flat(o):
        return torch.cat([t.reshape(-1) for t in o]) if isinstance(o, tuple) else o.reshape(-1)

    assert torch.equal(faulty[0][0], clean[0][0])  # the spikes of step 0 are not recomputed
    assert not torch.equal(flat(faulty[1]), flat(clean[1]))  # the state read at step 1 is the corrupted one


def test_reset_reaches_deep_copies(x):
    net = hidden_net().eval()
    with torch.no_grad():
        a = run_hidden(net, x)
        twin = copy.deepcopy(net)
        b = run_hidden(twin, x)
        c = run_hidden(twin, x)
    assert torch.equal(a, b) and torch.equal(b, c)
