"""A connection open when its recorder was killed is not open after that: until the next
recording of its host its state is unknown (since the recording's end), and once the next
recording has begun it ended with the first one; scope-query's connections say the same."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from eventlog.location import LogLocation
from recorder.workload import run_client, running_server
from tests.cli import run_cli
from tests.ebpf import require_ebpf
from tests.recording import db_argument, start_recorder

pytestmark = pytest.mark.ebpf


def _rows_to(db: str, at: str, port: int) -> list[dict[str, Any]]:
    result = run_cli("scope-replay", "--db", db, "--at", at, "--window", "0s", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["connections"]
    return [r for r in rows if r["server"].endswith(f":{port}") and r["state"] != "failed"]


def test_a_connection_open_when_its_recorder_died_is_not_open_after(
    log_location: LogLocation, tmp_path: Path
) -> None:
    require_ebpf()
    db = db_argument(log_location)
    with running_server("bnd-srv", workdir=tmp_path) as server:
        first = start_recorder(db, tmp_path / "progress", "--quiet", "--no-conntrack",
                               "--flush-interval", "50")  # fmt: skip
        try:
            client = run_client("bnd-hold", "127.0.0.1", server.port, count=1, hold_ms=6000)
            time.sleep(1.0)  # connected, and committed by the recorder
            during = time.time_ns()
            time.sleep(2.5)  # the idle recorder has said since that it was alive
        finally:
            first.kill()  # SIGKILL: recording 1 is left open, and marked crashed later
            first.wait(timeout=30)
        assert client.wait(timeout=30) == 0  # it closes in the gap, unrecorded
        time.sleep(0.5)
        in_gap = time.time_ns()
        time.sleep(0.5)
        second = run_cli("scope-record", "--db", db, "--quiet", "--no-conntrack", "--duration", "2")
        assert second.returncode == 0, second.stderr

    (before,) = [r for r in _rows_to(db, str(during), server.port) if r["direction"] == "local"]
    assert before["state"] == "open"

    (gap,) = [r for r in _rows_to(db, str(in_gap), server.port) if r["direction"] == "local"]
    assert gap["state"] == "unknown" and gap["closed_at"] == "", gap
    assert gap["note"].startswith("unknown since ") and "recording 1 ended" in gap["note"], gap

    assert _rows_to(db, "-0s", server.port) == []  # settled by recording 2: not open

    query = run_cli("scope-query", "--db", db, "--format", "csv",
                    f"SELECT state FROM connections WHERE server_port = {server.port} "
                    "AND direction = 'local'")  # fmt: skip
    assert query.returncode == 0, query.stderr
    assert query.stdout.splitlines()[1:] == ["closed"], query.stdout
