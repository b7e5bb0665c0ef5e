"""A batch: what one append commits in one transaction."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from recorder.clock import ClockModel, wall_bounds
from recorder.events import ClockSample, Event, Loss, Snapshot


@dataclass
class Batch:
    """Events in log order, the snapshots hung on some of them, losses and clock samples."""

    events: list[Event] = field(default_factory=list)
    snapshots: dict[int, Snapshot] = field(default_factory=dict)  # index in events -> rows
    losses: list[Loss] = field(default_factory=list)
    clock_samples: list[ClockSample] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.events or self.losses or self.clock_samples)

    def mono_range(self) -> tuple[int, int]:
        monos = [event.mono_ns for event in self.events]
        return min(monos), max(monos)

    def wall_bounds(self, clock: ClockModel) -> tuple[int, int]:
        """Bounds on the wall times of the events: what the batches index stores."""
        return wall_bounds(clock, *self.mono_range())


class AppendResult(NamedTuple):
    """Positions an append committed (``first > last`` when it held no events)."""

    first_position: int
    last_position: int

    @property
    def count(self) -> int:
        return max(0, self.last_position - self.first_position + 1)


def encode_extra(extra: dict[str, Any] | None) -> str | None:
    """Kind-specific fields as compact JSON with sorted keys (so equal data, equal bytes)."""
    if not extra:
        return None
    return json.dumps(extra, separators=(",", ":"), sort_keys=True)


def snapshot_rows(
    batch: Batch, first_position: int
) -> Iterator[tuple[str, Iterable[tuple[Any, ...]]]]:
    """(table, rows) for every snapshot in ``batch``, rows prefixed with their position."""
    for index, snapshot in sorted(batch.snapshots.items()):
        position = first_position + index
        if snapshot.connections:
            yield "snapshot_connections", [(position, *row) for row in snapshot.connections]
        if snapshot.processes:
            yield "snapshot_processes", [(position, *row) for row in snapshot.processes]
        if snapshot.conntrack:
            yield "snapshot_conntrack", [(position, *row) for row in snapshot.conntrack]
