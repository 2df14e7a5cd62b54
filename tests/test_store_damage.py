"""A damaged or contended campaign store ends in the table of an undamaged run after ``resume``, or
in a clear refusal: never in a silently wrong table.

The oracle is an independent uninterrupted run of the same campaign into another directory; file
damage is made with plain byte operations, the page-checksum region is found from pyarrow's
column-chunk offsets.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import resil.campaign as rc
from resil.campaign.store import SCHEMA, Store
from resil.errors import FaultError
from resil.rundir import checksum_path, read_table

torch.set_num_threads(1)

SPEC = {"version": 1, "name": "dmg", "seed": 1, "model": {"names": ["dense-cnn"]}, "data": {"dataset": "digits", "inputs": 8},
        "sampler": {"kind": "uniform", "scenarios": 12}, "run": {"shard_size": 3}}  # 4 shards of 3 scenarios


def spec(**changes: object) -> rc.CampaignSpec:
    return rc.spec_from_dict({**SPEC, **changes})


def frame(out: Path):
    return Store(out).table().to_pandas()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """The table of an uninterrupted, undamaged run."""
    return frame(rc.run(spec(), tmp_path_factory.mktemp("reference") / "c").root)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return rc.run(spec(), tmp_path / "c").root


def part(out: Path, shard: int) -> Path:
    return out / "parts" / f"shard-{shard:06d}.parquet"


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def flip(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def last_page_byte(path: Path) -> int:
    """The offset of the last byte of the first column chunk: inside a data page's payload, which
    its page checksum covers."""
    col = pq.ParquetFile(path).metadata.row_group(0).column(0)
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    return start + col.total_compressed_size - 1


def footer_byte(path: Path) -> int:
    """An offset in the middle of the Parquet footer (file metadata, outside every page)."""
    data = path.read_bytes()
    length = int.from_bytes(data[-8:-4], "little")
    return len(data) - 8 - length // 2


def copy_part(src: Path, dst: Path, with_checksum: bool = True) -> None:
    shutil.copyfile(src, dst)
    if with_checksum:
        shutil.copyfile(checksum_path(src), checksum_path(dst))


def foreign_part(out: Path) -> None:
    """Shard 1 of another campaign (another seed: the same layout, other faults), with its checksum."""
    other = rc.run(spec(seed=2), out.parent / "other").root
    copy_part(part(other, 1), part(out, 1))


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (lambda o: part(o, 1).write_bytes(part(o, 1).read_bytes()[:3000]), "shard-000001.parquet is damaged: its SHA-256 differs"),
    "empty": (lambda o: part(o, 1).write_bytes(b""), "shard-000001.parquet is damaged: its SHA-256 differs"),
    "bit flip in a data page": (lambda o: flip(part(o, 2), last_page_byte(part(o, 2)), 3), "shard-000002.parquet is damaged: its SHA-256"),
    "bit flip in the footer": (lambda o: flip(part(o, 2), footer_byte(part(o, 2)), 5), "shard-000002.parquet is damaged: its SHA-256"),
    "copied under another shard's name": (lambda o: copy_part(part(o, 0), part(o, 2)),
                                          r"shard-000002.parquet: it holds 3 scenario ids \(\[0, 1, 2\]...\), "
                                          r"not this shard's ids \(6..8\)"),
    "copied without its checksum": (lambda o: (checksum_path(part(o, 2)).unlink(), copy_part(part(o, 0), part(o, 2), False)),
                                    "shard-000002.parquet has no checksum file .shard-000002.parquet.sha256"),
    "foreign": (foreign_part, r"shard-000001.parquet is a part of another campaign \(spec [0-9a-f]+, this one [0-9a-f]+\)"),
    "beyond the last shard": (lambda o: copy_part(part(o, 3), part(o, 7)),
                              r"shard-000007.parquet: it holds 3 scenario ids .*, "
                              r"not this shard's ids \(none: it is no shard of this campaign\)"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_part_is_refused_when_read_and_recomputed_on_resume(out: Path, reference, case: str) -> None:
    damage, message = DAMAGE[case]
    damage(out)
    with pytest.raises(FaultError, match=message + ".*`resil resume .*` moves it aside and runs its shard again"):
        Store(out).table()
    with pytest.raises(FaultError, match=message):
        rc.failure_estimate(out)
    with pytest.warns(UserWarning, match=message + r".*; moved to .*damaged.*, its shard runs again"):
        resumed = frame(rc.resume(out).root)
    assert resumed.equals(reference)
    assert len(list((out / "damaged").iterdir())) >= 1  # kept, not deleted


def test_a_bit_flip_anywhere_in_a_part_is_refused(out: Path) -> None:
    path = part(out, 1)
    data = path.read_bytes()
    for offset in [*range(0, len(data), 11), *range(len(data) - 8, len(data))]:  # magic, pages, page headers, footer
        flip(path, offset, offset % 8)
        with pytest.raises(FaultError, match="is damaged"):
            read_table(path)
        path.write_bytes(data)
    assert read_table(path).column("scenario").to_pylist() == [3, 4, 5]  # the part restored reads back


def test_page_checksums_are_written_and_verified_without_the_sidecar(out: Path) -> None:
    path = part(out, 2)
    checksum_path(path).unlink()
    flip(path, last_page_byte(path), 3)
    with pytest.raises(FaultError, match=r"not a readable Parquet table.*CRC checksum verification failed"):
        read_table(path, checksum=False)


def test_stray_files_in_parts_are_ignored_with_a_warning(out: Path, reference) -> None:
    (out / "parts" / "shard-notes.parquet").write_bytes(pq.read_table(part(out, 0)).to_pandas().to_parquet())
    (out / "parts" / "README.txt").write_text("my notes")
    ignored = "{} is not a part of this campaign (parts are shard-NNNNNN.parquet): ignored"
    for read in (lambda: frame(out), lambda: frame(rc.resume(out).root)):
        with pytest.warns(UserWarning) as caught:
            assert read().equals(reference)
        assert {str(w.message) for w in caught} == {ignored.format(out / "parts" / n) for n in ("README.txt", "shard-notes.parquet")}
    assert (out / "parts" / "README.txt").read_text() == "my notes"


def test_a_deleted_parts_folder_is_recomputed(out: Path, reference) -> None:
    shutil.rmtree(out / "parts")
    with pytest.raises(FaultError, match="has no results yet: no parts/shard-"):
        Store(out).table()
    assert frame(rc.resume(out).root).equals(reference)


def test_a_killed_writer_leaves_parts_resume_completes(out: Path, reference) -> None:
    part(out, 3).unlink()
    (out / "parts" / ".shard-000003.parquet.123.abcd.tmp").write_bytes(b"half a part")  # a writer killed mid-write
    assert frame(out).equals(reference[reference.scenario < 9].reset_index(drop=True))  # complete parts only
    assert frame(rc.resume(out).root).equals(reference)
    assert not list((out / "parts").glob(".*.tmp"))


@pytest.mark.parametrize("text, message", [
    ('{"version": 1, "name": "dm', "is not valid JSON"),
    ("not json at all", "is not valid JSON"),
    ("", "is not valid JSON"),
    ("[1, 2]", "holds a JSON list, not an object"),
    ('{"version": 1, "parts_schema": "2"}', "has a bad parts_schema '2'; the directory may be damaged"),
])
def test_a_damaged_manifest_is_refused_and_nothing_is_touched(out: Path, text: str, message: str) -> None:
    (out / "manifest.json").write_text(text)
    before = snapshot(out)
    for attempt in (lambda: rc.resume(out), lambda: Store(out).table(), lambda: rc.failure_estimate(out)):
        with pytest.raises(FaultError, match=f"{out}.*{message}"):
            attempt()
    with pytest.raises(FaultError, match=f"^{out}"):  # the damage, or "holds another campaign"
        rc.run(spec(), out)
    assert snapshot(out) == before


def test_a_manifest_without_its_spec_is_refused_on_resume(out: Path) -> None:
    (out / "manifest.json").write_text('{"version": 1, "name": "dmg", "parts_schema": 2}')
    before = snapshot(out)
    with pytest.raises(FaultError, match=f"{out}/manifest.json has no campaign spec; the directory may be damaged"):
        rc.resume(out)
    assert snapshot(out) == before


def test_a_store_of_a_newer_schema_is_refused(out: Path) -> None:
    m = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**m, "parts_schema": 3}))
    before = snapshot(out)
    for attempt in (lambda: rc.resume(out), lambda: Store(out).table(), lambda: rc.run(spec(), out)):
        with pytest.raises(FaultError, match=r"was written by a newer resil \(parts schema 3; this resil reads up to 2\)"):
            attempt()
    assert snapshot(out) == before


def test_a_part_of_a_newer_schema_is_refused_not_recomputed(out: Path) -> None:
    path = part(out, 1)
    t = pq.read_table(path)
    pq.write_table(t.replace_schema_metadata({**t.schema.metadata, b"resil.schema": b"3"}), path)
    checksum_path(path).write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
    before = snapshot(out)
    for attempt in (lambda: rc.resume(out), lambda: Store(out).table()):
        with pytest.raises(FaultError, match=r"shard-000001.parquet was written by a newer resil \(parts schema 3"):
            attempt()
    assert snapshot(out) == before


def test_a_store_of_schema_version_1_is_read(tmp_path: Path, reference) -> None:
    """Stores written before the schema was fixed: no checksums, no version, and a part without
    faults has untyped (null) fault columns."""
    out = tmp_path / "old"
    new = rc.run(spec(), tmp_path / "new").root
    (out / "parts").mkdir(parents=True)
    m = json.loads((new / "manifest.json").read_text())
    del m["parts_schema"]
    (out / "manifest.json").write_text(json.dumps(m))
    for shard in range(4):
        columns = pq.read_table(part(new, shard)).replace_schema_metadata(None).to_pydict()
        if shard == 0:
            columns = {k: ([[] for _ in v] if k.startswith("fault_") else v) for k, v in columns.items()}
        if shard == 1:
            del columns["fault_inputs"]  # stores before per-sample faults: every fault on every input
        pq.write_table(pa.table(columns), part(out, shard))
    assert pq.read_schema(part(out, 0)).field("fault_sites").type == pa.list_(pa.null())
    old = frame(out)
    faults = ["fault_sites", "fault_indices", "fault_masks", "fault_inputs"]
    assert old.drop(columns=faults).equals(reference.drop(columns=faults))
    assert (old.fault_inputs.map(len) == old.fault_masks.map(len)).all() and all(i == -1 for v in old.fault_inputs for i in v)
    assert old.fault_sites[:3].map(len).tolist() == [0, 0, 0] and old.fault_sites[3:].equals(reference.fault_sites[3:])


# --------------------------------------------------------------------------- one writer per directory


def test_a_second_writer_is_refused_naming_the_holder(out: Path) -> None:
    before = snapshot(out)
    with Store(out).lock():
        for attempt in (lambda: rc.resume(out), lambda: rc.run(spec(), out)):
            with pytest.raises(FaultError, match=rf"{out} is being written by pid {os.getpid()} on host {socket.gethostname()} "
                                                 rf"since .* UTC \(lock file .*\.lock\): one writer per run directory"):
                attempt()
    assert {k: v for k, v in snapshot(out).items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}
    rc.resume(out)  # released


def test_a_writer_in_another_process_is_refused_then_its_lock_is_taken_over(tmp_path: Path, reference,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    tests_dir = str(Path(__file__).parent)
    monkeypatch.syspath_prepend(tests_dir)
    slow = {**SPEC, "model": {"names": ["slow_models:slow_cnn"]}, "sampler": {"kind": "uniform", "scenarios": 300}}
    spec_file = tmp_path / "slow.json"
    spec_file.write_text(json.dumps(slow))
    out = tmp_path / "slow"
    code = ("import json, sys, resil.campaign as rc; "
            "rc.run(rc.spec_from_dict(json.load(open(sys.argv[1]))), sys.argv[2])")
    env = {**os.environ, "PYTHONPATH": tests_dir + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", code, str(spec_file), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not list((out / "parts").glob("shard-*.parquet")):
            time.sleep(0.05)
        assert proc.poll() is None, "the other writer ended too early"
        with pytest.raises(FaultError, match=rf"is being written by pid {proc.pid} on host"):
            rc.run(rc.spec_from_dict(slow), out)
        with pytest.raises(FaultError, match=rf"is being written by pid {proc.pid} on host"):
            rc.resume(out)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads((out / ".lock").read_text())["pid"] == proc.pid  # the killed holder is left in the file
    with pytest.warns(UserWarning, match=rf"taking over the lock of pid {proc.pid} on host .*, which is no longer running"):
        resumed = frame(rc.resume(out).root)
    uninterrupted = frame(rc.run(rc.spec_from_dict(slow), tmp_path / "whole").root)
    assert resumed.equals(uninterrupted) and len(resumed) == 300
    assert (out / ".lock").read_text() == ""  # released


# --------------------------------------------------------------------------- failures while writing


def failing_replace(target: str, error: OSError) -> Callable[[str, str], None]:
    """``os.replace`` that fails for files named ``target``."""
    replace = os.replace

    def fake(src, dst):
        if Path(dst).name == target:
            raise error
        replace(src, dst)
    return fake


@pytest.mark.parametrize("error, kind", [
    (OSError(errno.ENOSPC, "No space left on device"), OSError),
    (PermissionError(errno.EACCES, "Permission denied"), PermissionError),
])
def test_disk_full_or_read_only_stops_the_run_and_loses_nothing(tmp_path: Path, reference, monkeypatch: pytest.MonkeyPatch,
                                                               error: OSError, kind: type) -> None:
    out = tmp_path / "c"
    monkeypatch.setattr(os, "replace", failing_replace("shard-000002.parquet", error))
    with pytest.raises(kind, match=rf"{error.strerror}: cannot write {out}/parts/shard-000002.parquet; the shards stored before "
                                   rf"are intact: fix the cause, then `resil resume {out}`") as e:
        rc.run(spec(), out)
    assert e.value.errno == error.errno
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "parts").glob("shard-*")) == ["shard-000000.parquet", "shard-000001.parquet"]
    assert not list((out / "parts").glob(".*.tmp")) and (out / ".lock").read_text() == ""
    assert frame(rc.resume(out).root).equals(reference)


def test_a_read_only_directory_at_the_start_names_the_file(tmp_path: Path, reference, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "c"
    monkeypatch.setattr(os, "replace", failing_replace("manifest.json", PermissionError(errno.EACCES, "Permission denied")))
    with pytest.raises(PermissionError, match=rf"Permission denied: cannot write {out}/manifest.json"):
        rc.run(spec(), out)
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
    assert frame(rc.run(spec(), out).root).equals(reference)


def test_an_interrupted_run_releases_the_lock_and_resumes(tmp_path: Path, reference, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "c"
    write = Store.write

    def interrupted(self, shard, columns):
        if shard == 2:
            raise KeyboardInterrupt
        write(self, shard, columns)

    monkeypatch.setattr(Store, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rc.run(spec(), out)
    monkeypatch.undo()
    assert (out / ".lock").read_text() == "" and len(list((out / "parts").glob("shard-*"))) == 2
    assert frame(rc.resume(out).root).equals(reference)


# --------------------------------------------------------------------------- the fixed schema


def test_a_ber_shard_without_any_fault_has_typed_columns(tmp_path: Path) -> None:
    """At a rate of 1e-12 over the weights of the dense CNN (1,221,120 bits) a scenario holds no
    fault with probability 1 - 1.2e-6: the first shard holds none; the second, at 1e-3, about
    1,221 each (binomial, sd 35)."""
    ber = {**SPEC, "sites": {"kinds": ["weight"]}, "sampler": {"kind": "ber", "rates": [1e-12, 1e-3], "scenarios": 3},
           "run": {"shard_size": 3}}
    store = rc.run(rc.spec_from_dict(ber), tmp_path / "ber")
    first = pq.read_table(part(store.root, 0))
    assert first.schema.remove_metadata() == SCHEMA == pq.read_table(part(store.root, 1)).schema.remove_metadata()
    assert first.schema.field("fault_sites").type == pa.list_(pa.string()) and first.column("n_faults").to_pylist() == [0, 0, 0]
    t = store.table().to_pandas()
    assert (t.masked[:3] == 8).all() and (t.n_faults[3:] > 1000).all()  # no fault: every input masked
    strata = rc.by_stratum(store)
    assert strata.failure.iloc[0] == 0 and len(strata) == 2
    e = rc.failure_estimate(store)
    assert e.n == 6 and 0 <= e.low <= e.value <= e.high <= 1
