"""The process that served a connection, behind pre-fork servers: real servers, real kernel.

A tiny pre-fork server (accept in the parent, fork, serve in the child), a server that hands
accepted sockets to a worker over a unix socket (SCM_RIGHTS), one whose forked child keeps an
idle copy, a client that forks a child to talk, and a real PostgreSQL under ``pgbench -C``
with a held connection whose backend pid the server names. Each is replayed at a moment
during it: the table (with the story) and the processes map. Where the held connection is
still open when the recording ends, no close names its process: a /proc snapshot does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from eventlog.events import Kind
from eventlog.location import LogLocation, resolve
from eventlog.store import Purpose, open_log
from replay.derived.store import open_derived
from replay.table import ConnectionRow, TableResult, render, table_at
from replay.views.api import topology_in
from replay.views.topology import Options, Topology, View
from tests.capabilities import require
from tests.ebpf import require_ebpf
from tests.postgres import PostgresServer, server_env
from tests.recording import RecordingRun, by_kind, recording, wait_for

pytestmark = pytest.mark.ebpf

REPO = Path(__file__).resolve().parents[3]
WINDOW = "300s"  # every connection of a test is in the window of its moment


@pytest.fixture
def location(tmp_path: Path) -> LogLocation:
    require_ebpf()
    return resolve(str(tmp_path / "scope.db"))


@dataclass
class Server:
    port: int
    acceptor: int
    worker: int  # the handoff server's worker, else 0


@contextmanager
def running(mode: str) -> Iterator[Server]:
    """A server of tests.prefork_servers, in a session of its own (its SIGTERM ends it all)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.prefork_servers", mode],
        stdout=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        port, acceptor, worker = map(int, process.stdout.readline().split())
        yield Server(port, acceptor, worker)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def exchange(port: int) -> tuple[socket.socket, int]:
    """A connection to a test server, after its serving process named itself."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    conn.sendall(b"hello\n")
    return conn, int(conn.recv(64))


def client_port(row: ConnectionRow) -> int:
    return int(row.client.rsplit(":", 1)[1])


@dataclass
class Replayed:
    table: TableResult
    topology: Topology

    def rows_to(self, port: int) -> dict[int, ConnectionRow]:
        """The rows of connections to ``port``, by client port."""
        return {client_port(row): row for row in self.table.rows if row.server.endswith(f":{port}")}

    def edge(self, row: ConnectionRow) -> bool:
        """Whether the processes map links the row's client process to its server process."""
        source, target = f"{row.host};{row.client_pid}", f"{row.host};{row.server_pid}"
        return (source, target) in self.topology.edges


def replay_at(location: LogLocation, at_ns: int) -> Replayed:
    with open_log(location, Purpose.READ) as store, open_derived(store) as derived:
        result = table_at(derived, str(at_ns), WINDOW, story=True)
        # The test process is the recorder's own: its connections are on the map only so.
        topology = topology_in(derived, str(at_ns), WINDOW, View.processes, Options(show_self=True))
    render(result, "json")  # the story renders
    return Replayed(result, topology)


def forked_children(run: RecordingRun, parent: int) -> set[int]:
    forks = by_kind(run.events(), Kind.FORK)
    return {e.pid for e in forks if e.pid is not None and (e.extra or {}).get("ppid") == parent}


# Snapshots often enough that one comes soon after a test's connections settle.
SNAPSHOT_INTERVAL_S = 0.5


def snapshot_after(run: RecordingRun, mark_ns: int) -> None:
    """Wait until a /proc snapshot begun after ``mark_ns`` is in the log."""
    wait_for(
        lambda: any(e.wall_ns > mark_ns for e in by_kind(run.events(), Kind.SNAPSHOT)),
        timeout=60,
        interval=0.3,
    )


def moment_while_held() -> int:
    """A moment with everything before it recorded, and some time after it before the next step."""
    time.sleep(0.3)
    at_ns = time.time_ns()
    time.sleep(0.3)
    return at_ns


def test_prefork_server_and_forking_client(location: LogLocation) -> None:
    """Each connection is served by the child forked for it, the one still open at T too; the
    client that forked a child to talk is that child; the map links them."""
    with recording(location, snapshot_interval_s=0) as run, running("prefork") as server:
        served: dict[int, int] = {}
        for _ in range(5):
            conn, pid = exchange(server.port)
            served[conn.getsockname()[1]] = pid
            conn.close()
        talked = subprocess.run(
            [sys.executable, "-m", "tests.prefork_servers", "client", str(server.port)],
            capture_output=True, text=True, cwd=REPO, timeout=60, check=True,
        )  # fmt: skip
        talker, talker_port, talker_served = map(int, talked.stdout.split())
        held, held_pid = exchange(server.port)
        held_port = held.getsockname()[1]
        served[held_port] = held_pid
        at_ns = moment_while_held()
        held.close()
        time.sleep(0.5)  # the child's close reaches the log
    replayed = replay_at(location, at_ns)
    rows = replayed.rows_to(server.port)
    children = forked_children(run, server.acceptor)
    for port, pid in served.items():
        row = rows[port]
        assert (row.server_pid, row.server_served_how) == (pid, "fork"), row
        assert row.server_open_pid == server.acceptor and pid in children
        assert row.note is None
        assert replayed.edge(row)
    assert rows[held_port].state == "open"
    talker_row = rows[talker_port]
    assert (talker_row.client_pid, talker_row.server_pid) == (talker, talker_served)
    assert talker_row.client_open_pid != talker and talker_row.client_served_how == "fork"
    assert replayed.edge(talker_row)
    assert not any(
        target == f"{row.host};{server.acceptor}" for _, target in replayed.topology.edges
    )


def test_server_handing_sockets_to_a_worker(location: LogLocation) -> None:
    """Sockets accepted by one process and passed to a worker over a unix socket are the
    worker's, and the row says when the handover happened is not recorded."""
    with recording(location, snapshot_interval_s=0) as run, running("handoff") as server:
        ports = []
        for _ in range(5):
            conn, pid = exchange(server.port)
            assert pid == server.worker
            ports.append(conn.getsockname()[1])
            conn.close()
        held, held_pid = exchange(server.port)
        held_port = held.getsockname()[1]
        at_ns = moment_while_held()
        held.close()
        time.sleep(0.5)
    assert held_pid == server.worker
    owners = by_kind(run.events(), Kind.OWNER, server.worker)
    assert len(owners) >= 6 and all((e.extra or {})["owner"] == server.acceptor for e in owners)
    replayed = replay_at(location, at_ns)
    rows = replayed.rows_to(server.port)
    for port in [*ports, held_port]:
        row = rows[port]
        assert (row.server_pid, row.server_open_pid) == (server.worker, server.acceptor), row
        assert row.server_served_how == "passed"
        assert row.note is not None and "at a moment not recorded" in row.note
        assert replayed.edge(row)
    assert rows[held_port].state == "open"


def test_socket_held_by_parent_and_child_is_ambiguous(location: LogLocation) -> None:
    """A socket the parent serves while the child it forked keeps a copy, open when the
    recording ends: the row keeps the accepting process and its note names both."""
    with running("shared") as server:
        with recording(location, snapshot_interval_s=0) as run:
            held, pid = exchange(server.port)
            held_port = held.getsockname()[1]
            at_ns = moment_while_held()
        held.close()
    assert pid == server.acceptor
    (child,) = forked_children(run, server.acceptor)
    row = replay_at(location, at_ns).rows_to(server.port)[held_port]
    assert row.state == "open" and row.server_pid == server.acceptor
    assert row.server_served_how == "shared"
    assert row.note is not None and f"({server.acceptor})" in row.note and f"({child})" in row.note
    assert "which of them serves it is not recorded" in row.note


@pytest.mark.postgres
def test_postgres_connections_are_their_backends(
    location: LogLocation, pg_server: PostgresServer, tmp_path: Path
) -> None:
    """pgbench -C: every connection is served by a backend the postmaster forked, none by the
    postmaster; a held connection by exactly the backend the server names for it."""
    pgbench = pg_server.bindir / "pgbench"
    require(pgbench.exists(), "pgbench beside the server's binaries (apt-get install postgresql)")
    postmaster = int((pg_server.datadir / "postmaster.pid").read_text().split()[0])
    script = tmp_path / "select.sql"
    script.write_text("SELECT 1;\n")
    with recording(location, snapshot_interval_s=0) as run, pg_server.admin() as held:
        named = held.execute("SELECT pg_backend_pid(), inet_client_port()").fetchone()
        assert named is not None
        backend, held_port = int(str(named[0])), int(str(named[1]))
        subprocess.run(
            [str(pgbench), "-n", "-C", "-c", "2", "-t", "20",
             "-f", str(script), "-h", "127.0.0.1", "-p", str(pg_server.port), "-U", "scope",
             "postgres"],
            capture_output=True, text=True, timeout=120, env=server_env(), check=True,
        )  # fmt: skip
        at_ns = moment_while_held()
        held.close()
        time.sleep(0.5)
    backends = forked_children(run, postmaster)
    replayed = replay_at(location, at_ns)
    rows = replayed.rows_to(pg_server.port)
    bench_rows = [row for row in rows.values() if row.client_comm == "pgbench"]
    assert len(bench_rows) >= 40
    for row in bench_rows:
        assert row.server_pid in backends and row.server_pid != postmaster, row
        assert row.server_open_pid == postmaster and row.server_served_how == "fork"
        assert replayed.edge(row)
    assert len({row.server_pid for row in bench_rows}) == len(bench_rows)  # one backend each
    held_row = rows[held_port]
    assert held_row.state == "open"
    assert (held_row.server_pid, held_row.server_open_pid) == (backend, postmaster)
    assert replayed.edge(held_row)


@pytest.mark.parametrize("mode", ["prefork", "handoff"])
def test_a_connection_open_at_the_end_is_its_holders_by_snapshot(
    location: LogLocation, mode: str
) -> None:
    """A held connection, then more the acceptor forks (hands) on, still open when the
    recording ends: no close names its process, the snapshot after them does. The pre-fork
    server's is the child forked for it, since its fork; the hand-off server's is the worker,
    handed it by the first snapshot that showed it there."""
    with running(mode) as server:
        with recording(location, snapshot_interval_s=SNAPSHOT_INTERVAL_S) as run:
            held, held_pid = exchange(server.port)
            held_port = held.getsockname()[1]
            for _ in range(3):  # the acceptor has dropped its copy of the held one once
                conn, _pid = exchange(server.port)  # it accepted the next
                conn.close()
            snapshot_after(run, time.time_ns())
            at_ns = moment_while_held()
        held.close()
    replayed = replay_at(location, at_ns)
    row = replayed.rows_to(server.port)[held_port]
    assert row.state == "open" and row.server_open_pid == server.acceptor
    assert (row.server_pid, row.server_served_how) == (held_pid, "snapshot"), row
    seen = row.server_served_seen_ns
    assert seen is not None and row.server_open_ns is not None
    assert row.server_open_ns <= seen <= at_ns
    if mode == "prefork":
        assert held_pid in forked_children(run, server.acceptor)
        (fork,) = [e for e in by_kind(run.events(), Kind.FORK, held_pid)]
        assert row.server_served_since_ns == fork.wall_ns and row.note is None
    else:
        assert held_pid == server.worker and row.server_served_since_ns is None
        handed_by = row.server_handed_by_ns
        assert handed_by is not None and handed_by <= seen
        assert row.note is not None and row.note.startswith(
            f"handed from {row.server_open_comm} ({server.acceptor}) to "
        )
    assert replayed.edge(row)


@pytest.mark.postgres
def test_postgres_connection_open_at_the_end_is_its_backend_by_snapshot(
    location: LogLocation, pg_server: PostgresServer, tmp_path: Path
) -> None:
    """A connection held open past the recording's end while pgbench -C has the postmaster
    fork a backend per connection: exactly its backend, by the snapshot after them (without
    it, every backend forked since would be named)."""
    pgbench = pg_server.bindir / "pgbench"
    require(pgbench.exists(), "pgbench beside the server's binaries (apt-get install postgresql)")
    postmaster = int((pg_server.datadir / "postmaster.pid").read_text().split()[0])
    script = tmp_path / "select.sql"
    script.write_text("SELECT 1;\n")
    held = None
    try:
        with recording(location, snapshot_interval_s=SNAPSHOT_INTERVAL_S) as run:
            held = pg_server.admin()
            named = held.execute("SELECT pg_backend_pid(), inet_client_port()").fetchone()
            assert named is not None
            backend, held_port = int(str(named[0])), int(str(named[1]))
            subprocess.run(
                [str(pgbench), "-n", "-C", "-c", "2", "-t", "10",
                 "-f", str(script), "-h", "127.0.0.1", "-p", str(pg_server.port), "-U", "scope",
                 "postgres"],
                capture_output=True, text=True, timeout=120, env=server_env(), check=True,
            )  # fmt: skip
            snapshot_after(run, time.time_ns())
            at_ns = moment_while_held()
    finally:
        if held is not None:
            held.close()
    assert len(forked_children(run, postmaster) - {backend}) >= 20  # pgbench's backends
    replayed = replay_at(location, at_ns)
    held_row = replayed.rows_to(pg_server.port)[held_port]
    assert held_row.state == "open" and held_row.server_open_pid == postmaster
    assert (held_row.server_pid, held_row.server_served_how) == (backend, "snapshot"), held_row
    assert held_row.note is None and held_row.server_served_since_ns is not None
    assert replayed.edge(held_row)
