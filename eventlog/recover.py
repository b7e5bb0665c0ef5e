"""`scope-replay db recover`: what can still be read of a damaged SQLite log, copied into a new
log, and what could not be read, said.

The damaged file is read by ``eventlog.salvage``, which never writes it. The new log is made as
every log is: its schema by the migrations (``open_log`` for recording), its events, snapshots,
dictionaries and time index (``batches``) by the SQLite appender, one transaction per run of a
recording's events; recordings, clock samples and loss records are copied row for row.

Positions are renumbered. Every log's positions run from 1 without a gap (the appender gives
them, `db check` requires it), so the new log cannot keep the numbers of events that follow
one that was lost. An event keeps its position up to the first event that could not be read,
and each later one moves earlier by the number lost before it; the report says where and by
how much. A connection's id (``<position>#<n>``) moves with its event.

What could not be read is said twice: in the report, table by table, and in the new log, as
loss records that every reader warns of as it warns of events the kernel dropped:

- events at unreadable positions, counted against the recording the time index (``batches``)
  says they belonged to, over that batch's time; when the index cannot say either, against
  the recording of the event read before them (or after), and the reason says so;
- a snapshot some of whose rows could not be read: it is left out whole, because a snapshot is
  the whole table of what was open, and part of one would close connections that were open.

A recording open in the damaged log is closed in the new one as crashed at its last moment
(nothing will append to it there); a recording whose row cannot be read is rebuilt from its
clock samples and events, on a host of its own (``unknown-<id>``); events of a recording of
which neither the row nor a clock sample can be read have no time, and are not copied.

What this cannot do: read anything when the pages of the schema itself are damaged (SQLite
then refuses every statement), or tell a value overwritten in place by another value of the
right type from the one it replaced (SQLite keeps no checksums).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from eventlog import migrate, schema
from eventlog.batch import Batch
from eventlog.clock import ClockModel
from eventlog.errors import LogLocationError, LogOpenError, SchemaTooNewError
from eventlog.events import (
    ClockSample,
    ConntrackEntry,
    Event,
    Kind,
    Snapshot,
    SnapshotConnection,
    SnapshotProcess,
)
from eventlog.location import LogLocation
from eventlog.reader import decode_extra
from eventlog.recordings import STOP_CRASHED
from eventlog.salvage import DamagedLog, Row, Unreadable
from eventlog.snapshots import DELTAS_TABLE, GONE, SNAPSHOT_TABLES, SnapshotEncoder, apply
from eventlog.sqlite import insert_sql
from eventlog.store import LOG_FORMAT, SQLITE_MAGIC, LogStore, Purpose, open_log
from eventlog.writer import DEFAULT_MAX_BATCH_EVENTS, Appender, make_appender

# The tables whose rows are copied, in the order the report lists them.
TABLES = (
    "recordings",
    "clock_samples",
    "comms",
    "netns",
    "events",
    "snapshot_connections",
    "snapshot_processes",
    "snapshot_conntrack",
    "snapshot_deltas",
    "losses",
)
RUN_EVENTS = DEFAULT_MAX_BATCH_EVENTS  # events appended in one transaction, at most
FROM_DAMAGED = "unreadable in the damaged log this one was recovered from"
_KINDS = frozenset(int(kind) for kind in Kind)


@dataclass
class TableCount:
    copied: int = 0
    lost: int = 0
    more_lost: bool = False  # rows at the table's end were lost too, how many is not known

    def lose(self, count: int | None) -> None:
        if count is None:
            self.more_lost = True
        else:
            self.lost += count


@dataclass
class Recovery:
    """What a recovery copied and lost, table by table, and what it said of it."""

    source: str
    target: str
    tables: dict[str, TableCount] = field(default_factory=lambda: {t: TableCount() for t in TABLES})
    notes: list[str] = field(default_factory=list)  # what was lost, and where the log says so

    @property
    def whole(self) -> bool:
        return not any(count.lost or count.more_lost for count in self.tables.values())

    def document(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "log": self.target,
            "whole": self.whole,
            "tables": [
                {"table": name, "copied": c.copied, "lost": c.lost, "lost_exactly": not c.more_lost}
                for name, c in self.tables.items()
            ],
            "notes": self.notes,
        }


def recover_log(source: LogLocation, target: LogLocation) -> Recovery:
    """Copy what can be read of the damaged SQLite log ``source`` into a new log at ``target``
    (which must not exist); see the module docstring. The new file is removed if the copy
    fails."""
    target_path = _new_file(target)
    source_path = _damaged_file(source)
    try:
        damaged = DamagedLog(source_path)
    except sqlite3.Error as exc:
        raise LogOpenError(f"{source_path}: SQLite cannot open it: {exc}") from exc
    try:
        tables = _log_tables(damaged, source_path)
        recovery = Recovery(source.display(), target.display())
        _create_new(target_path)
        try:
            with open_log(target, Purpose.RECORD) as store:
                _Copy(damaged, tables, store, recovery).run()
        except BaseException:
            _remove_log(target_path)
            raise
        return recovery
    finally:
        damaged.close()


def _damaged_file(location: LogLocation) -> Path:
    if location.path is None:
        raise LogLocationError(
            f"{location.display()}: recovery is for SQLite log files; a PostgreSQL server "
            "keeps its own pages sound (use its own tools)"
        )
    path = location.path
    if not path.exists():
        raise LogOpenError(f"no log at {path}")
    try:
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise LogOpenError(f"cannot read {path}: {exc.strerror}") from exc
    if header != SQLITE_MAGIC:
        raise LogOpenError(f"{path} is not a SQLite database")
    return path


def _new_file(location: LogLocation) -> Path:
    if location.path is None:
        raise LogLocationError(
            f"{location.display()}: a recovered log is written to a new SQLite file, "
            "not to a server"
        )
    if location.path.exists():
        raise _exists(location.path)
    return location.path


def _exists(path: Path) -> LogLocationError:
    return LogLocationError(
        f"{path} exists: recovery writes a new log, never over one (name a file that does not "
        "exist)"
    )


def _create_new(path: Path) -> None:
    """Create the new log's file, only if no other file took its name since it was checked:
    the copy must never write into a log it did not make. Readable by its owner only, as
    every log (it holds command lines and peers)."""
    if not path.parent.is_dir():
        raise LogLocationError(f"directory {path.parent} does not exist")
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError as exc:
        raise _exists(path) from exc
    except OSError as exc:
        raise LogLocationError(f"cannot create {path}: {exc.strerror}") from exc


def _log_tables(damaged: DamagedLog, path: Path) -> set[str]:
    """The log's tables the damaged file still names; refuses a file that is not a log."""
    try:
        names = damaged.tables()
    except sqlite3.DatabaseError as exc:
        raise LogOpenError(
            f"{path}: SQLite cannot read the list of its tables ({exc}): nothing can be recovered"
        ) from exc
    found = names & set(schema.SCHEMA_TABLES)
    log_format = _readable_value(damaged, "SELECT value FROM log_meta WHERE key = 'format'")
    if not found & set(TABLES) or log_format not in (None, LOG_FORMAT):
        raise LogOpenError(f"{path} is a SQLite database but not a scope-recorder log")
    revision = _readable_value(damaged, "SELECT version_num FROM alembic_version")
    if revision is not None and revision not in migrate.known_revisions():
        raise SchemaTooNewError(
            f"{path} was written by a newer scope-recorder (schema {revision}): recover it "
            "with that version"
        )
    return found


def _readable_value(damaged: DamagedLog, sql: str) -> str | None:
    """A text value of the damaged log, None if it cannot be read."""
    try:
        row = damaged.conn.execute(sql).fetchone()
        return None if row is None else bytes(row[0]).decode()
    except (sqlite3.DatabaseError, TypeError, ValueError):
        return None


def _remove_log(path: Path) -> None:
    for leftover in (path, *(path.with_name(path.name + end) for end in ("-wal", "-shm"))):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


@dataclass
class _Gap:
    """Unreadable positions met while copying, with what is known around them."""

    first: int
    last: int | None
    after: int  # the new log's position before them
    before: tuple[int, int] | None  # (recording, mono_ns) of the event read before them


@dataclass
class _NewLoss:
    recording_id: int
    lost: int
    first_mono_ns: int
    last_mono_ns: int
    after_position: int
    reason: str


class _Copy:
    """One recovery's copy, from the small tables to the events and their snapshots."""

    def __init__(
        self, damaged: DamagedLog, tables: set[str], store: LogStore, recovery: Recovery
    ) -> None:
        self.damaged = damaged
        self.tables = tables
        self.store = store
        self.recovery = recovery
        self.counts = recovery.tables
        self.clocks: dict[int, ClockModel] = {}
        self.recording_ids: set[int] = set()  # those whose row was copied
        self.comms: dict[int, str] = {}
        self.netns: dict[int, int] = {}
        self.head: int | None = None
        self.snapshots: dict[str, _SnapshotRows] = {}
        self.appender: Appender | None = None
        self.kept = 0  # events copied so far: the new log's last position
        self.events: list[Event] = []  # the run of one recording's events not appended yet
        self.run_recording = 0
        self.run_snapshots: dict[int, Snapshot] = {}
        # Snapshots stored as changes: position -> base, and the positions whose way of
        # being stored could not be read; each recording's last snapshot copied, whole
        # (what the next one's changes apply to), and how the new log stores them.
        self.deltas: dict[int, int] = {}
        self.deltas_unread: list[Unreadable] = []
        self.last_whole: dict[int, tuple[int, dict[str, list[Row]]]] = {}
        self.encoders: dict[int, SnapshotEncoder] = {}
        self.spans: dict[int, tuple[int, int]] = {}  # recording -> first, last mono_ns copied
        self.previous: tuple[int, int] | None = None  # (recording, mono_ns) of the last event
        self.gap: _Gap | None = None
        self.losses: list[_NewLoss] = []
        self.old_losses: list[Row] = []
        self.moved_losses: list[tuple[Row, int]] = []  # a loss read, and its new after_position
        self.untimed: dict[int, int] = {}  # recording -> events that could not be given a time
        self.nameless = 0
        self.unplaced = 0  # events whose network namespace could not be read

    def run(self) -> None:
        recordings = self._read_whole("recordings")
        samples = self._read_whole("clock_samples")
        self.comms = {row[1]: row[2] for row in self._read_whole("comms")}
        self.netns = {row[1]: row[2] for row in self._read_whole("netns")}
        # The appender writes the names and namespaces the copied events use.
        self.counts["comms"].copied = len(self.comms)
        self.counts["netns"].copied = len(self.netns)
        self.old_losses = sorted(self._read_whole("losses"), key=lambda row: (row[8], row[0]))
        self._write_recordings(recordings, samples)
        self._copy_events()
        self._write_losses()
        self._rebuild_recordings()
        self._say_what_events_lack()

    # -- the small tables ------------------------------------------------------------------
    def _read_whole(self, table: str) -> list[Row]:
        if table not in self.tables:
            self._lost_table(table)
            return []
        rows = []
        for item in self.damaged.read(schema.metadata.tables[table]):
            if isinstance(item, Unreadable):
                self._lost_rows(table, item)
            else:
                rows.append(item)
        return rows

    def _lost_table(self, table: str) -> None:
        self.counts[table].more_lost = True
        self.recovery.notes.append(
            f"{table}: the damaged log's schema does not name this table any more: "
            "none of its rows could be read"
        )

    def _lost_rows(self, table: str, unreadable: Unreadable) -> None:
        self.counts[table].lose(unreadable.count)
        where = (
            f"rows {unreadable.first}..{unreadable.last}"
            if unreadable.last is not None
            else f"rows from {unreadable.first} on (how many there were is not known)"
        )
        consequence = {
            "recordings": "recordings with events left are rebuilt from them, hosts unknown",
            "losses": "the new log does not know of the events these records said were lost",
            "comms": "events that named these processes are copied without the name",
            "netns": "events in these network namespaces are copied without it",
            "clock_samples": "the new log converts those times with the samples that are left",
        }.get(table)
        if table in SNAPSHOT_TABLES:
            consequence = "the snapshots they were of are left out (and held as losses)"
        self.recovery.notes.append(
            f"{table}: {where} could not be read" + (f": {consequence}" if consequence else "")
        )

    def _write_recordings(self, recordings: list[Row], samples: list[Row]) -> None:
        by_recording: dict[int, list[ClockSample]] = {}
        for _, recording_id, mono_ns, offset_ns, uncertainty_ns in samples:
            by_recording.setdefault(recording_id, []).append(
                ClockSample(mono_ns, offset_ns, uncertainty_ns)
            )
        columns = [column.name for column in schema.recordings.columns]
        recording_rows = []
        for row in recordings:
            values = dict(zip(columns, row[1:], strict=True))
            recording_id = values["id"]
            self.recording_ids.add(recording_id)
            if recording_id not in by_recording:
                # begin_recording stores the start as the first sample: it is that sample,
                # but for its uncertainty, which is not known any more.
                started = values["started_mono_ns"]
                by_recording[recording_id] = [
                    ClockSample(started, values["started_wall_ns"] - started, 0)
                ]
                samples.append((0, recording_id, *by_recording[recording_id][0]))
                self.recovery.notes.append(
                    f"recording {recording_id}: no clock sample of it could be read: its time "
                    "is converted with the one its start gives (uncertainty unknown, stored as 0)"
                )
            if values["stop_reason"] is None:
                values["stop_reason"] = STOP_CRASHED
                values["stop_detail"] = (
                    "open in the damaged log this one was recovered from: ended at its last moment"
                )
                values["stopped_mono_ns"] = values["last_mono_ns"] or values["started_mono_ns"]
                self.recovery.notes.append(
                    f"recording {recording_id} was open in the damaged log: the new log has it "
                    "ended at its last moment there, as crashed"
                )
            recording_rows.append(tuple(values[name] for name in columns))
        self.clocks = {rec: ClockModel(found) for rec, found in by_recording.items()}
        self._insert("recordings", recording_rows)
        self._insert("clock_samples", [row[1:] for row in samples])

    def _insert(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            with self.store.connect() as conn:
                conn.exec_driver_sql(insert_sql(table), rows)
                conn.commit()
        self.counts[table].copied += len(rows)

    # -- events and snapshots --------------------------------------------------------------
    def _copy_events(self) -> None:
        self.head = self._head() if "events" in self.tables else None
        head = self.head if self.head is not None else self.damaged.rowid_limit
        self.snapshots = {
            table: _SnapshotRows(
                self.damaged.read(self._shape(table))
                if table in self.tables
                else iter([Unreadable(1, None)]),
                head,
            )
            for table in SNAPSHOT_TABLES
        }
        self._read_deltas()
        if "events" in self.tables:
            self._append_events()
        else:
            self._lost_table("events")
        self._move_losses(None)
        self.counts["events"].copied = self.kept
        for table, rows in self.snapshots.items():
            rows.finish()
            self.counts[table].lose(rows.orphans)
            for unreadable in rows.unreadable:
                self._lost_rows(table, unreadable)
            if rows.orphans:
                self.recovery.notes.append(
                    f"{table}: {rows.orphans} rows of snapshots whose event is not in the new log "
                    "are left out"
                )

    def _append_events(self) -> None:
        self.appender = make_appender(self.store)
        try:
            for item in self.damaged.read(schema.events, end=self.head):
                if isinstance(item, Unreadable):
                    self._unreadable(item)
                else:
                    self._event(item)
            self._flush()
            self._close_gap(None)
        finally:
            self.appender.close()

    def _head(self) -> int | None:
        """The damaged log's last position: the last one the time index or the events give
        whose row reads and holds what it should (a damaged page can make a rowid up)."""
        found = []
        last_event = self.damaged.last_rowid("events")
        if last_event:
            row = self.damaged.row(schema.events, last_event)
            if row is not None and row[3] in _KINDS:
                found.append(last_event)
        last_batch = self.damaged.last_rowid("batches") if "batches" in self.tables else None
        if last_batch:
            row = self.damaged.row(schema.batches, last_batch)
            if row is not None and row[1] == last_batch and row[2] <= last_batch:
                found.append(last_batch)
        return max(found, default=None)

    def _event(self, row: Row) -> None:
        (position, _, recording_id, kind, mono_ns, pid, comm_id, netns_id, laddr, lport,
         raddr, rport, sock_id, sent, received, extra) = row  # fmt: skip
        if kind not in _KINDS:
            self._unreadable(Unreadable(position, position))  # an overwritten cell's values
            return
        # This is the event after any positions lost before it, and after the losses that
        # were recorded before it.
        if self.gap is not None:
            self._close_gap((recording_id, mono_ns))
        if self.old_losses and self.old_losses[0][8] < position:
            self._move_losses(position)
        self.previous = (recording_id, mono_ns)
        if recording_id not in self.clocks:
            self.untimed[recording_id] = self.untimed.get(recording_id, 0) + 1
            return
        snapshot = None
        if kind == Kind.SNAPSHOT:
            found = self._snapshot(position, recording_id)
            if isinstance(found, _LeftOut):
                self._leave_out_snapshot(position, recording_id, mono_ns, found)
                return
            snapshot = found
        if recording_id != self.run_recording or len(self.events) >= RUN_EVENTS:
            self._flush()
            self.run_recording = recording_id
        if snapshot is not None:
            self.run_snapshots[len(self.events)] = snapshot
        comm = self.comms.get(comm_id) if comm_id is not None else None
        netns = self.netns.get(netns_id) if netns_id is not None else None
        if (comm is None and comm_id is not None) or (netns is None and netns_id is not None):
            self._count_unnamed(comm, comm_id, netns, netns_id)
        self.events.append(
            Event(kind, mono_ns, pid, comm, netns, laddr, lport, raddr, rport, sock_id, sent,
                  received, None if extra is None else decode_extra(extra))
        )  # fmt: skip
        self.kept += 1

    def _count_unnamed(
        self, comm: str | None, comm_id: int | None, netns: int | None, netns_id: int | None
    ) -> None:
        """An event whose name or network namespace was in a dictionary row that is lost."""
        if comm is None and comm_id is not None:
            self.nameless += 1
        if netns is None and netns_id is not None:
            self.unplaced += 1

    def _flush(self) -> None:
        if not self.events:
            return
        assert self.appender is not None
        batch = Batch(events=list(self.events), snapshots=self.run_snapshots)
        encoder = self.encoders.setdefault(self.run_recording, SnapshotEncoder())
        result = self.appender.append(
            self.run_recording, batch, self.clocks[self.run_recording], encoder
        )
        if result.last_position != self.kept:  # only a bug can make them differ
            raise RuntimeError(
                f"the new log's positions went astray: {result.last_position}, not {self.kept}"
            )
        monos = [event.mono_ns for event in self.events]
        first, last = self.spans.get(self.run_recording, (monos[0], monos[0]))
        self.spans[self.run_recording] = (min(first, *monos), max(last, *monos))
        self.events, self.run_snapshots = [], {}

    def _snapshot(self, position: int, recording_id: int) -> Snapshot | _LeftOut:
        """The snapshot at ``position`` whole, or why it is left out: not all of its rows
        could be read, or it is stored as changes to a snapshot that is left out."""
        parts = {table: rows.take(position) for table, rows in self.snapshots.items()}
        read = all(part_whole for _, part_whole in parts.values())
        tables = (
            self._rebuilt(position, recording_id, {t: rows for t, (rows, _) in parts.items()})
            if read
            else UNREAD
        )
        for table, (part, _) in parts.items():
            if isinstance(tables, _LeftOut):
                self.counts[table].lost += len(part)  # left out with the rest of the snapshot
            else:
                self.counts[table].copied += len(part)
        if isinstance(tables, _LeftOut):
            self.last_whole.pop(recording_id, None)  # the next one's changes cannot apply
            return tables
        self.last_whole[recording_id] = (position, tables)
        return Snapshot(
            connections=tuple(SnapshotConnection(*row) for row in tables["snapshot_connections"]),
            processes=tuple(SnapshotProcess(*row) for row in tables["snapshot_processes"]),
            conntrack=tuple(ConntrackEntry(*row) for row in tables["snapshot_conntrack"]),
        )

    def _rebuilt(
        self, position: int, recording_id: int, parts: dict[str, list[Row]]
    ) -> dict[str, list[Row]] | _LeftOut:
        """The snapshot's rows whole (without rowid, position and ``gone``), from the rows
        read of it and, if it is stored as changes, the snapshot they change."""
        if any(u.first <= position and (u.last is None or position <= u.last)
               for u in self.deltas_unread):  # fmt: skip
            return UNKNOWN_STORAGE
        base = self.deltas.get(position)
        split = {table: [_values(table, row) for row in rows] for table, rows in parts.items()}
        if base is None:
            if any(gone == GONE for rows in split.values() for _, gone in rows):
                return MISFIT  # stored whole, yet taking rows out
            return {table: [row for row, _ in rows] for table, rows in split.items()}
        last = self.last_whole.get(recording_id)
        if last is None or last[0] != base:
            return BASE_LEFT_OUT
        try:
            return {
                table: apply(
                    last[1][table],
                    [row for row, gone in rows if gone == GONE],
                    [row for row, gone in rows if gone != GONE],
                )
                for table, rows in split.items()
            }
        except ValueError:  # changes that do not fit the snapshot they name
            return MISFIT

    def _shape(self, table: str) -> Any:
        """``table`` as the damaged log has it: a snapshot table of a log written before
        snapshots could be stored as changes has no ``gone`` column (its rows read as if
        it were null)."""
        shape = schema.metadata.tables[table]
        if "gone" in self.damaged.columns(table):
            return shape
        return sa.Table(
            table,
            sa.MetaData(),
            *(sa.Column(c.name, c.type, nullable=c.nullable) for c in shape.columns
              if c.name != "gone"),
        )  # fmt: skip

    def _read_deltas(self) -> None:
        """Which snapshots are stored as changes. A log written before they could be has
        no such table; a log whose table is lost cannot say of any snapshot."""
        if DELTAS_TABLE not in self.tables:
            if any("gone" in self.damaged.columns(t) for t in SNAPSHOT_TABLES if t in self.tables):
                self._lost_table(DELTAS_TABLE)
                self.deltas_unread.append(Unreadable(1, None))
            return
        for item in self.damaged.read(schema.metadata.tables[DELTAS_TABLE], gapless=False):
            if isinstance(item, Unreadable):
                self._lost_rows(DELTAS_TABLE, item)
                self.deltas_unread.append(item)
            else:
                self.deltas[item[1]] = item[2]
                self.counts[DELTAS_TABLE].copied += 1

    def _leave_out_snapshot(
        self, position: int, recording_id: int, mono_ns: int, why: _LeftOut
    ) -> None:
        self.counts["events"].lost += 1
        self.losses.append(
            _NewLoss(recording_id, 1, mono_ns, mono_ns, self.kept,
                     f"a snapshot {why.loss} (its position {position} there)")
        )  # fmt: skip
        self.recovery.notes.append(
            f"events: the snapshot at position {position} (recording {recording_id}) is left "
            f"out: {why.note}; the new log holds it as a loss"
        )

    # -- what could not be read ------------------------------------------------------------
    def _unreadable(self, unreadable: Unreadable) -> None:
        """Unreadable positions: held until the next event is read, which bounds them."""
        self.counts["events"].lose(unreadable.count)
        gap = self.gap
        if gap is not None and gap.last is not None and unreadable.first == gap.last + 1:
            gap.last = unreadable.last
            return
        self._close_gap(None)
        self.gap = _Gap(unreadable.first, unreadable.last, self.kept, self.previous)

    def _close_gap(self, after: tuple[int, int] | None) -> None:
        """Loss records for the pending unreadable positions, and the report's line."""
        gap, self.gap = self.gap, None
        if gap is None:
            return
        if gap.last is None:
            self.recovery.notes.append(
                f"events: positions from {gap.first} on could not be read, and neither could "
                "how many there were: the new log cannot say how many it lacks"
            )
            return
        reason = f"{FROM_DAMAGED} (its positions {gap.first}..{gap.last})"
        counted = self._attribute(gap.first, gap.last)
        unknown = gap.last - gap.first + 1 - sum(count for count, _, _ in counted.values())
        for recording_id, (count, first_mono, last_mono) in sorted(counted.items()):
            self.losses.append(
                _NewLoss(recording_id, count, first_mono, last_mono, gap.after, reason)
            )
        parts = [f"recording {rec}: {count}" for rec, (count, _, _) in sorted(counted.items())]
        neighbour = gap.before or after
        if unknown and neighbour is not None:
            monos = [event[1] for event in (gap.before, after) if event is not None]
            self.losses.append(
                _NewLoss(neighbour[0], unknown, min(monos), max(monos), gap.after,
                         f"{reason}; which recording they were of is not known")
            )  # fmt: skip
            parts.append(f"{unknown} of a recording not known, held as recording {neighbour[0]}'s")
        elif unknown:
            parts.append(f"{unknown} of a recording not known, not held as a loss: no event left")
        self.recovery.notes.append(
            f"events: positions {gap.first}..{gap.last} could not be read "
            f"({gap.last - gap.first + 1} events; {', '.join(parts)}); the new log holds them as "
            f"losses, and its events from there on are {gap.last - gap.after} positions earlier"
        )

    def _attribute(self, first: int, last: int) -> dict[int, tuple[int, int, int]]:
        """recording -> (events, first mono_ns, last mono_ns) of the positions ``first..last``,
        as far as the time index can say (each batch is one recording's)."""
        counted: dict[int, tuple[int, int, int]] = {}
        if "batches" not in self.tables:
            return counted
        next_position = first
        batches = self.damaged.read(schema.batches, start=first, end=self.head, gapless=False)
        for item in batches:
            if isinstance(item, Unreadable):
                continue
            _, last_position, first_position, recording_id, min_mono, max_mono, *_ = item
            if first_position > last:
                break
            low, high = max(next_position, first_position), min(last, last_position)
            if low > high:
                continue
            count, first_mono, last_mono = counted.get(recording_id, (0, min_mono, max_mono))
            counted[recording_id] = (
                count + high - low + 1,
                min(first_mono, min_mono),
                max(last_mono, max_mono),
            )
            next_position = high + 1
        return counted

    def _move_losses(self, position: int | None) -> None:
        """Give the loss records read before ``position`` (all, if None) their new place: the
        new position of the last event copied before it."""
        while self.old_losses and (position is None or self.old_losses[0][8] < position):
            self.moved_losses.append((self.old_losses.pop(0), self.kept))

    def _write_losses(self) -> None:
        """The damaged log's loss records and the new ones, in the order of their place. A
        loss of a recording whose time is not known cannot be held (its row would be made
        up): it is said instead."""
        rows: list[tuple[int, int, tuple[Any, ...]]] = []
        for row, after in self.moved_losses:
            _, _, recording_id, lost, first_mono, last_mono, first_wall, last_wall, _, reason = row
            if self._timeless(recording_id, lost):
                self.counts["losses"].lost += 1
                continue
            values = (recording_id, lost, first_mono, last_mono, first_wall, last_wall, after,
                      reason)  # fmt: skip
            rows.append((after, len(rows), values))
        copied = len(rows)
        for loss in self.losses:
            if self._timeless(loss.recording_id, loss.lost):
                continue
            clock = self.clocks[loss.recording_id]
            values = (loss.recording_id, loss.lost, loss.first_mono_ns, loss.last_mono_ns,
                      clock.wall_ns(loss.first_mono_ns), clock.wall_ns(loss.last_mono_ns),
                      loss.after_position, loss.reason)  # fmt: skip
            rows.append((loss.after_position, len(rows), values))
        rows.sort(key=lambda item: item[:2])
        self._insert("losses", [(ident, *values) for ident, (_, _, values) in enumerate(rows, 1)])
        # The new records are not rows of the damaged log: the table counts what was read.
        self.counts["losses"].copied = copied

    def _timeless(self, recording_id: int, lost: int) -> bool:
        if recording_id in self.clocks:
            return False
        self.recovery.notes.append(
            f"losses: a loss of {lost} events of recording {recording_id} cannot be held in "
            "the new log: neither the recording's row nor a clock sample of it could be read"
        )
        return True

    def _rebuild_recordings(self) -> None:
        """A row for each recording the new log refers to whose row could not be read."""
        referred = set(self.spans) | {row[2] for row, _ in self.moved_losses} | set(self.clocks)
        rows = []
        for recording_id in sorted(referred - self.recording_ids):
            clock = self.clocks.get(recording_id)
            if clock is None:
                continue
            monos = [mono for mono, _ in clock.segments()]
            first, last = self.spans.get(recording_id, (monos[0], monos[-1]))
            started, ended = min(first, monos[0]), max(last, monos[-1])
            rows.append(
                (recording_id, f"unknown-{recording_id}", None, None, None, "unknown", "unknown",
                 None, None, started, clock.wall_ns(started), ended, ended, STOP_CRASHED,
                 f"its row was {FROM_DAMAGED}: rebuilt from its events (host, mode and "
                 "options are not known)", None, None, None)
            )  # fmt: skip
            self.recovery.notes.append(
                f"recording {recording_id}: its row could not be read; the new log has one "
                f"rebuilt from its clock samples and events, of host unknown-{recording_id} "
                "(recordings of one host cannot be told from those of another any more)"
            )
        if rows:
            with self.store.connect() as conn:
                conn.exec_driver_sql(insert_sql("recordings"), rows)
                conn.commit()

    def _say_what_events_lack(self) -> None:
        for recording_id, count in sorted(self.untimed.items()):
            self.counts["events"].lost += count
            self.recovery.notes.append(
                f"events: {count} events of recording {recording_id} could not be copied: "
                "neither its row nor a clock sample of it could be read, so their time is "
                "not known"
            )
        if self.nameless:
            self.recovery.notes.append(
                f"events: {self.nameless} are copied without their process name, "
                "which could not be read"
            )
        if self.unplaced:
            self.recovery.notes.append(
                f"events: {self.unplaced} are copied without their network namespace, "
                "which could not be read"
            )


@dataclass(frozen=True)
class _LeftOut:
    """Why a snapshot is left out: as a report's note says it, and its loss record."""

    note: str
    loss: str


UNREAD = _LeftOut("some of its rows could not be read", f"some of whose rows were {FROM_DAMAGED}")
BASE_LEFT_OUT = _LeftOut(
    "it is stored as changes to a snapshot that is left out",
    f"stored as changes to one whose rows were {FROM_DAMAGED}",
)
UNKNOWN_STORAGE = _LeftOut(
    "whether it is stored whole or as changes could not be read",
    f"whose way of being stored was {FROM_DAMAGED}",
)
MISFIT = _LeftOut(
    "its rows do not fit the snapshot they change",
    "whose rows, as read from the damaged log, do not fit the snapshot they change",
)


def _values(table: str, row: Row) -> tuple[Row, int | None]:
    """A snapshot row as read (rowid, position, its values, and ``gone`` if the damaged log
    has the column): its values, and ``gone``."""
    width = len(schema.metadata.tables[table].columns) - 2  # less the position and gone
    values = tuple(row[2 : 2 + width])
    return values, row[2 + width] if len(row) > 2 + width else None


class _SnapshotRows:
    """One snapshot table's rows, read in step with the events: both come in position order
    (a snapshot's rows are written in its event's transaction, and rows are never removed)."""

    def __init__(self, items: Iterator[Row | Unreadable], head: int) -> None:
        self._items = items
        self._head = head
        self._next = next(items, None)
        self._last_position = 0  # of the last row read
        self._unread_since: int | None = None  # rows lost after rows of this position
        self.unreadable: list[Unreadable] = []
        self.orphans = 0  # rows of snapshots whose event was not copied

    def take(self, position: int) -> tuple[list[Row], bool]:
        """The rows of the snapshot at ``position`` that could be read, and whether they are
        all of them."""
        rows: list[Row] = []
        whole = True
        while self._next is not None:
            item = self._next
            if isinstance(item, Unreadable):
                self.unreadable.append(item)
                self._lose_from_here()
            elif not self._last_position <= item[1] <= self._head:
                self.unreadable.append(Unreadable(item[0], item[0]))  # a position made up
                self._lose_from_here()
            elif item[1] > position:
                break
            else:
                if self._unread_since is not None:
                    # The rows lost were of snapshots from there to this row's.
                    whole = whole and item[1] < position
                    self._unread_since = None
                if item[1] == position:
                    rows.append(item)
                else:
                    self.orphans += 1
                self._last_position = item[1]
            self._next = next(self._items, None)
        if self._unread_since is not None and self._unread_since <= position:
            whole = False
        return rows, whole

    def _lose_from_here(self) -> None:
        if self._unread_since is None:
            self._unread_since = self._last_position

    def finish(self) -> None:
        """Count the rows no snapshot event took."""
        self.take(self._head + 1)
