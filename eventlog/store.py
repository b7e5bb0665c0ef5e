"""Opening a log: location checks, engine set-up per backend, schema version checks.

A log is opened for one of three purposes, which decide what happens to its schema:

- ``Purpose.RECORD``: created if missing (mode 0600), pending migrations applied;
- ``Purpose.READ``: must exist and be at the current schema;
- ``Purpose.ADMIN``: ``db current`` / ``db upgrade`` look at any schema state themselves.

Every driver error met while opening becomes a ``LogError`` with one clear line.
"""

from __future__ import annotations

import enum
import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event, func, inspect, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool, QueuePool

from eventlog import migrate, schema
from eventlog.errors import (
    LogError,
    LogLocationError,
    LogOpenError,
    LogWriteError,
    SchemaMissingError,
    SchemaTooNewError,
)
from eventlog.location import LogLocation
from eventlog.options import SQLITE_SYNC_LEVELS, SqliteOptions

SQLITE_MAGIC = b"SQLite format 3\x00"
POSTGRES_CONNECT_TIMEOUT_S = 5
LOG_FORMAT = "scope-recorder-log"


class Purpose(enum.Enum):
    RECORD = "record"
    READ = "read"
    ADMIN = "admin"


@dataclass
class LogStore:
    """An open log: where it is and an engine to reach it."""

    location: LogLocation
    engine: Engine
    sqlite: SqliteOptions = field(default_factory=SqliteOptions)
    file: tuple[int, int] | None = None  # a SQLite log's file, as _OPEN_FILES counts it

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        """Close the store's connections (only once none of them is in use: a connection
        still checked out outlives the engine, and the file's count)."""
        try:
            self.engine.dispose()
        finally:
            with _OPEN_FILES_LOCK:  # (closed by two threads at once: let go once)
                file, self.file = self.file, None
            if file is not None:
                _let_go(file)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection whose driver errors surface as ``LogError``."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise map_driver_error(exc, self.location) from exc

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_log(
    location: LogLocation,
    purpose: Purpose,
    sqlite: SqliteOptions | None = None,
) -> LogStore:
    """Open the log at ``location`` for ``purpose``; see the module docstring."""
    sqlite = sqlite or SqliteOptions()
    file = None
    if location.is_sqlite:
        file = _checked_and_held(location, purpose, sqlite)
        try:
            engine = _sqlite_engine(location, sqlite, read_only=purpose is Purpose.READ)
        except BaseException:
            _let_go(file)
            raise
    else:
        engine = _postgres_engine(location)
    store = LogStore(location, engine, sqlite, file)
    try:
        if purpose is not Purpose.ADMIN:
            ensure_schema(store, migrate_if_needed=purpose is Purpose.RECORD)
        else:
            with store.connect():
                pass
    except BaseException:
        store.close()
        raise
    return store


class SchemaState(enum.Enum):
    EMPTY = "empty"  # no tables at all: a new log
    CURRENT = "current"
    BEHIND = "behind"  # an older scope-recorder wrote it; migrations pending
    NEWER = "newer"  # a newer scope-recorder wrote it
    FOREIGN = "foreign"  # a database that is not a scope-recorder log
    DAMAGED = "damaged"  # says it is a current log, but tables are missing


def schema_state(conn: Connection) -> tuple[SchemaState, str | None]:
    """Classify the schema of the database behind ``conn`` and give its revision."""
    tables = set(inspect(conn).get_table_names())
    if not tables:
        return SchemaState.EMPTY, None
    if "alembic_version" not in tables or "log_meta" not in tables:
        return SchemaState.FOREIGN, None
    revision = migrate.current_revision(conn)
    if revision is None:
        return SchemaState.FOREIGN, None
    if revision not in migrate.known_revisions():
        return SchemaState.NEWER, revision
    if revision != migrate.head_revision():
        return SchemaState.BEHIND, revision
    fmt = conn.exec_driver_sql("SELECT value FROM log_meta WHERE key = 'format'").scalar()
    if fmt != LOG_FORMAT:
        return SchemaState.FOREIGN, revision
    if set(schema.metadata.tables) - tables:
        return SchemaState.DAMAGED, revision
    return SchemaState.CURRENT, revision


def ensure_schema(store: LogStore, migrate_if_needed: bool) -> None:
    where = store.location.display()
    with store.connect() as conn:
        state, revision = schema_state(conn)
        conn.rollback()
        if state is SchemaState.CURRENT:
            return
        if state is SchemaState.FOREIGN:
            raise LogOpenError(f"{where} is a database but not a scope-recorder log")
        if state is SchemaState.DAMAGED:
            missing = sorted(set(schema.metadata.tables) - set(inspect(conn).get_table_names()))
            raise LogOpenError(
                f"{where} is a damaged scope-recorder log: missing tables {', '.join(missing)}"
            )
        if state is SchemaState.NEWER:
            raise SchemaTooNewError(
                f"{where} was written by a newer scope-recorder (schema {revision}; "
                f"this version knows up to {migrate.head_revision()}): upgrade scope-recorder"
            )
        if not migrate_if_needed:
            if state is SchemaState.EMPTY:
                raise SchemaMissingError(f"{where} holds no log yet: record into it first")
            raise SchemaMissingError(
                f"{where} has an older schema ({revision}): run `scope-replay db upgrade --db ...`"
            )
        try:
            if store.dialect == "postgresql" and _upgraded_meanwhile(conn):
                return
            migrate.upgrade(conn)
            conn.commit()
        except SQLAlchemyError as exc:
            raise map_driver_error(exc, store.location) from exc


# Recorders of many hosts may start on one central store at once: one upgrades its schema
# while the others wait, then find it current.
MIGRATION_LOCK_KEY = 0x73636F6D  # "scom"; the appenders hold "scop" (eventlog.postgres)


def _upgraded_meanwhile(conn: Connection) -> bool:
    """Take the store's migration lock (until this transaction ends); whether another
    recorder made the schema current while this one waited for it."""
    conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
    state, _revision = schema_state(conn)
    if state is SchemaState.CURRENT:
        conn.commit()
        return True
    return False


def map_driver_error(exc: BaseException, location: LogLocation) -> LogError:
    """One clear line for a driver error met at ``location``."""
    where = location.display()
    original = exc.orig if isinstance(exc, DBAPIError) else exc
    message = _first_line(str(original))
    lowered = message.lower()
    if "file is not a database" in lowered or "malformed" in lowered:
        return LogOpenError(f"{where} is not a valid SQLite log (corrupt or not a database)")
    if "disk is full" in lowered or "no space left" in lowered:
        return LogWriteError(f"{where}: disk full: {message}")
    if location.is_postgres and isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return LogOpenError(f"lost the connection to {where}: {message}")
    if location.is_postgres and ("connect" in lowered or "connection" in lowered):
        return LogOpenError(f"cannot reach {where}: {message}")
    return LogOpenError(f"{where}: {message}")


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return text.strip() or "unknown database error"


# The SQLite logs this process has open, by file (device, inode): how many stores. A process
# that closes any descriptor of a SQLite file drops every lock SQLite holds on that file
# (POSIX advisory locks belong to the process), and another process closing its last
# connection may then take the write-ahead log for abandoned, checkpoint it and delete it,
# while this one goes on committing into the deleted file. So the file itself is opened and
# read here (to check it) only while no store of this process has it open.
_OPEN_FILES: Counter[tuple[int, int]] = Counter()
_OPEN_FILES_LOCK = threading.Lock()


def _checked_and_held(
    location: LogLocation, purpose: Purpose, sqlite: SqliteOptions
) -> tuple[int, int]:
    """Check a SQLite log's file for ``purpose``, unless a store of this process has it open
    (then it was checked as that one opened it), and count one more store of it."""
    path = location.path
    assert path is not None
    if purpose is Purpose.RECORD and not sqlite.force:
        _check_safe_to_record(location)  # before the file is created, not after (stat only)
    with _OPEN_FILES_LOCK:  # (no store of this file connects while one is checked)
        held = _identity(path)
        if held is None or not _OPEN_FILES[held]:
            _check_sqlite_file(location, purpose)
            held = _identity(path)
            if held is None:
                raise LogOpenError(f"no log at {path}")
        _OPEN_FILES[held] += 1
    return held


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LogOpenError(f"cannot read {path}: {exc.strerror}") from exc
    return stat.st_dev, stat.st_ino


def _let_go(file: tuple[int, int]) -> None:
    with _OPEN_FILES_LOCK:
        _OPEN_FILES[file] -= 1
        if not _OPEN_FILES[file]:
            del _OPEN_FILES[file]


def _check_sqlite_file(location: LogLocation, purpose: Purpose) -> None:
    create = purpose is Purpose.RECORD
    path = location.path
    assert path is not None
    if not path.parent.is_dir():
        raise LogLocationError(f"directory {path.parent} does not exist")
    if not path.exists():
        if not create:
            raise LogOpenError(f"no log at {path}")
        _create_private_file(path)
        return
    try:
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise LogOpenError(f"cannot read {path}: {exc.strerror}") from exc
    if not header:
        if purpose is Purpose.READ:
            raise SchemaMissingError(f"{path} is empty: record into it first")
        return
    if header != SQLITE_MAGIC:
        raise LogOpenError(f"{path} is not a SQLite database")
    _check_not_truncated(path)
    if create and not os.access(path, os.W_OK):
        raise LogLocationError(f"{path} is not writable")


def _check_safe_to_record(location: LogLocation) -> None:
    """The log holds command lines and peers: do not write where others could swap or read it."""
    path = location.path
    assert path is not None
    if not path.parent.is_dir():
        return  # reported by the file checks
    directory = path.parent.stat()
    if directory.st_mode & 0o002 and not directory.st_mode & 0o1000:
        raise LogLocationError(
            f"{path.parent} is writable by everyone (and not sticky): another user could replace "
            "the log; use another directory, or --force"
        )
    owner = path.stat().st_uid if path.is_file() else os.geteuid()
    if owner != os.geteuid():
        raise LogLocationError(
            f"{path} belongs to uid {owner}, not to this user ({os.geteuid()}): "
            "refusing to append to it (--force to do it anyway)"
        )


def _check_not_truncated(path: Path) -> None:
    """Refuse a file shorter than its header says: it was cut (a partial copy, say).

    Not while a write-ahead log sits next to it: a checkpoint that ran out of disk writes
    page 1 before the pages that extend the file, and those pages are still in the WAL,
    which SQLite reads first. That log is whole.
    """
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return
    with path.open("rb") as handle:
        header = handle.read(100)
    if len(header) < 100:
        raise LogOpenError(f"{path} is a truncated SQLite file")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    change_counter = header[24:28]
    page_count = int.from_bytes(header[28:32], "big")
    valid_for = header[92:96]
    if page_count and change_counter == valid_for and path.stat().st_size < page_count * page_size:
        raise LogOpenError(
            f"{path} is truncated: {path.stat().st_size} bytes, its header says "
            f"{page_count * page_size}"
        )


def _create_private_file(path: os.PathLike[str]) -> None:
    """Create the log file readable by its owner only: it holds command lines and peers."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise LogLocationError(f"cannot create {path}: {exc.strerror}") from exc
    os.close(fd)


def _sqlite_engine(location: LogLocation, options: SqliteOptions, read_only: bool) -> Engine:
    """A reader's connections are read-only (SQLite's ``mode=ro``: they never write the
    file, not even to checkpoint a write-ahead log a stopped recorder left) and kept between
    uses (each new one parses the schema again). Otherwise each use opens and closes its own,
    so nothing stays open between a recorder's steps."""
    synchronous = options.synchronous.upper()
    if synchronous not in SQLITE_SYNC_LEVELS:
        raise LogLocationError(
            f"unknown SQLite synchronous level {options.synchronous!r} "
            f"(one of {', '.join(SQLITE_SYNC_LEVELS)})"
        )
    url = location.url
    if read_only:
        assert location.path is not None
        url = url.set(database=f"file:{quote(str(location.path))}?mode=ro", query={"uri": "true"})
    engine = create_engine(
        url,
        poolclass=QueuePool if read_only else NullPool,
        connect_args={"timeout": options.busy_timeout_ms / 1000, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Transactions are ours to begin (SQLAlchemy's recipe for pysqlite), so that DDL is
        # transactional and the writer can take the write lock up front.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(options.busy_timeout_ms)}")
        if not read_only:
            if cursor.execute("PRAGMA page_count").fetchone()[0] == 0:
                # A new log: retention can then give deleted rows' pages back to the file
                # system (eventlog.retention); only settable before the first table.
                cursor.execute("PRAGMA auto_vacuum = INCREMENTAL")
            if _journal_mode(cursor) != "wal" and os.access(str(location.path), os.W_OK):
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


def _journal_mode(cursor: Any) -> str:
    row = cursor.execute("PRAGMA journal_mode").fetchone()
    return str(row[0]).lower() if row else ""


def _postgres_engine(location: LogLocation) -> Engine:
    return create_engine(
        location.url,
        pool_pre_ping=True,
        pool_size=2,
        connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S},
    )
