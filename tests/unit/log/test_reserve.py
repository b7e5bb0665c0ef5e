"""The room a recorder keeps beside a SQLite log: allocated, given back, and never fatal."""

from __future__ import annotations

import os
from pathlib import Path

from eventlog.reserve import RESERVE_BYTES, SpaceReserve
from tests.load import tmpfs


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill(directory: Path) -> None:
    """Write to ``directory`` until its filesystem refuses another byte."""
    with open(directory / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass


def test_the_reserve_holds_real_blocks_and_gives_them_back(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=4m,mode=0700") as mount:
        reserve = SpaceReserve(mount / "scope.db")
        before = free_bytes(mount)
        assert reserve.hold()
        assert reserve.path == mount / "scope.db-reserve"
        assert reserve.path.stat().st_mode & 0o777 == 0o600
        assert before - free_bytes(mount) >= RESERVE_BYTES
        fill(mount)
        assert free_bytes(mount) < 4096  # full, yet the reserve's blocks are there
        reserve.release()
        assert not reserve.path.exists() and not reserve.held
        assert free_bytes(mount) >= RESERVE_BYTES
        reserve.release()  # twice is harmless


def test_a_disk_too_full_for_the_reserve_holds_nothing(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=2m,mode=0700") as mount:
        fill(mount)
        reserve = SpaceReserve(mount / "scope.db")
        assert not reserve.hold() and not reserve.held
        assert not reserve.path.exists()  # no half-allocated file left behind
