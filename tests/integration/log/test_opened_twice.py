"""A SQLite log opened again in a process that has it open (a recorder's retention thread
beside its appender, a server's requests): the second opening must not drop the locks the
first one's connections hold, or another process that closes the log takes its write-ahead
log for abandoned, deletes it, and what the first goes on committing is lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import Connection, text

from eventlog import store
from eventlog.location import LogLocation
from eventlog.store import Purpose, open_log

_ELSEWHERE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
print(conn.execute("SELECT count(*) FROM log_meta WHERE key LIKE 'test-%'").fetchone()[0])
conn.close()
"""


def rows_seen_elsewhere(path: Path) -> int:
    """The test rows another process sees, opening the log and closing it (the last of its
    connections closed: SQLite then checkpoints and deletes the write-ahead log if it finds
    no other process holding the file)."""
    found = subprocess.run(
        [sys.executable, "-c", _ELSEWHERE, str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(found.stdout)


def add_row(conn: Connection, key: str) -> None:
    conn.execute(text("INSERT INTO log_meta (key, value) VALUES (:k, 'x')"), {"k": key})
    conn.commit()


def test_opening_a_log_again_keeps_the_locks_of_the_first(sqlite_location: LogLocation) -> None:
    path = sqlite_location.path
    assert path is not None
    wal = path.with_name(path.name + "-wal")
    # A connection held open, as the appender holds its own (eventlog.sqlite)
    with open_log(sqlite_location, Purpose.RECORD) as appender, appender.connect() as conn:
        add_row(conn, "test-1")
        assert wal.exists()
        for purpose in (Purpose.READ, Purpose.ADMIN, Purpose.RECORD):
            with open_log(sqlite_location, purpose):
                pass
        assert rows_seen_elsewhere(path) == 1
        assert wal.exists(), "another process deleted the write-ahead log in use"
        add_row(conn, "test-2")
        assert rows_seen_elsewhere(path) == 2
    assert rows_seen_elsewhere(path) == 2
    # every store let the file go: a later opening checks it again
    stat = path.stat()
    assert (stat.st_dev, stat.st_ino) not in store._OPEN_FILES
