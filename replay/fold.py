"""The fold: ``(state, event) -> state``, over the log in position order.

The fold reads a narrow projection of each event (position, recording, kind, monotonic time,
pid, socket id) and looks whole rows up by position only where it must: snapshots, closes of
sockets it knows only by their address, and opens that happened while a snapshot walk was
reading /proc (so that a connection seen by both is kept once). It reads no clock and no
environment: the same log gives the same state.

With ``retain=True`` it also keeps what ended while it folded (closed sockets, failed
connects, exited processes): that is how a window (T - window, T] is replayed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from recorder.events import Kind, LoggedEvent, Snapshot
from recorder.procfs import OPEN_STATES, TCP_LISTEN
from replay.state import ReplayState, SocketKey, TupleKey

NarrowRow = tuple[
    int, int, int, int, int | None, int | None
]  # position, rec, kind, mono, pid, sock

_CONNECT = int(Kind.CONNECT)
_ACCEPT = int(Kind.ACCEPT)
_CLOSE = int(Kind.CLOSE)
_FAILED = int(Kind.CONNECT_FAILED)
_EXEC = int(Kind.EXEC)
_EXIT = int(Kind.EXIT)
_SNAPSHOT = int(Kind.SNAPSHOT)
_CONNTRACK = frozenset({int(Kind.CT_NEW), int(Kind.CT_UPDATE), int(Kind.CT_DESTROY)})


class LogLookup(Protocol):
    """Whole rows by position, for the few events the narrow projection does not cover."""

    def events_at(self, positions: Collection[int]) -> dict[int, LoggedEvent]: ...

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

    def apply(self, rows: Iterable[NarrowRow]) -> None:
        """Fold ``rows`` (in position order) into the state."""
        state = self.state
        open_sockets = state.open_sockets
        walk_until = state.walk_until
        processes = state.processes
        retain = self.retain
        closed = self.retained.closed
        position = state.position
        for position, recording, kind, mono, pid, sock_id in rows:
            if kind == _CLOSE:
                if sock_id is not None:
                    opened = open_sockets.pop((recording, sock_id), None)
                    if opened is not None:
                        if retain:
                            closed.append(Closed(SocketRef(opened), position))
                        continue
                    was_missing = state.missing.pop((recording, sock_id), None)
                    if was_missing is not None:
                        if retain:
                            closed.append(Closed(SocketRef(was_missing[0]), position))
                        continue
                self._close_by_tuple(position)
            elif kind == _CONNECT or kind == _ACCEPT:  # noqa: PLR1714, SIM109 - hot path
                key: SocketKey = (recording, sock_id if sock_id is not None else -position)
                if key in open_sockets:
                    continue
                open_sockets[key] = position
                if mono <= walk_until.get(recording, -1):
                    self._merge_with_snapshot(position)
            elif kind == _FAILED:
                if retain:
                    self.retained.failed.append(position)
            elif kind == _EXEC:
                processes[(recording, pid or 0)] = position
            elif kind == _EXIT:
                if processes.pop((recording, pid or 0), None) is not None and retain:
                    self.retained.exited.append(position)
            elif kind == _SNAPSHOT:
                self._apply_snapshot(position, recording)
            elif kind in _CONNTRACK:
                self._apply_conntrack(position)
        state.position = position

    # -- the rarer paths -------------------------------------------------------------------
    def _close_by_tuple(self, position: int) -> None:
        """A close for a socket known only by its addresses (opened before the recording)."""
        event = self.lookup.events_at([position])[position]
        key = tuple_key(event)
        snapshot_position = self.state.snapshot_sockets.pop(key, None)
        if self.retain:
            ref = SocketRef(None, snapshot_position, key if snapshot_position else None)
            self.retained.closed.append(Closed(ref, position))

    def _merge_with_snapshot(self, position: int) -> None:
        """An open during a snapshot walk: if the walk saw it too, keep only the event."""
        if not self.state.snapshot_sockets:
            return
        event = self.lookup.events_at([position])[position]
        self.state.snapshot_sockets.pop(tuple_key(event), None)

    def _apply_snapshot(self, position: int, recording: int) -> None:
        state = self.state
        marker = self.lookup.events_at([position])[position]
        extra = marker.extra or {}
        walked = extra.get("namespace_list")
        namespaces = set(walked) if walked is not None else None
        state.walk_until[recording] = marker.mono_ns + int(extra.get("walk_ns", 0))
        snapshot = self.lookup.snapshot(position)

        def key_of(conn: object) -> TupleKey:
            return (recording, conn.netns, conn.laddr, conn.lport, conn.raddr, conn.rport)  # type: ignore[attr-defined]

        present = {key_of(c) for c in snapshot.connections if c.state != TCP_LISTEN}
        opened = sorted(key_of(c) for c in snapshot.connections if c.state in OPEN_STATES)

        def walked_here(netns: int) -> bool:
            return namespaces is None or netns in namespaces

        ours = sorted(
            (key, open_position)
            for key, open_position in state.open_sockets.items()
            if key[0] == recording
        )
        rows = self.lookup.events_at([open_position for _, open_position in ours])
        by_tuple = {}
        for key, open_position in ours:
            tkey = tuple_key(rows[open_position])
            by_tuple[tkey] = key
            if tkey not in present and walked_here(tkey[1]):
                del state.open_sockets[key]
                state.missing[key] = (open_position, position)
        for tkey in sorted(state.snapshot_sockets):
            if tkey[0] == recording and tkey not in present and walked_here(tkey[1]):
                seen_at = state.snapshot_sockets.pop(tkey)
                if self.retain:
                    ref = SocketRef(None, seen_at, tkey)
                    self.retained.closed.append(Closed(ref, None, missing_at=position))
        for tkey in opened:
            if tkey not in by_tuple and tkey not in state.snapshot_sockets:
                state.snapshot_sockets[tkey] = position
        # Missed sockets from an earlier snapshot whose close never came are settled now.
        for key in sorted(state.missing):
            open_position, missed_at = state.missing[key]
            if key[0] == recording and missed_at != position:
                del state.missing[key]
                if self.retain:
                    ref = SocketRef(open_position)
                    self.retained.closed.append(Closed(ref, None, missing_at=missed_at))
        live = {process.pid for process in snapshot.processes}
        for key in sorted(state.processes):
            if key[0] == recording and key[1] not in live:
                del state.processes[key]
        for pid in sorted(live):
            state.processes[(recording, pid)] = position

    def _apply_conntrack(self, position: int) -> None:
        """Conntrack changes are folded by ``replay.nat`` (see there); kept by reference."""
        event = self.lookup.events_at([position])[position]
        extra = event.extra or {}
        key = (event.recording_id, event.netns or 0, int(extra.get("ct_id", 0)))
        if event.kind == Kind.CT_DESTROY:
            self.state.conntrack.pop(key, None)
        else:
            self.state.conntrack[key] = position
