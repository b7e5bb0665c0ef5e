"""Several recorders, each recording a part of this machine as a host of its own, append to
one PostgreSQL store at once: each recording whole and in order, nothing twice, and a
recorder that starts or is killed meanwhile disturbs none of the others."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from eventlog import migrate
from eventlog.events import Kind, LoggedEvent
from eventlog.location import resolve
from eventlog.reader import LogReader
from eventlog.store import Purpose, SchemaState, open_log, schema_state
from recorder.workload import run_client, running_server
from tests.ebpf import require_ebpf
from tests.fleet import record_host, stop
from tests.load import committed
from tests.netns import can_make_namespaces, veth_pair
from tests.postgres import PostgresServer
from tests.recording import wait_for

pytestmark = [pytest.mark.ebpf, pytest.mark.root, pytest.mark.postgres, pytest.mark.slow]

COUNT = 150  # connections per client run


def _by_host(url: str) -> dict[str, list[LoggedEvent]]:
    with open_log(resolve(url), Purpose.READ) as store:
        reader = LogReader(store)
        try:
            hosts = {r.id: r.host_id for r in reader.recordings()}
            found: dict[str, list[LoggedEvent]] = {}
            for event in reader.events():
                found.setdefault(hosts[event.recording_id], []).append(event)
            return found
        finally:
            reader.close()


def test_three_hosts_one_store(pg_url: str, tmp_path: Path) -> None:
    require_ebpf()
    if not can_make_namespaces():
        pytest.fail("network namespaces cannot be made here (root and iproute2 needed)")
    with (
        veth_pair("10.219") as (a, b),
        veth_pair("10.220") as (c, _spare),
        running_server("fleet-srv-b", hosts=(b.address,), netns=b.name, workdir=tmp_path)
        as server_b,
        running_server("fleet-srv-c", netns=c.name, workdir=tmp_path) as server_c,
    ):  # fmt: skip
        recorders = {host: record_host(pg_url, tmp_path, host, ns)
                     for host, ns in (("host-a", a), ("host-b", b))}  # fmt: skip
        try:
            first = run_client("fleet-cli-a", b.address, server_b.port, COUNT, gap_ms=2,
                               netns=a.name)  # fmt: skip
            # A recorder starts while the others write, and is killed while it writes.
            recorders["host-c"] = record_host(pg_url, tmp_path, "host-c", c)
            doomed = run_client("fleet-cli-c", "127.0.0.1", server_c.port, COUNT, gap_ms=2,
                                netns=c.name)  # fmt: skip
            time.sleep(0.4)
            recorders["host-c"].kill()
            recorders["host-c"].wait()
            assert doomed.wait(timeout=60) == 0 and first.wait(timeout=60) == 0
            second = run_client("fleet-cli-a2", b.address, server_b.port, COUNT, netns=a.name)
            assert second.wait(timeout=60) == 0
            time.sleep(0.5)
            c_inode = c.inode
        finally:
            for recorder in recorders.values():
                if recorder.poll() is None:
                    stop(recorder)
    assert recorders["host-a"].returncode == 0 and recorders["host-b"].returncode == 0
    # Every connection of the clients on A, its accept on B: once each, none lost.
    _assert_whole(pg_url, {"fleet-cli-a": COUNT, "fleet-cli-a2": COUNT}, {"fleet-srv-b": 2 * COUNT})
    events = _by_host(pg_url)
    # What the killed recorder committed is there, in order, and only C's.
    c_events = events.get("host-c", [])
    assert {e.netns for e in c_events if e.kind in (Kind.CONNECT, Kind.ACCEPT)} <= {c_inode}


def _assert_whole(url: str, connects: dict[str, int], accepts: dict[str, int]) -> None:
    """The clients' connects on host-a and the servers' accepts on host-b, once each, each
    recording in order, and the log's positions without a gap."""
    events = _by_host(url)
    a_events, b_events = events["host-a"], events["host-b"]
    assert Counter(e.comm for e in a_events if e.kind == Kind.CONNECT) == connects
    assert Counter(e.comm for e in b_events if e.kind == Kind.ACCEPT) == accepts
    for host_events in (a_events, b_events):
        sockets = [e.sock_id for e in host_events if e.kind == Kind.CONNECT and e.sock_id]
        assert len(sockets) == len(set(sockets))  # nothing twice
        monos = [e.mono_ns for e in host_events if e.kind != Kind.SNAPSHOT]
        assert monos == sorted(monos)  # each recording in order
    with open_log(resolve(url), Purpose.READ) as store:
        reader = LogReader(store)
        spans = reader.batches()
        reader.close()
    positions = [p for span in spans for p in range(span.first_position, span.last_position + 1)]
    assert positions == list(range(1, len(positions) + 1))  # the log's positions: no gap


def test_every_recorder_survives_an_outage_of_the_store(
    own_pg_server: PostgresServer, tmp_path: Path
) -> None:
    """The store goes away for 3 s under two recorders that both keep capturing: each keeps
    its events in memory, and both catch up when it is back, nothing lost or twice."""
    require_ebpf()
    if not can_make_namespaces():
        pytest.fail("network namespaces cannot be made here (root and iproute2 needed)")
    url = own_pg_server.create_database("fleet_outage")
    count = 1200
    with (
        veth_pair("10.221") as (a, b),
        running_server("outage-srv-b", hosts=(b.address,), netns=b.name, workdir=tmp_path)
        as server_b,
    ):  # fmt: skip
        recorders = {host: record_host(url, tmp_path, host, ns)
                     for host, ns in (("host-a", a), ("host-b", b))}  # fmt: skip
        try:
            client = run_client("outage-cli-a", b.address, server_b.port, count, gap_ms=3,
                                netns=a.name)  # fmt: skip
            time.sleep(0.5)
            own_pg_server.stop("immediate")
            time.sleep(3)
            own_pg_server.start()
            assert client.wait(timeout=120) == 0
            before = {host: committed(tmp_path / f"{host}.progress") for host in recorders}
            wait_for(
                lambda: all(committed(tmp_path / f"{h}.progress") > before[h] for h in recorders),
                timeout=60,
            )
        finally:
            codes = {host: stop(recorder) for host, recorder in recorders.items()}
    errors = {host: r.stderr.read() if r.stderr else "" for host, r in recorders.items()}
    assert codes == {"host-a": 0, "host-b": 0}, errors
    for stderr in errors.values():
        assert "Traceback" not in stderr
        assert "keeping events in memory" in stderr and "reachable again" in stderr
    _assert_whole(url, {"outage-cli-a": count}, {"outage-srv-b": count})
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT counters FROM recordings ORDER BY id").fetchall()
    counters = [json.loads(c) if isinstance(c, str) else c for (c,) in rows]
    assert len(counters) == 2 and all(c["kernel_lost"] == 0 for c in counters)


@pytest.mark.parametrize("schema", ["none", "older"])
def test_recorders_starting_at_once_all_start(pg_url: str, schema: str) -> None:
    """On an empty store, or one of the first schema holding a recording: one makes or
    upgrades the schema, under the store's migration lock; the others wait, and find it
    current. The recording already there is kept."""
    if schema == "older":
        with open_log(resolve(pg_url), Purpose.ADMIN) as store, store.connect() as conn:
            migrate.upgrade(conn, migrate.REVISIONS[0])
            conn.execute(
                text(
                    "INSERT INTO recordings (id, host_id, tool_version, mode, started_mono_ns, "
                    "started_wall_ns) VALUES (1, 'h', '0.0.1', 'ebpf', 100, 1000)"
                )
            )
            conn.commit()
    code = (
        "import sys; from eventlog.location import resolve; "
        "from eventlog.store import Purpose, open_log; "
        "open_log(resolve(sys.argv[1]), Purpose.RECORD).close()"
    )
    starters = [
        subprocess.Popen([sys.executable, "-c", code, pg_url], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [(s.wait(timeout=120), s.stderr.read() if s.stderr else "") for s in starters]
    assert [rc for rc, _ in results] == [0, 0, 0, 0], results
    with open_log(resolve(pg_url), Purpose.READ) as store, store.connect() as conn:
        assert schema_state(conn) == (SchemaState.CURRENT, migrate.head_revision())
        held = conn.execute(text("SELECT count(*) FROM recordings")).scalar()
    assert held == (1 if schema == "older" else 0)
