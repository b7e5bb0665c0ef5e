"""The process that served a socket at a moment, from forks, exits, OWNER events and the
holders /proc snapshots showed (replay.derived.owners), on hand-written logs: every case of
the rule, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from eventlog.events import TCP_ESTABLISHED
from eventlog.timefmt import format_ns
from tests.cli import run_cli
from tests.engine_golden import run_replay
from tests.logbuilder import built_log, wall

SERVER, CLIENT = "127.0.0.1:5432", "127.0.0.1:40000"
POSTMASTER, BACKEND, OTHER, PSQL = 100, 200, 300, 900


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOPE_CACHE_DIR", str(tmp_path / "cache"))


def server_side(db: Path, at: float) -> dict[str, Any]:
    """The one row's server side at ``at`` seconds, with its story."""
    code, out, err = run_replay(
        ["--db", str(db), "--at", str(wall(at)), "--window", "60s", "--format", "json", "--story"]
    )
    assert code == 0, err
    (row,) = json.loads(out)["connections"]
    story = row["server_story"]
    served = story["served_by"]
    return {
        "pid": row["server_pid"],
        "how": served["how"],
        "accepted": story["accepted_by"]["pid"],
        "note": row["note"],
        "state": row["state"],
        "since": served["since"],
        "seen": served["seen_at"],
        "handed": (served["handed_after"], served["handed_by"]),
    }


def at(seconds: float) -> str:
    """A moment as the story and the notes write it."""
    return format_ns(wall(seconds))


def snapshot(b: Any, seconds: float, *holders: int) -> None:
    """A /proc snapshot at ``seconds`` showing the server's socket held by ``holders``."""
    b.snapshot(seconds, [(SERVER, CLIENT, TCP_ESTABLISHED, holders), (CLIENT, SERVER, TCP_ESTABLISHED, PSQL)],
               processes=[(pid, "postgres") for pid in holders])  # fmt: skip


def opened(b: Any) -> None:
    """psql connects at 1 s, the postmaster accepts."""
    b.connect(1.0, 1, PSQL, "psql", CLIENT, SERVER)
    b.accept(1.0, 2, POSTMASTER, "postgres", SERVER, CLIENT)


def closed_by(b: Any, at: float, pid: int) -> None:
    """``pid`` closes the server's socket (an OWNER event) at ``at``; both ends close."""
    b.owner(at, 2, pid, "postgres", SERVER, CLIENT, POSTMASTER)
    b.close(at + 0.1, 1, PSQL, "psql", CLIENT, SERVER)
    b.close(at + 0.1, 2, POSTMASTER, "postgres", SERVER, CLIENT)


def test_a_forked_child_that_closed_it_served_it_since_its_fork(tmp_path: Path) -> None:
    db = tmp_path / "fork.db"
    with built_log(db) as (_, b):
        opened(b)
        b.fork(2.0, BACKEND, POSTMASTER, "postgres")
        closed_by(b, 5.0, BACKEND)
        b.exec(10.0, 4242, "cron")  # the log goes on to 10 s
        b.flush()
    before = server_side(db, 1.5)
    assert (before["pid"], before["how"], before["note"]) == (POSTMASTER, "opened", None)
    during = server_side(db, 3.0)
    assert (during["pid"], during["how"], during["accepted"]) == (BACKEND, "fork", POSTMASTER)
    assert during["note"] is None and during["state"] == "open"
    after = server_side(db, 6.0)
    assert (after["pid"], after["state"]) == (BACKEND, "closed")
    # scope-query's connections: each as it ended, served by the backend
    query = run_cli("scope-query", "--db", str(db), "--format", "csv",
                    "SELECT server_pid, server_open_pid, server_served_how FROM connections")  # fmt: skip
    assert query.returncode == 0, query.stderr
    assert query.stdout.splitlines()[1:] == [f"{BACKEND},{POSTMASTER},fork"]


def test_a_socket_closed_by_a_process_it_was_not_forked_to_was_handed_over(
    tmp_path: Path,
) -> None:
    db = tmp_path / "passed.db"
    with built_log(db) as (_, b):
        opened(b)
        closed_by(b, 5.0, OTHER)
        b.exec(10.0, 4242, "cron")  # the log goes on to 10 s
        b.flush()
    during = server_side(db, 3.0)
    assert (during["pid"], during["how"]) == (OTHER, "passed")
    assert "at a moment not recorded" in during["note"]


def test_parent_and_child_holding_it_is_said_not_picked(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    with built_log(db) as (_, b):
        opened(b)
        b.fork(2.0, BACKEND, POSTMASTER, "postgres")
        b.exec(10.0, 4242, "cron")  # the log goes on to 10 s
        b.flush()
    during = server_side(db, 3.0)
    assert (during["pid"], during["how"]) == (POSTMASTER, "shared")
    assert f"({POSTMASTER})" in during["note"] and f"({BACKEND})" in during["note"]


def test_the_child_left_when_its_parent_exits_holds_it(tmp_path: Path) -> None:
    db = tmp_path / "alone.db"
    with built_log(db) as (_, b):
        opened(b)
        b.fork(2.0, BACKEND, POSTMASTER, "postgres")
        b.exit(2.5, POSTMASTER, "postgres")
        b.exec(10.0, 4242, "cron")  # the log goes on to 10 s
        b.flush()
    assert server_side(db, 2.2)["how"] == "shared"
    after = server_side(db, 3.0)
    assert (after["pid"], after["how"], after["note"]) == (BACKEND, "alone", None)


def test_a_fork_after_the_opener_closed_it_passes_nothing_on(tmp_path: Path) -> None:
    """The opener (a process that forks) closed it at 2 s; a child forked at 3 s, while the
    socket waits for its peer, never held it."""
    db = tmp_path / "released.db"
    with built_log(db) as (_, b):
        opened(b)
        b.owner(2.0, 2, POSTMASTER, "postgres", SERVER, CLIENT, POSTMASTER)
        b.fork(3.0, BACKEND, POSTMASTER, "postgres")
        b.exec(10.0, 4242, "cron")  # the log goes on to 10 s
        b.flush()
    after = server_side(db, 4.0)
    assert (after["pid"], after["how"], after["note"]) == (POSTMASTER, "opened", None)


def test_forks_through_generations(tmp_path: Path) -> None:
    """A shell pipeline: the opener's child forks a grandchild, which closes the socket."""
    db = tmp_path / "generations.db"
    with built_log(db) as (_, b):
        opened(b)
        b.fork(2.0, BACKEND, POSTMASTER, "postgres")
        b.fork(2.5, OTHER, BACKEND, "postgres")
        closed_by(b, 4.0, OTHER)
        b.exec(10.0, 4242, "cron")  # the log goes on to 10 s
        b.flush()
    during = server_side(db, 3.0)
    assert (during["pid"], during["how"]) == (OTHER, "fork")


def test_a_snapshot_settles_which_child_holds_it_while_the_parent_forks_on(
    tmp_path: Path,
) -> None:
    """The postmaster forks a backend for the connection, then more backends; the socket is
    still open at the end. Until a snapshot shows its holder, each is named; from the
    snapshot on, the backend serves it, since its fork, whatever the postmaster forks after."""
    db = tmp_path / "snapshot.db"
    with built_log(db) as (_, b):
        opened(b)
        b.fork(2.0, BACKEND, POSTMASTER, "postgres")
        b.fork(3.0, OTHER, POSTMASTER, "postgres")
        snapshot(b, 4.0, BACKEND)
        b.fork(6.0, OTHER + 1, POSTMASTER, "postgres")
        b.exec(10.0, 4242, "cron")  # the log goes on to 10 s
        b.flush()
    before = server_side(db, 3.5)
    assert (before["pid"], before["how"]) == (POSTMASTER, "shared")
    assert f"({OTHER})" in before["note"] and f"({BACKEND})" in before["note"]
    for moment in (4.5, 7.0):
        after = server_side(db, moment)
        assert (after["pid"], after["how"], after["note"]) == (BACKEND, "snapshot", None)
        assert (after["since"], after["seen"], after["accepted"]) == (at(2.0), at(4.0), POSTMASTER)
        assert after["handed"] == ("", "") and after["state"] == "open"
    query = run_cli("scope-query", "--db", str(db), "--format", "csv",
                    "SELECT server_pid, server_served_how, server_served_seen_ns "
                    "FROM connections")  # fmt: skip
    assert query.returncode == 0, query.stderr
    assert query.stdout.splitlines()[1:] == [f"{BACKEND},snapshot,{wall(4.0)}"]


def test_a_snapshot_names_the_parent_and_child_that_share_it(tmp_path: Path) -> None:
    """The snapshot shows parent and first child holding it: those two are named, not the
    child forked before it that the snapshot shows without it."""
    db = tmp_path / "both.db"
    with built_log(db) as (_, b):
        opened(b)
        b.fork(2.0, BACKEND, POSTMASTER, "postgres")
        b.fork(2.5, OTHER, POSTMASTER, "postgres")
        snapshot(b, 3.0, POSTMASTER, BACKEND)
        b.exec(10.0, 4242, "cron")  # the log goes on to 10 s
        b.flush()
    during = server_side(db, 4.0)
    assert (during["pid"], during["how"], during["seen"]) == (POSTMASTER, "shared", at(3.0))
    assert f"({POSTMASTER})" in during["note"] and f"({BACKEND})" in during["note"]
    assert f"({OTHER})" not in during["note"] and "/proc snapshot" in during["note"]


def test_a_socket_a_snapshot_shows_with_its_opener_alone_is_the_openers(tmp_path: Path) -> None:
    """The child forked after the accept dropped its copy: the snapshot shows the opener."""
    db = tmp_path / "kept.db"
    with built_log(db) as (_, b):
        opened(b)
        b.fork(2.0, BACKEND, POSTMASTER, "postgres")
        snapshot(b, 3.0, POSTMASTER)
        b.exec(10.0, 4242, "cron")  # the log goes on to 10 s
        b.flush()
    assert server_side(db, 2.5)["how"] == "shared"
    after = server_side(db, 4.0)
    assert (after["pid"], after["how"], after["note"], after["seen"]) == (
        POSTMASTER, "opened", None, at(3.0))  # fmt: skip


def test_snapshots_bound_a_hand_over_the_kernel_did_not_show(tmp_path: Path) -> None:
    """Accepted at 1 s, shown with the acceptor at 2 s and with a worker (no fork of the
    acceptor's) at 4 s, still open at the end: the worker's from 4 s, handed after 2 s."""
    db = tmp_path / "handed.db"
    with built_log(db) as (_, b):
        opened(b)
        snapshot(b, 2.0, POSTMASTER)
        snapshot(b, 4.0, OTHER)
        snapshot(b, 6.0, OTHER)
        b.exec(10.0, 4242, "cron")  # the log goes on to 10 s
        b.flush()
    before = server_side(db, 3.0)
    assert (before["pid"], before["how"], before["note"]) == (POSTMASTER, "opened", None)
    for moment in (5.0, 7.0):
        after = server_side(db, moment)
        assert (after["pid"], after["how"], after["since"]) == (OTHER, "snapshot", "")
        assert after["handed"] == (at(2.0), at(4.0)) and after["seen"] == at(4.0)
        assert after["note"] == (
            f"handed from postgres ({POSTMASTER}) to postgres ({OTHER}) at a moment not "
            f"recorded (not by a fork), after {at(2.0)}, by {at(4.0)}"
        )


def test_a_hand_over_a_close_confirms_is_bounded_by_the_first_snapshot_of_it(
    tmp_path: Path,
) -> None:
    """The worker a snapshot showed at 4 s closes the socket at 8 s: passed, handed by 4 s;
    the moment before any snapshot shows it with the worker is the acceptor's (it held it
    at 2 s)."""
    db = tmp_path / "handed-closed.db"
    with built_log(db) as (_, b):
        opened(b)
        snapshot(b, 2.0, POSTMASTER)
        snapshot(b, 4.0, OTHER)
        closed_by(b, 8.0, OTHER)
        b.exec(10.0, 4242, "cron")  # the log goes on to 10 s
        b.flush()
    assert (server_side(db, 3.0)["pid"], server_side(db, 3.0)["how"]) == (POSTMASTER, "opened")
    for moment in (5.0, 9.0):
        after = server_side(db, moment)
        assert (after["pid"], after["how"]) == (OTHER, "passed")
        assert after["handed"] == (at(2.0), at(4.0))
        assert after["note"].endswith(f"after {at(2.0)}, by {at(4.0)}")
    # with no snapshot after the accept, the close bounds it
    db2 = tmp_path / "handed-unseen.db"
    with built_log(db2) as (_, b):
        opened(b)
        closed_by(b, 8.0, OTHER)
        b.exec(10.0, 4242, "cron")
        b.flush()
    unseen = server_side(db2, 5.0)
    assert (unseen["pid"], unseen["how"], unseen["handed"]) == (OTHER, "passed", ("", at(8.0)))


def test_a_note_names_ten_holders_and_counts_the_rest(tmp_path: Path) -> None:
    """No snapshot: the postmaster and the twelve backends it forked since the accept all
    hold it, as far as the log tells; the note names the first ten by when they came."""
    db = tmp_path / "many.db"
    with built_log(db) as (_, b):
        opened(b)
        for index in range(12):
            b.fork(2.0 + index / 10, BACKEND + index, POSTMASTER, "postgres")
        b.exec(10.0, 4242, "cron")  # the log goes on to 10 s
        b.flush()
    during = server_side(db, 4.0)
    assert (during["pid"], during["how"]) == (POSTMASTER, "shared")
    named = ", ".join(f"postgres ({pid})" for pid in [POSTMASTER, *range(BACKEND, BACKEND + 9)])
    assert during["note"].startswith(f"held by {named} and 3 more at ")
