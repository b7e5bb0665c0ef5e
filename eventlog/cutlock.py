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

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from eventlog.errors import CutBusyError, LogOpenError
from eventlog.store import LogStore, map_driver_error

# The advisory lock's key in a PostgreSQL log's database (a log is a database).
ADVISORY_KEY = 7943225178065653418
POLL_S = 0.2  # how often a cut that waits asks again
BUSY = "another cut of this log is under way"


def lock_path(store: LogStore) -> Path:
    """The file a SQLite log's cuts lock."""
    assert store.location.path is not None
    return Path(f"{store.location.path}-cut.lock")


@contextlib.contextmanager
def cut_lock(store: LogStore, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """The log's cut lock, held for the block. When another cut holds it: CutBusyError, or,
    given ``waiting``, that called once and the lock waited for."""
    lock = _FileLock(lock_path(store)) if store.location.is_sqlite else _AdvisoryLock(store)
    with contextlib.closing(lock):
        if not lock.try_acquire():
            if waiting is None:
                raise CutBusyError(f"{store.location.display()}: {BUSY}")
            waiting()
            while not lock.try_acquire():
                time.sleep(POLL_S)
        yield


class _FileLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise LogOpenError(
                f"cannot open {path} to lock the log for a cut: {exc.strerror}"
            ) from exc

    def try_acquire(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        os.close(self.fd)  # (the lock goes with its last descriptor)


class _AdvisoryLock:
    def __init__(self, store: LogStore) -> None:
        self.store = store
        self.conn: Connection | None = None
        self.held = False
        try:
            self.conn = store.engine.connect()
        except SQLAlchemyError as exc:
            raise map_driver_error(exc, store.location) from exc

    def try_acquire(self) -> bool:
        self.held = bool(self._scalar("SELECT pg_try_advisory_lock(:key)"))
        return self.held

    def close(self) -> None:
        if self.conn is None:
            return
        try:
            if self.held:
                self._scalar("SELECT pg_advisory_unlock(:key)")
        finally:
            # A connection lost takes its lock with it: the server lets it go.
            with contextlib.suppress(SQLAlchemyError):
                self.conn.close()

    def _scalar(self, sql: str) -> object:
        assert self.conn is not None
        try:
            value = self.conn.execute(text(sql), {"key": ADVISORY_KEY}).scalar()
            self.conn.commit()  # (a session lock outlives the transaction)
        except SQLAlchemyError as exc:
            raise map_driver_error(exc, self.store.location) from exc
        return value
