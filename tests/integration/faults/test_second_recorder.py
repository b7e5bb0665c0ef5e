"""A second scope-record of the same host into the same log is refused: two would append every
event, and every connection would replay twice. Once the first has stopped, a new one starts."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from sqlalchemy import text

from eventlog.location import LogLocation
from eventlog.store import Purpose, open_log
from tests.cli import assert_one_line_error, run_cli
from tests.ebpf import require_ebpf
from tests.recording import db_argument, start_recorder

pytestmark = pytest.mark.ebpf


def _recordings(location: LogLocation) -> list[tuple[int, int, str | None]]:
    with open_log(location, Purpose.READ) as store, store.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, recorder_pid, stop_reason FROM recordings ORDER BY id")
        ).all()
    return [(int(i), int(pid), reason) for i, pid, reason in rows]


def test_a_second_recorder_of_the_host_is_refused_while_the_first_runs(
    log_location: LogLocation, tmp_path: Path
) -> None:
    require_ebpf()
    db = db_argument(log_location)
    first = start_recorder(db, tmp_path / "progress", "--quiet", "--no-conntrack",
                           "--duration", "60")  # fmt: skip
    try:
        second = run_cli("scope-record", "--db", db, "--quiet", "--no-conntrack",
                         "--duration", "2")  # fmt: skip
        assert_one_line_error(second, 2, "another recorder", f"pid {first.pid}")
        assert first.poll() is None  # the first goes on, undisturbed
        assert [pid for _, pid, _ in _recordings(log_location)] == [first.pid]
    finally:
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=60)
    assert first.returncode == 130, stderr  # interrupted

    after = run_cli("scope-record", "--db", db, "--quiet", "--no-conntrack", "--duration", "1")
    assert after.returncode == 0, after.stderr
    recordings = _recordings(log_location)
    assert len(recordings) == 2 and all(reason is not None for _, _, reason in recordings)
