"""One cut of a log at a time.

A cut (eventlog.retention) reads the log's boundary, writes segments or a seed, moves the
boundary and deletes what it moved. Two cuts at once (a recorder's retention and a
``scope-replay compact`` by hand, or the recorders of two hosts sharing a PostgreSQL log)
would each replace the archive's manifest without the other's segments, and move the
boundary back over rows the other had removed: rows gone from the live log and listed in no
archive. So a cut holds the log's cut lock from before it reads the boundary until its rows
have left the live log:

- a SQLite log: an exclusive ``flock`` on a file beside it (``<log>-cut.lock``). Not on the
  log's own file: a process that closes any descriptor of a SQLite file drops every lock
  SQLite holds on it;
- a PostgreSQL log: a session advisory lock, on a connection of the cut's own.

The kernel or the server lets either go when its holder dies: a crash leaves no lock behind.
Readers and appenders never take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from eventlog.errors import CutBusyError, LogOpenError
from eventlog.store import LogStore, map_driver_error

# The advisory lock's key in a PostgreSQL log's database (a log is a database).
ADVISORY_KEY = 7943225178065653418
POLL_S = 0.2  # how often a cut that waits asks again
IDLE_TIMEOUT_SINCE = 140000  # PostgreSQL 14 (server_version_num) has idle_session_timeout
BUSY = "another cut of this log is under way"


def _log_file(store: LogStore) -> Path:
    """A SQLite log's file itself, whatever name (a symbolic link) it was opened by."""
    assert store.location.path is not None, "a SQLite log has a file"
    return Path(os.path.realpath(store.location.path))


def lock_path(store: LogStore) -> Path:
    """The file a SQLite log's cuts lock: beside the log's file itself."""
    return Path(f"{_log_file(store)}-cut.lock")


class CutLock(Protocol):
    def try_acquire(self) -> bool: ...

    def confirm(self) -> None:
        """Raise LogError unless the lock is still held (asked before the boundary moves)."""

    def close(self) -> None: ...


@contextlib.contextmanager
def cut_lock(store: LogStore, waiting: Callable[[], None] | None = None) -> Iterator[CutLock]:
    """The log's cut lock, held for the block. When another cut holds it: CutBusyError, or,
    given ``waiting``, that called once and the lock waited for."""
    lock: CutLock = _FileLock(store) if store.location.is_sqlite else _AdvisoryLock(store)
    with contextlib.closing(lock):
        if not lock.try_acquire():
            if waiting is None:
                raise CutBusyError(f"{store.location.display()}: {BUSY}")
            waiting()
            while not lock.try_acquire():
                time.sleep(POLL_S)
        yield lock


class _FileLock:
    def __init__(self, store: LogStore) -> None:
        self.path = path = lock_path(store)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            self.fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise LogOpenError(
                f"cannot open {path} to lock the log for a cut: {exc.strerror}"
            ) from exc
        # Another user's file there (a world-writable directory) could be held forever by
        # them: no cut would ever run.
        if os.fstat(self.fd).st_uid != os.stat(_log_file(store)).st_uid:
            os.close(self.fd)
            raise LogOpenError(f"{path} belongs to another user than the log: remove it")

    def try_acquire(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise LogOpenError(f"cannot lock {self.path}: {exc.strerror}") from exc
        return True

    def confirm(self) -> None:
        pass  # (a flock is held until its descriptor closes)

    def close(self) -> None:
        os.close(self.fd)  # (the lock goes with its last descriptor)


class _AdvisoryLock:
    """A session advisory lock on a connection of its own, never returned to the pool with
    the lock: closing it ends its session, which lets the lock go whatever state the
    connection is in."""

    def __init__(self, store: LogStore) -> None:
        self.store = store
        try:
            self.conn = store.engine.connect()
        except SQLAlchemyError as exc:
            raise map_driver_error(exc, store.location) from exc
        try:
            # A session idle for the whole cut must not be ended by the server's idle timeout.
            if int(str(self._scalar("SHOW server_version_num"))) >= IDLE_TIMEOUT_SINCE:
                self._scalar("SET idle_session_timeout = 0")
        except BaseException:
            self.close()
            raise

    def try_acquire(self) -> bool:
        return bool(self._scalar("SELECT pg_try_advisory_lock(:key)"))

    def confirm(self) -> None:
        held = self._scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND pid = pg_backend_pid() AND objsubid = 1 "
            "AND CAST(classid AS bigint) = CAST(:key AS bigint) >> 32 "
            "AND CAST(objid AS bigint) = CAST(:key AS bigint) & 4294967295"
        )
        if not held:
            raise LogOpenError(f"{self.store.location.display()}: the cut's lock was lost")

    def close(self) -> None:
        with contextlib.suppress(SQLAlchemyError):
            self.conn.invalidate()  # the session ends, and its lock with it
            self.conn.close()

    def _scalar(self, sql: str) -> object:
        """The value ``sql`` gives (None for a statement that gives no rows)."""
        try:
            result = self.conn.execute(text(sql), {"key": ADVISORY_KEY})
            value = result.scalar() if result.returns_rows else None
            self.conn.commit()  # (a session lock, or setting, outlives the transaction)
        except SQLAlchemyError as exc:
            raise map_driver_error(exc, self.store.location) from exc
        return value
