"""Replay and query in a loop while scope-record writes at full rate: never a failure, never a
partial batch, and a settled past moment always replays to the same bytes."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from eventlog.errors import LogError
from eventlog.location import LogLocation
from eventlog.store import Purpose, open_log
from recorder.workload import run_client, running_server
from tests.cli import BIN, run_cli
from tests.ebpf import require_ebpf
from tests.recording import db_argument, wait_for

pytestmark = pytest.mark.ebpf

READ_SECONDS = 12
MAX_ROUNDS = 40
SETTLED_S = 3  # the replayed moment is this far behind the log's end before it is compared


def _whole_batches(location: LogLocation) -> tuple[int, int]:
    """In one statement (one snapshot on either backend; PostgreSQL's read committed gives
    each statement its own): the newest event and the newest batch agree."""
    with open_log(location, Purpose.READ) as store, store.engine.connect() as conn:
        newest_event, events, newest_batch = conn.execute(
            text(
                "SELECT (SELECT max(position) FROM events), (SELECT count(*) FROM events), "
                "(SELECT max(last_position) FROM batches)"
            )
        ).one()
    return int(newest_event or 0), int(newest_batch or 0) if events else 0


def _log_seconds(location: LogLocation) -> float:
    """How much time the log covers so far; 0 until the recorder has created it."""
    try:
        with open_log(location, Purpose.READ) as store, store.engine.connect() as conn:
            low, high = conn.execute(
                text("SELECT min(min_mono_ns), max(max_mono_ns) FROM batches")
            ).one()
    except (LogError, SQLAlchemyError):
        return 0.0
    return 0.0 if low is None else (high - low) / 1e9


def test_readers_in_a_loop_while_recording_at_full_rate(
    log_location: LogLocation, tmp_path: Path
) -> None:
    require_ebpf()
    db = db_argument(log_location)
    with running_server("rd-srv", workdir=tmp_path) as server:
        clients = [run_client("rd-cli", "127.0.0.1", server.port, count=300_000) for _ in range(2)]
        recorder = subprocess.Popen(
            [str(BIN / "scope-record"), "--db", db, "--quiet", "--duration", "120"],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: _log_seconds(log_location) > SETTLED_S, timeout=60)
            settled: str | None = None
            rounds = 0
            deadline = time.monotonic() + READ_SECONDS
            while time.monotonic() < deadline and rounds < MAX_ROUNDS:
                rounds += 1
                newest_event, newest_batch = _whole_batches(log_location)
                assert newest_event == newest_batch, "a reader saw part of a batch"

                replay = run_cli("scope-replay", "--db", db, "--at", "+1s", "--format", "json")
                assert replay.returncode == 0, replay.stderr
                settled = settled or replay.stdout
                assert replay.stdout == settled, "a settled moment replayed differently"

                query = run_cli(
                    "scope-query", "--db", db, "--format", "csv",
                    "SELECT count(*) = max(position) - min(position) + 1 AS whole, "
                    "count(*) AS n FROM events",
                )  # fmt: skip
                assert query.returncode == 0, query.stderr
                whole, count = query.stdout.splitlines()[1].split(",")
                assert whole.lower() == "true" and int(count) > 0
            assert recorder.poll() is None, recorder.stderr.read() if recorder.stderr else ""
            assert rounds >= 3
        finally:
            for client in clients:
                client.kill()
                client.wait()
            recorder.send_signal(signal.SIGTERM)
            _, stderr = recorder.communicate(timeout=60)
    assert recorder.returncode == 0, stderr
