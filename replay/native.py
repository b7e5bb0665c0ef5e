"""The fold's hot loops in C (``replay/_fold.c``), when this install built it.

The build is optional (``pyproject.toml``), as for the recorder's C path: without it the fold
runs in Python, the same states only slower. ``tests/unit/replay/test_fold_native.py`` checks
that both fold to the same state, and fails under CI when the module is missing.
"""

from __future__ import annotations

import sqlite3
from functools import cache

from recorder.log.store import LogStore, map_driver_error
from recorder.native import shares_sqlite

try:
    from replay._fold import KINDS, RunReader, reconcile_sockets, soft_heap_limit, uncached

    AVAILABLE = True
except ImportError:
    AVAILABLE = False


@cache
def reads_sqlite() -> bool:
    """Whether the module was built and shares Python's SQLite library, so that its own
    read connection can be opened on a log that Python's driver has open too."""
    return AVAILABLE and shares_sqlite(soft_heap_limit)


def open_run_reader(store: LogStore) -> RunReader | None:
    """A C run reader on ``store``: None for PostgreSQL, or where the module cannot be used."""
    if store.dialect != "sqlite" or store.location.path is None or not reads_sqlite():
        return None
    try:
        return RunReader(str(store.location.path), store.sqlite.busy_timeout_ms)
    except sqlite3.Error as exc:
        raise map_driver_error(exc, store.location) from exc


__all__ = [
    "AVAILABLE",
    "KINDS",
    "RunReader",
    "open_run_reader",
    "reads_sqlite",
    "reconcile_sockets",
    "uncached",
]
