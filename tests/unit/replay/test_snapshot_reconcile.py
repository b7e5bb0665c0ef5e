"""A snapshot's reconciliation computes what its one-socket-at-a-time definition does.

``Fold._apply_snapshot`` works by set operations over every open socket; the definition
below walks them one by one. Hypothesis builds states and snapshots where the unusual cases
are common: two recordings, open sockets sharing one address tuple, rows in closing and
listening states, snapshots that walked only some namespaces, sockets known only from an
earlier snapshot, sockets already missed by one.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventlog.events import OPEN_STATES, TCP_LISTEN, Kind, LoggedEvent
from replay import native
from replay.fold import Closed, Fold, SocketRef
from replay.state import ProcessKey, ReplayState, TupleKey
from tests.capabilities import require

NAMESPACES = (4026531833, 4026532100)
ADDRESSES = (bytes([127, 0, 0, 1]), bytes([10, 0, 0, 2]))
SNAPSHOT_AT = 1000  # the snapshot's position, after everything in the state
Row = tuple[int, bytes, int, bytes, int, int]  # netns, laddr, lport, raddr, rport, tcp state


@dataclass
class World:
    """The lookups a snapshot's reconciliation makes, over generated data."""

    recording: int
    rows: list[Row]
    pids: list[int]
    walked: list[int] | None
    tuples: dict[int, TupleKey] = field(default_factory=dict)  # open position -> addresses

    def events_at(self, positions: Collection[int]) -> dict[int, LoggedEvent]:
        extra = {"namespace_list": self.walked} if self.walked is not None else {}
        marker = LoggedEvent(
            SNAPSHOT_AT, self.recording, 0, int(Kind.SNAPSHOT), 0, None, None, None,
            None, None, None, None, None, None, None, extra,
        )  # fmt: skip
        return {p: marker for p in positions if p == SNAPSHOT_AT}

    def tuples_at(self, positions: Collection[int]) -> dict[int, TupleKey]:
        return {p: self.tuples[p] for p in positions}

    def snapshot_socket_keys(
        self, recording: int, position: int
    ) -> tuple[list[TupleKey], list[TupleKey]]:
        keys = [(recording, *row[:5]) for row in self.rows]
        opened = [k for k, row in zip(keys, self.rows, strict=True) if row[5] in OPEN_STATES]
        closing = [
            k
            for k, row in zip(keys, self.rows, strict=True)
            if row[5] not in OPEN_STATES and row[5] != TCP_LISTEN
        ]
        return opened, closing

    def snapshot_process_keys(self, recording: int, position: int) -> set[ProcessKey]:
        return {(recording, pid) for pid in self.pids}

    def snapshot_conntrack_keys(self, position: int) -> list[tuple[int, int]]:
        return []

    def pids_at(self, positions: Collection[int]) -> dict[int, int | None]:
        return {}


def reconcile_by_definition(state: ReplayState, world: World) -> list[Closed]:
    """The reconciliation, one socket at a time: what ``Fold._apply_snapshot`` must match."""
    recording, position = world.recording, SNAPSHOT_AT
    present = {(recording, *row[:5]) for row in world.rows if row[5] != TCP_LISTEN}
    opened = [(recording, *row[:5]) for row in world.rows if row[5] in OPEN_STATES]

    def walked_here(netns: int) -> bool:
        return world.walked is None or netns in world.walked

    sockets, missing = state.sockets_of(recording), state.missing_of(recording)
    addresses = {key: world.tuples[p] for key, p in sockets.items()}
    for key, tkey in addresses.items():
        if tkey not in present and walked_here(tkey[1]):
            missing[key] = (sockets.pop(key), position)
    closed = []
    for tkey in sorted(state.snapshot_sockets):
        if tkey[0] == recording and tkey not in present and walked_here(tkey[1]):
            ref = SocketRef(None, state.snapshot_sockets.pop(tkey), tkey)
            closed.append(Closed(ref, None, missing_at=position))
    open_tuples = set(addresses.values())
    for tkey in opened:
        if tkey not in open_tuples and tkey not in state.snapshot_sockets:
            state.snapshot_sockets[tkey] = position
    for key in sorted(missing):
        open_position, missed_at = missing[key]
        if missed_at != position:
            del missing[key]
            closed.append(Closed(SocketRef(open_position), None, missing_at=missed_at))
    for process in list(state.processes):
        if process[0] == recording and process[1] not in world.pids:
            del state.processes[process]
    for pid in world.pids:
        state.processes[(recording, pid)] = position
    return closed


recordings = st.sampled_from([1, 2])
addresses = st.tuples(
    st.sampled_from(NAMESPACES),
    st.sampled_from(ADDRESSES),
    st.integers(1, 3),  # few ports: tuples are shared often
    st.sampled_from(ADDRESSES),
    st.just(80),
)
tuple_keys = st.builds(lambda r, a: (r, *a), recordings, addresses)
rows = st.builds(lambda a, s: (*a, s), addresses, st.sampled_from([1, 1, 1, 4, 5, 8, 7, 10, 2]))


@st.composite
def worlds(draw: st.DrawFn) -> tuple[ReplayState, World]:
    recording = draw(recordings)
    state = ReplayState(position=SNAPSHOT_AT - 1)
    world = World(
        recording=recording,
        rows=draw(st.lists(rows, max_size=12)),
        pids=draw(st.lists(st.integers(1, 6), max_size=5, unique=True)),
        walked=draw(st.one_of(st.none(), st.lists(st.sampled_from(NAMESPACES), unique=True))),
    )
    open_sockets = draw(st.dictionaries(st.integers(1, 30), tuple_keys, max_size=10))
    for position, (key, tkey) in enumerate(sorted(open_sockets.items()), start=1):
        socket_recording = draw(recordings)
        state.sockets_of(socket_recording)[key] = position
        world.tuples[position] = (socket_recording, *tkey[1:])
    for key in draw(st.lists(st.integers(31, 40), max_size=3, unique=True)):
        missed_at = draw(st.sampled_from([SNAPSHOT_AT, 500]))
        state.missing_of(draw(recordings))[key] = (100 + key, missed_at)
    state.snapshot_sockets = dict.fromkeys(draw(st.lists(tuple_keys, max_size=6)), 200)
    for process in draw(st.lists(st.tuples(recordings, st.integers(1, 6)), max_size=6)):
        state.processes[process] = 300
    return state, world


@pytest.mark.parametrize("use_native", [False, True], ids=["python", "c"])
@settings(max_examples=600, deadline=None)
@given(drawn=worlds())
def test_snapshot_reconciliation_equals_the_definition(
    use_native: bool, drawn: tuple[ReplayState, World]
) -> None:
    require(native.AVAILABLE or not use_native, "the C fold module (replay/_fold.c)")
    state, world = drawn
    expected_state = state.copy()
    expected_closed = reconcile_by_definition(expected_state, world)
    fold = Fold(state, world, retain=True, use_native=use_native)
    fold._apply_snapshot(world.recording, SNAPSHOT_AT)
    assert state == expected_state
    assert sorted(fold.retained.closed, key=repr) == sorted(expected_closed, key=repr)
