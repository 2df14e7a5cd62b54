"""Where a campaign computes: ``[run] device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) and the
numerics settings that keep its outcomes bit-exact.

The runner moves the model, the inputs and the labels to the device before the golden run;
everything the evaluator derives from them (golden outputs, stage inputs, fault masks and faulty
values) follows the tensors it combines with. On CUDA the campaign's process turns TF32 off for
matmuls and cuDNN convolutions (TF32 rounds float32 inputs to 10 mantissa bits, hiding flips of
the low mantissa bits) and cuDNN autotuning off (its choice of kernels may differ between runs);
the manifest records the device, the torch version and these settings.

Example:
    >>> resolve_device("cpu"), resolve_device("auto").type in ("cpu", "cuda")
    (device(type='cpu'), True)
    >>> resolve_device("tpu")
    Traceback (most recent call last):
    ...
    resil.errors.FaultError: [run] device must be auto, cpu, cuda or cuda:N (N a device number), not 'tpu'
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..errors import FaultError

DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"


def check_device_name(name: str) -> None:
    """Refuse a device string other than ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not isinstance(name, str) or not re.fullmatch(DEVICE_PATTERN, name):
        raise FaultError(f"[run] device must be auto, cpu, cuda or cuda:N (N a device number), not {name!r:.80}")


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` a campaign runs on: ``auto`` is the first CUDA device if there is one,
    else the CPU; a CUDA device this machine does not have is an error."""
    check_device_name(name)
    if name == "auto":
        name = "cuda:0" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index or 0
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA device (or a torch built without CUDA)"
            raise FaultError(f"[run] device {name!r} is not available: this machine has {have}; use device = \"cpu\" or \"auto\"")
        device = torch.device("cuda", index)
    return device


def exact_numerics(device: torch.device) -> dict[str, Any]:
    """Set this process's numerics for bit-exact campaigns on ``device`` and describe them (for the manifest)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
    return {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "threads": torch.get_num_threads()}
