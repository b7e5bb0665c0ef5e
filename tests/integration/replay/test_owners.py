"""The process that served a socket at a moment, from forks, exits and OWNER events
(replay.derived.owners), on hand-written logs: every case of the rule, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

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
    return {
        "pid": row["server_pid"],
        "how": story["served_by"]["how"],
        "accepted": story["accepted_by"]["pid"],
        "note": row["note"],
        "state": row["state"],
    }


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
