"""The log's filesystem fills up mid-recording: a clear stop, and a whole, readable log."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli import BIN, after_live_line, assert_one_line_error, run_cli
from tests.ebpf import require_ebpf
from tests.load import committed, loopback_load, tmpfs

pytestmark = pytest.mark.ebpf


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small", "size=3m,mode=0700") as mount_point:
        yield mount_point


def test_disk_full_stops_clearly_and_keeps_what_was_committed(
    small_filesystem: Path, tmp_path: Path
) -> None:
    require_ebpf()
    db = small_filesystem / "scope.db"
    progress = tmp_path / "progress"
    with loopback_load("full", tmp_path, count=500_000):
        result = subprocess.run(
            [
                str(BIN / "scope-record"), "--db", str(db), "--quiet", "--no-conntrack",
                "--duration", "120", "--progress-file", str(progress),
            ],
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
    # What was captured and not written (at least the batch that did not fit) is said.
    assert_one_line_error(
        after_live_line(result), 3, "disk full", "events captured since the last commit are lost"
    )

    acknowledged = committed(progress)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] >= acknowledged > 10_000
        reason, detail = conn.execute("SELECT stop_reason, stop_detail FROM recordings").fetchone()
        lost = conn.execute(
            "SELECT sum(lost) FROM losses WHERE reason = 'captured, not written: the log failed'"
        ).fetchone()[0]
    assert reason == "error" and "disk full" in detail
    # ... and counted in the log, as the detail says
    assert lost and f"{lost:,} events captured since the last commit are lost" in detail

    # Still full, the log reads: replay and query work on it as it is.
    replay = run_cli("scope-replay", "--db", str(db), "--at", "-1s", "--format", "csv")
    assert replay.returncode == 0, replay.stderr
    assert "full-cli" in replay.stdout
    query = run_cli("scope-query", "--db", str(db), "SELECT count(*) FROM events")
    assert query.returncode == 0, query.stderr
