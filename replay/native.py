"""Replay's hot loops in C, when this install built them: the fold's (``replay/_fold.c``)
and the connection table's pairing (``replay/_table.c``).

The builds are optional (``pyproject.toml``), as for the recorder's C path: without them
replay runs in Python, the same answers only slower. ``tests/unit/replay/test_fold_native.py``
and ``test_table_native.py`` check that both give the same, and fail under CI when a module
is missing.
"""

from __future__ import annotations

import sqlite3
from functools import cache

from eventlog.native import shares_sqlite
from eventlog.store import LogStore

try:
    from replay._fold import KINDS, RunReader, reconcile_sockets, soft_heap_limit

    AVAILABLE = True
except ImportError:
    AVAILABLE = False

try:
    from replay._table import pair_rows, sorted_rows

    PAIRS_AVAILABLE = True
except ImportError:
    PAIRS_AVAILABLE = False


def fits_int64(*values: int | None) -> bool:
    """Whether the C loops can take ``values`` as 64-bit integers (None is no bound): a window
    a user asks for can reach past what they hold."""
    return all(-(1 << 63) <= value < (1 << 63) for value in values if value is not None)


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
    "PAIRS_AVAILABLE",
    "RunReader",
    "fits_int64",
    "open_run_reader",
    "pair_rows",
    "reads_sqlite",
    "reconcile_sockets",
    "sorted_rows",
]
