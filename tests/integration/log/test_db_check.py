"""`scope-replay db check`: a whole log passes (SQLite and PostgreSQL); damaged pages, a gap
in the positions and a recording left open are each said in one line; exit 1 on a problem."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from eventlog.location import LogLocation
from tests.engine_golden import run_replay
from tests.logbuilder import build_workload, built_log
from tests.recording import db_argument

OPERATIONS = [(kind, i) for i in range(30) for kind in ("pair", "outbound", "close", "flush")]


def _check(db: str) -> tuple[int, dict[str, str]]:
    code, out, err = run_replay(["db", "check", "--db", db])
    assert "Traceback" not in err
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    return code, lines


def test_a_whole_log_passes(log_location: LogLocation) -> None:
    with built_log(log_location) as (_, builder):
        build_workload(builder, OPERATIONS)
    code, found = _check(db_argument(log_location))
    assert code == 0, found
    assert set(found) == {"integrity", "positions", "recordings"}
    assert all(value.startswith("ok: ") for value in found.values())
    assert "events in" in found["positions"]
    # built_log leaves its recording open, recorded by this (live) process
    assert f"being recorded (recorder pid {os.getpid()})" in found["recordings"]


@pytest.fixture
def whole(tmp_path: Path) -> Path:
    db = tmp_path / "whole.db"
    with built_log(db) as (_, builder):
        build_workload(builder, OPERATIONS)
    return db


def _copy(db: Path, name: str) -> Path:
    copy = db.with_name(name)
    shutil.copyfile(db, copy)
    return copy


def test_a_gap_in_the_positions_is_a_problem(whole: Path) -> None:
    gapped = _copy(whole, "gapped.db")
    with sqlite3.connect(gapped) as conn:
        conn.execute("DELETE FROM events WHERE position = 5")
    code, found = _check(str(gapped))
    assert code == 1
    assert found["positions"].startswith("PROBLEM: ") and "need" in found["positions"]
    assert found["integrity"].startswith("ok: ")


def test_an_open_recording_whose_recorder_is_gone_is_said(whole: Path) -> None:
    abandoned = _copy(whole, "abandoned.db")
    with sqlite3.connect(abandoned) as conn:
        conn.execute("UPDATE recordings SET recorder_pid = 999999999")
    code, found = _check(str(abandoned))
    assert code == 0  # the next scope-record of the host closes it: not damage
    assert "was not closed (its recorder is gone)" in found["recordings"]


def test_damaged_pages_are_a_problem_not_a_crash(whole: Path) -> None:
    page_size = sqlite3.connect(whole).execute("PRAGMA page_size").fetchone()[0]
    pages = whole.stat().st_size // page_size
    damaged = []
    for page in range(1, pages):  # each page's header overwritten in turn (not the first)
        copy = _copy(whole, f"damaged-{page}.db")
        with copy.open("r+b") as handle:
            handle.seek(page * page_size + 3)
            handle.write(b"\x7f\x7f")
        code, out, err = run_replay(["db", "check", "--db", str(copy)])
        assert "Traceback" not in err and code in (1, 2), (page, out, err)
        if code == 1:
            damaged.append(page)
            assert "integrity: PROBLEM: " in out, out
        else:
            assert len(err.strip().splitlines()) == 1, err
    assert damaged  # most damage is found and said, not only refused
