"""Offline datasets with deterministic splits.

``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, values 0..16 scaled to
[0, 1]), split 80/20 per class with a fixed seed. Read from the CSV that ships inside the
scikit-learn wheel, so nothing is downloaded.

Example:
    >>> from resil.models import dataset
    >>> d = dataset("digits")
    >>> tuple(d.x_test.shape), d.classes
    ((359, 1, 8, 8), 10)
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from resil.training.data import Dataset, stratified_split


def _packaged_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the dataset ships inside the {package!r} package, which is not installed")
    return Path(spec.origin).parent.joinpath(*parts)


def digits(seed: int = 0) -> Dataset:
    """scikit-learn's digits as 1x8x8 images in [0, 1], 80/20 stratified split."""
    with gzip.open(_packaged_file("sklearn", "datasets", "data", "digits.csv.gz"), "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x, y = raw[:, :64].reshape(-1, 1, 8, 8) / 16.0, raw[:, 64].astype(np.int64)
    tr, te = stratified_split(y, 0.2, seed)
    t = torch.from_numpy
    return Dataset("digits", t(x[tr]), t(y[tr]), t(x[te]), t(y[te]), 10)
