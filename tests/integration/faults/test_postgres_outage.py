"""The central PostgreSQL store goes away mid-recording, and comes back or does not."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from recorder.record import STOP_GRACE_NS
from recorder.workload import run_client, running_server
from tests.cli import BIN, run_cli
from tests.ebpf import require_ebpf
from tests.load import committed
from tests.postgres import PostgresServer
from tests.recording import wait_for

pytestmark = [pytest.mark.ebpf, pytest.mark.postgres]


def _start_recorder(url: str, progress: Path, buffer_events: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            str(BIN / "scope-record"), "--db", url, "--quiet", "--no-conntrack",
            "--progress-file", str(progress), "--buffer-events", str(buffer_events),
            "--duration", "120",
        ],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _log_state(url: str) -> tuple[list[tuple[int, str | None, dict[str, int] | None]], int, int]:
    """Recordings (id, stop reason, counters), event count, and the span of positions."""
    with psycopg.connect(url) as conn:
        recordings = conn.execute(
            "SELECT id, stop_reason, counters FROM recordings ORDER BY id"
        ).fetchall()
        low, high, count = conn.execute(
            "SELECT min(position), max(position), count(*) FROM events"
        ).fetchone() or (0, 0, 0)
    assert count == high - low + 1, "positions have a gap"
    decoded = [
        (rid, reason, json.loads(c) if isinstance(c, str) else c) for rid, reason, c in recordings
    ]
    return decoded, int(count), int(high)


def _stopped_with_everything_committed(url: str) -> dict[str, int]:
    """The one recording stopped by its signal, every event it received in the log; its
    counters."""
    recordings, count, _ = _log_state(url)
    ((_, reason, counters),) = recordings
    assert reason == "signal" and counters is not None
    assert (
        count
        == counters["committed"]
        == counters["received"]
        - counters["command_line_pieces"]
        + counters["snapshots"]
        + counters["container_records"]
    )
    return counters


def test_outage_shorter_than_the_buffer_is_caught_up(
    own_pg_server: PostgresServer, tmp_path: Path
) -> None:
    require_ebpf()
    url = own_pg_server.create_database("outage")
    progress = tmp_path / "progress"
    with running_server("pg-srv", workdir=tmp_path) as server:
        client = run_client("pg-cli", "127.0.0.1", server.port, count=100_000, gap_ms=1)
        recorder = _start_recorder(url, progress, buffer_events=2_000_000)
        try:
            wait_for(lambda: committed(progress) > 1000, timeout=60)
            own_pg_server.stop("immediate")
            down_at = time.monotonic_ns()
            time.sleep(3)
            own_pg_server.start()
            up_at = time.monotonic_ns()
            before = committed(progress)
            wait_for(lambda: committed(progress) > before, timeout=30)
            recorder.send_signal(signal.SIGTERM)
            _, stderr = recorder.communicate(timeout=60)
        finally:
            client.kill()
            client.wait()
            if recorder.poll() is None:
                recorder.kill()
    assert recorder.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "keeping events in memory" in stderr and "reachable again" in stderr

    counters = _stopped_with_everything_committed(url)
    assert counters["kernel_lost"] == 0
    with psycopg.connect(url) as conn:
        during = conn.execute(
            "SELECT count(*) FROM events WHERE mono_ns BETWEEN %s AND %s", (down_at, up_at)
        ).fetchone()
    assert during is not None and during[0] > 100, "events captured while the server was down"


def test_a_stop_during_an_outage_waits_for_the_store_and_loses_nothing(
    own_pg_server: PostgresServer, tmp_path: Path
) -> None:
    """SIGTERM while the store is away (a database restart): the recorder goes on trying
    to commit what it holds, and it is all in the log once the store is back."""
    require_ebpf()
    url = own_pg_server.create_database("outage")
    progress = tmp_path / "progress"
    with running_server("pg-srv", workdir=tmp_path) as server:
        client = run_client("pg-cli", "127.0.0.1", server.port, count=100_000, gap_ms=1)
        recorder = _start_recorder(url, progress, buffer_events=2_000_000)
        try:
            wait_for(lambda: committed(progress) > 1000, timeout=60)
            own_pg_server.stop("immediate")
            try:
                time.sleep(1)
                recorder.send_signal(signal.SIGTERM)
                time.sleep(STOP_GRACE_NS / 1e9 / 2)
                waited = recorder.poll() is None
            finally:
                own_pg_server.start()
            _, stderr = recorder.communicate(timeout=60)
            assert waited, f"the recorder gave up at once: {stderr}"
        finally:
            client.kill()
            client.wait()
            if recorder.poll() is None:
                recorder.kill()
    assert recorder.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "warning: stopping once the log takes the last" in stderr and "reachable again" in stderr
    _stopped_with_everything_committed(url)


def test_outage_longer_than_the_buffer_stops_clearly(
    own_pg_server: PostgresServer, tmp_path: Path
) -> None:
    require_ebpf()
    url = own_pg_server.create_database("outage")
    progress = tmp_path / "progress"
    with running_server("pg-srv", workdir=tmp_path) as server:
        client = run_client("pg-cli", "127.0.0.1", server.port, count=200_000)
        recorder = _start_recorder(url, progress, buffer_events=5_000)
        try:
            wait_for(lambda: committed(progress) > 1000, timeout=60)
            own_pg_server.stop("immediate")
            _, stderr = recorder.communicate(timeout=60)
        finally:
            client.kill()
            client.wait()
            if recorder.poll() is None:
                recorder.kill()
            own_pg_server.start()
    live, *lines = stderr.strip().splitlines()
    assert recorder.returncode == 3, stderr
    assert "Traceback" not in stderr and "capturing since" in live
    assert lines[0].startswith("scope-record: warning:") and "keeping events" in lines[0]
    assert lines[-1].startswith("scope-record: error:") and "--buffer-events" in lines[-1]

    recordings, count, high = _log_state(url)
    assert count >= committed(progress) and recordings[0][1] is None

    # The next recorder marks the interrupted recording and appends after it.
    again = run_cli("scope-record", "--db", url, "--duration", "1", "--quiet", "--no-conntrack")
    assert again.returncode == 0, again.stderr
    recordings, _, new_high = _log_state(url)
    assert [reason for _, reason, _ in recordings] == ["crashed", "duration"]
    assert new_high > high
