"""Slurm executor through submitit: its local cluster (a process per task) gives the serial table
bit for bit, a killed task leaves its shard missing and ``resume`` submits only the missing shards;
bad options are refused before any work."""

import os
import shutil
from pathlib import Path

import pytest

import resil
import resil.campaign as rc
from resil.campaign.slurm import SlurmJobError, SlurmOptions, parse_extra
from resil.cli import main

TESTS = str(Path(__file__).parent)
EXAMPLE = str(Path(__file__).parent.parent / "examples" / "quick_uniform.toml")


def spec(model: str = "dense-cnn", **kwargs) -> rc.CampaignSpec:
    return rc.CampaignSpec(model=rc.ModelSpec((model,), kwargs=kwargs), data=rc.DataSpec(dataset="dense-cnn", inputs=32),
                           sampler=rc.SamplerSpec(kind="uniform", scenarios=60), run=rc.RunSpec(shard_size=20), seed=5)


def table(store: rc.Store):
    return store.table().to_pandas()


def test_local_cluster_gives_the_serial_table(tmp_path):
    s = spec()
    serial = table(rc.run(s, tmp_path / "serial"))
    (tmp_path / "c.toml").write_text("""version = 1\nseed = 5\n[data]\ndataset = "dense-cnn"\ninputs = 32\n
[sampler]\nkind = "uniform"\nscenarios = 60\n[run]\nshard_size = 20\n""")
    assert rc.load_spec(tmp_path / "c.toml").hash() == s.hash()
    assert main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "slurm"), "--executor", "slurm", "--slurm-cluster", "local"]) == 0
    assert table(rc.Store(tmp_path / "slurm")).equals(serial)  # pandas: NaN rates equal NaN
    assert len(list((tmp_path / "slurm" / "slurm").glob("*_result.pkl"))) == 3  # a task per shard ran in DIR/slurm


def test_killed_task_then_resume_runs_only_the_missing_shards(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(TESTS)
    monkeypatch.setenv("PYTHONPATH", TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))  # the tasks import dying_models
    deaths = tmp_path / "deaths"
    s = spec("dying_models:dying", deaths=str(deaths), times=1)  # the first task to run a forward exits
    serial = table(rc.run(s, tmp_path / "serial"))  # in this process: nobody dies
    out = tmp_path / "out"
    with pytest.raises(SlurmJobError, match="resume"):
        rc.run(s, out, rc.make_executor("slurm", folder=out / "slurm", slurm=SlurmOptions(cluster="local")))
    assert deaths.read_bytes() == b"x"  # one task died
    missing = 3 - len(rc.Store(out).done())
    assert missing >= 1
    jobs = set((out / "slurm").glob("*_submitted.pkl"))
    assert main(["resume", str(out), "--executor", "slurm", "--slurm-cluster", "local"]) == 0
    assert len(set((out / "slurm").glob("*_submitted.pkl")) - jobs) == missing
    assert table(rc.Store(out)).equals(serial)


@pytest.mark.parametrize("flags, message", [
    (["--slurm-cluster", "slurm"], "needs sbatch on PATH"),
    (["--slurm-cluster", "local", "--slurm-extra", "account"], "KEY=VALUE"),
    (["--slurm-cluster", "local", "--slurm-extra", "time=10"], "use --slurm-time"),
    (["--slurm-cluster", "local", "--slurm-extra", "output=x"], "resil sets it"),
    (["--slurm-cluster", "local", "--slurm-extra", "a=1", "--slurm-extra", "a=2"], "gives a twice"),
    (["--slurm-cluster", "local", "--slurm-partition", "gpu;rm -rf"], "--slurm-partition must be a partition name"),
])
def test_bad_slurm_options_are_one_error_before_any_work(tmp_path, capsys, flags, message):
    if flags[1] == "slurm" and shutil.which("sbatch"):
        pytest.skip("sbatch is installed here")
    assert main(["run", EXAMPLE, "--out", str(tmp_path / "out"), "--executor", "slurm", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_slurm_options_need_the_slurm_executor(tmp_path, capsys):
    assert main(["run", EXAMPLE, "--out", str(tmp_path / "out"), "--slurm-gpus", "1"]) == 2
    assert "--slurm-gpus applies to --executor slurm only" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_options_are_checked_in_python_too():
    assert parse_extra(["qos=high", "mem=8G"]) == {"qos": "high", "mem": "8G"}
    for bad in ({"cluster": "ray"}, {"cpus": 0}, {"array_parallelism": 0}, {"gpus": -1}, {"time": True}):
        with pytest.raises(resil.FaultError, match="--slurm-"):
            SlurmOptions(**{"cluster": "local", **bad})
