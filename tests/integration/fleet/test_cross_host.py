"""One connection, one row, across hosts: three namespace-hosts on one bridge, each recorded
by its own recorder into one PostgreSQL store. Clients on A reach a server on B directly, a
virtual address that DNAT on A sends to C, B again through SNAT on A, and a port B
publishes (DNAT on B's way in); B's clock is off by 300 ms. Replay pairs each client socket recorded on A with its server socket recorded on
B or C. With B's clock off by 5 s the sides stay apart, until a wider skew tolerance is
asked for; logs of the hosts combined with ``db import`` pair as the shared store does."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from eventlog.importing import import_log
from eventlog.location import resolve
from recorder.clock import SKEW_ENV
from recorder.workload import run_client, running_server
from tests.agreement import query_rows, replay_rows, rows_of
from tests.ebpf import require_ebpf
from tests.engine_golden import run_replay
from tests.fleet import record_host, stop
from tests.netns import Namespace, bridged, can_make_namespaces, in_netns, interface_of

pytestmark = [pytest.mark.ebpf, pytest.mark.root, pytest.mark.slow]

COUNT = 25
VIP = f"10.97.{os.getpid() % 250}.20"
SNAT_SOURCE_HOST = 101  # A's second address, as B sees it through SNAT
PUBLISHED = 8080  # a port of B's that DNAT on B sends to its server


def _require() -> None:
    require_ebpf()
    if not can_make_namespaces():
        pytest.fail("network namespaces cannot be made here (root and iproute2 needed)")


def _table(db: str, at_ns: int, *options: str) -> list[dict[str, Any]]:
    code, out, err = run_replay(
        ["--db", db, "--at", str(at_ns), "--window", "60s", "--format", "json", *options]
    )
    assert code == 0, err
    rows: list[dict[str, Any]] = json.loads(out)["connections"]
    return rows


def _view(db: str, at_ns: int, view: str = "hosts") -> dict[str, Any]:
    code, out, err = run_replay(
        ["--db", db, "--at", str(at_ns), "--window", "60s", "--view", view, "--format", "json",
         "--pseudo", "show"]
    )  # fmt: skip
    assert code == 0, err
    nodes: dict[str, Any] = json.loads(out)["nodes"]
    return nodes


def _nat_rules(a: Namespace, c: Namespace, c_port: int, b: Namespace, b2_port: int) -> str:
    """DNAT of VIP:80 to C on A's way out; SNAT of A's calls to B's second server to A's
    second address. Returns that address."""
    subnet = a.address.rsplit(".", 1)[0]
    second = f"{subnet}.{SNAT_SOURCE_HOST}"
    device = interface_of(a)
    in_netns(a.name, "ip", "addr", "add", f"{second}/24", "dev", device)
    in_netns(a.name, "ip", "route", "add", f"{VIP}/32", "dev", device)
    in_netns(a.name, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", VIP,
             "--dport", "80", "-j", "DNAT", "--to-destination", f"{c.address}:{c_port}")  # fmt: skip
    in_netns(a.name, "iptables", "-t", "nat", "-A", "POSTROUTING", "-p", "tcp", "-d", b.address,
             "--dport", str(b2_port), "-j", "SNAT", "--to-source", second)  # fmt: skip
    return second


def _published_port(b: Namespace, b_port: int) -> None:
    """B publishes its server on PUBLISHED, as a container runtime publishes a port: DNAT on
    B's way in."""
    in_netns(b.name, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-d", b.address,
             "--dport", str(PUBLISHED), "-j", "DNAT", "--to-destination",
             f"{b.address}:{b_port}")  # fmt: skip


def _run_fleet(db_of: dict[str, str], tmp_path: Path, skew_ns: int) -> int:
    """Record hosts A, B, C (into ``db_of[host]``) while A's clients call; a moment while
    A's held connection to B is open."""
    with (
        bridged(3, f"10.{222 + os.getpid() % 20}") as (a, b, c),
        running_server("fleet-b", hosts=(b.address,), netns=b.name, workdir=tmp_path) as srv_b,
        running_server("fleet-b2", hosts=(b.address,), netns=b.name, workdir=tmp_path) as srv_b2,
        running_server("fleet-c", hosts=(c.address,), netns=c.name, workdir=tmp_path) as srv_c,
    ):  # fmt: skip
        _nat_rules(a, c, srv_c.port, b, srv_b2.port)
        _published_port(b, srv_b.port)
        skewed = {SKEW_ENV: str(skew_ns)}
        recorders = [
            record_host(db_of["host-a"], tmp_path, "host-a", a),
            record_host(db_of["host-b"], tmp_path, "host-b", b, env=skewed),
            record_host(db_of["host-c"], tmp_path, "host-c", c),
        ]
        try:
            held = run_client("fleet-held", b.address, srv_b.port, 1, hold_ms=6000, netns=a.name)
            clients = [
                run_client("fleet-direct", b.address, srv_b.port, COUNT, netns=a.name),
                run_client("fleet-dnat", VIP, 80, COUNT, netns=a.name),
                run_client("fleet-snat", b.address, srv_b2.port, COUNT, netns=a.name),
                run_client("fleet-publish", b.address, PUBLISHED, COUNT, netns=a.name),
            ]
            for client in clients:
                assert client.wait(timeout=60) == 0
            time.sleep(1.0)
            moment = time.time_ns()
            assert held.wait(timeout=60) == 0
            time.sleep(0.5)
        finally:
            codes = [stop(recorder) for recorder in recorders]
        assert codes == [0, 0, 0], [r.stderr.read() if r.stderr else "" for r in recorders]
    return moment


CLIENTS = {"fleet-direct": COUNT, "fleet-dnat": COUNT, "fleet-snat": COUNT,
           "fleet-publish": COUNT, "fleet-held": 1}  # fmt: skip
SERVER_OF = {"fleet-direct": ("host-b", "fleet-b"), "fleet-dnat": ("host-c", "fleet-c"),
             "fleet-snat": ("host-b", "fleet-b2"), "fleet-publish": ("host-b", "fleet-b"),
             "fleet-held": ("host-b", "fleet-b")}  # fmt: skip
SERVERS = {"fleet-b", "fleet-b2", "fleet-c"}


def _ours(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["client_comm"] in CLIENTS or r["server_comm"] in SERVERS]


def _assert_paired(rows: list[dict[str, Any]], held_open: bool | None = True) -> None:
    """Each client's calls one row each, with both processes and both hosts; the held
    connection open (or not: None, not looked at)."""
    ours = _ours(rows)
    one_sided = [r for r in ours if r["client_pid"] is None or r["server_pid"] is None]
    assert not one_sided, one_sided[:3]
    by_client = {name: [r for r in ours if r["client_comm"] == name] for name in CLIENTS}
    assert {name: len(found) for name, found in by_client.items()} == CLIENTS
    for name, found in by_client.items():
        host, server = SERVER_OF[name]
        assert {(r["client_host"], r["server_host"], r["server_comm"]) for r in found} == {
            ("host-a", host, server)
        }, name
    assert all(r["nat_destination"] for r in by_client["fleet-dnat"])
    assert all(r["nat_source"] for r in by_client["fleet-snat"])
    # DNAT on B: the client dialled B's published port, B's server took it on its own.
    published = by_client["fleet-publish"]
    assert all(r["server"].endswith(f":{PUBLISHED}") and r["nat_destination"] for r in published)
    (held,) = by_client["fleet-held"]
    if held_open is not None:
        assert (held["state"] == "open") is held_open


def _assert_query_agrees(db: str, moment: int, mirror: Path) -> None:
    """scope-query says what replay says at the moment, cross-host rows included, and its
    whole-log view pairs every call as well."""
    location = resolve(db)
    window_ns = 60_000_000_000
    expected = replay_rows(location, moment, window_ns)
    assert query_rows(location, moment, window_ns, mirror) == expected
    clients = ", ".join(f"'{name}'" for name in CLIENTS)
    _assert_paired(
        rows_of(location, f"SELECT * FROM connections WHERE client_comm IN ({clients})", mirror),
        held_open=False,
    )


def _assert_views_link_across_hosts(db: str, moment: int) -> None:
    """A process on A to one on B (node ids carry the host, as Scope's do), by name, and
    the uncontained pseudo node of A to B's and C's."""
    processes = _view(db, moment, "processes")
    by_label = {n["label"]: (node_id, n) for node_id, n in processes.items()}
    direct_id, direct = by_label["fleet-direct"]
    server_id, _ = by_label["fleet-b"]
    assert direct_id.startswith("host-a;") and server_id.startswith("host-b;")
    assert server_id in direct["adjacency"]
    by_name = _view(db, moment, "processes-by-name")
    assert "fleet-c" in by_name["fleet-dnat"]["adjacency"]
    containers = _view(db, moment, "containers")
    assert {"pseudo:uncontained:host-b", "pseudo:uncontained:host-c"} <= set(
        containers["pseudo:uncontained:host-a"]["adjacency"]
    )


def _clock_offset(db: str, host: str, other: str) -> int:
    code, out, err = run_replay(["info", "--db", db, "--format", "json"])
    assert code == 0, err
    offsets = json.loads(out)["clock_offsets"]
    (found,) = [o for o in offsets if (o["host"], o["other_host"]) == (host, other)]
    offset: int = found["offset_ns"]
    return offset


def test_a_fleet_in_one_store_pairs_across_hosts(pg_url: str, tmp_path: Path) -> None:
    _require()
    skew_ns = 300_000_000
    moment = _run_fleet(dict.fromkeys(("host-a", "host-b", "host-c"), pg_url), tmp_path, skew_ns)
    _assert_paired(_table(pg_url, moment))
    nodes = _view(pg_url, moment)
    assert {"host-b;<host>", "host-c;<host>"} <= set(nodes["host-a;<host>"]["adjacency"])
    _assert_views_link_across_hosts(pg_url, moment)
    _assert_query_agrees(pg_url, moment, tmp_path / "mirror.duckdb")
    # B's clock is 300 ms ahead: its accepts read that much (and a round trip) later than
    # A's connects; C's clock is right.
    assert abs(_clock_offset(pg_url, "host-a", "host-b") - skew_ns) < 100_000_000
    assert abs(_clock_offset(pg_url, "host-a", "host-c")) < 100_000_000


def test_logs_of_the_hosts_combined_pair_and_a_skew_beyond_tolerance_does_not(
    tmp_path: Path,
) -> None:
    """Each host into a SQLite log of its own, B's clock off by 5 s; the three imported into
    one. The default tolerance (1 s) leaves the sides of A->B apart; 10 s pairs them."""
    _require()
    logs = {host: str(tmp_path / f"{host}.db") for host in ("host-a", "host-b", "host-c")}
    moment = _run_fleet(logs, tmp_path, 5_000_000_000)
    combined = str(tmp_path / "incident.db")
    for log in logs.values():
        import_log(resolve(log), resolve(combined))
    # B's sockets are known 5 s later by its clock: a moment by then shows both sides.
    later = moment + 6_000_000_000
    rows = _ours(_table(combined, later))
    to_b = [r for r in rows if r["client_comm"] in ("fleet-direct", "fleet-snat")]
    assert to_b and all(r["server_pid"] is None for r in to_b)  # apart: 5 s > 1 s
    dnat = [r for r in rows if r["client_comm"] == "fleet-dnat"]
    assert len(dnat) == COUNT and all(r["server_host"] == "host-c" for r in dnat)
    # (The held connection is still open by B's clock then: each side's times are its own.)
    _assert_paired(_table(combined, later, "--skew-tolerance", "10s"), held_open=None)
