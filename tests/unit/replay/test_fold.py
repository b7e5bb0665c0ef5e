"""The fold, on hand-made rows: what ends, and how, for each rule of replay.fold."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from eventlog.events import Kind
from replay.fold import (
    Fold,
    FoldState,
    Segment,
    SnapshotContent,
    SocketEnd,
    Tuple,
    tuple_fields,
    tuple_key,
)

NS, OTHER_NS = 4026531833, 4026532100
R = 1  # the recording


def t(port: int, netns: int = NS) -> Tuple:
    """The tuple of a loopback socket from ``port`` to 8080."""
    return tuple_key(netns, 1, port, 1, 8080)


@dataclass
class Source:
    """Snapshots and tuples given by the test."""

    snapshots: dict[int, SnapshotContent] = field(default_factory=dict)
    tuples: dict[int, Tuple] = field(default_factory=dict)  # open position -> tuple

    def snapshot(self, position: int) -> SnapshotContent:
        return self.snapshots[position]

    def tuples_of(self, positions: Collection[int]) -> dict[int, Tuple]:
        return {p: self.tuples[p] for p in positions}


def snapshot(
    opened: list[Tuple] = (),  # type: ignore[assignment]
    closing: list[Tuple] = (),  # type: ignore[assignment]
    pids: list[int] = (),  # type: ignore[assignment]
    namespaces: list[int] | None = None,
    conntrack: list[tuple[int, int]] | None = None,
) -> SnapshotContent:
    return SnapshotContent(
        None if namespaces is None else frozenset(namespaces),
        frozenset(opened),
        frozenset(closing),
        frozenset(pids),
        None if conntrack is None else frozenset(conntrack),
    )


def row(position: int, kind: Kind, sock: int | None = None, tuple_: Tuple = b"", pid: int = 0,
        netns: int = 0, ct_id: int = 0) -> tuple:  # type: ignore[type-arg]  # fmt: skip
    return (position, R, int(kind), sock, tuple_ or t(0), pid, netns, ct_id)


def fold(rows: list[tuple], source: Source | None = None) -> Fold:  # type: ignore[type-arg]
    source = source or Source()
    for position, _, kind, _, tuple_, *_ in rows:
        if kind in (Kind.CONNECT, Kind.ACCEPT):
            source.tuples[position] = tuple_
    folder = Fold(FoldState(), source)
    folder.apply(rows)
    return folder


def test_tuple_keys_pack_all_five_fields() -> None:
    key = tuple_key(4026531833, 7, 443, 9, 65535)
    assert len(key) == 16 and tuple_fields(key) == (4026531833, 7, 443, 9, 65535)
    assert tuple_key(1, 2, 3, 4, 5) != tuple_key(1, 2, 3, 5, 4)


def test_an_open_and_its_close_are_one_interval() -> None:
    f = fold([row(1, Kind.CONNECT, 10, t(1)), row(2, Kind.CLOSE, 10, t(1))])
    assert f.ended.sockets == [SocketEnd(1, None, None, 2, None)]
    assert f.state.sockets_of(R) == {}


def test_a_second_open_of_an_open_socket_is_ignored() -> None:
    f = fold([row(1, Kind.CONNECT, 10, t(1)), row(2, Kind.ACCEPT, 10, t(1)),
              row(3, Kind.CLOSE, 10, t(1))])  # fmt: skip
    assert f.ended.sockets == [SocketEnd(1, None, None, 3, None)]


def test_an_open_without_socket_id_is_keyed_by_its_position() -> None:
    f = fold([row(5, Kind.CONNECT, None, t(1))])
    assert f.state.sockets_of(R) == {-5: 5}


def test_a_close_of_nothing_known_is_a_close_only_socket() -> None:
    f = fold([row(4, Kind.CLOSE, 99, t(7))])
    assert f.ended.sockets == [SocketEnd(None, None, None, 4, None)]


def test_a_snapshot_shows_a_socket_no_event_opened_until_a_close_of_its_addresses() -> None:
    source = Source({2: snapshot(opened=[t(7)])})
    f = fold([row(2, Kind.SNAPSHOT), row(5, Kind.CLOSE, None, t(7))], source)
    assert f.ended.sockets == [SocketEnd(None, 2, t(7), 5, None)]


def test_a_snapshot_socket_absent_from_a_later_snapshot_ended_there() -> None:
    source = Source({2: snapshot(opened=[t(7)]), 6: snapshot(opened=[])})
    f = fold([row(2, Kind.SNAPSHOT), row(6, Kind.SNAPSHOT)], source)
    assert f.ended.sockets == [SocketEnd(None, 2, t(7), None, 6)]


def test_a_missed_socket_closed_before_the_next_snapshot_ends_at_its_close() -> None:
    source = Source({3: snapshot()})
    f = fold([row(1, Kind.CONNECT, 10, t(1)), row(3, Kind.SNAPSHOT),
              row(4, Kind.CLOSE, 10, t(1))], source)  # fmt: skip
    assert f.ended.sockets == [SocketEnd(1, None, None, 4, 3)]


def test_a_missed_socket_not_closed_by_the_next_snapshot_ended_where_it_went() -> None:
    source = Source({3: snapshot(), 6: snapshot()})
    f = fold([row(1, Kind.CONNECT, 10, t(1)), row(3, Kind.SNAPSHOT), row(6, Kind.SNAPSHOT),
              row(8, Kind.CLOSE, 10, t(1))], source)  # fmt: skip
    assert f.ended.sockets == [
        SocketEnd(1, None, None, None, 3),  # settled at the second snapshot
        SocketEnd(None, None, None, 8, None),  # its late close knows nothing
    ]


def test_a_closing_state_still_counts_as_present() -> None:
    source = Source({3: snapshot(closing=[t(1)])})
    f = fold([row(1, Kind.CONNECT, 10, t(1)), row(3, Kind.SNAPSHOT)], source)
    assert f.state.sockets_of(R) == {10: 1} and f.ended.sockets == []


def test_only_walked_namespaces_are_judged() -> None:
    source = Source({3: snapshot(namespaces=[OTHER_NS])})
    f = fold([row(1, Kind.CONNECT, 10, t(1, NS)), row(3, Kind.SNAPSHOT)], source)
    assert f.state.sockets_of(R) == {10: 1}  # not walked: not missed
    source = Source({3: snapshot(namespaces=[NS])})
    f = fold([row(1, Kind.CONNECT, 10, t(1, NS)), row(3, Kind.SNAPSHOT)], source)
    assert f.state.missing_of(R) == {10: (1, 3)}


def test_a_socket_open_by_its_event_is_not_also_a_snapshot_socket() -> None:
    source = Source({3: snapshot(opened=[t(1), t(2)])})
    f = fold([row(1, Kind.CONNECT, 10, t(1)), row(3, Kind.SNAPSHOT)], source)
    assert f.state.snapshot_sockets == {(R, t(2)): 3}


def test_processes_begin_at_exec_or_first_sighting_and_end_at_exit_or_absence() -> None:
    source = Source({3: snapshot(pids=[100, 200]), 6: snapshot(pids=[200])})
    f = fold([row(1, Kind.EXEC, pid=100), row(3, Kind.SNAPSHOT), row(4, Kind.EXEC, pid=200),
              row(6, Kind.SNAPSHOT), row(7, Kind.EXIT, pid=200)], source)  # fmt: skip
    assert sorted(f.ended.processes) == [
        Segment((R, 100), 1, 6),  # shown again at 3 (no new segment), gone at 6
        Segment((R, 200), 3, 4),  # first seen at 3, a new program at 4
        Segment((R, 200), 4, 7),
    ]
    assert f.state.processes_of(R) == {}


def test_conntrack_entries_change_and_end_by_event_or_dump() -> None:
    source = Source({5: snapshot(conntrack=[(NS, 2)], namespaces=[NS])})
    f = fold([row(1, Kind.CT_NEW, netns=NS, ct_id=1), row(2, Kind.CT_UPDATE, netns=NS, ct_id=1),
              row(3, Kind.CT_NEW, netns=NS, ct_id=2), row(4, Kind.CT_NEW, netns=OTHER_NS, ct_id=3),
              row(5, Kind.SNAPSHOT)], source)  # fmt: skip
    assert sorted(f.ended.conntrack) == [Segment((R, NS, 1), 1, 2), Segment((R, NS, 1), 2, 5)]
    # ct 2 was dumped (kept from its event), ct 3's namespace was not walked
    assert f.state.conntrack == {(R, NS, 2): 3, (R, OTHER_NS, 3): 4}


def test_a_dump_without_conntrack_leaves_entries_alone() -> None:
    source = Source({5: snapshot(conntrack=None)})
    f = fold([row(1, Kind.CT_NEW, netns=NS, ct_id=1), row(5, Kind.SNAPSHOT)], source)
    assert f.state.conntrack == {(R, NS, 1): 1}


def test_the_open_intervals_are_the_state() -> None:
    source = Source({3: snapshot(opened=[t(5)])})
    f = fold([row(1, Kind.CONNECT, 10, t(1)), row(2, Kind.CONNECT, 11, t(2)),
              row(3, Kind.SNAPSHOT), row(4, Kind.EXEC, pid=9)], source)  # fmt: skip
    open_ = f.state.open_intervals()
    assert sorted(open_.sockets, key=repr) == sorted(
        [SocketEnd(None, 3, t(5), None, None), SocketEnd(1, None, None, None, 3),
         SocketEnd(2, None, None, None, 3)], key=repr)  # fmt: skip
    assert open_.processes == [Segment((R, 9), 4, None)]


# -- the snapshot's set algebra against one socket at a time --------------------------------

TUPLES = [t(p, ns) for p in range(4) for ns in (NS, OTHER_NS)]


def reconcile_one_at_a_time(
    open_sockets: dict[int, Tuple], known: set[Tuple], content: SnapshotContent
) -> tuple[set[int], set[Tuple], set[Tuple]]:
    """Which open sockets go missing, which snapshot sockets end, which are new: decided for
    each socket alone, as the rules say."""
    present = content.open_tuples | content.closing_tuples

    def walked(tuple_: Tuple) -> bool:
        return content.namespaces is None or tuple_fields(tuple_)[0] in content.namespaces

    missing = {k for k, tup in open_sockets.items() if tup not in present and walked(tup)}
    gone = {tup for tup in known if tup not in present and walked(tup)}
    new = {tup for tup in content.open_tuples
           if tup not in open_sockets.values() and tup not in known}  # fmt: skip
    return missing, gone, new


@settings(max_examples=200, deadline=None)
@given(
    open_tuples=st.lists(st.sampled_from(TUPLES), max_size=6),
    known=st.sets(st.sampled_from(TUPLES), max_size=4),
    shown=st.sets(st.sampled_from(TUPLES), max_size=6),
    closing=st.sets(st.sampled_from(TUPLES), max_size=3),
    namespaces=st.one_of(st.none(), st.sets(st.sampled_from([NS, OTHER_NS]), max_size=2)),
)
def test_snapshot_reconciliation_decides_as_one_socket_at_a_time(
    open_tuples: list[Tuple], known: set[Tuple], shown: set[Tuple], closing: set[Tuple],
    namespaces: set[int] | None,
) -> None:  # fmt: skip
    content = SnapshotContent(
        None if namespaces is None else frozenset(namespaces),
        frozenset(shown),
        frozenset(closing - shown),
        frozenset(),
        None,
    )
    state = FoldState()
    source = Source({100: content})
    for key, tuple_ in enumerate(open_tuples, start=1):
        state.sockets_of(R)[key] = key
        source.tuples[key] = tuple_
    known = {k for k in known if k not in set(open_tuples)}
    for tuple_ in known:
        state.snapshot_sockets[(R, tuple_)] = 50
    folder = Fold(state, source)
    folder.apply([row(100, Kind.SNAPSHOT)])
    missing, gone, new = reconcile_one_at_a_time(dict(enumerate(open_tuples, 1)), known, content)
    assert set(state.missing_of(R)) == missing
    assert {e.tuple for e in folder.ended.sockets} == gone
    assert {tup for (_, tup), p in state.snapshot_sockets.items() if p == 100} == new
