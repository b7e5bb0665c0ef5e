"""Retention without an archive (``--archive none``) by hand, on real SQLite and PostgreSQL
logs: a cut drops the oldest positions and keeps the state at the cut (eventlog.seed), so
that every moment after it is answered byte for byte as the uncut log answered it (a store
made afresh, and one made before the cut), and a moment that would read the dropped history
is refused with one line, never answered from what is left."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from eventlog import retention
from eventlog.archive import boundary
from eventlog.events import TCP_ESTABLISHED, ConntrackEntry, Kind
from eventlog.location import LogLocation, resolve
from eventlog.reader import LogReader
from eventlog.store import Purpose, open_log
from replay.derived import copy
from replay.derived.seed import make_seed
from replay.derived.store import _must_rebuild, event_digest, log_state
from replay.derived.tables import FORMAT
from tests.cli import assert_one_line_error, run_cli
from tests.factories import ROOT_NETNS, ip
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
from tests.scenarios import (
    IPS_CONFIRMED_SEEN,
    IPS_DNAT,
    IPS_SNAT,
    build_cross_host_log,
    build_workload_log,
)

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


# NAT entries (conntrack) of connections open across the cut, on one host (10.0.0.2): known
# only from a snapshot's dump, from CT_NEW before the cut, updated after it, destroyed after
# it, ended by a dump after it that no longer holds it, a published port (DNAT to the server
# of this host), and one whose socket opens only after the cut; and entries without NAT.
def _entry(
    ct_id: int, orig: tuple[str, str], reply: tuple[str, str], status: int
) -> ConntrackEntry:
    (src, sport), (dst, dport) = (_split(e) for e in orig)
    (rsrc, rsport), (rdst, rdport) = (_split(e) for e in reply)
    return ConntrackEntry(ROOT_NETNS, src, dst, sport, dport, rsrc, rdst, rsport, rdport,
                          status, TCP_ESTABLISHED, ct_id, 0, 0)  # fmt: skip


def _split(endpoint: str) -> tuple[bytes, int]:
    address, _, port = endpoint.rpartition(":")
    return ip(address), int(port)


VIP, BACKEND = "10.99.0.10:80", "10.0.0.5:9090"
NAT_SOCKETS = {  # socket id -> (local, remote, its entry)
    100: ("10.0.0.2:40100", VIP, _entry(100, ("10.0.0.2:40100", VIP),
                                        (BACKEND, "10.0.0.2:40100"), IPS_DNAT)),
    1: ("10.0.0.2:40001", VIP, _entry(1, ("10.0.0.2:40001", VIP),
                                      (BACKEND, "10.0.0.2:40001"), IPS_DNAT)),
    2: ("10.0.0.2:40002", "10.0.0.7:5432", _entry(2, ("10.0.0.2:40002", "10.0.0.7:5432"),
                                                  ("10.0.0.7:5432", "10.0.0.12:61002"), IPS_SNAT)),
    3: ("10.0.0.2:40003", "10.99.0.11:443", _entry(3, ("10.0.0.2:40003", "10.99.0.11:443"),
                                                   ("10.0.0.6:8443", "10.0.0.2:40003"), IPS_DNAT)),
    4: ("10.0.0.2:5432", "10.0.0.9:50004", _entry(4, ("10.0.0.9:50004", "10.0.0.2:8080"),
                                                  ("10.0.0.2:5432", "10.0.0.9:50004"), IPS_DNAT)),
    5: ("10.0.0.2:40005", VIP, _entry(5, ("10.0.0.2:40005", VIP),
                                      (BACKEND, "10.0.0.2:40005"), IPS_DNAT)),
}  # fmt: skip
PLAIN = [_entry(200 + i, (f"10.0.0.2:{40200 + i}", "10.0.0.7:443"),
                ("10.0.0.7:443", f"10.0.0.2:{40200 + i}"), IPS_CONFIRMED_SEEN) for i in range(2)]  # fmt: skip


def _nat_log(b: Builder) -> None:
    """The NAT_SOCKETS' connections among short ones, in batches of half a second; the cut
    falls at about 5 s (see the test)."""
    entry = {sock: e for sock, (_, _, e) in NAT_SOCKETS.items()}
    opened: set[int] = set()

    def change(at: float, sock: int, kind: Kind = Kind.CT_NEW) -> None:
        b.conntrack(at, entry[sock], kind)

    def opens(at: float, sock: int) -> None:
        local, remote, _ = NAT_SOCKETS[sock]
        (b.accept if sock == 4 else b.connect)(at, sock, 300 + sock, "app", local, remote)
        opened.add(sock)

    def closes(at: float, sock: int) -> None:
        b.close(at, sock, 300 + sock, "app", *NAT_SOCKETS[sock][:2])
        opened.discard(sock)

    def snapshot(at: float, dumped: list[ConntrackEntry]) -> None:
        shown = [(NAT_SOCKETS[s][0], NAT_SOCKETS[s][1], TCP_ESTABLISHED, 300 + s)
                 for s in sorted(opened)]  # fmt: skip
        b.snapshot(at, shown, conntrack=dumped)

    # Entry 100's only sighting is this dump: the next one, not this, is the snapshot before
    # the one that shows the sockets' holders (which the seed keeps for them).
    snapshot(0.5, [entry[100], PLAIN[0]])
    snapshot(0.55, [entry[100], PLAIN[0]])

    # In time order, each at or before the short connection it comes before.
    steps: list[tuple[float, Callable[[float], None]]] = [
        (0.6, partial(opens, sock=100)),
        *((at - 0.0001, partial(change, sock=sock)) for at, sock in ((1.0, 1), (1.2, 2),
                                                                     (1.4, 3), (1.6, 4))),
        *((at, partial(opens, sock=sock)) for at, sock in ((1.0, 1), (1.2, 2), (1.4, 3),
                                                           (1.6, 4))),
        (2.0, partial(change, sock=5)),
        (2.5, partial(b.conntrack, entry=PLAIN[1])),
        (3.05, partial(snapshot, dumped=[*(entry[s] for s in range(1, 6)), entry[100], *PLAIN])),
        (6.0, partial(change, sock=2, kind=Kind.CT_UPDATE)),
        (6.5, partial(opens, sock=5)),
        (8.05, partial(snapshot, dumped=[*(entry[s] for s in (2, 3, 4, 5, 100)), *PLAIN])),
        (8.4998, partial(closes, sock=3)),
        (8.5, partial(change, sock=3, kind=Kind.CT_DESTROY)),
    ]  # fmt: skip
    steps.sort(key=lambda step: step[0])
    for i in range(92):
        at = round(0.7 + i * 0.1, 2)
        while steps and steps[0][0] <= at:
            when, step = steps.pop(0)
            step(when)
        port = 41000 + i
        b.connect(at, 1000 + i, 202, "curl", f"127.0.0.1:{port}", "127.0.0.1:8080")
        b.close(at + 0.02, 1000 + i, 202, "curl", f"127.0.0.1:{port}", "127.0.0.1:8080")
        if i % 5 == 4:
            b.flush()
    assert not steps, steps
    b.exec(9.95, 999, "end-marker")


def _nat_of(said: str) -> dict[str, tuple[str | None, str | None]]:
    """Each connection's NAT fields, by its client (or its server, if it has no client)."""
    rows = json.loads(said)["connections"]
    return {r["client"] or r["server"]: (r["nat_destination"], r["nat_source"]) for r in rows
            if r["nat_destination"] or r["nat_source"]}  # fmt: skip


def test_dropped_history_keeps_the_nat_of_connections_open_at_the_cut(
    log_location: LogLocation, tmp_path: Path
) -> None:
    """Connections whose NAT entries conntrack reported before the cut say the same NAT
    after it: the seed keeps the rows that describe the NAT entries open at the cut, and
    only those (not an entry without NAT, which no answer shows)."""
    with built_log(log_location) as (_, b):
        _nat_log(b)
    db = db_argument(log_location)
    walls = batch_walls(log_location)
    cut, second_cut = (next(w for w in walls if w > wall(s)) for s in (5.0, 6.6))
    at, second_at = after(walls, cut), after(walls, second_cut, 3)
    uncut = answers(db, tmp_path / "uncut", at, False, WINDOW)
    second_uncut = answers(db, tmp_path / "uncut", second_at, False, WINDOW)
    # The uncut log's answers do show them: while each entry lives, and not after.
    first, last = _nat_of(uncut[0]), _nat_of(uncut[-2])
    assert first["10.0.0.2:40001"] == (BACKEND, None)  # ended by the dump at 8.05 s
    assert "10.0.0.2:40001" not in last
    assert first["10.0.0.2:40003"] == ("10.0.0.6:8443", None)  # destroyed at 8.5 s
    for client, nat in (("10.0.0.2:40100", (BACKEND, None)), ("10.0.0.2:40005", (BACKEND, None)),
                        ("10.0.0.2:40002", (None, "10.0.0.12:61002")),
                        ("10.0.0.9:50004", ("10.0.0.2:5432", None))):  # fmt: skip
        assert first[client] == nat and last[client] == nat, client

    drop(db, cut)
    assert answers(db, tmp_path / "fresh", at, False, WINDOW) == uncut
    assert answers(db, tmp_path / "uncut", at, False, WINDOW) == uncut
    with open_log(log_location, Purpose.READ) as store:
        seed = boundary(store).seed
        assert seed is not None
        kept = seed.tables["events"].to_pylist()
    kinds = {int(Kind.CT_NEW), int(Kind.CT_UPDATE), int(Kind.CT_DESTROY)}
    kept_entries = {json.loads(e["extra"])["ct_id"] for e in kept if e["kind"] in kinds}
    assert kept_entries == {1, 2, 3, 4, 5}, kept_entries

    # A second cut keeps them from the first one's seed (entry 100's dump, entry 2's CT_NEW
    # before the first cut and its CT_UPDATE after it).
    drop(db, second_cut)
    assert answers(db, tmp_path / "fresh-2", second_at, False, WINDOW) == second_uncut
    assert answers(db, tmp_path / "fresh", second_at, False, WINDOW) == second_uncut


def _says_stop(when: int) -> Callable[[], bool]:
    """A ``stopping`` that says so the ``when``-th time it is asked."""
    asked = itertools.count(1)
    return lambda: next(asked) == when


def test_a_dropping_cut_asked_to_stop_leaves_the_log_as_it_was(
    sqlite_location: LogLocation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recorder stopping (its retention's ``stopping``) gives up a cut that drops its
    history wherever the cut asks, as an archived cut stops between its segments: the log
    is as it was, and the cut is made whole the next time, every answer after it the uncut
    log's."""
    monkeypatch.setattr(copy, "CHUNK_POSITIONS", 2_500)  # the seed's store synced in ranges
    write_log(sqlite_location, 10_000)
    db = db_argument(sqlite_location)
    walls = batch_walls(sqlite_location)
    at = after(walls, walls[len(walls) // 2])
    uncut = answers(db, tmp_path / "uncut", at, False, WINDOW)
    policy = retention.RetentionPolicy(None, walls[-1] - walls[len(walls) // 2],
                                       min_cut_positions=1, seed_maker=make_seed)  # fmt: skip
    with open_log(sqlite_location, Purpose.ADMIN) as store:
        head = LogReader(store).head()
        stopped = retention.apply_policy(store, policy, walls[-1], lambda: True)
        assert stopped is not None and stopped.stopped
        upto = retention.cut_before(store, walls[len(walls) // 2])
        stop_at = 0
        while True:  # stopped at each place it asks, until it asks no more
            stop_at += 1
            result = retention.cut(store, upto, None, _says_stop(stop_at), make_seed)
            if not result.stopped:
                break
            edge = boundary(store)
            assert (result.archived_upto, edge.archived_upto, edge.seed) == (0, 0, None)
            assert live_events(sqlite_location) == head
        # Asked as the seed's store is synced (two ranges) and as its rows are read.
        assert stop_at > 5, stop_at
        assert result.archived_upto == upto
    assert answers(db, tmp_path / "fresh", at, False, WINDOW) == uncut
    assert answers(db, tmp_path / "uncut", at, False, WINDOW) == uncut


@pytest.mark.parametrize("scenario", ["nat-workload", "cross-host"])
def test_an_export_after_the_cut_is_the_uncut_logs(scenario: str, tmp_path: Path) -> None:
    """`export` of a range after the cut writes the files the uncut log gave, for connections
    that span the cut too (paired through NAT entries, and across hosts, that the cut
    dropped)."""
    db = str(tmp_path / "log.db")
    if scenario == "cross-host":
        build_cross_host_log(db, 31)
    else:
        build_workload_log(db, 12, with_nat=True, operations=400)
    walls = batch_walls(resolve(db))
    cut = walls[len(walls) // 3]

    def export(cache: str, name: str) -> dict[str, bytes]:
        out = tmp_path / name
        result = run_cli("scope-replay", "export", "--db", db, "--from", str(cut + WINDOW_NS),
                         "--to", str(walls[-1]), "--format", "csv", "-o", str(out),
                         env={"SCOPE_CACHE_DIR": str(tmp_path / f"cache-{cache}")})  # fmt: skip
        assert result.returncode == 0, result.stderr
        return {p.name: p.read_bytes() for p in sorted(out.iterdir())}

    uncut = export("before", "uncut")
    assert uncut["connections.csv"].count(b"\n") > 5
    drop(db, cut)
    assert export("fresh", "fresh") == uncut
    assert export("before", "from-the-store-made-before") == uncut
