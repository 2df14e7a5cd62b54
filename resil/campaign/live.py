"""Live models and data handed to worker processes: saved once into the run directory.

``out/live/model.pt`` holds the model object (pickled with ``torch.save``: its classes must be
importable where the workers run: defined in an installed module, in the script that starts the
run, or in a file loaded by :func:`resil.campaign.sources.load_model`, whose path is recorded in
``out/live/modules.json`` and loaded again in the worker) and ``out/live/data.pt`` the inputs
and labels (tensors only, read with ``weights_only=True``). Each worker loads them once per process and checks their fingerprints
against the manifest's, so every executor evaluates the same model on the same inputs.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> d = save_live(Path(tempfile.mkdtemp()) / "live", torch.nn.Linear(2, 1), torch.ones(3, 2), None)
    >>> model, (x, y) = load_live(d)
    >>> type(model).__name__, tuple(x.shape), y
    ('Linear', (3, 2), None)
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import json
import sys
from pathlib import Path

import torch
from torch import nn

from ..errors import FaultError
from ..rundir import atomic_write

LIVE = "live"


def save_live(folder: Path, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None) -> Path:
    """Save the model object and the data into ``folder`` (atomically); return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, obj in (("model.pt", model), ("data.pt", {"x": inputs, "y": labels})):
        buf = io.BytesIO()
        try:
            torch.save(obj, buf)
        except Exception as e:  # pickling a local class, a lambda ...
            raise FaultError(f"cannot send the live {name[:-3]} to worker processes: {type(e).__name__}: {e}; "
                             "define its class in an importable module, or use the serial executor") from None
        atomic_write(folder / name, buf.getvalue())
    atomic_write(folder / "modules.json", json.dumps(_file_modules(model), sort_keys=True).encode())
    return folder


def _file_modules(model: nn.Module) -> dict[str, str]:
    """The modules defining the model's classes that cannot be imported by name, with their files."""
    found = {}
    for m in model.modules():
        name = type(m).__module__
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        top = name.split(".")[0]
        if name != "__main__" and path and top not in sys.builtin_module_names and importlib.machinery.PathFinder.find_spec(top) is None:
            found[name] = path
    return found


def _import_files(modules: dict[str, str]) -> None:
    for name, path in modules.items():
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise FaultError(f"cannot load {path}, which defines the live model's classes")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)


def load_live(folder: Path) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor | None]]:
    """The model and ``(inputs, labels)`` saved by :func:`save_live`."""
    try:
        _import_files(json.loads((folder / "modules.json").read_text()))
        model = torch.load(folder / "model.pt", map_location="cpu", weights_only=False)  # written by save_live
        data = torch.load(folder / "data.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FaultError(f"{folder} holds no live model and data (model.pt, data.pt)") from None
    return model, (data["x"], data["y"])
