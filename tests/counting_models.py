"""A model whose forward appends the id of the process it runs in to a file (read by the executor tests)."""

import os
from pathlib import Path

import torch

import resil.models as rm


class Counting(torch.nn.Module):
    """The dense reference CNN; each forward appends ``<pid>\\n`` to ``log``."""

    def __init__(self, log: str) -> None:
        super().__init__()
        self.net = rm.load("dense-cnn")
        self.log = Path(log)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return self.net(x)


def counting(log: str) -> torch.nn.Module:
    return Counting(log).eval()
