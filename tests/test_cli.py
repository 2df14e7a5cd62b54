from resil.cli import main


def test_sites_lists_every_site_of_a_bundled_model(capsys):
    assert main(["sites", "dense-cnn"]) == 0
    out = capsys.readouterr().out
    assert "conv1.weight" in out and "(16, 1, 3, 3)" in out and "fc2:out" in out and "(10,)" in out


def test_sites_of_a_factory_model_with_input_shape(capsys):
    assert main(["sites", "resil.models.nets:digits_cnn", "--input-shape", "1,8,8"]) == 0
    assert "(32, 4, 4)" in capsys.readouterr().out


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["sites", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_demo_prints_clean_and_faulty_outputs(capsys):
    assert main(["demo", "--random-flips", "50"]) == 0
    out = capsys.readouterr().out
    assert "none (golden run)" in out and "faulty logits" in out
    assert "restored: True" in out


def test_run_resume_and_report_from_the_command_line(tmp_path, capsys):
    spec = tmp_path / "c.toml"
    spec.write_text('version = 1\nname = "c"\n[model]\nnames = ["dense-cnn", "int8"]\n[data]\ninputs = 8\n'
                    '[sampler]\nkind = "uniform"\nscenarios = 6\n[run]\nshard_size = 4\n')
    assert main(["run", str(spec), "--out", str(tmp_path / "runs"), "--report", str(tmp_path / "report")]) == 0
    assert (tmp_path / "runs" / "dense-cnn" / "manifest.json").exists() and (tmp_path / "runs" / "int8" / "manifest.json").exists()
    html = (tmp_path / "report" / "report.html").read_text()
    assert "dense-cnn" in html and "int8" in html and "data:image/png;base64," in html
    (tmp_path / "runs" / "int8" / "parts" / "shard-000001.parquet").unlink()
    assert main(["resume", str(tmp_path / "runs")]) == 0
    assert (tmp_path / "runs" / "int8" / "parts" / "shard-000001.parquet").exists()
    capsys.readouterr()


def test_run_checks_every_file_before_starting(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text('version = 1\n[data]\ninputs = 4\n[sampler]\nscenarios = 2\n')
    assert main(["run", str(good), str(tmp_path / "missing.toml"), "--out", str(tmp_path / "out")]) == 2
    assert "missing.toml' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
