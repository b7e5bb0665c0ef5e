"""What the views are drawn from: the connection table at T, and the processes alive then."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache

from eventlog.events import Kind
from eventlog.reader import LogReader
from replay import native
from replay.connections import ConnectionRow, connection_table
from replay.engine import Window
from replay.views.containers import Container, container_of


@dataclass(frozen=True)
class ProcessInfo:
    host: str
    pid: int
    comm: str
    ppid: int | None = None
    cmdline: str = ""
    cgroup: str = ""
    netns: int | None = None

    @property
    def container(self) -> Container | None:
        return container_of(self.cgroup)


@dataclass
class Scene:
    at_ns: int
    window_ns: int
    connections: list[ConnectionRow]
    processes: dict[tuple[str, int], ProcessInfo]  # (host, pid) -> alive at T
    hosts: list[str]
    local_addresses: dict[str, set[str]] = field(default_factory=dict)  # host -> addresses
    local_networks: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = field(
        default_factory=dict
    )

    def is_local_address(self, host: str, address: str) -> bool:
        return address in self.local_addresses.get(host, set()) or _is_loopback(address)

    def in_local_network(self, host: str, address: str) -> bool:
        ip = _ip(address)
        if ip is None:
            return False
        return any(ip in network for network in self.local_networks.get(host, []))


@lru_cache(maxsize=1 << 14)
def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


def _is_loopback(address: str) -> bool:
    ip = _ip(address)
    return bool(ip and ip.is_loopback)


def is_public(address: str) -> bool:
    """A globally routable address: what Scope calls the Internet."""
    ip = _ip(address)
    return bool(ip and ip.is_global)


def build_scene(reader: LogReader, window: Window, runs: native.RunReader | None = None) -> Scene:
    rows = connection_table(reader, window, runs)
    recordings = {r.id: r for r in reader.recordings()}
    processes: dict[tuple[str, int], ProcessInfo] = {}
    refs = sorted(window.state.processes.items())
    events = reader.events_at([p for _, p in refs])
    snapshot_rows: dict[int, dict[int, ProcessInfo]] = {}
    for (recording_id, pid), position in refs:
        host = recordings[recording_id].host_id if recording_id in recordings else "?"
        event = events.get(position)
        if event is not None and event.kind == Kind.SNAPSHOT:
            if position not in snapshot_rows:
                snapshot = reader.snapshot(position)
                snapshot_rows[position] = {
                    p.pid: ProcessInfo(host, p.pid, p.comm, p.ppid, p.cmdline, p.cgroup, p.netns)
                    for p in snapshot.processes
                }
            info = snapshot_rows[position].get(pid)
            if info is not None:
                processes[(host, pid)] = info
        elif event is not None:
            extra = event.extra or {}
            processes[(host, pid)] = ProcessInfo(
                host,
                pid,
                event.comm or "?",
                extra.get("ppid"),
                extra.get("filename", ""),
                "",
                event.netns,
            )
    local_addresses: dict[str, set[str]] = {}
    local_networks: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}
    for recording in recordings.values():
        local = (recording.options or {}).get("local") or {}
        local_addresses.setdefault(recording.host_id, set()).update(local.get("addresses", []))
        for text in local.get("networks", []):
            try:
                local_networks.setdefault(recording.host_id, []).append(ipaddress.ip_network(text))
            except ValueError:
                continue
    for row in rows:
        if row.client_local:
            local_addresses.setdefault(row.host, set()).add(row.client_ip)
        if row.server_local:
            local_addresses.setdefault(row.host, set()).add(row.server_ip)
    hosts = sorted({r.host_id for r in recordings.values()})
    return Scene(
        window.at_ns,
        window.at_ns - window.start_ns,
        rows,
        processes,
        hosts,
        local_addresses,
        local_networks,
    )
