"""How a log is opened, as a user chooses it on the command line. Nothing here imports a
dependency: the CLIs read it to print their help."""

from __future__ import annotations

from dataclasses import dataclass

SQLITE_SYNC_LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")
DEFAULT_BUSY_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class SqliteOptions:
    synchronous: str = "FULL"
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
    force: bool = False  # record into a log owned by someone else, or in an unsafe directory
