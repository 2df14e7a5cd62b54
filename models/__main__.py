"""Retrain the bundled checkpoints: ``python -m resil.models [NAME ...]``."""

import sys

from . import build_checkpoints

for name, acc in build_checkpoints(sys.argv[1:] or None).items():
    print(f"{name:20s} {acc:.4f}")
