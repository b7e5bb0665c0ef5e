"""The /proc walk: connections in every network namespace, their owning processes, and the
process table. Used for the initial state, periodic snapshots and /proc mode.

Parsers are pure functions over text and never raise on bad input: a line that does not
parse is counted and skipped. Processes may vanish mid-walk; whatever cannot be read is
skipped the same way.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from eventlog.events import (
    KEPT_STATES,
    ConntrackEntry,
    SnapshotConnection,
    SnapshotProcess,
    cmdline_text,
)

# Kernel TCP states kept from /proc/net/tcp: open connections as Scope kept them, and
# listeners, which tell replay which side of a pre-existing connection is the server.

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class TcpLine:
    laddr: bytes
    lport: int
    raddr: bytes
    rport: int
    state: int
    uid: int
    inode: int


@dataclass
class ParseStats:
    """What a walk could not read: bad lines and vanished processes."""

    bad_lines: int = 0
    vanished: int = 0

    def merge(self, other: ParseStats) -> None:
        self.bad_lines += other.bad_lines
        self.vanished += other.vanished


def _hex_address(text: str) -> bytes:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in host byte order."""
    if len(text) not in (8, 32):
        raise ValueError(f"address of {len(text)} hex digits")
    raw = bytes.fromhex(text)
    words = [raw[i : i + 4] for i in range(0, len(raw), 4)]
    if socket.htonl(1) != 1:  # little-endian host: each word is byte-swapped
        words = [word[::-1] for word in words]
    return b"".join(words)


def _endpoint(text: str) -> tuple[bytes, int]:
    address, _, port = text.partition(":")
    if not port:
        raise ValueError("endpoint without port")
    value = int(port, 16)
    if not 0 <= value <= 0xFFFF:
        raise ValueError("port out of range")
    return _hex_address(address), value


def parse_tcp_table(text: str, stats: ParseStats | None = None) -> list[TcpLine]:
    """Rows of /proc/<pid>/net/tcp or tcp6 in ``KEPT_STATES``."""
    stats = stats if stats is not None else ParseStats()
    rows = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if not fields:
            continue
        try:
            laddr, lport = _endpoint(fields[1])
            raddr, rport = _endpoint(fields[2])
            state = int(fields[3], 16)
            uid = int(fields[7])
            inode = int(fields[9])
            if not (0 <= uid < 1 << 32 and 0 <= inode < 1 << 63):
                raise ValueError("uid or inode out of range")
        except (IndexError, ValueError):
            stats.bad_lines += 1
            continue
        if len(laddr) != len(raddr):
            stats.bad_lines += 1
            continue
        if state in KEPT_STATES:
            rows.append(TcpLine(laddr, lport, raddr, rport, state, uid, inode))
    return rows


@dataclass(frozen=True)
class StatLine:
    comm: str
    ppid: int
    start_ticks: int


def parse_stat(text: str) -> StatLine | None:
    """/proc/<pid>/stat: the comm is in parentheses and may itself contain ') '."""
    open_paren = text.find("(")
    close_paren = text.rfind(")")
    if open_paren < 0 or close_paren < open_paren:
        return None
    rest = text[close_paren + 1 :].split()
    try:
        ppid = int(rest[1])
        start_ticks = int(rest[19])
    except (IndexError, ValueError):
        return None
    if not (0 <= ppid < 1 << 32 and 0 <= start_ticks < 1 << 62):
        return None
    return StatLine(text[open_paren + 1 : close_paren], ppid, start_ticks)


def parse_socket_link(target: str) -> int | None:
    """The inode of a ``socket:[12345]`` fd link, None for anything else."""
    if target.startswith("socket:[") and target.endswith("]"):
        digits = target[8:-1]
        if digits.isdigit() and len(digits) < 20:
            return int(digits)
    return None


@dataclass
class ProcWalk:
    """One pass over /proc."""

    processes: list[SnapshotProcess] = field(default_factory=list)
    connections: list[SnapshotConnection] = field(default_factory=list)
    namespaces: set[int] = field(default_factory=set)
    namespace_paths: dict[int, str] = field(default_factory=dict)  # inode -> a path to enter it
    stats: ParseStats = field(default_factory=ParseStats)
    conntrack: list[ConntrackEntry] | None = None  # None: not read with this walk
    # Socket inode -> every process holding it (/proc/PID/fd), ascending: a connection's
    # ``pid`` is the first; the others are what shows a socket a forked child or a worker
    # shares with (or took from) the process that opened it.
    holders: dict[int, list[int]] = field(default_factory=dict)
    started_mono_ns: int = 0
    finished_mono_ns: int = 0


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


_boot_offset_ns: int | None = None


def boot_to_mono_offset_ns() -> int:
    """CLOCK_BOOTTIME - CLOCK_MONOTONIC: process start times count from boot, suspend included.

    Kept stable between calls (it only moves when the host suspends), so the same process
    gets the same start time in every walk and /proc mode can tell it from a new one.
    """
    global _boot_offset_ns  # noqa: PLW0603 - a process-wide measurement
    boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    measured = boot - mono
    if _boot_offset_ns is None or abs(measured - _boot_offset_ns) > 1_000_000:
        _boot_offset_ns = measured
    return _boot_offset_ns


def pids(proc: Path = Path("/proc")) -> list[int]:
    try:
        return sorted(int(name) for name in os.listdir(proc) if name.isdigit())
    except OSError:
        return []


NAMED_NETNS_DIRS = ("/run/netns", "/var/run/netns")


def network_namespaces(proc: Path = Path("/proc")) -> dict[int, str]:
    """Every network namespace in use: those of processes, and named ones (``ip netns add``
    keeps a namespace alive with no process in it). Inode -> a path that enters it."""
    found: dict[int, str] = {}
    for directory in NAMED_NETNS_DIRS:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            path = f"{directory}/{name}"
            try:
                found.setdefault(os.stat(path).st_ino, path)
            except OSError:
                continue
    for pid in pids(proc):
        path = f"{proc}/{pid}/ns/net"
        try:
            found.setdefault(os.stat(path).st_ino, path)
        except OSError:
            continue
    return found


def walk(proc: Path = Path("/proc"), redact_cmdline: bool = False) -> ProcWalk:
    """Processes, and TCP sockets in kept states from every network namespace, with owners."""
    result = ProcWalk(started_mono_ns=time.clock_gettime_ns(time.CLOCK_MONOTONIC))
    boot_offset = boot_to_mono_offset_ns()
    holders: dict[int, list[int]] = {}
    netns_reader: dict[int, int] = {}  # netns inode -> a pid to read its tables through
    for pid in pids(proc):
        base = f"{proc}/{pid}"
        stat_text = _read_text(f"{base}/stat")
        stat = parse_stat(stat_text) if stat_text is not None else None
        if stat is None:
            result.stats.vanished += 1
            continue
        try:
            netns: int | None = os.stat(f"{base}/ns/net").st_ino
        except OSError:
            netns = None
        if netns is not None and netns not in netns_reader:
            netns_reader[netns] = pid
        raw_cmdline = _read_bytes(f"{base}/cmdline") or b""
        if redact_cmdline:  # argv[0] only: arguments may hold secrets
            raw_cmdline = raw_cmdline.split(b"\0", 1)[0]
        cmdline = cmdline_text(raw_cmdline)
        result.processes.append(
            SnapshotProcess(
                pid=pid,
                ppid=stat.ppid,
                comm=stat.comm,
                cmdline=cmdline,
                cgroup=(_read_text(f"{base}/cgroup") or "").strip(),
                netns=netns,
                start_mono_ns=stat.start_ticks * 1_000_000_000 // CLOCK_TICKS - boot_offset,
            )
        )
        for inode in sorted(set(_socket_inodes(f"{base}/fd"))):
            holders.setdefault(inode, []).append(pid)  # pids ascend
    for netns, pid in sorted(netns_reader.items()):
        result.namespaces.add(netns)
        result.namespace_paths[netns] = f"{proc}/{pid}/ns/net"
        for table in ("tcp", "tcp6"):
            text = _read_text(f"{proc}/{pid}/net/{table}")
            if text is None:
                continue
            for row in parse_tcp_table(text, result.stats):
                result.connections.append(
                    SnapshotConnection(
                        netns=netns,
                        laddr=row.laddr,
                        lport=row.lport,
                        raddr=row.raddr,
                        rport=row.rport,
                        state=row.state,
                        inode=row.inode,
                        uid=row.uid,
                        pid=holders[row.inode][0] if row.inode in holders else None,
                    )
                )
    result.holders = holders
    result.connections.sort(key=lambda c: (c.netns, c.laddr, c.lport, c.raddr, c.rport, c.inode))
    result.finished_mono_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    return result


def _socket_inodes(fd_dir: str) -> Iterable[int]:
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return []
    inodes = []
    for name in names:
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        inode = parse_socket_link(target)
        if inode is not None:
            inodes.append(inode)
    return inodes
