"""The reorder buffer: time order out, holds for snapshots, late events counted."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from eventlog import native
from eventlog.events import Event, Kind, Snapshot
from eventlog.kernel_records import expand, raw_run
from recorder.reorder import Released, ReorderBuffer
from tests.rawevents import raw_event, record


def as_events(released: Released) -> list[Event]:
    return released if isinstance(released, list) else expand([released])


class Sink:
    def __init__(self) -> None:
        self.items: list[tuple[str, int]] = []

    def add_events(self, events: Released) -> None:
        self.items.extend(("event", event.mono_ns) for event in as_events(events))

    def add_snapshot(self, event: Event, snapshot: Snapshot) -> None:
        self.items.append(("snapshot", event.mono_ns))


def ev(mono: int) -> Event:
    return Event(Kind.CONNECT, mono)


def test_releases_only_past_the_horizon_in_time_order() -> None:
    buffer, sink = ReorderBuffer(horizon_ns=100), Sink()
    buffer.add([ev(50), ev(10), ev(300)])
    buffer.add([ev(20)])
    assert buffer.release(now_mono_ns=160, sink=sink) == 3
    assert sink.items == [("event", 10), ("event", 20), ("event", 50)]
    assert len(buffer) == 1
    buffer.release_all(sink)
    assert sink.items[-1] == ("event", 300)


def test_snapshot_hold_keeps_later_events_back_and_goes_in_its_place() -> None:
    buffer, sink = ReorderBuffer(horizon_ns=10), Sink()
    buffer.hold(100)
    buffer.add([ev(90), ev(110), ev(200)])
    buffer.release(now_mono_ns=1_000, sink=sink)
    assert sink.items == [("event", 90)]
    buffer.add_snapshot(Event(Kind.SNAPSHOT, 100), Snapshot())
    buffer.release(now_mono_ns=1_000, sink=sink)
    assert sink.items == [("event", 90), ("snapshot", 100), ("event", 110), ("event", 200)]


def test_late_events_are_released_and_counted() -> None:
    buffer, sink = ReorderBuffer(horizon_ns=10), Sink()
    buffer.add([ev(100)])
    buffer.release(now_mono_ns=200, sink=sink)
    buffer.add([ev(150), ev(195)])
    buffer.release(now_mono_ns=300, sink=sink)
    assert buffer.late_events == 1
    assert [mono for _, mono in sink.items] == [100, 150, 195]


class IdentitySink:
    def __init__(self) -> None:
        self.released: list[list[Event]] = []

    def add_events(self, events: Released) -> None:
        self.released.append(as_events(events))

    def add_snapshot(self, event: Event, snapshot: Snapshot) -> None:
        raise AssertionError("no snapshots here")


# Each step: hand over events (times; as a run of raw events or as tuples), or release at a
# time (None: release all).
steps = st.lists(
    st.one_of(
        st.tuples(st.lists(st.integers(0, 30), max_size=8), st.booleans()).map(
            lambda handed: ("add", handed)
        ),
        st.one_of(st.none(), st.integers(0, 45)).map(lambda now: ("release", now)),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_each_release_is_every_pending_event_up_to_the_cutoff_in_time_then_arrival_order(
    script: list[tuple[str, Any]],
) -> None:
    """Hand-overs come as tuples and, where the C module is built, as raw runs too; the
    order out is the same either way."""
    horizon = 10
    buffer, sink = ReorderBuffer(horizon_ns=horizon), IdentitySink()
    pending: list[tuple[int, int]] = []  # the definition: (time, tag) in arrival order
    tag = 0
    for action, value in script:
        if action == "add":
            times, as_run = value
            handed = []
            for mono in times:
                tag += 1
                handed.append((mono, tag))  # the pid tells events apart
            if as_run and native.AVAILABLE:
                buffer.add_run(raw_run(record(*(raw_event(1, t, pid=p) for t, p in handed))))
            else:
                buffer.add([Event(Kind.CONNECT, t, pid=p) for t, p in handed])
            pending.extend(handed)
            continue
        before = len(sink.released)
        if value is None:
            buffer.release_all(sink)
            due = pending
        else:
            buffer.release(now_mono_ns=value, sink=sink)
            due = [item for item in pending if item[0] <= value - horizon]
        expected = sorted(due, key=lambda item: item[0])  # stable: arrival order holds
        got = sink.released[before] if len(sink.released) > before else []
        assert [(event.mono_ns, event.pid) for event in got] == expected
        pending = [item for item in pending if item not in due]
        assert len(buffer) == len(pending)
