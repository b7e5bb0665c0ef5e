"""What the views are drawn from: the connection table at T, and the processes alive then."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import wait
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import duckdb
import pyarrow as pa

from eventlog import addresses
from eventlog.events import CgroupIds
from replay.derived.store import Derived
from replay.moment import Moment
from replay.table import read_connections
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
    """``connections``: the connection table at T, columns named as ConnectionRow's fields
    (those read; replay.table.connection_rows makes rows of it), in the table's order."""

    at_ns: int
    window_ns: int
    connections: pa.Table
    processes: Processes  # (host, pid) -> alive at T
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
    return _containers(derived.con, at_ns)


def _containers(con: duckdb.DuckDBPyConnection, at_ns: int) -> ContainerIndex:
    rows = con.execute(
        "SELECT host, id, name, image, image_id, labels, runtime, cgroup_id, cgroup_v1_id, netns "
        "FROM containers_at_ns(?)",
        [at_ns],
    ).fetchall()
    roots = con.execute(
        "SELECT DISTINCT root_netns FROM recordings_raw WHERE root_netns IS NOT NULL"
    ).fetchall()
    return ContainerIndex([container_record(row) for row in rows], [r for (r,) in roots])


# ProcessInfo._make without its length check: the rows have exactly its fields
_process_info = partial(tuple.__new__, ProcessInfo)
_ProcessRow = tuple[
    str, int, str, int | None, str | None, str | None, int | None, int | None, int | None
]


class Processes(Mapping[tuple[str, int], ProcessInfo]):
    """The processes alive at T by (host, pid). Each is made (its container found) when
    first asked for: a busy host has tens of thousands, and a map asks for those of its
    connections; counting the others needs only their ids and names (``comm``)."""

    def __init__(self, rows: dict[tuple[str, int], _ProcessRow], index: ContainerIndex) -> None:
        self._rows = rows
        self._index = index
        self._made: dict[tuple[str, int], ProcessInfo] = {}

    def __getitem__(self, key: tuple[str, int]) -> ProcessInfo:
        info = self.get(key)
        if info is None:
            raise KeyError(key)
        return info

    def get(  # type: ignore[override]  # (a default of another type is not needed)
        self, key: tuple[str, int], default: None = None
    ) -> ProcessInfo | None:
        # (a map asks for thousands: one look-up each, and each made once)
        info = self._made.get(key)
        if info is not None:
            return info
        row = self._rows.get(key)
        if row is None:
            return default
        host, pid, comm, ppid, cmdline, cgroup, netns, cgroup_id, cgroup_v1_id = row
        container = self._index.resolve(
            host, cgroup or "", CgroupIds(cgroup_id, cgroup_v1_id), netns
        )
        info = _process_info((host, pid, comm, ppid, cmdline or "", cgroup or "", netns, container))
        self._made[key] = info
        return info

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def comm(self, key: tuple[str, int]) -> str:
        """The name of a process (as its ProcessInfo has it), without making it."""
        return self._rows[key][2]


def processes_at(
    derived: Derived, at_ns: int, containers: ContainerIndex | None = None
) -> Processes:
    """The processes alive at ``at_ns`` by (host, pid), each with its container; where two
    recordings of one host know a pid, the later recording's."""
    index = containers if containers is not None else containers_at(derived, at_ns)
    return _processes(derived.con, at_ns, index)


def _processes(con: duckdb.DuckDBPyConnection, at_ns: int, index: ContainerIndex) -> Processes:
    rows: list[_ProcessRow] = con.execute(
        "SELECT host, pid, comm, ppid, cmdline, cgroup, netns, cgroup_id, cgroup_v1_id "
        "FROM processes_at_ns(?)",
        [at_ns],
    ).fetchall()
    return Processes({(row[0], row[1]): row for row in rows}, index)


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
    others at their defaults: ``ConnectionRow._fields`` for a reader of whole rows). The rest
    of the moment is read alongside its connections (Derived.alongside)."""
    pending = derived.alongside(partial(_surroundings, moment=moment))
    try:
        rows = read_connections(derived, moment.at_ns, moment.window_ns, fields)
    finally:
        wait([pending])  # (the store stays open until its reader is done)
    around = pending.result()
    local_addresses = around.local_addresses
    for host, address in _local_sides(rows):
        local_addresses.setdefault(host, set()).add(address)
    return Scene(
        moment.at_ns,
        moment.window_ns,
        rows,
        around.processes,
        around.hosts,
        local_addresses,
        around.local_networks,
        around.own,
        around.containers,
    )


@dataclass
class _Surroundings:
    """What a scene holds besides its connections."""

    hosts: list[str]
    local_addresses: dict[str, set[str]]  # as the recordings found them
    local_networks: dict[str, list[Network]]
    containers: ContainerIndex
    processes: Processes
    own: set[tuple[str, int]]


def _surroundings(con: duckdb.DuckDBPyConnection, moment: Moment) -> _Surroundings:
    recordings = con.execute("SELECT host, options FROM recordings_raw ORDER BY id").fetchall()
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
    containers = _containers(con, moment.at_ns)
    return _Surroundings(
        sorted({host for host, _ in recordings}),
        local_addresses,
        local_networks,
        containers,
        _processes(con, moment.at_ns, containers),
        own_processes(con, moment),
    )


def _local_sides(rows: pa.Table) -> Iterator[tuple[str, str]]:
    """The addresses of the sockets of each host among the connections (host, address)."""
    for side in ("client", "server"):
        local = rows.filter(rows[f"{side}_local"].fill_null(False))
        found = local.group_by(["host", f"{side}_ip"], use_threads=False).aggregate([])
        yield from zip(found["host"].to_pylist(), found[f"{side}_ip"].to_pylist(), strict=True)


def own_processes(con: duckdb.DuckDBPyConnection, moment: Moment) -> set[tuple[str, int]]:
    """The recorders' own processes then (host, pid): the recorder of each recording under
    way in the window. Its connections are its own (to a central store): the maps leave
    them out unless asked. (What it starts is not counted: a recorder running inside
    another program, as a library, would take that program's children for its own.)"""
    return set(
        con.execute(
            "SELECT host, recorder_pid FROM recordings_raw WHERE recorder_pid IS NOT NULL "
            "AND started_wall_ns <= ? AND (stop_reason IS NULL OR ended_wall_ns >= ?)",
            [moment.at_ns, moment.start_ns],
        ).fetchall()
    )
