"""Put events back in time order before they get log positions.

Events reach user space out of order: each CPU stages its own, an ACCEPT carries the time
the handshake completed although it is emitted when accept() returns, and snapshots take a
while to walk /proc. The buffer holds events until they are ``horizon_ns`` old and then
releases them sorted by timestamp, so positions follow time. An event that arrives after its
time was released ("late") is released at once; replay does not depend on the order.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from operator import itemgetter
from typing import Protocol

from recorder.events import Event, Snapshot

_MONO = itemgetter(1)


class EventSink(Protocol):
    def add_events(self, events: list[Event]) -> None: ...

    def add_snapshot(self, event: Event, snapshot: Snapshot) -> None: ...


class ReorderBuffer:
    """Pending events are kept as sorted chunks (one per hand-over, sorted once on arrival)
    in a heap by their oldest event, so a release touches only the chunks it releases from:
    the recorder asks for a release on every pass of its loop, mostly for nothing."""

    def __init__(self, horizon_ns: int) -> None:
        self.horizon_ns = horizon_ns
        self.late_events = 0
        self._chunks: list[tuple[int, int, list[Event]]] = []  # heap of (oldest, arrival, chunk)
        self._arrivals = 0
        self._count = 0
        self._released_to = 0  # every event with mono_ns <= this has been released
        self._holds: list[int] = []  # snapshot walks under way: release nothing after them
        self._snapshots: list[tuple[Event, Snapshot]] = []

    def __len__(self) -> int:
        return self._count

    def add(self, events: list[Event]) -> None:
        if events:
            chunk = sorted(events, key=_MONO)
            self._push(self._arrivals, chunk)
            self._arrivals += 1
            self._count += len(chunk)

    def _push(self, arrival: int, chunk: list[Event]) -> None:
        heapq.heappush(self._chunks, (chunk[0].mono_ns, arrival, chunk))

    def hold(self, mono_ns: int) -> None:
        """A snapshot walk started at ``mono_ns``: keep later events until it is added."""
        self._holds.append(mono_ns)

    def add_snapshot(self, event: Event, snapshot: Snapshot) -> None:
        """The walk that started at ``event.mono_ns`` finished; drop its hold."""
        if event.mono_ns in self._holds:
            self._holds.remove(event.mono_ns)
        self._snapshots.append((event, snapshot))
        self._snapshots.sort(key=lambda item: item[0].mono_ns)

    def pending_since(self, mono_ns: int) -> list[Event]:
        """Events still held with ``mono_ns`` or later (during a walk: all of them)."""
        return [
            event
            for _, _, chunk in sorted(self._chunks, key=itemgetter(1))
            for event in chunk
            if event.mono_ns >= mono_ns
        ]

    def cancel_hold(self, mono_ns: int) -> None:
        if mono_ns in self._holds:
            self._holds.remove(mono_ns)

    def release(self, now_mono_ns: int, sink: EventSink) -> int:
        """Hand ``sink`` everything older than the horizon, in time order; return the count."""
        cutoff = now_mono_ns - self.horizon_ns
        if self._holds:
            cutoff = min(cutoff, *self._holds)
        return self._release_to(cutoff, sink)

    def release_all(self, sink: EventSink) -> int:
        self._holds.clear()
        return self._release_to(None, sink)

    def _release_to(self, cutoff: int | None, sink: EventSink) -> int:
        released = 0
        while self._snapshots and (cutoff is None or self._snapshots[0][0].mono_ns <= cutoff):
            event, snapshot = self._snapshots.pop(0)
            released += self._emit(self._take_upto(event.mono_ns), sink)
            sink.add_snapshot(event, snapshot)
            released += 1
            self._released_to = max(self._released_to, event.mono_ns)
        ready = self._take_upto(cutoff)
        released += self._emit(ready, sink)
        if cutoff is not None:
            self._released_to = max(self._released_to, cutoff)
        return released

    def _take_upto(self, cutoff: int | None) -> list[Event]:
        """Remove and return every pending event with ``mono_ns <= cutoff``, in time order
        (events with equal times in the order they arrived)."""
        if cutoff is None:
            taken = [(arrival, chunk) for _, arrival, chunk in self._chunks]
            self._chunks.clear()
        else:
            taken = self._pop_upto(cutoff)
        if not taken:
            return []
        taken.sort(key=itemgetter(0))
        ready = [event for _, chunk in taken for event in chunk]
        self._count -= len(ready)
        if len(taken) > 1:
            ready.sort(key=_MONO)  # merges the sorted runs; stable, so arrival order holds
        return ready

    def _pop_upto(self, cutoff: int) -> list[tuple[int, list[Event]]]:
        """(arrival, part of chunk) for every chunk holding events up to ``cutoff``."""
        heap = self._chunks
        taken = []
        while heap and heap[0][0] <= cutoff:
            _, arrival, chunk = heapq.heappop(heap)
            if chunk[-1].mono_ns > cutoff:
                index = bisect_right(chunk, cutoff, key=_MONO)
                self._push(arrival, chunk[index:])  # its oldest is after cutoff now
                chunk = chunk[:index]
            taken.append((arrival, chunk))
        return taken

    def _emit(self, ready: list[Event], sink: EventSink) -> int:
        if not ready:
            return 0
        released_to = self._released_to
        if ready[0].mono_ns <= released_to:
            self.late_events += sum(1 for event in ready if event.mono_ns <= released_to)
        sink.add_events(ready)
        return len(ready)
