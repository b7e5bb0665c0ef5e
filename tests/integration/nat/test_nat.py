"""NAT through real namespaces, iptables rules and conntrack, made and removed by each test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from eventlog.events import Kind
from eventlog.location import LogLocation, resolve
from recorder.workload import run_client, running_server
from tests.capabilities import require
from tests.cli import BIN, run_cli
from tests.ebpf import require_ebpf
from tests.netns import can_make_namespaces, in_netns, veth_pair
from tests.recording import recording, wait_for

pytestmark = [pytest.mark.ebpf, pytest.mark.netns]


@pytest.fixture
def location(tmp_path: Path) -> LogLocation:
    require_ebpf()
    require(
        can_make_namespaces() and shutil.which("iptables") is not None,
        "root, iproute2 and iptables",
    )
    return resolve(str(tmp_path / "scope.db"))


def table_at(location: LogLocation, at_ns: int) -> list[dict]:  # type: ignore[type-arg]
    result = run_cli(
        "scope-replay",
        "--db",
        str(location.path),
        "--at",
        str(at_ns),
        "--window",
        "30s",
        "--format",
        "json",
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["connections"]  # type: ignore[no-any-return]


AGREED_FIELDS = ("id", "client", "server", "nat_destination", "nat_source", "direction",
                 "client_comm", "server_comm")  # fmt: skip


def assert_query_agrees(location: LogLocation, at_ns: int, comm: str) -> None:
    """scope-query's connections_at and connections views say what replay says about NAT."""
    expected = sorted(tuple(row[f] for f in AGREED_FIELDS) for row in table_at(location, at_ns))
    columns = ", ".join(AGREED_FIELDS)
    env = {"SCOPE_CACHE_DIR": str(Path(str(location.path)).parent / "cache")}
    at = run_cli(
        "scope-query", "--db", str(location.path), "--format", "json",
        f"SELECT {columns} FROM connections_at_ns({at_ns}, 30000000000) ORDER BY id", env=env,
    )  # fmt: skip
    assert at.returncode == 0, at.stderr
    assert sorted(tuple(row[f] for f in AGREED_FIELDS) for row in json.loads(at.stdout)) == expected
    ever = run_cli(
        "scope-query", "--db", str(location.path), "--format", "json",
        f"SELECT {columns} FROM connections WHERE client_comm = '{comm}' ORDER BY id", env=env,
    )  # fmt: skip
    assert ever.returncode == 0, ever.stderr
    mine = [e for e in expected if e[AGREED_FIELDS.index("client_comm")] == comm]
    assert sorted(tuple(row[f] for f in AGREED_FIELDS) for row in json.loads(ever.stdout)) == mine


def test_dnat_in_the_client_namespace_reaches_the_real_backend(
    location: LogLocation, tmp_path: Path
) -> None:
    count = 5
    with veth_pair("10.214") as (left, right), recording(location, snapshot_interval_s=0) as run:
        with running_server(
            "nat-backend", hosts=(right.address,), netns=right.name, workdir=tmp_path
        ) as server:
            in_netns(
                left.name,
                "ip",
                "route",
                "add",
                "10.99.0.0/24",
                "dev",
                f"va{left.name.split('-')[-1]}",
            )
            in_netns(left.name, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "10.99.0.10",
                     "--dport", "80", "-j", "DNAT", "--to-destination", f"{right.address}:{server.port}")  # fmt: skip
            client = run_client(
                "nat-client", "10.99.0.10", 80, count=count, hold_ms=50, netns=left.name
            )
            assert client.wait(timeout=60) == 0
            time.sleep(0.3)
            moment = time.time_ns()
            client_netns = left.inode
    events = run.events()
    ct = [e for e in events if e.kind in (Kind.CT_NEW, Kind.CT_UPDATE, Kind.CT_DESTROY)]
    assert len([e for e in ct if e.kind == Kind.CT_NEW and e.rport == 80]) == count
    assert {e.netns for e in ct if e.rport == 80} == {client_netns}
    rows = [r for r in table_at(location, moment) if r["client_comm"] == "nat-client"]
    assert len(rows) == count
    for row in rows:
        assert row["server"] == "10.99.0.10:80"
        assert row["nat_destination"] == f"{right.address}:{server.port}"
        assert (row["direction"], row["server_pid"], row["server_comm"]) == (
            "local",
            server.pid,
            "nat-backend",
        )
    assert_query_agrees(location, moment, "nat-client")


def test_only_translated_entries_are_read(location: LogLocation, tmp_path: Path) -> None:
    """A NAT rule makes conntrack track every connection of its namespace; only the
    translated ones are NAT's business. The kernel drops the rest: none is in the events or
    in the dumps, where the translated ones are in both, destroy included."""
    with veth_pair("10.217") as (left, right):
        with running_server(
            "only-backend", hosts=(right.address,), netns=right.name, workdir=tmp_path
        ) as server:
            in_netns(left.name, "ip", "route", "add", "10.98.0.0/24", "dev",
                     f"va{left.name.split('-')[-1]}")  # fmt: skip
            in_netns(left.name, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "10.98.0.10",
                     "--dport", "80", "-j", "DNAT", "--to-destination", f"{right.address}:{server.port}")  # fmt: skip
            # Closed entries are destroyed a second after, not two minutes (TIME_WAIT).
            in_netns(
                left.name, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1"
            )
            with recording(location, snapshot_interval_s=0.5) as run:
                translated = run_client(
                    "only-nat", "10.98.0.10", 80, count=3, hold_ms=1500, netns=left.name
                )
                direct = run_client(
                    "only-direct", right.address, server.port, count=3, hold_ms=1500,
                    netns=left.name,
                )  # fmt: skip
                assert translated.wait(timeout=60) == 0 and direct.wait(timeout=60) == 0
                wait_for(
                    lambda: any(e.kind == Kind.CT_DESTROY and e.rport == 80 for e in run.events()),
                    timeout=30,
                )
    env = {"SCOPE_CACHE_DIR": str(tmp_path / "cache")}
    seen = run_cli(
        "scope-query", "--db", str(location.path), "--format", "json",
        "SELECT change, orig_dport, status FROM conntrack WHERE orig_dst <> '127.0.0.1'", env=env,
    )  # fmt: skip
    assert seen.returncode == 0, seen.stderr
    rows = json.loads(seen.stdout)
    assert [r for r in rows if r["orig_dport"] == server.port] == []  # direct: never read
    assert all(r["status"] & 0x30 for r in rows), rows
    changes = {r["change"] for r in rows if r["orig_dport"] == 80}
    assert {"new", "destroy", "snapshot"} <= changes, changes
    # The namespace's sockets (one to follow it, two a dump) were made without a fork: a
    # child of the recorder would hold the recorder's sockets while it lived. (The recorder
    # is this process, whose only children are the clients.)
    forks = {
        e.pid
        for e in run.events()
        if e.kind == Kind.FORK and (e.extra or {}).get("ppid") == os.getpid()
    }
    assert forks == {translated.pid, direct.pid}


def test_port_forward_on_the_server_side(location: LogLocation, tmp_path: Path) -> None:
    with veth_pair("10.215") as (left, right), recording(location, snapshot_interval_s=0):
        with running_server(
            "fwd-backend", hosts=(right.address,), netns=right.name, workdir=tmp_path
        ) as server:
            in_netns(right.name, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-d", right.address,
                     "--dport", "8080", "-j", "DNAT", "--to-destination", f"{right.address}:{server.port}")  # fmt: skip
            client = run_client(
                "fwd-client", right.address, 8080, count=3, hold_ms=50, netns=left.name
            )
            assert client.wait(timeout=60) == 0
            time.sleep(0.3)
            moment = time.time_ns()
    rows = [r for r in table_at(location, moment) if r["client_comm"] == "fwd-client"]
    assert len(rows) == 3
    assert {(r["server"], r["nat_destination"], r["server_comm"]) for r in rows} == {
        (f"{right.address}:8080", f"{right.address}:{server.port}", "fwd-backend")
    }
    assert_query_agrees(location, moment, "fwd-client")


def test_snat_is_seen_from_the_server(location: LogLocation, tmp_path: Path) -> None:
    with veth_pair("10.216") as (left, right), recording(location, snapshot_interval_s=0):
        device = f"va{left.name.split('-')[-1]}"
        in_netns(left.name, "ip", "addr", "add", "10.216.0.3/24", "dev", device)
        with running_server(
            "snat-backend", hosts=(right.address,), netns=right.name, workdir=tmp_path
        ) as server:
            in_netns(left.name, "iptables", "-t", "nat", "-A", "POSTROUTING", "-p", "tcp", "-d", right.address,
                     "--dport", str(server.port), "-j", "SNAT", "--to-source", "10.216.0.3")  # fmt: skip
            client = run_client(
                "snat-client", right.address, server.port, count=3, hold_ms=50, netns=left.name
            )
            assert client.wait(timeout=60) == 0
            time.sleep(0.3)
            moment = time.time_ns()
    rows = [r for r in table_at(location, moment) if r["client_comm"] == "snat-client"]
    assert len(rows) == 3
    for row in rows:
        assert row["client"].startswith(f"{left.address}:")
        assert row["nat_source"].startswith("10.216.0.3:")
        assert (row["direction"], row["server_comm"]) == ("local", "snat-backend")
    assert_query_agrees(location, moment, "snat-client")


def test_without_conntrack_the_recording_goes_on_and_says_so(tmp_path: Path) -> None:
    require(can_make_namespaces(), "root to drop privileges")
    shared = Path(tempfile.mkdtemp(prefix="scope-noct-"))
    shared.chmod(0o1777)
    try:
        db = shared / "noct.db"
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
             "--bounding-set=-all", str(BIN / "scope-record"), "--db", str(db), "--duration", "1.5",
             "--proc-interval", "0.3", "--snapshot-interval", "0"],
            capture_output=True, text=True, timeout=60, check=False, cwd=shared,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "conntrack not captured" in result.stderr
        info = run_cli("scope-replay", "info", "--db", str(db), "--format", "json")
        (recording_info,) = json.loads(info.stdout)["recordings"]
        assert recording_info["conntrack"].startswith("unavailable")
        assert recording_info["mode"] == "proc"
    finally:
        shutil.rmtree(shared, ignore_errors=True)
