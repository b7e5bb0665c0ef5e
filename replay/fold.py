"""The fold: ``(state, event) -> state``, over the log in position order.

The fold reads a narrow projection of each event, ``(position, kind, sock_id)``, a span of
one recording at a time, and looks whole rows up by position only where it must: snapshots,
process and conntrack events, and closes of sockets it knows only by their addresses. It
reads no clock and no environment: the same log gives the same state.

``_apply_each`` is the definition: one event at a time. ``_apply_fast`` computes the same
state for a run of events between two snapshots with set operations (most sockets open and
close within a run and cancel out), and falls back to ``_apply_each`` on anything unusual
(a socket id twice, a close before its open). A property test holds the two equal.

With ``retain=True`` the fold also keeps what ended while it folded (closed sockets, failed
connects, exited processes): that is how a window (T - window, T] is replayed.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from recorder.events import Kind, LoggedEvent, Snapshot
from recorder.procfs import OPEN_STATES, TCP_LISTEN
from replay.state import ReplayState, SocketKey, TupleKey

NarrowRow = tuple[int, int, int | None]  # position, kind, sock_id

_CONNECT = int(Kind.CONNECT)
_ACCEPT = int(Kind.ACCEPT)
_CLOSE = int(Kind.CLOSE)
_FAILED = int(Kind.CONNECT_FAILED)
_EXEC = int(Kind.EXEC)
_EXIT = int(Kind.EXIT)
_SNAPSHOT = int(Kind.SNAPSHOT)
_CONNTRACK = frozenset({int(Kind.CT_NEW), int(Kind.CT_UPDATE), int(Kind.CT_DESTROY)})
_OPEN_KINDS = frozenset({_CONNECT, _ACCEPT})
_LOOKED_UP = frozenset({_EXEC, _EXIT, _SNAPSHOT}) | _CONNTRACK
_FETCHED = _LOOKED_UP - {_SNAPSHOT}


class LogLookup(Protocol):
    """Whole rows by position, for the few events the narrow projection does not cover."""

    def events_at(self, positions: Collection[int]) -> dict[int, LoggedEvent]: ...

    def tuples_at(self, positions: Collection[int]) -> dict[int, TupleKey]: ...

    def snapshot(self, position: int) -> Snapshot: ...


class SocketRef(NamedTuple):
    """Where a socket's opening is in the log: its open event, or the snapshot that showed it."""

    open_position: int | None
    snapshot_position: int | None = None
    tuple_key: TupleKey | None = None


class Closed(NamedTuple):
    """A socket that ended during a retaining fold."""

    ref: SocketRef
    close_position: int | None  # its CLOSE event; None if it was closed by a snapshot's absence
    missing_at: int | None = None  # the snapshot that no longer showed it


@dataclass
class Retained:
    closed: list[Closed] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)  # CONNECT_FAILED positions
    exited: list[int] = field(default_factory=list)  # EXIT positions


def tuple_key(event: LoggedEvent) -> TupleKey:
    return (
        event.recording_id,
        event.netns or 0,
        event.laddr or b"",
        event.lport or 0,
        event.raddr or b"",
        event.rport or 0,
    )


class Fold:
    def __init__(self, state: ReplayState, lookup: LogLookup, retain: bool = False) -> None:
        self.state = state
        self.lookup = lookup
        self.retain = retain
        self.retained = Retained()
        self._tuples: dict[int, TupleKey] = {}  # open position -> addresses (a cache)

    def apply(self, recording: int, rows: list[NarrowRow]) -> None:
        """Fold ``rows`` (one recording's, in position order) into the state."""
        if not rows:
            return
        if self.retain:
            self._apply_each(recording, rows)
        else:
            start = 0
            for index, (position, kind, _) in enumerate(rows):
                if kind == _SNAPSHOT:
                    self._apply_fast(recording, rows[start:index])
                    self._apply_snapshot(recording, position)
                    start = index + 1
            self._apply_fast(recording, rows[start:])
        self.state.position = rows[-1][0]

    # -- the definition --------------------------------------------------------------------
    def _apply_each(self, recording: int, rows: list[NarrowRow]) -> None:
        state = self.state
        details = self.lookup.events_at([p for p, kind, _ in rows if kind in _FETCHED])
        for position, kind, sock_id in rows:
            if kind == _CLOSE:
                self._close(recording, position, sock_id)
            elif kind in _OPEN_KINDS:
                key: SocketKey = (recording, sock_id if sock_id is not None else -position)
                if key not in state.open_sockets:
                    state.open_sockets[key] = position
            elif kind == _FAILED:
                if self.retain:
                    self.retained.failed.append(position)
            elif kind == _SNAPSHOT:
                self._apply_snapshot(recording, position)
            elif kind in _LOOKED_UP:
                self._apply_looked_up(details[position])

    def _close(self, recording: int, position: int, sock_id: int | None) -> None:
        state = self.state
        if sock_id is not None:
            key = (recording, sock_id)
            opened = state.open_sockets.pop(key, None)
            if opened is None:
                missed = state.missing.pop(key, None)
                opened = missed[0] if missed is not None else None
            if opened is not None:
                self._tuples.pop(opened, None)
                if self.retain:
                    self.retained.closed.append(Closed(SocketRef(opened), position))
                return
        self._close_by_tuple(position)

    def _apply_looked_up(self, event: LoggedEvent) -> None:
        kind, state = event.kind, self.state
        if kind == _EXEC:
            state.processes[(event.recording_id, event.pid or 0)] = event.position
        elif kind == _EXIT:
            gone = state.processes.pop((event.recording_id, event.pid or 0), None)
            if gone is not None and self.retain:
                self.retained.exited.append(event.position)
        elif kind in _CONNTRACK:
            extra = event.extra or {}
            key = (event.recording_id, event.netns or 0, int(extra.get("ct_id", 0)))
            if kind == Kind.CT_DESTROY:
                state.conntrack.pop(key, None)
            else:
                state.conntrack[key] = event.position

    # -- the same, faster ------------------------------------------------------------------
    def _apply_fast(self, recording: int, rows: list[NarrowRow]) -> None:
        """``_apply_each`` for a run without snapshots, by set operations."""
        if not rows:
            return
        open_rows = [(p, s) for p, kind, s in rows if kind in _OPEN_KINDS]
        close_rows = [(p, s) for p, kind, s in rows if kind == _CLOSE]
        opens = {(s if s is not None else -p): p for p, s in open_rows}
        closes = {s: p for p, s in close_rows if s is not None}
        unkeyed_closes = [p for p, s in close_rows if s is None]
        if len(opens) != len(open_rows) or len(closes) + len(unkeyed_closes) != len(close_rows):
            self._apply_each(recording, rows)  # a socket id twice: take it slowly
            return
        open_sockets = self.state.open_sockets
        already_open = {key[1] for key in open_sockets if key[0] == recording}
        if not already_open.isdisjoint(opens.keys()):
            self._apply_each(recording, rows)  # an open of a socket already open: slowly
            return
        cancelled = opens.keys() & closes.keys()
        if any(opens[s] > closes[s] for s in cancelled):
            self._apply_each(recording, rows)  # a close before its open: take it slowly
            return
        for sock_id in sorted(closes.keys() - cancelled):
            self._close(recording, closes[sock_id], sock_id)
        for position in unkeyed_closes:
            self._close_by_tuple(position)
        for sock_id in sorted(opens.keys() - cancelled):
            key = (recording, sock_id)
            if key not in open_sockets:
                open_sockets[key] = opens[sock_id]
        others = [p for p, kind, _ in rows if kind in _LOOKED_UP]
        if others:
            details = self.lookup.events_at(others)
            for position in others:
                self._apply_looked_up(details[position])

    # -- the rarer paths -------------------------------------------------------------------
    def _close_by_tuple(self, position: int) -> None:
        """A close for a socket known only by its addresses (opened before the recording)."""
        key = self.lookup.tuples_at([position])[position]
        snapshot_position = self.state.snapshot_sockets.pop(key, None)
        if self.retain:
            ref = SocketRef(None, snapshot_position, key if snapshot_position else None)
            self.retained.closed.append(Closed(ref, position))

    def _open_tuples(self, recording: int) -> dict[TupleKey, list[SocketKey]]:
        """The addresses of every socket this recording has open by its events."""
        ours = sorted((key, p) for key, p in self.state.open_sockets.items() if key[0] == recording)
        unknown = [p for _, p in ours if p not in self._tuples]
        if unknown:
            self._tuples.update(self.lookup.tuples_at(unknown))
        by_tuple: dict[TupleKey, list[SocketKey]] = {}
        for key, p in ours:
            by_tuple.setdefault(self._tuples[p], []).append(key)
        return by_tuple

    def _apply_snapshot(self, recording: int, position: int) -> None:
        """Reconcile with what /proc showed: add what only it knows, close what it lost."""
        state = self.state
        marker = self.lookup.events_at([position])[position]
        walked = (marker.extra or {}).get("namespace_list")
        namespaces = set(walked) if walked is not None else None
        snapshot = self.lookup.snapshot(position)
        present = set()
        opened = []
        for c in snapshot.connections:
            seen: TupleKey = (recording, c.netns, c.laddr, c.lport, c.raddr, c.rport)
            if c.state != TCP_LISTEN:
                present.add(seen)
            if c.state in OPEN_STATES:
                opened.append(seen)

        def walked_here(netns: int) -> bool:
            return namespaces is None or netns in namespaces

        by_tuple = self._open_tuples(recording)
        for tkey in sorted(by_tuple):
            if tkey not in present and walked_here(tkey[1]):
                for key in by_tuple[tkey]:
                    state.missing[key] = (state.open_sockets.pop(key), position)
        for tkey in sorted(state.snapshot_sockets):
            if tkey[0] == recording and tkey not in present and walked_here(tkey[1]):
                seen_at = state.snapshot_sockets.pop(tkey)
                if self.retain:
                    ref = SocketRef(None, seen_at, tkey)
                    self.retained.closed.append(Closed(ref, None, missing_at=position))
        for tkey in sorted(opened):
            if tkey not in by_tuple and tkey not in state.snapshot_sockets:
                state.snapshot_sockets[tkey] = position
        # Sockets missed by an earlier snapshot whose close never came are settled now.
        for socket_key in sorted(state.missing):
            open_position, missed_at = state.missing[socket_key]
            if socket_key[0] == recording and missed_at != position:
                del state.missing[socket_key]
                if self.retain:
                    ref = SocketRef(open_position)
                    self.retained.closed.append(Closed(ref, None, missing_at=missed_at))
        live = {process.pid for process in snapshot.processes}
        for process_key in sorted(state.processes):
            if process_key[0] == recording and process_key[1] not in live:
                del state.processes[process_key]
        for pid in sorted(live):
            state.processes[(recording, pid)] = position
