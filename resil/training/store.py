"""Result directories of hardening runs (``resil harden ftt|fat|search``), kept like campaigns.

A run directory holds ``manifest.json`` (what ran: the command, its spec and the spec's hash,
the status and, once complete, a summary of the results), one Parquet file per result table
(``<table>.parquet``), the trained model (``model.pt``) and a report (``report.png``). Every
file is written under a temporary name and renamed (:func:`resil.rundir.atomic_write`), so a
killed run leaves complete files or none. The manifest and its checks are
:class:`resil.rundir.RunDirectory`'s, as a campaign's are: a directory holding a run of another
spec (or of the same spec on another model or other inputs, when the caller passes their
fingerprint) is refused before anything is written; the same run may be run again into it (the
results are deterministic).

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
import torch

from ..errors import FaultError
from ..rundir import RunDirectory, atomic_write, read_table, write_table

__all__ = ["RunStore", "spec_hash"]


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
        self._dir = RunDirectory(self.root, "harden")

    def check(self, command: str, spec: dict[str, Any], fingerprint: dict[str, str] | None = None) -> None:
        """Raise if the directory holds another run (nothing is touched).

        ``fingerprint`` (optional): ``{"model": hash, "inputs": hash}`` of what the run runs on.

        Raises:
            FaultError: naming the run found there.
        """
        self._dir.check(_manifest(command, spec, fingerprint))

    def create(self, command: str, spec: dict[str, Any], fingerprint: dict[str, str] | None = None) -> None:
        """Start a run here (after :meth:`check`): write the manifest with status ``running``."""
        self._dir.create(_manifest(command, spec, fingerprint), replace=True)

    def manifest(self) -> dict[str, Any]:
        """The run's manifest."""
        return self._dir.manifest()

    def write_table(self, name: str, columns: dict[str, Any]) -> Path:
        """Write one result table as ``<name>.parquet``, atomically."""
        path = self.root / f"{name}.parquet"
        write_table(path, columns)
        return path

    def table(self, name: str) -> pa.Table:
        """A stored result table."""
        path = self.root / f"{name}.parquet"
        if not path.exists():
            raise FaultError(f"{self.root} has no table {name!r}")
        return read_table(path, checksum=False)  # verified by its checksums (runs of older resil versions have none)

    def save_model(self, state: Any, name: str = "model.pt") -> Path:
        """Save a checkpoint (e.g. a state dict) atomically."""
        buf = io.BytesIO()
        torch.save(state, buf)
        return self.write_bytes(name, buf.getvalue())

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write any file (a PNG, a JSON document) atomically."""
        path = self.root / name
        atomic_write(path, data)
        return path

    def finish(self, results: dict[str, Any]) -> None:
        """Mark the run complete, with a summary of its results in the manifest."""
        m = self.manifest()
        m.update(status="complete", results=results)
        self._dir.write_manifest(m)


def _manifest(command: str, spec: dict[str, Any], fingerprint: dict[str, str] | None) -> dict[str, Any]:
    m = {"command": command, "spec": spec, "spec_hash": spec_hash(command, spec), "status": "running"}
    return {**m, "fingerprint": fingerprint} if fingerprint else m
