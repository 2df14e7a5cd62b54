"""Injection: corrupts what it should (against numpy oracles), restores bit-exactly, fails early."""

import struct
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import resil

MODELS = [resil.BitFlip(), resil.StuckAt(0), resil.StuckAt(1), resil.Zero(), resil.RandomValue(7), resil.Burst(3)]


def snapshot(net: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().reshape(-1).copy().view(np.uint8) for k, v in net.state_dict().items()}


def assert_bit_identical(net: nn.Module, snap: dict[str, np.ndarray]) -> None:
    now = snapshot(net)
    for k in snap:
        assert np.array_equal(now[k], snap[k]), f"{k} not restored"


def random_faults(site_list, n: int, rng: np.random.Generator, models=MODELS) -> resil.FaultSet:
    stored = [s for s in site_list if not s.batched]
    pick = rng.integers(0, len(stored), n)
    names = np.array([s.name for s in stored])[pick]
    if n < 5000:
        index = np.array([rng.integers(0, stored[p].numel) for p in pick])
    else:
        index = (rng.random(n) * np.array([s.numel for s in stored])[pick]).astype(np.int64)
    bits = rng.integers(0, 30, n)
    model = [models[i] for i in rng.integers(0, len(models), n)]
    return resil.FaultSet(site=names, index=index, bit=bits, model=model)


def oracle_state(net: nn.Module, faults: resil.FaultSet) -> dict[str, np.ndarray]:
    """The expected float32 storage after applying the faults one by one in pure numpy."""
    state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items() if v.dtype == torch.float32}
    for f in faults:
        u = state[f.site].reshape(-1).view(np.uint32)
        mask = sum(1 << b for b in f.bits)
        m = f.model
        if isinstance(m, resil.BitFlip):
            u[f.index] ^= np.uint32(mask)
        elif isinstance(m, resil.StuckAt):
            u[f.index] = (int(u[f.index]) | mask) if m.value else (int(u[f.index]) & ~mask & 0xFFFFFFFF)
        elif isinstance(m, resil.Zero):
            u[f.index] = 0
        else:
            raise NotImplementedError(m)
    return state


def test_each_model_corrupts_exactly_like_a_sequential_numpy_oracle(cnn):
    rng = np.random.default_rng(0)
    site_list = resil.sites(cnn)
    deterministic = [m for m in MODELS if not isinstance(m, resil.RandomValue)]
    fs = random_faults(site_list, 3000, rng, deterministic)
    # add duplicates: the same elements again with other faults
    fs = resil.FaultSet.concat([fs, fs[:500], random_faults(site_list, 500, rng, deterministic)])
    again = resil.FaultSet(site=fs.site_names[fs.site[0]], index=int(fs.index[0]), bit=[3, 3, 4], model=resil.BitFlip())
    fs = resil.FaultSet.concat([fs, again])
    expected = oracle_state(cnn, fs)
    with resil.inject(cnn, fs):
        for k, v in expected.items():
            got = cnn.state_dict()[k].numpy().view(np.uint32)
            assert np.array_equal(got, v.view(np.uint32)), k


def test_two_flips_of_one_bit_cancel_and_different_bits_combine(cnn):
    w = cnn.fc.weight
    before = struct.unpack("<I", struct.pack("<f", float(w[0, 0].detach())))[0]
    faults = [resil.Fault("fc.weight", (0, 0), bit=5), resil.Fault("fc.weight", 0, bit=5), resil.Fault("fc.weight", 0, bit=[1, 2])]
    with resil.inject(cnn, faults):
        after = struct.unpack("<I", struct.pack("<f", float(w[0, 0].detach())))[0]
    assert after == before ^ 0b110


@pytest.mark.parametrize("n", [1, 1000, 100_000])
def test_restore_is_bit_exact_after_normal_exit_and_exception(cnn, images, n):
    rng = np.random.default_rng(n)
    site_list = resil.sites(cnn)
    snap = snapshot(cnn)
    fs = random_faults(site_list, n, rng)
    with resil.inject(cnn, fs):
        cnn(images)
        if n > 1:
            assert any(not np.array_equal(a, b) for a, b in zip(snapshot(cnn).values(), snap.values(), strict=True))
    assert_bit_identical(cnn, snap)
    with pytest.raises(RuntimeError, match="boom"), resil.inject(cnn, fs):
        raise RuntimeError("boom")
    assert_bit_identical(cnn, snap)


def test_nested_blocks_restore_in_order(cnn):
    snap = snapshot(cnn)
    outer = resil.Fault("conv1.weight", (0, 0, 1, 1), bit=30)
    inner = resil.Fault("conv1.weight", (0, 0, 1, 1), bit=2)
    with resil.inject(cnn, outer):
        mid = snapshot(cnn)
        with resil.inject(cnn, inner):
            assert not np.array_equal(snapshot(cnn)["conv1.weight"], mid["conv1.weight"])
        assert_bit_identical(cnn, mid)
    assert_bit_identical(cnn, snap)


def test_activation_fault_matches_manual_forward():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    x = torch.randn(3, 5)
    h = net[0](x).detach().numpy().copy()
    h.view(np.uint32)[:, 2] ^= np.uint32(1 << 30)
    expected = net[2](torch.relu(torch.from_numpy(h)))
    with resil.inject(net, resil.Fault("0:out", 2, bit=30)):
        got = net(x)
    assert torch.equal(got, expected)
    assert torch.equal(net(x), net[2](torch.relu(net[0](x))))  # hook removed


def test_per_sample_activation_fault_changes_only_its_batch_element(cnn, images):
    site_list = resil.sites(cnn, images)
    clean = cnn(images)
    big = resil.ValueFunction(lambda v: torch.full_like(v, 1e3))
    with resil.inject(cnn, resil.Fault("conv2:out", (3, 2, 2), model=big, batch=4), sites=site_list):
        faulty = cnn(images)
    changed = (faulty != clean).any(dim=1)
    assert changed.tolist() == [False, False, False, False, True, False]


def test_batch_element_outside_batch_fails_and_restores(cnn, images):
    snap = snapshot(cnn)
    faults = [resil.Fault("fc.weight", 0, bit=30), resil.Fault("conv2:out", 0, bit=30, batch=6)]
    with pytest.raises(resil.FaultError, match="batch element 6 is outside the batch of 6"), resil.inject(cnn, faults):
        cnn(images)
    assert_bit_identical(cnn, snap)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "grad"])
def test_works_under_every_autograd_mode(cnn, images, mode):
    snap = snapshot(cnn)
    faults = [resil.Fault("conv1.weight", 0, bit=28), resil.Fault("conv1:out", 5, bit=29)]
    ctx = {"no_grad": torch.no_grad(), "inference_mode": torch.inference_mode(), "grad": torch.enable_grad()}[mode]
    clean = cnn(images).detach()
    with ctx, resil.inject(cnn, faults):
        y = cnn(images)
        if mode == "grad":
            y.sum().backward()
            assert cnn.conv1.weight.grad is not None and torch.isfinite(cnn.fc.weight.grad).all()
    assert not torch.equal(y.detach(), clean)
    assert_bit_identical(cnn, snap)


def errors_case(cnn):
    return {
        "unknown site": ([resil.Fault("conv1.wieght", 0, bit=1)], "unknown site 'conv1.wieght'; did you mean 'conv1.weight'"),
        "index": ([resil.Fault("fc.bias", 10, bit=1)], r"index 10 is outside site 'fc.bias' of shape \(10,\)"),
        "tuple index": ([resil.Fault("fc.bias", (10,), bit=1)], r"index \(10,\) is outside site 'fc.bias'"),
        "bit": ([resil.Fault("fc.bias", 0, bit=32)], "bit 32 is outside the 32-bit float32 encoding of site 'fc.bias'"),
        "burst": ([resil.Fault("fc.bias", 0, bit=30, model=resil.Burst(3))], "bit 32 is outside the 32-bit"),
        "no bit": ([resil.Fault("fc.bias", 0)], "BitFlip on 'fc.bias' needs a bit"),
        "batch on weight": ([resil.Fault("fc.bias", 0, bit=1, batch=0)], "stored bias; faults on it cannot name a batch element"),
    }


@pytest.mark.parametrize("case", list(errors_case(None)))
def test_bad_faults_fail_before_anything_changes(cnn, case):
    faults, message = errors_case(cnn)[case]
    faults = [resil.Fault("conv1.weight", 0, bit=30), *faults]  # a valid fault first: must not be applied
    snap = snapshot(cnn)
    with pytest.raises(resil.FaultError, match=message), resil.inject(cnn, faults):
        raise AssertionError("block entered")
    assert_bit_identical(cnn, snap)


def test_fault_model_that_does_not_apply_is_rejected(cnn):
    @dataclass(frozen=True)
    class OnlyActivations(resil.BitFlip):
        def not_applicable(self, encoding, kind):
            return None if kind == "activation" else f"it models datapath faults, not {kind} storage"

    message = r"OnlyActivations does not apply to site 'fc\.weight': it models datapath faults, not weight storage"
    with pytest.raises(resil.FaultError, match=message), resil.inject(cnn, resil.Fault("fc.weight", 0, bit=1, model=OnlyActivations())):
        pass


def test_half_precision_and_int_storage():
    lin = nn.Linear(2, 2).to(torch.bfloat16)
    before = lin.weight.detach().clone()
    with resil.inject(lin, resil.Fault("weight", 1, bit=15)):
        assert lin.weight[0, 1].item() == -before[0, 1].item()
    assert torch.equal(lin.weight.view(torch.int16), before.view(torch.int16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_gpu(cnn, images):
    net, x = cnn.cuda(), images.cuda()
    snap = snapshot(net.cpu())
    net.cuda()
    with resil.inject(net, [resil.Fault("conv1.weight", 0, bit=30), resil.Fault("conv1:out", 0, bit=30, batch=1)]):
        net(x)
    assert_bit_identical(net.cpu(), snap)


@pytest.mark.parametrize("step, changed", [(2, [2]), ((1, 3), [1, 2]), (None, [0, 1, 2, 3])])
def test_step_windows_select_the_calls_of_a_reused_module(step, changed):
    torch.manual_seed(0)
    lin = nn.Linear(3, 3)
    x = torch.randn(2, 3)
    clean = lin(x)
    with torch.no_grad(), resil.inject(lin, resil.Fault(":out", 1, bit=30, step=step)):
        outs = [lin(x) for _ in range(4)]
        resil.reset_steps(lin)
        again = [lin(x) for _ in range(4)]
    for seq in (outs, again):
        assert [t for t, y in enumerate(seq) if not torch.equal(y, clean)] == changed


def test_stored_faults_cannot_name_steps(cnn):
    transient = resil.Fault("fc.weight", 0, bit=1, step=3)
    with pytest.raises(resil.FaultError, match="stored weight: its faults are permanent"), resil.inject(cnn, transient):
        pass


def test_many_activation_flips_with_duplicates_match_numpy():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 40), nn.ReLU(), nn.Linear(40, 3)).eval()
    x = torch.randn(4, 5)
    rng = np.random.default_rng(3)
    index, bits = rng.integers(0, 40, 30), rng.integers(0, 30, 30)  # dense enough for the one-mask path; finite
    h = net[0](x).detach().numpy().copy()
    for i, b in zip(index, bits, strict=True):
        h.view(np.uint32)[:, i] ^= np.uint32(1 << int(b))
    expected = net[2](torch.relu(torch.from_numpy(h)))
    for mode in (torch.no_grad, torch.enable_grad):
        with mode(), resil.inject(net, resil.FaultSet(site="0:out", index=index, bit=bits)):
            got = net(x)
        assert torch.equal(got, expected)


def test_output_sharing_storage_with_its_input_is_copied_before_corruption():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.same = nn.Linear(3, 3), nn.Identity()

        def forward(self, x):
            h = self.lin(x)
            return self.same(h) + h

    torch.manual_seed(0)
    net, x = Residual().eval(), torch.randn(2, 3)
    h = net.lin(x).detach().numpy().copy()
    faulty = h.copy()
    faulty.view(np.uint32)[:, 1] ^= np.uint32(1 << 30)
    with torch.no_grad(), resil.inject(net, resil.Fault("same:out", 1, bit=30)):
        got = net(x)
    assert torch.equal(got, torch.from_numpy(faulty + h))


def _flipped(value: float, bit: int) -> float:
    """``value`` as float32 with ``bit`` flipped (struct: the IEEE-754 bit pattern)."""
    (code,) = struct.unpack("<I", struct.pack("<f", value))
    return struct.unpack("<f", struct.pack("<I", code ^ (1 << bit)))[0]


@pytest.mark.parametrize("model", [resil.BitFlip(), resil.StuckAt(1)])
def test_blocks_exiting_out_of_order_restore_bit_exactly_and_raise(cnn, model):
    """Two overlapping blocks on one element exiting first-in-first-out (as two threads sharing a
    model would): the weight used to stay corrupted for good (0.0932 -> 3.17e37)."""
    snap = snapshot(cnn)
    w0 = float(cnn.conv1.weight.detach()[0, 0, 1, 1])
    first = resil.inject(cnn, resil.Fault("conv1.weight", (0, 0, 1, 1), bit=30, model=model))
    second = resil.inject(cnn, resil.Fault("conv1.weight", (0, 0, 1, 1), bit=29))
    unrelated = resil.inject(cnn, resil.Fault("fc.bias", 3, bit=30))  # other modules: left applied as it is
    first.__enter__()
    second.__enter__()
    unrelated.__enter__()
    with pytest.raises(resil.FaultError, match="exited out of order"):
        first.__exit__(None, None, None)
    # only the open block's fault remains, applied to the original value
    assert float(cnn.conv1.weight.detach()[0, 0, 1, 1]) == _flipped(w0, 29)
    assert float(cnn.fc.bias.detach()[3]) == _flipped(float(snap["fc.bias"].view(np.float32)[3]), 30)
    second.__exit__(None, None, None)
    unrelated.__exit__(None, None, None)
    assert_bit_identical(cnn, snap)


def test_three_blocks_exiting_in_any_order_restore_bit_exactly(cnn):
    snap = snapshot(cnn)
    blocks = [resil.inject(cnn, resil.Fault("conv1.weight", (0, 0, 1, 1), bit=b, model=m))
              for b, m in ((30, resil.StuckAt(1)), (29, resil.BitFlip()), (3, resil.StuckAt(0)))]
    for b in blocks:
        b.__enter__()
    for i in (1, 0):
        with pytest.raises(resil.FaultError, match="exited out of order"):
            blocks[i].__exit__(None, None, None)
    blocks[2].__exit__(None, None, None)
    assert_bit_identical(cnn, snap)
