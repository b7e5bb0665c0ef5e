"""The connection table's C loops give the rows the Python definition gives.

``pair_rows`` (replay/_table.c) is checked on generated sockets where the awkward is common:
shared endpoints, IPv4 next to the same address v4-mapped, sockets without addresses, equal
open times and origins, missing times. ``RunReader.socket_views`` (replay/_fold.c) is checked
on logs written through the real writer into SQLite files, at many moments and windows.
"""

from __future__ import annotations

import gc
import sqlite3
import tempfile
from dataclasses import FrozenInstanceError, dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from eventlog.clock import ClockModel
from eventlog.events import ClockSample, ConntrackEntry
from eventlog.reader import decode_extra
from eventlog.store import Purpose, open_log
from replay import native
from replay.connections import (
    _ROW_FIELDS,
    _VIEW_FIELDS,
    CLIENT,
    CLOSE_ONLY_NOTE,
    MISSING_NOTE,
    SERVER,
    ConnectionRow,
    SocketView,
    address_text,
    connection_table,
    is_loopback,
    pair,
    plain_slots,
    sockets_in_window,
)
from replay.engine import Replayer
from replay.nat import Translation
from tests.capabilities import require
from tests.logbuilder import WORKLOAD_SERVER, build_workload, built_log, wall, workload_operation

LO = bytes([127, 0, 0, 1])
LO_MAPPED = bytes(10) + b"\xff\xff" + LO
HOST = bytes([10, 0, 0, 2])
HOST_MAPPED = bytes(10) + b"\xff\xff" + HOST
LO6 = bytes(15) + b"\x01"
DOC6 = bytes.fromhex("20010db8000000000000000000000001")


@pytest.fixture(autouse=True)
def _modules_built() -> None:
    require(native.PAIRS_AVAILABLE, "the C table module (make setup builds replay/_table.c)")
    require(native.AVAILABLE, "the C fold module (make setup builds replay/_fold.c)")


def view(
    role: str | None,
    addresses: tuple[bytes, int, bytes, int],
    times: tuple[int | None, int | None],
    origin: tuple[int, int],
    details: tuple[int, int | None, str, str | None, list[int], int | None],
) -> SocketView:
    laddr, lport, raddr, rport = addresses
    recording, pid, source, note, positions, sent = details
    return SocketView(
        recording_id=recording,
        host_id=f"host-{recording % 2}",  # recordings 1 and 3 share a host
        role=role,
        pid=pid,
        comm=None if pid is None else f"p{pid}",
        netns=None if pid is None else 4026531840 + pid % 2,
        laddr=laddr,
        lport=lport,
        raddr=raddr,
        rport=rport,
        opened_ns=times[0],
        closed_ns=times[1],
        source=source,
        origin=origin,
        positions=positions,
        close_note=note,
        bytes_sent=sent,
        bytes_received=None if sent is None else sent * 2,
    )


address = st.sampled_from([b"", LO, LO_MAPPED, HOST, HOST_MAPPED, LO6, DOC6])
port = st.sampled_from([0, 80, 8080, 40000, 40001])
moment = st.one_of(st.none(), st.integers(-1, 6))
views = st.lists(
    st.builds(
        view,
        st.sampled_from([CLIENT, SERVER, None]),
        st.tuples(address, port, address, port),
        st.tuples(moment, moment),
        st.tuples(st.integers(1, 5), st.integers(0, 2)),  # origins repeat on purpose
        st.tuples(
            st.integers(1, 3),
            st.one_of(st.none(), st.integers(1, 4)),
            st.sampled_from(["events", "proc", "snapshot"]),
            st.sampled_from([None, "", CLOSE_ONLY_NOTE, MISSING_NOTE]),
            st.lists(st.integers(1, 9), max_size=6),  # two sides can hold more than 8
            st.one_of(st.none(), st.integers(0, 9)),
        ),
    ),
    max_size=24,
)


def _reversed_pair(
    first: SocketView, times: tuple[int | None, int | None], origin: tuple[int, int]
) -> SocketView:
    """The other end of ``first``'s connection, on this host too."""
    return view(
        CLIENT if first.role == SERVER else SERVER,
        (first.raddr, first.rport, first.laddr, first.lport),
        times,
        origin,
        (first.recording_id, 2, "events", MISSING_NOTE, [origin[0]], None),
    )


partner = st.tuples(st.integers(0, 23), moment, moment, st.integers(1, 5), st.integers(0, 2))


@settings(max_examples=400, deadline=None)
@given(views=views, partners=st.lists(partner))
@example(views=[], partners=[])
def test_pairing_matches_the_definition(
    views: list[SocketView], partners: list[tuple[int, int | None, int | None, int, int]]
) -> None:
    for index, opened, closed, position, ordinal in partners:  # both ends of some are here
        if index < len(views):
            views.append(_reversed_pair(views[index], (opened, closed), (position, ordinal)))
    defined = pair(views, use_native=False)
    # rows made by calling ConnectionRow, by setting its slots, and left out of the collector
    for plain, frozen in ((False, False), (True, False), (True, True)):
        made = native.pair_rows(
            views, ConnectionRow, _ROW_FIELDS, address_text, is_loopback, plain, frozen
        )
        assert made is not None
        assert made == defined
        assert all(type(row) is ConnectionRow for row in made)


def test_plain_slots_tells_which_types_c_may_fill() -> None:
    assert plain_slots(ConnectionRow) and plain_slots(SocketView)

    @dataclass
    class NoSlots:
        a: int

    @dataclass(slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            assert self.a > 0

    assert not plain_slots(NoSlots) and not plain_slots(Checked)


class Marker:
    """An object of no builtin type: it can refer back to what holds it."""

    def __lt__(self, other: object) -> bool:
        return False

    def __gt__(self, other: object) -> bool:
        return True


def test_frozen_rows_without_containers_are_left_out_of_the_collector() -> None:
    """A frozen row holding only strs, ints, None and tuples of ints cannot be in a cycle: the
    collector need not walk it. One holding a container (a hand-made view's list) can be."""
    details = (1, 8, "events", None, [1, 2], 10)  # pid 8: the same netns as its partner
    client = view(CLIENT, (LO, 40000, LO, 80), (1, None), (1, 0), details)
    sides = [client, _reversed_pair(client, (1, None), (2, 0))]
    made = native.pair_rows(
        sides, ConnectionRow, _ROW_FIELDS, address_text, is_loopback, True, True
    )
    assert made is not None and len(made) == 1
    assert not gc.is_tracked(made[0]) and not gc.is_tracked(made[0].positions)
    assert made == pair(sides, use_native=False)
    for odd_client in (
        replace(client, comm=["a", "list"]),  # type: ignore[arg-type]  # a container in a field
        replace(client, pid={}),  # type: ignore[arg-type]  # a dict (untracked, for now)
        replace(client, positions=[1, Marker()]),  # type: ignore[list-item]  # not all ints
    ):
        odd = [odd_client, sides[1]]
        kept = native.pair_rows(
            odd, ConnectionRow, _ROW_FIELDS, address_text, is_loopback, True, True
        )
        assert kept is not None and all(gc.is_tracked(row) for row in kept)
        assert all(gc.is_tracked(row.positions) for row in kept if len(row.positions) > 2)  # Marker
    with pytest.raises(FrozenInstanceError):
        made[0].note = "changed"


class CountedRow(ConnectionRow):
    """A row type with an __init__ of its own: told it is plain, the loop must still call it
    (its slots are its base's)."""

    __slots__ = ()
    made = 0

    def __init__(self, *args: Any) -> None:
        CountedRow.made += 1
        super().__init__(*args)


def test_a_row_type_whose_slots_are_not_its_own_is_called() -> None:
    details = (1, 7, "events", None, [1], None)
    views = [view(CLIENT, (LO, 40000 + i, LO, 80), (i, None), (i, 0), details) for i in range(5)]
    CountedRow.made = 0
    made = native.pair_rows(views, CountedRow, _ROW_FIELDS, address_text, is_loopback, True)
    assert made is not None and len(made) == 5 and CountedRow.made == 5
    values = [[getattr(row, name) for name in _ROW_FIELDS] for row in made]
    assert values == [[getattr(row, name) for name in _ROW_FIELDS] for row in pair(views, False)]


def table_row(opened: int | None, closed: int | None, row_id: str) -> ConnectionRow:
    return ConnectionRow(row_id, "closed", "local", "h", "a:1", "b:2", opened, closed)


times = st.one_of(st.none(), st.integers(-2, 3), st.integers(-(1 << 63), (1 << 63) - 1))


@given(
    st.lists(st.builds(table_row, times, times, st.sampled_from(["1.0", "1.1", "10.0", "é", ""])))
)
def test_sorting_rows_matches_the_sort_key(rows: list[ConnectionRow]) -> None:
    """Ties (equal keys, None next to -1 and 0) keep their order, as Python's sort does."""
    made = native.sorted_rows(rows)
    assert made is not None
    assert [id(row) for row in made] == [
        id(row) for row in sorted(rows, key=ConnectionRow.sort_key)
    ]


def test_sorting_rows_declines_odd_values() -> None:
    assert native.sorted_rows([table_row(1, None, "x"), table_row(1.5, None, "y")]) is None  # type: ignore[arg-type]
    assert native.sorted_rows([table_row(1, 1 << 64, "x")]) is None
    assert native.sorted_rows([table_row(1, None, 7)]) is None  # type: ignore[arg-type]
    assert native.sorted_rows([]) == []


def test_pairing_declines_what_it_does_not_take() -> None:
    base = view(CLIENT, (LO, 40000, LO, 80), (1, None), (1, 0), (1, 7, "events", None, [1], None))
    translated = view(CLIENT, (LO, 40001, LO, 80), (1, 2), (2, 0), (1, 7, "events", None, [2], 1))
    entry = ConntrackEntry(4026531840, LO, LO, 40001, 80, LO, LO, 8080, 40001, 0xA0, 3, 1, 0, 0)
    translated.nat = Translation(("127.0.0.1", 40001, "127.0.0.1", 80),
                                 ("127.0.0.1", 40001, "127.0.0.1", 8080), entry)  # fmt: skip
    far_future = view(CLIENT, (LO, 40002, LO, 80), (1 << 70, None), (3, 0),
                      (1, 7, "events", None, [3], None))  # fmt: skip
    odd_origin = view(CLIENT, (LO, 40003, LO, 80), (1, None), (3, 0),
                      (1, 7, "events", None, [3], None))  # fmt: skip
    odd_origin.origin = [3, 0]  # type: ignore[assignment]
    for odd in (translated, far_future, odd_origin):
        views = [base, odd]
        assert (
            native.pair_rows(views, ConnectionRow, _ROW_FIELDS, address_text, is_loopback) is None
        )
        assert pair(views) == pair(views, use_native=False)  # the definition takes over


class Subclassed(SocketView):
    """Sockets of another type than the one whose slots the loop reads directly."""


class Duck:
    """Sockets of an unrelated type, laid out nothing like SocketView."""

    server_side_view = SocketView.server_side_view
    ends = SocketView.ends

    def __init__(self, **fields: object) -> None:
        self.__dict__.update(fields)


@settings(max_examples=50, deadline=None)
@given(views=views)
def test_pairing_reads_other_types_generically(views: list[SocketView]) -> None:
    def fields(view: SocketView) -> dict[str, Any]:
        return {f: getattr(view, f) for f in _VIEW_FIELDS}

    others: list[SocketView] = [Subclassed(**fields(v)) for v in views]
    mixed = [v if i % 2 else o for i, (v, o) in enumerate(zip(views, others, strict=True))]
    ducks: list[Any] = [v if i % 2 == 0 else Duck(**fields(v)) for i, v in enumerate(views)]
    lead: list[Any] = [Duck(**fields(v)) for v in views[:1]] + views[1:]  # a duck's map first
    for group in (others, mixed, ducks, lead):
        made = native.pair_rows(group, ConnectionRow, _ROW_FIELDS, address_text, is_loopback)
        assert made == pair(group, use_native=False)


class Transplanted(Duck):
    """A type that borrows SocketView's slot for ``source`` without being one."""

    source = SocketView.__dict__["source"]


def test_pairing_does_not_trust_borrowed_slots() -> None:
    sides = (CLIENT, (LO, 40000, LO, 80), (1, None), (1, 0), (1, 7, "events", None, [1], None))
    fields = {f: getattr(view(*sides), f) for f in _VIEW_FIELDS if f != "source"}
    views: list[Any] = [Transplanted(**fields)]
    with pytest.raises(TypeError):
        pair(views, use_native=False)
    with pytest.raises(TypeError):
        native.pair_rows(views, ConnectionRow, _ROW_FIELDS, address_text, is_loopback)


class Failing(SocketView):
    """A socket whose source cannot be read."""

    @property
    def source(self) -> str:
        raise ValueError("no source")

    @source.setter
    def source(self, value: str) -> None:
        pass


def test_pairing_raises_what_python_raises() -> None:
    sides = (CLIENT, (LO, 40000, LO, 80), (1, None), (1, 0), (1, 7, "events", None, [1], None))
    good = view(*sides)
    bad = Failing(**{f: getattr(good, f) for f in _VIEW_FIELDS})
    lists: list[list[SocketView]] = [[bad], [good, bad]]
    for views in lists:
        with pytest.raises(ValueError, match="no source"):
            native.pair_rows(views, ConnectionRow, _ROW_FIELDS, address_text, is_loopback)
        with pytest.raises(ValueError, match="no source"):
            pair(views, use_native=False)


def test_pairing_survives_callbacks_that_change_the_list() -> None:
    sides = [view(CLIENT, (LO, 40000 + n, LO, 80), (n, None), (n, 0),
                  (1, 7, "events", None, [n], None)) for n in range(1, 6)]  # fmt: skip
    views = list(sides)

    def clearing(address: bytes | None) -> str:
        views.clear()
        return address_text(address)

    made = native.pair_rows(views, ConnectionRow, _ROW_FIELDS, clearing, is_loopback)
    assert made == pair(sides, use_native=False)


# -- sockets from the log -----------------------------------------------------------------

SERVER_ADDRESS = WORKLOAD_SERVER
operation = workload_operation(
    "pair",
    "outbound",
    "outbound6",
    "proc",
    "unbound",
    "close",
    "close-unknown",
    "failed",
    "snapshot",
    "flush",
)


def every_position(replayer: Replayer) -> list[int]:
    return [row[0] for page in replayer.reader.narrow_pages(0, replayer.head) for row in page]


def hinted_replayer(store: Any) -> Replayer:
    """A replayer whose reader holds the records of every event in the log, from a hint made
    by another reader: its tables read no open event from the log."""
    maker, hinted = Replayer(store, use_checkpoints=False), Replayer(store, use_checkpoints=False)
    assert maker.runs is not None and hinted.runs is not None
    positions = every_position(maker)
    hint = maker.runs.socket_hint(positions[::-1])
    assert hint is not None
    assert hinted.runs.load_hint(hint) == len(positions)
    return hinted


def windows(location: object, moments: list[float], window_s: float) -> list[tuple[object, ...]]:
    """Sockets and rows at each moment, from windows folded and tables made in C (reading the
    log, and from a hint holding every event), and from windows folded and tables made in
    Python: must be equal."""
    found: list[tuple[object, ...]] = []
    with open_log(location, Purpose.READ) as store:  # type: ignore[arg-type]
        replayer = Replayer(store, use_checkpoints=False)
        hinted = hinted_replayer(store)
        python = Replayer(store, use_checkpoints=False, use_native=False)
        assert replayer.runs is not None and python.runs is None
        for at in moments:
            window = replayer.window(wall(at), round(window_s * 1e9))
            from_hint = hinted.window(wall(at), round(window_s * 1e9))
            defined = python.window(wall(at), round(window_s * 1e9))
            found.append(
                (
                    sockets_in_window(python.reader, defined),
                    sockets_in_window(replayer.reader, window, replayer.runs),
                    sockets_in_window(hinted.reader, from_hint, hinted.runs),
                    connection_table(python.reader, defined),
                    connection_table(replayer.reader, window, replayer.runs),
                    connection_table(hinted.reader, from_hint, hinted.runs),
                )
            )
    return found


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# An open without a pid (from /proc) whose close names the owner, in the window; a close on
# the window's start (outside it) and one on its end (inside).
@example(operations=[("proc", 1), ("close", 0)], moments=[0.2], window_s=0.5)
@example(operations=[("unbound", 0), ("unbound", 1), ("close", 0)], moments=[0.2], window_s=0.5)
@example(operations=[("pair", 0), ("close", 0), ("close", 0), ("pair", 1), ("close", 1)],
         moments=[0.15, 0.25], window_s=0.1)  # fmt: skip
# The server's end closes first: the C fold retains the pairs in close order, Fold._apply_fast
# in another; the sockets must come in the same order all the same.
@example(operations=[("pair", 0), ("close", 1), ("close", 0)], moments=[0.5], window_s=0.5)
@given(
    operations=st.lists(operation, min_size=1, max_size=50),
    moments=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=5),
    window_s=st.sampled_from([0.0, 0.1, 0.5, 15.0]),
)
def test_sockets_from_the_log_match_the_definition(
    operations: list[tuple[str, int]], moments: list[float], window_s: float
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with built_log(Path(tmp) / "log.db") as (location, builder):
            build_workload(builder, operations)
        for views_py, views_c, views_hinted, rows_py, rows_c, rows_hinted in windows(
            location, moments, window_s
        ):
            assert views_c == views_py
            assert views_hinted == views_py
            assert rows_c == rows_py
            assert rows_hinted == rows_py


def test_sockets_do_not_depend_on_the_order_retained(tmp_path: Path) -> None:
    """The fold keeps what ended in no defined order; the sockets come in one order."""
    with built_log(tmp_path / "log.db") as (location, builder):
        # Sockets closed after a snapshot missed them, or never seen open: more than one Closed.
        build_workload(builder, [("pair", 0), ("pair", 1), ("pair", 2), ("close", 1),
                                 ("snapshot", 0), ("close", 0), ("close", 2),
                                 ("close-unknown", 3), ("close", 0)])  # fmt: skip
    with open_log(location, Purpose.READ) as store:
        for use_native in (True, False):
            replayer = Replayer(store, use_checkpoints=False, use_native=use_native)
            window = replayer.window(wall(1.0), round(1e9))
            retained = window.retained
            assert len(retained.pairs) > 1 and len(retained.closed) > 1
            before = sockets_in_window(replayer.reader, window, replayer.runs)
            retained.pairs.reverse()
            retained.closed.reverse()
            assert sockets_in_window(replayer.reader, window, replayer.runs) == before


def test_a_hint_is_read_back_whole_or_not_at_all(tmp_path: Path) -> None:
    with built_log(tmp_path / "log.db") as (location, builder):
        build_workload(builder, [("pair", 0), ("outbound6", 1), ("proc", 2), ("unbound", 3)])
    with open_log(location, Purpose.READ) as store:
        maker = Replayer(store, use_checkpoints=False)
        assert maker.runs is not None
        positions = every_position(maker)
        hint = maker.runs.socket_hint(positions + positions[:2])  # repeats count once
        assert hint is not None and maker.runs.socket_hint([]) is not None
        assert maker.runs.socket_hint([maker.head + 1]) is None  # no such event
        with pytest.raises(TypeError):
            maker.runs.socket_hint([1.0])  # type: ignore[list-item]
        for bad in (hint[:-1], hint + b"\x00", b"\x02" + hint[1:], b"", bytes([1, 0x80])):
            reader = Replayer(store, use_checkpoints=False).runs
            assert reader is not None
            with pytest.raises(ValueError, match="hint"):
                reader.load_hint(bad)
            assert reader.load_hint(hint) == len(positions)  # and a good one still loads


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def test_a_hint_cannot_ask_for_more_than_its_bytes_hold(tmp_path: Path) -> None:
    with built_log(tmp_path / "log.db") as (location, builder):
        build_workload(builder, [("pair", 0)])
    with open_log(location, Purpose.READ) as store:
        runs = Replayer(store, use_checkpoints=False).runs
        assert runs is not None
        claims_many = bytes([1, 0x80, 0xC2, 0xD7, 0x2F]) + bytes(100)  # 100,000,000 records
        with pytest.raises(ValueError, match="hint"):
            runs.load_hint(claims_many)


def test_a_hint_with_a_repeated_position_is_refused(tmp_path: Path) -> None:
    """Positions go up in a hint: a zero step (a record twice, or a corrupt one) is not one."""
    with built_log(tmp_path / "log.db") as (location, builder):
        build_workload(builder, [("pair", 0), ("pair", 1)])
    with open_log(location, Purpose.READ) as store:
        runs = Replayer(store, use_checkpoints=False).runs
        assert runs is not None
        hint = runs.socket_hint([1, 2])
        assert hint is not None and runs.load_hint(hint) == 2
        _, at = _varint(hint, 0)  # version
        _, at = _varint(hint, at)  # count
        _, second = _varint(hint, at)  # the first position
        step, after = _varint(hint, second)
        assert step == 1
        with pytest.raises(ValueError, match="hint"):
            runs.load_hint(hint[:second] + b"\x00" + hint[after:])


def test_an_event_missing_from_a_range_spares_the_rest(tmp_path: Path) -> None:
    """The table's events are read in position ranges: one missing (a foreign log's hole)
    declines only where it is used, and the events after it in its range are still read."""
    with built_log(tmp_path / "log.db") as (location, builder):
        builder.connect(0.1, 1, 100, "c", "127.0.0.1:40000", SERVER_ADDRESS)
        builder.close(0.2, 1, 100, "c", "127.0.0.1:40000", SERVER_ADDRESS)
        builder.connect(0.3, 2, 100, "c", "127.0.0.1:40001", SERVER_ADDRESS)
        builder.close(0.4, 2, 100, "c", "127.0.0.1:40001", SERVER_ADDRESS)
    conn = sqlite3.connect(location.path)  # type: ignore[arg-type]
    with conn:
        conn.execute("DELETE FROM events WHERE position = 1")
    conn.close()
    with open_log(location, Purpose.READ) as store:
        replayer = Replayer(store, use_checkpoints=False)
        assert replayer.runs is not None
        comms, namespaces = replayer.reader.dictionaries()
        made = replayer.runs.socket_views(
            [], [(1, 2), (3, 4)], wall(0.25), wall(1), {1: replayer.reader.clock(1).segments()},
            {1: "h"}, comms, namespaces, SocketView, _VIEW_FIELDS, decode_extra, True,
        )  # fmt: skip
        # (1, 2) closed before the window: its open is never used, so its absence is no matter
        assert made is not None and [view.positions for view in made[1]] == [[3, 4]]


def test_socket_views_decline_what_they_cannot_read(tmp_path: Path) -> None:
    with built_log(tmp_path / "log.db") as (location, builder):
        builder.connect(0.1, 1, 100, "c", "127.0.0.1:40000", SERVER_ADDRESS)
    with open_log(location, Purpose.READ) as store:
        replayer = Replayer(store, use_checkpoints=False)
        assert replayer.runs is not None
        comms, namespaces = replayer.reader.dictionaries()
        clocks = {1: replayer.reader.clock(1).segments()}
        hosts = {1: "h"}

        def views(opens: list[int], clocks: dict[int, list[tuple[int, int]]]) -> object:
            return replayer.runs.socket_views(  # type: ignore[union-attr]
                opens, [], 0, wall(1), clocks, hosts, comms, namespaces, SocketView,
                _VIEW_FIELDS, decode_extra,
            )  # fmt: skip

        position = replayer.reader.head()
        made = views([position], clocks)
        assert isinstance(made, tuple) and len(made[0]) == 1 and made[0][0].pid == 100
        assert views([position + 1], clocks) is None  # no such event
        assert views([position], {}) is None  # no clock for its recording
        with pytest.raises(ValueError, match="SocketView"):
            replayer.runs.socket_views(
                [position], [], 0, wall(1), clocks, hosts, comms, namespaces, SocketView,
                _VIEW_FIELDS[::-1], decode_extra,
            )  # fmt: skip


def test_socket_views_convert_with_the_clock_segment_in_force(tmp_path: Path) -> None:
    """Wall times use the offset of the last clock segment starting at or before the event
    (the first segment's before it), as ClockModel does."""
    with built_log(tmp_path / "log.db") as (location, builder):
        for second in (0.1, 0.2, 0.3):
            builder.connect(second, round(second * 10), 100, "c", "127.0.0.1:40000", SERVER_ADDRESS)
    with open_log(location, Purpose.READ) as store:
        replayer = Replayer(store, use_checkpoints=False)
        assert replayer.runs is not None
        comms, namespaces = replayer.reader.dictionaries()
        events = list(replayer.reader.events())
        monos = [event.mono_ns for event in events]
        # segments starting before, exactly at, and just after the events
        segments = [(monos[0] - 5, 1000), (monos[1], 2000), (monos[2] + 1, 3000)]
        model = ClockModel(ClockSample(m, o, 0) for m, o in segments)
        made = replayer.runs.socket_views(
            [e.position for e in events], [], 0, 1, {1: segments}, {1: "h"}, comms, namespaces,
            SocketView, _VIEW_FIELDS, decode_extra,
        )  # fmt: skip
        assert made is not None
        assert [v.opened_ns for v in made[0]] == [model.wall_ns(m) for m in monos]
        assert [v.opened_ns - m for v, m in zip(made[0], monos, strict=True)] == [1000, 2000, 2000]
        early = replayer.runs.socket_views(
            [events[0].position], [], 0, 1, {1: [(monos[0] + 1, 7)]}, {1: "h"}, comms,
            namespaces, SocketView, _VIEW_FIELDS, decode_extra,
        )  # fmt: skip
        assert early is not None and early[0][0].opened_ns == monos[0] + 7
