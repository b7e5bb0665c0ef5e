"""Snapshots stored as their changes: the writer's encoding, the reference rebuild in Python
and the fast one on Arrow tables agree, whatever the rows (duplicates and nulls included)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventlog.archive import TABLES
from eventlog.errors import LogOpenError
from eventlog.events import Snapshot, SnapshotConnection, SnapshotProcess
from eventlog.rebuild import apply_changes, rebuild
from eventlog.snapshots import (
    GONE,
    SNAPSHOT_TABLES,
    EncodedSnapshot,
    SnapshotEncoder,
    apply,
    canonical,
    changes,
)

CONNECTIONS = TABLES["snapshot_connections"]

# Few values per column, so that rows repeat and differ in one column only.
socket_rows = st.tuples(
    st.sampled_from([4026531833, 4026532000]),
    st.sampled_from([b"\x7f\x00\x00\x01", b"\n\x00\x00\x02", bytes(16)]),
    st.integers(1, 3),
    st.sampled_from([b"\x7f\x00\x00\x01", b"\n\x00\x00\x09"]),
    st.sampled_from([80, 443]),
    st.sampled_from([1, 8, 10]),
    st.sampled_from([0, 5, 6]),
    st.just(0),
    st.sampled_from([None, 7, 8]),
)
snapshots = st.lists(socket_rows, max_size=12)


def _table(position: int, rows: list[tuple[Any, ...]], gone: list[int | None]) -> pa.Table:
    names = [name for name, _ in CONNECTIONS.columns]
    columns = list(zip(*rows, strict=True)) if rows else [()] * (len(names) - 2)
    data = [[position] * len(rows), *map(list, columns), gone]
    return pa.table(data, schema=CONNECTIONS.schema())


def _rows(table: pa.Table) -> list[tuple[Any, ...]]:
    return [tuple(row.values())[1:-1] for row in table.to_pylist()]


@given(snapshots, snapshots)
def test_changes_applied_give_the_snapshot_back_in_canonical_order(
    before: list[tuple[Any, ...]], now: list[tuple[Any, ...]]
) -> None:
    gone, added = changes(canonical(before), canonical(now))
    assert apply(canonical(before), gone, added) == canonical(now)
    assert len(gone) + len(added) <= len(before) + len(now)


def test_taking_out_a_row_the_snapshot_before_lacks_is_refused() -> None:
    row = (1, b"\x7f\x00\x00\x01", 1, b"\x7f\x00\x00\x01", 80, 1, 5, 0, None)
    with pytest.raises(ValueError, match="does not hold"):
        apply([row], [row, row], [])


@given(snapshots, snapshots)
@settings(max_examples=200)
def test_the_arrow_rebuild_is_the_python_one(
    before: list[tuple[Any, ...]], now: list[tuple[Any, ...]]
) -> None:
    base = canonical(before)
    gone, added = changes(base, canonical(now))
    stored = _table(9, [*gone, *added], [GONE] * len(gone) + [None] * len(added))
    rebuilt = apply_changes(_table(5, base, [None] * len(base)), stored, 9)
    assert rebuilt.column("position").to_pylist() == [9] * len(now)
    assert rebuilt.column("gone").null_count == len(now)
    assert _rows(rebuilt) == canonical(now)


def test_the_arrow_rebuild_refuses_what_the_base_lacks() -> None:
    row = (1, b"\x7f\x00\x00\x01", 1, b"\x7f\x00\x00\x01", 80, 1, 5, 0, None)
    with pytest.raises(LogOpenError, match="position 9 takes out rows its base does not hold"):
        apply_changes(_table(5, [row], [None]), _table(9, [row, row], [GONE, GONE]), 9)


def _socket(row: tuple[Any, ...]) -> SnapshotConnection:
    return SnapshotConnection(*row)


def _stored(encoded: list[EncodedSnapshot]) -> tuple[pa.Table, dict[int, int]]:
    """The snapshot_connections rows a log would hold, and its snapshot_deltas."""
    rows = [row for e in encoded for row in e.tables["snapshot_connections"]]
    names = [name for name, _ in CONNECTIONS.columns]
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
    table = pa.table([list(c) for c in columns], schema=CONNECTIONS.schema())
    links = {e.position: e.base_position for e in encoded if e.base_position is not None}
    return table, links


@given(st.lists(snapshots, min_size=1, max_size=8), st.integers(1, 4), st.integers(0, 7))
@settings(max_examples=150)
def test_what_the_encoder_stores_rebuilds_every_snapshot_whole(
    walks: list[list[tuple[Any, ...]]], key_every: int, after_index: int
) -> None:
    encoder = SnapshotEncoder(key_every)
    positions = [10 * (i + 1) for i in range(len(walks))]
    encoded = list(
        encoder.encode(
            (p, Snapshot(connections=tuple(map(_socket, w))))
            for p, w in zip(positions, walks, strict=True)
        )
    )
    encoder.commit()
    table, links = _stored(encoded)
    after = positions[min(after_index, len(positions) - 1)] - 1
    whole = rebuild(table, links, after)
    expected = [
        (p, *row)
        for p, w in zip(positions, walks, strict=True)
        if p > after
        for row in canonical(w)
    ]
    assert [tuple(r.values())[:-1] for r in whole.to_pylist()] == expected
    # A chain never grows past key_every: each stored whole at least that often.
    chain = 0
    for e in encoded:
        chain = chain + 1 if e.base_position is not None else 0
        assert chain < key_every


def test_a_snapshot_is_stored_as_changes_only_when_they_are_fewer_rows() -> None:
    rows = [(4026531833, b"\x7f\x00\x00\x01", port, b"\x7f\x00\x00\x01", 80, 1, port, 0, 7)
            for port in range(1, 11)]  # fmt: skip
    encoder = SnapshotEncoder(key_every=20)
    first, second, third = encoder.encode([
        (1, Snapshot(connections=tuple(map(_socket, rows)))),
        (2, Snapshot(connections=tuple(map(_socket, rows[1:])))),  # one gone: one row
        (3, Snapshot(connections=tuple(map(_socket, rows[:1])))),  # nine gone: stored whole
    ])  # fmt: skip
    assert (first.base_position, second.base_position, third.base_position) == (None, 1, None)
    assert second.tables["snapshot_connections"] == [(2, *rows[0], GONE)]
    assert second.tables["snapshot_processes"] == []
    assert len(third.tables["snapshot_connections"]) == 1


def test_a_batch_that_did_not_commit_is_encoded_again_from_the_same_snapshot() -> None:
    process = SnapshotProcess(1, 0, "init", "/sbin/init", "/", 4026531833, 0)
    walk = Snapshot(processes=tuple(
        process._replace(pid=pid, comm=f"p{pid}") for pid in range(1, 6)
    ))  # fmt: skip
    encoder = SnapshotEncoder()
    list(encoder.encode([(1, walk)]))
    encoder.commit()
    changed = walk._replace(processes=walk.processes[:-1])
    (failed,) = encoder.encode([(7, changed)])
    encoder.abandon()
    (retried,) = encoder.encode([(9, changed)])
    encoder.commit()
    assert (failed.base_position, retried.base_position) == (1, 1)
    assert retried.tables["snapshot_processes"] == [(9, *walk.processes[-1], GONE)]
    (next_one,) = encoder.encode([(12, changed)])
    assert next_one.base_position == 9
    assert all(not rows for rows in next_one.tables.values())
    assert set(next_one.tables) == set(SNAPSHOT_TABLES)


def test_a_snapshot_stored_whole_that_takes_rows_out_is_refused() -> None:
    row = (1, b"\x7f\x00\x00\x01", 1, b"\x7f\x00\x00\x01", 80, 1, 5, 0, None)
    with pytest.raises(LogOpenError, match="stored whole, but takes rows out"):
        rebuild(_table(5, [row], [GONE]), {}, 0)


@given(st.lists(st.tuples(st.integers(1, 3), st.text(max_size=3), st.none() | st.just(5)),
                max_size=10),
       st.lists(st.tuples(st.integers(1, 3), st.text(max_size=3), st.none() | st.just(5)),
                max_size=10))  # fmt: skip
def test_text_is_in_the_same_order_as_the_writer_sorts_it(
    before: list[tuple[int, str, int | None]], now: list[tuple[int, str, int | None]]
) -> None:
    """The writer sorts text as str, a reader as the UTF-8 bytes the log gives back."""
    processes = TABLES["snapshot_processes"]

    def process(row: tuple[int, str, int | None]) -> tuple[Any, ...]:
        pid, comm, netns = row
        return (pid, 1, comm, "", "/", netns, 0)

    def table(position: int, rows: list[tuple[Any, ...]], gone: list[int | None]) -> pa.Table:
        encoded = [[position, *(v.encode() if isinstance(v, str) else v for v in row), g]
                   for row, g in zip(rows, gone, strict=True)]  # fmt: skip
        columns = list(zip(*encoded, strict=True)) if encoded else [()] * 9
        return pa.table([list(c) for c in columns], schema=processes.schema())

    base = canonical(map(process, before))
    gone, added = changes(base, canonical(map(process, now)))
    rebuilt = apply_changes(
        table(1, base, [None] * len(base)),
        table(2, [*gone, *added], [GONE] * len(gone) + [None] * len(added)),
        2,
    )
    decoded = [
        tuple(v.decode() if isinstance(v, bytes) else v for v in tuple(row.values())[1:-1])
        for row in rebuilt.to_pylist()
    ]
    assert decoded == canonical(map(process, now))
