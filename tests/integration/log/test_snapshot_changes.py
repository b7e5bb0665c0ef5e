"""Snapshots stored as their changes (eventlog.snapshots), on real SQLite and PostgreSQL logs:
a log whose writer stores most snapshots as changes reads, snapshot by snapshot and answer by
answer, as the same recording stored whole; and so it does after cuts that move the
snapshots a later one is built from into the archive, or drop them (``--archive none``), and
after `db recover`."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from bench.synthetic import Generator
from eventlog.archive import boundary
from eventlog.events import Kind, Snapshot
from eventlog.location import LogLocation, resolve
from eventlog.reader import LogReader
from eventlog.store import Purpose, open_log
from tests.factories import make_host, recording_writer
from tests.integration.log.test_db_recover import _damaged_copy, _recover
from tests.integration.log.test_drop_history import WINDOW, after
from tests.integration.log.test_retention import (
    BATCH_EVENTS,
    answers,
    batch_walls,
    compact,
    moments,
)
from tests.recording import db_argument

EVENTS = 30_000
SNAPSHOT_EVERY_EVENTS = 600  # 50 snapshots: chains of several, cut in their middle
KEY_EVERY = 7


def write_log(location: LogLocation, key_every: int) -> None:
    """bench/synthetic.py's busy host, with a snapshot every ``SNAPSHOT_EVERY_EVENTS``
    events; its writer stores every ``key_every``-th snapshot whole."""
    generator = Generator(seed=11)
    with recording_writer(location, snapshot_key_every=key_every) as (_, writer):
        written, next_snapshot = 0, 0
        while written < EVENTS:
            if written >= next_snapshot:
                writer.add_snapshot(*generator.snapshot())
                written += 1
                next_snapshot += SNAPSHOT_EVERY_EVENTS
            batch = generator.step()[: EVENTS - written]
            writer.add_events(batch)
            written += len(batch)
            if writer.pending_events >= BATCH_EVENTS:
                writer.flush()
        writer.flush()


def write_two_recordings(location: LogLocation, key_every: int) -> None:
    """Two hosts recording into one log at once: their batches, and so their snapshots,
    interleave (each snapshot is built on its own recording's before, not on the other's)."""
    hosts = [(Generator(seed=21), make_host("host-a")), (Generator(seed=22), make_host("host-b"))]
    with (
        recording_writer(location, hosts[0][1], snapshot_key_every=key_every) as (_, first),
        recording_writer(location, hosts[1][1], snapshot_key_every=key_every) as (_, second),
    ):
        for step in range(EVENTS // 2 // SNAPSHOT_EVERY_EVENTS):
            for index, ((generator, _), writer) in enumerate(
                zip(hosts, (first, second), strict=True)
            ):
                written = 0
                if step or not index:  # the second's chains begin a snapshot later
                    writer.add_snapshot(*generator.snapshot())
                    written = 1
                while written < SNAPSHOT_EVERY_EVENTS:
                    batch = generator.step()[: SNAPSHOT_EVERY_EVENTS - written]
                    writer.add_events(batch)
                    written += len(batch)
                writer.flush()


def stored_rows(location: LogLocation) -> dict[str, int]:
    tables = ("snapshot_deltas", "snapshot_connections", "snapshot_processes")
    with open_log(location, Purpose.READ) as store, store.connect() as conn:
        return {t: int(conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar() or 0)
                for t in tables}  # fmt: skip


def snapshots(
    location: LogLocation, positions: list[int] | None = None
) -> list[tuple[int, Snapshot]]:
    """Every snapshot of the log (those at ``positions``: archived ones too), as read."""
    with open_log(location, Purpose.READ) as store:
        reader = LogReader(store)
        if positions is None:
            positions = [e.position for e in reader.events_of_kind(Kind.SNAPSHOT)]
        return [(p, reader.snapshot(p)) for p in positions]


def built_across_the_cut(location: LogLocation) -> bool:
    """Whether a snapshot the live log holds is stored as changes from one before its cut."""
    with open_log(location, Purpose.READ) as store, store.connect() as conn:
        edge = boundary(store).archived_upto
        first = conn.exec_driver_sql("SELECT min(base_position) FROM snapshot_deltas").scalar()
    return first is not None and 0 < int(first) <= edge


@pytest.fixture
def whole_log(tmp_path: Path) -> LogLocation:
    """The recording with every snapshot stored whole."""
    location = resolve(str(tmp_path / "whole.db"))
    write_log(location, key_every=1)
    return location


def test_snapshots_stored_as_changes_read_as_stored_whole(
    log_location: LogLocation, whole_log: LogLocation, tmp_path: Path
) -> None:
    write_log(log_location, KEY_EVERY)
    whole, changed = stored_rows(whole_log), stored_rows(log_location)
    read = snapshots(log_location)
    assert whole["snapshot_deltas"] == 0
    assert changed["snapshot_deltas"] == len(read) - len(range(0, len(read), KEY_EVERY))
    # Fewer rows (every 7th snapshot is whole): of the synthetic host's processes few change
    # from one snapshot to the next, of its sockets a third.
    assert changed["snapshot_connections"] * 2 < whole["snapshot_connections"]
    assert changed["snapshot_processes"] * 4 < whole["snapshot_processes"]

    assert read == snapshots(whole_log)
    walls = batch_walls(log_location)
    at = moments(walls, [walls[len(walls) // 2]])
    assert answers(db_argument(log_location), tmp_path / "changed", at) == answers(
        db_argument(whole_log), tmp_path / "whole", at
    )


def test_cuts_through_chains_of_changes_change_no_answer(
    log_location: LogLocation, whole_log: LogLocation, tmp_path: Path
) -> None:
    write_log(log_location, KEY_EVERY)
    db = db_argument(log_location)
    walls = batch_walls(log_location)
    cuts = [walls[len(walls) // 3], walls[len(walls) // 2]]
    at = [t for t in moments(walls, cuts) if t > cuts[1]]
    expected = answers(db_argument(whole_log), tmp_path / "whole", at)
    before = snapshots(whole_log)

    compact(db, cuts[0], tmp_path / "archive")
    assert built_across_the_cut(log_location)
    assert answers(db, tmp_path / "archived", at) == expected
    # Read one by one, those in the archive too: each whole.
    assert snapshots(log_location, [p for p, _ in before]) == before

    # The same recording again, its history dropped instead: the seed keeps each snapshot
    # it keeps whole, and those after the cut are built on it.
    dropped = resolve(str(tmp_path / "dropped.db"))
    write_log(dropped, KEY_EVERY)
    compact(str(dropped.path), cuts[1], Path("none"))
    assert built_across_the_cut(dropped)
    later = after(walls, cuts[1])
    assert answers(str(dropped.path), tmp_path / "seeded", later, False, WINDOW) == answers(
        db_argument(whole_log), tmp_path / "whole-later", later, False, WINDOW
    )


def test_recovery_leaves_out_what_was_built_on_a_damaged_snapshot(
    sqlite_location: LogLocation, tmp_path: Path
) -> None:
    """`db recover` rebuilds each snapshot whole and stores it anew; a snapshot stored as
    changes to one left out (some of its rows unreadable) is left out too, and no other."""
    write_log(sqlite_location, KEY_EVERY)
    assert sqlite_location.path is not None
    original = snapshots(sqlite_location)

    code, report, err = _recover(sqlite_location.path, tmp_path / "copy.db")
    assert code == 0 and report["whole"], err
    assert [s for _, s in snapshots(resolve(str(tmp_path / "copy.db")))] == [s for _, s in original]

    damaged, _ = _damaged_copy(sqlite_location.path, "snapshot_connections")
    code, report, _ = _recover(damaged, tmp_path / "recovered.db")
    assert code == 1
    left_out = {
        int(found)
        for note in report["notes"]
        for found in re.findall(r"the snapshot at position (\d+) ", note)
    }
    with sqlite3.connect(sqlite_location.path) as conn:
        links = dict(conn.execute("SELECT position, base_position FROM snapshot_deltas"))
    assert left_out and {p for p, base in links.items() if base in left_out} <= left_out
    assert any("stored as changes to a snapshot that is left out" in n for n in report["notes"])
    recovered = snapshots(resolve(str(tmp_path / "recovered.db")))
    assert [s for _, s in recovered] == [s for p, s in original if p not in left_out]


def test_recordings_whose_snapshots_interleave_read_as_stored_whole(
    log_location: LogLocation, tmp_path: Path
) -> None:
    write_two_recordings(log_location, KEY_EVERY)
    whole = resolve(str(tmp_path / "whole.db"))
    write_two_recordings(whole, 1)
    assert stored_rows(log_location)["snapshot_deltas"] > 0
    assert snapshots(log_location) == snapshots(whole)
    walls = batch_walls(log_location)
    at = moments(walls, [walls[len(walls) // 2]])
    assert answers(db_argument(log_location), tmp_path / "changed", at) == answers(
        db_argument(whole), tmp_path / "whole", at
    )
