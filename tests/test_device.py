"""[run] device: campaigns on "auto" (this machine's CUDA device, else the CPU) give the plain
loop's table through the fast, grouped and per-sample paths; the manifest records the device and
the numerics; an unknown or unavailable device is one error before any work."""

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

import resil
import resil.campaign as rc
import resil.campaign.evaluator as ev
from resil.campaign.per_sample import SampleGather
from resil.cli import main

HERE = "cuda:0" if torch.cuda.is_available() else "cpu"


def spec(mode: str, device: str, kinds: tuple[str, ...], per_sample: bool, model: str = "dense-cnn") -> rc.CampaignSpec:
    return rc.CampaignSpec(model=rc.ModelSpec((model,)), data=rc.DataSpec(inputs=32), sites=rc.SiteSpec(kinds=kinds),
                           faults=rc.FaultSpec(per_sample=per_sample), sampler=rc.SamplerSpec(kind="uniform", scenarios=60),
                           run=rc.RunSpec(shard_size=30, batch_size=16, mode=mode, device=device), seed=2)


@pytest.mark.parametrize("kinds, per_sample, path", [
    (("weight", "bias"), False, "grouped"),
    (("activation",), False, "grouped"),
    (("activation",), True, "per_sample"),
])
def test_auto_device_fast_paths_give_the_plain_table(tmp_path, monkeypatch, kinds, per_sample, path):
    used = {"grouped": 0, "per_sample": 0}
    real_grouped, real_gather = ev.run_grouped, SampleGather.run

    def grouped(grouped, sc, todo, *a):  # spies: count the scenarios each path took, then return its answer
        rest, stage_of = real_grouped(grouped, sc, todo, *a)
        used["grouped"] += len(todo) - len(rest)
        return rest, stage_of

    def gather(self, sc, todo, *a):
        rest = real_gather(self, sc, todo, *a)
        used["per_sample"] += len(todo) - len(rest)
        return rest

    monkeypatch.setattr(ev, "run_grouped", grouped)
    monkeypatch.setattr(SampleGather, "run", gather)
    fast = rc.run(spec("fast", "auto", kinds, per_sample), tmp_path / "fast")
    plain = rc.run(spec("plain", HERE, kinds, per_sample), tmp_path / "plain")
    assert fast.table().to_pandas().equals(plain.table().to_pandas())
    assert used[path] > 0  # the path under test ran (on the campaign device)
    numerics = fast.manifest()["numerics"]
    assert numerics["device"] == HERE and numerics["torch"] == torch.__version__
    if HERE.startswith("cuda"):
        assert not numerics["tf32_matmul"] and not numerics["tf32_cudnn"]


def test_default_device_keeps_the_spec_hash_of_directories_written_before_it():
    d = spec("fast", "cpu", ("weight",), False).to_dict()
    del d["run"]["device"], d["base"], d["sampler"]["stop_margin"], d["sampler"]["max_scenarios"]  # as hashed before these fields
    assert spec("fast", "cpu", ("weight",), False).hash() == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    assert spec("fast", "cuda", ("weight",), False).hash() != spec("fast", "cpu", ("weight",), False).hash()


@pytest.mark.parametrize("device, message", [
    ("tpu", "device must be auto, cpu, cuda or cuda:N"),
    ("cuda:7", "'cuda:7' is not available"),
])
def test_unknown_or_missing_device_is_one_error_before_any_work(tmp_path, capsys, device, message):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    example = str(Path(__file__).parent.parent / "examples" / "quick_uniform.toml")
    assert main(["run", example, "--out", str(tmp_path / "out"), "--device", device]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(resil.FaultError, match=message):
        rc.run(rc.CampaignSpec(run=rc.RunSpec(device=device)), tmp_path / "api")
    assert not (tmp_path / "api").exists()


def test_no_campaign_path_hard_codes_a_device():
    """Tensors follow the tensors they combine with: outside resil.campaign.device (which resolves
    [run] device) no module of the package names a device, except the CPU fallback of a module
    without parameters or tensor outputs in resil.injectors."""
    root = Path(__file__).parent.parent
    pattern = re.compile(r"""device=["']|\.cuda\(|torch\.device\(["']|\.to\(["'](cpu|cuda)""")
    found = [f"{p.relative_to(root)}: {line.strip()}" for p in sorted([*(root / "resil").rglob("*.py"), *(root / "adapters").rglob("*.py")])
             if p.name != "device.py" for line in p.read_text().splitlines() if pattern.search(line)]
    assert found == ['resil/injectors.py: return device if isinstance(device, torch.device) else default or torch.device("cpu")',
                     'resil/injectors.py: return torch.device("cpu")']
