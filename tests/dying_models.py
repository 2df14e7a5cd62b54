"""A model whose forward kills the worker process it runs in (imported by process, Dask and submitit workers)."""

import multiprocessing
import os
from pathlib import Path

import torch

import resil.models as rm


class Dying(torch.nn.Module):
    """The dense reference CNN; in a worker process or a submitit task (never in the main process) its forward ends the
    process with ``os._exit`` while ``deaths`` (a file holding one byte per death) has fewer than
    ``times`` bytes."""

    def __init__(self, deaths: str, times: int) -> None:
        super().__init__()
        self.net = rm.load("dense-cnn")
        self.deaths, self.times = Path(deaths), times

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_worker = multiprocessing.parent_process() is not None or os.environ.get("SUBMITIT_EXECUTOR")
        if in_worker and (self.deaths.stat().st_size if self.deaths.exists() else 0) < self.times:
            with open(self.deaths, "ab") as f:
                f.write(b"x")
            os._exit(3)
        return self.net(x)


def dying(deaths: str, times: int) -> torch.nn.Module:
    return Dying(deaths, times).eval()
