"""Snapshots stored as their changes, and given back whole.

A /proc snapshot lists every socket and process of the host, and a recording's successive
snapshots are nearly all alike: on the benchmark log, 97.5% of a snapshot's socket rows and
99.6% of its process rows are in the one before. Stored whole, they are half of the rows a
log holds, and every reader decodes them again. So a writer stores most snapshots as their
changes from its recording's snapshot before (its *base*): a ``snapshot_deltas`` row names
the base, and the snapshot's rows in the three snapshot tables are those it adds (``gone``
null) and those of its base it takes out (``gone`` = 1, the row repeated whole). Every
``KEY_EVERY``-th snapshot of a writer is stored whole, so that a reader follows a few
snapshots at most to rebuild one. A snapshot without a ``snapshot_deltas`` row is whole.

The rows of a snapshot are a multiset, compared whole: a socket whose state or holder changed
is a row gone and a row added. Every snapshot is written in one order, the *canonical* one
(by every column but the position, in the table's column order, nulls last): the writer sorts
what it stores (``canonical``), and a snapshot rebuilt from changes comes back in that order
too (``apply_changes``), so a snapshot reads the same whether it was stored whole or as
changes.

This module is the writing side, with no numpy or Arrow (the recorder imports neither):
``SnapshotEncoder`` works on the rows as tuples. The reading side is eventlog.rebuild, on
Arrow tables.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eventlog.events import Snapshot

SNAPSHOT_TABLES = ("snapshot_connections", "snapshot_processes", "snapshot_conntrack")
DELTAS_TABLE = "snapshot_deltas"
GONE = 1  # the ``gone`` column of a row a snapshot stored as changes takes out of its base
KEY_EVERY = 20  # a writer stores at least every 20th snapshot whole (5 minutes at 15 s)

Row = tuple[Any, ...]


# -- writing ---------------------------------------------------------------------------------
def canonical_key(row: Row) -> tuple[tuple[bool, Any], ...]:
    """A row's place in the canonical order: by each value, nulls last (as Arrow sorts by
    default; text as str sorts as its UTF-8 bytes do)."""
    return tuple((value is None, 0 if value is None else value) for value in row)


def canonical(rows: Iterable[Row]) -> list[Row]:
    return sorted(rows, key=canonical_key)


def changes(before: Sequence[Row], now: Sequence[Row]) -> tuple[list[Row], list[Row]]:
    """What ``now`` takes out of ``before`` and what it adds, as multisets of whole rows,
    each in canonical order."""
    counts = Counter(now)
    counts.subtract(before)
    gone = [row for row, n in counts.items() if n < 0 for _ in range(-n)]
    added = [row for row, n in counts.items() if n > 0 for _ in range(n)]
    return canonical(gone), canonical(added)


def apply(before: Sequence[Row], gone: Sequence[Row], added: Sequence[Row]) -> list[Row]:
    """The snapshot that ``before`` becomes when ``gone`` is taken out and ``added`` added,
    in canonical order (what ``changes`` undoes). This is the definition;
    eventlog.rebuild.apply_changes does the same on Arrow tables, fast."""
    counts = Counter(before)
    counts.subtract(gone)
    if any(n < 0 for n in counts.values()):
        raise ValueError("rows are taken out that the snapshot before does not hold")
    counts.update(added)
    return canonical(counts.elements())


@dataclass(frozen=True)
class _Written:
    """A snapshot as a writer stored it: its position, its rows (canonical) per table, and
    how many snapshots were stored as changes since the last one stored whole."""

    position: int
    tables: Mapping[str, Sequence[Row]]
    chain: int


@dataclass(frozen=True)
class EncodedSnapshot:
    """The rows to insert for one snapshot: its ``snapshot_deltas`` row (None: whole), and
    per snapshot table its rows, each prefixed with the position and ending with ``gone``."""

    position: int
    base_position: int | None
    tables: Mapping[str, Sequence[Row]]


class SnapshotEncoder:
    """Decides how each snapshot of one recording is stored: whole, or as its changes from
    the one before. What it decides is kept only once the batch that holds it commits
    (``commit``); after a failed one (``abandon``) the batch is encoded again from the same
    snapshot before, at the positions the retry gives it."""

    def __init__(self, key_every: int = KEY_EVERY) -> None:
        if key_every < 1:
            raise ValueError("key_every must be at least 1")
        self.key_every = key_every
        self._last: _Written | None = None  # the last snapshot a committed batch holds
        self._tentative: _Written | None = None

    def encode(self, snapshots: Iterable[tuple[int, Snapshot]]) -> Iterator[EncodedSnapshot]:
        """The rows of ``snapshots`` ((position, snapshot), in position order), encoded from
        the last committed snapshot on; they are remembered as tentative."""
        last = self._last
        for position, snapshot in snapshots:
            tables = {
                "snapshot_connections": canonical(snapshot.connections),
                "snapshot_processes": canonical(snapshot.processes),
                "snapshot_conntrack": canonical(snapshot.conntrack),
            }
            encoded, last = self._encode_one(position, tables, last)
            self._tentative = last
            yield encoded

    def _encode_one(
        self, position: int, tables: dict[str, list[Row]], last: _Written | None
    ) -> tuple[EncodedSnapshot, _Written]:
        if last is not None and last.chain + 1 < self.key_every:
            stored: dict[str, list[Row]] = {}
            size = 0
            for table, rows in tables.items():
                gone, added = changes(last.tables[table], rows)
                stored[table] = [(position, *row, GONE) for row in gone] + [
                    (position, *row, None) for row in added
                ]
                size += len(stored[table]) - len(rows)
            if size < 0:  # smaller than the snapshot whole
                written = _Written(position, tables, last.chain + 1)
                return EncodedSnapshot(position, last.position, stored), written
        whole = {t: [(position, *row, None) for row in rows] for t, rows in tables.items()}
        return EncodedSnapshot(position, None, whole), _Written(position, tables, 0)

    def commit(self) -> None:
        """The batch encoded last committed: its snapshots are the ones before the next."""
        if self._tentative is not None:
            self._last = self._tentative
        self._tentative = None

    def abandon(self) -> None:
        """The batch encoded last did not commit."""
        self._tentative = None
