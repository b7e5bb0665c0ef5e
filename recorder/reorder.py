"""Put events back in time order before they get log positions.

Events reach user space out of order: each CPU stages its own, an ACCEPT carries the time
the handshake completed although it is emitted when accept() returns, and snapshots take a
while to walk /proc. The buffer holds events until they are ``horizon_ns`` old and then
releases them sorted by timestamp, so positions follow time. An event that arrives after its
time was released ("late") is released at once; replay does not depend on the order.

Ring-buffer events may come as ``RawRun``s (eventlog/_native.c) rather than lists of Event
tuples: a release made only of runs is merged in C and handed on as one run; one that mixes
them with other events (conntrack, snapshots, /proc) is decoded and merged here, in the same
order either way: by time, equal times in the order they arrived.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from operator import itemgetter
from typing import Protocol, TypeAlias

from eventlog import native
from eventlog.events import Event, Snapshot
from eventlog.kernel_records import decode_record

_MONO = itemgetter(1)

# A run of events sorted by time. Strings: RawRun exists only where the C module was built.
Chunk: TypeAlias = "list[Event] | native.RawRun"
Released: TypeAlias = "list[Event] | native.RawRun"


class EventSink(Protocol):
    def add_events(self, events: Released) -> None: ...

    def add_snapshot(self, event: Event, snapshot: Snapshot) -> None: ...


class ReorderBuffer:
    """Pending events are kept as sorted chunks (one per hand-over, sorted once on arrival)
    in a heap by their oldest event, so a release touches only the chunks it releases from:
    the recorder asks for a release on every pass of its loop, mostly for nothing."""

    def __init__(self, horizon_ns: int) -> None:
        self.horizon_ns = horizon_ns
        self.late_events = 0
        self._chunks: list[tuple[int, int, Chunk]] = []  # heap of (oldest, arrival, chunk)
        self._arrivals = 0
        self._count = 0
        self._released_to = 0  # every event with mono_ns <= this has been released
        self._holds: list[int] = []  # snapshot walks under way: release nothing after them
        self._snapshots: list[tuple[Event, Snapshot]] = []

    def __len__(self) -> int:
        return self._count

    def add(self, events: list[Event]) -> None:
        if events:
            self._add_chunk(sorted(events, key=_MONO))

    def add_run(self, run: native.RawRun) -> None:
        """Events of one stage record, already in time order."""
        if len(run):
            self._add_chunk(run)

    def _add_chunk(self, chunk: Chunk) -> None:
        self._push(self._arrivals, chunk)
        self._arrivals += 1
        self._count += len(chunk)

    def _push(self, arrival: int, chunk: Chunk) -> None:
        heapq.heappush(self._chunks, (_first_ns(chunk), arrival, chunk))

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
        chunks = [chunk for _, _, chunk in sorted(self._chunks, key=itemgetter(1))]
        return [event for event in _events_of(chunks) if event.mono_ns >= mono_ns]

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

    def _take_upto(self, cutoff: int | None) -> Released:
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
        chunks = [chunk for _, chunk in taken]
        self._count -= sum(map(len, chunks))
        runs = [chunk for chunk in chunks if not isinstance(chunk, list)]
        if len(runs) == len(chunks):
            return native.merge_runs(runs)
        ready = _events_of(chunks)
        if len(chunks) > 1:
            ready.sort(key=_MONO)  # merges the sorted runs; stable, so arrival order holds
        return ready

    def _pop_upto(self, cutoff: int) -> list[tuple[int, Chunk]]:
        """(arrival, part of chunk) for every chunk holding events up to ``cutoff``."""
        heap = self._chunks
        taken = []
        while heap and heap[0][0] <= cutoff:
            _, arrival, chunk = heapq.heappop(heap)
            if _last_ns(chunk) > cutoff:
                chunk, rest = _split(chunk, cutoff)
                self._push(arrival, rest)  # its oldest is after cutoff now
            taken.append((arrival, chunk))
        return taken

    def _emit(self, ready: Released, sink: EventSink) -> int:
        if not ready:
            return 0
        released_to = self._released_to
        if _first_ns(ready) <= released_to:
            self.late_events += _count_upto(ready, released_to)
        sink.add_events(ready)
        return len(ready)


def _first_ns(chunk: Chunk) -> int:
    return chunk[0].mono_ns if isinstance(chunk, list) else chunk.first_ns


def _last_ns(chunk: Chunk) -> int:
    return chunk[-1].mono_ns if isinstance(chunk, list) else chunk.last_ns


def _split(chunk: Chunk, cutoff: int) -> tuple[Chunk, Chunk]:
    """The events up to ``cutoff`` and the rest."""
    if isinstance(chunk, list):
        index = bisect_right(chunk, cutoff, key=_MONO)
        return chunk[:index], chunk[index:]
    return chunk.split(cutoff)


def _count_upto(chunk: Chunk, mono_ns: int) -> int:
    if isinstance(chunk, list):
        return sum(1 for event in chunk if event.mono_ns <= mono_ns)
    return chunk.count_upto(mono_ns)


def _events_of(chunks: list[Chunk]) -> list[Event]:
    """The events of ``chunks`` as tuples, in order (runs decoded as kernel_records does)."""
    events: list[Event] = []
    for chunk in chunks:
        events.extend(chunk if isinstance(chunk, list) else decode_record(chunk.record()))
    return events
