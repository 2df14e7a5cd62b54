"""Models for tests that need a campaign slow enough to interrupt (imported by a subprocess)."""

import time

import torch

import resil.models as rm


class Slow(torch.nn.Module):
    """The dense reference CNN, 5 ms slower per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.net = rm.load("dense-cnn")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.005)
        return self.net(x)


def slow_cnn() -> torch.nn.Module:
    return Slow().eval()
