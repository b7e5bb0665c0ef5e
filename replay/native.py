"""The fold's hot loops in C (``replay/_fold.c``), when this install built it.

The build is optional (``pyproject.toml``), as for the recorder's C path: without it the fold
runs in Python, the same states only slower. ``tests/unit/replay/test_fold_native.py`` checks
that both fold to the same state, and fails under CI when the module is missing.
"""

from __future__ import annotations

import sqlite3
from functools import cache

from recorder.log.store import LogStore
from recorder.native import shares_sqlite

try:
    from replay._fold import KINDS, RunReader, reconcile_sockets, soft_heap_limit

    AVAILABLE = True
except ImportError:
    AVAILABLE = False


@cache
def reads_sqlite() -> bool:
    """Whether the module was built and shares Python's SQLite library, so that its own
    read connection can be opened on a log that Python's driver has open too."""
    return AVAILABLE and shares_sqlite(soft_heap_limit)


def open_run_reader(store: LogStore) -> RunReader | None:
    """A C run reader on ``store``: None for PostgreSQL, where the module cannot be used, or
    where its read-only connection cannot open the file (say, a log in WAL mode on read-only
    media without its -shm file): the Python fold then reads through the store, and reports
    whatever is really wrong with the log."""
    if store.dialect != "sqlite" or store.location.path is None or not reads_sqlite():
        return None
    try:
        return RunReader(str(store.location.path), store.sqlite.busy_timeout_ms)
    except sqlite3.Error:
        return None


__all__ = [
    "AVAILABLE",
    "KINDS",
    "RunReader",
    "open_run_reader",
    "reads_sqlite",
    "reconcile_sockets",
]
