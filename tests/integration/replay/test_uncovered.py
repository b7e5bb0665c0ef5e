"""A moment no recording covers (the gap after a recorder was killed) is said to be one, in
the table, its JSON and the maps; a moment a recording covers is not."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from eventlog.location import LogLocation
from tests.cli import run_cli
from tests.ebpf import require_ebpf
from tests.recording import db_argument, start_recorder

pytestmark = pytest.mark.ebpf

UNCOVERED = "no recording of host"


def _killed_recording(db: str, progress: Path) -> None:
    recorder = start_recorder(db, progress, "--quiet", "--no-conntrack")
    recorder.kill()
    recorder.wait(timeout=30)


def test_a_moment_between_recordings_is_said_to_be_uncovered(
    log_location: LogLocation, tmp_path: Path
) -> None:
    require_ebpf()
    db = db_argument(log_location)
    _killed_recording(db, tmp_path / "progress")
    time.sleep(1.0)
    in_gap = time.time_ns()
    time.sleep(1.0)
    second = run_cli("scope-record", "--db", db, "--quiet", "--no-conntrack", "--duration", "2")
    assert second.returncode == 0, second.stderr

    table = run_cli("scope-replay", "--db", db, "--at", str(in_gap), "--format", "json")
    assert table.returncode == 0, table.stderr
    (said,) = [w for w in json.loads(table.stdout)["warnings"] if w.startswith(UNCOVERED)]
    assert "recording 1 ended at" in said and "(its recorder crashed)" in said, said
    assert "recording 2 began at" in said, said
    assert f"warning: {said}" in table.stderr

    for view in ("hosts", "processes"):
        drawn = run_cli("scope-replay", "--db", db, "--at", str(in_gap), "--view", view,
                        "--format", "json")  # fmt: skip
        assert drawn.returncode == 0, drawn.stderr
        assert f"warning: {said}" in drawn.stderr

    covered = run_cli("scope-replay", "--db", db, "--at", "-1s", "--format", "json")
    assert covered.returncode == 0, covered.stderr
    assert not [w for w in json.loads(covered.stdout)["warnings"] if w.startswith(UNCOVERED)]
    assert UNCOVERED not in covered.stderr
