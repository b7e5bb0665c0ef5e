"""Appending to a PostgreSQL log: COPY under a transaction-scoped advisory lock.

Several recorders (one per host) may append to one central store. The advisory lock
serialises appends, so each transaction reads the head, COPYs its rows with explicit
positions and commits before the next one reads the head: positions are gap-free and a
reader that pages by position never sees a later batch before an earlier one.
"""

from __future__ import annotations

from typing import Any

import psycopg

from recorder.clock import ClockModel
from recorder.errors import LogError
from recorder.events import Event
from recorder.log.batch import AppendResult, Batch, encode_extra, snapshot_rows
from recorder.log.schema import EVENT_COLUMNS, metadata
from recorder.log.store import LogStore, map_driver_error

APPEND_LOCK_KEY = 0x73636F70  # "scop": one lock for all writers of a store


def _copy_sql(table: str) -> str:
    columns = [column.name for column in metadata.tables[table].columns]
    return f"COPY {table} ({', '.join(columns)}) FROM STDIN"


class PostgresAppender:
    """Commits batches to a PostgreSQL log through one dedicated connection."""

    def __init__(self, store: LogStore) -> None:
        self._store = store
        self._proxy: Any = None
        self._conn: psycopg.Connection[Any] | None = None
        self._comm_ids: dict[str, int] = {}
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
            cur.execute("SELECT id, name FROM comms")
            self._comm_ids = {name: comm_id for comm_id, name in cur.fetchall()}
        conn.commit()
        self._conn = conn
        return conn

    def close(self) -> None:
        if self._proxy is not None:
            try:
                self._proxy.invalidate()
            except Exception:
                pass
        self._proxy = None
        self._conn = None

    def append(self, recording_id: int, batch: Batch, clock: ClockModel) -> AppendResult:
        new_comms: dict[str, int] = {}
        try:
            conn = self._connect()
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK_KEY,))
                cur.execute("SELECT COALESCE(MAX(position), 0) FROM events")
                head = int(cur.fetchone()[0])  # type: ignore[index]
                result = AppendResult(head + 1, head + len(batch.events))
                if batch.events:
                    self._copy_events(cur, recording_id, batch.events, head, new_comms)
                    self._write_batch_index(cur, recording_id, batch, clock, result)
                    for table, rows in snapshot_rows(batch, result.first_position):
                        with cur.copy(_copy_sql(table)) as copy:
                            for row in rows:
                                copy.write_row(row)
                self._write_clock_and_losses(cur, recording_id, batch, clock, head)
            conn.commit()
        except psycopg.Error as exc:
            self._rollback()
            raise map_driver_error(exc, self._store.location) from exc
        except BaseException:
            self._rollback()
            raise
        self._comm_ids.update(new_comms)
        return result

    def _rollback(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.rollback()
        except psycopg.Error:
            self.close()

    def _copy_events(
        self,
        cur: psycopg.Cursor[Any],
        recording_id: int,
        events: list[Event],
        head: int,
        new_comms: dict[str, int],
    ) -> None:
        ids = self._comm_ids
        for event in events:
            comm = event.comm
            if comm is not None and comm not in ids and comm not in new_comms:
                new_comms[comm] = self._comm_id(cur, comm)
        lookup = {**ids, **new_comms} if new_comms else ids
        with cur.copy(f"COPY events ({', '.join(EVENT_COLUMNS)}) FROM STDIN") as copy:
            write = copy.write_row
            for offset, event in enumerate(events, start=1):
                write(
                    (
                        head + offset,
                        recording_id,
                        event.kind,
                        event.mono_ns,
                        event.pid,
                        lookup[event.comm] if event.comm is not None else None,
                        event.netns,
                        event.laddr,
                        event.lport,
                        event.raddr,
                        event.rport,
                        event.sock_id,
                        event.bytes_sent,
                        event.bytes_received,
                        encode_extra(event.extra) if event.extra else None,
                    )
                )

    @staticmethod
    def _comm_id(cur: psycopg.Cursor[Any], comm: str) -> int:
        cur.execute("INSERT INTO comms (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", (comm,))
        cur.execute("SELECT id FROM comms WHERE name = %s", (comm,))
        return int(cur.fetchone()[0])  # type: ignore[index]

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
        min_wall, max_wall = batch.wall_bounds(clock)
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
