"""The result store: a directory with ``manifest.json`` and ``parts/shard-NNNNNN.parquet``.

One row per scenario with outcome counts over the campaign's inputs, in a fixed, typed schema
(:data:`SCHEMA`, version :data:`SCHEMA_VERSION`, recorded in the manifest as ``parts_schema`` and
in every part's metadata): scenario, stratum, site, layer, kind, bit, n_faults, rate, weight,
fault_sites, fault_indices, fault_masks, fault_inputs (the input each fault hits, -1: every
input), inputs, masked, tolerable, critical, non_finite, correct;
a shard without any fault has typed empty columns too. The manifest and its checks are
:class:`resil.rundir.RunDirectory`'s; every part is written with page checksums and a SHA-256
sidecar (:func:`resil.rundir.write_table`), fsynced and renamed, so a killed run loses at most the
part in flight; ``resil resume DIR`` runs the missing shards only, under the directory's writer
lock (:meth:`Store.lock`).

A part counts as done only once verified: its checksums, its schema, its campaign (spec hash and
fingerprint in its metadata) and its scenario ids, exactly the shard's. When writing
(:meth:`Store.done`), a part that fails is moved to ``DIR/damaged/`` with a warning naming it, and
its shard is run again; when reading (:meth:`Store.table`), it is refused with a
:class:`~resil.errors.FaultError` naming the file. Files in ``parts/`` that are not parts are
ignored with a warning. Query the store with pandas (``pd.read_parquet(DIR / "parts")``) or DuckDB.

Example:
    >>> import tempfile
    >>> s = Store(tempfile.mkdtemp())
    >>> s.create({"name": "t", "spec_hash": "abc", "scenarios": 3, "shard_size": 2})
    >>> s.ids(1).tolist(), s.done()
    ([2], set())
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import FaultError
from ..rundir import RunDirectory, atomic_write, checksum_path, read_table, write_table

#: atomic_write: re-exported from resil.rundir for resil.analysis.compare
__all__ = ["SCHEMA", "SCHEMA_VERSION", "Store", "atomic_write", "shard_ids"]

#: Version of :data:`SCHEMA`; stores without one (``parts_schema`` in the manifest) are version 1,
#: whose parts may have untyped fault columns and no checksums.
SCHEMA_VERSION = 2
_counts = [pa.field(c, pa.int64()) for c in ("inputs", "masked", "tolerable", "critical", "non_finite", "correct")]
#: The columns of every part.
SCHEMA = pa.schema([
    pa.field("scenario", pa.int64()), pa.field("stratum", pa.string()), pa.field("site", pa.string()), pa.field("layer", pa.string()),
    pa.field("kind", pa.string()), pa.field("bit", pa.int64()), pa.field("n_faults", pa.int64()), pa.field("rate", pa.float64()),
    pa.field("weight", pa.float64()), pa.field("fault_sites", pa.list_(pa.string())), pa.field("fault_indices", pa.list_(pa.int64())),
    pa.field("fault_masks", pa.list_(pa.int64())), pa.field("fault_inputs", pa.list_(pa.int64())), *_counts,
])
_PART = re.compile(r"shard-(\d{6})\.parquet")
_RESUME = "`resil resume {root}` moves it aside and runs its shard again"


def shard_ids(shard: int, shard_size: int, scenarios: int) -> np.ndarray:
    """The scenario ids of shard ``shard`` of a campaign of ``scenarios`` in shards of ``shard_size``.

    Example:
        >>> shard_ids(2, 4, 10).tolist()
        [8, 9]
    """
    return np.arange(shard * shard_size, min((shard + 1) * shard_size, scenarios), dtype=np.int64)


class _Damaged(Exception):
    """A part that cannot count as done (the reason is the message)."""


class Store:
    """A campaign directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.parts = self.root / "parts"
        self.damaged = self.root / "damaged"
        self._dir = RunDirectory(self.root, "campaign")

    def create(self, manifest: dict[str, Any]) -> None:
        """Start a campaign here, or accept a resumed one (same spec hash and fingerprint).

        The manifest gives the shards' scenario ids: ``scenarios`` and ``shard_size`` (shard k
        holds ids ``k * shard_size`` on), or ``shard_scenarios``, the number of scenarios of each
        shard in order.

        Raises:
            FaultError: if the directory holds another run, or a store of a newer schema, or the
                manifest does not give the shards (nothing is touched).
        """
        if self.ids(0, manifest) is None:
            raise FaultError(f"a campaign manifest gives its shards: scenarios and shard_size, or shard_scenarios (got {sorted(manifest)})")
        self._dir.create({**manifest, "parts_schema": SCHEMA_VERSION})
        self.manifest()
        self.parts.mkdir(exist_ok=True)

    def check(self, manifest: dict[str, Any]) -> None:
        """Raise if :meth:`create` would refuse ``manifest`` here (nothing is written)."""
        if self._dir.check(manifest) is not None:
            self.manifest()

    def lock(self) -> AbstractContextManager[None]:
        """A context holding the directory's writer lock: see :meth:`resil.rundir.RunDirectory.lock`."""
        return self._dir.lock()

    def manifest(self) -> dict[str, Any]:
        """The campaign's manifest.

        Raises:
            FaultError: if it is missing or damaged, or written by a newer resil.
        """
        m = self._dir.manifest()
        version = m.get("parts_schema", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise FaultError(f"{self._dir.path} has a bad parts_schema {version!r}; the directory may be damaged")
        if version > SCHEMA_VERSION:
            raise FaultError(f"{self.root} was written by a newer resil (parts schema {version}; this resil reads up to "
                             f"{SCHEMA_VERSION}): upgrade resil to read or resume it")
        return m

    def part_path(self, shard: int) -> Path:
        return self.parts / f"shard-{shard:06d}.parquet"

    def ids(self, shard: int, manifest: dict[str, Any] | None = None) -> np.ndarray | None:
        """The scenario ids shard ``shard`` holds (None if the manifest does not say, or ``shard``
        is no shard of it: then it holds none)."""
        m = self.manifest() if manifest is None else manifest
        if isinstance(m.get("shard_scenarios"), list):
            counts = m["shard_scenarios"]
            if not 0 <= shard < len(counts):
                return np.zeros(0, dtype=np.int64)
            start = int(sum(counts[:shard]))
            return np.arange(start, start + int(counts[shard]), dtype=np.int64)
        size, total = m.get("shard_size"), m.get("scenarios")
        if not isinstance(size, int) or not isinstance(total, int):
            return None
        return shard_ids(shard, size, total)

    def done(self) -> set[int]:
        """Shards whose part is verified (for writers, under :meth:`lock`): damaged parts are moved
        to ``DIR/damaged/`` with a warning, so their shards run again; temporary files of killed
        writers are deleted."""
        m = self.manifest()
        if not self.parts.exists():
            return set()
        for tmp in self.parts.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        done = set()
        for shard, path in self._parts():
            try:
                self._verify(path, shard, m)
                done.add(shard)
            except _Damaged as e:
                self._set_aside(path, str(e))
        return done

    def read(self, shard: int) -> pa.Table:
        """One shard's verified part.

        Raises:
            FaultError: naming the file, if it is missing or damaged.
        """
        path = self.part_path(shard)
        try:
            return self._verify(path, shard, self.manifest())
        except _Damaged as e:
            raise FaultError(f"{e}; {_RESUME.format(root=self.root)}") from None

    def write(self, shard: int, columns: dict[str, Any]) -> None:
        """Write one shard's rows (:data:`SCHEMA`'s columns, the shard's scenario ids) atomically.

        Raises:
            FaultError: if the columns or the ids are not the shard's (nothing is written).
        """
        m = self.manifest()
        missing, unknown = [c for c in SCHEMA.names if c not in columns], sorted(set(columns) - set(SCHEMA.names))
        if missing or unknown:
            raise FaultError(f"shard {shard} of {self.root}: the columns of a part are {SCHEMA.names}; missing {missing}, "
                             f"unknown {unknown}")
        table = pa.table({c: columns[c] for c in SCHEMA.names}, schema=SCHEMA.with_metadata(_metadata(m)))
        try:
            _check_ids(table, self.ids(shard, m))
        except _Damaged as e:
            raise FaultError(f"shard {shard} of {self.root}: {e}") from None
        self.parts.mkdir(exist_ok=True)
        write_table(self.part_path(shard), table)

    def update_manifest(self, **entries: Any) -> None:
        """Add or replace top-level entries of the stored manifest (e.g. an adaptive campaign's ``stop``)."""
        self._dir.write_manifest({**self.manifest(), **entries})

    def table(self) -> pa.Table:
        """Every complete part, verified, in scenario order.

        Raises:
            FaultError: naming the file, if a part is damaged; if there are no parts.
        """
        m = self.manifest()
        tables = []
        for shard, path in self._parts():
            try:
                tables.append(self._verify(path, shard, m).replace_schema_metadata(None))
            except _Damaged as e:
                raise FaultError(f"{e}; {_RESUME.format(root=self.root)}") from None
        if not tables:
            raise FaultError(f"{self.root} has no results yet: no parts/shard-*.parquet")
        table = pa.concat_tables(tables).sort_by("scenario")
        ids = table.column("scenario").to_numpy()
        repeated = np.unique(ids[1:][ids[1:] == ids[:-1]])
        if len(repeated):
            raise FaultError(f"{self.parts} holds scenario ids {repeated[:5].tolist()} in more than one part; the directory is damaged")
        return table

    def _parts(self) -> Iterator[tuple[int, Path]]:
        """Every part file (shard, path) in ``parts/``; other files are ignored with a warning."""
        if not self.parts.exists():
            return
        for path in sorted(self.parts.iterdir()):
            if path.name.startswith("."):
                continue  # checksum sidecars, temporary files
            match = _PART.fullmatch(path.name)
            if match and path.is_file():
                yield int(match[1]), path
            else:
                warnings.warn(f"{path} is not a part of this campaign (parts are shard-NNNNNN.parquet): ignored", stacklevel=3)

    def _verify(self, path: Path, shard: int, manifest: dict[str, Any]) -> pa.Table:
        """The part at ``path``, if it is shard ``shard``'s of this campaign (else :class:`_Damaged`)."""
        legacy = manifest.get("parts_schema", 1) < 2
        try:
            table = read_table(path, checksum=not legacy)
        except FaultError as e:
            raise _Damaged(str(e)) from None
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items() if k.startswith(b"resil.")}
        version = int(meta.get("resil.schema", "1"))
        if version > SCHEMA_VERSION:
            raise FaultError(f"{path} was written by a newer resil (parts schema {version}; this resil reads up to {SCHEMA_VERSION})")
        if not legacy and version < 2:
            raise _Damaged(f"{path} is not a part of this campaign: it has no parts schema version")
        if version >= 2 and meta.get("resil.run") != _metadata(manifest)["resil.run"]:
            spec = json.loads(meta.get("resil.run", "{}")).get("spec_hash")
            raise _Damaged(f"{path} is a part of another campaign (spec {spec}, this one {manifest.get('spec_hash')})")
        if table.schema.remove_metadata() != SCHEMA:
            if legacy and "fault_inputs" not in table.column_names and "fault_masks" in table.column_names:
                every = [[-1] * len(m) for m in table.column("fault_masks").to_pylist()]  # version 1: faults on every input
                table = table.append_column("fault_inputs", pa.array(every, pa.list_(pa.int64())))
            try:
                table = table.select(SCHEMA.names).cast(SCHEMA)  # version 1: untyped empty fault columns
            except (KeyError, pa.ArrowException) as e:
                raise _Damaged(f"{path} does not have the columns of a part ({str(e).splitlines()[0]})") from None
        try:
            _check_ids(table, self.ids(shard, manifest))
        except _Damaged as e:
            raise _Damaged(f"{path}: {e}") from None
        return table

    def _set_aside(self, path: Path, reason: str) -> None:
        """Move a damaged part (and its checksum file) to ``DIR/damaged/``, warning with ``reason``."""
        self.damaged.mkdir(exist_ok=True)
        n, dest = 0, self.damaged / path.name
        while dest.exists():
            n += 1
            dest = self.damaged / f"{path.name}.{n}"
        path.replace(dest)
        side = checksum_path(path)
        if side.exists():
            side.replace(checksum_path(dest))
        warnings.warn(f"{reason}; moved to {dest}, its shard runs again", stacklevel=3)


def _metadata(manifest: dict[str, Any]) -> dict[str, str]:
    """A part's metadata: the schema version and the campaign it belongs to (spec hash, fingerprint)."""
    run = {"spec_hash": manifest.get("spec_hash"), "fingerprint": manifest.get("fingerprint")}
    return {"resil.schema": str(SCHEMA_VERSION), "resil.run": json.dumps(run, sort_keys=True)}


def _check_ids(table: pa.Table, expected: np.ndarray | None) -> None:
    """Raise :class:`_Damaged` unless ``table`` holds exactly the scenario ids ``expected`` (None:
    any ids, each once)."""
    ids = np.sort(table.column("scenario").to_numpy(zero_copy_only=False))
    if expected is None:
        if len(np.unique(ids)) != len(ids):
            raise _Damaged("it holds a scenario id more than once")
    elif not np.array_equal(ids, expected):
        what = (f"{len(ids)} scenario ids ({ids[:3].tolist()}...)" if len(ids) else "no scenarios")
        want = f"{expected[0]}..{expected[-1]}" if len(expected) else "none: it is no shard of this campaign"
        raise _Damaged(f"it holds {what}, not this shard's ids ({want})")
