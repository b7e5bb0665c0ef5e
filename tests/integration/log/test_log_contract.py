"""The contract every log backend keeps, run against a real SQLite file and a real PostgreSQL.

- appends are atomic, positions start at 1 and are gap-free and ordered, across writers;
- what is read back equals what was appended, field for field;
- reads by position and by wall-time range are in log order and stream page by page;
- snapshots, losses and clock samples are kept with the batch that carried them.
"""

from __future__ import annotations

import pytest

from eventlog.batch import Batch
from eventlog.events import (
    ConntrackEntry,
    Event,
    Kind,
    Loss,
    Snapshot,
    SnapshotConnection,
    SnapshotProcess,
)
from eventlog.location import LogLocation
from eventlog.reader import LogReader
from eventlog.recordings import (
    STOP_CRASHED,
    STOP_SIGNAL,
    close_abandoned_recordings,
    end_recording,
)
from eventlog.store import Purpose, open_log
from tests.factories import (
    MONO_BASE_NS,
    ROOT_NETNS,
    WALL_BASE_NS,
    clock_sample,
    conn_event,
    ip,
    make_host,
    recording_writer,
)


def _varied_events(count: int, start_ns: int = MONO_BASE_NS) -> list[Event]:
    events = []
    for i in range(count):
        kind = [Kind.CONNECT, Kind.ACCEPT, Kind.CLOSE, Kind.CONNECT_FAILED][i % 4]
        v6 = i % 5 == 0
        events.append(
            conn_event(
                kind,
                start_ns + i * 1000,
                pid=1000 + i % 7,
                comm=f"proc{i % 3}" if i % 11 else None,
                laddr="::1" if v6 else "127.0.0.1",
                raddr="::ffff:10.0.0.1" if v6 else "10.0.0.1",
                lport=30000 + i,
                rport=443,
                sock_id=i // 2 + 1,
                bytes_sent=i * 10 if kind == Kind.CLOSE else None,
                bytes_received=i * 20 if kind == Kind.CLOSE else None,
                extra={"error": 111} if kind == Kind.CONNECT_FAILED else None,
            )
        )
    return events


def _as_appended(event_row: object) -> Event:
    from eventlog.events import LoggedEvent

    assert isinstance(event_row, LoggedEvent)
    return Event(
        event_row.kind,
        event_row.mono_ns,
        event_row.pid,
        event_row.comm,
        event_row.netns,
        event_row.laddr,
        event_row.lport,
        event_row.raddr,
        event_row.rport,
        event_row.sock_id,
        event_row.bytes_sent,
        event_row.bytes_received,
        event_row.extra,
    )


def test_round_trip_preserves_every_field(log_location: LogLocation) -> None:
    events = _varied_events(50)
    with recording_writer(log_location) as (store, writer):
        writer.add_events(events)
        result = writer.flush()
        assert result is not None
        assert (result.first_position, result.last_position) == (1, 50)
        read = list(LogReader(store).events())
    assert [e.position for e in read] == list(range(1, 51))
    assert [_as_appended(e) for e in read] == events
    assert {e.recording_id for e in read} == {writer.recording_id}


def test_positions_are_gap_free_across_batches_and_writers(log_location: LogLocation) -> None:
    with recording_writer(log_location) as (store, first):
        with recording_writer(log_location, host=make_host("other")) as (_, second):
            for round_number in range(5):
                first.add_events(_varied_events(7, MONO_BASE_NS + round_number * 10**6))
                first.flush()
                second.add_events(_varied_events(3, MONO_BASE_NS + round_number * 10**6))
                second.flush()
        reader = LogReader(store)
        positions = [e.position for e in reader.events()]
        spans = reader.batches()
    assert positions == list(range(1, 51))
    assert [(s.first_position, s.last_position) for s in spans] == [
        (1 + 10 * r + offset, end)
        for r in range(5)
        for offset, end in ((0, 10 * r + 7), (7, 10 * r + 10))
    ]
    assert [s.recording_id for s in spans] == [first.recording_id, second.recording_id] * 5
    assert first.committed_events == 35 and second.committed_events == 15


def test_reads_stream_in_pages_and_respect_bounds(log_location: LogLocation) -> None:
    with recording_writer(log_location) as (store, writer):
        writer.add_events(_varied_events(95))
        writer.flush()
        reader = LogReader(store, page_size=10)
        pages = list(reader.raw_pages())
        assert [len(page) for page in pages] == [10] * 9 + [5]
        assert [e.position for e in reader.events(after=20, upto=33)] == list(range(21, 34))
        assert reader.head() == 95


def test_time_range_reads_use_wall_time_from_clock_samples(log_location: LogLocation) -> None:
    step = 1_000_000  # 1 ms between events
    events = [conn_event(mono_ns=MONO_BASE_NS + i * step, sock_id=i) for i in range(100)]
    with recording_writer(log_location) as (store, writer):
        writer.add_events(events[:50])
        writer.flush()
        # The wall clock was stepped forward by 1 s at event 50: a new sample says so.
        writer.add_clock_sample(
            clock_sample(MONO_BASE_NS + 50 * step, WALL_BASE_NS - MONO_BASE_NS + 10**9)
        )
        writer.add_events(events[50:])
        writer.flush()
        reader = LogReader(store)
        walls = {e.sock_id: e.wall_ns for e in reader.events()}
        assert walls[0] == WALL_BASE_NS
        assert walls[49] == WALL_BASE_NS + 49 * step
        assert walls[50] == WALL_BASE_NS + 50 * step + 10**9
        window = list(reader.events_between(WALL_BASE_NS + 10 * step, WALL_BASE_NS + 20 * step))
        assert [e.sock_id for e in window] == list(range(10, 21))
        after_step = list(
            reader.events_between(
                WALL_BASE_NS + 10**9 + 60 * step, WALL_BASE_NS + 10**9 + 61 * step
            )
        )
        assert [e.sock_id for e in after_step] == [60, 61]


def test_snapshot_rows_hang_on_their_event(log_location: LogLocation) -> None:
    snapshot = Snapshot(
        connections=(
            SnapshotConnection(
                ROOT_NETNS, ip("127.0.0.1"), 5432, ip("127.0.0.1"), 40000, 1, 99, 0, 77
            ),
            SnapshotConnection(ROOT_NETNS, ip("::"), 22, ip("::"), 0, 10, 98, 0, None),
        ),
        processes=(
            SnapshotProcess(77, 1, "postgres", "postgres -D /x", "/system.slice/pg", ROOT_NETNS, 5),
        ),
        conntrack=(
            ConntrackEntry(
                ROOT_NETNS,
                ip("10.0.0.2"),
                ip("10.99.0.10"),
                5000,
                80,
                ip("10.0.1.5"),
                ip("10.0.0.2"),
                9090,
                5000,
                0x1A8,
                3,
                42,
                0,
                0,
            ),
        ),
    )
    with recording_writer(log_location) as (store, writer):
        writer.add(conn_event())
        writer.add_snapshot(
            Event(Kind.SNAPSHOT, MONO_BASE_NS + 5, extra={"initial": True}), snapshot
        )
        writer.add(conn_event(Kind.CLOSE, MONO_BASE_NS + 10))
        writer.flush()
        reader = LogReader(store)
        kinds = [(e.position, e.kind) for e in reader.events()]
        assert kinds == [(1, Kind.CONNECT), (2, Kind.SNAPSHOT), (3, Kind.CLOSE)]
        stored = reader.snapshot(2)
        assert sorted(stored.connections) == sorted(snapshot.connections)
        assert stored.processes == snapshot.processes
        assert stored.conntrack == snapshot.conntrack
        assert reader.snapshot(1) == Snapshot()


def test_losses_and_counts(log_location: LogLocation) -> None:
    with recording_writer(log_location) as (store, writer):
        writer.add_events(_varied_events(8))
        writer.flush()
        writer.add_loss(Loss(17, MONO_BASE_NS + 100, MONO_BASE_NS + 900, "ring buffer full"))
        writer.add_events(_varied_events(4, MONO_BASE_NS + 10**6))
        writer.flush()
        reader = LogReader(store)
        (loss,) = reader.losses()
        counts = reader.event_counts()
    assert (loss.lost, loss.after_position, loss.reason) == (17, 8, "ring buffer full")
    assert loss.first_wall_ns == WALL_BASE_NS + 100
    assert sum(counts.values()) == 12
    assert counts[(writer.recording_id, Kind.CONNECT)] == 3


def test_recordings_open_close_and_abandoned(log_location: LogLocation) -> None:
    with recording_writer(log_location) as (store, writer):
        writer.add(conn_event(mono_ns=MONO_BASE_NS + 500))
        writer.flush()
        end_recording(store, writer.recording_id, MONO_BASE_NS + 600, STOP_SIGNAL)
    # A recording whose recorder died (its pid cannot exist) is closed as crashed.
    with recording_writer(log_location) as (store, writer):
        writer.add(conn_event(mono_ns=MONO_BASE_NS + 700))
        writer.flush()
        from eventlog.recordings import set_recording_field

        set_recording_field(store, writer.recording_id, recorder_pid=2**22 + 1)
        assert close_abandoned_recordings(store, make_host()) == [writer.recording_id]
        recordings = LogReader(store).recordings()
    assert [(r.stop_reason, r.stopped_mono_ns) for r in recordings] == [
        (STOP_SIGNAL, MONO_BASE_NS + 600),
        (STOP_CRASHED, MONO_BASE_NS + 700),
    ]
    assert recordings[0].started_wall_ns == WALL_BASE_NS
    assert recordings[0].host_id == "testhost"


def test_writer_flushes_by_size_and_age(log_location: LogLocation) -> None:
    with recording_writer(log_location, max_events=10, max_age_ns=50_000_000) as (_, writer):
        assert not writer.due()
        writer.add_events(_varied_events(9))
        assert not writer.due(writer.next_due_ns() - 1)  # type: ignore[operator]
        assert writer.due(writer.next_due_ns())
        writer.add(conn_event())
        assert writer.due(writer.next_due_ns() - 1)  # type: ignore[operator]
        writer.flush()
        assert writer.pending_events == 0 and writer.committed_events == 10


def test_append_of_a_whole_batch(log_location: LogLocation) -> None:
    with recording_writer(log_location) as (store, writer):
        result = writer.append(Batch(events=[*_varied_events(3)]))
        assert (result.first_position, result.last_position, result.event_count) == (1, 3, 3)
        assert LogReader(store).head() == 3


@pytest.mark.parametrize("purpose", [Purpose.READ, Purpose.RECORD])
def test_reopen_existing_log(log_location: LogLocation, purpose: Purpose) -> None:
    with recording_writer(log_location) as (_, writer):
        writer.add(conn_event())
        writer.flush()
    with open_log(log_location, purpose) as store:
        assert LogReader(store).head() == 1
