"""Migrations on both backends: from empty, down again, and over a populated log."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from eventlog import migrate
from eventlog.location import LogLocation
from eventlog.reader import LogReader
from eventlog.schema import metadata
from eventlog.store import Purpose, SchemaState, open_log, schema_state
from tests.factories import conn_event, recording_writer


def test_upgrade_from_empty_matches_the_declared_schema(log_location: LogLocation) -> None:
    with open_log(log_location, Purpose.RECORD) as store, store.connect() as conn:
        assert schema_state(conn) == (SchemaState.CURRENT, migrate.head_revision())
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diffs == []


def test_downgrade_to_base_removes_the_schema(log_location: LogLocation) -> None:
    with open_log(log_location, Purpose.RECORD) as store, store.connect() as conn:
        migrate.downgrade(conn, "base")
        conn.commit()
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        assert migrate.current_revision(conn) is None
        migrate.upgrade(conn)
        conn.commit()
        assert schema_state(conn)[0] is SchemaState.CURRENT


def _touch(location: LogLocation) -> None:
    if location.path is not None:
        location.path.touch(mode=0o600)


def test_every_revision_upgrades_a_populated_log_keeping_its_events(
    log_location: LogLocation,
) -> None:
    revisions = [rev.revision for rev in migrate.script_directory().walk_revisions()][::-1]
    first = revisions[0]
    _touch(log_location)
    with open_log(log_location, Purpose.ADMIN) as store, store.connect() as conn:
        migrate.upgrade(conn, first)
        conn.commit()
        # Rows shaped as the first revision knows them, written without the current code.
        conn.execute(
            text(
                "INSERT INTO recordings (id, host_id, tool_version, mode, started_mono_ns, "
                "started_wall_ns) VALUES (1, 'h', '0.0.1', 'ebpf', 100, 1000)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO clock_samples (recording_id, mono_ns, offset_ns, uncertainty_ns) "
                "VALUES (1, 100, 900, 1)"
            )
        )
        for position in range(1, 4):
            conn.execute(
                text(
                    "INSERT INTO events (position, recording_id, kind, mono_ns, pid) "
                    "VALUES (:p, 1, 1, :mono, 42)"
                ),
                {"p": position, "mono": 100 + position},
            )
        conn.execute(
            text(
                "INSERT INTO batches (last_position, first_position, recording_id, min_mono_ns, "
                "max_mono_ns, min_wall_ns, max_wall_ns) VALUES (3, 1, 1, 101, 103, 1001, 1003)"
            )
        )
        conn.commit()
        for revision in revisions[1:]:
            migrate.upgrade(conn, revision)
            conn.commit()
    with open_log(log_location, Purpose.READ) as store:
        events = list(LogReader(store).events())
    assert [(e.position, e.pid, e.wall_ns) for e in events] == [
        (1, 42, 1001),
        (2, 42, 1002),
        (3, 42, 1003),
    ]


def test_recording_into_an_old_log_migrates_it(log_location: LogLocation) -> None:
    revisions = [rev.revision for rev in migrate.script_directory().walk_revisions()][::-1]
    _touch(log_location)
    with open_log(log_location, Purpose.ADMIN) as store, store.connect() as conn:
        migrate.upgrade(conn, revisions[0])
        conn.commit()
    with recording_writer(log_location) as (store, writer):
        writer.add(conn_event())
        writer.flush()
        with store.connect() as conn:
            assert schema_state(conn)[0] is SchemaState.CURRENT


def test_the_listed_revisions_are_the_migration_scripts() -> None:
    scripts = migrate.script_directory()
    listed = [rev.revision for rev in scripts.walk_revisions()][::-1]
    assert tuple(listed) == migrate.REVISIONS
    assert scripts.get_current_head() == migrate.head_revision()


def test_a_log_with_snapshots_stored_as_changes_is_not_downgraded(
    log_location: LogLocation,
) -> None:
    """An older version would read such a snapshot as only its changes."""
    with open_log(log_location, Purpose.RECORD) as store, store.connect() as conn:
        conn.execute(text("INSERT INTO snapshot_deltas VALUES (2, 1)"))
        conn.commit()
        with pytest.raises(RuntimeError, match="stored as changes"):
            migrate.downgrade(conn, "0004")
        conn.rollback()
        assert migrate.current_revision(conn) == migrate.head_revision()
