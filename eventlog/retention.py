"""Retention: the live log kept bounded, its oldest positions moved to the archive.

A cut at position ``P`` moves every row of positions up to ``P`` (events, snapshot rows,
batches) into a new archive segment (eventlog.archive), then says so in the log
(``log_meta.archived_upto = P``, one small transaction), then deletes those rows from the
live log once every segment of the cut is written. The order makes every step safe to
interrupt: before the log
says so, readers read the live rows and an unlisted segment is written again by the next
cut; after, they read the archive, and rows the log still holds below the boundary are left
out by every reader and deleted by the next cut.

The newest batch always stays in the live log: appenders count positions on from the
highest one the events table holds.

Nothing an answer depends on leaves: the recordings, clock samples, losses and dictionaries
stay in the live log (they are small), and positions keep their numbers, so the derived
store (replay.derived) folds archive and live log as one sequence and every answer is the
one the uncut log gave. Cuts fall between batches, so a batch is never split.

Rows leave the live log in one of two ways. Most cuts (a recorder's, which keeps more than
it cuts) delete a few thousand positions per transaction, so that the recorder's commits never
wait long for the write lock. A cut that keeps few rows of a SQLite log (``scope-replay
compact`` of an old log) copies them aside and drops the tables instead: SQLite deletes row by
row (about a microsecond each, ten seconds for ten million events), while a dropped table's
pages are freed a page at a time; the write lock is held for the copy and the drop, about a
second for ten million events. Deleted rows are zeroed only where SQLite writes the page
anyway (``secure_delete = FAST``): zeroing every freed page doubled what a cut wrote, and
what they held is in the archive.

With ``--archive none`` nothing is archived: the cut keeps, in the live log, the state at
``P`` and the rows it still refers to (eventlog.seed), written with the boundary in one
transaction, and the rows up to ``P`` leave the live log as after an archived cut. What the
state is, is the derived store's to say (replay.derived.seed): the caller passes the
function that makes it (``SeedMaker``), and this package stays below the reading side.

SQLite gives the space back with incremental vacuum (logs created by this version have
``auto_vacuum = INCREMENTAL``); in an older log the freed pages are reused by new events, so
its file stops growing too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlalchemy import Connection, text

from eventlog.archive import (
    ARCHIVE_DIR,
    ARCHIVED_UPTO,
    BATCH_SCHEMA,
    TABLES,
    Archive,
    Segment,
    boundary,
)
from eventlog.cutlock import CutLock, cut_lock
from eventlog.errors import ArchiveError, CutBusyError, LogError, ScopeError, UsageError
from eventlog.location import LogLocation
from eventlog.options import SqliteOptions
from eventlog.scan import scan_live
from eventlog.seed import DROPPED, SEED, Seed
from eventlog.store import LogStore, Purpose, map_driver_error, open_log

SEGMENT_POSITIONS = 2_000_000  # positions per segment at most (about 300 MB of columns)
WRITERS = 2  # segments written at once (and one read): up to three segments' columns in memory
MERGE_BELOW = SEGMENT_POSITIONS // 4  # a last segment of fewer events grows with the next cut
DELETE_POSITIONS = 20_000  # positions deleted per transaction: a few ms of the write lock
# A SQLite table is rebuilt rather than deleted from when it keeps at most this share of the
# positions it gives up, and at most REBUILD_MAX_KEPT positions (the copy holds the lock).
REBUILD_SHARE = 0.25
REBUILD_MAX_KEPT = 200_000
VACUUM_PAGES = 2_000  # pages given back per transaction
# A file with at most this many pages in use, and more free than used, is rewritten whole
# (VACUUM) instead: see reclaim_space.
VACUUM_WHOLE_MAX_USED_PAGES = 4_096
SIZE_TARGET = 0.75  # a cut for --max-log-size leaves the live log at this share of it

# The state at a position of a log, and the rows it refers to: what a cut that drops its
# history keeps (replay.derived.seed.make_seed); None if the function it is given (a
# recorder stopping) said to stop while it was made.
SeedMaker = Callable[[LogStore, int, Callable[[], bool]], Seed | None]


@dataclass(frozen=True)
class RetentionPolicy:
    """What a recorder keeps in its live log: events of the last ``retain_ns`` and/or at
    most ``max_log_bytes``; what leaves goes to ``archive``, or is dropped (``archive``
    None, ``seed_maker`` given: see the module's docstring)."""

    archive: Path | None
    retain_ns: int | None = None
    max_log_bytes: int | None = None
    interval_s: float = 60.0  # how often the recorder looks
    min_cut_positions: int = SEGMENT_POSITIONS  # see apply_policy
    seed_maker: SeedMaker | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "retain_ns": self.retain_ns,
            "max_log_bytes": self.max_log_bytes,
            "archive": DROPPED if self.archive is None else str(self.archive),
        }


@dataclass
class CutResult:
    archived_before: int  # the boundary before the cut
    archived_upto: int  # and after it
    events: int = 0
    segments: int = 0
    archive_bytes: int = 0
    seconds: float = 0.0
    stopped: bool = False  # a dropping cut given up as ``stopping`` asked: nothing written


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: str) -> int:
    """Bytes of ``10G``, ``500M``, ``2048`` (units of 1024)."""
    match = _SIZE.match(value)
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"invalid size {value!r}: use a number and a unit, e.g. 500M, 10G")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def make_policy(
    location: LogLocation,
    retain_ns: int | None,
    max_log_size: str | None,
    archive: str | None,
    interval_s: float | None = None,
    seed_maker: SeedMaker | None = None,
) -> RetentionPolicy | None:
    """The policy that ``scope-record``'s options ask for (None: keep everything).
    ``--archive none`` drops what leaves, keeping the state at each cut by ``seed_maker``."""
    max_bytes = parse_size(max_log_size) if max_log_size is not None else None
    if retain_ns is None and max_bytes is None:
        if archive is not None:
            raise UsageError("--archive needs --retain or --max-log-size")
        return None
    if retain_ns is not None and retain_ns <= 0:
        raise UsageError("--retain must be longer than 0")
    dropping = archive is not None and archive.lower() == DROPPED
    directory = Path(archive) if archive is not None else default_archive(location)
    if directory is None:
        raise UsageError(
            "a PostgreSQL log needs --archive DIR (where its archive is kept) or --archive none"
        )
    if dropping and seed_maker is None:
        raise UsageError("--archive none is not supported here")
    if interval_s is None:
        # Often enough that the live log holds little more than asked, rarely enough that
        # each cut moves a large segment.
        interval_s = min(60.0, max(1.0, (retain_ns or 240 * 10**9) / 4e9))
    return RetentionPolicy(
        None if dropping else directory.absolute(),
        retain_ns,
        max_bytes,
        interval_s,
        seed_maker=seed_maker if dropping else None,
    )


def is_dropping(archive: str | Path | None) -> bool:
    """Whether an ``--archive`` option's value asks that what leaves be dropped."""
    return archive is not None and str(archive).lower() == DROPPED


def default_archive(location: LogLocation) -> Path | None:
    """Beside a SQLite log: ``<log>.archive``. A PostgreSQL log has no "beside"."""
    if location.path is None:
        return None
    return location.path.with_name(location.path.name + ".archive")


# -- where to cut ------------------------------------------------------------------------------
_LAST_NS = 2**63 - 1


def cut_before(store: LogStore, before_wall_ns: int) -> int:
    """The last position of the longest run of live batches all of whose events are before
    ``before_wall_ns`` (the boundary itself if there is none)."""
    # (a moment past what 64 bits hold, after the year 2262, is past every event too)
    before_wall_ns = min(before_wall_ns, _LAST_NS)
    archived = boundary(store).archived_upto
    with store.connect() as conn:
        first_kept = conn.execute(
            text(
                "SELECT first_position FROM batches WHERE last_position > :a "
                "AND max_wall_ns >= :t ORDER BY last_position LIMIT 1"
            ),
            {"a": archived, "t": before_wall_ns},
        ).scalar()
        if first_kept is not None:
            return max(archived, int(first_kept) - 1)
        head = conn.execute(
            text("SELECT max(last_position) FROM batches WHERE last_position > :a"),
            {"a": archived},
        ).scalar()
    return max(archived, int(head or 0))


def cut_for_size(store: LogStore, max_bytes: int) -> int:
    """A position whose cut leaves the live log at about ``SIZE_TARGET`` of ``max_bytes``
    (estimated from its bytes per position now); the boundary if it is within the limit."""
    archived = boundary(store).archived_upto
    used = live_bytes(store)
    if used <= max_bytes:
        return archived
    with store.connect() as conn:
        low, high = conn.execute(
            text("SELECT min(first_position), max(last_position) FROM batches "
                 "WHERE last_position > :a"),
            {"a": archived},
        ).one()  # fmt: skip
        if low is None:
            return archived
        per_position = used / max(1, int(high) - int(low) + 1)
        target = int(low) - 1 + math.ceil((used - SIZE_TARGET * max_bytes) / per_position)
        cut = conn.execute(
            text("SELECT max(last_position) FROM batches WHERE last_position > :a "
                 "AND last_position <= :t"),
            {"a": archived, "t": target},
        ).scalar()  # fmt: skip
    return max(archived, int(cut or archived))


def live_bytes(store: LogStore) -> int:
    """The bytes the live log's rows take: SQLite's pages in use (not the free ones, which
    new rows reuse), PostgreSQL's tables with their indexes."""
    with store.connect() as conn:
        if store.dialect == "postgresql":
            tables = ", ".join(f"'{t}'" for t in [*TABLES, "batches"])
            return int(conn.execute(text(
                f"SELECT sum(pg_total_relation_size(c)) FROM unnest(ARRAY[{tables}]) c"
            )).scalar() or 0)  # fmt: skip
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar() or 0
        free = conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0
        size = conn.exec_driver_sql("PRAGMA page_size").scalar() or 0
    return (int(pages) - int(free)) * int(size)


# -- the cut -------------------------------------------------------------------------------
def cut(
    store: LogStore,
    upto: int,
    archive: Path | None,
    stopping: Callable[[], bool] = lambda: False,
    seed_maker: SeedMaker | None = None,
    waiting: Callable[[], None] | None = None,
) -> CutResult:
    """Move positions up to ``upto`` (a batch's last position) to ``archive``, a segment
    at a time, and give their space back (``archive`` None: drop them, keeping the state
    ``seed_maker`` makes; see ``drop``). Raises ArchiveError if the archive cannot be
    written (the live log then keeps every row it had). ``stopping`` is asked between
    segments, and while a seed is made: a recorder stopping does not wait for a long
    backlog to be cut. One cut of a log at a time (eventlog.cutlock): CutBusyError while
    another is under way, or, given ``waiting``, that called and the other waited for."""
    if archive is None:
        if seed_maker is None:
            raise UsageError("a cut without an archive needs the state at the cut kept")
        return drop(store, upto, seed_maker, stopping, waiting)
    with cut_lock(store, waiting) as held:
        return _archive_upto(store, upto, Archive(archive.resolve()), stopping, held)


def _archive_upto(
    store: LogStore, upto: int, target: Archive, stopping: Callable[[], bool], held: CutLock
) -> CutResult:
    """``cut`` to an archive, the cut lock ``held``."""
    started = time.monotonic()
    edge = boundary(store)  # (read again: a cut waited for may have moved it)
    if edge.dropped:
        raise UsageError(
            f"the log's history up to position {edge.archived_upto} was dropped "
            "(--archive none): an archive would not hold all of it; cut with --archive none"
        )
    if (
        edge.archive is not None
        and edge.archived_upto
        and edge.archive.directory != target.directory
    ):
        raise UsageError(
            f"the log's archive is {edge.archive.directory}, not {target.directory}: a log "
            "keeps one archive"
        )
    archived = edge.archived_upto
    # Cut on only from an archive that holds what the log says it does: into another one,
    # the log would hold its history in two places, and lose track of the first.
    target.require_whole(archived)
    upto = min(upto, _before_newest_batch(store))
    result = CutResult(archived, archived)
    with _archive_errors(target, archived, upto):
        # What a cut killed while it wrote left (no other cut runs now).
        target.remove_unlisted(archived)
    # The next segment is read from the log while this one is written to the archive, and
    # WRITERS segments are written at once (a segment's writing is on one core, most of it
    # on one thread), each listed and then said by the log in position order. The archived
    # rows leave the live log after the last segment: deleted while the log is read, they
    # slow the reads (every page read is looked up in a growing write-ahead log) more than
    # the overlap gains, and at the end they may all leave at once.
    with (
        ThreadPoolExecutor(1, thread_name_prefix="scope-cut-read") as reads,
        ThreadPoolExecutor(WRITERS, thread_name_prefix="scope-cut-write") as writes,
    ):
        writing: deque[_Writing] = deque()
        try:
            reading = _read_next(reads, store, archived, upto)
            while reading is not None:
                rows = reading.result()
                reading = None if stopping() else _read_next(reads, store, rows.upto, upto)
                if len(writing) == WRITERS:
                    _list_oldest(store, target, writing, result, held)
                # A segment is merged with the archive's last only once every segment
                # before it is listed: the first of a cut, which nothing is written before.
                moved = rows.tables["events"].num_rows
                rows, merged = _merged_with_last(target, rows, result.archived_upto)
                writing.append(_Writing(rows.after, rows.upto, moved, merged,
                                        writes.submit(_write_files, target, rows)))  # fmt: skip
                del rows  # the write holds them while it needs them
            while writing:
                _list_oldest(store, target, writing, result, held)
        except BaseException:
            _discard_unlisted(target, writing)
            raise
    if result.segments:
        remove_archived(store, result.archived_upto)
        reclaim_space(store)
    result.seconds = time.monotonic() - started
    return result


def drop(
    store: LogStore,
    upto: int,
    seed_maker: SeedMaker,
    stopping: Callable[[], bool] = lambda: False,
    waiting: Callable[[], None] | None = None,
) -> CutResult:
    """Drop positions up to ``upto`` (a batch's last position) from the live log, keeping
    the state at ``upto`` (``seed_maker``'s seed) in their place: the seed and the boundary
    are written in one transaction, then the rows leave as after an archived cut (rows the
    live log still holds below the boundary are read by no one, and deleted by the next
    cut if this one is interrupted).

    Making the seed reads every position up to ``upto``: ``stopping`` is asked as it reads,
    and once it says so the cut is given up (``stopped``) with nothing written, to be made
    again by the next one. A seed is of one position, so there is no part of it to keep, as
    an archived cut keeps the segments it wrote. The cut lock is held as by ``cut``."""
    with cut_lock(store, waiting) as held:
        return _drop_upto(store, upto, seed_maker, stopping, held)


def _drop_upto(
    store: LogStore, upto: int, seed_maker: SeedMaker, stopping: Callable[[], bool], held: CutLock
) -> CutResult:
    """``drop``, the cut lock ``held``."""
    started = time.monotonic()
    edge = boundary(store)
    if edge.archive is not None and edge.archived_upto:
        raise UsageError(
            f"the log's archive is {edge.archive.directory}: its history cannot be dropped "
            "(a cut without an archive would leave the archive's positions unread)"
        )
    archived = edge.archived_upto
    upto = min(upto, _before_newest_batch(store))
    result = CutResult(archived, archived)
    if upto <= archived:
        return result
    seed = seed_maker(store, upto, stopping)
    if seed is None:
        result.stopped = True
        result.seconds = time.monotonic() - started
        return result
    held.confirm()
    _set_boundary(store, upto, None, seed.encode())
    remove_archived(store, upto)
    reclaim_space(store)
    result.archived_upto = upto
    result.events = upto - archived
    result.seconds = time.monotonic() - started
    return result


def _before_newest_batch(store: LogStore) -> int:
    """The last position before the newest batch: a cut leaves that batch in the live log,
    always. An appender counts the next positions from the highest one the events table
    holds (eventlog.sqlite, eventlog.postgres); emptied, it would count from 1 again."""
    with store.connect() as conn:
        first = conn.execute(
            text("SELECT first_position FROM batches ORDER BY last_position DESC LIMIT 1")
        ).scalar()
    return int(first or 1) - 1


@dataclass
class _SegmentRows:
    after: int
    upto: int
    tables: dict[str, pa.Table]
    batches: pa.Table


def _read_next(
    reads: ThreadPoolExecutor, store: LogStore, after: int, upto: int
) -> Future[_SegmentRows] | None:
    if after >= upto:
        return None
    end = _segment_end(store, after, upto)
    return reads.submit(_read_segment, store, after, end)


def _read_segment(store: LogStore, after: int, upto: int) -> _SegmentRows:
    tables = {name: scan_live(store, select, after, upto) for name, select in TABLES.items()}
    if tables["events"].num_rows != upto - after:
        raise LogError(
            f"positions ({after}, {upto}] hold {tables['events'].num_rows} events, not "
            f"{upto - after}: the log has a gap (see scope-replay db check); nothing was cut"
        )
    return _SegmentRows(after, upto, tables, _batch_rows(store, after, upto))


def _segment_end(store: LogStore, after: int, upto: int) -> int:
    """The last batch end within ``SEGMENT_POSITIONS`` of ``after`` (else the first one
    after ``after``: a batch is never split)."""
    limit = min(upto, after + SEGMENT_POSITIONS)
    with store.connect() as conn:
        end = conn.execute(
            text("SELECT max(last_position) FROM batches WHERE last_position > :a "
                 "AND last_position <= :l"),
            {"a": after, "l": limit},
        ).scalar()  # fmt: skip
        if end is None:
            end = conn.execute(
                text("SELECT min(last_position) FROM batches WHERE last_position > :a"),
                {"a": after},
            ).scalar()
    if end is None:
        raise LogError(f"the log has no batch after position {after} to cut at")
    return int(end)


def _merged_with_last(
    archive: Archive, rows: _SegmentRows, archived: int
) -> tuple[_SegmentRows, int]:
    """``rows`` and, before them, those of the archive's last segment if it is small (cuts
    of a short --retain are) and no larger than ``rows``: fewer, larger files. And the bytes
    of the segment merged (0 if none). Merged only into what is as large, an event is
    written again a few times at most (each time into a segment twice as large), not at
    every cut: rewriting a growing segment at every cut slowed the cuts of a busy recorder
    and its capture."""
    segments = archive.segments(archived)
    last = segments[-1] if segments else None
    if (
        last is None
        or last.upto != rows.after
        or last.events >= MERGE_BELOW
        or last.events > rows.tables["events"].num_rows
        or rows.upto - last.after > SEGMENT_POSITIONS
    ):
        return rows, 0
    tables = {
        name: pa.concat_tables([archive.read(select, last.after, last.upto, archived),
                                rows.tables[name]])
        for name, select in TABLES.items()
    }  # fmt: skip
    archived_batches = archive.batches(last.after, last.upto, archived)
    columns = [[row[i] for row in archived_batches] for i in range(len(BATCH_SCHEMA))]
    batches = pa.concat_tables([pa.table(columns, schema=BATCH_SCHEMA), rows.batches])
    return _SegmentRows(last.after, rows.upto, tables, batches), last.bytes


@dataclass(frozen=True)
class _Writing:
    """A segment being written: its positions, the events it moves out of the live log,
    the bytes of the segment it was merged with (0: none), and its files' write."""

    after: int
    upto: int
    moved: int
    merged: int
    files: Future[Segment]


def _list_oldest(
    store: LogStore,
    archive: Archive,
    writing: deque[_Writing],
    result: CutResult,
    held: CutLock,
) -> None:
    """Once its files are written: the oldest segment of ``writing`` listed in the archive,
    then the log's boundary moved to its end. Its files leave the disk only if it could not
    be listed: once listed, the log may say so (the boundary's commit may have succeeded
    whatever this side heard)."""
    oldest = writing.popleft()
    segment = oldest.files.result()
    try:
        with _archive_errors(archive, oldest.after, oldest.upto):
            archive.list_segment(segment, result.archived_upto)
    except BaseException:
        with contextlib.suppress(BaseException):
            if segment.name not in {s.name for s in archive.segments()}:
                archive.discard(segment)
        raise
    held.confirm()
    _set_boundary(store, oldest.upto, archive.directory)
    result.archived_upto = oldest.upto
    result.events += oldest.moved
    result.archive_bytes += segment.bytes - oldest.merged
    result.segments += 1


def _discard_unlisted(archive: Archive, writing: deque[_Writing]) -> None:
    """After an error: the files of segments written but not listed leave (a reader would
    not read them; the next cut would write them again)."""
    for unlisted in writing:
        with contextlib.suppress(BaseException):
            archive.discard(unlisted.files.result())


def _write_files(archive: Archive, rows: _SegmentRows) -> Segment:
    walls = (min(rows.batches.column("min_wall_ns").to_pylist()),
             max(rows.batches.column("max_wall_ns").to_pylist()))  # fmt: skip
    with _archive_errors(archive, rows.after, rows.upto):
        return archive.write_files(rows.after, rows.upto, rows.tables, rows.batches, walls)


@contextlib.contextmanager
def _archive_errors(archive: Archive, after: int, upto: int) -> Iterator[None]:
    """An OSError writing the segment of ``(after, upto]`` as one ArchiveError line."""
    try:
        yield
    except OSError as exc:
        reason = "no space left" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise ArchiveError(
            f"cannot write the archive {archive.directory}: {reason}; the live log keeps "
            f"positions {after + 1}..{upto}"
        ) from exc


def _batch_rows(store: LogStore, after: int, upto: int) -> pa.Table:
    with store.connect() as conn:
        rows = conn.execute(
            text(f"SELECT {', '.join(BATCH_SCHEMA.names)} FROM batches "
                 "WHERE last_position > :a AND last_position <= :u ORDER BY last_position"),
            {"a": after, "u": upto},
        ).all()  # fmt: skip
    return pa.table(
        [pa.array([int(row[i]) for row in rows], pa.int64()) for i in range(len(BATCH_SCHEMA))],
        schema=BATCH_SCHEMA,
    )


def _set_boundary(
    store: LogStore, upto: int, directory: Path | None, seed: str | None = None
) -> None:
    """The log says how far its archive goes (``directory`` None: the history up to
    ``upto`` is dropped, and ``seed`` is what was kept of it), in one transaction."""
    with store.connect() as conn, conn.begin():
        conn.execute(
            text("DELETE FROM log_meta WHERE key IN (:u, :d, :s)"),
            {"u": ARCHIVED_UPTO, "d": ARCHIVE_DIR, "s": SEED},
        )
        where = DROPPED if directory is None else str(directory)
        conn.execute(
            text("INSERT INTO log_meta (key, value) VALUES (:u, :uv), (:d, :dv)"),
            {"u": ARCHIVED_UPTO, "uv": str(upto), "d": ARCHIVE_DIR, "dv": where},
        )
        if seed is not None:
            conn.execute(
                text("INSERT INTO log_meta (key, value) VALUES (:s, :sv)"),
                {"s": SEED, "sv": seed},
            )


def remove_archived(store: LogStore, upto: int) -> None:
    """The rows of positions up to ``upto`` (archived) removed from the live log: the
    tables rebuilt if they keep few rows, else deleted from (see the module's docstring)."""
    with store.connect() as conn:
        # Each of its own: SQLite finds a lone min() or max() at an end of the key, and
        # scans the whole table for the two in one SELECT (1.7 s of ten million events).
        first, head = conn.execute(
            text("SELECT (SELECT min(position) FROM events), (SELECT max(position) FROM events)")
        ).one()
    if first is None or int(first) > upto:
        return
    leaving, staying = upto - int(first) + 1, int(head) - upto
    if store.dialect == "sqlite" and staying <= min(REBUILD_MAX_KEPT, leaving * REBUILD_SHARE):
        _rebuild_without(store, upto)
    else:
        _delete_archived(store, int(first) - 1, upto)


def _delete_archived(store: LogStore, low: int, upto: int) -> None:
    """The rows of positions in ``(low, upto]`` deleted, a few thousand positions per
    transaction (and every row below ``low``: none but those an interrupted cut left)."""
    low = -1 if low < 0 else low
    while True:
        high = min(upto, low + DELETE_POSITIONS) if low >= 0 else upto
        with store.connect() as conn:
            if store.dialect == "sqlite":
                _zero_only_written_pages(conn)
            with conn.begin():
                _delete_range(conn, low, high)
        if high >= upto:
            return
        low = high


def _rebuild_without(store: LogStore, upto: int) -> None:
    """SQLite: each positioned table replaced, in one transaction, by one holding only its
    rows after ``upto``, made by the table's own statements (its columns, its indexes)."""
    with store.connect() as conn:
        driver = _zero_only_written_pages(conn)
        driver.execute("BEGIN IMMEDIATE")  # the write lock first: no upgrade to wait for
        try:
            for table in TABLES:
                _rebuild_table(driver, table, upto)
            driver.execute("DELETE FROM batches WHERE last_position <= ?", (upto,))
            driver.execute("COMMIT")
        except BaseException as exc:
            if driver.in_transaction:  # (SQLite rolls back itself after some errors)
                driver.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):  # (the driver's own: not through SQLAlchemy)
                raise map_driver_error(exc, store.location) from exc
            raise


def _zero_only_written_pages(conn: Connection) -> Any:
    """The SQLite connection under ``conn``, set to zero deleted rows only in pages it writes
    anyway (see the module's docstring); outside a transaction, as a pragma must be."""
    driver: Any = conn.connection.driver_connection
    driver.execute("PRAGMA secure_delete = FAST")
    return driver


def _rebuild_table(driver: Any, table: str, upto: int) -> None:
    schema = driver.execute(
        "SELECT type, sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL "
        "ORDER BY type = 'index'",
        (table,),
    ).fetchall()
    assert schema and schema[0][0] == "table", table
    driver.execute("DROP TABLE IF EXISTS temp.scope_kept")
    driver.execute(f"CREATE TEMP TABLE scope_kept AS SELECT * FROM {table} WHERE position > ?",
                   (upto,))  # fmt: skip
    driver.execute(f"DROP TABLE {table}")
    for _, sql in schema:
        driver.execute(sql)
    driver.execute(f"INSERT INTO {table} SELECT * FROM temp.scope_kept")
    driver.execute("DROP TABLE temp.scope_kept")


def _delete_range(conn: Connection, low: int, high: int) -> None:
    bounds = {"l": low, "h": high}
    for table in TABLES:
        conn.execute(text(f"DELETE FROM {table} WHERE position > :l AND position <= :h"), bounds)
    conn.execute(text("DELETE FROM batches WHERE last_position <= :h"), {"h": high})


def reclaim_space(store: LogStore) -> None:
    """SQLite: the free pages given back to the file system, a few at a time (only in a log
    with incremental auto-vacuum; in another they are reused by new rows).

    A file that keeps only a few pages in use (a cut that left little of a large log) is
    rewritten whole instead. Incremental vacuum takes each free page at the file's end off
    the free list by searching that list, so its cost grows with the square of the free
    pages: 21-37 s for the 294,000 that a compaction of ten million events freed (a step of
    2,000 took 0.32 s with all of them free, 0.02 s with 24,000), where rewriting the 388
    pages still in use took 11 ms. The rewrite holds the write lock for as
    long as it copies, which the bound on pages in use keeps short."""
    if store.dialect != "sqlite":
        return
    with store.connect() as conn:
        if conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() != 2:
            return
    with store.connect() as conn:
        driver = conn.connection.driver_connection
        assert driver is not None
        pages = int(driver.execute("PRAGMA page_count").fetchone()[0])
        free = int(driver.execute("PRAGMA freelist_count").fetchone()[0])
        used = pages - free
        if free > used and used <= VACUUM_WHOLE_MAX_USED_PAGES:
            driver.execute("VACUUM")
            return
        while True:
            cursor = driver.cursor()
            try:
                free = int(cursor.execute("PRAGMA freelist_count").fetchone()[0])
                if free == 0:
                    return
                # Every step of the statement frees one page, and the driver's execute
                # steps once: a script is stepped to its end.
                driver.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
            finally:
                cursor.close()
            if free <= VACUUM_PAGES:
                return


# -- by policy, and in the background ---------------------------------------------------
def apply_policy(
    store: LogStore,
    policy: RetentionPolicy,
    now_wall_ns: int,
    stopping: Callable[[], bool] = lambda: False,
) -> CutResult | None:
    """The cut ``policy`` asks for now (None if none is due)."""
    archived = boundary(store).archived_upto
    upto = archived
    if policy.retain_ns is not None:
        by_age = cut_before(store, now_wall_ns - policy.retain_ns)
        # Few large segments rather than one a minute: a cut waits for a segment's worth of
        # events, or until the live log holds half as much again as it must keep.
        overdue = cut_before(store, now_wall_ns - policy.retain_ns * 3 // 2) > archived
        if by_age - archived >= policy.min_cut_positions or overdue:
            upto = max(upto, by_age)
    if policy.max_log_bytes is not None:
        upto = max(upto, cut_for_size(store, policy.max_log_bytes))
    if upto <= archived:
        return None
    return cut(store, upto, policy.archive, stopping, policy.seed_maker)


class RetentionWorker:
    """A recorder's retention, on a thread of its own with its own connections: it looks
    every ``policy.interval_s`` and cuts what the policy asks. A failure (no space for the
    archive) is said once through ``notify``, and again when it clears; the recording goes
    on, and the live log keeps everything until a cut succeeds."""

    def __init__(
        self,
        location: LogLocation,
        policy: RetentionPolicy,
        notify: Callable[[str], None],
        sqlite: SqliteOptions | None = None,
    ) -> None:
        self.location = location
        self.policy = policy
        self.notify = notify
        self.sqlite = sqlite
        self.cuts: list[CutResult] = []
        self.failing: str | None = None
        self.cleared = ""  # what is said once the failure clears
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scope-retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        store: LogStore | None = None
        try:
            while not self._stop.wait(self.policy.interval_s):
                store = store or self._opened()
                if store is not None:
                    self.run_once(store)
        finally:
            if store is not None:
                store.close()

    def _opened(self) -> LogStore | None:
        """The log, opened for the cuts; None, said once, while it cannot be (a central
        store not reachable yet): the worker tries again at its next look."""
        try:
            store = open_log(self.location, Purpose.ADMIN, self.sqlite)
        except (ScopeError, OSError) as exc:
            self._say(f"warning: retention: {exc}", "note: retention: the log is reachable")
            return None
        return store

    def run_once(self, store: LogStore) -> None:
        cleared = "warning: retention: the archive is written again"
        try:
            result = apply_policy(store, self.policy, time.time_ns(), self._stop.is_set)
        except CutBusyError as exc:  # (scope-replay compact by hand, say): cut after it
            message = f"note: retention: {exc}: cutting after it"
            cleared = "note: retention: the other cut is over"
        except (ScopeError, OSError) as exc:
            message = f"warning: retention: {exc}"
        except Exception as exc:  # a thread's failure is said, not lost with the thread
            message = f"warning: retention: {type(exc).__name__}: {exc}"
        else:
            message = ""
        if message:
            self._say(message, cleared)
            return
        if self.failing is not None:
            self.notify(self.cleared)
            self.failing = None
        if result is not None and not result.stopped:
            self.cuts.append(result)

    def _say(self, failure: str, cleared: str) -> None:
        """``failure`` said once while it lasts, and ``cleared`` once it is over."""
        if failure != self.failing:
            self.notify(failure)
        self.failing, self.cleared = failure, cleared


@contextlib.contextmanager
def retention_running(
    location: LogLocation,
    policy: RetentionPolicy | None,
    notify: Callable[[str], None],
    sqlite: SqliteOptions | None = None,
) -> Iterator[RetentionWorker | None]:
    """A RetentionWorker for the block (none without a policy)."""
    if policy is None:
        yield None
        return
    worker = RetentionWorker(location, policy, notify, sqlite)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


# -- what an operator asks: how big, how far, is it alive --------------------------------------
@dataclass(frozen=True)
class StorageStatus:
    live_file_bytes: int | None  # SQLite: the file and its write-ahead log
    live_bytes: int  # the rows' pages (SQLite) or tables (PostgreSQL)
    live_positions: tuple[int, int] | None  # first and last position the live log holds
    archive: Path | None
    archive_bytes: int
    archive_segments: int
    archived_upto: int
    archive_wall: tuple[int, int] | None  # the archived events' wall-time range
    last_commit_wall_ns: int | None  # the newest batch's last event
    policy: dict[str, Any] | None  # the newest recording's retention options
    # A cut with --archive none: the newest wall time it dropped (None: nothing dropped)
    dropped_wall_ns: int | None = None


def storage_status(store: LogStore) -> StorageStatus:
    edge = boundary(store)
    segments = edge.archive.segments(edge.archived_upto) if edge.archive else []
    with store.connect() as conn:
        low, high, newest = conn.execute(
            text(
                "SELECT min(first_position), max(last_position), max(max_wall_ns) FROM batches "
                "WHERE last_position > :a"
            ),
            {"a": edge.archived_upto},
        ).one()
        options = conn.execute(
            text("SELECT options FROM recordings ORDER BY id DESC LIMIT 1")
        ).scalar()
    if isinstance(options, str):
        options = json.loads(options)
    file_bytes = None
    if store.location.path is not None:
        path = store.location.path
        wal = path.with_name(path.name + "-wal")
        file_bytes = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    if newest is None and segments:
        newest = segments[-1].max_wall_ns
    return StorageStatus(
        live_file_bytes=file_bytes,
        live_bytes=live_bytes(store),
        live_positions=(int(low), int(high)) if low is not None else None,
        archive=edge.archive.directory if edge.archive else None,
        archive_bytes=sum(s.bytes for s in segments),
        archive_segments=len(segments),
        archived_upto=edge.archived_upto,
        archive_wall=(segments[0].min_wall_ns, max(s.max_wall_ns for s in segments))
        if segments
        else None,
        last_commit_wall_ns=int(newest) if newest is not None else None,
        policy=(options or {}).get("retention") if isinstance(options, dict) else None,
        dropped_wall_ns=edge.seed.dropped_wall_ns if edge.seed is not None else None,
    )


def wall_span(store: LogStore) -> tuple[int, int] | None:
    """The wall times of the log's first and last events, archive included; its start is
    the first recording's, if earlier (as a replay's moments count from it, and with history
    dropped, ``+10s`` is still ten seconds after the log began, not after the cut)."""
    status = storage_status(store)
    with store.connect() as conn:
        low, high = conn.execute(
            text("SELECT min(min_wall_ns), max(max_wall_ns) FROM batches WHERE last_position > :a"),
            {"a": status.archived_upto},
        ).one()
        started = conn.execute(text("SELECT min(started_wall_ns) FROM recordings")).scalar()
    if low is None and status.archive_wall is None:
        return None
    lows = [
        v for v in (low, status.archive_wall and status.archive_wall[0], started) if v is not None
    ]
    highs = [v for v in (high, status.archive_wall and status.archive_wall[1]) if v is not None]
    return (int(min(lows)), int(max(highs))) if lows else None


def compact_before(
    store: LogStore,
    before_wall_ns: int,
    archive: Path | None,
    seed_maker: SeedMaker | None = None,
    waiting: Callable[[], None] | None = None,
) -> CutResult:
    """``scope-replay compact --before T``: every batch all of whose events are before
    ``before_wall_ns`` moved to the archive (the log's own, else ``archive``, else the
    default beside a SQLite log); dropped, with the state at the cut kept, if
    ``seed_maker`` is given (``--archive none``). ``waiting``: as ``cut``'s."""
    if seed_maker is not None:
        return drop(store, cut_before(store, before_wall_ns), seed_maker, waiting=waiting)
    directory = boundary(store).archive
    target = directory.directory if directory else archive or default_archive(store.location)
    if target is None:
        raise UsageError("a PostgreSQL log needs --archive DIR (where its archive is kept)")
    if directory is not None and archive is not None and archive.absolute() != target:
        raise UsageError(f"the log's archive is {target}; --archive cannot move it")
    return cut(store, cut_before(store, before_wall_ns), target, waiting=waiting)
