import resil
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
