"""Room kept beside a SQLite log while it is recorded, so that a full disk can still be told.

When the log's filesystem fills up, the append that fails leaves SQLite's write-ahead log at
its last commit; the recording's stop reason is one more small transaction, and it fits only
if the write-ahead log file still has a free frame. Most of the time it does; when the last
commit ended exactly where the file did, it does not, and the log would say nothing of why
the recording ended. So a recorder holds a small file of reserved blocks beside the log and
deletes it before it writes the stop: that space is then the filesystem's again.

Only a SQLite log has a filesystem to fill; a PostgreSQL server keeps its own reserve.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

RESERVE_BYTES = 256 << 10  # a stop record needs a few 4 KiB frames: a wide margin
SUFFIX = "-reserve"


class SpaceReserve:
    """A file of ``RESERVE_BYTES`` allocated blocks at ``<log>-reserve``."""

    def __init__(self, log_path: Path) -> None:
        self.path = log_path.with_name(log_path.name + SUFFIX)
        self.held = False

    def hold(self) -> bool:
        """Allocate the reserve; False (and nothing held) if the disk cannot spare it now."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError:
            return False
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
        except OSError:
            os.close(fd)
            self._unlink()
            return False
        os.close(fd)
        self.held = True
        return True

    def release(self) -> None:
        """Give the reserved blocks back to the filesystem (idempotent)."""
        self._unlink()
        self.held = False

    def _unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
