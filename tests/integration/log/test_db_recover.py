"""`scope-replay db recover`: a damaged SQLite log's readable rows copied into a new log that
every command reads; what was lost counted per table and held in the new log as losses; the
damaged file never written; bad input refused in one line."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from eventlog.events import Kind, LoggedEvent
from eventlog.location import resolve
from eventlog.reader import LogReader, LossRecord, Recording
from eventlog.store import Purpose, open_log
from tests.damage import PAGE_HEADER, middle_leaf, overwrite
from tests.engine_golden import run_replay
from tests.logbuilder import build_workload, built_log
from tests.scenarios import SCENARIOS

FROM_DAMAGED = "unreadable in the damaged log this one was recovered from"
SNAPSHOT_TABLES = ("snapshot_connections", "snapshot_processes", "snapshot_conntrack")


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOPE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    """Two hosts at once, a crashed recording, losses, clock steps, snapshots with NAT."""
    db = tmp_path / "fleet.db"
    SCENARIOS["fleet"](db)
    return db


def _damaged_copy(db: Path, table: str, offset: int = PAGE_HEADER) -> tuple[Path, range]:
    """A copy of ``db`` (the file alone) with a middle page of ``table`` overwritten, and the
    rowids that page held."""
    damaged = db.with_name("damaged.db")
    shutil.copyfile(db, damaged)
    page, rowids = middle_leaf(damaged, table)
    overwrite(damaged, page, offset)
    return damaged, rowids


def _recover(source: Path, target: Path) -> tuple[int, dict[str, Any], str]:
    code, out, err = run_replay(["db", "recover", str(source), "--db", str(target),
                                 "--format", "json"])  # fmt: skip
    assert "Traceback" not in err
    return code, json.loads(out), err


def _tables(report: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {t["table"]: (t["copied"], t["lost"]) for t in report["tables"] if t["lost_exactly"]}


def _read(db: Path) -> tuple[list[LoggedEvent], list[LossRecord], list[Recording]]:
    with open_log(resolve(str(db)), Purpose.READ) as store:
        reader = LogReader(store)
        return list(reader.events()), reader.losses(), reader.recordings()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_passes(db: Path) -> None:
    code, out, err = run_replay(["db", "check", "--db", str(db)])
    assert code == 0, (out, err)
    assert all(": ok: " in line for line in out.splitlines()), out


def test_a_damaged_events_page_loses_its_events_and_no_others(fleet: Path, tmp_path: Path) -> None:
    damaged, lost = _damaged_copy(fleet, "events")
    before = _digest(damaged)
    original, original_losses, _ = _read(fleet)
    recovered = tmp_path / "recovered.db"

    code, report, err = _recover(damaged, recovered)

    assert code == 1 and "could not be read whole" in err
    assert not report["whole"]
    counts = _tables(report)
    assert counts["events"] == (len(original) - len(lost), len(lost))
    # The rows of a snapshot whose event was on the page are left out: nothing takes them.
    with sqlite3.connect(fleet) as conn:
        for table in SNAPSHOT_TABLES:
            total, orphaned = conn.execute(
                f"SELECT count(*), count(*) FILTER (WHERE position BETWEEN ? AND ?) FROM {table}",
                (lost[0], lost[-1]),
            ).fetchone()
            assert counts.pop(table) == (total - orphaned, orphaned), table
    assert all(lost_rows == 0 for table, (_, lost_rows) in counts.items() if table != "events")
    (note,) = [n for n in report["notes"] if n.startswith("events:")]
    assert f"positions {lost[0]}..{lost[-1]} could not be read ({len(lost)} events;" in note
    assert f"from there on are {len(lost)} positions earlier" in note

    # Every event that was not on the damaged page is there, in order, with its time; those
    # before the damage keep their positions, the later ones move back by the number lost.
    events, losses, _ = _read(recovered)
    kept = [event for event in original if event.position not in lost]
    assert [event[1:] for event in events] == [event[1:] for event in kept]
    assert [event.position for event in events] == list(range(1, len(kept) + 1))
    assert events[lost[0] - 2] == original[lost[0] - 2]

    # The lost events are loss records of the recordings the time index says they were of.
    new_losses = [loss for loss in losses if loss.reason.startswith(FROM_DAMAGED)]
    assert sum(loss.lost for loss in new_losses) == len(lost)
    by_recording: dict[int, int] = {}
    for event in original:
        if event.position in lost:
            by_recording[event.recording_id] = by_recording.get(event.recording_id, 0) + 1
    assert {loss.recording_id: loss.lost for loss in new_losses} == by_recording
    assert all(loss.after_position == lost[0] - 1 for loss in new_losses)
    assert all(f"its positions {lost[0]}..{lost[-1]}" in loss.reason for loss in new_losses)
    for loss in new_losses:  # their time spans the lost events' (that of their batches)
        walls = [e.wall_ns for e in original if e.position in lost and e.recording_id == loss.recording_id]  # fmt: skip
        assert loss.first_wall_ns <= min(walls) and max(walls) <= loss.last_wall_ns
    assert len(losses) == len(original_losses) + len(new_losses)

    _check_passes(recovered)
    # Replay reads the new log, and warns of the lost events in a window that holds them.
    moment = str(new_losses[0].last_wall_ns)
    code, out, err = run_replay(["--db", str(recovered), "--at", moment, "--format", "json"])
    assert code == 0, err
    assert json.loads(out)["connections"]
    assert FROM_DAMAGED in err
    # The damaged file is as it was, and nothing was created beside it.
    assert _digest(damaged) == before
    assert sorted(p.name for p in damaged.parent.glob("damaged.db*")) == ["damaged.db"]


def test_overwritten_cells_lose_only_their_rows(fleet: Path, tmp_path: Path) -> None:
    """Bytes overwritten among a page's cells, its header intact: SQLite can hand back fewer
    rows, or rows out of place, without an error. What is missing is still counted."""
    damaged, on_page = _damaged_copy(fleet, "events", offset=2000)
    original, _, _ = _read(fleet)
    code, report, _ = _recover(damaged, tmp_path / "recovered.db")
    assert code == 1
    copied, lost = _tables(report)["events"]
    assert copied + lost == len(original) and 0 < lost <= len(on_page)
    events, losses, _ = _read(tmp_path / "recovered.db")
    assert sum(loss.lost for loss in losses if loss.reason.startswith(FROM_DAMAGED)) == lost
    # The events of the pages around it are all there.
    around = [e[1:] for e in original if e.position < on_page[0] or e.position > on_page[-1]]
    found = [e[1:] for e in events]
    assert all(event in found for event in around)
    _check_passes(tmp_path / "recovered.db")


def test_a_snapshot_missing_rows_is_left_out_whole(fleet: Path, tmp_path: Path) -> None:
    """Part of a snapshot would close every connection whose row was lost: it goes whole."""
    damaged, _ = _damaged_copy(fleet, "snapshot_connections")
    original, _, _ = _read(fleet)
    code, report, _ = _recover(damaged, tmp_path / "recovered.db")
    assert code == 1
    counts = _tables(report)
    with sqlite3.connect(fleet) as conn:
        for table in SNAPSHOT_TABLES:
            (total,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            assert sum(counts[table]) == total, table
    left_out = [n for n in report["notes"] if "is left out: some of its rows" in n]
    assert left_out and counts["events"] == (len(original) - len(left_out), len(left_out))

    events, losses, _ = _read(tmp_path / "recovered.db")
    snapshot_losses = [loss for loss in losses if loss.reason.startswith("a snapshot")]
    assert len(snapshot_losses) == len(left_out) and all(loss.lost == 1 for loss in snapshot_losses)
    snapshots = [e for e in original if e.kind == Kind.SNAPSHOT]
    assert sum(e.kind == Kind.SNAPSHOT for e in events) == len(snapshots) - len(left_out)
    _check_passes(tmp_path / "recovered.db")
    code, _, err = run_replay(["--db", str(tmp_path / "recovered.db"), "--at", "-0s"])
    assert code == 0, err


def test_a_whole_log_is_copied_as_it_was(fleet: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    code, report, err = _recover(fleet, copy)
    assert code == 0 and err == ""
    assert report["whole"] and not report["notes"]
    assert _read(copy)[:2] == _read(fleet)[:2]
    _check_passes(copy)
    # Every answer of replay is the same, connection ids too (no position moved).
    for command in (["--at", "+3s"], ["--at", "+9s", "--window", "0s"], ["--at", "-0s"],
                    ["--at", "+5s", "--view", "processes"], ["info"]):  # fmt: skip
        args = [*command, "--format", "json"]
        first = run_replay([*args, "--db", str(fleet)])
        second = run_replay([*args, "--db", str(copy)])
        assert first[0] == second[0] == 0, (first, second)
        assert first[1].replace(str(fleet), str(copy)) == second[1], args
        assert first[2] == second[2], args


def test_a_recording_left_open_is_closed_in_the_new_log(tmp_path: Path) -> None:
    """built_log's recording is open, recorded by this live process: no one appends to the
    new log, which says where the recording ended."""
    db = tmp_path / "open.db"
    with built_log(db) as (_, builder):
        build_workload(builder, [(kind, i) for i in range(20) for kind in ("pair", "close")])
    code, report, _ = _recover(db, tmp_path / "recovered.db")
    assert code == 0, report
    assert any("was open in the damaged log" in note for note in report["notes"])
    (recording,) = _read(tmp_path / "recovered.db")[2]
    (was,) = _read(db)[2]
    assert was.stop_reason is None
    assert recording.stop_reason == "crashed" and recording.stopped_mono_ns == was.last_mono_ns
    code, out, _ = run_replay(["db", "check", "--db", str(tmp_path / "recovered.db")])
    assert code == 0 and "recordings: ok: 1 of 1 closed" in out


def test_committed_transactions_in_the_write_ahead_log_are_recovered(tmp_path: Path) -> None:
    """A recorder killed before a checkpoint leaves committed batches in the -wal file: they
    are read (the file is then opened read-only, not immutable), and neither file written."""
    db = tmp_path / "live.db"
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    with built_log(db) as (_, builder):
        build_workload(builder, [(kind, i) for i in range(20) for kind in ("pair", "flush")])
        builder.flush()
        for name in ("live.db", "live.db-wal"):  # while the writer's connection holds the WAL
            shutil.copyfile(tmp_path / name, crashed / name)
    wal = crashed / "live.db-wal"
    assert wal.stat().st_size > 0
    before = {path.name: _digest(path) for path in (crashed / "live.db", wal)}
    code, report, _ = _recover(crashed / "live.db", tmp_path / "recovered.db")
    assert code == 0, report
    assert _read(tmp_path / "recovered.db")[0] == _read(db)[0]
    assert {path.name: _digest(path) for path in (crashed / "live.db", wal)} == before


BAD_SOURCES: dict[str, tuple[Callable[[Path], Path | str], str]] = {
    "missing": (lambda d: d / "absent.db", "no log at"),
    "not SQLite": (lambda d: _text_file(d / "notes.txt"), "is not a SQLite database"),
    "a directory": (lambda d: d, "is a directory"),
    "not a log": (lambda d: _foreign(d / "other.db"), "is a SQLite database but not a scope"),
    "PostgreSQL": (lambda d: "postgresql://scope@db.example/scope", "for SQLite log files"),
}


def _text_file(path: Path) -> Path:
    path.write_text("these are not the bytes of a database\n" * 100)
    return path


def _foreign(path: Path) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    return path


def _one_line_error(args: list[str], needle: str) -> None:
    code, out, err = run_replay(args)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, (code, out, err)
    assert "Traceback" not in err and needle in lines[0], lines[0]


@pytest.mark.parametrize("case", BAD_SOURCES, ids=list(BAD_SOURCES))
def test_bad_sources_are_refused_in_one_line(tmp_path: Path, case: str) -> None:
    make, needle = BAD_SOURCES[case]
    source = make(tmp_path)
    _one_line_error(["db", "recover", str(source), "--db", str(tmp_path / "new.db")], needle)
    assert not (tmp_path / "new.db").exists()


def test_an_existing_new_log_is_never_written(fleet: Path, tmp_path: Path) -> None:
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"anything at all")
    _one_line_error(["db", "recover", str(fleet), "--db", str(existing)], "exists")
    _one_line_error(["db", "recover", str(fleet), "--db", str(fleet)], "would overwrite the log")
    assert existing.read_bytes() == b"anything at all"
    _one_line_error(["db", "recover", str(fleet)], "--db NEW is required")
    _one_line_error(
        ["db", "recover", str(fleet), "--db", "postgresql://scope@db.example/scope"],
        "a new SQLite file",
    )
