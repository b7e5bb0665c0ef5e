"""/proc mode: connection and process events inferred from successive /proc walks.

Used when eBPF cannot run. A connection that opens and closes between two polls is never
seen, and timestamps are the poll's, which is why eBPF is the default. Direction comes from
listening sockets: a connection whose local port listens in its namespace was accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from eventlog.events import (
    OPEN_STATES,
    TCP_LISTEN,
    Event,
    Kind,
    SnapshotConnection,
    SnapshotProcess,
)
from recorder.procfs import ProcWalk

ConnKey = tuple[int, bytes, int, bytes, int]  # netns, laddr, lport, raddr, rport


@dataclass
class _Open:
    event: Event


# A socket seen without its process (the walk read the socket tables before that process's
# fds, or the process was still starting) waits this many more polls for its owner before it
# is recorded without one; it keeps the time it was first seen.
OWNER_GRACE_POLLS = 1


@dataclass
class _Unowned:
    conn: SnapshotConnection
    first_mono_ns: int
    polls: int = 0


class ProcPoller:
    """Turns each walk into the events that explain the change since the previous one."""

    def __init__(self) -> None:
        self._connections: dict[ConnKey, _Open] = {}
        self._unowned: dict[ConnKey, _Unowned] = {}
        self._processes: dict[int, SnapshotProcess] = {}
        self._next_sock_id = 0
        self._primed = False

    def prime(self, walk: ProcWalk) -> None:
        """Take ``walk`` as the starting state (it is recorded as the initial snapshot)."""
        self._primed = True
        self._diff(walk, emit=False)

    def events(self, walk: ProcWalk) -> list[Event]:
        if not self._primed:
            self.prime(walk)
            return []
        return self._diff(walk, emit=True)

    def _diff(self, walk: ProcWalk, emit: bool) -> list[Event]:
        mono = walk.started_mono_ns
        processes = {p.pid: p for p in walk.processes}
        listening = {(c.netns, c.lport) for c in walk.connections if c.state == TCP_LISTEN}
        current = {_key(c): c for c in walk.connections if c.state in OPEN_STATES}
        out: list[Event] = []
        for pid, process in sorted(self._processes.items()):
            replaced = processes.get(pid)
            if replaced is None or replaced.start_mono_ns != process.start_mono_ns:
                out.append(_process_event(Kind.EXIT, mono, process))
        for pid, process in sorted(processes.items()):
            known = self._processes.get(pid)
            if known is None or known.start_mono_ns != process.start_mono_ns:
                out.append(_process_event(Kind.EXEC, mono, process))
        for key in sorted(set(self._unowned) - set(current)):
            # Gone while waiting for its owner: opened when first seen, closed below.
            waited = self._unowned.pop(key)
            out.append(self._open(waited.conn, waited.first_mono_ns, listening, processes))
        for key in sorted(set(self._connections) - set(current)):
            opened = self._connections.pop(key).event
            out.append(opened._replace(kind=Kind.CLOSE, mono_ns=mono))
        for key in sorted(set(current) - set(self._connections)):
            conn = current[key]
            if emit and conn.pid is None and self._waits_for_owner(key, conn, mono):
                continue
            first_seen = self._unowned.pop(key).first_mono_ns if key in self._unowned else mono
            out.append(self._open(conn, first_seen, listening, processes, emit))
        self._processes = processes
        return out if emit else []

    def _waits_for_owner(self, key: ConnKey, conn: SnapshotConnection, mono: int) -> bool:
        """Whether a socket seen without its process waits another poll for it."""
        waiting = self._unowned.get(key)
        if waiting is None:
            self._unowned[key] = _Unowned(conn, mono)
            return True
        waiting.polls += 1
        return waiting.polls < OWNER_GRACE_POLLS

    def _open(
        self,
        conn: SnapshotConnection,
        mono: int,
        listening: set[tuple[int, int]],
        processes: dict[int, SnapshotProcess],
        emit: bool = True,
    ) -> Event:
        """The open event of a socket first seen at ``mono``, which is open from now on."""
        key = _key(conn)
        sock_id = None  # connections from before the recording have no identity
        if emit:
            self._next_sock_id += 1
            sock_id = self._next_sock_id
        owner = processes.get(conn.pid) if conn.pid is not None else None
        kind = Kind.ACCEPT if (conn.netns, conn.lport) in listening else Kind.CONNECT
        event = Event(
            kind=kind,
            mono_ns=mono,
            pid=conn.pid,
            comm=owner.comm if owner else None,
            netns=conn.netns,
            laddr=conn.laddr,
            lport=conn.lport,
            raddr=conn.raddr,
            rport=conn.rport,
            sock_id=sock_id,
            extra={"source": "proc"},
        )
        self._connections[key] = _Open(event)
        return event


def _key(conn: SnapshotConnection) -> ConnKey:
    return (conn.netns, conn.laddr, conn.lport, conn.raddr, conn.rport)


def _process_event(kind: Kind, mono: int, process: SnapshotProcess) -> Event:
    return Event(
        kind=kind,
        mono_ns=mono,
        pid=process.pid,
        comm=process.comm,
        netns=process.netns,
        extra={"ppid": process.ppid, "source": "proc"},
    )
