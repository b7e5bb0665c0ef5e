"""Reading the log: events by position or time range, streamed in log order.

Reads page through the events table by position ("start after the last position"), so memory
stays constant and no read transaction is held between pages. A reader fixes the head (the
last committed position) when asked, so a replay over a log that is being written sees every
batch committed before that moment, whole, and nothing after it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from eventlog.archive import TABLES as ARCHIVED_TABLES
from eventlog.archive import Boundary, boundary
from eventlog.clock import ClockModel
from eventlog.events import (
    ClockSample,
    ConntrackEntry,
    LoggedEvent,
    Snapshot,
    SnapshotConnection,
    SnapshotProcess,
)
from eventlog.rebuild import chains, scan_whole
from eventlog.scan import INT, TEXT, Select
from eventlog.schema import EVENT_COLUMNS
from eventlog.store import LogStore, map_driver_error

DEFAULT_PAGE_SIZE = 20_000

SocketKey = tuple[int, int, bytes, int, bytes, int]  # recording, netns, laddr, lport, raddr, rport

_EVENT_SELECT = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events"


@dataclass(frozen=True)
class Recording:
    id: int
    host_id: str
    machine_id: str | None
    boot_id: str | None
    kernel_release: str | None
    tool_version: str
    mode: str
    recorder_pid: int | None
    root_netns: int | None
    started_mono_ns: int
    started_wall_ns: int
    last_mono_ns: int | None
    stopped_mono_ns: int | None
    stop_reason: str | None
    stop_detail: str | None
    conntrack: str | None
    options: dict[str, Any] | None
    counters: dict[str, Any] | None

    @property
    def identity(self) -> str:
        """Names this recording in any log it is copied to (``db import``): its host, boot,
        recorder and start, which no two recordings share. Ids are each log's own."""
        key = (
            f"{self.host_id}\0{self.machine_id}\0{self.boot_id}\0{self.recorder_pid}\0"
            f"{self.started_mono_ns}\0{self.started_wall_ns}"
        )
        return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class BatchSpan:
    first_position: int
    last_position: int
    recording_id: int
    min_wall_ns: int
    max_wall_ns: int


@dataclass(frozen=True)
class LossRecord:
    id: int
    recording_id: int
    lost: int
    first_mono_ns: int
    last_mono_ns: int
    first_wall_ns: int
    last_wall_ns: int
    after_position: int
    reason: str


def decode_extra(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return value
    decoded = json.loads(value)
    return decoded if isinstance(decoded, dict) else {"value": decoded}


class LogReader:
    """Read access to one log. Not thread-safe; cheap to create."""

    def __init__(self, store: LogStore, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        self.store = store
        self.page_size = page_size
        self._raw: Any = None  # a DBAPI connection for the hot paths, opened on first use
        self._comms: dict[int | None, str | None] = {None: None}
        self._netns: dict[int | None, int | None] = {None: None}
        self._clocks: dict[int, ClockModel] = {}

    # -- plumbing --------------------------------------------------------------------------
    def _query(self, sql: str, **params: Any) -> list[Any]:
        with self.store.connect() as conn:
            return list(conn.execute(text(sql), params).all())

    def _conn_error(self, exc: SQLAlchemyError) -> Exception:
        return map_driver_error(exc, self.store.location)

    def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Rows of ``sql`` (``?`` placeholders) through the DBAPI directly.

        SQLAlchemy's row objects cost more than the read itself on the paths that move
        millions of rows (the fold, bulk lookups), so those go straight to the driver, each
        statement in its own short read transaction.
        """
        try:
            if self._raw is None:
                self._raw = self.store.engine.raw_connection()
                if self.store.dialect == "postgresql":
                    self._raw.driver_connection.autocommit = True
            if self.store.dialect == "postgresql":
                sql = sql.replace("?", "%s")
            cursor = self._raw.cursor()
            try:
                cursor.execute(sql, params)
                rows: list[Any] = cursor.fetchall()
                return rows
            finally:
                cursor.close()
        except Exception as exc:
            self.close()
            raise map_driver_error(exc, self.store.location) from exc

    def close(self) -> None:
        if self._raw is not None:
            with contextlib.suppress(Exception):
                self._raw.close()
            self._raw = None

    # -- small tables ----------------------------------------------------------------------
    def head(self) -> int:
        """The last committed position (0 for a log without events)."""
        rows = self._query("SELECT COALESCE(MAX(last_position), 0) FROM batches")
        return max(int(rows[0][0]), self.boundary().archived_upto)

    def boundary(self) -> Boundary:
        """How far the log's archive goes (eventlog.archive): read afresh each time, since
        a recorder's retention may cut while this reader reads."""
        return boundary(self.store)

    def log_id(self) -> str | None:
        """The log's identity, given when it was created (None for a log from before that)."""
        rows = self._query("SELECT value FROM log_meta WHERE key = 'log_id'")
        return str(rows[0][0]) if rows else None

    def clock_sample_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM clock_samples")[0][0])

    def event_identity(self, position: int) -> tuple[Any, ...] | None:
        """What tells the event at ``position`` from another (None: there is none)."""
        edge = self.boundary()
        if 0 < position <= edge.archived_upto:
            table = edge.require().read(_IDENTITY, position - 1, position, edge.archived_upto)
            return tuple(table.to_pylist()[0].values()) if table.num_rows else None
        rows = self._fetch(
            "SELECT position, recording_id, kind, mono_ns, sock_id FROM events WHERE position = ?",
            (position,),
        )
        return tuple(rows[0]) if rows else None

    def recordings(self) -> list[Recording]:
        columns = ", ".join(Recording.__dataclass_fields__)
        rows = self._query(f"SELECT {columns} FROM recordings ORDER BY id")
        return [
            Recording(*row[:-2], options=decode_extra(row[-2]), counters=decode_extra(row[-1]))  # type: ignore[misc]
            for row in rows
        ]

    def clock(self, recording_id: int) -> ClockModel:
        model = self._clocks.get(recording_id)
        if model is None:
            self._load_clocks()
            model = self._clocks.setdefault(recording_id, ClockModel())
        return model

    def _load_clocks(self) -> None:
        rows = self._query(
            "SELECT recording_id, mono_ns, offset_ns, uncertainty_ns FROM clock_samples "
            "ORDER BY recording_id, mono_ns"
        )
        clocks: dict[int, ClockModel] = {}
        for recording_id, mono_ns, offset_ns, uncertainty_ns in rows:
            clocks.setdefault(recording_id, ClockModel()).add(
                ClockSample(mono_ns, offset_ns, uncertainty_ns)
            )
        self._clocks = clocks

    def comm(self, comm_id: int | None) -> str | None:
        if comm_id not in self._comms:
            self._load_dictionaries()
        return self._comms.get(comm_id)

    def netns(self, netns_id: int | None) -> int | None:
        if netns_id not in self._netns:
            self._load_dictionaries()
        return self._netns.get(netns_id)

    def dictionaries(self) -> tuple[dict[Any, str | None], dict[Any, int | None]]:
        """The comm and network namespace dictionaries (id -> value; None -> None), read
        afresh: what the events' comm_id and netns_id columns refer to."""
        self._load_dictionaries()
        return self._comms, self._netns

    def _load_dictionaries(self) -> None:
        self._comms = {None: None, **dict(self._query("SELECT id, name FROM comms"))}
        self._netns = {None: None, **dict(self._query("SELECT id, inode FROM netns"))}

    def batches(self, after: int = 0, upto: int | None = None) -> list[BatchSpan]:
        upto = self.head() if upto is None else upto
        edge = self.boundary()
        archived = []
        if after < edge.archived_upto:
            archived = [
                BatchSpan(first, last, recording, min_wall, max_wall)
                for first, last, recording, _, _, min_wall, max_wall in edge.require().batches(
                    after, edge.archived_upto, edge.archived_upto
                )
                if first <= upto
            ]
        rows = self._query(
            "SELECT first_position, last_position, recording_id, min_wall_ns, max_wall_ns "
            "FROM batches WHERE last_position > :after AND first_position <= :upto "
            "ORDER BY last_position",
            after=max(after, edge.archived_upto),
            upto=upto,
        )
        return archived + [BatchSpan(*row) for row in rows]

    def batches_where(
        self, after: int, upto: int, min_wall_at_most: int, max_wall_above: int | None = None
    ) -> list[BatchSpan]:
        """Batches after ``after`` that may hold events at or before a wall time (and, if
        given, after another): the time index, consulted without reading the whole of it."""
        sql = (
            "SELECT first_position, last_position, recording_id, min_wall_ns, max_wall_ns "
            "FROM batches WHERE last_position > ? AND first_position <= ? AND min_wall_ns <= ?"
        )
        params: list[int] = [after, upto, min_wall_at_most]
        if max_wall_above is not None:
            sql += " AND max_wall_ns > ?"
            params.append(max_wall_above)
        rows = self._fetch(sql + " ORDER BY last_position", tuple(params))
        return [BatchSpan(*row) for row in rows]

    def wall_extent(self) -> tuple[int, int] | None:
        rows = self._fetch("SELECT min(min_wall_ns), max(max_wall_ns) FROM batches")
        if not rows or rows[0][0] is None:
            return None
        return int(rows[0][0]), int(rows[0][1])

    def losses(self) -> list[LossRecord]:
        columns = ", ".join(LossRecord.__dataclass_fields__)
        rows = self._query(f"SELECT {columns} FROM losses ORDER BY id")
        return [LossRecord(*row) for row in rows]

    def event_counts(self) -> dict[tuple[int, int], int]:
        """Number of events per (recording id, kind)."""
        rows = self._query(
            "SELECT recording_id, kind, COUNT(*) FROM events GROUP BY recording_id, kind"
        )
        return {(int(rec), int(kind)): int(count) for rec, kind, count in rows}

    # -- events ----------------------------------------------------------------------------
    # These read the live log only: positions moved to the archive (eventlog.retention) are
    # read by the derived store, through eventlog.archive.scan.
    def raw_pages(self, after: int = 0, upto: int | None = None) -> Iterator[list[Any]]:
        """Pages of raw event rows (columns as in the events table), in position order."""
        upto = self.head() if upto is None else upto
        sql = f"{_EVENT_SELECT} WHERE position > ? AND position <= ? ORDER BY position LIMIT ?"
        while after < upto:
            page = self._fetch(sql, (after, upto, self.page_size))
            if not page:
                return
            yield page
            after = int(page[-1][0])

    def narrow_pages(self, after: int, upto: int, with_mono: bool = False) -> Iterator[list[Any]]:
        """Pages of (position, kind, sock_id[, mono_ns]): what replay folds."""
        sql = (
            f"SELECT position, kind, sock_id{', mono_ns' if with_mono else ''} FROM events "
            "WHERE position > ? AND position <= ? ORDER BY position LIMIT ?"
        )
        limit = max(self.page_size, 100_000)
        while after < upto:
            page = self._fetch(sql, (after, upto, limit))
            if not page:
                return
            yield page
            after = int(page[-1][0])

    def events_at(self, positions: Collection[int]) -> dict[int, LoggedEvent]:
        """Whole events by position (any order; missing positions are left out)."""
        wanted = sorted(set(positions))
        found: dict[int, LoggedEvent] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            page = self._fetch(f"{_EVENT_SELECT} WHERE position IN ({', '.join(map(str, chunk))})")
            for event in self._decode_page(page):
                found[event.position] = event
        return found

    def tuples_at(self, positions: Collection[int]) -> dict[int, SocketKey]:
        """(recording, netns, laddr, lport, raddr, rport) of events by position."""
        wanted = sorted(set(positions))
        found = {}
        for start in range(0, len(wanted), 500):
            chunk = ", ".join(map(str, wanted[start : start + 500]))
            rows = self._fetch(
                "SELECT position, recording_id, netns_id, laddr, lport, raddr, rport FROM events "
                f"WHERE position IN ({chunk})"
            )
            if not all(row[2] in self._netns for row in rows):
                self._load_dictionaries()
            namespaces = self._netns
            for position, recording, netns_id, laddr, lport, raddr, rport in rows:
                found[position] = (
                    recording,
                    namespaces[netns_id] or 0,
                    bytes(laddr or b""),
                    lport or 0,
                    bytes(raddr or b""),
                    rport or 0,
                )
        return found

    def pids_at(self, positions: Collection[int]) -> dict[int, int | None]:
        """The pid of events by position."""
        wanted = sorted(set(positions))
        found: dict[int, int | None] = {}
        for start in range(0, len(wanted), 900):
            chunk = ", ".join(map(str, wanted[start : start + 900]))
            sql = f"SELECT position, pid FROM events WHERE position IN ({chunk})"
            found.update(self._fetch(sql))
        return found

    def events_of_kind(self, kind: int) -> list[LoggedEvent]:
        """Every event of one kind (a full scan: for the rare kinds only)."""
        with self.store.connect() as conn:
            page = list(
                conn.execute(
                    text(f"{_EVENT_SELECT} WHERE kind = :kind ORDER BY position"), {"kind": kind}
                )
            )
        return list(self._decode_page(page))

    def events(self, after: int = 0, upto: int | None = None) -> Iterator[LoggedEvent]:
        """Every event with ``after < position <= upto`` (default: up to the head), in order."""
        for page in self.raw_pages(after, upto):
            yield from self._decode_page(page)

    def events_between(
        self, start_wall_ns: int, end_wall_ns: int, after: int = 0, upto: int | None = None
    ) -> Iterator[LoggedEvent]:
        """Events whose wall time is in ``[start_wall_ns, end_wall_ns]``, in position order."""
        spans = [
            span
            for span in self.batches(after, upto)
            if span.max_wall_ns >= start_wall_ns and span.min_wall_ns <= end_wall_ns
        ]
        for first, last in _merge_spans(spans):
            for event in self.events(max(first - 1, after), last):
                if start_wall_ns <= event.wall_ns <= end_wall_ns:
                    yield event

    def _decode_page(self, page: list[Any]) -> Iterator[LoggedEvent]:
        if not all(row[5] in self._comms and row[6] in self._netns for row in page):
            self._load_dictionaries()
        comms, namespaces = self._comms, self._netns
        # SQLite hands blobs over as bytes already; PostgreSQL's driver as memoryviews.
        blob = _bytes if self.store.dialect == "postgresql" else _same
        current, offset_at = None, None
        for row in page:
            recording_id = row[1]
            if recording_id != current:
                current = recording_id
                clock = self._clocks.get(recording_id)
                if clock is None or not len(clock):
                    clock = self.clock(recording_id)
                offset_at = clock.offset_at
            assert offset_at is not None
            mono_ns, extra = row[3], row[14]
            yield LoggedEvent(
                row[0],
                recording_id,
                mono_ns + offset_at(mono_ns),
                row[2],
                mono_ns,
                row[4],
                comms[row[5]],
                namespaces[row[6]],
                blob(row[7]),
                row[8],
                blob(row[9]),
                row[10],
                row[11],
                row[12],
                row[13],
                None if extra is None else decode_extra(extra),
            )

    # -- snapshots -------------------------------------------------------------------------
    def snapshot(self, position: int) -> Snapshot:
        """The rows stored under the SNAPSHOT event at ``position``."""
        links = chains(self.store, position - 1, position)  # (one chain for the three)
        return Snapshot(
            connections=tuple(
                map(
                    SnapshotConnection._make,
                    self._snapshot_rows(
                        "snapshot_connections", position, "netns, lport, rport, inode", links
                    ),
                )
            ),
            processes=tuple(
                map(
                    SnapshotProcess._make,
                    self._snapshot_rows("snapshot_processes", position, "pid", links),
                )
            ),
            conntrack=tuple(
                map(
                    ConntrackEntry._make,
                    self._snapshot_rows("snapshot_conntrack", position, "netns, ct_id", links),
                )
            ),
        )

    def _snapshot_rows(
        self, table: str, position: int, order: str, links: dict[int, int]
    ) -> list[Any]:
        """The rows of a snapshot table at ``position``, whole (eventlog.rebuild: ``links``,
        its chain), wherever they are, ordered by ``order`` (ties in the order they were
        written)."""
        select = ARCHIVED_TABLES[table]
        rows = scan_whole(self.store, select, position - 1, position, threads=1, links=links)
        keys = [(column, "ascending") for column in order.split(", ")]
        rows = rows.take(pc.sort_indices(rows, keys)) if rows.num_rows else rows
        texts = {name for name, kind in select.columns if kind == TEXT}
        return [
            tuple(
                value.decode() if name in texts and value is not None else value
                for name, value in row.items()
                if name not in ("position", "gone")
            )
            for row in rows.to_pylist()
        ]


_IDENTITY = Select(
    "events",
    (("position", INT), ("recording_id", INT), ("kind", INT), ("mono_ns", INT), ("sock_id", INT)),
)


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def _same(value: Any) -> Any:
    return value


def _merge_spans(spans: list[BatchSpan]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for span in spans:
        if merged and span.first_position == merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], span.last_position)
        else:
            merged.append((span.first_position, span.last_position))
    return merged
