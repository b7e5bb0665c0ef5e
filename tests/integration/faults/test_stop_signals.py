"""How scope-record stops on a signal: SIGINT as an interrupted command (exit 130), SIGTERM as a
service manager's stop (exit 0); the recording says which signal stopped it."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.cli import BIN
from tests.ebpf import require_ebpf
from tests.load import committed
from tests.recording import wait_for

pytestmark = pytest.mark.ebpf


@pytest.mark.parametrize(("sent", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_a_signal_stops_the_recording_and_is_named(
    tmp_path: Path, sent: signal.Signals, code: int
) -> None:
    require_ebpf()
    db, progress = tmp_path / "scope.db", tmp_path / "progress"
    recorder = subprocess.Popen(
        [str(BIN / "scope-record"), "--db", str(db), "--no-conntrack", "--progress-file",
         str(progress)],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: committed(progress) > 0 or recorder.poll() is not None, timeout=60)
        assert recorder.poll() is None, recorder.stderr.read() if recorder.stderr else ""
    finally:
        recorder.send_signal(sent)
        _, stderr = recorder.communicate(timeout=60)
    assert recorder.returncode == code, stderr
    assert "Traceback" not in stderr and "stopped (signal)" in stderr, stderr
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT stop_reason, stop_detail FROM recordings").fetchone()
    assert row[0] == "signal" and f"stopped by {sent.name}" in row[1], row
