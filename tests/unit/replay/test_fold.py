"""The fast fold computes exactly what the one-event-at-a-time fold does."""

from __future__ import annotations

import itertools
from collections.abc import Collection

from hypothesis import given, settings
from hypothesis import strategies as st

from eventlog.events import OPEN_STATES, TCP_LISTEN, Kind, LoggedEvent, Snapshot, SnapshotConnection
from replay.fold import Fold
from replay.state import ReplayState, TupleKey

NS = 4026531833
LO = bytes([127, 0, 0, 1])


class MemoryLog:
    """An in-memory twin of LogReader's lookups: rows by position."""

    def __init__(self) -> None:
        self.events: dict[int, LoggedEvent] = {}
        self.snapshots: dict[int, Snapshot] = {}

    def add(self, position: int, kind: int, sock: int | None, port: int, pid: int = 1) -> None:
        self.events[position] = LoggedEvent(
            position, 1, position, kind, position, pid, "p", NS, LO, port, LO, 80, sock,
            None, None, {"namespace_list": [NS]} if kind == Kind.SNAPSHOT else None,
        )  # fmt: skip

    def events_at(self, positions: Collection[int]) -> dict[int, LoggedEvent]:
        return {p: self.events[p] for p in positions}

    def pids_at(self, positions: Collection[int]) -> dict[int, int | None]:
        return {p: self.events[p].pid for p in positions}

    def tuples_at(self, positions: Collection[int]) -> dict[int, TupleKey]:
        return {p: (1, NS, LO, self.events[p].lport or 0, LO, 80) for p in positions}

    def snapshot(self, position: int) -> Snapshot:
        return self.snapshots.get(position, Snapshot())

    def snapshot_socket_keys(
        self, recording: int, position: int
    ) -> tuple[list[TupleKey], list[TupleKey]]:
        keys: tuple[list[TupleKey], list[TupleKey]] = ([], [])
        for c in self.snapshot(position).connections:
            if c.state != TCP_LISTEN:
                key = (recording, c.netns, c.laddr, c.lport, c.raddr, c.rport)
                keys[0 if c.state in OPEN_STATES else 1].append(key)
        return keys

    def snapshot_conntrack_keys(self, position: int) -> list[tuple[int, int]]:
        return [(c.netns, c.ct_id) for c in self.snapshot(position).conntrack]

    def snapshot_process_keys(self, recording: int, position: int) -> set[tuple[int, int]]:
        return {(recording, p.pid) for p in self.snapshot(position).processes}


step = st.tuples(
    st.sampled_from(
        [
            Kind.CONNECT,
            Kind.ACCEPT,
            Kind.CLOSE,
            Kind.CLOSE,
            Kind.EXEC,
            Kind.EXIT,
            Kind.SNAPSHOT,
            Kind.CONNECT_FAILED,
        ]
    ),
    st.one_of(st.none(), st.integers(1, 12)),  # socket ids collide and repeat on purpose
    st.integers(40000, 40012),
    st.integers(1, 4),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(step, max_size=80), st.lists(st.integers(0, 80), max_size=4))
def test_fast_fold_equals_the_definition(
    steps: list[tuple[Kind, int | None, int, int]], cuts: list[int]
) -> None:
    log = MemoryLog()
    rows = []
    for position, (kind, sock, port, pid) in enumerate(steps, start=1):
        log.add(position, int(kind), sock, port, pid)
        if kind == Kind.SNAPSHOT:
            shown = (SnapshotConnection(NS, LO, port, LO, 80, 1, 1, 0, pid),)
            log.snapshots[position] = Snapshot(connections=shown)
        rows.append((position, int(kind), sock))
    fast, slow = Fold(ReplayState(), log, retain=True), Fold(ReplayState(), log, retain=True)
    # Pages end anywhere: the fold must not depend on where.
    bounds = sorted({0, len(rows), *[c % (len(rows) + 1) for c in cuts]})
    for start, end in itertools.pairwise(bounds):
        fast.apply(1, rows[start:end])
        slow._apply_each(1, rows[start:end])
        if rows[start:end]:
            slow.state.position = rows[end - 1][0]
        assert fast.state == slow.state, (start, end)
    assert fast.state == slow.state
    assert fast.state.to_bytes() == slow.state.to_bytes()
    assert sorted(fast.retained.pairs) == sorted(slow.retained.pairs)
    assert sorted(fast.retained.closed, key=repr) == sorted(slow.retained.closed, key=repr)
    assert sorted(fast.retained.failed) == sorted(slow.retained.failed)
    assert sorted(fast.retained.exited) == sorted(slow.retained.exited)
