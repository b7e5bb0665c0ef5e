"""One cut of a log at a time (eventlog.cutlock): a second cut waits for the first, or is
refused with one line; a cutter killed leaves no lock, and what it left half written in the
archive goes at the next cut. SQLite and PostgreSQL, with real processes holding the lock."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from eventlog import retention
from eventlog.archive import MANIFEST, boundary
from eventlog.cutlock import cut_lock
from eventlog.errors import CutBusyError, LogOpenError, UsageError
from eventlog.location import LogLocation
from eventlog.store import LogStore, Purpose, open_log
from tests.cli import BIN, run_cli
from tests.integration.log.test_retention import batch_walls, live_events, write_log
from tests.recording import db_argument

EVENTS = 6_000

# A process that holds a log's cut lock until its standard input closes.
_HOLDER = """
import sys
from eventlog.cutlock import cut_lock
from eventlog.location import resolve
from eventlog.store import LogStore, Purpose, open_log
with open_log(resolve(sys.argv[1]), Purpose.ADMIN) as store, cut_lock(store):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextmanager
def lock_held_elsewhere(db: str) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the cut lock of ``db`` for the block (or until killed)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, db],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield holder
    finally:
        if holder.poll() is None:
            assert holder.stdin is not None
            holder.stdin.close()
        holder.wait(timeout=30)


def free_soon(store: LogStore) -> None:
    """Return once the cut lock of ``store`` is free (within 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            with cut_lock(store):
                return
        except CutBusyError:
            assert time.monotonic() < deadline, "the cut lock stayed held"
            time.sleep(0.1)


def test_a_compact_waits_for_the_cut_under_way(log_location: LogLocation, tmp_path: Path) -> None:
    write_log(log_location, EVENTS)
    db = db_argument(log_location)
    walls = batch_walls(log_location)
    with lock_held_elsewhere(db):
        compact = subprocess.Popen(
            [str(BIN / "scope-replay"), "compact", "--db", db, "--before", str(walls[-2]),
             "--archive", str(tmp_path / "archive")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert compact.stderr is not None
        waiting = compact.stderr.readline()
        assert "another cut of this log is under way" in waiting, waiting
        assert "waiting for it to end" in waiting
        # It waits in the lock: nothing moved yet.
        with open_log(log_location, Purpose.READ) as store:
            assert boundary(store).archived_upto == 0
        assert compact.poll() is None
    out, err = compact.communicate(timeout=120)
    assert compact.returncode == 0, err
    assert "moved" in out and err == ""
    with open_log(log_location, Purpose.READ) as store:
        assert boundary(store).archived_upto > 0


def test_a_cut_that_does_not_wait_is_refused(log_location: LogLocation, tmp_path: Path) -> None:
    write_log(log_location, EVENTS)
    walls = batch_walls(log_location)
    with open_log(log_location, Purpose.ADMIN) as store:
        with cut_lock(store):
            # another connection, as another process would
            with open_log(log_location, Purpose.ADMIN) as other:
                with pytest.raises(CutBusyError, match="another cut of this log is under way"):
                    retention.cut(other, retention.cut_before(other, walls[-2]),
                                  tmp_path / "archive")  # fmt: skip
        assert boundary(store).archived_upto == 0
        assert live_events(log_location) == EVENTS
        # Let go: the next cut runs.
        result = retention.cut(store, retention.cut_before(store, walls[-2]), tmp_path / "archive")
        assert result.archived_upto > 0


def test_a_recorders_retention_says_once_that_it_waits(
    sqlite_location: LogLocation, tmp_path: Path
) -> None:
    write_log(sqlite_location, EVENTS)
    said: list[str] = []
    policy = retention.RetentionPolicy(tmp_path / "archive", retain_ns=1, min_cut_positions=1)
    worker = retention.RetentionWorker(sqlite_location, policy, said.append)
    with open_log(sqlite_location, Purpose.ADMIN) as store:
        with lock_held_elsewhere(db_argument(sqlite_location)):
            worker.run_once(store)
            worker.run_once(store)
            assert len(said) == 1, said
            assert said[0].startswith("note: retention: ")
            assert said[0].endswith("another cut of this log is under way: cutting after it")
            assert worker.cuts == [] and boundary(store).archived_upto == 0
        worker.run_once(store)
    assert said[1:] == ["note: retention: the other cut is over"]
    assert len(worker.cuts) == 1 and worker.cuts[0].archived_upto > 0
    with open_log(sqlite_location, Purpose.READ) as store:
        assert boundary(store).archived_upto == worker.cuts[0].archived_upto


def test_a_cutter_killed_leaves_no_lock_and_its_leftovers_go(
    log_location: LogLocation, tmp_path: Path
) -> None:
    write_log(log_location, EVENTS)
    db = db_argument(log_location)
    walls = batch_walls(log_location)
    archive = tmp_path / "archive"
    first = run_cli("scope-replay", "compact", "--db", db, "--before", str(walls[len(walls) // 3]),
                    "--archive", str(archive))  # fmt: skip
    assert first.returncode == 0, first.stderr
    listed = {p.name for p in archive.iterdir()}
    # What a cut killed while it wrote would leave: a segment written and not listed, one
    # half written, a manifest half written. And a file of the operator's own.
    (archive / "000000999001-000001000000").mkdir()
    (archive / "000000999001-000001000000" / "events.parquet").write_bytes(b"PAR1")
    (archive / ".000000999001-000001000000.partial").mkdir()
    (archive / f".{MANIFEST}.partial").write_text("{")
    (archive / "README.txt").write_text("kept by hand")
    with lock_held_elsewhere(db) as holder:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    with open_log(log_location, Purpose.ADMIN) as store:
        # The lock went with its holder (a PostgreSQL server notices the session's end a
        # moment later).
        free_soon(store)
        result = retention.compact_before(store, walls[-2], archive)
    assert result.archived_upto > 0
    left = {p.name for p in archive.iterdir()}
    assert "README.txt" in left
    assert not left & {"000000999001-000001000000", ".000000999001-000001000000.partial",
                       f".{MANIFEST}.partial"}  # fmt: skip
    assert MANIFEST in listed and MANIFEST in left
    check = run_cli("scope-replay", "db", "check", "--db", db)
    assert check.returncode == 0, check.stdout


def test_a_segment_the_manifest_lacks_inside_the_boundary_stays(
    sqlite_location: LogLocation, tmp_path: Path
) -> None:
    """A segment is removed as a killed cut's leftover only where the manifest's segments
    hold its archived positions: one whose listing was lost stays on the disk."""
    write_log(sqlite_location, EVENTS)
    walls = batch_walls(sqlite_location)
    archive = tmp_path / "archive"
    with open_log(sqlite_location, Purpose.ADMIN) as store:
        retention.compact_before(store, walls[len(walls) // 3], archive)
        manifest = json.loads((archive / MANIFEST).read_text())
        lost = manifest["segments"].pop()
        (archive / MANIFEST).write_text(json.dumps(manifest))
        with contextlib.suppress(LogOpenError):  # (the archive lacks its positions now)
            retention.compact_before(store, walls[-2], archive)
    assert (archive / lost["name"]).is_dir()


def test_a_cut_under_the_lock_keeps_to_the_logs_archive(
    sqlite_location: LogLocation, tmp_path: Path
) -> None:
    """A cut that chose its archive before it waited finds the log's own archive since:
    it is refused, not written elsewhere."""
    write_log(sqlite_location, EVENTS)
    walls = batch_walls(sqlite_location)
    with open_log(sqlite_location, Purpose.ADMIN) as store:
        retention.compact_before(store, walls[len(walls) // 3], tmp_path / "archive")
        with pytest.raises(UsageError, match="a log keeps one archive"):
            retention.cut(store, retention.cut_before(store, walls[-2]), tmp_path / "other")
        assert not (tmp_path / "other").exists()


@pytest.mark.postgres
def test_a_postgres_lock_lost_stops_the_boundary_moving(pg_url: str) -> None:
    """The lock is a session's: if the server ends that session, the cut learns it before
    it moves the boundary, and letting go of the lost lock raises nothing."""
    from eventlog.location import resolve

    location = resolve(pg_url)
    write_log(location, 1_000)
    with open_log(location, Purpose.ADMIN) as store:
        with cut_lock(store) as held:
            held.confirm()
            with store.connect() as conn:
                ended = conn.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = "
                    "'advisory' AND granted AND pid <> pg_backend_pid()"
                ).all()
                conn.commit()
            assert ended == [(True,)]
            with pytest.raises(LogOpenError):
                held.confirm()
        free_soon(store)
