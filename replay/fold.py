"""The fold: the log's events, in position order, become intervals.

This is the definition of what replay knows at any moment. It reads no clock and no
environment, only events (in position order) and the snapshots they point at, and it keeps
what is open in a ``FoldState``:

- sockets: open from their open event (CONNECT, ACCEPT) until their CLOSE; keyed per
  recording by socket id (an open without one by minus its position). A /proc snapshot that
  no longer shows an open socket puts it aside as *missing*: if its close still comes before
  the recording's next snapshot, that close ends it; otherwise it ended at the snapshot that
  missed it (and a close that comes later is a close of a socket nothing knows).
- sockets only /proc knows: a snapshot showing an open socket that no event opened; it lasts
  until a close of the same addresses, or a later snapshot of its namespace without it.
- a close that matches nothing: a socket whose only trace is its close.
- processes: from an EXEC, a FORK (the child) or the first snapshot showing them, until their
  EXIT or a snapshot without them; an EXEC of a process already known starts a new segment
  (another program).
  What a process is at a moment is its latest sighting: the EXEC or snapshot row that began
  its segment, or a later snapshot of its recording (which shows it, or the segment would
  have ended there).
- conntrack entries: from a CT_NEW or CT_UPDATE event (each starts a new segment) or a
  snapshot's dump (only if not already known), until CT_DESTROY or a dump of their
  namespace without them.

Whatever ends is handed to ``Ended``; what is still open at the end of a fold is the state.
Each is a set of log positions (where it started, what ended it): the derived store joins
them with the events to make whole rows (replay.derived.derive). A socket's addresses are a
``Tuple``: its network namespace, local address, local port, remote address and remote port
packed into 16 bytes (``tuple_key``; the addresses as the small ids the derived store gives
them, 0 for none), so that two sockets have the same tuple exactly when those five are the
same (addresses as raw bytes), and the fold's sets compare short strings whose hashes
Python keeps.

Nothing here depends on the order of a set or dict: whatever is ended is ended in sorted
order, and the order of ``Ended``'s lists is not part of the result either way. The fold
runs once per event of the log, so its loop is written for speed: plain tuples in, one
branch per kind.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from eventlog.events import Kind

_CONNECT = int(Kind.CONNECT)
_ACCEPT = int(Kind.ACCEPT)
_CLOSE = int(Kind.CLOSE)
_EXEC = int(Kind.EXEC)
_FORK = int(Kind.FORK)
_EXIT = int(Kind.EXIT)
_SNAPSHOT = int(Kind.SNAPSHOT)
_CT_DESTROY = int(Kind.CT_DESTROY)
_CT_CHANGES = frozenset({int(Kind.CT_NEW), int(Kind.CT_UPDATE)})
_PROCESS_STARTS = frozenset({_EXEC, _FORK})  # of a process's segment (a child, another program)
OPEN_KINDS = frozenset({_CONNECT, _ACCEPT})
# What the fold reads; the rest (CONNECT_FAILED) is not state.
FOLDED_KINDS = frozenset({_CONNECT, _ACCEPT, _CLOSE, _EXEC, _FORK, _EXIT, _SNAPSHOT, _CT_DESTROY})
FOLDED_KINDS |= _CT_CHANGES

SocketKey = tuple[int, int]  # (recording, socket id, or minus the open's position)
Tuple = bytes  # a socket's addresses, packed by tuple_key
TupleKey = tuple[int, Tuple]  # (recording, tuple): a socket as /proc shows it
TUPLE = struct.Struct(">IIHIH")  # what tuple_key packs, in this order, big-endian


def tuple_key(netns: int, laddr: int, lport: int, raddr: int, rport: int) -> Tuple:
    """(network namespace inode, local address id, local port, remote address id, remote
    port) as 16 bytes. Namespace inodes and address ids are 32-bit and ports 16-bit, so
    equal keys mean equal fields."""
    return TUPLE.pack(netns, laddr, lport, raddr, rport)


def tuple_fields(key: Tuple) -> tuple[int, int, int, int, int]:
    """The five fields ``tuple_key`` packed."""
    netns, laddr, lport, raddr, rport = TUPLE.unpack(key)
    return netns, laddr, lport, raddr, rport


def tuple_netns(key: Tuple) -> int:
    return int.from_bytes(key[:4], "big")


ProcessKey = tuple[int, int]  # (recording, pid)
ConntrackKey = tuple[int, int, int]  # (recording, netns, conntrack id)


class FoldRow(NamedTuple):
    """What the fold reads of one event (``Fold.apply`` takes plain tuples of this shape)."""

    position: int
    recording: int
    kind: int
    sock_id: int | None
    tuple: Tuple  # socket events' addresses
    pid: int  # process events (0 if the event has none)
    netns: int  # conntrack events
    ct_id: int  # conntrack events


@dataclass(frozen=True)
class SnapshotContent:
    """What the fold needs of one /proc snapshot."""

    namespaces: frozenset[int] | None  # the network namespaces it walked (None: all)
    open_tuples: frozenset[Tuple]  # sockets in an open state
    closing_tuples: frozenset[Tuple]  # the others that are not listening
    pids: frozenset[int]  # processes it saw
    conntrack: frozenset[tuple[int, int]] | None  # (netns, ct id) it dumped; None: no dump


class FoldSource(Protocol):
    """What the fold looks up beyond the rows it is given."""

    def snapshot(self, position: int) -> SnapshotContent: ...

    def tuples_of(self, positions: Collection[int]) -> dict[int, Tuple]:
        """The tuple of each socket event at ``positions``."""
        ...


class SocketEnd(NamedTuple):
    """A socket's interval, ended (or, in the state, still open)."""

    open_pos: int | None  # its open event, if an event opened it
    snapshot_pos: int | None  # else the snapshot that first showed it ...
    tuple: Tuple | None  # ... and its tuple there
    close_pos: int | None  # the close that ended it
    missing_pos: int | None  # the snapshot that no longer showed it


class Segment(NamedTuple):
    """A process or conntrack entry as one event or snapshot row described it, and until
    where (None: still so)."""

    key: tuple[int, ...]  # ProcessKey or ConntrackKey
    source_pos: int
    end_pos: int | None


@dataclass
class Ended:
    sockets: list[SocketEnd] = field(default_factory=list)
    processes: list[Segment] = field(default_factory=list)
    conntrack: list[Segment] = field(default_factory=list)


@dataclass
class FoldState:
    """Everything open after folding the log up to ``position``."""

    position: int = 0
    sockets: dict[int, dict[int, int]] = field(default_factory=dict)  # recording -> key -> open
    # Open by their events but absent from a later snapshot: key -> (open, snapshot position).
    missing: dict[int, dict[int, tuple[int, int]]] = field(default_factory=dict)
    snapshot_sockets: dict[TupleKey, int] = field(default_factory=dict)  # -> snapshot position
    # recording -> pid -> where its segment began (an EXEC or a snapshot)
    processes: dict[int, dict[int, int]] = field(default_factory=dict)
    conntrack: dict[ConntrackKey, int] = field(default_factory=dict)  # -> event or snapshot pos

    def sockets_of(self, recording: int) -> dict[int, int]:
        return self.sockets.setdefault(recording, {})

    def missing_of(self, recording: int) -> dict[int, tuple[int, int]]:
        return self.missing.setdefault(recording, {})

    def processes_of(self, recording: int) -> dict[int, int]:
        return self.processes.setdefault(recording, {})

    def open_intervals(self) -> Ended:
        """What is open now, as intervals without an end."""
        open_ = Ended()
        for sockets in self.sockets.values():
            open_.sockets.extend(SocketEnd(p, None, None, None, None) for p in sockets.values())
        for entries in self.missing.values():
            open_.sockets.extend(SocketEnd(p, None, None, None, m) for p, m in entries.values())
        open_.sockets.extend(
            SocketEnd(None, p, tuple_, None, None)
            for (_, tuple_), p in self.snapshot_sockets.items()
        )
        open_.processes = [
            Segment((r, pid), p, None) for r, ps in self.processes.items() for pid, p in ps.items()
        ]
        open_.conntrack = [Segment(k, p, None) for k, p in self.conntrack.items()]
        return open_


class Fold:
    """Folds rows into ``state``, handing what ends to ``ended``."""

    def __init__(self, state: FoldState, source: FoldSource) -> None:
        self.state = state
        self.source = source
        self.ended = Ended()
        # recording -> socket key -> tuple, beside state.sockets (filled on demand)
        self._tuples: dict[int, dict[int, Tuple]] = {}

    def apply(self, rows: Iterable[tuple[int, int, int, int | None, Tuple, int, int, int]]) -> None:
        """Fold ``rows`` (``FoldRow``s, or plain tuples in its order), in position order."""
        state = self.state
        ended_sockets = self.ended.sockets
        position = state.position
        for position, recording, kind, sock_id, tuple_, pid, netns, ct_id in rows:
            if kind in OPEN_KINDS:
                key = sock_id if sock_id is not None else -position
                sockets = state.sockets.get(recording)
                if sockets is None:
                    sockets = state.sockets_of(recording)
                if key not in sockets:
                    sockets[key] = position
                    tuples = self._tuples.get(recording)
                    if tuples is not None:
                        tuples[key] = tuple_
            elif kind == _CLOSE:
                ended_sockets.append(self._close(position, recording, sock_id, tuple_))
            elif kind in _PROCESS_STARTS:
                self._source((recording, pid), position, state.processes_of(recording), True)
            elif kind == _EXIT:
                self._end((recording, pid), position, state.processes_of(recording), True)
            elif kind in _CT_CHANGES:
                self._source((recording, netns, ct_id), position, state.conntrack, False)
            elif kind == _CT_DESTROY:
                self._end((recording, netns, ct_id), position, state.conntrack, False)
            elif kind == _SNAPSHOT:
                self._apply_snapshot(recording, position)
        state.position = position

    # -- sockets -------------------------------------------------------------------------
    def _close(
        self, position: int, recording: int, sock_id: int | None, tuple_: Tuple
    ) -> SocketEnd:
        state = self.state
        if sock_id is not None:
            missed_at = None
            opened = state.sockets_of(recording).pop(sock_id, None)
            if opened is None:
                missed = state.missing_of(recording).pop(sock_id, None)
                if missed is not None:
                    opened, missed_at = missed
            else:
                tuples = self._tuples.get(recording)
                if tuples is not None:
                    tuples.pop(sock_id, None)
            if opened is not None:
                return SocketEnd(opened, None, None, position, missed_at)
        # Known only by its addresses: a socket /proc showed, or nothing at all.
        seen_at = state.snapshot_sockets.pop((recording, tuple_), None)
        return SocketEnd(None, seen_at, tuple_ if seen_at is not None else None, position, None)

    def _open_tuples(self, recording: int) -> dict[int, Tuple]:
        """The tuple of every socket this recording has open by its events, by key."""
        tuples = self._tuples.get(recording)
        if tuples is None:
            sockets = self.state.sockets_of(recording)
            by_position = self.source.tuples_of(list(sockets.values()))
            tuples = self._tuples[recording] = {k: by_position[p] for k, p in sockets.items()}
        return tuples

    @staticmethod
    def _walked(tuples: set[Tuple], namespaces: frozenset[int] | None) -> set[Tuple]:
        """Those of ``tuples`` in a namespace the snapshot walked."""
        if namespaces is None:
            return tuples
        return {t for t in tuples if tuple_netns(t) in namespaces}

    def _apply_snapshot(self, recording: int, position: int) -> None:
        """Reconcile with what /proc showed: add what only it knows, close what it lost."""
        state, content = self.state, self.source.snapshot(position)
        present = content.open_tuples | content.closing_tuples
        open_tuples = self._open_tuples(recording)
        open_ids = set(open_tuples.values())
        absent = self._walked(open_ids - present, content.namespaces)
        sockets, missing = state.sockets_of(recording), state.missing_of(recording)
        if absent:
            for key in sorted(k for k, t in open_tuples.items() if t in absent):
                missing[key] = (sockets.pop(key), position)
                del open_tuples[key]
        known = {t for (r, t) in state.snapshot_sockets if r == recording}
        for tuple_ in sorted(self._walked(known - present, content.namespaces)):
            seen_at = state.snapshot_sockets.pop((recording, tuple_))
            self.ended.sockets.append(SocketEnd(None, seen_at, tuple_, None, position))
        only_here = content.open_tuples - open_ids - known
        state.snapshot_sockets.update({(recording, t): position for t in sorted(only_here)})
        # Sockets missed by an earlier snapshot whose close never came end where they went.
        for key in sorted(k for k, (_, missed_at) in missing.items() if missed_at != position):
            opened, missed_at = missing.pop(key)
            self.ended.sockets.append(SocketEnd(opened, None, None, None, missed_at))
        if content.conntrack is not None:
            self._reconcile_conntrack(recording, position, content)
        self._reconcile_processes(recording, position, content.pids)

    # -- processes and conntrack entries ---------------------------------------------------
    def _source(self, key: tuple[int, ...], position: int, table: dict, processes: bool) -> None:  # type: ignore[type-arg]
        """``key`` is now as described at ``position`` (``table`` holds it: processes are
        kept per recording, by pid)."""
        at = key[-1] if processes else key
        previous = table.get(at)
        if previous is not None:
            self._segment(processes, Segment(key, previous, position))
        table[at] = position

    def _end(self, key: tuple[int, ...], position: int, table: dict, processes: bool) -> None:  # type: ignore[type-arg]
        previous = table.pop(key[-1] if processes else key, None)
        if previous is not None:
            self._segment(processes, Segment(key, previous, position))

    def _segment(self, processes: bool, segment: Segment) -> None:
        (self.ended.processes if processes else self.ended.conntrack).append(segment)

    def _reconcile_processes(self, recording: int, position: int, pids: frozenset[int]) -> None:
        """Processes the snapshot lacks have ended; those it shows first begin there."""
        processes = self.state.processes_of(recording)
        for pid in sorted(processes.keys() - pids):
            self._end((recording, pid), position, processes, True)
        for pid in sorted(pids - processes.keys()):
            processes[pid] = position

    def _reconcile_conntrack(self, recording: int, position: int, content: SnapshotContent) -> None:
        """A dump holds every entry of the namespaces it covers: the others are gone."""
        conntrack, dumped = self.state.conntrack, content.conntrack or frozenset()
        namespaces = content.namespaces
        gone = sorted(
            key
            for key in conntrack
            if key[0] == recording
            and (namespaces is None or key[1] in namespaces)
            and (key[1], key[2]) not in dumped
        )
        for key in gone:
            self._end(key, position, conntrack, False)
        for netns, ct_id in sorted(dumped):
            conntrack.setdefault((recording, netns, ct_id), position)
