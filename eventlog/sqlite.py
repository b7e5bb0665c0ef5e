"""Appending to a SQLite log: one IMMEDIATE transaction per batch, positions from the rowid.

The events table's ``position`` is SQLite's rowid. Rows are deleted only by retention, which
always leaves the newest batch (eventlog.retention), so each insert gets ``max(rowid) + 1``:
positions are gap-free and in commit order without being sent.

Event rows go through ``eventlog._native`` (C) when it was built, through Python's
sqlite3 otherwise: both give byte-identical logs (tests/unit/log/test_native_append.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeAlias

from eventlog import native
from eventlog.batch import (
    AppendResult,
    Batch,
    BatchSummary,
    encode_extra,
    event_rows,
    gc_paused,
    snapshot_rows,
)
from eventlog.clock import ClockModel, wall_bounds
from eventlog.dictionary import Dictionary
from eventlog.errors import LogError
from eventlog.events import Event
from eventlog.kernel_records import decode_one, expand
from eventlog.schema import EVENT_COLUMNS, metadata
from eventlog.snapshots import SnapshotEncoder
from eventlog.store import LogStore, map_driver_error

_ROW_COLUMNS = EVENT_COLUMNS[2:]  # what event_rows() gives: no position, no recording id


# Rows per INSERT on the C path: one execution of a statement costs about what binding a
# row does, so a statement of 16 rows takes a third off the cost of each (measured: 0.93 ->
# 0.61 us a row with plain C and SQLite on this kind of machine).
ROWS_PER_INSERT = 16


def insert_events_sql(recording_id: int, rows: int = 1) -> str:
    """The INSERT of ``rows`` of one recording's events. The position comes from the rowid
    and the recording id is part of the statement: one bound parameter less per row."""
    values = f"({int(recording_id)}, {', '.join('?' * len(_ROW_COLUMNS))})"
    return (
        f"INSERT INTO events (recording_id, {', '.join(_ROW_COLUMNS)}) "
        f"VALUES {', '.join([values] * rows)}"
    )


def insert_sql(table: str) -> str:
    """The INSERT of a whole row of ``table``: every column, in the schema's order."""
    columns = [column.name for column in metadata.tables[table].columns]
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


class PysqliteConnection:
    """``native.Connection``'s operations over Python's sqlite3 driver, on a connection of
    the store's engine: the fallback where the C module was not built."""

    def __init__(self, store: LogStore) -> None:
        self._proxy = store.engine.raw_connection()
        self._conn: sqlite3.Connection = self._proxy.driver_connection  # type: ignore[assignment]

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> None:
        self._conn.executemany(sql, rows)

    def insert_events(
        self,
        sql: str,
        group_sql: str,
        items: list[Event | native.RawRun],
        comm_ids: dict[str | None, int | None],
        netns_ids: dict[int | None, int | None],
        encode_extra: Callable[[dict[str, Any]], str | None],
        decode_one: Callable[[bytes], Event],
        /,
    ) -> int:
        # event_rows and expand do the others' work; executemany of one row at a time is
        # what this driver does fastest.
        del group_sql, encode_extra, decode_one
        with gc_paused():
            rows = event_rows(expand(items), comm_ids, netns_ids)
            self._conn.executemany(sql, rows)
        return len(rows)

    def close(self) -> None:
        self._proxy.close()


# What the appender writes through. A string: native.Connection exists only where it was built.
AppendConnection: TypeAlias = "native.Connection | PysqliteConnection"


def open_append_connection(store: LogStore, use_native: bool | None = None) -> AppendConnection:
    """A connection for appending to ``store``: the C one when it is built and shares Python's
    SQLite library (``use_native`` None or True), else Python's. ``use_native=True`` without
    it is an error."""
    if use_native is None:
        use_native = native.shares_sqlite_with_python()
    if not use_native:
        return PysqliteConnection(store)
    if not native.shares_sqlite_with_python():
        raise LogError(
            "the C append module (eventlog._native) is not built, or uses another SQLite "
            "library than Python's sqlite3"
        )
    assert store.location.path is not None
    try:
        return native.Connection(
            str(store.location.path),
            store.sqlite.busy_timeout_ms,
            store.sqlite.synchronous.upper(),
        )
    except sqlite3.Error as exc:
        raise map_driver_error(exc, store.location) from exc


class SqliteAppender:
    """Commits batches to a SQLite log through one dedicated connection."""

    def __init__(self, store: LogStore, use_native: bool | None = None) -> None:
        self._store = store
        self._conn = open_append_connection(store, use_native)
        try:
            self._comms: Dictionary[str] = Dictionary(
                self._conn.execute("SELECT id, name FROM comms")
            )
            self._netns: Dictionary[int] = Dictionary(
                self._conn.execute("SELECT id, inode FROM netns")
            )
        except sqlite3.Error as exc:
            self._conn.close()
            raise map_driver_error(exc, store.location) from exc

    def close(self) -> None:
        self._conn.close()

    def append(
        self,
        recording_id: int,
        batch: Batch,
        clock: ClockModel,
        snapshots: SnapshotEncoder | None = None,
    ) -> AppendResult:
        """Commit ``batch`` in one transaction; its snapshots stored as ``snapshots`` decides
        (eventlog.snapshots; None: each whole)."""
        snapshots = SnapshotEncoder(key_every=1) if snapshots is None else snapshots
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            head = conn.execute("SELECT COALESCE(MAX(position), 0) FROM events")[0][0]
            result = AppendResult(head + 1, head + batch.event_count())
            if result.event_count:
                summary = batch.summary()
                self._comms.prepare(summary.comms, self._comm_id)
                self._netns.prepare(summary.netns, self._netns_id)
                conn.insert_events(
                    insert_events_sql(recording_id),
                    insert_events_sql(recording_id, ROWS_PER_INSERT),
                    batch.events,
                    self._comms.ids,
                    self._netns.ids,
                    encode_extra,
                    decode_one,
                )
                self._write_batch_index(recording_id, summary, clock, result)
                for table, table_rows in snapshot_rows(batch, result.first_position, snapshots):
                    conn.executemany(insert_sql(table), table_rows)
            self._write_clock_and_losses(recording_id, batch, clock, head)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            snapshots.abandon()
            raise map_driver_error(exc, self._store.location) from exc
        except BaseException:
            self._rollback()
            snapshots.abandon()
            raise
        snapshots.commit()
        self._comms.commit()
        self._netns.commit()
        return result

    def _rollback(self) -> None:
        self._comms.rollback()
        self._netns.rollback()
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _comm_id(self, comm: str) -> int:
        self._conn.execute("INSERT OR IGNORE INTO comms (name) VALUES (?)", (comm,))
        return int(self._conn.execute("SELECT id FROM comms WHERE name = ?", (comm,))[0][0])

    def _netns_id(self, inode: int) -> int:
        self._conn.execute("INSERT OR IGNORE INTO netns (inode) VALUES (?)", (inode,))
        return int(self._conn.execute("SELECT id FROM netns WHERE inode = ?", (inode,))[0][0])

    def _write_batch_index(
        self, recording_id: int, summary: BatchSummary, clock: ClockModel, result: AppendResult
    ) -> None:
        last = self._conn.execute("SELECT MAX(position) FROM events")[0][0]
        if last != result.last_position:
            raise LogError(
                f"position gap: expected last position {result.last_position}, found {last}"
            )
        min_mono, max_mono = summary.min_mono_ns, summary.max_mono_ns
        min_wall, max_wall = wall_bounds(clock, min_mono, max_mono)
        self._conn.execute(
            insert_sql("batches"),
            (
                result.last_position,
                result.first_position,
                recording_id,
                min_mono,
                max_mono,
                min_wall,
                max_wall,
            ),
        )
        self._conn.execute(
            "UPDATE recordings SET last_mono_ns = MAX(COALESCE(last_mono_ns, 0), ?) WHERE id = ?",
            (max_mono, recording_id),
        )

    def _write_clock_and_losses(
        self, recording_id: int, batch: Batch, clock: ClockModel, head: int
    ) -> None:
        if batch.clock_samples:
            self._conn.executemany(
                "INSERT OR IGNORE INTO clock_samples (recording_id, mono_ns, offset_ns, "
                "uncertainty_ns) VALUES (?, ?, ?, ?)",
                [(recording_id, *sample) for sample in batch.clock_samples],
            )
        for loss in batch.losses:
            self._conn.execute(
                "INSERT INTO losses (recording_id, lost, first_mono_ns, last_mono_ns, "
                "first_wall_ns, last_wall_ns, after_position, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    recording_id,
                    loss.lost,
                    loss.first_mono_ns,
                    loss.last_mono_ns,
                    clock.wall_ns(loss.first_mono_ns),
                    clock.wall_ns(loss.last_mono_ns),
                    head,
                    loss.reason,
                ),
            )
