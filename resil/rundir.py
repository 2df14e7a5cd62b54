"""Run directories: the one implementation of ``manifest.json``, its checks and atomic writes.

Every result directory of resil (a campaign of :mod:`resil.campaign.store`, a hardening run of
:mod:`resil.training.store`) holds ``manifest.json``: what ran (its ``kind``, its spec's
``spec_hash``, optionally a ``fingerprint`` of the model and inputs it ran on) under schema
``version`` 1. A :class:`RunDirectory` reads it with errors that say what is wrong, and refuses,
before anything is written, a directory holding another run: another kind, another spec, or the
same spec run on another model or other inputs. Every file is written under a temporary name,
fsynced and renamed, and the directory fsynced (:func:`atomic_write`), so a killed run or a lost
power supply leaves complete files or none. Tables (:func:`write_table`) carry Parquet page
checksums and a whole-file SHA-256 in a hidden sidecar (``.NAME.parquet.sha256``, the format of
``sha256sum``); :func:`read_table` verifies both, so a damaged table is refused, never read back
as other numbers. One process writes a run directory at a time (:meth:`RunDirectory.lock`).

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

import contextlib
import hashlib
import json
import os
import secrets
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import filelock
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import FaultError

__all__ = ["LOCK", "MANIFEST", "VERSION", "Kind", "RunDirectory", "atomic_write", "checksum_path", "read_table", "write_table"]

MANIFEST = "manifest.json"
LOCK = ".lock"
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
    """Write ``data`` to ``path`` under a temporary name in the same directory, fsync it, rename it,
    fsync the directory.

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
        fsync_directory(path.parent)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):  # disk full, read-only: say which file (errno kept, so PermissionError stays one)
            raise OSError(e.errno, f"{e.strerror or e}: cannot write {path}") from e
        raise


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    if os.name == "nt":  # pragma: no cover - Windows cannot open a directory; its renames are durable
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checksum_path(path: str | Path) -> Path:
    """The SHA-256 sidecar of the table at ``path``: ``.NAME.sha256`` beside it (hidden, so
    ``pd.read_parquet(folder)`` and ``*.parquet`` globs skip it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.sha256")


def write_table(path: str | Path, columns: dict[str, Any] | pa.Table) -> None:
    """Write ``columns`` (name -> values, or a table) as a Parquet table at ``path``, atomically,
    with page checksums and its SHA-256 sidecar (written first: a table without a matching sidecar
    is incomplete)."""
    sink = pa.BufferOutputStream()
    pq.write_table(columns if isinstance(columns, pa.Table) else pa.table(columns), sink, write_page_checksum=True)
    data = sink.getvalue().to_pybytes()
    path = Path(path)
    atomic_write(checksum_path(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode())
    atomic_write(path, data)


def read_table(path: str | Path, *, checksum: bool = True) -> pa.Table:
    """The table at ``path``, verified against its SHA-256 sidecar (``checksum=False``: only if it
    has one, for tables of older resil versions) and its page checksums.

    Raises:
        FaultError: naming the file, if it is missing, has no sidecar, or does not match it or
            its page checksums, or is not a Parquet table.
    """
    path = Path(path)
    try:
        with pa.OSFile(str(path), "rb") as f:
            data = f.read_buffer()  # Arrow's memory: a buffer of Python's, released by Arrow threads at exit, can abort
    except FileNotFoundError:
        raise FaultError(f"{path} is missing") from None
    side = checksum_path(path)
    if side.exists():
        expected = side.read_text(encoding="utf-8", errors="replace").split(" ", 1)[0].strip()
        if hashlib.sha256(data).hexdigest() != expected:
            raise FaultError(f"{path} is damaged: its SHA-256 differs from the one stored in {side.name} when it was written "
                             f"({data.size} bytes now)")
    elif checksum:
        raise FaultError(f"{path} has no checksum file {side.name}: it was not completely written")
    try:
        return pq.read_table(pa.BufferReader(data), page_checksum_verification=True)
    except (pa.ArrowException, OSError, ValueError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FaultError(f"{path} is damaged: not a readable Parquet table ({why})") from None


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

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold this directory's writer lock (``DIR/.lock``, creating the directory): one process
        writes a run directory at a time. The lock file names its holder (pid, host, time); the
        lock is the operating system's (``filelock``), so it dies with its process, and a holder
        left in the file by a process that did not release it (killed) is taken over with a warning.

        Raises:
            FaultError: naming the holder, if another process holds the lock.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK
        lock = filelock.FileLock(path, timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise FaultError(f"{self.root} is being written by {_holder(path)} (lock file {path}): one writer per run "
                             "directory; wait for it to finish or stop it") from None
        except OSError as e:
            raise OSError(e.errno, f"{e.strerror or e}: cannot create the lock file {path}") from e
        try:
            left = _holder(path, empty="")
            if left:
                warnings.warn(f"{self.root}: taking over the lock of {left}, which is no longer running (it was killed "
                              "or crashed); its stored parts are verified before use", stacklevel=3)
            me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
            with open(path, "w", encoding="utf-8") as f:
                f.write(json.dumps(me))
            yield
        finally:
            with contextlib.suppress(OSError), open(path, "w", encoding="utf-8"):
                pass  # released cleanly: no holder left in the file
            lock.release()

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


def _holder(path: Path, empty: str = "another process") -> str:
    """Who the lock file at ``path`` names: ``pid 12 on host h since 2026-01-01 10:00:00 UTC``."""
    try:
        h = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {h['pid']} on host {h['host']} since {h['since']}"
    except FileNotFoundError:
        return empty
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return empty if not path.read_bytes().strip() else "another process (unreadable lock file)"
