"""Retention without an archive (``--archive none``) by hand, on real SQLite and PostgreSQL
logs: a cut drops the oldest positions and keeps the state at the cut (eventlog.seed), so
that every moment after it is answered byte for byte as the uncut log answered it (a store
made afresh, and one made before the cut), and a moment that would read the dropped history
is refused with one line, never answered from what is left."""

from __future__ import annotations

import json
from pathlib import Path

from eventlog.archive import boundary
from eventlog.location import LogLocation, resolve
from eventlog.reader import LogReader
from eventlog.store import Purpose, open_log
from replay.derived.store import _must_rebuild, event_digest, log_state
from replay.derived.tables import FORMAT
from tests.cli import assert_one_line_error, run_cli
from tests.integration.log.test_retention import (
    EVENTS,
    answers,
    batch_walls,
    compact,
    live_events,
    write_log,
)
from tests.recording import db_argument

WINDOW = "2s"
WINDOW_NS = 2 * 10**9


def after(walls: list[int], cut: int, count: int = 6) -> list[int]:
    """Moments whose window begins after ``cut``, spread to the log's end: at ``count``
    batches' ends and just before each (a batch's end is a change of the answer)."""
    later = [t for t in walls if t - WINDOW_NS > cut + 1]
    picked = {later[i * (len(later) - 1) // (count - 1)] for i in range(count)} if later else set()
    return sorted({t + d for t in picked for d in (-1, 0)})


def drop(db: str, before: int) -> str:
    return compact(db, before, Path("none"))


def test_dropped_history_changes_no_answer_after_the_cut(
    log_location: LogLocation, tmp_path: Path
) -> None:
    write_log(log_location)
    db = db_argument(log_location)
    walls = batch_walls(log_location)
    cuts = [walls[len(walls) // 3], walls[2 * len(walls) // 3]]
    at = [after(walls, cut) for cut in cuts]
    assert len(at[1]) >= 8, at
    uncut = [answers(db, tmp_path / f"uncut-{i}", at[i], False, WINDOW) for i in range(2)]

    said = drop(db, cuts[0])
    assert "dropped" in said
    with open_log(log_location, Purpose.READ) as store:
        edge = boundary(store)
        assert edge.dropped and edge.archive is None and edge.archived_upto > 0
        assert edge.archived_upto + live_events(log_location) == LogReader(store).head()
    # Made afresh from the seed and the live log, and made before the cut: the same answers.
    assert answers(db, tmp_path / "fresh-0", at[0], False, WINDOW) == uncut[0]
    assert answers(db, tmp_path / "uncut-0", at[0], False, WINDOW) == uncut[0]

    # A moment whose window reaches into the dropped history: one line, exit 2.
    env = {"SCOPE_CACHE_DIR": str(tmp_path / "fresh-0")}
    for moment in (walls[1], cuts[0], cuts[0] + WINDOW_NS // 2):
        refused = run_cli("scope-replay", "--db", db, "--at", str(moment), "--window", WINDOW,
                          env=env)  # fmt: skip
        assert_one_line_error(refused, 2, "dropped", "--archive none")
    exported = run_cli("scope-replay", "export", "--db", db, "--from", str(walls[0]), "--to",
                       str(walls[-1]), "-o", str(tmp_path / "out"), env=env)  # fmt: skip
    assert_one_line_error(exported, 2, "dropped")

    # A second cut folds on from the first one's seed.
    drop(db, cuts[1])
    assert answers(db, tmp_path / "fresh-1", at[1], False, WINDOW) == uncut[1]
    assert answers(db, tmp_path / "fresh-0", at[1], False, WINDOW) == uncut[1]

    check = run_cli("scope-replay", "db", "check", "--db", db)
    assert check.returncode == 0, check.stdout
    assert "dropped (--archive none)" in check.stdout
    info = run_cli("scope-replay", "info", "--db", db, "--format", "json", env=env)
    assert info.returncode == 0, info.stderr
    storage = json.loads(info.stdout)["storage"]
    assert storage["archive"] == "none" and storage["archive_segments"] == 0
    assert storage["dropped_to"] is not None and storage["dropped_to"] < storage["last_commit"]
    assert live_events(log_location) < EVENTS * 2 // 3


def test_an_archive_and_a_dropped_history_do_not_mix(
    sqlite_location: LogLocation, tmp_path: Path
) -> None:
    write_log(sqlite_location, 10_000)
    db = db_argument(sqlite_location)
    walls = batch_walls(sqlite_location)
    compact(db, walls[len(walls) // 3], tmp_path / "archive")
    refused = run_cli("scope-replay", "compact", "--db", db, "--before",
                      str(walls[len(walls) // 2]), "--archive", "none")  # fmt: skip
    assert_one_line_error(refused, 2, "cannot be dropped")

    other = tmp_path / "other.db"
    write_log(resolve(str(other)), 10_000)
    drop(str(other), walls[len(walls) // 3])
    refused = run_cli("scope-replay", "compact", "--db", str(other), "--before",
                      str(walls[len(walls) // 2]), "--archive", str(tmp_path / "a2"))  # fmt: skip
    assert_one_line_error(refused, 2, "dropped")


def test_a_store_that_stopped_inside_the_dropped_history_is_made_again(
    sqlite_location: LogLocation,
) -> None:
    """A store synced up to a position the log has since dropped cannot fold on from there
    (the positions after it are gone), whatever the log now says of that position: it is
    made again from the seed. One synced past the cut goes on."""
    write_log(sqlite_location, 10_000)
    drop(db_argument(sqlite_location), batch_walls(sqlite_location)[5])
    with open_log(sqlite_location, Purpose.READ) as store:
        reader = LogReader(store)
        state = log_state(reader)
        cut = boundary(store).archived_upto
        meta = {"format": str(FORMAT), "log_id": state.log_id}
        for synced, rebuilt in ((cut - 1, True), (cut, False), (state.head, False)):
            said = {"synced_position": str(synced), "synced_digest": event_digest(reader, synced)}
            assert _must_rebuild({**meta, **said}, reader, state) is rebuilt, synced
        reader.close()
