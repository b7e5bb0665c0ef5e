"""`scope-replay db check`: whether a log is whole. Reads only.

Three questions: does the database say its pages are sound (SQLite's integrity check; a
PostgreSQL server keeps its own), do the committed positions run from 1 to the head with
every one an event and no batch overlapping another, and is every recording closed (or
being recorded by a live recorder now)?
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from urllib.parse import quote

from sqlalchemy import Connection, text

from eventlog.archive import Boundary, boundary
from eventlog.errors import LogOpenError, ScopeError
from eventlog.location import LogLocation
from eventlog.recordings import process_alive
from eventlog.store import Purpose, open_log

MOST_SHOWN = 5  # problems of one kind listed before "and N more"


@dataclass(frozen=True)
class Finding:
    what: str  # integrity, positions, recordings
    ok: bool
    detail: str


def check_log(location: LogLocation) -> list[Finding]:
    # The pages first, on their own: a damaged log may not open for the other questions.
    integrity = _integrity(location)
    try:
        with open_log(location, Purpose.READ) as store:
            edge = boundary(store)
            with store.connect() as conn:
                return [integrity, _positions(conn, edge), _recordings(conn)]
    except ScopeError as exc:
        if integrity.ok:
            raise
        return [integrity, Finding("positions and recordings", False, f"not read: {exc}")]


def _integrity(location: LogLocation) -> Finding:
    if not location.is_sqlite or location.path is None:
        return Finding("integrity", True, "not checked here: the PostgreSQL server keeps it")
    if not location.path.is_file():
        raise LogOpenError(f"{location.display()} does not exist")
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{quote(str(location.path))}?mode=ro", uri=True)
        ) as conn:
            rows = [row[0] for row in conn.execute("PRAGMA integrity_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise LogOpenError(f"{location.display()} is not a SQLite database") from exc
        return Finding("integrity", False, f"SQLite cannot read its pages: {exc}")
    if rows == ["ok"]:
        return Finding("integrity", True, "SQLite finds every page sound")
    return Finding("integrity", False, _listed(rows))


def _positions(conn: Connection, edge: Boundary) -> Finding:
    """Positions from 1 to the head: those archived in segments that follow each other
    (eventlog.archive) or dropped (eventlog.seed), the rest in the live log."""
    archived = edge.archived_upto
    batches = conn.execute(
        text(
            "SELECT first_position, last_position FROM batches WHERE last_position > :a "
            "ORDER BY last_position"
        ),
        {"a": archived},
    ).all()
    count, low, high = conn.execute(
        text("SELECT count(*), min(position), max(position) FROM events WHERE position > :a"),
        {"a": archived},
    ).one()
    problems = _archive_problems(edge)
    expected = archived + 1
    for first, last in batches:
        if first != expected:
            gap = "a gap" if first > expected else "an overlap"
            problems.append(f"{gap} before batch {first}..{last} (expected from {expected})")
        expected = last + 1
    head = expected - 1
    if (high or 0) > head:
        problems.append(f"events after the last committed position {head} (up to {high})")
    if count != head - archived or (count and low != archived + 1):
        problems.append(
            f"{count} events where positions {archived + 1}..{head} need {head - archived}"
        )
    if problems:
        return Finding("positions", False, _listed(problems))
    archive = f"; 1..{archived} in the archive" if archived else ""
    if edge.dropped:
        archive = f"; 1..{archived} dropped (--archive none), the state at {archived} kept"
    return Finding(
        "positions",
        True,
        f"{archived + 1}..{head}: {count} events in {len(batches)} batches{archive}",
    )


def _archive_problems(edge: Boundary) -> list[str]:
    if not edge.archived_upto or edge.dropped:
        return []
    if edge.archive is None:
        return [f"positions 1..{edge.archived_upto} are archived, but no archive is named"]
    expected = 0
    problems = []
    for segment in edge.archive.segments(edge.archived_upto):
        if segment.after != expected:
            problems.append(f"the archive's segment {segment.name} does not follow {expected}")
        if not (edge.archive.directory / segment.name).is_dir():
            problems.append(f"the archive's segment {segment.name} is missing")
        expected = segment.upto
    if expected != edge.archived_upto:
        problems.append(
            f"the archive ends at {expected}, the log says it holds up to {edge.archived_upto}"
        )
    return problems


def _recordings(conn: Connection) -> Finding:
    rows = conn.execute(
        text("SELECT id, host_id, recorder_pid, stop_reason FROM recordings ORDER BY id")
    ).all()
    open_ones = []
    for recording, host, pid, stop_reason in rows:
        if stop_reason is not None:
            continue
        if pid is not None and process_alive(pid):
            open_ones.append(f"recording {recording} is being recorded (recorder pid {pid})")
        else:
            open_ones.append(
                f"recording {recording} was not closed (its recorder is gone): the next "
                f"scope-record of host {host} marks it crashed"
            )
    closed = len(rows) - len(open_ones)
    return Finding("recordings", True, "; ".join([f"{closed} of {len(rows)} closed", *open_ones]))


def _listed(problems: list[str]) -> str:
    shown = "; ".join(problems[:MOST_SHOWN])
    more = len(problems) - MOST_SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")
