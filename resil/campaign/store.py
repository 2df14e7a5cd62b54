"""The result store: a directory with ``manifest.json`` and ``parts/shard-NNNNNN.parquet``.

One row per scenario with outcome counts over the campaign's inputs (columns: scenario,
stratum, site, layer, kind, bit, n_faults, rate, weight, inputs, masked, tolerable, critical,
non_finite, correct). Every part is written under a temporary name and renamed, so a killed
run loses at most the part in flight; ``resil resume DIR`` runs the missing shards only.
Query it with pandas (``pd.read_parquet(DIR / "parts")``) or DuckDB.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import FaultError

MANIFEST = "manifest.json"


class Store:
    """A campaign directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.parts = self.root / "parts"

    def create(self, manifest: dict[str, Any]) -> None:
        """Start a campaign here, or accept a resumed one with the same spec hash.

        Raises:
            FaultError: if the directory holds another campaign (nothing is touched).
        """
        if (self.root / MANIFEST).exists():
            old = self.manifest()
            if old.get("spec_hash") != manifest["spec_hash"]:
                raise FaultError(
                    f"{self.root} holds another campaign ({old.get('name')!r}, spec {old.get('spec_hash')}); "
                    "choose another --out directory or delete it"
                )
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())

    def manifest(self) -> dict[str, Any]:
        """The campaign's manifest."""
        try:
            manifest = json.loads((self.root / MANIFEST).read_text())
        except FileNotFoundError:
            raise FaultError(f"{self.root} is not a campaign directory (no {MANIFEST})") from None
        if manifest.get("kind") == "harden":
            raise FaultError(f"{self.root} holds a `resil harden {manifest.get('command', '')}` run, not a campaign: "
                             "its results are the Parquet tables and report.png in it")
        return manifest

    def part_path(self, shard: int) -> Path:
        return self.parts / f"shard-{shard:06d}.parquet"

    def done(self) -> set[int]:
        """Shards whose part is complete."""
        if not self.parts.exists():
            return set()
        return {int(p.stem.split("-")[1]) for p in self.parts.glob("shard-*.parquet")}

    def write(self, shard: int, columns: dict[str, Any]) -> None:
        """Write one shard's rows atomically."""
        tmp = self.parts / f".shard-{shard:06d}.parquet.tmp"
        pq.write_table(pa.table(columns), tmp)
        os.replace(tmp, self.part_path(shard))

    def table(self) -> pa.Table:
        """Every complete part, in scenario order."""
        parts = sorted(self.parts.glob("shard-*.parquet"))
        if not parts:
            raise FaultError(f"{self.root} has no results yet")
        return pa.concat_tables([pq.read_table(p) for p in parts]).sort_by("scenario")


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
