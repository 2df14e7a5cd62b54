"""Result directories of hardening runs (``resil harden ftt|fat|search``), kept like campaigns.

A run directory holds ``manifest.json`` (what ran: the command, its spec and the spec's hash,
the status and, once complete, a summary of the results), one Parquet file per result table
(``<table>.parquet``), the trained model (``model.pt``) and a report (``report.png``). Every
file is written under a temporary name and renamed (:func:`resil.campaign.store.atomic_write`,
the campaign store's own), so a killed run leaves complete files or none. A directory holding a
run of another spec is refused before anything is written, as campaign directories are; the
same spec may be run again into it (the results are deterministic).

Example:
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> s = RunStore(root)
    >>> s.create("ftt", {"model": "dense-cnn", "epochs": 1})
    >>> _ = s.write_table("results", {"arm": ["normal", "ftt"], "clean": [0.9, 0.8]})
    >>> s.finish({"gain": 0.1})
    >>> s.manifest()["status"], s.table("results").to_pydict()["arm"]
    ('complete', ['normal', 'ftt'])
    >>> RunStore(root).create("ftt", {"model": "int8", "epochs": 1})
    Traceback (most recent call last):
    ...
    resil.errors.FaultError: ... holds another run (ftt, spec ...); choose another --out directory or delete it
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..campaign.store import MANIFEST, atomic_write
from ..errors import FaultError

__all__ = ["RunStore", "spec_hash"]

VERSION = 1


def spec_hash(command: str, spec: dict[str, Any]) -> str:
    """A short hash of everything that determines a run's results.

    Example:
        >>> spec_hash("ftt", {"a": 1}) == spec_hash("ftt", {"a": 1}) != spec_hash("fat", {"a": 1})
        True
    """
    return hashlib.sha256(json.dumps({"command": command, "spec": spec}, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunStore:
    """A hardening run directory (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def check(self, command: str, spec: dict[str, Any]) -> None:
        """Raise if the directory holds a run of another spec (nothing is touched).

        Raises:
            FaultError: naming the run found there.
        """
        path = self.root / MANIFEST
        if self.root.exists() and not self.root.is_dir():
            raise FaultError(f"{self.root} exists and is not a directory")
        if path.exists():
            old = self.manifest()
            if old.get("spec_hash") != spec_hash(command, spec):
                what = old.get("command") or old.get("name") or "campaign"
                raise FaultError(f"{self.root} holds another run ({what}, spec {old.get('spec_hash')}); "
                                 "choose another --out directory or delete it")

    def create(self, command: str, spec: dict[str, Any]) -> None:
        """Start a run here (after :meth:`check`): write the manifest with status ``running``."""
        self.check(command, spec)
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_manifest({"version": VERSION, "kind": "harden", "command": command, "spec": spec,
                              "spec_hash": spec_hash(command, spec), "status": "running"})

    def manifest(self) -> dict[str, Any]:
        """The run's manifest."""
        try:
            return json.loads((self.root / MANIFEST).read_text())
        except FileNotFoundError:
            raise FaultError(f"{self.root} is not a run directory (no {MANIFEST})") from None

    def write_table(self, name: str, columns: dict[str, Any]) -> Path:
        """Write one result table as ``<name>.parquet``, atomically."""
        buf = io.BytesIO()
        pq.write_table(pa.table(columns), buf)
        path = self.root / f"{name}.parquet"
        atomic_write(path, buf.getvalue())
        return path

    def table(self, name: str) -> pa.Table:
        """A stored result table."""
        path = self.root / f"{name}.parquet"
        if not path.exists():
            raise FaultError(f"{self.root} has no table {name!r}")
        return pq.read_table(path)

    def save_model(self, state: Any, name: str = "model.pt") -> Path:
        """Save a checkpoint (e.g. a state dict) atomically."""
        buf = io.BytesIO()
        torch.save(state, buf)
        path = self.root / name
        atomic_write(path, buf.getvalue())
        return path

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write any file (a PNG, a JSON document) atomically."""
        path = self.root / name
        atomic_write(path, data)
        return path

    def finish(self, results: dict[str, Any]) -> None:
        """Mark the run complete, with a summary of its results in the manifest."""
        m = self.manifest()
        m.update(status="complete", results=results)
        self._write_manifest(m)

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write(self.root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())
