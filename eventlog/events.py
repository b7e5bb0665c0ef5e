"""What the log holds: event kinds and the plain records that travel from capture to the log.

Records are NamedTuples: the capture path creates millions of them, and tuples are the
cheapest Python object that still has field names. Addresses are raw network-order bytes
(4 for IPv4, 16 for IPv6, v4-mapped IPv6 kept as the kernel reported it); the family is
implied by the length. All timestamps are CLOCK_MONOTONIC nanoseconds (the clock of
``bpf_ktime_get_ns``); wall time is derived from the recording's clock samples.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from enum import IntEnum
from typing import Any, NamedTuple

# How a recording captured: the kernel's eBPF programs, or polling /proc.
MODE_EBPF = "ebpf"
MODE_PROC = "proc"


class Kind(IntEnum):
    """Event kinds. The numbers are stored in the log: never renumber, only append."""

    CONNECT = 1  # active open completed (SYN_SENT -> ESTABLISHED); pid of connect()
    ACCEPT = 2  # passive open completed; pid of the process whose accept() returned it
    CLOSE = 3  # an open connection's socket reached CLOSE; pid of the connection's owner
    CONNECT_FAILED = 4  # SYN_SENT -> CLOSE without ESTABLISHED (refused, timed out, reset)
    EXEC = 5  # a process called execve; extra: ppid, filename
    EXIT = 6  # a process (thread group) exited; extra: ppid, exit code
    # A /proc (+ conntrack) snapshot; its rows are in the snapshot_* tables. A connection row's
    # pid is the lowest of the processes holding its socket; extra["more_holders"] lists the
    # others, as [inode, pid] pairs (``more_holders``), for the connections (not listeners)
    # several processes held.
    SNAPSHOT = 7
    CT_NEW = 8  # conntrack entry created; tuple = original direction, extra = the rest
    CT_UPDATE = 9
    CT_DESTROY = 10
    # What a container runtime said of a container (recorder.containers): pid = its first
    # process, netns = its network namespace, extra = the record (``container_record``).
    CONTAINER = 11
    # A process forked (not a thread): pid = the child, comm = its name (its parent's),
    # extra = {"ppid": the forking process, "cgroup_id"}. The child holds its parent's sockets.
    FORK = 12
    # A process dropped a socket's last reference (ESTABLISHED -> FIN_WAIT1 or CLOSE_WAIT ->
    # LAST_ACK, which only close() and shutdown() cause, in its context): recorded when it is
    # not the process its open event names (the socket had moved to it: a forked child, or
    # one it was passed to), or is but a process that forks (its children may have held it).
    # pid/comm = that process, the socket's tuple and id, extra = {"owner": the pid its open
    # event names, "state": the state it moved to}. No process holds the socket after it.
    OWNER = 13


CONNECTION_KINDS = frozenset({Kind.CONNECT, Kind.ACCEPT, Kind.CLOSE, Kind.CONNECT_FAILED})
PROCESS_KINDS = frozenset({Kind.EXEC, Kind.EXIT, Kind.FORK})
CONNTRACK_KINDS = frozenset({Kind.CT_NEW, Kind.CT_UPDATE, Kind.CT_DESTROY})

# What a CONTAINER event's ``action`` says: ``listed`` at the start of following a runtime
# (the containers running then), the rest as the runtime's event stream names them.
CONTAINER_ACTIONS = ("listed", "start", "rename", "die", "destroy")


def cmdline_text(raw: bytes) -> str:
    """A command line as /proc/<pid>/cmdline and a process's memory hold it (arguments
    separated by NUL bytes), as one line of text."""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")


class Event(NamedTuple):
    """One event as captured, before it has a position in the log."""

    kind: int
    mono_ns: int
    pid: int | None = None
    comm: str | None = None
    netns: int | None = None
    laddr: bytes | None = None
    lport: int | None = None
    raddr: bytes | None = None
    rport: int | None = None
    sock_id: int | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None
    extra: dict[str, Any] | None = None


class LoggedEvent(NamedTuple):
    """An event read back from the log: its position, recording and derived wall time."""

    position: int
    recording_id: int
    wall_ns: int
    kind: int
    mono_ns: int
    pid: int | None
    comm: str | None
    netns: int | None
    laddr: bytes | None
    lport: int | None
    raddr: bytes | None
    rport: int | None
    sock_id: int | None
    bytes_sent: int | None
    bytes_received: int | None
    extra: dict[str, Any] | None


class SnapshotConnection(NamedTuple):
    """A TCP socket seen in /proc/<pid>/net/tcp{,6} during a snapshot."""

    netns: int
    laddr: bytes
    lport: int
    raddr: bytes
    rport: int
    state: int  # kernel TCP state number (1 = ESTABLISHED, 10 = LISTEN, ...)
    inode: int
    uid: int
    pid: int | None  # owner found through /proc/<pid>/fd, None if no fd points at it


class SnapshotProcess(NamedTuple):
    """A process seen in /proc during a snapshot."""

    pid: int
    ppid: int
    comm: str
    cmdline: str
    cgroup: str
    netns: int | None
    start_mono_ns: int  # process start, on the monotonic clock


def more_holders(
    connections: Iterable[SnapshotConnection], holders: Mapping[int, Sequence[int]]
) -> list[list[int]]:
    """A SNAPSHOT event's ``more_holders``: for each connection (not a listener) of
    ``connections`` held by several processes (``holders``: socket inode -> every pid holding
    it, ascending), the holders beyond its row's pid, as [inode, pid] pairs, in order."""
    return sorted(
        [c.inode, pid]
        for c in connections
        if c.state != TCP_LISTEN
        for pid in holders.get(c.inode, ())
        if pid != c.pid
    )


class ConntrackEntry(NamedTuple):
    """A conntrack TCP entry: the original direction as the client saw it, and the reply."""

    netns: int
    orig_src: bytes
    orig_dst: bytes
    orig_sport: int
    orig_dport: int
    reply_src: bytes
    reply_dst: bytes
    reply_sport: int
    reply_dport: int
    status: int  # IPS_* bits: 0x10 SRC_NAT_DONE... see replay.nat
    tcp_state: int
    ct_id: int
    zone: int
    mark: int


class Snapshot(NamedTuple):
    """Everything one snapshot walk saw. It is stored under one SNAPSHOT event."""

    connections: tuple[SnapshotConnection, ...] = ()
    processes: tuple[SnapshotProcess, ...] = ()
    conntrack: tuple[ConntrackEntry, ...] = ()


class Loss(NamedTuple):
    """Events the kernel could not hand over (or the recorder could not keep), and when."""

    lost: int
    first_mono_ns: int
    last_mono_ns: int
    reason: str


class ClockSample(NamedTuple):
    """One measurement of wall time minus monotonic time, with its uncertainty."""

    mono_ns: int
    offset_ns: int
    uncertainty_ns: int


# -- what snapshot rows and conntrack records hold -----------------------------------------

# Kernel TCP states, as /proc/net/tcp and snapshot_connections.state give them.
TCP_ESTABLISHED = 1
TCP_FIN_WAIT1 = 4
TCP_FIN_WAIT2 = 5
TCP_CLOSE_WAIT = 8
TCP_LISTEN = 10
KEPT_STATES = frozenset({TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_CLOSE_WAIT, TCP_LISTEN})
OPEN_STATES = KEPT_STATES - {TCP_LISTEN}  # a connection is open in these

# Conntrack status bits (IPS_*) that say an entry was translated.
IPS_SRC_NAT = 0x10
IPS_DST_NAT = 0x20
IPS_NAT_MASK = IPS_SRC_NAT | IPS_DST_NAT


def conntrack_event(kind: Kind, mono_ns: int, entry: ConntrackEntry) -> Event:
    """A conntrack change as a log event: the original tuple where sockets keep theirs."""
    return Event(
        kind=int(kind),
        mono_ns=mono_ns,
        netns=entry.netns,
        laddr=entry.orig_src,
        lport=entry.orig_sport,
        raddr=entry.orig_dst,
        rport=entry.orig_dport,
        extra={
            "ct_id": entry.ct_id,
            "status": entry.status,
            "tcp_state": entry.tcp_state,
            "zone": entry.zone,
            "mark": entry.mark,
            "reply_src": str(ipaddress.ip_address(entry.reply_src)),
            "reply_dst": str(ipaddress.ip_address(entry.reply_dst)),
            "reply_sport": entry.reply_sport,
            "reply_dport": entry.reply_dport,
        },
    )


def conntrack_entry(event: Any) -> ConntrackEntry:
    """The entry a CT_* event describes (the inverse of ``conntrack_event``)."""
    extra = event.extra or {}
    return ConntrackEntry(
        netns=event.netns or 0,
        orig_src=event.laddr or b"",
        orig_dst=event.raddr or b"",
        orig_sport=event.lport or 0,
        orig_dport=event.rport or 0,
        reply_src=ipaddress.ip_address(extra.get("reply_src", "0.0.0.0")).packed,
        reply_dst=ipaddress.ip_address(extra.get("reply_dst", "0.0.0.0")).packed,
        reply_sport=int(extra.get("reply_sport", 0)),
        reply_dport=int(extra.get("reply_dport", 0)),
        status=int(extra.get("status", 0)),
        tcp_state=int(extra.get("tcp_state", 0)),
        ct_id=int(extra.get("ct_id", 0)),
        zone=int(extra.get("zone", 0)),
        mark=int(extra.get("mark", 0)),
    )


class CgroupIds(NamedTuple):
    """What EXEC events and container records know a cgroup by (``recorder.cgroups``): its
    id in the unified hierarchy and in one v1 hierarchy, each None where not known."""

    unified: int | None
    v1: int | None


class ContainerRecord(NamedTuple):
    """A container as its runtime described it, at one of its changes (``CONTAINER_ACTIONS``)."""

    action: str
    id: str  # the runtime's full id (64 hex digits for Docker and Podman)
    name: str
    image: str  # the image's name as the container was created from it
    image_id: str
    labels: dict[str, str]
    pid: int | None  # its first process (0 or None once it stopped)
    netns: int | None  # its network namespace inode
    cgroup_id: int | None  # of its cgroup in the unified hierarchy: what EXEC events carry
    cgroup: str  # its first process's /proc/<pid>/cgroup
    created: str  # the runtime's own times, as it wrote them
    started: str
    runtime: str  # which API said so: "podman" or "docker"
    # Of its cgroup in the v1 hierarchy EXEC events follow (recorder.cgroups); None on a
    # host without v1 controllers, and in records written before it was kept.
    cgroup_v1_id: int | None = None


def container_event(mono_ns: int, record: ContainerRecord) -> Event:
    """A container record as a log event: pid and netns where every event keeps them."""
    extra = record._asdict()
    del extra["pid"], extra["netns"]
    return Event(
        kind=int(Kind.CONTAINER),
        mono_ns=mono_ns,
        pid=record.pid or None,
        netns=record.netns or None,
        extra=extra,
    )
