"""The archive's encodings give back exactly what they stored: events whose values repeat
their socket's event before (stored as nulls with a flag), and snapshot rows stored by socket
and read back by position, for any rows (hypothesis) and any range read of a segment."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from eventlog.archive import (
    BATCH_SCHEMA,
    INHERITED,
    INHERITED_FLAGS,
    READ_ORDER,
    TABLES,
    Archive,
    restore_inherited,
    store_inherited,
)

SMALL = st.integers(min_value=0, max_value=3)
MAYBE = st.one_of(st.none(), SMALL)
ADDRESS = st.one_of(st.none(), st.sampled_from([b"\x7f\x00\x00\x01", b"\n\x00\x00\x02", b""]))


@st.composite
def event_rows(draw: st.DrawFn) -> pa.Table:
    """Events in position order; few sockets and few values, so that many repeat."""
    count = draw(st.integers(min_value=0, max_value=60))
    columns: dict[str, list[object]] = {name: [] for name, _ in TABLES["events"].columns}
    for position in range(1, count + 1):
        row = {
            "position": position, "recording_id": 1, "kind": draw(SMALL),
            "mono_ns": position * 1000, "pid": draw(MAYBE), "comm_id": draw(MAYBE),
            "netns_id": draw(MAYBE), "laddr": draw(ADDRESS), "lport": draw(MAYBE),
            "raddr": draw(ADDRESS), "rport": draw(MAYBE), "sock_id": draw(MAYBE),
            "bytes_sent": draw(MAYBE), "bytes_received": None, "extra": None,
        }  # fmt: skip
        for name, value in row.items():
            columns[name].append(value)
    return pa.table(columns, schema=TABLES["events"].schema())


@settings(max_examples=100, deadline=None)
@given(event_rows())
def test_inherited_values_come_back(events: pa.Table) -> None:
    stored = store_inherited(events)
    assert INHERITED_FLAGS in stored.column_names
    assert restore_inherited(stored).equals(events)


@settings(max_examples=50, deadline=None)
@given(event_rows(), st.integers(min_value=1, max_value=5))
def test_columns_in_chunks_or_slices_store_as_whole_ones(events: pa.Table, lead: int) -> None:
    """As a scan gives them (a chunk per range) or sliced out of a larger table (an offset
    into their buffers): the same values stored, the same flags."""
    whole = store_inherited(events)
    padding = events.slice(0, lead)
    sliced = pa.concat_tables([padding, events]).combine_chunks().slice(padding.num_rows)
    chunked = pa.concat_tables([events.slice(0, lead), events.slice(lead)])
    for given_as in (sliced, chunked):
        assert given_as.equals(events)
        assert store_inherited(given_as).equals(whole)
        assert restore_inherited(store_inherited(given_as)).equals(events)


def test_a_close_stores_only_what_differs_from_its_connect() -> None:
    rows = {name: [] for name, _ in TABLES["events"].columns}  # type: ignore[var-annotated]
    for position, pid in ((1, 10), (2, 11), (3, 10)):  # connect, another socket's, close
        for name, _ in TABLES["events"].columns:
            rows[name].append(None)
        rows["position"][-1], rows["recording_id"][-1] = position, 1
        rows["kind"][-1], rows["mono_ns"][-1] = 1, position
        rows["sock_id"][-1] = 7 if position != 2 else 8
        rows["pid"][-1], rows["lport"][-1], rows["rport"][-1] = pid, 40000, 443
        rows["laddr"][-1] = rows["raddr"][-1] = b"\x7f\x00\x00\x01"
    stored = store_inherited(pa.table(rows, schema=TABLES["events"].schema()))
    flags = stored.column(INHERITED_FLAGS).to_pylist()
    assert flags[:2] == [0, 0]
    unset = {"comm_id", "netns_id"}  # null in every row: nothing to repeat
    assert flags[2] == sum(1 << i for i, name in enumerate(INHERITED) if name not in unset)
    assert stored.column("pid").to_pylist() == [10, 11, None]


@settings(max_examples=15, deadline=None)
@given(event_rows(), st.data())
def test_a_segment_read_in_parts_is_the_rows_it_was_given(
    events: pa.Table, data: st.DataObject
) -> None:
    """Through Parquet files: any range of a segment gives the rows stored (snapshot rows in
    READ_ORDER, rows alike in it in the order they were given)."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = Archive(Path(tmp) / "archive")
        upto = max(1, events.num_rows)
        snapshots = {
            name: select.schema().empty_table()
            for name, select in TABLES.items()
            if name != "events"
        }
        socket_rows = data.draw(st.lists(st.tuples(st.integers(1, upto), SMALL, SMALL, SMALL),
                                         max_size=40))  # fmt: skip
        socket_rows.sort(key=lambda row: row[0])
        connections = TABLES["snapshot_connections"]
        snapshots["snapshot_connections"] = pa.table(
            {name: [_socket_value(name, row, i) for i, row in enumerate(socket_rows)]
             for name, _ in connections.columns},
            schema=connections.schema(),
        )  # fmt: skip
        batches = pa.table([[0], [upto], [1], [0], [0], [0], [0]], schema=BATCH_SCHEMA)
        archive.write_segment(0, upto, {"events": events, **snapshots}, batches, (0, 0))
        after = data.draw(st.integers(0, upto))
        end = data.draw(st.integers(after, upto))
        read = archive.read(TABLES["events"], after, end, upto)
        expected = events.filter(_within(events, after, end))
        assert read.equals(expected)
        sockets = archive.read(connections, after, end, upto)
        rows = snapshots["snapshot_connections"]
        in_order = rows.filter(_within(rows, after, end)).sort_by(
            [(c, "ascending") for c in READ_ORDER["snapshot_connections"]]
        )
        assert sockets.equals(in_order)


def _within(rows: pa.Table, after: int, upto: int) -> pa.Array:
    positions = rows.column("position").to_pylist()
    return pa.array([after < p <= upto for p in positions], type=pa.bool_())


def _socket_value(name: str, row: tuple[int, int, int, int], index: int) -> object:
    position, netns, lport, pid = row
    values: dict[str, object] = {
        "position": position, "netns": netns, "laddr": b"\x7f\x00\x00\x01", "lport": lport,
        "raddr": b"\n\x00\x00\x02", "rport": 443, "state": index % 3, "inode": index % 2,
        "uid": 0, "pid": pid, "gone": None,
    }  # fmt: skip
    return values[name]
