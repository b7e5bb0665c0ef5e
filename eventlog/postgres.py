"""Appending to a PostgreSQL log: COPY under a transaction-scoped advisory lock.

Several recorders (one per host) may append to one central store. The advisory lock
serialises appends, so each transaction reads the head, COPYs its rows with explicit
positions and commits before the next one reads the head: positions are gap-free and a
reader that pages by position never sees a later batch before an earlier one.

A COMMIT whose answer never came (the connection broke meanwhile) may have committed. The
writer then commits the same batch again (eventlog.writer), and the appender first looks
for it: found (its batch row, or, without events, its first loss), it is not written twice.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import psycopg

from eventlog.batch import (
    AppendResult,
    Batch,
    distinct_comms,
    distinct_netns,
    event_rows,
    gc_paused,
    snapshot_rows,
)
from eventlog.clock import ClockModel, wall_bounds
from eventlog.dictionary import Dictionary
from eventlog.errors import LogError
from eventlog.events import Event
from eventlog.kernel_records import expand
from eventlog.schema import EVENT_COLUMNS, metadata
from eventlog.snapshots import SnapshotEncoder
from eventlog.store import LogStore, map_driver_error

APPEND_LOCK_KEY = 0x73636F70  # "scop": one lock for all writers of a store
# An appender's session that the server finds idle inside a transaction this long is ended
# by the server: its client is gone (a host that died, a network cut mid-append) and would
# otherwise hold the append lock, and every other writer of the store waiting for it, until
# TCP keepalive ends the session (hours). An append never pauses inside its transaction.
IDLE_IN_APPEND = "30s"


@dataclass(frozen=True)
class _InDoubt:
    """A batch whose COMMIT was sent but not answered, and what it appended."""

    recording_id: int
    batch: Batch
    result: AppendResult


def _copy_sql(table: str) -> str:
    columns = [column.name for column in metadata.tables[table].columns]
    return f"COPY {table} ({', '.join(columns)}) FROM STDIN"


class PostgresAppender:
    """Commits batches to a PostgreSQL log through one dedicated connection."""

    def __init__(self, store: LogStore) -> None:
        self._store = store
        self._proxy: Any = None
        self._conn: psycopg.Connection[Any] | None = None
        self._comms: Dictionary[str] = Dictionary()
        self._netns: Dictionary[int] = Dictionary()
        self._in_doubt: _InDoubt | None = None
        self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self.close()
        try:
            self._proxy = self._store.engine.raw_connection()
        except Exception as exc:
            raise map_driver_error(exc, self._store.location) from exc
        conn: psycopg.Connection[Any] = self._proxy.driver_connection
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute(f"SET idle_in_transaction_session_timeout = '{IDLE_IN_APPEND}'")
            cur.execute("SELECT id, name FROM comms")
            self._comms = Dictionary(cur.fetchall())
            cur.execute("SELECT id, inode FROM netns")
            self._netns = Dictionary(cur.fetchall())
        conn.commit()
        self._conn = conn
        return conn

    def close(self) -> None:
        if self._proxy is not None:
            with contextlib.suppress(Exception):
                self._proxy.invalidate()
        self._proxy = None
        self._conn = None

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
        committing: _InDoubt | None = None
        try:
            conn = self._connect()
            if self._in_doubt is not None:
                earlier = self._in_doubt
                if earlier.batch is batch and self._committed(conn, earlier):
                    self._in_doubt = None
                    return earlier.result  # (its snapshots' encoding was let go: see there)
                self._in_doubt = None
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK_KEY,))
                cur.execute("SELECT COALESCE(MAX(position), 0) FROM events")
                head = int(cur.fetchone()[0])  # type: ignore[index]
                result = AppendResult(head + 1, head + batch.event_count())
                if result.event_count:
                    self._copy_events(cur, recording_id, expand(batch.events), head)
                    self._write_batch_index(cur, recording_id, batch, clock, result)
                    for table, rows in snapshot_rows(batch, result.first_position, snapshots):
                        with cur.copy(_copy_sql(table)) as copy:
                            for row in rows:
                                copy.write_row(row)
                self._write_clock_and_losses(cur, recording_id, batch, clock, head)
            committing = _InDoubt(recording_id, batch, result)
            conn.commit()
        except psycopg.Error as exc:
            self._in_doubt = committing or self._in_doubt
            self._rollback()
            snapshots.abandon()
            raise map_driver_error(exc, self._store.location) from exc
        except BaseException:
            self._in_doubt = committing or self._in_doubt
            self._rollback()
            snapshots.abandon()
            raise
        snapshots.commit()
        self._comms.commit()
        self._netns.commit()
        return result

    @staticmethod
    def _committed(conn: psycopg.Connection[Any], earlier: _InDoubt) -> bool:
        """Whether ``earlier`` committed after all. Found, its snapshots are as the encoder
        was before it (it let their encoding go): later ones are stored as changes to a
        snapshot the log holds all the same."""
        first, last = earlier.result
        with conn.cursor() as cur:
            if earlier.result.event_count:
                cur.execute(
                    "SELECT count(*) FROM batches WHERE recording_id = %s "
                    "AND first_position = %s AND last_position = %s",
                    (earlier.recording_id, first, last),
                )
            elif earlier.batch.losses:
                loss = earlier.batch.losses[0]
                cur.execute(
                    "SELECT count(*) FROM losses WHERE recording_id = %s AND after_position = %s "
                    "AND lost = %s AND first_mono_ns = %s AND last_mono_ns = %s AND reason = %s",
                    (earlier.recording_id, last, loss.lost, loss.first_mono_ns,
                     loss.last_mono_ns, loss.reason),
                )  # fmt: skip
            else:
                return False  # clock samples only: written again, each once (ON CONFLICT)
            found = int(cur.fetchone()[0]) > 0  # type: ignore[index]
        conn.rollback()
        return found

    def _rollback(self) -> None:
        self._comms.rollback()
        self._netns.rollback()
        if self._conn is None:
            return
        try:
            self._conn.rollback()
        except psycopg.Error:
            self.close()

    def _copy_events(
        self, cur: psycopg.Cursor[Any], recording_id: int, events: list[Event], head: int
    ) -> None:
        self._comms.prepare(
            distinct_comms(events), lambda name: _fetch_or_insert(cur, "comms", "name", name)
        )
        self._netns.prepare(
            distinct_netns(events), lambda inode: _fetch_or_insert(cur, "netns", "inode", inode)
        )
        with (
            gc_paused(),
            cur.copy(f"COPY events ({', '.join(EVENT_COLUMNS)}) FROM STDIN") as copy,
        ):
            rows = event_rows(events, self._comms.ids, self._netns.ids)
            write = copy.write_row
            for position, row in enumerate(rows, start=head + 1):
                write((position, recording_id, *row))

    @staticmethod
    def _write_batch_index(
        cur: psycopg.Cursor[Any],
        recording_id: int,
        batch: Batch,
        clock: ClockModel,
        result: AppendResult,
    ) -> None:
        cur.execute("SELECT MAX(position) FROM events")
        last = cur.fetchone()[0]  # type: ignore[index]
        if last != result.last_position:
            raise LogError(
                f"position gap: expected last position {result.last_position}, found {last}"
            )
        min_mono, max_mono = batch.mono_range()
        min_wall, max_wall = wall_bounds(clock, min_mono, max_mono)
        cur.execute(
            "INSERT INTO batches (last_position, first_position, recording_id, min_mono_ns, "
            "max_mono_ns, min_wall_ns, max_wall_ns) VALUES (%s, %s, %s, %s, %s, %s, %s)",
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
        cur.execute(
            "UPDATE recordings SET last_mono_ns = GREATEST(COALESCE(last_mono_ns, 0), %s) "
            "WHERE id = %s",
            (max_mono, recording_id),
        )

    @staticmethod
    def _write_clock_and_losses(
        cur: psycopg.Cursor[Any], recording_id: int, batch: Batch, clock: ClockModel, head: int
    ) -> None:
        for sample in batch.clock_samples:
            cur.execute(
                "INSERT INTO clock_samples (recording_id, mono_ns, offset_ns, uncertainty_ns) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (recording_id, *sample),
            )
        for loss in batch.losses:
            cur.execute(
                "INSERT INTO losses (recording_id, lost, first_mono_ns, last_mono_ns, "
                "first_wall_ns, last_wall_ns, after_position, reason) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
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


def _fetch_or_insert(cur: psycopg.Cursor[Any], table: str, column: str, value: object) -> int:
    cur.execute(
        f"INSERT INTO {table} ({column}) VALUES (%s) ON CONFLICT ({column}) DO NOTHING", (value,)
    )
    cur.execute(f"SELECT id FROM {table} WHERE {column} = %s", (value,))
    return int(cur.fetchone()[0])  # type: ignore[index]
