"""Snapshots stored as their changes (eventlog.snapshots), given back whole to every reader.

``scan_whole`` is eventlog.archive.scan for a snapshot table: the rows of the snapshots in a
range of positions, each whole, wherever what it was built from is (the live log, the
archive, or the seed a cut kept). A snapshot stored whole comes back as it was stored; one
stored as changes is its base rebuilt, less the rows it took out, with the rows it added, in
the canonical order (eventlog.snapshots). A range that holds no snapshot stored as changes
is read as it is stored, with no more work than before snapshots could be.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from eventlog.archive import TABLES, scan
from eventlog.errors import LogOpenError
from eventlog.scan import THREADS, Select
from eventlog.snapshots import DELTAS_TABLE, GONE, SNAPSHOT_TABLES
from eventlog.store import LogStore

_TAG = "__change"  # while changes are applied: 0 a row of the base, 1 one gone, 2 one added
_BASE, _TAKEN_OUT, _ADDED = 0, 1, 2


def scan_whole(
    store: LogStore,
    select: Select,
    after: int,
    upto: int,
    threads: int = THREADS,
    links: Mapping[int, int] | None = None,
) -> pa.Table:
    """The rows of ``select`` (columns of a snapshot table, the position among them) for the
    snapshots at positions ``after < p <= upto``, each whole, in position order. ``links``:
    what ``chains`` gives for the range, when the caller reads more than one table of it."""
    assert select.table in SNAPSHOT_TABLES, select.table
    if links is None:
        links = chains(store, after, upto)
    if not links:
        return scan(store, select, after, upto, threads)
    full = TABLES[select.table]
    behind = {base for base in links.values() if base <= after}
    parts = []
    if behind:
        rows = scan(store, full, min(behind) - 1, after, threads)
        parts.append(rows.filter(pc.is_in(rows.column("position"), pa.array(sorted(behind)))))
    parts.append(scan(store, full, after, upto, threads))
    whole = rebuild(pa.concat_tables(parts), links, after)
    return whole.select([name for name, _ in select.columns]).cast(select.schema())


def chains(store: LogStore, after: int, upto: int) -> dict[int, int]:
    """What rebuilding the snapshots of ``(after, upto]`` follows: position -> base, of each
    one stored as changes and of the snapshots before ``after`` they are built from (the
    same for every snapshot table). Empty when none of them is stored as changes."""
    links = deltas(store, after, upto)
    return _with_chains(store, links, after) if links else links


def deltas(store: LogStore, after: int, upto: int) -> dict[int, int]:
    """The snapshots at positions in ``(after, upto]`` stored as changes: position -> base."""
    rows = scan(store, TABLES[DELTAS_TABLE], after, upto)
    return dict(
        zip(
            rows.column("position").to_pylist(),
            rows.column("base_position").to_pylist(),
            strict=True,
        )
    )


def _with_chains(store: LogStore, links: dict[int, int], after: int) -> dict[int, int]:
    """``links`` (the snapshots after ``after`` stored as changes) and the links of the
    snapshots up to ``after`` they are built from, back to snapshots stored whole (a writer
    stores one whole every few: a short way back). Only those: the snapshots of another
    recording in between, and what they are built from, are not read."""
    needed = dict(links)
    known: dict[int, int] = {}  # every link of (known_from, after]
    known_from = after
    frontier = {base for base in links.values() if base <= after}
    while frontier:
        low = min(frontier)
        if low <= known_from:
            known.update(deltas(store, low - 1, known_from))
            known_from = low - 1
        stored_as_changes = frontier & known.keys()
        needed.update((position, known[position]) for position in stored_as_changes)
        frontier = {known[position] for position in stored_as_changes}
    return needed


def rebuild(rows: pa.Table, links: Mapping[int, int], after: int) -> pa.Table:
    """The whole rows of the snapshots after ``after``, from ``rows`` (every column of a
    snapshot table, in position order: those of the snapshots after ``after`` and of every
    snapshot they are built from) and ``links`` (position -> base of those stored as
    changes)."""
    positions = rows.column("position").to_numpy()
    present, starts = np.unique(positions, return_index=True)
    ends = [*starts[1:].tolist(), len(positions)] if len(starts) else []
    own = {
        int(p): rows.slice(int(s), int(e) - int(s))
        for p, s, e in zip(present.tolist(), starts.tolist(), ends, strict=True)
    }
    users = Counter(links.values())
    whole: dict[int, pa.Table] = {}
    out = []
    empty = rows.schema.empty_table()
    for position in sorted(own.keys() | links.keys()):
        stored = own.get(position, empty)
        base_position = links.get(position)
        if base_position is None:
            if pc.any(pc.equal(stored.column("gone"), GONE)).as_py():
                raise LogOpenError(
                    f"the snapshot at position {position} is stored whole, but takes rows out"
                )
            table = stored
        else:
            table = apply_changes(whole.get(base_position, empty), stored, position)
            users[base_position] -= 1
            if not users[base_position]:
                whole.pop(base_position, None)
        if users[position]:
            whole[position] = table
        if position > after:
            out.append(table)
    return pa.concat_tables(out) if out else empty


def apply_changes(base: pa.Table, stored: pa.Table, position: int) -> pa.Table:
    """The snapshot at ``position``: ``base`` (whole) less the rows of ``stored`` marked
    gone, with its other rows, in the canonical order (each row with ``position``)."""
    data = [name for name in base.column_names if name not in ("position", "gone")]
    if not stored.num_rows:
        return _at(base, position)
    gone = pc.fill_null(pc.equal(stored.column("gone"), GONE), False).to_numpy(zero_copy_only=False)
    tags = np.concatenate([
        np.full(base.num_rows, _BASE, dtype=np.int8),
        np.where(gone, _TAKEN_OUT, _ADDED).astype(np.int8),
    ])  # fmt: skip
    combined = pa.concat_tables([base.select(data), stored.select(data)]).append_column(
        _TAG, pa.array(tags)
    )
    # Nulls sort last (Arrow's default), as in the canonical order.
    order = pc.sort_indices(combined, sort_keys=[(name, "ascending") for name in [*data, _TAG]])
    combined = combined.take(order)
    tags = tags[order.to_numpy()]
    starts = _group_starts(combined, data)
    group = np.cumsum(starts) - 1
    held = np.bincount(group, weights=tags == _BASE).astype(np.int64)
    taken = np.bincount(group, weights=tags == _TAKEN_OUT).astype(np.int64)
    if (taken > held).any():
        raise LogOpenError(
            f"the snapshot at position {position} takes out rows its base does not hold"
        )
    # Within a group of equal rows the base's come first (the tag sorts them so): keep as
    # many as are not taken out, and every row added.
    rank = np.arange(len(tags)) - np.flatnonzero(starts)[group]
    keep = ((tags == _BASE) & (rank < (held - taken)[group])) | (tags == _ADDED)
    kept = combined.filter(pa.array(keep)).drop_columns([_TAG])
    return _at(kept.append_column("gone", pa.nulls(kept.num_rows, pa.int64())), position)


def _group_starts(rows: pa.Table, columns: list[str]) -> np.ndarray:
    """Whether each row (of ``rows``, sorted) differs from the one before in ``columns``
    (nulls equal to nulls); the first row does."""
    starts = np.zeros(rows.num_rows, dtype=bool)
    if not rows.num_rows:
        return starts
    starts[0] = True
    for name in columns:
        column = rows.column(name).combine_chunks()
        later, earlier = column.slice(1), column.slice(0, len(column) - 1)
        same = pc.or_(
            pc.fill_null(pc.equal(later, earlier), False),
            pc.and_(pc.is_null(later), pc.is_null(earlier)),
        )
        starts[1:] |= ~same.to_numpy(zero_copy_only=False)
    return starts


def _at(rows: pa.Table, position: int) -> pa.Table:
    """``rows`` with every row at ``position``, the columns in their order."""
    names = ["position", *(n for n in rows.column_names if n != "position")]
    rows = rows.select([n for n in names if n != "position"])
    column = pa.array(np.full(rows.num_rows, position, dtype=np.int64))
    return rows.add_column(0, "position", column).select(names)
