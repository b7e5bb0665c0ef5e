"""kill -9 of scope-record under load, twenty times on one log: nothing acknowledged is lost."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from eventlog.events import Kind
from recorder.record import REORDER_HORIZON_NS
from recorder.workload import run_client, running_server
from tests.cli import BIN, run_cli
from tests.ebpf import require_ebpf
from tests.load import last_progress
from tests.recording import wait_for

pytestmark = pytest.mark.ebpf

KILLS = 20
FLUSH_INTERVAL_MS = 200
# Scheduling room on a loaded two-core machine: the draining thread may be a commit behind.
SLACK_NS = 400_000_000
CONNECTION_KINDS = (int(Kind.CONNECT), int(Kind.ACCEPT), int(Kind.CLOSE))


@dataclass(frozen=True)
class Acknowledged:
    """The last line scope-record wrote to its progress file before it was killed."""

    recording: int
    position: int
    committed: int


def _last_acknowledged(progress: Path) -> Acknowledged | None:
    last = last_progress(progress)
    if last is None:
        return None
    return Acknowledged(last["recording"], last["position"], last["committed"])


def _record_then_kill(db: Path, progress: Path, rng: random.Random) -> tuple[Acknowledged, int]:
    """Start scope-record, let it commit, kill -9 it at a random moment; the kill time."""
    progress.unlink(missing_ok=True)
    recorder = subprocess.Popen(
        [
            str(BIN / "scope-record"), "--db", str(db), "--quiet", "--no-conntrack",
            "--flush-interval", str(FLUSH_INTERVAL_MS), "--progress-file", str(progress),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(lambda: _last_acknowledged(progress) is not None or recorder.poll() is not None)
        assert recorder.poll() is None, recorder.stderr.read() if recorder.stderr else b""
        time.sleep(rng.uniform(0.2, 1.5))
        killed_at = time.monotonic_ns()
        recorder.send_signal(signal.SIGKILL)
        recorder.wait(timeout=30)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    acknowledged = _last_acknowledged(progress)
    assert acknowledged is not None
    return acknowledged, killed_at


def _check_after_crash(db: Path, acknowledged: Acknowledged, killed_at: int) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        low, high, count = conn.execute(
            "SELECT min(position), max(position), count(*) FROM events"
        ).fetchone()
        assert count == high - low + 1, "positions have a gap"
        in_recording = conn.execute(
            "SELECT count(*) FROM events WHERE recording_id = ?", (acknowledged.recording,)
        ).fetchone()[0]
        assert in_recording >= acknowledged.committed
        assert conn.execute(
            "SELECT recording_id FROM events WHERE position = ?", (acknowledged.position,)
        ).fetchone() == (acknowledged.recording,)
        last_connection_event = conn.execute(
            f"SELECT max(mono_ns) FROM events WHERE recording_id = ? "
            f"AND kind IN {CONNECTION_KINDS}",
            (acknowledged.recording,),
        ).fetchone()[0]
        # The workload never pauses, so the newest event in the log shows what was lost:
        # at most the events still waiting for their batch (flush interval) and for the
        # reorder horizon behind it.
        missing_ns = killed_at - last_connection_event
        assert missing_ns <= FLUSH_INTERVAL_MS * 1_000_000 + REORDER_HORIZON_NS + SLACK_NS
        return int(in_recording)


def test_twenty_kill_nines_lose_only_the_unflushed_batch(tmp_path: Path) -> None:
    require_ebpf()
    db = tmp_path / "scope.db"
    progress = tmp_path / "progress"
    rng = random.Random(20261125)
    recordings: list[int] = []
    with running_server("crash-srv", workdir=tmp_path) as server:
        for _ in range(KILLS):
            clients = [
                run_client("crash-cli", "127.0.0.1", server.port, count=200_000) for _ in range(2)
            ]
            try:
                acknowledged, killed_at = _record_then_kill(db, progress, rng)
            finally:
                for client in clients:
                    client.kill()
                    client.wait()
            assert _check_after_crash(db, acknowledged, killed_at) > 0
            assert acknowledged.recording not in recordings
            recordings.append(acknowledged.recording)

    # The next run appends a new recording and marks every interrupted one as crashed.
    final = run_cli("scope-record", "--db", str(db), "--duration", "1", "--quiet")
    assert final.returncode == 0, final.stderr
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, stop_reason FROM recordings ORDER BY id").fetchall()
    assert [row[0] for row in rows[:-1]] == recordings
    assert {row[1] for row in rows[:-1]} == {"crashed"}
    assert rows[-1][0] > recordings[-1] and rows[-1][1] == "duration"

    replay = run_cli("scope-replay", "--db", str(db), "--at", "-2s", "--format", "json")
    assert replay.returncode == 0, replay.stderr
    query = run_cli(
        "scope-query", "--db", str(db), "SELECT count(*) AS n FROM events", "--format", "csv"
    )
    assert query.returncode == 0, query.stderr
    with sqlite3.connect(db) as conn:
        assert query.stdout.split() == [
            "n",
            str(conn.execute("SELECT count(*) FROM events").fetchone()[0]),
        ]
    assert os.stat(db).st_mode & 0o777 == 0o600
