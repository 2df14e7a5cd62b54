import numpy as np
import torch

import resil.models as rm


def test_digits_split_is_deterministic_stratified_and_disjoint():
    a, b = rm.dataset("digits"), rm.dataset("digits")
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert len(a.x_train) + len(a.x_test) == 1797
    counts = np.bincount(a.y_test.numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of the 174..183 images per class
    assert float(a.x_train.max()) == 1.0 and float(a.x_train.min()) == 0.0


def test_every_reference_loads_with_its_recorded_accuracy():
    for name in rm.names():
        d = rm.dataset(name)
        acc = rm.accuracy(rm.load(name), d.x_test, d.y_test)
        assert acc == rm.info(name).accuracy
        assert acc >= (0.97 if name == "dense-cnn" else 0.94)
        assert rm.info(name).checkpoint.stat().st_size < 1_000_000


def test_retraining_reproduces_the_recorded_accuracy():
    torch.set_num_threads(1)
    _, acc = rm.retrain("dense-cnn")
    assert abs(acc - rm.info("dense-cnn").accuracy) <= 0.01
