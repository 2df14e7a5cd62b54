"""Run directories: the one implementation of ``manifest.json``, its checks and atomic writes.

Every result directory of resil (a campaign of :mod:`resil.campaign.store`, a hardening run of
:mod:`resil.training.store`) holds ``manifest.json``: what ran (its ``kind``, its spec's
``spec_hash``, optionally a ``fingerprint`` of the model and inputs it ran on) under schema
``version`` 1. A :class:`RunDirectory` reads it with errors that say what is wrong, and refuses,
before anything is written, a directory holding another run: another kind, another spec, or the
same spec run on another model or other inputs. Every file is written under a temporary name
and renamed (:func:`atomic_write`), so a killed run leaves complete files or none.

Example:
    >>> import tempfile
    >>> d = RunDirectory(tempfile.mkdtemp(), "campaign")
    >>> run = {"name": "t", "spec_hash": "abc", "fingerprint": {"model": "m1", "inputs": "i1"}}
    >>> d.create(run)
    >>> d.manifest()["version"], d.manifest()["kind"], d.check(run) is not None  # the same run resumes
    (1, 'campaign', True)
    >>> d.create({**run, "fingerprint": {"model": "m2", "inputs": "i1"}})
    Traceback (most recent call last):
    ...
    resil.errors.FaultError: ... was run on a different model (parameters/buffers hash m1 stored, m2 now); resuming ...
"""

from __future__ import annotations

import io
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import FaultError

__all__ = ["MANIFEST", "VERSION", "Kind", "RunDirectory", "atomic_write", "write_table"]

MANIFEST = "manifest.json"
VERSION = 1
CHOOSE = "choose another --out directory or delete it"

Kind = Literal["campaign", "harden"]


@dataclass(frozen=True)
class _Kind:
    """How errors name a kind of run directory and the runs in it."""

    directory: str  # "not a <directory>"
    noun: str  # "..., not <noun>"
    another: str  # "holds another <another> (<label>, spec ...)"
    label: Callable[[dict[str, Any]], str]  # the run, in a few characters
    this: str  # "holds <this>", with {} for the label
    results: str  # where its results are


_KINDS: dict[str, _Kind] = {
    "campaign": _Kind("campaign directory", "a campaign", "campaign", lambda m: repr(m.get("name")), "a campaign {}",
                      "the Parquet parts in parts/"),
    "harden": _Kind("run directory", "a `resil harden` run", "run", lambda m: str(m.get("command", "?")),
                    "a `resil harden {}` run", "the Parquet tables and report.png in it"),
}

# fingerprint part: (what differs, what its hash is of, what resuming would mix)
_PARTS = {"model": ("a different model", "parameters/buffers hash", "two models"),
          "inputs": ("different inputs", "inputs hash", "two input sets")}


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` under a temporary name in the same directory, fsync it, rename it.

    The temporary name holds the pid and a random token, so concurrent writers of one path never
    share a temporary file; readers see the old file or a new one, never a partial one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_table(path: str | Path, columns: dict[str, Any]) -> None:
    """Write ``columns`` (name -> values) as a Parquet table at ``path``, atomically."""
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    atomic_write(path, buf.getvalue())


class RunDirectory:
    """A run directory of one kind (``"campaign"`` or ``"harden"``): its manifest and its checks."""

    def __init__(self, root: str | Path, kind: Kind) -> None:
        self.root = Path(root)
        self.kind = kind
        self.path = self.root / MANIFEST
        self._kind = _KINDS[kind]

    def manifest(self) -> dict[str, Any]:
        """The stored manifest.

        Raises:
            FaultError: if there is none, it is damaged, or it is another kind's.
        """
        m = self._read()
        found = self._found(m)
        if found is not self._kind:
            raise FaultError(f"{self.root} holds {found.this.format(found.label(m))}, not {self._kind.noun}: "
                             f"its results are {found.results}")
        return m

    def check(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Whether the run ``manifest`` may go here: ``None`` if the directory is new, the stored
        manifest if it holds this run (same spec hash, same fingerprint where both have one).

        Raises:
            FaultError: if the directory is a file or holds another run (nothing is touched).
        """
        unknown = sorted(set(manifest.get("fingerprint") or {}) - set(_PARTS))
        if unknown:
            raise FaultError(f"unknown fingerprint part(s) {unknown}; a fingerprint has {list(_PARTS)}")
        for p in (self.root, *self.root.parents):
            if p.exists():
                if not p.is_dir():
                    raise FaultError(f"{p} exists and is not a directory: {CHOOSE}" if p == self.root else
                                     f"{p} is a file, so {self.root} cannot be created: choose another --out directory")
                break
        if not self.path.exists():
            return None
        old = self._read()
        found = self._found(old)
        spec = f"spec {old.get('spec_hash')}"
        if found is not self._kind:
            raise FaultError(f"{self.root} holds {found.this.format(found.label(old))} ({spec}), not {self._kind.noun}; {CHOOSE}")
        if old.get("spec_hash") != manifest["spec_hash"]:
            raise FaultError(f"{self.root} holds another {found.another} ({found.label(old)}, {spec}); {CHOOSE}")
        was, now = old.get("fingerprint") or {}, manifest.get("fingerprint") or {}
        differ = [p for p in _PARTS if p in was and p in now and was[p] != now[p]]
        if differ:
            ran = " and ".join(f"{_PARTS[p][0]} ({_PARTS[p][1]} {was[p]} stored, {now[p]} now)" for p in differ)
            mixed = " and ".join(_PARTS[p][2] for p in differ)
            raise FaultError(f"{self.root} was run on {ran}; resuming would mix results of {mixed}: {CHOOSE}")
        return old

    def create(self, manifest: dict[str, Any], *, replace: bool = False) -> None:
        """Start the run ``manifest`` here (after :meth:`check`), stamped with this kind and
        :data:`VERSION`. Resuming it keeps the stored manifest (a run that continues) unless
        ``replace`` (a run that starts over)."""
        if self.check(manifest) is not None and not replace:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_manifest({**manifest, "version": VERSION, "kind": self.kind})

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Replace the stored manifest, atomically."""
        atomic_write(self.path, json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())

    def _read(self) -> dict[str, Any]:
        try:
            m = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FaultError(f"{self.root} is not a {self._kind.directory} (no {MANIFEST})") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise FaultError(f"{self.path} is not valid JSON: {e}; the directory may be damaged") from None
        if not isinstance(m, dict):
            raise FaultError(f"{self.path} holds a JSON {type(m).__name__}, not an object; the directory may be damaged")
        if m.get("version", VERSION) != VERSION:
            raise FaultError(f"{self.path} has schema version {m['version']!r}; this resil reads version {VERSION}")
        return m

    def _found(self, m: dict[str, Any]) -> _Kind:
        kind = m.get("kind", "campaign")  # campaign manifests had no kind before
        if kind not in _KINDS:
            raise FaultError(f"{self.path} has an unknown kind {kind!r} (known: {list(_KINDS)}); the directory may be damaged")
        return _KINDS[kind]
