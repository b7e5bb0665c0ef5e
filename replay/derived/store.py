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
log's head, recordings, losses and clock samples) is written last. It is rebuilt from
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
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from eventlog.errors import QueryError
from eventlog.reader import LogReader
from eventlog.store import LogStore
from replay.derived import copy, derive
from replay.derived.tables import FORMAT, SCHEMA, TABLES, TYPES
from replay.derived.views import VIEWS_SQL
from replay.fold import Fold

LOCK_WAIT_S = 60.0
SAFE_CONFIG: dict[str, Any] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
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

    def close(self) -> None:
        self.con.close()

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
            return _open_file(log, reader, state, target)
        except _UnwritableError as exc:
            derived = _in_memory(log, reader, state)
            derived.notices.append(
                f"cannot keep derived state in {target} ({exc}): derived it in memory for "
                "this command only"
            )
            return derived
    finally:
        reader.close()


class _UnwritableError(Exception):
    """The store's file cannot be created or written."""


def _open_file(log: LogStore, reader: LogReader, state: LogState, target: Path) -> Derived:
    if target.exists():
        con = _current(target, state)
        if con is not None:
            return Derived(con, target, state.head, SyncStats())
    _ensure_directory(target.parent)
    with _connect(target, read_only=False) as writable:
        stats = _sync(writable, log, reader, state)
    return Derived(_connect_raw(target, read_only=True), target, state.head, stats)


def _current(path: Path, state: LogState) -> duckdb.DuckDBPyConnection | None:
    """A read-only connection to the store at ``path`` if it is current for ``state``."""
    try:
        con = _connect_raw(path, read_only=True)
    except QueryError:
        return None
    try:
        rows = con.execute("SELECT value FROM meta WHERE key = 'signature'").fetchall()
    except duckdb.Error:
        rows = []
    if rows and rows[0][0] == state.signature:
        return con
    con.close()
    return None


def _in_memory(log: LogStore, reader: LogReader, state: LogState) -> Derived:
    con = duckdb.connect(":memory:", config=SAFE_CONFIG)
    try:
        stats = _sync(con, log, reader, state)
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


@contextlib.contextmanager
def _connect(path: Path, read_only: bool) -> Iterator[duckdb.DuckDBPyConnection]:
    con = _connect_raw(path, read_only)
    try:
        yield con
    finally:
        con.close()


def _connect_raw(
    path: Path, read_only: bool, config: dict[str, Any] | None = None
) -> duckdb.DuckDBPyConnection:
    """Open the store's file, waiting while another process holds its lock (a sync)."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        previous_umask = os.umask(0o077)  # it holds what the log holds: owner only
        try:
            return duckdb.connect(
                str(path), read_only=read_only, config={**SAFE_CONFIG, **(config or {})}
            )
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


def connect_for_queries(path: Path, config: dict[str, Any]) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a current store with ``config`` (scope-query's sandbox)."""
    return _connect_raw(path, read_only=True, config=config)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- syncing ---------------------------------------------------------------------------------
def _sync(
    con: duckdb.DuckDBPyConnection, log: LogStore, reader: LogReader, state: LogState
) -> SyncStats:
    """Copy and derive the new events a range per transaction (a long sync interrupted
    resumes where it was), then store what is open at the head."""
    started = time.monotonic()
    stats = SyncStats()
    with _store_errors():
        con.execute(SCHEMA)
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        if meta and _must_rebuild(meta, reader, state):
            _reset(con)
            meta, stats.rebuilt = {}, True
        identity = {"format": str(FORMAT), "log_id": state.log_id, "log": log.location.display()}
        _set_meta(con, identity)
        synced = int(meta.get("synced_position") or 0)
        clocks = {r.id: reader.clock(r.id) for r in reader.recordings()}
        with _ranges(log, clocks, synced, state.head) as ranges:
            with _transaction(con):
                copy.copy_dictionaries(con, reader)
            fold = Fold(derive.load_state(con, synced), source=None)  # type: ignore[arg-type]
            for scanned in ranges:
                with _transaction(con):
                    chunk = copy.copy_chunk(con, scanned)
                    derived = derive.derive_chunk(con, reader, chunk, fold)
                    derive.save_state(con, fold.state)
                    _set_meta(con, {"synced_position": str(chunk.upto),
                                    "synced_digest": event_digest(reader, chunk.upto)})  # fmt: skip
                stats.events += chunk.events
                stats.set_aside += derived.set_aside
                stats.folded += derived.folded
        with _transaction(con):
            copy.copy_small_tables(con, reader, clocks, synced, state.head)
            derive.store_open(con, reader, fold.state)
            if meta.get("views") != VIEWS_VERSION:
                con.execute(VIEWS_SQL)
            _set_meta(con, {"views": VIEWS_VERSION, "signature": state.signature})
    stats.seconds = time.monotonic() - started
    return stats


@contextlib.contextmanager
def _ranges(
    log: LogStore, clocks: copy.Clocks, after: int, upto: int
) -> Iterator[Iterator[copy.Scanned]]:
    """The ranges of ``(after, upto]`` read from the log, each read while the one before it
    is copied and folded (the read is in C and numpy, which run without the GIL). The first
    read starts on entry, beside what the sync does before it needs events, and is done by
    all the scan threads; the others by one, beside the work on the one before (more would
    only take turns with it on a machine of few cores)."""
    bounds = [
        (low, min(low + copy.CHUNK_POSITIONS, upto))
        for low in range(after, upto, copy.CHUNK_POSITIONS)
    ]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scope-scan") as pool:
        first = pool.submit(copy.scan_range, log, clocks, *bounds[0]) if bounds else None

        def read() -> Iterator[copy.Scanned]:
            pending = first
            for following in [*bounds[1:], None]:
                assert pending is not None
                scanned = pending.result()
                if following is not None:
                    pending = pool.submit(copy.scan_range, log, clocks, *following, 1)
                yield scanned

        yield read() if bounds else iter(())


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


def _must_rebuild(meta: dict[str, str], reader: LogReader, state: LogState) -> bool:
    """Whether ``meta`` describes a store of another format, or of another log."""
    if meta.get("format") != str(FORMAT) or meta.get("log_id") != state.log_id:
        return True
    synced = int(meta.get("synced_position") or 0)
    if synced > state.head:
        return True  # the log is shorter than what was read of it: another log
    return bool(synced) and meta.get("synced_digest") != event_digest(reader, synced)


def _reset(con: duckdb.DuckDBPyConnection) -> None:
    for name in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal AND database_name = current_database()"
    ).fetchall():
        con.execute(f"DROP VIEW IF EXISTS {name[0]}")
    for macro in con.execute(
        "SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type LIKE '%macro' "
        "AND NOT internal AND database_name = current_database()"
    ).fetchall():
        with contextlib.suppress(duckdb.Error):
            con.execute(f"DROP MACRO TABLE IF EXISTS {macro[0]}")
        with contextlib.suppress(duckdb.Error):
            con.execute(f"DROP MACRO IF EXISTS {macro[0]}")
    for table in TABLES:
        con.execute(f"DROP TABLE IF EXISTS {table}")
    for type_name in TYPES:
        con.execute(f"DROP TYPE IF EXISTS {type_name}")
    con.execute(SCHEMA)


def _set_meta(con: duckdb.DuckDBPyConnection, values: dict[str, str]) -> None:
    for key, value in values.items():
        con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])
