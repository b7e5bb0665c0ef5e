"""The reorder buffer: time order out, holds for snapshots, late events counted."""

from __future__ import annotations

from recorder.events import Event, Kind, Snapshot
from recorder.reorder import ReorderBuffer


class Sink:
    def __init__(self) -> None:
        self.items: list[tuple[str, int]] = []

    def add_events(self, events: list[Event]) -> None:
        self.items.extend(("event", event.mono_ns) for event in events)

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
