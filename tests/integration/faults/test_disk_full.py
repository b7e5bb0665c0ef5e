"""The log's filesystem fills up mid-recording: a clear stop, and a whole, readable log."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from recorder.workload import run_client, running_server
from tests.capabilities import is_root, require
from tests.cli import BIN, assert_one_line_error, run_cli
from tests.ebpf import require_ebpf

pytestmark = pytest.mark.ebpf


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    require(is_root(), "root (to mount a size-limited tmpfs)")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(mount_point)], check=True
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_stops_clearly_and_keeps_what_was_committed(
    small_filesystem: Path, tmp_path: Path
) -> None:
    require_ebpf()
    db = small_filesystem / "scope.db"
    progress = tmp_path / "progress"
    with running_server("full-srv", workdir=tmp_path) as server:
        clients = [
            run_client("full-cli", "127.0.0.1", server.port, count=500_000) for _ in range(2)
        ]
        try:
            result = subprocess.run(
                [
                    str(BIN / "scope-record"), "--db", str(db), "--quiet", "--no-conntrack",
                    "--duration", "120", "--progress-file", str(progress),
                ],
                capture_output=True, text=True, timeout=180, check=False,
            )  # fmt: skip
        finally:
            for client in clients:
                client.kill()
                client.wait()
    assert_one_line_error(result, 3, "disk full")

    last = progress.read_text().split("\n")[:-1][-1]
    committed = int(dict(part.split("=") for part in last.split())["committed"])
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] >= committed > 10_000
        reason, detail = conn.execute("SELECT stop_reason, stop_detail FROM recordings").fetchone()
    assert reason == "error" and "disk full" in detail

    # Still full, the log reads: replay and query work on it as it is.
    replay = run_cli("scope-replay", "--db", str(db), "--at", "-1s", "--format", "csv")
    assert replay.returncode == 0, replay.stderr
    assert "full-cli" in replay.stdout
    query = run_cli("scope-query", "--db", str(db), "SELECT count(*) FROM events")
    assert query.returncode == 0, query.stderr
