"""Retention without an archive (``--archive none``) by hand, on real SQLite and PostgreSQL
logs: a cut drops the oldest positions and keeps the state at the cut (eventlog.seed), so
that every moment after it is answered byte for byte as the uncut log answered it (a store
made afresh, and one made before the cut), and a moment that would read the dropped history
is refused with one line, never answered from what is left."""

from __future__ import annotations

import json
from pathlib import Path

from eventlog.archive import boundary
from eventlog.events import TCP_ESTABLISHED
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
    cache_dir,
    compact,
    live_events,
    run_in_process,
    write_log,
)
from tests.integration.serve.conftest import serving
from tests.logbuilder import Builder, built_log, wall
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


POSTMASTER, WORKER = 100, 300
HELD = ("127.0.0.1:5432", "127.0.0.1:40000")  # a backend's, forked for it
HANDED = ("127.0.0.1:5432", "127.0.0.1:40001")  # a worker's, handed to it (not by fork)
LATE = ("127.0.0.1:5432", "127.0.0.1:40002")  # forked for after the last snapshot before the cut,
# by a child of a child


def _holders_snapshot(b: Builder, at: float, handed_to: int) -> None:
    shown = [(*HELD, TCP_ESTABLISHED, 1001), (*HANDED, TCP_ESTABLISHED, handed_to)]
    if at > 4.52:
        shown.append((*LATE, TCP_ESTABLISHED, 1002))
    b.snapshot(at, shown, processes=[(POSTMASTER, "postgres"), (1001, "postgres"),
                                     (1002, "postgres"), (WORKER, "worker")])  # fmt: skip


def _prefork_log(b: Builder) -> None:
    """A pre-fork server: a connection its forked backend holds to the end, one handed to a
    worker between two snapshots, one forked for after the last snapshot before the cut, and
    many short ones, each served by a backend of its own."""
    b.fork(0.2, WORKER, 1, "worker")
    b.snapshot(0.5, [], processes=[(POSTMASTER, "postgres"), (WORKER, "worker")])
    b.connect(1.0, 1, 200, "psql", HELD[1], HELD[0])
    b.accept(1.0, 2, POSTMASTER, "postgres", *HELD)
    b.fork(1.001, 1001, POSTMASTER, "postgres")
    b.connect(1.2, 3, 201, "psql", HANDED[1], HANDED[0])
    b.accept(1.2, 4, POSTMASTER, "postgres", *HANDED)
    for i in range(80):
        at = 1.5 + i * 0.1
        if i == 30:
            b.connect(4.52, 5, 203, "psql", LATE[1], LATE[0])
            b.accept(4.52, 6, POSTMASTER, "postgres", *LATE)
            # through a child that exits: only the cut's seed keeps that fork
            b.fork(4.521, 1005, POSTMASTER, "postgres")
            b.fork(4.522, 1002, 1005, "postgres")
            b.exit(4.523, 1005, "postgres", ppid=POSTMASTER)
        port = 41000 + i
        local, remote = "127.0.0.1:5432", f"127.0.0.1:{port}"
        b.connect(at, 10 + 2 * i, 202, "pgbench", remote, local)
        b.accept(at, 11 + 2 * i, POSTMASTER, "postgres", local, remote)
        b.fork(at + 0.001, 2000 + i, POSTMASTER, "postgres")
        b.owner(at + 0.05, 11 + 2 * i, 2000 + i, "postgres", local, remote, POSTMASTER)
        b.close(at + 0.051, 10 + 2 * i, 202, "pgbench", remote, local)
        b.close(at + 0.051, 11 + 2 * i, POSTMASTER, "postgres", local, remote)
        b.exit(at + 0.052, 2000 + i, "postgres", ppid=POSTMASTER)
        if i % 5 == 4:
            b.flush()
        if i % 20 == 5:  # between two short connections, at 2.07, 4.07, ...
            _holders_snapshot(b, at + 0.07, POSTMASTER if at < 3 else WORKER)
    b.exec(9.9, 999, "end-marker")


def _story(db: str, at: list[int], cache: Path) -> list[str]:
    said = []
    with cache_dir(cache):
        for moment in at:
            code, out, err = run_in_process("scope-replay", ["--db", db, "--at", str(moment),
                                            "--window", WINDOW, "--format", "json", "--story"])  # fmt: skip
            assert code == 0, err
            said.append(out)
    return said


def test_dropped_history_keeps_who_holds_the_sockets_open_at_the_cut(tmp_path: Path) -> None:
    """Who serves a socket open at the cut rests on forks, exits and snapshots before it: the
    seed keeps them, so the backend and the worker (and when it was handed the socket) are
    said after the cut as before."""
    with built_log(tmp_path / "prefork.db") as (location, b):
        _prefork_log(b)
    db = db_argument(location)
    walls = batch_walls(location)
    cut = next(w for w in walls if w > wall(5.0))
    at = after(walls, cut)
    uncut = _story(db, at, tmp_path / "uncut")
    rows = json.loads(uncut[-1])["connections"]
    served = {r["client"]: (r["server_pid"], r["note"] or "") for r in rows}
    assert served[f"{HELD[1]}"][0] == 1001
    assert served[f"{HANDED[1]}"][0] == WORKER and "handed" in served[f"{HANDED[1]}"][1]
    assert served[f"{LATE[1]}"] == (1002, "")  # by its fork, which the cut drops

    drop(db, cut)
    assert _story(db, at, tmp_path / "fresh") == uncut
    assert _story(db, at, tmp_path / "uncut") == uncut


def test_the_slider_counts_nothing_in_the_dropped_history(tmp_path: Path) -> None:
    """/api/span over a log whose oldest third was dropped: the slices that end by then count
    null (not the few batches the cut kept), the rest count the events after it."""
    location = resolve(str(tmp_path / "log.db"))
    write_log(location)
    walls = batch_walls(location)
    cut = walls[len(walls) // 3]
    drop(str(location.path), cut)
    with open_log(location, Purpose.READ) as store:
        seed = boundary(store).seed
        assert seed is not None
        dropped_wall_ns = seed.dropped_wall_ns
        kept_after = sum(
            b.last_position - b.first_position + 1
            for b in LogReader(store).batches()
            if b.min_wall_ns // 2 + b.max_wall_ns // 2 > dropped_wall_ns
        )
    with serving(Path(str(location.path))) as served, served.client() as client:
        span = client.get("/api/span", params={"buckets": 30}).json()
    assert span["dropped_to_ns"] == dropped_wall_ns
    counts = span["event_counts"]
    unknown = [i for i, count in enumerate(counts) if count is None]
    assert unknown and unknown == list(range(len(unknown))), counts
    slice_end = span["start_ns"] + len(unknown) * span["bucket_ns"] - 1
    assert slice_end <= dropped_wall_ns < slice_end + span["bucket_ns"]
    assert sum(c for c in counts if c is not None) == kept_after > 0
