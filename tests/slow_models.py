"""Models for tests that need a campaign slow enough to interrupt, or a worker that dies (imported by a subprocess)."""

import os
import signal
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


class DiesOnce(torch.nn.Module):
    """The dense reference CNN; the first submitit task to find the file ``marker`` removes it and kills itself (SIGKILL)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.net, self.marker = rm.load("dense-cnn"), marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not os.environ.get("SUBMITIT_EXECUTOR"):
            return self.net(x)
        try:
            os.rename(self.marker, self.marker + ".taken")  # one process wins
        except FileNotFoundError:
            return self.net(x)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


def dying_cnn(marker: str) -> torch.nn.Module:
    return DiesOnce(marker).eval()
