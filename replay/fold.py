"""The fold: ``(state, event) -> state``, over the log in position order.

The fold reads a narrow projection of each event, ``(position, kind, sock_id)``, a span of
one recording at a time, and looks whole rows up by position only where it must: snapshots,
process and conntrack events, and closes of sockets it knows only by their addresses. It
reads no clock and no environment: the same log gives the same state.

``_apply_each`` is the definition: one event at a time. ``_apply_fast`` computes the same
state for a run of events between two snapshots with set operations (most sockets open and
close within a run and cancel out), and falls back to ``_apply_each`` on anything unusual
(a socket id twice, a close before its open). A property test holds the two equal.
``apply_runs`` does what ``apply`` does with ``_apply_fast``'s passes and the snapshot's set
algebra in C (``replay/_fold.c``), reading the runs straight from a SQLite log.

With ``retain=True`` the fold also keeps what ended while it folded (closed sockets, failed
connects, exited processes): that is how a window (T - window, T] is replayed. The order of
what is retained is not part of the result (whoever reads it sorts).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from itertools import compress
from operator import gt
from typing import NamedTuple, Protocol

from eventlog.events import OPEN_STATES, TCP_LISTEN, Kind, LoggedEvent
from replay import native
from replay.state import ProcessKey, ReplayState, TupleKey

NarrowRow = tuple[int, int, int | None]  # position, kind, sock_id
# The same rows as columns: positions, kinds, socket ids.
Columns = tuple[tuple[int, ...], tuple[int, ...], tuple[int | None, ...]]

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
_PROCESS_KINDS = frozenset({_EXEC, _EXIT})


def _is_unkeyed_close(row: NarrowRow) -> bool:
    return row[1] == _CLOSE and row[2] is None


class LogLookup(Protocol):
    """Whole rows by position, for the few events the narrow projection does not cover."""

    def events_at(self, positions: Collection[int]) -> dict[int, LoggedEvent]: ...

    def tuples_at(self, positions: Collection[int]) -> dict[int, TupleKey]: ...

    def pids_at(self, positions: Collection[int]) -> dict[int, int | None]: ...

    def snapshot_socket_keys(
        self, recording: int, position: int
    ) -> tuple[list[TupleKey], list[TupleKey]]: ...

    def snapshot_process_keys(self, recording: int, position: int) -> set[ProcessKey]: ...

    def snapshot_conntrack_keys(self, position: int) -> list[tuple[int, int]]: ...


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
    # The usual case, kept lean: (open position, close position) of sockets whose open and
    # close events were both folded. Everything else ended is in ``closed``.
    pairs: list[tuple[int, int]] = field(default_factory=list)
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
    def __init__(
        self,
        state: ReplayState,
        lookup: LogLookup,
        retain: bool = False,
        use_native: bool = native.AVAILABLE,
        runs: native.RunReader | None = None,
    ) -> None:
        self.state = state
        self.lookup = lookup
        self.retain = retain
        self.use_native = use_native  # the snapshot's set algebra in C
        self.runs = runs  # the C reader of the log behind ``lookup``, if it is a SQLite file
        self.retained = Retained()
        self._tuples: dict[int, TupleKey] = {}  # open position -> addresses (a cache)

    def apply(self, recording: int, rows: list[NarrowRow]) -> None:
        """Fold ``rows`` (one recording's, in position order) into the state."""
        if not rows:
            return
        columns: Columns = tuple(zip(*rows, strict=True))  # type: ignore[assignment]
        positions, kinds, socks = columns
        start = 0
        for index in compress(range(len(rows)), map(_SNAPSHOT.__eq__, kinds)):
            run = (positions[start:index], kinds[start:index], socks[start:index])
            self._apply_fast(recording, rows[start:index], run)
            self._apply_snapshot(recording, positions[index])
            start = index + 1
        self._apply_fast(recording, rows[start:], (positions[start:], kinds[start:], socks[start:]))
        self.state.position = positions[-1]

    def apply_runs(
        self,
        recording: int,
        runs: native.RunReader,
        after: int,
        upto: int,
        wall_range: tuple[int | None, int] | None = None,
        clock: list[tuple[int, int]] | None = None,
    ) -> tuple[int, int]:
        """``apply`` for the events ``after < position <= upto`` (one recording's), read and
        run by run cancelled in C; with ``wall_range`` (exclusive start, inclusive end) only
        those whose wall time by ``clock`` (the recording's segments) falls in it. Returns the
        number of events folded and the last position read, short of ``upto`` where the
        reader declined a row: the caller folds the rest.
        """
        folded = 0
        while after < upto:
            sockets = self.state.sockets_of(recording)
            if wall_range is None:
                outcome = runs.fold_run(after, upto, sockets, self.retain)
            else:
                outcome = runs.fold_run(after, upto, sockets, self.retain, clock, *wall_range)
            if outcome is None:
                break
            count, last, snapshot, rows, fast, folded_last = outcome
            if last == after:
                break
            if rows is not None:
                self._apply_each(recording, rows)
            elif fast is not None:
                self._apply_outcome(recording, *fast)
            if snapshot is not None:
                self._apply_snapshot(recording, snapshot)
                count += 1
            if folded_last is not None:
                self.state.position = folded_last
            after = last
            folded += count
        return folded, after

    # -- the definition --------------------------------------------------------------------
    def _apply_each(self, recording: int, rows: list[NarrowRow]) -> None:
        sockets = self.state.sockets_of(recording)
        details = self._details([(p, kind) for p, kind, _ in rows if kind in _FETCHED])
        for position, kind, sock_id in rows:
            if kind == _CLOSE:
                self._close(recording, position, sock_id)
            elif kind in _OPEN_KINDS:
                key = sock_id if sock_id is not None else -position
                if key not in sockets:
                    sockets[key] = position
            elif kind == _FAILED:
                if self.retain:
                    self.retained.failed.append(position)
            elif kind == _SNAPSHOT:
                self._apply_snapshot(recording, position)
            elif kind in _LOOKED_UP:
                self._apply_looked_up(recording, position, kind, details[position])

    def _details(self, wanted: list[tuple[int, int]]) -> dict[int, LoggedEvent | int | None]:
        """What process and conntrack events need: the pid, or the whole event."""
        pids = [p for p, kind in wanted if kind in _PROCESS_KINDS]
        found: dict[int, LoggedEvent | int | None] = dict(self.lookup.pids_at(pids)) if pids else {}
        whole = [p for p, kind in wanted if kind not in _PROCESS_KINDS]
        if whole:
            found.update(self.lookup.events_at(whole))
        return found

    def _close(self, recording: int, position: int, sock_id: int | None) -> None:
        if sock_id is not None:
            missed_at = None
            opened = self.state.sockets_of(recording).pop(sock_id, None)
            if opened is None:
                missed = self.state.missing_of(recording).pop(sock_id, None)
                if missed is not None:
                    opened, missed_at = missed
            if opened is not None:
                self._tuples.pop(opened, None)
                if self.retain:
                    if missed_at is None:
                        self.retained.pairs.append((opened, position))
                    else:
                        self.retained.closed.append(Closed(SocketRef(opened), position, missed_at))
                return
        self._close_by_tuple(position)

    def _apply_looked_up(
        self, recording: int, position: int, kind: int, detail: LoggedEvent | int | None
    ) -> None:
        state = self.state
        if kind == _EXEC:
            state.processes[(recording, detail or 0)] = position  # type: ignore[index]
        elif kind == _EXIT:
            gone = state.processes.pop((recording, detail or 0), None)  # type: ignore[arg-type]
            if gone is not None and self.retain:
                self.retained.exited.append(position)
        elif kind in _CONNTRACK and isinstance(detail, LoggedEvent):
            extra = detail.extra or {}
            key = (recording, detail.netns or 0, int(extra.get("ct_id", 0)))
            if kind == Kind.CT_DESTROY:
                state.conntrack.pop(key, None)
            else:
                state.conntrack[key] = position

    # -- the same, faster ------------------------------------------------------------------
    def _apply_fast(self, recording: int, rows: list[NarrowRow], columns: Columns) -> None:
        """``_apply_each`` for a run without snapshots, by set operations on columns.

        Every pass below runs in C (map, compress, zip, dict, set); Python only touches the
        few sockets that outlive the run.
        """
        if not rows:
            return
        positions, kinds, socks = columns
        is_open = list(map(_OPEN_KINDS.__contains__, kinds))
        is_close = list(map(_CLOSE.__eq__, kinds))
        open_ids = list(compress(socks, is_open))
        close_ids = list(compress(socks, is_close))
        opens: dict[int | None, int] = dict(
            zip(open_ids, compress(positions, is_open), strict=True)
        )
        closes: dict[int | None, int] = dict(
            zip(close_ids, compress(positions, is_close), strict=True)
        )
        sockets = self.state.sockets_of(recording)
        unusual = (
            len(opens) != len(open_ids)  # a socket id twice
            or len(closes) != len(close_ids)
            or None in opens  # an open without a socket id
            or not sockets.keys().isdisjoint(opens)  # an open of a socket already open
        )
        closes.pop(None, None)
        cancelled = opens.keys() & closes.keys()
        cancelled_ids = list(cancelled)
        opened_at = list(map(opens.__getitem__, cancelled_ids))
        closed_at = list(map(closes.__getitem__, cancelled_ids))
        if unusual or any(map(gt, opened_at, closed_at)):  # or a close before its open
            self._apply_each(recording, rows)
            return
        # The closes left over may fall back to their addresses, where two can compete for
        # the same snapshot socket: they go in log order, as one at a time would take them.
        leftover = [(closes[sock_id], sock_id) for sock_id in closes.keys() - cancelled]
        if None in close_ids:
            leftover.extend((p, None) for p in compress(positions, map(_is_unkeyed_close, rows)))
        fetched = list(map(_FETCHED.__contains__, kinds))
        self._apply_outcome(
            recording,
            list(zip(opened_at, closed_at, strict=True)) if self.retain else [],
            list(compress(positions, map(_FAILED.__eq__, kinds))) if self.retain else [],
            sorted(leftover),
            list(zip(compress(positions, fetched), compress(kinds, fetched), strict=True)),
            {sock_id: opens[sock_id] for sock_id in opens.keys() - cancelled},  # type: ignore[misc]
        )

    def _apply_outcome(
        self,
        recording: int,
        pairs: list[tuple[int, int]],
        failed: list[int],
        leftover: list[tuple[int, int | None]],
        others: list[tuple[int, int]],
        opens: dict[int, int],
    ) -> None:
        """What a run leaves once its sockets that opened and closed in it cancel out: those
        pairs and its failed connects (kept when retaining), the closes of older sockets (in
        log order), its process and conntrack events, and the sockets it leaves open."""
        if self.retain:
            self.retained.pairs.extend(pairs)
            self.retained.failed.extend(failed)
        for position, sock_id in leftover:
            self._close(recording, position, sock_id)
        self.state.sockets_of(recording).update(opens)
        if others:
            details = self._details(others)
            for position, kind in others:
                self._apply_looked_up(recording, position, kind, details[position])

    # -- the rarer paths -------------------------------------------------------------------
    def _close_by_tuple(self, position: int) -> None:
        """A close for a socket known only by its addresses (opened before the recording)."""
        key = self.lookup.tuples_at([position])[position]
        snapshot_position = self.state.snapshot_sockets.pop(key, None)
        if self.retain:
            ref = SocketRef(None, snapshot_position, key if snapshot_position else None)
            self.retained.closed.append(Closed(ref, position))

    def _open_tuples(self, recording: int) -> dict[int, TupleKey]:
        """The addresses of every socket this recording has open by its events, by key."""
        ours = self.state.sockets_of(recording)
        tuples = self._cached_tuples(ours)
        return dict(zip(ours.keys(), map(tuples.__getitem__, ours.values()), strict=True))

    def _cached_tuples(self, sockets: dict[int, int]) -> dict[int, TupleKey]:
        """The address cache (open position -> addresses), covering every one of ``sockets``."""
        tuples = self._tuples
        unknown = set(sockets.values()).difference(tuples.keys())
        if unknown:
            tuples.update(self.lookup.tuples_at(unknown))
        return tuples

    def _reconcile_conntrack(
        self, recording: int, position: int, namespaces: set[int] | None
    ) -> None:
        """The dump is the truth for the namespaces it covered: entries it lacks are gone."""
        conntrack = self.state.conntrack
        dumped = {
            (recording, netns, ct_id)
            for netns, ct_id in self.lookup.snapshot_conntrack_keys(position)
        }
        covered = [key for key in conntrack if namespaces is None or key[1] in namespaces]
        gone = [key for key in covered if key[0] == recording and key not in dumped]
        for key in gone:
            del conntrack[key]
        for key in dumped:
            conntrack.setdefault(key, position)

    def _compare_sockets(
        self, recording: int, position: int, namespaces: set[int] | None
    ) -> tuple[list[int], list[TupleKey], list[TupleKey]]:
        """What the snapshot at ``position`` says of the state's sockets, unordered: the keys
        of open sockets whose addresses it lacks (lost), the snapshot-only sockets it lacks
        (gone), and the addresses it holds open that neither knows (only here); only in the
        namespaces it walked. In C where the module is built (reading the snapshot straight
        from a SQLite log), else the same here.
        """
        state = self.state
        if self.runs is not None:
            compared = self.runs.reconcile_snapshot(
                position, recording, OPEN_STATES, TCP_LISTEN, state.sockets_of(recording),
                state.snapshot_sockets, namespaces,
            )  # fmt: skip
            if compared is not None:
                return compared
        opened, closing = self.lookup.snapshot_socket_keys(recording, position)
        if self.use_native:
            sockets = state.sockets_of(recording)
            tuples = self._cached_tuples(sockets)
            compared = native.reconcile_sockets(
                opened, closing, sockets, tuples, state.snapshot_sockets, recording, namespaces
            )
            if compared is not None:
                return compared
        present = set(opened)
        present.update(closing)
        # Keys are tuples, whose hashes Python does not cache: the set operations below take
        # sets and dicts as operands (never key views) so that stored hashes are reused.

        def walked_here(netns: int) -> bool:
            return namespaces is None or netns in namespaces

        addresses = self._open_tuples(recording)
        by_tuple = dict(zip(addresses.values(), addresses.keys(), strict=True))
        absent = {t for t in set(by_tuple).difference(present) if walked_here(t[1])}
        lost = [by_tuple[t] for t in absent]
        if len(by_tuple) < len(addresses):  # open sockets that share addresses with a later one
            shadowed = addresses.keys() - set(by_tuple.values())
            lost.extend(key for key in shadowed if addresses[key] in absent)
        gone = [
            tkey
            for tkey in set(self.state.snapshot_sockets).difference(present)
            if tkey[0] == recording and walked_here(tkey[1])
        ]
        only_here = set(opened).difference(by_tuple).difference(self.state.snapshot_sockets)
        return lost, gone, list(only_here)

    def _apply_snapshot(self, recording: int, position: int) -> None:
        """Reconcile with what /proc showed: add what only it knows, close what it lost.

        Runs once per snapshot over every open socket, so the comparisons are set operations
        (in C); Python only visits what changed. Keys holding addresses go into the state
        sorted, so its order never depends on the (per-process) hash of bytes.
        """
        state = self.state
        marker = self.lookup.events_at([position])[position]
        walked = (marker.extra or {}).get("namespace_list")
        namespaces = set(walked) if walked is not None else None
        lost, gone, only_here = self._compare_sockets(recording, position, namespaces)
        sockets, missing = state.sockets_of(recording), state.missing_of(recording)
        for key in sorted(lost):
            missing[key] = (sockets.pop(key), position)
        for tkey in sorted(gone):
            seen_at = state.snapshot_sockets.pop(tkey)
            if self.retain:
                ref = SocketRef(None, seen_at, tkey)
                self.retained.closed.append(Closed(ref, None, missing_at=position))
        state.snapshot_sockets.update(dict.fromkeys(sorted(only_here), position))
        # Sockets missed by an earlier snapshot whose close never came are settled now.
        settled = sorted(key for key, (_, missed_at) in missing.items() if missed_at != position)
        for socket_key in settled:
            open_position, missed_at = missing.pop(socket_key)
            if self.retain:
                ref = SocketRef(open_position)
                self.retained.closed.append(Closed(ref, None, missing_at=missed_at))
        if (marker.extra or {}).get("conntrack"):
            self._reconcile_conntrack(recording, position, namespaces)
        if self.runs is None or not self.runs.reconcile_processes(
            position, recording, state.processes
        ):
            live = self.lookup.snapshot_process_keys(recording, position)
            processes = state.processes
            for process_key in sorted(k for k in processes.keys() - live if k[0] == recording):
                del processes[process_key]
            processes.update(dict.fromkeys(live, position))
