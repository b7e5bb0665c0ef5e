"""The derived store: where it lives, when it is current, and bringing it up to date.

One DuckDB file per log, in the cache directory (``$SCOPE_CACHE_DIR``, else
``$XDG_CACHE_HOME/scope-recorder``, else ``~/.cache/scope-recorder``), named after where the
log is. It holds the log's content decoded and the intervals folded from it
(replay.derived.tables); every reading command (scope-replay, scope-query) answers from it.
Deleting it loses nothing: it is derived from the log alone, and the log is never written.

Before a command reads, the store is brought up to the log's committed head: only the new
events are copied and folded (replay.derived.derive), a range of positions per DuckDB
transaction (a sync killed half way leaves the store at the end of a range, and the next one
goes on from there). A reader sees a store only once it is current: its signature (the
log's head, recordings, losses and clock samples) is written last. A small file beside the
store (``<store>.synced``) repeats the signature and position after each sync: a command that
finds it stale opens the store for writing at once, reads the new events from the log
meanwhile, and reads its answers on through the same connection. A store is rebuilt from
nothing when it is of another format, when the log is another log than the one it was
derived from (another ``log_id``, or the event it had folded last is not the same any more:
a file replaced at the same path), or when the log is shorter than what it had folded.

If the file cannot be written (a read-only cache, another user's store, no space), the
command derives into memory instead and says so once (``Derived.notices``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from eventlog.errors import QueryError, UsageError
from eventlog.reader import LogReader
from eventlog.scan import THREADS as SCAN_THREADS
from eventlog.store import LogStore
from replay.derived import copy, derive
from replay.derived.tables import FORMAT, SCHEMA
from replay.derived.views import VIEWS_SQL
from replay.fold import Fold

LOCK_WAIT_S = 60.0
SEED_MEMORY = "512MB"  # DuckDB's memory for the store a seed is made from (derived_at)
ROW_GROUP_ROWS = 32_768
# The files a store has beside it: DuckDB's write-ahead log, and where it was synced to.
SIDE_FILES = (".wal", ".synced", ".synced.partial")
T = TypeVar("T")

SAFE_CONFIG: dict[str, Any] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    # Planning a moment's table (views.sql's macros, hundreds of lines once expanded) spent
    # 16 ms of its 75 ms of optimizing in this pass alone, and the plans it left ran no
    # faster: without it the table of a moment of the 10M-event benchmark log took 14-22%
    # less time, side by side.
    "disabled_optimizers": "projection_pullup",
}
# What may change in the views without the tables changing: a new version re-creates them.
VIEWS_VERSION = hashlib.sha256(VIEWS_SQL.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    configured = os.environ.get("SCOPE_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "scope-recorder"


def default_path(log: LogStore) -> Path:
    """One store per log, named after where the log is (a URL's password left out)."""
    where = str(log.location.path) if log.location.path is not None else log.location.display()
    digest = hashlib.sha256(where.encode()).hexdigest()[:20]
    return cache_dir() / f"derived-{digest}.duckdb"


@contextlib.contextmanager
def arrow_copy_allowed() -> Iterator[None]:
    """Arrow from a statement run (``con.execute``): DuckDB warns that it copies the rows
    once more. A relation (``con.sql``) would not, but binds the whole query when made and
    again when run, which costs more (77 ms against 87 for a table of 16,000 connections):
    the warning is not the user's business."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Arrow output on a DB-API result", UserWarning)
        yield


@dataclass
class SyncStats:
    events: int = 0  # events copied and folded
    seconds: float = 0.0
    rebuilt: bool = False
    set_aside: int = 0
    folded: int = 0


@dataclass
class Derived:
    """An open derived store, current as of ``head`` (the log's last committed position)."""

    con: duckdb.DuckDBPyConnection
    path: Path | None  # None: in memory
    head: int
    stats: SyncStats
    notices: list[str] = field(default_factory=list)
    writable: bool = False  # the connection that synced the store's file
    # The log's history before this wall time was dropped (--archive none, eventlog.seed):
    # a moment that would read it is refused (replay.moment). None: nothing dropped.
    dropped_wall_ns: int | None = None
    # A second connection to the store and the thread that reads through it (alongside)
    _side: duckdb.DuckDBPyConnection | None = field(default=None, init=False, repr=False)
    _side_thread: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _session_sql: list[str] = field(default_factory=list, init=False, repr=False)

    def close(self) -> None:
        self._close_side()
        self.con.close()

    def pair_across_hosts_within(self, skew_ns: int) -> None:
        """Pair the sockets of different hosts whose times are up to ``skew_ns`` apart
        (``SKEW_TOLERANCE_NS`` otherwise), for what this connection reads: a setting of the
        session, which writes nothing."""
        self._set(f"CREATE OR REPLACE TEMP MACRO skew_ns() AS {int(skew_ns)}")

    def _set(self, sql: str) -> None:
        """A setting of the session, for the side connection too (made now or later)."""
        self._session_sql.append(sql)
        self.con.execute(sql)
        if self._side is not None:
            self._side.execute(sql)

    def alongside(self, read: Callable[[duckdb.DuckDBPyConnection], T]) -> Future[T]:
        """``read`` run on a thread, through a second connection to the store (with this
        one's session settings), while this one runs a query. DuckDB plans a query on one
        core, and planning is a third of a moment's table: what else a map reads of the
        moment (its processes, containers) is read meanwhile. The caller waits for the
        answer before it closes the store."""
        side = self._side_connection()  # made here: this one is busy once the caller goes on
        if self._side_thread is None:
            self._side_thread = ThreadPoolExecutor(1, thread_name_prefix="derived-store-side")
        return self._side_thread.submit(read, side)

    def _side_connection(self) -> duckdb.DuckDBPyConnection:
        if self._side is None:
            side = self.con.cursor()
            # where this one reads (a store opened for writing is attached, then used)
            row = self.con.execute("SELECT current_database(), current_schema()").fetchone()
            assert row is not None
            side.execute(f"USE {_quoted(row[0])}.{_quoted(row[1])}")
            for sql in self._session_sql:
                side.execute(sql)
            self._side = side
        return self._side

    def _close_side(self) -> None:
        if self._side_thread is not None:
            self._side_thread.shutdown(wait=True)
            self._side_thread = None
        if self._side is not None:
            self._side.close()
            self._side = None

    @contextlib.contextmanager
    def closed_meanwhile(self) -> Iterator[None]:
        """Close the connection on a thread while the block runs: after a large result,
        DuckDB frees its buffers for a while (9 ms after a table of 16,000 connections)
        without holding the GIL, so Python work on what was read overlaps it. For the last
        read of a command; closing again after is harmless."""
        self._close_side()
        closing = threading.Thread(target=self.con.close, name="derived-store-close")
        closing.start()
        try:
            yield
        finally:
            closing.join()

    def read_only(self) -> duckdb.DuckDBPyConnection:
        """The store's connection, opened read-only if it was not (for SQL from a user)."""
        if self.writable and self.path is not None:
            self.close()
            self.con = _connect_raw(self.path, read_only=True)
            self.writable = False
            for sql in self._session_sql:
                self.con.execute(sql)
        return self.con

    def __enter__(self) -> Derived:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class LogState:
    """What a store must match to be current: read from the log in a few small queries."""

    log_id: str
    head: int
    signature: str
    head_digest: str  # the event at the head position, to recognise the same log later


def log_state(reader: LogReader) -> LogState:
    head = reader.head()
    recordings = [
        (r.id, r.host_id, r.started_wall_ns, r.last_mono_ns, r.stopped_mono_ns, r.stop_reason)
        for r in reader.recordings()
    ]
    first = recordings[0][:3] if recordings else ()
    log_id = reader.log_id() or hashlib.sha256(repr(first).encode()).hexdigest()[:32]
    losses = len(reader.losses())
    clocks = reader.clock_sample_count()
    payload = f"{FORMAT}|{VIEWS_VERSION}|{log_id}|{head}|{recordings}|{losses}|{clocks}"
    return LogState(
        log_id, head, hashlib.sha256(payload.encode()).hexdigest(), event_digest(reader, head)
    )


def event_digest(reader: LogReader, position: int) -> str:
    row = reader.event_identity(position)
    return hashlib.sha256(repr(row).encode()).hexdigest()[:32]


def open_derived(log: LogStore, path: Path | None = None) -> Derived:
    """The derived store of ``log``, brought up to its head, open for reading."""
    target = path or default_path(log)
    reader = LogReader(log)
    try:
        state = log_state(reader)
        try:
            derived = _open_file(log, reader, state, target)
        except _UnwritableError as exc:
            derived = _in_memory(log, reader, state)
            derived.notices.append(
                f"cannot keep derived state in {target} ({exc}): derived it in memory for "
                "this command only"
            )
        # From the log, not the store: a store synced before a cut holds what it dropped.
        seed = reader.boundary().seed
        derived.dropped_wall_ns = seed.dropped_wall_ns if seed is not None else None
        return derived
    finally:
        reader.close()


class SyncStoppedError(Exception):
    """A sync given up between two of its ranges, as its caller asked (a recorder stopping
    while a cut's seed is made, derived_at)."""


@contextlib.contextmanager
def derived_at(
    log: LogStore, position: int, stopping: Callable[[], bool] = lambda: False
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A store of ``log`` up to ``position`` (a batch's last), for the block: its intervals
    and fold state as a store synced then would hold them (what a cut that drops its history
    keeps, replay.derived.seed). It is made inside a recorder, in a file of its own that the
    block removes, within SEED_MEMORY (in memory, a cut of 5M events took 1.7 GB).
    ``stopping`` is asked before each range is synced: SyncStoppedError once it says so."""
    reader = LogReader(log)
    try:
        now = log_state(reader)
        state = LogState(now.log_id, position, now.signature, event_digest(reader, position))
        with _scratch() as scratch:
            con = duckdb.connect(
                str(scratch / "store.duckdb"), config={**SAFE_CONFIG, "memory_limit": SEED_MEMORY}
            )
            try:
                with _Scans(log, _clocks(reader), 0, position, _seed_upto(reader)) as scans:
                    _sync(con, reader, state, scans, stopping)
                yield con
            finally:
                con.close()
    finally:
        reader.close()


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A directory of the caller's alone, removed after: in the cache directory, else in
    the system's temporary one."""
    try:
        _ensure_directory(cache_dir())
        parent: str | None = str(cache_dir())
    except _UnwritableError:
        parent = None
    with tempfile.TemporaryDirectory(prefix="scope-seed-", dir=parent) as directory:
        yield Path(directory)


def _seed_upto(reader: LogReader) -> int:
    """Where the log's dropped history ends (0: none dropped): a sync's ranges break there,
    since what is before is not folded but taken as a seed (eventlog.seed)."""
    edge = reader.boundary()
    return edge.archived_upto if edge.dropped else 0


class _UnwritableError(Exception):
    """The store's file cannot be created or written."""


def _open_file(log: LogStore, reader: LogReader, state: LogState, target: Path) -> Derived:
    hint = _Hint.read(target) if target.exists() else None
    guess = hint.synced if hint is not None else 0
    if target.exists() and (hint is None or hint.signature == state.signature):
        con, guess = _current(target, state)
        if con is not None:
            return Derived(con, target, state.head, SyncStats())
    clocks = _clocks(reader)
    # The new events are read from the log while the store is opened for writing.
    with _Scans(log, clocks, guess, state.head, _seed_upto(reader)) as scans:
        _ensure_directory(target.parent)
        writable, stats = _synced(target, reader, state, scans)
    _Hint(state.signature, state.head).write(target)
    # Read on with the connection that synced: another open would cost as much as a seek's
    # query (other readers wait for this command, as they waited for its sync).
    return Derived(writable, target, state.head, stats, writable=True)


def _synced(
    target: Path, reader: LogReader, state: LogState, scans: _Scans
) -> tuple[duckdb.DuckDBPyConnection, SyncStats]:
    """The store at ``target`` opened for writing and synced; one of another format or of
    another log is removed first, and built afresh."""
    writable = _connect_raw(target, read_only=False)
    try:
        return writable, _sync(writable, reader, state, scans)
    except _RebuildError:
        writable.close()
    except BaseException:
        writable.close()
        raise
    remove_files(target)
    writable = _connect_raw(target, read_only=False)
    try:
        stats = _sync(writable, reader, state, scans)
    except BaseException:
        writable.close()
        raise
    stats.rebuilt = True
    return writable, stats


def refuse_replacing(path: Path | None) -> None:
    """Refuse a store path (``scope-query --store``) where a file that is not a store is: a
    store that cannot be opened is removed and built again, and that file would go."""
    if path is None or not path.exists():
        return
    try:
        with path.open("rb") as file:
            header = file.read(_DUCKDB_MAGIC_END)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    if header[_DUCKDB_MAGIC_END - len(_DUCKDB_MAGIC) :] != _DUCKDB_MAGIC:
        raise UsageError(f"{path} is not a derived store: refusing to replace it")


# A DuckDB file: its magic bytes after the first block's checksum.
_DUCKDB_MAGIC = b"DUCK"
_DUCKDB_MAGIC_END = 12


def side_files(store: Path) -> list[Path]:
    """The files a store may have beside it (``SIDE_FILES``)."""
    return [store.with_name(store.name + suffix) for suffix in SIDE_FILES]


def remove_files(store: Path) -> None:
    """The store at ``store`` and the files beside it, gone."""
    for path in (store, *side_files(store)):
        path.unlink(missing_ok=True)


class _RebuildError(Exception):
    """The store was derived from another log, or in another format."""


@dataclass(frozen=True)
class _Hint:
    """What a store was last synced to, in a small file beside it, written after the sync
    committed: a stale store is then opened for writing straight away, and the new events
    are read from the log meanwhile. Only a hint: the store's own meta decides."""

    signature: str
    synced: int

    @staticmethod
    def path(store: Path) -> Path:
        return store.with_name(store.name + ".synced")

    @classmethod
    def read(cls, store: Path) -> _Hint | None:
        try:
            signature, synced = cls.path(store).read_text().split()
            return cls(signature, int(synced))
        except (OSError, ValueError):
            return None

    def write(self, store: Path) -> None:
        target = self.path(store)
        partial = target.with_name(target.name + ".partial")
        previous_umask = os.umask(0o077)
        try:
            partial.write_text(f"{self.signature} {self.synced}\n")
            partial.replace(target)
        except OSError:
            pass  # without it, the next command looks in the store first
        finally:
            os.umask(previous_umask)


def _current(path: Path, state: LogState) -> tuple[duckdb.DuckDBPyConnection | None, int]:
    """A read-only connection to the store at ``path`` if it is current for ``state``; else
    the position it says it has synced to (where a sync will likely start)."""
    try:
        con = _connect_raw(path, read_only=True)
    except QueryError:
        return None, 0
    try:
        meta = dict(
            con.execute(
                "SELECT key, value FROM meta WHERE key IN ('signature', 'synced_position')"
            ).fetchall()
        )
    except duckdb.Error:
        meta = {}
    if meta.get("signature") == state.signature:
        return con, 0
    con.close()
    return None, int(meta.get("synced_position") or 0)


def _in_memory(log: LogStore, reader: LogReader, state: LogState) -> Derived:
    con = duckdb.connect(":memory:", config=SAFE_CONFIG)
    try:
        with _Scans(log, _clocks(reader), 0, state.head, _seed_upto(reader)) as scans:
            stats = _sync(con, reader, state, scans)
    except BaseException:
        con.close()
        raise
    return Derived(con, None, state.head, stats)


def _ensure_directory(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise _UnwritableError(exc.strerror or str(exc)) from exc
    if not os.access(directory, os.W_OK):
        raise _UnwritableError("not writable")


def _connect_raw(
    path: Path, read_only: bool, lock_wait_s: float = LOCK_WAIT_S
) -> duckdb.DuckDBPyConnection:
    """Open the store's file, waiting while another process holds its lock (a sync)."""
    deadline = time.monotonic() + lock_wait_s
    while True:
        previous_umask = os.umask(0o077)  # it holds what the log holds: owner only
        try:
            return _open(path, read_only)
        except duckdb.IOException as exc:
            message = str(exc).lower()
            if "lock" in message and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            if not read_only and ("permission" in message or "read-only" in message):
                raise _UnwritableError(_first_line(exc)) from exc
            if path.exists() and not read_only and "lock" not in message:
                # Not a store this version can open (damaged, or from another DuckDB):
                # it is only derived data.
                path.unlink()
                continue
            raise QueryError(f"cannot open the derived store {path}: {_first_line(exc)}") from exc
        except duckdb.Error as exc:
            if path.exists() and not read_only:
                path.unlink()
                continue
            raise QueryError(f"cannot open the derived store {path}: {_first_line(exc)}") from exc
        finally:
            os.umask(previous_umask)


def _open(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    if read_only or not path.exists():
        return duckdb.connect(str(path), read_only=read_only, config=SAFE_CONFIG)
    # A store is built in DuckDB's row groups (122,880 rows), which seeks read fastest (in
    # row groups of 32,768 a seek of 16,000 connections took 8 ms more). What later syncs
    # append goes in smaller ones: a range of new events is often fewer rows than a default
    # row group, and so would go to the write-ahead log and again to the file at the
    # commit's checkpoint, where in row groups of 32,768 most of it goes to the file as it
    # is made (100,000 new events on a 10,000,000-event log: 0.43 s instead of 0.51 s).
    con = duckdb.connect(":memory:", config=SAFE_CONFIG)
    try:
        quoted = str(path).replace("'", "''")
        con.execute(f"ATTACH '{quoted}' AS store (ROW_GROUP_SIZE {ROW_GROUP_ROWS})")
        con.execute("USE store")
    except BaseException:
        con.close()
        raise
    return con


def connect_read_only(path: Path, lock_wait_s: float = LOCK_WAIT_S) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the store at ``path``, whatever its state."""
    return _connect_raw(path, read_only=True, lock_wait_s=lock_wait_s)


def _quoted(name: str) -> str:
    """An SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- syncing ---------------------------------------------------------------------------------
def _clocks(reader: LogReader) -> copy.Clocks:
    return {r.id: reader.clock(r.id) for r in reader.recordings()}


def _sync(
    con: duckdb.DuckDBPyConnection,
    reader: LogReader,
    state: LogState,
    scans: _Scans,
    stopping: Callable[[], bool] = lambda: False,
) -> SyncStats:
    """Copy and derive the new events a range per transaction (a long sync interrupted
    resumes where it was); what is open at the head and the signature go with the last.
    ``stopping`` is asked before each range (SyncStoppedError).

    A log whose history was dropped (eventlog.seed) begins with its seed: the kept rows of
    positions up to the cut are copied as a range of their own, and its fold state is the
    seed's, not a fold of those rows."""
    started = time.monotonic()
    stats = SyncStats()
    seed = reader.boundary().seed
    with _store_errors():
        with _transaction(con):
            con.execute(SCHEMA)
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            if meta and _must_rebuild(meta, reader, state):
                raise _RebuildError
            identity = {
                "format": str(FORMAT), "log_id": state.log_id, "log": scans.log.location.display()
            }  # fmt: skip
            _set_meta(con, identity)
            copy.copy_dictionaries(con, reader)
        synced = int(meta.get("synced_position") or 0)
        fold = Fold(derive.load_state(con, synced), source=None)  # type: ignore[arg-type]
        finished = False
        for scanned in scans.ranges(synced):
            if stopping():
                raise SyncStoppedError
            with _transaction(con):
                chunk = copy.copy_chunk(con, scanned)
                if seed is not None and chunk.upto <= seed.upto:
                    assert chunk.after == 0 and chunk.upto == seed.upto, (chunk, seed.upto)
                    derive.restore_state(con, seed.state)
                    fold = Fold(derive.load_state(con, seed.upto), source=None)  # type: ignore[arg-type]
                    derived = derive.ChunkStats()
                else:
                    derived = derive.derive_chunk(con, reader, chunk, fold)
                derive.save_state(con, fold.state)
                _same_seed(reader, seed, chunk.upto)
                _set_meta(con, {"synced_position": str(chunk.upto),
                                "synced_digest": event_digest(reader, chunk.upto)})  # fmt: skip
                if chunk.upto == state.head:
                    _finish(con, reader, state, scans.clocks, synced, fold, meta)
                    finished = True
            stats.events += chunk.events
            stats.set_aside += derived.set_aside
            stats.folded += derived.folded
        if not finished:
            with _transaction(con):
                _finish(con, reader, state, scans.clocks, synced, fold, meta)
    stats.seconds = time.monotonic() - started
    return stats


def _finish(
    con: duckdb.DuckDBPyConnection,
    reader: LogReader,
    state: LogState,
    clocks: copy.Clocks,
    synced: int,
    fold: Fold,
    meta: dict[str, str],
) -> None:
    """The store made current at the log's head: the small tables, what is open, the
    views, and last the signature a reader checks."""
    copy.copy_small_tables(con, reader, clocks, synced, state.head)
    derive.store_open(con, reader, fold.state)
    if meta.get("views") != VIEWS_VERSION:
        con.execute(VIEWS_SQL)
    _set_meta(con, {"views": VIEWS_VERSION, "signature": state.signature})


class _Scans:
    """The log's events after a position, read a range at a time on another thread, ahead
    of their use (the read is in C and numpy, which run without the GIL).

    The first range is read from the moment the sync can guess where it will start (the
    position the store said it had synced to), beside opening the store for writing, and
    by all the scan threads; the others by one, each beside the work on the one before
    (more would only take turns with it on a machine of few cores)."""

    def __init__(
        self, log: LogStore, clocks: copy.Clocks, guess: int, upto: int, floor: int = 0
    ) -> None:
        self.log = log
        self.clocks = clocks
        self._upto = upto
        self._floor = min(floor, upto)  # a range ends there (a seed's end, _seed_upto)
        self._guess = guess
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scope-scan")
        self._first = self._submit(guess, self._bounds(guess), SCAN_THREADS)

    def __enter__(self) -> _Scans:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _bounds(self, after: int) -> list[tuple[int, int]]:
        step = copy.CHUNK_POSITIONS
        first = [(after, self._floor)] if after < self._floor else []
        after = max(after, self._floor)
        return first + [
            (low, min(low + step, self._upto)) for low in range(after, self._upto, step)
        ]

    def _submit(
        self, after: int, bounds: list[tuple[int, int]], threads: int
    ) -> Future[copy.Scanned] | None:
        if not bounds:
            return None
        return self._pool.submit(copy.scan_range, self.log, self.clocks, *bounds[0], threads)

    def ranges(self, after: int) -> Iterator[copy.Scanned]:
        """The ranges of ``(after, upto]`` in order (the guess was right, or they are read
        now: a store rebuilt, or changed by another sync since it was looked at)."""
        bounds = self._bounds(after)
        pending = self._first if after == self._guess else self._submit(after, bounds, SCAN_THREADS)
        self._first = None
        if pending is None:
            return  # nothing after ``after``
        for following in [*bounds[1:], None]:
            assert pending is not None
            scanned = pending.result()
            if following is not None:
                pending = self._pool.submit(copy.scan_range, self.log, self.clocks, *following, 1)
            yield scanned


@contextlib.contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    con.execute("BEGIN")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """DuckDB's errors while syncing, as the store's: no room is an unwritable store."""
    try:
        yield
    except duckdb.Error as exc:
        if os.environ.get("SCOPE_DEBUG"):
            raise
        message = str(exc).lower()
        if "space" in message or "disk" in message:
            raise _UnwritableError(_first_line(exc)) from exc
        raise QueryError(
            f"could not bring the derived store up to date: {_first_line(exc)}"
        ) from exc


def _same_seed(reader: LogReader, seed: Any, upto: int) -> None:
    """A cut that dropped positions this sync read as live ones (it committed while they
    were read) leaves the range as its seed holds it, not as the log was: not stored."""
    now = reader.boundary().seed
    if now is not seed and now is not None and now.upto > (seed.upto if seed else 0):
        raise QueryError(
            f"the log's history up to position {now.upto} was dropped while it was read: "
            "run the command again"
        )


def _must_rebuild(meta: dict[str, str], reader: LogReader, state: LogState) -> bool:
    """Whether ``meta`` describes a store of another format, or of another log, or one
    that stopped within history the log has since dropped (eventlog.seed): it goes on from
    the seed."""
    if meta.get("format") != str(FORMAT) or meta.get("log_id") != state.log_id:
        return True
    synced = int(meta.get("synced_position") or 0)
    if synced > state.head:
        return True  # the log is shorter than what was read of it: another log
    edge = reader.boundary()
    if edge.dropped and 0 < synced < edge.archived_upto:
        return True
    return bool(synced) and meta.get("synced_digest") != event_digest(reader, synced)


def _set_meta(con: duckdb.DuckDBPyConnection, values: dict[str, str]) -> None:
    keys = list(values)
    con.execute(f"DELETE FROM meta WHERE key IN ({', '.join('?' for _ in keys)})", keys)
    rows = ", ".join("(?, ?)" for _ in values)
    con.execute(f"INSERT INTO meta VALUES {rows}", [x for kv in values.items() for x in kv])
