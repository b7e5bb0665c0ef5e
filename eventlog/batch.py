"""A batch: what one append commits in one transaction."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple

from eventlog import native
from eventlog.events import ClockSample, Event, Loss, Snapshot
from eventlog.kernel_records import decode_one
from eventlog.snapshots import DELTAS_TABLE, SnapshotEncoder

_MONO = itemgetter(1)


@dataclass
class Batch:
    """Events in log order, the snapshots hung on some of them, losses and clock samples.

    ``events`` holds Event tuples and RawRuns (ring-buffer events kept as the kernel wrote
    them, eventlog/_native.c); a run takes one position per event it holds.
    """

    events: list[Event | native.RawRun] = field(default_factory=list)
    snapshots: dict[int, Snapshot] = field(default_factory=dict)  # position offset -> rows
    losses: list[Loss] = field(default_factory=list)
    clock_samples: list[ClockSample] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.events or self.losses or self.clock_samples)

    def event_count(self) -> int:
        return sum(1 if isinstance(item, tuple) else len(item) for item in self.events)

    def summary(self) -> BatchSummary:
        """Time range and distinct dictionary values of the events (there must be some)."""
        if native.AVAILABLE:
            return BatchSummary(*native.batch_summary(self.events, decode_one))
        events: list[Event] = self.events  # type: ignore[assignment]  # no runs without C
        return BatchSummary(
            min(map(_MONO, events)),
            max(map(_MONO, events)),
            distinct_comms(events),
            distinct_netns(events),
        )

    def mono_range(self) -> tuple[int, int]:
        summary = self.summary()
        return summary.min_mono_ns, summary.max_mono_ns


class BatchSummary(NamedTuple):
    min_mono_ns: int
    max_mono_ns: int
    comms: set[str | None]
    netns: set[int | None]


class AppendResult(NamedTuple):
    """Positions an append committed (``first > last`` when it held no events)."""

    first_position: int
    last_position: int

    @property
    def event_count(self) -> int:
        return max(0, self.last_position - self.first_position + 1)


def event_rows(
    events: list[Event],
    comm_ids: dict[str | None, int | None],
    netns_ids: dict[int | None, int | None],
) -> list[tuple[Any, ...]]:
    """Rows for the events table without position and recording id (``ROW_COLUMNS``), in
    order. The hot path of every append: tuple unpacking and dict lookups only."""
    comm_id = comm_ids.__getitem__
    netns_id = netns_ids.__getitem__
    return [
        (
            kind,
            mono_ns,
            pid,
            comm_id(comm),
            netns_id(netns),
            laddr,
            lport,
            raddr,
            rport,
            sock_id,
            bytes_sent,
            bytes_received,
            extra and encode_extra(extra),
        )
        for (
            kind,
            mono_ns,
            pid,
            comm,
            netns,
            laddr,
            lport,
            raddr,
            rport,
            sock_id,
            bytes_sent,
            bytes_received,
            extra,
        ) in events
    ]


@contextmanager
def gc_paused(lasting: bool = False) -> Iterator[None]:
    """Pause the cyclic garbage collector while rows are built and sent.

    A batch allocates one tuple per event; each allocation burst triggers collections that
    walk every tracked object, which tripled the cost of an append in measurements. The rows
    hold no reference cycles, so nothing is lost by collecting after the batch.

    ``lasting``: what the block made lives on (a table of tens of thousands of rows). The
    first young collection after the pause would walk all of it (9 ms for a table of 16,000
    connections), to find nothing; it is moved to the oldest generation at once instead
    (``freeze`` then ``unfreeze``), which only a full collection walks. Other young objects
    of the process move with it: a cycle among them waits for that full collection.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if lasting:
            gc.freeze()
            gc.unfreeze()
        if enabled:
            gc.enable()


def distinct_comms(events: list[Event]) -> set[str | None]:
    return set(map(itemgetter(3), events))


def distinct_netns(events: list[Event]) -> set[int | None]:
    return set(map(itemgetter(4), events))


def encode_extra(extra: dict[str, Any] | None) -> str | None:
    """Kind-specific fields as compact JSON with sorted keys (so equal data, equal bytes)."""
    if not extra:
        return None
    return json.dumps(extra, separators=(",", ":"), sort_keys=True)


def snapshot_rows(
    batch: Batch, first_position: int, encoder: SnapshotEncoder
) -> Iterator[tuple[str, Iterable[tuple[Any, ...]]]]:
    """(table, rows) for every snapshot in ``batch``, whole or as changes as ``encoder``
    decides (eventlog.snapshots), rows prefixed with their position."""
    snapshots = ((first_position + i, s) for i, s in sorted(batch.snapshots.items()))
    for encoded in encoder.encode(snapshots):
        if encoded.base_position is not None:
            yield DELTAS_TABLE, [(encoded.position, encoded.base_position)]
        for table, rows in encoded.tables.items():
            if rows:
                yield table, rows
