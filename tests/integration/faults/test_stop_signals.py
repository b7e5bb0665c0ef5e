"""How scope-record stops on a signal: SIGINT as an interrupted command (exit 130), SIGTERM as a
service manager's stop (exit 0); the recording says which signal stopped it."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest

from tests.ebpf import require_ebpf
from tests.recording import start_recorder

pytestmark = pytest.mark.ebpf


@pytest.mark.parametrize(("sent", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_a_signal_stops_the_recording_and_is_named(
    tmp_path: Path, sent: signal.Signals, code: int
) -> None:
    require_ebpf()
    db = tmp_path / "scope.db"
    recorder = start_recorder(str(db), tmp_path / "progress", "--no-conntrack")
    recorder.send_signal(sent)
    _, stderr = recorder.communicate(timeout=60)
    assert recorder.returncode == code, stderr
    assert "Traceback" not in stderr and "stopped (signal)" in stderr, stderr
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT stop_reason, stop_detail FROM recordings").fetchone()
    assert row[0] == "signal" and f"stopped by {sent.name}" in row[1], row
