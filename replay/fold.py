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
- processes: from an EXEC or a snapshot showing them, until their EXIT or a snapshot without
  them; every EXEC and snapshot that shows a process again starts a new segment, whose
  details come from that event or snapshot row.
- conntrack entries: from a CT_NEW or CT_UPDATE event (each starts a new segment) or a
  snapshot's dump (only if not already known), until CT_DESTROY or a dump of their
  namespace without them.

Whatever ends is handed to ``Ended``; what is still open at the end of a fold is the state.
Each is a set of log positions (where it started, what ended it): the derived store joins
them with the events to make whole rows (replay.derived.derive). Rows are compared by small
integer ids that the derived store gives to socket addresses (``tuple_id``): two sockets
have the same id exactly when their network namespace, addresses (as raw bytes) and ports
are the same.

Nothing here depends on the order of a set or dict: whatever is ended is ended in sorted
order, and the order of ``Ended``'s lists is not part of the result either way.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from eventlog.events import Kind

_CONNECT = int(Kind.CONNECT)
_ACCEPT = int(Kind.ACCEPT)
_CLOSE = int(Kind.CLOSE)
_EXEC = int(Kind.EXEC)
_EXIT = int(Kind.EXIT)
_SNAPSHOT = int(Kind.SNAPSHOT)
_CT_DESTROY = int(Kind.CT_DESTROY)
_CT_CHANGES = frozenset({int(Kind.CT_NEW), int(Kind.CT_UPDATE)})
OPEN_KINDS = frozenset({_CONNECT, _ACCEPT})
# What the fold reads; the rest (CONNECT_FAILED) is not state.
FOLDED_KINDS = frozenset({_CONNECT, _ACCEPT, _CLOSE, _EXEC, _EXIT, _SNAPSHOT, _CT_DESTROY})
FOLDED_KINDS |= _CT_CHANGES

SocketKey = tuple[int, int]  # (recording, socket id, or minus the open's position)
TupleKey = tuple[int, int]  # (recording, tuple id): a socket as /proc shows it
ProcessKey = tuple[int, int]  # (recording, pid)
ConntrackKey = tuple[int, int, int]  # (recording, netns, conntrack id)


class FoldRow(NamedTuple):
    """What the fold reads of one event."""

    position: int
    recording: int
    kind: int
    sock_id: int | None
    tuple_id: int  # socket events: the id of (netns, laddr, lport, raddr, rport); else 0
    pid: int  # process events (0 if the event has none)
    netns: int  # conntrack events
    ct_id: int  # conntrack events


@dataclass(frozen=True)
class SnapshotContent:
    """What the fold needs of one /proc snapshot."""

    namespaces: frozenset[int] | None  # the network namespaces it walked (None: all)
    open_tuples: frozenset[int]  # tuple ids of sockets in an open state
    closing_tuples: frozenset[int]  # of the others that are not listening
    pids: frozenset[int]  # processes it saw
    conntrack: frozenset[tuple[int, int]] | None  # (netns, ct id) it dumped; None: no dump


class FoldSource(Protocol):
    """What the fold looks up beyond the rows it is given."""

    def snapshot(self, recording: int, position: int) -> SnapshotContent: ...

    def tuples_of(self, positions: Collection[int]) -> dict[int, int]:
        """The tuple id of each socket event at ``positions``."""
        ...

    def netns_of(self, tuple_ids: Collection[int]) -> dict[int, int]:
        """The network namespace of each tuple id."""
        ...


class SocketEnd(NamedTuple):
    """A socket's interval, ended (or, in the state, still open)."""

    open_pos: int | None  # its open event, if an event opened it
    snapshot_pos: int | None  # else the snapshot that first showed it ...
    tuple_id: int | None  # ... and its tuple there
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
    processes: dict[ProcessKey, int] = field(default_factory=dict)  # -> exec or snapshot pos
    conntrack: dict[ConntrackKey, int] = field(default_factory=dict)  # -> event or snapshot pos

    def sockets_of(self, recording: int) -> dict[int, int]:
        return self.sockets.setdefault(recording, {})

    def missing_of(self, recording: int) -> dict[int, tuple[int, int]]:
        return self.missing.setdefault(recording, {})

    def open_intervals(self) -> Ended:
        """What is open now, as intervals without an end."""
        open_ = Ended()
        for sockets in self.sockets.values():
            open_.sockets.extend(SocketEnd(p, None, None, None, None) for p in sockets.values())
        for entries in self.missing.values():
            open_.sockets.extend(SocketEnd(p, None, None, None, m) for p, m in entries.values())
        open_.sockets.extend(
            SocketEnd(None, p, tuple_id, None, None)
            for (_, tuple_id), p in self.snapshot_sockets.items()
        )
        open_.processes = [Segment(k, p, None) for k, p in self.processes.items()]
        open_.conntrack = [Segment(k, p, None) for k, p in self.conntrack.items()]
        return open_


class Fold:
    """Folds rows into ``state``, handing what ends to ``ended``."""

    def __init__(self, state: FoldState, source: FoldSource) -> None:
        self.state = state
        self.source = source
        self.ended = Ended()
        self._tuples: dict[int, int] = {}  # open position -> tuple id (a cache)
        self._netns: dict[int, int] = {}  # tuple id -> netns (a cache)

    def apply(self, rows: Iterable[FoldRow]) -> None:
        """Fold ``rows``, in position order."""
        state = self.state
        for row in rows:
            kind = row.kind
            if kind in OPEN_KINDS:
                key = row.sock_id if row.sock_id is not None else -row.position
                sockets = state.sockets_of(row.recording)
                if key not in sockets:
                    sockets[key] = row.position
                    self._tuples[row.position] = row.tuple_id
            elif kind == _CLOSE:
                self._close(row)
            elif kind == _EXEC:
                self._source((row.recording, row.pid), row.position, state.processes, True)
            elif kind == _EXIT:
                self._end((row.recording, row.pid), row.position, state.processes, True)
            elif kind in _CT_CHANGES:
                key = (row.recording, row.netns, row.ct_id)
                self._source(key, row.position, state.conntrack, False)
            elif kind == _CT_DESTROY:
                self._end((row.recording, row.netns, row.ct_id), row.position, state.conntrack, False)
            elif kind == _SNAPSHOT:
                self._apply_snapshot(row.recording, row.position)
            state.position = row.position

    # -- sockets -------------------------------------------------------------------------
    def _close(self, row: FoldRow) -> None:
        recording, position = row.recording, row.position
        if row.sock_id is not None:
            missed_at = None
            opened = self.state.sockets_of(recording).pop(row.sock_id, None)
            if opened is None:
                missed = self.state.missing_of(recording).pop(row.sock_id, None)
                if missed is not None:
                    opened, missed_at = missed
            if opened is not None:
                self._tuples.pop(opened, None)
                self.ended.sockets.append(SocketEnd(opened, None, None, position, missed_at))
                return
        # Known only by its addresses: a socket /proc showed, or nothing at all.
        key = (recording, row.tuple_id)
        seen_at = self.state.snapshot_sockets.pop(key, None)
        tuple_id = row.tuple_id if seen_at is not None else None
        self.ended.sockets.append(SocketEnd(None, seen_at, tuple_id, position, None))

    def _open_tuples(self, recording: int) -> dict[int, int]:
        """The tuple id of every socket this recording has open by its events, by key."""
        sockets = self.state.sockets_of(recording)
        unknown = [p for p in sockets.values() if p not in self._tuples]
        if unknown:
            self._tuples.update(self.source.tuples_of(unknown))
        return {key: self._tuples[p] for key, p in sockets.items()}

    def _walked(self, tuple_ids: Iterable[int], namespaces: frozenset[int] | None) -> set[int]:
        """The tuple ids among ``tuple_ids`` whose namespace the snapshot walked."""
        ids = set(tuple_ids)
        if namespaces is None:
            return ids
        unknown = [t for t in ids if t not in self._netns]
        if unknown:
            self._netns.update(self.source.netns_of(unknown))
        return {t for t in ids if self._netns[t] in namespaces}

    def _apply_snapshot(self, recording: int, position: int) -> None:
        """Reconcile with what /proc showed: add what only it knows, close what it lost."""
        state, content = self.state, self.source.snapshot(recording, position)
        present = content.open_tuples | content.closing_tuples
        open_tuples = self._open_tuples(recording)
        absent = self._walked(set(open_tuples.values()) - present, content.namespaces)
        sockets, missing = state.sockets_of(recording), state.missing_of(recording)
        for key in sorted(k for k, t in open_tuples.items() if t in absent):
            opened = sockets.pop(key)
            self._tuples.pop(opened, None)
            missing[key] = (opened, position)
        known = {t for (r, t) in state.snapshot_sockets if r == recording}
        for tuple_id in sorted(self._walked(known - present, content.namespaces)):
            seen_at = state.snapshot_sockets.pop((recording, tuple_id))
            self.ended.sockets.append(SocketEnd(None, seen_at, tuple_id, None, position))
        only_here = content.open_tuples - set(open_tuples.values()) - known
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
        """``key`` is now as described at ``position``."""
        previous = table.get(key)
        if previous is not None:
            self._segment(processes, Segment(key, previous, position))
        table[key] = position

    def _end(self, key: tuple[int, ...], position: int, table: dict, processes: bool) -> None:  # type: ignore[type-arg]
        previous = table.pop(key, None)
        if previous is not None:
            self._segment(processes, Segment(key, previous, position))

    def _segment(self, processes: bool, segment: Segment) -> None:
        (self.ended.processes if processes else self.ended.conntrack).append(segment)

    def _reconcile_processes(self, recording: int, position: int, pids: frozenset[int]) -> None:
        processes = self.state.processes
        gone = sorted(k for k in processes if k[0] == recording and k[1] not in pids)
        for key in gone:
            self._end(key, position, processes, True)
        for pid in sorted(pids):
            self._source((recording, pid), position, processes, True)

    def _reconcile_conntrack(
        self, recording: int, position: int, content: SnapshotContent
    ) -> None:
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
