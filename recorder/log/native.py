"""The C append path (``recorder/log/_native.c``), when this install built it.

The build is optional (``pyproject.toml``): without a C compiler the log writer uses Python's
sqlite3 for the same rows, only slower. ``tests/unit/log/test_native_append.py`` checks that
both write the same bytes, and fails under CI when the module is missing.
"""

from __future__ import annotations

try:
    from recorder.log._native import Connection, mono_range, sqlite_version

    AVAILABLE = True
except ImportError:
    AVAILABLE = False

__all__ = ["AVAILABLE", "Connection", "mono_range", "sqlite_version"]
