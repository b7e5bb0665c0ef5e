"""Recording a part of a machine under a name: ``--netns`` and ``--host-id``.

Three namespaces carry traffic at once: the recorded one (a client in A calling a server in
B over a veth pair, and a loopback pair inside A), B, and the root namespace. Only A's
sockets, processes and conntrack are in the log. In eBPF mode no user-space step filters
kernel events, so the absence of B's and the root's shows the kernel dropped them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from eventlog.events import CONNECTION_KINDS, PROCESS_KINDS, Kind
from eventlog.location import LogLocation, resolve
from eventlog.reader import LogReader
from eventlog.store import Purpose, open_log
from recorder.netns import NetnsScope
from recorder.workload import run_client, running_server
from tests.cli import run_cli
from tests.ebpf import require_ebpf
from tests.netns import can_make_namespaces, veth_pair
from tests.recording import recording

pytestmark = [pytest.mark.ebpf, pytest.mark.root]


@pytest.fixture
def location(tmp_path: Path) -> LogLocation:
    require_ebpf()
    if not can_make_namespaces():
        pytest.fail("network namespaces cannot be made here (root and iproute2 needed)")
    return resolve(str(tmp_path / "scope.db"))


def test_only_the_named_namespace_is_recorded(location: LogLocation, tmp_path: Path) -> None:
    count = 6
    with (
        veth_pair("10.218") as (left, right),
        running_server("ns-b-srv", hosts=(right.address,), netns=right.name, workdir=tmp_path)
        as b_server,
        running_server("ns-a-srv", netns=left.name, workdir=tmp_path) as a_server,
        running_server("ns-root-srv", workdir=tmp_path) as root_server,
    ):  # fmt: skip
        scope = NetnsScope.of([f"/run/netns/{left.name}"])
        with recording(location, snapshot_interval_s=0.5, host_id="edge-a", netns=scope) as run:
            clients = [
                run_client("ns-a-cli", right.address, b_server.port, count, netns=left.name),
                run_client("ns-a-lo", "127.0.0.1", a_server.port, count, netns=left.name),
                run_client("ns-b-lo", right.address, b_server.port, count, netns=right.name),
                run_client("ns-root-cli", "127.0.0.1", root_server.port, count),
            ]
            for client in clients:
                assert client.wait(timeout=60) == 0
            time.sleep(1.2)  # a snapshot while the servers still run
        a_inode = left.inode
    events = run.events()
    sockets = [e for e in events if e.kind in CONNECTION_KINDS]
    assert sockets and {e.netns for e in sockets} == {a_inode}
    comms = {e.comm for e in sockets if e.kind == Kind.CONNECT}
    assert comms == {"ns-a-cli", "ns-a-lo"}
    cross = [e for e in sockets if e.kind == Kind.CONNECT and e.comm == "ns-a-cli"]
    assert len(cross) == count
    # Processes: only those whose network namespace is A (the clients started there).
    processes = [e for e in events if e.kind in PROCESS_KINDS]
    assert processes and {e.netns for e in processes} == {a_inode}
    recording_row = run.recording()
    assert recording_row.host_id == "edge-a"
    assert recording_row.options is not None and recording_row.options["netns"] == [a_inode]
    with open_log(location, Purpose.READ) as store:
        reader = LogReader(store)
        snapshots = [reader.snapshot(e.position) for e in events if e.kind == Kind.SNAPSHOT]
    assert snapshots
    for snapshot in snapshots:
        assert {p.netns for p in snapshot.processes} <= {a_inode}
        assert {c.netns for c in snapshot.connections} <= {a_inode}
    assert any(
        p.comm == "python3" or "ns-a-srv" in p.cmdline for s in snapshots for p in s.processes
    )


def test_a_namespace_that_does_not_exist_is_one_clear_error(tmp_path: Path) -> None:
    result = run_cli("scope-record", "--db", str(tmp_path / "x.db"), "--netns", "no-such-ns")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "scope-record: error: --netns no-such-ns: No such file or directory"
    ]
    assert not (tmp_path / "x.db").exists()
