"""The result store: a directory with ``manifest.json`` and ``parts/shard-NNNNNN.parquet``.

One row per scenario with outcome counts over the campaign's inputs (columns: scenario,
stratum, site, layer, kind, bit, n_faults, rate, weight, inputs, masked, tolerable, critical,
non_finite, correct). The manifest and its checks are :class:`resil.rundir.RunDirectory`'s;
every part is written under a temporary name and renamed, so a killed run loses at most the
part in flight; ``resil resume DIR`` runs the missing shards only. Query it with pandas
(``pd.read_parquet(DIR / "parts")``) or DuckDB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import FaultError
from ..rundir import RunDirectory, atomic_write, write_table

__all__ = ["Store", "atomic_write"]  # atomic_write: re-exported from resil.rundir for resil.analysis.compare


class Store:
    """A campaign directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.parts = self.root / "parts"
        self._dir = RunDirectory(self.root, "campaign")

    def create(self, manifest: dict[str, Any]) -> None:
        """Start a campaign here, or accept a resumed one (same spec hash and fingerprint).

        Raises:
            FaultError: if the directory holds another run (nothing is touched).
        """
        self._dir.create(manifest)
        self.parts.mkdir(exist_ok=True)

    def check(self, manifest: dict[str, Any]) -> None:
        """Raise if :meth:`create` would refuse ``manifest`` here (nothing is written)."""
        self._dir.check(manifest)

    def manifest(self) -> dict[str, Any]:
        """The campaign's manifest."""
        return self._dir.manifest()

    def part_path(self, shard: int) -> Path:
        return self.parts / f"shard-{shard:06d}.parquet"

    def done(self) -> set[int]:
        """Shards whose part is complete."""
        if not self.parts.exists():
            return set()
        return {int(p.stem.split("-")[1]) for p in self.parts.glob("shard-*.parquet")}

    def write(self, shard: int, columns: dict[str, Any]) -> None:
        """Write one shard's rows atomically."""
        write_table(self.part_path(shard), columns)

    def update_manifest(self, **entries: Any) -> None:
        """Add or replace top-level entries of the stored manifest (e.g. an adaptive campaign's ``stop``)."""
        self._dir.write_manifest({**self.manifest(), **entries})

    def table(self) -> pa.Table:
        """Every complete part, in scenario order."""
        parts = sorted(self.parts.glob("shard-*.parquet"))
        if not parts:
            raise FaultError(f"{self.root} has no results yet")
        return pa.concat_tables([pq.read_table(p) for p in parts]).sort_by("scenario")
