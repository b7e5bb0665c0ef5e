"""The C path (eventlog._native) writes exactly what eventlog.kernel_records and Python's sqlite3 write.

Both appenders get the same batches (every event kind, IPv4 and IPv6, missing fields,
extremes of every integer column, new process names mid-recording, snapshots, losses,
clock samples); every table must then hold the same values with the same storage types.
Errors leave no partial batch behind, and come out as the driver's own exception classes.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventlog import native
from eventlog.batch import Batch
from eventlog.clock import ClockModel
from eventlog.errors import LogError
from eventlog.events import Event, Kind, Loss, Snapshot, SnapshotConnection, SnapshotProcess
from eventlog.kernel_records import DecodeError, decode_one, decode_record, expand, raw_run
from eventlog.location import resolve
from eventlog.recordings import RecordingStart, begin_recording
from eventlog.schema import metadata
from eventlog.sqlite import ROWS_PER_INSERT, SqliteAppender, insert_events_sql
from eventlog.store import LogStore, Purpose, open_log
from tests.capabilities import require
from tests.factories import MONO_BASE_NS, ROOT_NETNS, clock_sample, conn_event, make_host
from tests.rawevents import raw_event, record

INT64_MAX = (1 << 63) - 1


@pytest.fixture(autouse=True)
def _native_built() -> None:
    require(native.AVAILABLE, "the C append module (make setup builds eventlog/_native.c)")


@pytest.fixture
def store_factory(tmp_path: Path) -> Iterator[Any]:
    stores: list[LogStore] = []

    def make(name: str) -> tuple[LogStore, int]:
        path = tmp_path / f"{name}-{len(stores)}.db"
        store = open_log(resolve(str(path)), Purpose.RECORD)
        stores.append(store)
        recording_id = begin_recording(
            store,
            RecordingStart(
                host=make_host(), mode="ebpf", started=clock_sample(), root_netns=ROOT_NETNS
            ),
        )
        return store, recording_id

    yield make
    for store in stores:
        store.close()


def table_dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, each value as SQLite's quote() of it (type and bytes); the
    log's identity apart (each log has its own)."""
    conn = sqlite3.connect(path)
    try:
        dump = {}
        for table in metadata.tables.values():
            columns = ", ".join(f"quote({column.name})" for column in table.columns)
            where = " WHERE key <> 'log_id'" if table.name == "log_meta" else ""
            dump[table.name] = conn.execute(
                f"SELECT {columns} FROM {table.name}{where} ORDER BY rowid"
            ).fetchall()
        return dump
    finally:
        conn.close()


addresses = st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16))
optional_int = st.one_of(st.none(), st.integers(0, INT64_MAX))
comms = st.one_of(st.none(), st.text(min_size=1, max_size=15))
extras = st.one_of(
    st.none(),
    st.fixed_dictionaries({"error": st.integers(0, 200)}),
    st.fixed_dictionaries({"ppid": st.integers(0, 1 << 22), "filename": st.text(max_size=40)}),
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    return Event(
        kind=draw(st.sampled_from([int(kind) for kind in Kind if kind != Kind.SNAPSHOT])),
        mono_ns=draw(st.integers(0, 1 << 60)),  # wall = mono + offset stays in 64 bits
        pid=draw(st.one_of(st.none(), st.integers(0, (1 << 31) - 1))),
        comm=draw(comms),
        netns=draw(st.one_of(st.none(), st.integers(1, (1 << 32) - 1))),
        laddr=draw(st.one_of(st.none(), addresses)),
        lport=draw(st.one_of(st.none(), st.integers(0, 65535))),
        raddr=draw(st.one_of(st.none(), addresses)),
        rport=draw(st.one_of(st.none(), st.integers(0, 65535))),
        sock_id=draw(optional_int),
        bytes_sent=draw(optional_int),
        bytes_received=draw(optional_int),
        extra=draw(extras),
    )


def snapshot_batch(mono_ns: int) -> Batch:
    snapshot = Snapshot(
        connections=(
            SnapshotConnection(
                ROOT_NETNS, b"\x7f\0\0\x01", 8080, b"\x7f\0\0\x01", 40000, 1, 7, 0, 42
            ),
            SnapshotConnection(ROOT_NETNS, bytes(16), 22, bytes(16), 0, 10, 8, 0, None),
        ),
        processes=(SnapshotProcess(42, 1, "server", "server --port 8080", "/", ROOT_NETNS, 5),),
        conntrack=(),
    )
    event = Event(kind=Kind.SNAPSHOT, mono_ns=mono_ns, extra={"initial": True})
    batch = Batch(events=[event], losses=[Loss(3, mono_ns, mono_ns + 10, "ring buffer full")])
    batch.snapshots[0] = snapshot
    batch.clock_samples.append(clock_sample(mono_ns))
    return batch


def append_with(batches: list[Batch], store_factory: Any, *, use_native: bool) -> Path:
    store, recording_id = store_factory("native" if use_native else "python")
    appender = SqliteAppender(store, use_native=use_native)
    try:
        for batch in batches:
            clock = ClockModel([clock_sample()])
            for sample in batch.clock_samples:
                clock.add(sample)
            appender.append(recording_id, batch, clock)
    finally:
        appender.close()
    path: Path | None = store.location.path
    assert path is not None
    return path


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(event_batches=st.lists(st.lists(events(), min_size=1, max_size=40), min_size=1, max_size=4))
def test_both_paths_write_the_same_rows(
    event_batches: list[list[Event]], store_factory: Any
) -> None:
    batches = [Batch(events=list(batch)) for batch in event_batches]
    batches.insert(1, snapshot_batch(MONO_BASE_NS))
    native_path = append_with(batches, store_factory, use_native=True)
    python_path = append_with(batches, store_factory, use_native=False)
    native_dump, python_dump = table_dump(native_path), table_dump(python_path)
    assert native_dump["events"], "nothing was written"
    assert native_dump == python_dump


def test_a_bad_row_rolls_the_whole_batch_back(store_factory: Any) -> None:
    store, recording_id = store_factory("native")
    appender = SqliteAppender(store, use_native=True)
    clock = ClockModel([clock_sample()])
    try:
        appender.append(recording_id, Batch(events=[conn_event(Kind.CONNECT, MONO_BASE_NS)]), clock)
        bad = conn_event(Kind.CLOSE, MONO_BASE_NS + 2)._replace(lport=[80])  # type: ignore[arg-type]
        good = conn_event(Kind.ACCEPT, MONO_BASE_NS + 1, comm="new-comm")
        with pytest.raises(LogError, match="Error binding parameter 7: type 'list'"):
            appender.append(recording_id, Batch(events=[good, bad]), clock)
        later = appender.append(
            recording_id,
            Batch(events=[conn_event(Kind.CLOSE, MONO_BASE_NS + 3, comm="new-comm")]),
            clock,
        )
    finally:
        appender.close()
    assert (later.first_position, later.last_position) == (2, 2)
    assert store.location.path is not None
    dump = table_dump(store.location.path)
    assert [row[:1] for row in dump["events"]] == [("1",), ("2",)]
    assert [row[0] for row in dump["batches"]] == ["1", "2"]
    assert [row[1] for row in dump["comms"]] == ["'client'", "'new-comm'"]


def test_rows_in_groups_hold_what_they_were_bound_from(store_factory: Any) -> None:
    """Rows go through a statement of ROWS_PER_INSERT rows; one bound early in a group points
    into objects (an Event's addresses, its encoded extra, a decoded rare event) that must
    live until the group is stepped, not only until the row is bound."""
    items: list[Event | native.RawRun] = []
    for index in range(3 * ROWS_PER_INSERT + 5):
        if index % 3 == 0:
            data = record(raw_event(4, 100 + index, pid=index + 1, comm=b"failing"))
            items.append(raw_run(data))  # a failed connect: a rare kind, decoded to a tuple
        else:
            items.append(
                conn_event(Kind.CONNECT, MONO_BASE_NS + index, comm=f"c{index}")._replace(
                    laddr=bytes([index]) * 16, extra={"filename": "x" * (64 + index)}
                )
            )
    python_items: list[Event | native.RawRun] = list(expand(items))
    native_path = append_with([Batch(events=items)], store_factory, use_native=True)
    python_path = append_with([Batch(events=python_items)], store_factory, use_native=False)
    native_dump = table_dump(native_path)
    assert len(native_dump["events"]) == len(python_items)
    assert native_dump == table_dump(python_path)


def test_rows_in_groups_let_go_of_what_they_held(store_factory: Any) -> None:
    """Every reference a group took to keep its rows' memory alive is returned after the
    step (an object held twice or dropped once would show in its reference count)."""
    events = [
        conn_event(Kind.CONNECT, MONO_BASE_NS + i)._replace(extra={"n": i})
        for i in range(3 * ROWS_PER_INSERT + 7)
    ]
    counts = [sys.getrefcount(event) for event in events]
    store, recording_id = store_factory("native")
    appender = SqliteAppender(store, use_native=True)
    try:
        appender.append(recording_id, Batch(events=list(events)), ClockModel([clock_sample()]))
    finally:
        appender.close()
    assert [sys.getrefcount(event) for event in events] == counts


def test_a_bad_row_inside_a_group_rolls_the_whole_batch_back(store_factory: Any) -> None:
    store, recording_id = store_factory("native")
    appender = SqliteAppender(store, use_native=True)
    clock = ClockModel([clock_sample()])
    good: list[Event | native.RawRun] = [
        conn_event(Kind.CONNECT, MONO_BASE_NS + i) for i in range(2 * ROWS_PER_INSERT)
    ]
    bad = conn_event(Kind.CLOSE, MONO_BASE_NS)._replace(lport=[80])  # type: ignore[arg-type]
    batch = [*good[: ROWS_PER_INSERT + 3], bad, *good[ROWS_PER_INSERT + 3 :]]
    try:
        with pytest.raises(LogError, match="type 'list' is not supported"):
            appender.append(recording_id, Batch(events=batch), clock)
        later = appender.append(recording_id, Batch(events=good), clock)
    finally:
        appender.close()
    assert (later.first_position, later.last_position) == (1, len(good))
    assert store.location.path is not None
    assert len(table_dump(store.location.path)["events"]) == len(good)


def test_errors_are_the_drivers_exception_classes(store_factory: Any) -> None:
    store, recording_id = store_factory("native")
    assert store.location.path is not None
    conn = native.Connection(str(store.location.path), 1000, "FULL")
    try:
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute("INSERT INTO comms (id, name) VALUES (1, 'a'), (1, 'b')")
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            conn.execute("SELECT * FROM nowhere")
        with pytest.raises(sqlite3.ProgrammingError, match="uses 13, and there are 1 supplied"):
            conn.execute(insert_events_sql(recording_id), (1,))
        states = [conn.in_transaction]
        conn.execute("BEGIN IMMEDIATE")
        states.append(conn.in_transaction)
        conn.execute("ROLLBACK")
        states.append(conn.in_transaction)
        assert states == [False, True, False]
    finally:
        conn.close()
    with pytest.raises(sqlite3.OperationalError, match="closed"):
        conn.execute("SELECT 1")


def test_a_missing_or_foreign_file_is_one_clear_error(tmp_path: Path, store_factory: Any) -> None:
    store, _ = store_factory("native")
    assert store.location.path is not None
    store.location.path.unlink()
    with pytest.raises(LogError, match="unable to open"):
        SqliteAppender(store, use_native=True)
    store.location.path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    with pytest.raises(LogError, match="not a valid SQLite log"):
        SqliteAppender(store, use_native=True)


def test_values_round_trip_with_their_types(store_factory: Any) -> None:
    store, _ = store_factory("native")
    assert store.location.path is not None
    conn = native.Connection(str(store.location.path), 1000, "NORMAL")
    try:
        row = conn.execute("SELECT ?, ?, ?, ?, ?, ?", (None, -(1 << 63), 1.5, "ü", b"\0x", True))
        assert row == [(None, -(1 << 63), 1.5, "ü", b"\0x", 1)]
        with pytest.raises(OverflowError):
            conn.execute("SELECT ?", (1 << 64,))
        with pytest.raises(sqlite3.ProgrammingError, match="type 'list' is not supported"):
            conn.execute("SELECT ?", ([1],))
        with pytest.raises(sqlite3.ProgrammingError, match="Incorrect number of bindings"):
            conn.execute("SELECT ?")
        with pytest.raises(sqlite3.ProgrammingError, match="one statement at a time"):
            conn.execute("SELECT 1; SELECT 2")
        # Values made on the fly live only as long as the call: they must still be read
        # after they were bound (they used to be freed first).
        big = (str(7) * (1 << 20) for _ in range(1))
        assert conn.execute("SELECT length(?)", big) == [(1 << 20,)]
        conn.executemany("INSERT INTO comms (name) VALUES (?)", iter([("x",), ("y",)]))
        assert conn.execute("SELECT name FROM comms ORDER BY id") == [("x",), ("y",)]
    finally:
        conn.close()


# -- raw runs: ring-buffer events kept as the kernel wrote them --------------------------------

raw_events = st.builds(
    raw_event,
    st.sampled_from([1, 2, 3, 4, 5, 6, 12, 13]),  # the kinds the kernel hands over
    st.integers(0, 1 << 60),
    sock_id=st.integers(0, INT64_MAX),
    sent=st.integers(0, INT64_MAX),
    received=st.integers(0, INT64_MAX),
    pid=st.integers(0, (1 << 32) - 1),
    netns=st.sampled_from([0, ROOT_NETNS, 4026532000, (1 << 32) - 1]),
    aux=st.integers(0, (1 << 32) - 1),
    lport=st.integers(0, 65535),
    rport=st.integers(0, 65535),
    family=st.sampled_from([2, 10, 0]),
    flags=st.integers(0, 7),
    aux2=st.integers(0, (1 << 32) - 1),
    comm=st.one_of(st.sampled_from([b"", b"curl", b"nginx"]), st.binary(max_size=16)),
    laddr=st.binary(max_size=16),
    raddr=st.binary(max_size=16),
    filename=st.one_of(st.none(), st.binary(max_size=56)),
)
records = st.lists(raw_events, max_size=12).map(lambda events: record(*events))


def by_time(events: list[Event]) -> list[Event]:
    return sorted(events, key=lambda event: event.mono_ns)


@settings(max_examples=300, deadline=None)
@given(records)
def test_a_run_holds_what_decode_record_gives_in_time_order(data: bytes) -> None:
    run = raw_run(data)
    assert len(run) == len(decode_record(data))
    assert expand([run]) == by_time(decode_record(data))
    assert decode_record(run.record()) == expand([run])


@settings(max_examples=200, deadline=None)
@given(st.lists(records, max_size=5), st.integers(0, 1 << 60))
def test_merge_split_and_count_follow_time_then_arrival(datas: list[bytes], cutoff: int) -> None:
    runs = [raw_run(data) for data in datas]
    merged = native.merge_runs(runs)
    assert expand([merged]) == by_time(expand(list(runs)))
    before, after = merged.split(cutoff)
    assert expand([before]) == [e for e in expand([merged]) if e.mono_ns <= cutoff]
    assert expand([after]) == [e for e in expand([merged]) if e.mono_ns > cutoff]
    assert merged.count_upto(cutoff) == len(before)


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\x00",
        record(raw_event(1, 5))[:-1],
        record(raw_event(9, 5)),
        record(raw_event(0, 5)),
    ],
)
def test_a_bad_record_is_the_same_decode_error_either_way(data: bytes) -> None:
    with pytest.raises(DecodeError) as python_error:
        decode_record(data)
    with pytest.raises(DecodeError) as native_error:
        raw_run(data)
    assert str(native_error.value) == str(python_error.value)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batches=st.lists(
        st.lists(st.one_of(records, events()), min_size=1, max_size=6), min_size=1, max_size=3
    )
)
def test_runs_are_written_as_their_decoded_events(
    batches: list[list[bytes | Event]], store_factory: Any
) -> None:
    """Batches of raw runs and tuples through the C path; the same records decoded by
    eventlog.kernel_records through Python's sqlite3: the same rows."""
    native_batches, python_batches = [], []
    for items in batches:
        native_items: list[Event | native.RawRun] = []
        python_items: list[Event | native.RawRun] = []
        for item in items:
            if isinstance(item, bytes):
                native_items.append(raw_run(item))
                python_items.extend(by_time(decode_record(item)))
            else:
                native_items.append(item)
                python_items.append(item)
        native_batches.append(Batch(events=native_items))
        python_batches.append(Batch(events=python_items))
    if not sum(batch.event_count() for batch in native_batches):
        return
    assert [b.summary() for b in native_batches if b.event_count()] == [
        b.summary() for b in python_batches if b.event_count()
    ]
    native_path = append_with(native_batches, store_factory, use_native=True)
    python_path = append_with(python_batches, store_factory, use_native=False)
    assert table_dump(native_path) == table_dump(python_path)


def test_a_counter_beyond_64_bits_is_an_overflow_either_way(store_factory: Any) -> None:
    data = record(raw_event(3, 5, pid=1, comm=b"x", sock_id=1 << 63))
    for use_native, item in ((True, raw_run(data)), (False, decode_record(data)[0])):
        store, recording_id = store_factory("overflow")
        appender = SqliteAppender(store, use_native=use_native)
        try:
            with pytest.raises(OverflowError):
                appender.append(recording_id, Batch(events=[item]), ClockModel([clock_sample()]))
        finally:
            appender.close()


def test_batch_summary_needs_events() -> None:
    with pytest.raises(ValueError, match="at least one event"):
        native.batch_summary([], decode_one)


def test_the_c_path_shares_pythons_sqlite_library() -> None:
    """Two SQLite copies in one process would drop each other's locks on the log."""
    assert native.shares_sqlite_with_python()
