"""The recorder's per-event hot path in C (``eventlog/_native.c``), when this install built it.

The build is optional (``pyproject.toml``): without a C compiler the recorder decodes ring
buffer records with ``eventlog.kernel_records`` and writes rows with Python's sqlite3, the same rows
only slower. ``tests/unit/log/test_native_append.py`` checks that both paths write the same
bytes, and fails under CI when the module is missing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from functools import cache
from typing import TypeGuard

try:
    from eventlog._native import (
        Connection,
        RawRun,
        batch_summary,
        merge_runs,
        raw_run,
        soft_heap_limit,
        sqlite_version,
    )

    AVAILABLE = True
except ImportError:
    AVAILABLE = False


def is_run(item: object) -> TypeGuard[RawRun]:
    """Whether ``item`` is a RawRun (never, when the module was not built)."""
    return AVAILABLE and isinstance(item, RawRun)


def shares_sqlite(module_soft_heap_limit: Callable[[], int]) -> bool:
    """Whether a C module and Python's sqlite3 use the one SQLite library in this process.

    Two copies would each keep their own POSIX locks on the log, and closing a file in one
    drops the other's (SQLite's "multiple copies" hazard), so a module's own connections are
    used only when they are one: a soft heap limit set through sqlite3 must show through
    ``module_soft_heap_limit``, the module's reading of it.
    """
    probe = sqlite3.connect(":memory:")
    try:
        previous = int(probe.execute("PRAGMA soft_heap_limit").fetchone()[0])
        marker = previous + 7919 if previous else (1 << 40) + 7919
        probe.execute(f"PRAGMA soft_heap_limit = {marker}")
        shared = module_soft_heap_limit() == marker
        probe.execute(f"PRAGMA soft_heap_limit = {previous}")
        return shared
    finally:
        probe.close()


@cache
def shares_sqlite_with_python() -> bool:
    """Whether this module was built and shares Python's SQLite library (``shares_sqlite``)."""
    return AVAILABLE and shares_sqlite(soft_heap_limit)


__all__ = [
    "AVAILABLE",
    "Connection",
    "RawRun",
    "batch_summary",
    "is_run",
    "merge_runs",
    "raw_run",
    "shares_sqlite",
    "shares_sqlite_with_python",
    "soft_heap_limit",
    "sqlite_version",
]
