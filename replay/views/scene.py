"""What the views are drawn from: the connection table at T, and the processes alive then."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from eventlog import addresses
from eventlog.events import CgroupIds
from replay.derived.store import Derived
from replay.moment import Moment
from replay.table import ConnectionRow, connection_table
from replay.views.containers import Container, ContainerIndex, container_record

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProcessInfo(NamedTuple):
    """A process alive at T (a tuple: a busy host has thousands)."""

    host: str
    pid: int
    comm: str
    ppid: int | None = None
    cmdline: str = ""
    cgroup: str = ""
    netns: int | None = None
    container: Container | None = None  # as ``ContainerIndex.resolve`` found it


@dataclass
class Scene:
    at_ns: int
    window_ns: int
    connections: list[ConnectionRow]
    processes: dict[tuple[str, int], ProcessInfo]  # (host, pid) -> alive at T
    hosts: list[str]
    local_addresses: dict[str, set[str]] = field(default_factory=dict)  # host -> addresses
    local_networks: dict[str, list[Network]] = field(default_factory=dict)
    own: set[tuple[str, int]] = field(default_factory=set)  # the recorders' processes (host, pid)
    containers: ContainerIndex = field(default_factory=lambda: ContainerIndex(()))

    def container_of_side(self, host: str, pid: int | None, netns: int | None) -> Container | None:
        """The container of a connection's side: its process's, else its namespace's."""
        info = self.processes.get((host, pid)) if pid is not None else None
        if info is not None:
            return info.container
        return self.containers.resolve(host, "", CgroupIds(None, None), netns)

    def is_local_address(self, host: str, address: str) -> bool:
        return address in self.local_addresses.get(host, set()) or addresses.is_loopback(address)

    def in_local_network(self, host: str, address: str) -> bool:
        ip = addresses.parse(address)
        if ip is None:
            return False
        return any(ip in network for network in self.local_networks.get(host, []))


def containers_at(derived: Derived, at_ns: int) -> ContainerIndex:
    """The containers as of ``at_ns``, as their runtimes' records describe them."""
    rows = derived.con.execute(
        "SELECT host, id, name, image, image_id, labels, runtime, cgroup_id, cgroup_v1_id, netns "
        "FROM containers_at_ns(?)",
        [at_ns],
    ).fetchall()
    roots = derived.con.execute(
        "SELECT DISTINCT root_netns FROM recordings_raw WHERE root_netns IS NOT NULL"
    ).fetchall()
    return ContainerIndex([container_record(row) for row in rows], [r for (r,) in roots])


def processes_at(
    derived: Derived, at_ns: int, containers: ContainerIndex | None = None
) -> dict[tuple[str, int], ProcessInfo]:
    """The processes alive at ``at_ns`` by (host, pid), each with its container; where two
    recordings of one host know a pid, the later recording's."""
    index = containers if containers is not None else containers_at(derived, at_ns)
    rows = derived.con.execute(
        "SELECT host, pid, comm, ppid, cmdline, cgroup, netns, cgroup_id, cgroup_v1_id "
        "FROM processes_at_ns(?)",
        [at_ns],
    ).fetchall()
    return {
        (host, pid): ProcessInfo(
            host, pid, comm, ppid, cmdline or "", cgroup or "", netns,
            index.resolve(host, cgroup or "", CgroupIds(cgroup_id, cgroup_v1_id), netns),
        )
        for host, pid, comm, ppid, cmdline, cgroup, netns, cgroup_id, cgroup_v1_id in rows
    }  # fmt: skip


# The fields of a connection the maps read (replay.views.topology, and the local addresses
# below): the rest of the table (positions, notes, bytes, times) is left unread.
MAP_FIELDS = (
    "id", "state", "host", "client_host", "server_host", "client", "server", "client_pid",
    "client_comm", "client_netns",
    "server_pid", "server_comm", "server_netns", "nat_destination", "client_ip",
    "client_port", "server_ip", "server_port", "client_local", "server_local",
)  # fmt: skip


def build_scene(derived: Derived, moment: Moment, fields: Sequence[str] = MAP_FIELDS) -> Scene:
    """What the maps of ``moment`` are drawn from; its connections with ``fields`` read (the
    others at their defaults: ``ConnectionRow._fields`` for a reader of whole rows)."""
    rows = connection_table(derived, moment.at_ns, moment.window_ns, fields)
    recordings = derived.con.execute(
        "SELECT host, options FROM recordings_raw ORDER BY id"
    ).fetchall()
    local_addresses: dict[str, set[str]] = {}
    local_networks: dict[str, list[Network]] = {}
    for host, options in recordings:
        local = (json.loads(options) if options else {}).get("local") or {}
        local_addresses.setdefault(host, set()).update(local.get("addresses", []))
        for text in local.get("networks", []):
            try:
                local_networks.setdefault(host, []).append(ipaddress.ip_network(text))
            except ValueError:
                continue
    for row in rows:
        if row.client_local:
            local_addresses.setdefault(row.host, set()).add(row.client_ip)
        if row.server_local:
            local_addresses.setdefault(row.host, set()).add(row.server_ip)
    containers = containers_at(derived, moment.at_ns)
    return Scene(
        moment.at_ns,
        moment.window_ns,
        rows,
        processes_at(derived, moment.at_ns, containers),
        sorted({host for host, _ in recordings}),
        local_addresses,
        local_networks,
        own_processes(derived, moment),
        containers,
    )


def own_processes(derived: Derived, moment: Moment) -> set[tuple[str, int]]:
    """The recorders' own processes then (host, pid): the recorder of each recording under
    way in the window. Its connections are its own (to a central store): the maps leave
    them out unless asked. (What it starts is not counted: a recorder running inside
    another program, as a library, would take that program's children for its own.)"""
    return set(
        derived.con.execute(
            "SELECT host, recorder_pid FROM recordings_raw WHERE recorder_pid IS NOT NULL "
            "AND started_wall_ns <= ? AND (stop_reason IS NULL OR ended_wall_ns >= ?)",
            [moment.at_ns, moment.start_ns],
        ).fetchall()
    )
