"""A ring buffer too small for the load: every dropped event is counted, dated and reported."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from eventlog.location import resolve
from eventlog.reader import LogReader
from eventlog.store import Purpose, open_log
from recorder.capture import CaptureOptions
from tests.cli import BIN, run_cli
from tests.ebpf import require_ebpf
from tests.load import loopback_load
from tests.recording import recording

pytestmark = pytest.mark.ebpf


def test_overflow_is_in_the_log_reported_and_warned_about(tmp_path: Path) -> None:
    require_ebpf()
    db = tmp_path / "scope.db"
    with loopback_load("rb", tmp_path):
        result = subprocess.run(
            [
                str(BIN / "scope-record"), "--db", str(db), "--no-conntrack",
                "--duration", "4", "--ringbuf-mb", "0.03",
            ],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr

    with sqlite3.connect(db) as conn:
        losses = conn.execute(
            "SELECT lost, first_mono_ns, last_mono_ns, first_wall_ns, last_wall_ns, reason "
            "FROM losses ORDER BY id"
        ).fetchall()
        started, stopped, counters_json = conn.execute(
            "SELECT started_mono_ns, stopped_mono_ns, counters FROM recordings"
        ).fetchone()
        in_log = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    counters = json.loads(counters_json)
    total_lost = sum(loss[0] for loss in losses)
    assert total_lost > 0 and {loss[5] for loss in losses} == {"ring buffer full"}
    # Staged in the kernel = handed over + counted lost; handed over = in the log.
    assert counters["kernel_lost"] == total_lost
    assert counters["kernel_staged"] == counters["received"] + counters["kernel_lost"]
    assert (
        in_log
        == counters["committed"]
        == counters["received"]
        - counters["command_line_pieces"]
        + counters["snapshots"]
        + counters["container_records"]
    )
    for _, first, last, first_wall, last_wall, _ in losses:
        assert started <= first <= last <= stopped
        assert last_wall - first_wall == last - first

    warned = [line for line in result.stderr.splitlines() if "events lost so far" in line]
    assert warned and warned[0].startswith("scope-record: warning:")
    assert f", {total_lost} lost, into" in result.stderr.splitlines()[-1]

    # A window over the recording overlaps every loss: replay says so, and still answers.
    replay = run_cli("scope-replay", "--db", str(db), "--at", "-0s", "--window", "1h")
    assert replay.returncode == 0, replay.stderr
    warnings = [line for line in replay.stderr.splitlines() if "were lost between" in line]
    assert len(warnings) == len(losses)
    assert all(line.startswith("scope-replay: warning:") for line in warnings)


def test_events_handed_over_one_by_one_are_counted_when_the_ring_buffer_refuses_them(
    tmp_path: Path,
) -> None:
    """The other way into the ring buffer (a record of its own, as a program that interrupted
    another one on its CPU writes): what it refuses is lost and counted, and still counted
    among the events the programs made, so that the accounting at stop holds."""
    require_ebpf()
    location = resolve(str(tmp_path / "scope.db"))
    capture = CaptureOptions(ringbuf_bytes=4096, staging=False)
    with (
        loopback_load("rb1", tmp_path),
        recording(location, snapshot_interval_s=0, conntrack=False, capture=capture) as run,
    ):
        time.sleep(3)
    counters = run.recording().counters or {}
    assert counters["kernel_lost"] > 0, counters
    assert counters["kernel_staged"] == counters["received"] + counters["kernel_lost"]
    with open_log(location, Purpose.READ) as store:
        losses = list(LogReader(store).losses())
    assert sum(loss.lost for loss in losses) == counters["kernel_lost"]
