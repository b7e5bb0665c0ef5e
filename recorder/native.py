"""The recorder's per-event hot path in C (``recorder/_native.c``), when this install built it.

The build is optional (``pyproject.toml``): without a C compiler the recorder decodes ring
buffer records with ``recorder.decode`` and writes rows with Python's sqlite3, the same rows
only slower. ``tests/unit/log/test_native_append.py`` checks that both paths write the same
bytes, and fails under CI when the module is missing.
"""

from __future__ import annotations

from typing import TypeGuard

try:
    from recorder._native import (
        Connection,
        RawRun,
        batch_summary,
        merge_runs,
        raw_run,
        sqlite_version,
    )

    AVAILABLE = True
except ImportError:
    AVAILABLE = False


def is_run(item: object) -> TypeGuard[RawRun]:
    """Whether ``item`` is a RawRun (never, when the module was not built)."""
    return AVAILABLE and isinstance(item, RawRun)


__all__ = [
    "AVAILABLE",
    "Connection",
    "RawRun",
    "batch_summary",
    "is_run",
    "merge_runs",
    "raw_run",
    "sqlite_version",
]
