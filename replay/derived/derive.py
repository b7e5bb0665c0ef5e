"""Deriving a copied range: the fold's intervals, made whole.

For each range of positions (replay.derived.copy.copy_chunk copied it):

1. set aside the sockets that need no fold (below), and store them as intervals;
2. fold the range's other events from the state (replay.fold);
3. store what ended, joined with the events (and, for sockets only /proc knew, the snapshot
   rows in the log) to make whole interval rows.

At the end of a sync, what is open (the state) is stored as intervals without an end, and
the state itself is kept for the next sync.

The set-aside (step 1) is the one shortcut, and it changes no answer. Most sockets open and
close between two snapshots of their recording, and nothing else concerns them: if a socket
id occurs exactly twice among the range's events, first in an open and then in a close, no
snapshot of its recording falls between the two, and the id is not open in the state at the
start of the range, then folding the two events one at a time would set ``sockets[id]`` at
the open, leave it untouched (no other event of the range names the id; snapshots of other
recordings and closes without an id do not look at this recording's sockets), and end it at
the close with nothing else changed. So the pair is an interval (open, close), and both
events are left out of the fold. tests/integration/replay/test_derive.py derives generated logs
with and without it, and in ranges of every size, and compares every interval.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from eventlog.errors import LogOpenError
from eventlog.events import IPS_NAT_MASK, TCP_LISTEN, Kind, Snapshot
from eventlog.reader import LogReader
from replay.derived.copy import Chunk, learn_addresses
from replay.derived.tables import SHORT_NS, SOCKET_COLUMNS, exec_command_line
from replay.fold import (
    FOLDED_KINDS,
    Ended,
    Fold,
    FoldState,
    Segment,
    SnapshotContent,
    SocketEnd,
    Tuple,
    tuple_fields,
    tuple_key,
)

_SNAPSHOT = int(Kind.SNAPSHOT)
_CONNECT = int(Kind.CONNECT)
_EXEC = int(Kind.EXEC)
_FORK = int(Kind.FORK)
_OPENING = f"({int(Kind.CONNECT)}, {int(Kind.ACCEPT)})"


class ChunkSource:
    """The fold's look-ups for one range: its snapshots from the copy's columns, the rest
    from the store."""

    def __init__(self, con: duckdb.DuckDBPyConnection, chunk: Chunk) -> None:
        self.con = con
        where = f"position > {int(chunk.after)} AND position <= {int(chunk.upto)}"
        self.marks = {
            int(position): json.loads(extra) if extra else {}
            for position, extra in con.execute(
                f"SELECT position, extra FROM snap_marks WHERE {where}"
            ).fetchall()
        }
        self._sockets = _Grouped(chunk.snapshot_sockets)
        netns, laddr, lport, raddr, rport, opened = self._sockets.columns
        self._tuples = tuple_keys(netns, laddr, lport, raddr, rport)
        self._opened = opened.tolist()
        self._pids = _Grouped(_columns(con, f"SELECT position, pid FROM snap_proc WHERE {where}"))
        self._conntrack = _Grouped(_columns(con, f"""
            SELECT position, netns, ct_id FROM conntrack_raw
            WHERE {where} AND change = 'snapshot'"""))  # fmt: skip

    def snapshot(self, position: int) -> SnapshotContent:
        extra = self.marks.get(position, {})
        walked = extra.get("namespace_list")
        low, high = self._sockets.bounds(position)
        tuples, opened = self._tuples[low:high], self._opened[low:high]
        (pids,) = self._pids.rows(position)
        conntrack = None
        if extra.get("conntrack"):
            netns, ct_ids = self._conntrack.rows(position)
            conntrack = frozenset(zip(netns.tolist(), ct_ids.tolist(), strict=True))
        return SnapshotContent(
            namespaces=None if walked is None else frozenset(int(n) for n in walked),
            open_tuples=frozenset(compress(tuples, opened)),
            closing_tuples=frozenset(compress(tuples, [not o for o in opened])),
            pids=frozenset(pids.tolist()),
            conntrack=conntrack,
        )

    def tuples_of(self, positions: Collection[int]) -> dict[int, Tuple]:
        rows = _lookup(self.con, f"SELECT e.position AS k, {_TUPLE} FROM ev e",
                       positions)  # fmt: skip
        return {row[0]: tuple_key(*row[1:]) for row in rows}


# The fields of an event's (``e``) tuple, as tuple_key takes them.
_TUPLE = (
    "coalesce(e.netns, 0), coalesce(e.laddr, 0), coalesce(e.lport, 0), "
    "coalesce(e.raddr, 0), coalesce(e.rport, 0)"
)


_TUPLE_ROW = np.dtype([("netns", ">u4"), ("laddr", ">u4"), ("lport", ">u2"), ("raddr", ">u4"),
                       ("rport", ">u2")])  # fmt: skip


def tuple_keys(*fields: npt.NDArray[np.int64]) -> list[Tuple]:
    """``tuple_key`` of each row of the five columns ``fields``, packed by numpy: the same
    bytes as ``replay.fold.TUPLE``. A field out of its range (a log edited by hand) is an
    error, not a key shared with another socket."""
    rows = np.empty(len(fields[0]), dtype=_TUPLE_ROW)
    for name, column in zip(_TUPLE_ROW.names or (), fields, strict=True):
        limit = np.iinfo(_TUPLE_ROW[name]).max
        if len(column) and (column.min() < 0 or column.max() > limit):
            raise LogOpenError(f"the log holds a socket whose {name} is out of range")
        rows[name] = column
    keys: list[Tuple] = rows.view("V16").tolist()
    return keys


def _columns(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[npt.NDArray[np.int64], ...]:
    table = con.sql(f"SELECT * FROM ({sql}) ORDER BY 1").to_arrow_table()
    return tuple(column.to_numpy().astype(np.int64) for column in table.columns)


class _Grouped:
    """Columns ordered by their first (a position), and the rows of one position by slicing."""

    def __init__(self, columns: tuple[npt.NDArray[np.int64], ...]) -> None:
        self.positions, self.columns = columns[0], columns[1:]

    def bounds(self, position: int) -> tuple[int, int]:
        low = int(np.searchsorted(self.positions, position, side="left"))
        return low, int(np.searchsorted(self.positions, position, side="right"))

    def rows(self, position: int) -> list[npt.NDArray[np.int64]]:
        low, high = self.bounds(position)
        return [column[low:high] for column in self.columns]


def _lookup(
    con: duckdb.DuckDBPyConnection, select: str, keys: Collection[int]
) -> list[tuple[Any, ...]]:
    """The rows of ``select`` (whose first column is ``k``) whose ``k`` is one of ``keys``."""
    table = pa.table({"k": pa.array(sorted(set(keys)), type=pa.int64())})
    con.register("_keys", table)
    try:
        return con.execute(f"SELECT * FROM ({select}) s SEMI JOIN _keys w ON w.k = s.k").fetchall()
    finally:
        con.unregister("_keys")


# -- the fold's state, kept in the store ----------------------------------------------------
def load_state(con: duckdb.DuckDBPyConnection, position: int) -> FoldState:
    state = FoldState(position=position)
    for recording, (key, opened) in _by_recording(con, "state_sockets", "key, open_pos"):
        state.sockets[recording] = dict(zip(key, opened, strict=True))
    for recording, (key, opened, missed) in _by_recording(
        con, "state_missing", "key, open_pos, missed_pos"
    ):
        state.missing[recording] = dict(zip(key, zip(opened, missed, strict=True), strict=True))
    for recording, (*fields, seen) in _by_recording(
        con, "state_snapshot_sockets", "netns, laddr, lport, raddr, rport, snapshot_pos"
    ):
        tuples = tuple_keys(*(np.asarray(f, dtype=np.int64) for f in fields))
        state.snapshot_sockets.update(zip(((recording, t) for t in tuples), seen, strict=True))
    for recording, (pid, source) in _by_recording(con, "state_processes", "pid, source_pos"):
        state.processes[recording] = dict(zip(pid, source, strict=True))
    for recording, (netns, ct_id, source) in _by_recording(
        con, "state_conntrack", "netns, ct_id, source_pos"
    ):
        entries = ((recording, n, c) for n, c in zip(netns, ct_id, strict=True))
        state.conntrack.update(zip(entries, source, strict=True))
    return state


def _by_recording(
    con: duckdb.DuckDBPyConnection, table: str, columns: str
) -> Iterator[tuple[int, list[list[int]]]]:
    """The rows of a state table, a recording at a time, as lists of ``columns``' values
    (read as columns: the state is read at every sync, and is tens of thousands of rows)."""
    for (recording,) in con.execute(
        f"SELECT DISTINCT recording_id FROM {table} ORDER BY recording_id"
    ).fetchall():
        read = con.sql(f"SELECT {columns} FROM {table} WHERE recording_id = {int(recording)}")
        yield int(recording), [column.to_pylist() for column in read.to_arrow_table().columns]


# The tables that hold the fold's state (save_state, load_state).
STATE_TABLES = ("state_sockets", "state_missing", "state_snapshot_sockets", "state_processes",
                "state_conntrack")  # fmt: skip
# A snapshot socket's addresses are this store's ids (learn_addresses gives them in the order
# the store met them): the state given to another store (a seed, eventlog.seed) holds their
# bytes instead, and that store its own ids for them.
_SNAPSHOT_SOCKETS_OUT = """
SELECT s.recording_id, s.netns, a1.raw AS laddr, s.lport, a2.raw AS raddr, s.rport,
    s.snapshot_pos
FROM state_snapshot_sockets s LEFT JOIN addr a1 ON a1.id = s.laddr
LEFT JOIN addr a2 ON a2.id = s.raddr"""
_SNAPSHOT_SOCKETS_IN = """
INSERT INTO state_snapshot_sockets
SELECT r.recording_id, r.netns, coalesce(a1.id, 0), r.lport, coalesce(a2.id, 0), r.rport,
    r.snapshot_pos
FROM _restored r LEFT JOIN addr a1 ON a1.raw = r.laddr LEFT JOIN addr a2 ON a2.raw = r.raddr"""


def exported_state(con: duckdb.DuckDBPyConnection) -> dict[str, pa.Table]:
    """The state tables, for another store to take (restore_state): in the log's terms."""
    return {
        name: con.sql(
            _SNAPSHOT_SOCKETS_OUT if name == "state_snapshot_sockets" else f"SELECT * FROM {name}"
        ).to_arrow_table()
        for name in STATE_TABLES
    }


def restore_state(con: duckdb.DuckDBPyConnection, tables: Mapping[str, pa.Table]) -> None:
    """The state tables replaced by ``tables`` (exported_state of another store)."""
    for name in STATE_TABLES:
        con.register("_restored", tables[name])
        try:
            con.execute(f"DELETE FROM {name}")
            if name == "state_snapshot_sockets":
                learn_addresses(
                    con, "SELECT laddr FROM _restored UNION ALL SELECT raddr FROM _restored"
                )
                con.execute(_SNAPSHOT_SOCKETS_IN)
            else:
                con.execute(f"INSERT INTO {name} SELECT * FROM _restored")
        finally:
            con.unregister("_restored")


def save_state(con: duckdb.DuckDBPyConnection, state: FoldState) -> None:
    sockets, missing = state.sockets, state.missing
    _replace_columns(con, "state_sockets", {
        "recording_id": [r for r, s in sockets.items() for _ in s],
        "key": [k for s in sockets.values() for k in s],
        "open_pos": [p for s in sockets.values() for p in s.values()],
    })  # fmt: skip
    _replace_columns(con, "state_missing", {
        "recording_id": [r for r, m in missing.items() for _ in m],
        "key": [k for m in missing.values() for k in m],
        "open_pos": [p for m in missing.values() for p, _ in m.values()],
        "missed_pos": [q for m in missing.values() for _, q in m.values()],
    })  # fmt: skip
    shown = [(r, *tuple_fields(t), p) for (r, t), p in state.snapshot_sockets.items()]
    _replace_columns(con, "state_snapshot_sockets", {
        name: [row[i] for row in shown]
        for i, name in enumerate(["recording_id", "netns", "laddr", "lport", "raddr", "rport",
                                  "snapshot_pos"])
    })  # fmt: skip
    _replace_columns(con, "state_processes", _process_columns(state))
    _replace_columns(con, "state_conntrack", _conntrack_columns(state))


def _process_columns(state: FoldState) -> dict[str, list[int]]:
    """The open processes of ``state`` (recording, pid, where their segment began)."""
    processes = state.processes
    return {
        "recording_id": [r for r, ps in processes.items() for _ in ps],
        "pid": [pid for ps in processes.values() for pid in ps],
        "source_pos": [p for ps in processes.values() for p in ps.values()],
    }


def _conntrack_columns(state: FoldState) -> dict[str, list[int]]:
    """The open conntrack entries of ``state`` (recording, netns, id, where they began)."""
    return {
        "recording_id": [r for r, _, _ in state.conntrack],
        "netns": [n for _, n, _ in state.conntrack],
        "ct_id": [c for _, _, c in state.conntrack],
        "source_pos": list(state.conntrack.values()),
    }


def _replace_columns(
    con: duckdb.DuckDBPyConnection, table: str, columns: Mapping[str, Sequence[int | None]]
) -> None:
    con.execute(f"DELETE FROM {table}")
    _stage_columns(con, "_rows", columns)
    con.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM _rows")


def _stage(
    con: duckdb.DuckDBPyConnection, name: str, columns: list[str], rows: list[tuple[Any, ...]]
) -> None:
    """``rows`` (of integers or None) as the temporary table ``name``."""
    _stage_columns(con, name, {c: [row[i] for row in rows] for i, c in enumerate(columns)})


def _stage_columns(
    con: duckdb.DuckDBPyConnection, name: str, columns: Mapping[str, Sequence[int | None]]
) -> None:
    """``columns`` (of integers or None) as the temporary table ``name``."""
    arrow = pa.table(
        [pa.array(values, type=pa.int64()) for values in columns.values()], names=list(columns)
    )
    con.register("_staged", arrow)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM _staged")
    finally:
        con.unregister("_staged")


# -- step 1: sockets that need no fold -----------------------------------------------------
def set_aside(con: duckdb.DuckDBPyConnection, chunk: Chunk, state: FoldState) -> int:
    """Make ``_set_aside`` (recording, socket id) of the range's sockets that the module
    docstring describes, and store them; returns how many."""
    where = f"position > {int(chunk.after)} AND position <= {int(chunk.upto)}"
    # A socket's first and last event by position, and their kinds, as min and max of
    # position * slots + kind: one plain integer aggregate each, where arg_min and arg_max
    # took twice the time (the kinds looked at, 1 to 3, are below the slots).
    slots = 16
    _stage(con, "_open_keys", ["recording_id", "key"], [
        (r, k) for r, sockets in state.sockets.items() for k in sockets
    ])  # fmt: skip
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _set_aside AS
        WITH twice AS (  -- first and last are position and kind in one number (see above)
            SELECT recording_id, sock_id, min(position * {slots} + kind) AS first,
                max(position * {slots} + kind) AS last,
                min(wall_ns) FILTER (WHERE kind IN {_OPENING}) AS known_ns,
                max(wall_ns) FILTER (WHERE kind = {int(Kind.CLOSE)}) AS close_ns
            FROM ev
            WHERE {where} AND sock_id IS NOT NULL
              AND kind IN ({int(Kind.CONNECT)}, {int(Kind.ACCEPT)}, {int(Kind.CLOSE)})
            GROUP BY recording_id, sock_id HAVING count(*) = 2
        ),
        ends AS (
            SELECT recording_id, sock_id, first // {slots} AS open_pos, last // {slots} AS close_pos,
                known_ns, close_ns
            FROM twice
            WHERE first % {slots} IN {_OPENING} AND last % {slots} = {int(Kind.CLOSE)}
        ),
        snaps AS (SELECT recording_id, position FROM snap_marks WHERE {where})
        SELECT w.recording_id, w.sock_id, w.open_pos, w.close_pos, w.known_ns, w.close_ns
        FROM ends w
        ASOF LEFT JOIN snaps s ON s.recording_id = w.recording_id AND s.position > w.open_pos
        ANTI JOIN _open_keys k ON k.recording_id = w.recording_id AND k.key = w.sock_id
        WHERE s.position IS NULL OR s.position > w.close_pos
        """
    )
    pair = "open_pos, close_pos, known_ns, close_ns"
    short = f"close_ns - known_ns <= {SHORT_NS}"
    con.execute(
        f"INSERT INTO pairs_short SELECT {pair} FROM _set_aside WHERE {short} ORDER BY open_pos"
    )
    con.execute(
        f"INSERT INTO pairs_long SELECT {pair} FROM _set_aside WHERE NOT ({short}) ORDER BY open_pos"
    )
    return int(con.execute("SELECT count(*) FROM _set_aside").fetchall()[0][0])


def _store_sockets(con: duckdb.DuckDBPyConnection, rows: str) -> None:
    """Ended sockets (``rows``), by how long they lived, in the order they became known."""
    lifetime = "greatest(coalesce(close_ns, missing_ns), coalesce(missing_ns, close_ns)) - known_ns"
    con.execute(f"INSERT INTO socket_short SELECT * FROM {rows} WHERE {lifetime} <= {SHORT_NS}")
    con.execute(
        f"INSERT INTO socket_long SELECT * FROM {rows} WHERE NOT ({lifetime} <= {SHORT_NS})"
    )


# -- step 2: the fold ----------------------------------------------------------------------
def fold_rows(
    con: duckdb.DuckDBPyConnection, chunk: Chunk, skip_set_aside: bool
) -> list[tuple[Any, ...]]:
    """The range's rows the fold reads, in position order."""
    kinds = ", ".join(map(str, sorted(FOLDED_KINDS)))
    skip = (
        "ANTI JOIN _set_aside a ON a.recording_id = e.recording_id AND a.sock_id = e.sock_id"
        if skip_set_aside
        else ""
    )
    table = con.sql(
        f"""
        SELECT e.position, e.recording_id, e.kind, e.sock_id, {_TUPLE}, coalesce(e.pid, 0),
               coalesce(CAST(json_extract(e.extra, '$.ct_id') AS BIGINT), 0)
        FROM ev e {skip}
        WHERE e.position > {int(chunk.after)} AND e.position <= {int(chunk.upto)}
          AND e.kind IN ({kinds})
        ORDER BY e.position
        """
    ).to_arrow_table()
    columns = [column.to_numpy(zero_copy_only=False) for column in table.columns]
    netns = columns[4].astype(np.int64)
    tuples = tuple_keys(netns, *(c.astype(np.int64) for c in columns[5:9]))
    position, recording, kind, _, pid, ct_id = (columns[i].tolist() for i in (0, 1, 2, 3, 9, 10))
    sock_id = table.column(3).to_pylist()  # None where the event has no socket id
    return list(zip(position, recording, kind, sock_id, tuples, pid, netns.tolist(), ct_id,
                    strict=True))  # fmt: skip


@dataclass
class ChunkStats:
    set_aside: int = 0
    folded: int = 0


def derive_chunk(
    con: duckdb.DuckDBPyConnection, reader: LogReader, chunk: Chunk, fold: Fold,
    use_set_aside: bool = True,
) -> ChunkStats:  # fmt: skip
    """Steps 1 to 3 for the range ``chunk`` copied; ``fold`` holds the state before it."""
    stats = ChunkStats()
    if use_set_aside:
        stats.set_aside = set_aside(con, chunk, fold.state)
    fold.source = ChunkSource(con, chunk)
    rows = fold_rows(con, chunk, use_set_aside)
    fold.apply(rows)
    fold.state.position = chunk.upto
    stats.folded = len(rows)
    store_ended(con, reader, fold.ended)
    fold.ended = Ended()
    return stats


# -- step 3: whole intervals -----------------------------------------------------------------
def store_ended(con: duckdb.DuckDBPyConnection, reader: LogReader, ended: Ended) -> None:
    """What ended, as interval rows."""
    _socket_rows(con, reader, ended.sockets)
    _store_sockets(con, "_socket_rows")
    _segments(con, "_process_segments", ["recording_id", "pid"], ended.processes)
    con.execute(f"INSERT INTO process_iv {processes_sql(ended.processes)}")
    _segments(con, "_nat_segments", ["recording_id", "netns", "ct_id"], ended.conntrack)
    con.execute(f"INSERT INTO nat_iv {nat_sql(ended.conntrack)}")


def store_open(con: duckdb.DuckDBPyConnection, reader: LogReader, state: FoldState) -> None:
    """What is open at the head, as interval rows without an end. Most of it was open at
    the last sync too: the open rows are told apart by identity in SQL, and only the rows
    that changed are removed and made."""
    new_sockets = _replace_open(con, "socket_open", _SOCKET_IDENTITY, _END_IDENTITY,
                                _open_socket_columns(state))  # fmt: skip
    _socket_rows(con, reader, [
        SocketEnd(open_pos, snapshot_pos,
                  tuple_key(*fields) if snapshot_pos is not None else None, None, missing_pos)
        for open_pos, snapshot_pos, *fields, missing_pos in new_sockets
    ])  # fmt: skip
    con.execute("INSERT INTO socket_open SELECT * FROM _socket_rows ORDER BY known_ns")
    for table, staged, columns, sql in (
        ("process_open", "_process_segments", _process_columns(state), processes_sql),
        ("nat_open", "_nat_segments", _conntrack_columns(state), nat_sql),
    ):
        identity = ", ".join(columns)
        new = [Segment(tuple(key), source, None)
               for *key, source in _replace_open(con, table, identity, identity, columns)]  # fmt: skip
        key = [name for name in columns if name != "source_pos"]
        _segments(con, staged, key, new)
        con.execute(f"INSERT INTO {table} {sql(new)}")


def _replace_open(
    con: duckdb.DuckDBPyConnection,
    table: str,
    row_identity: str,
    staged_identity: str,
    columns: Mapping[str, Sequence[int | None]],
) -> list[tuple[int, ...]]:
    """Delete the rows of ``table`` that are not among ``columns`` (what is open now), and
    return the ones it lacks. Rows and what is open are matched by their identities, the
    expressions ``row_identity`` over a row and ``staged_identity`` over ``columns``."""
    _stage_columns(con, "_open_now", columns)
    con.execute(
        f"DELETE FROM {table} WHERE ({row_identity}) NOT IN "
        f"(SELECT ({staged_identity}) FROM _open_now)"
    )
    return con.execute(
        f"SELECT * FROM _open_now WHERE ({staged_identity}) NOT IN "
        f"(SELECT ({row_identity}) FROM {table})"
    ).fetchall()


def _open_socket_columns(state: FoldState) -> dict[str, list[int | None]]:
    """The sockets open in ``state`` as the columns of a SocketEnd (without its close)."""
    opened = [p for sockets in state.sockets.values() for p in sockets.values()]
    missed = [entry for entries in state.missing.values() for entry in entries.values()]
    shown = list(state.snapshot_sockets.items())
    events = len(opened) + len(missed)
    fields = [tuple_fields(t) for (_, t), _ in shown]
    columns: dict[str, list[int | None]] = {
        "open_pos": [*opened, *(p for p, _ in missed), *([None] * len(shown))],
        "snapshot_pos": [*([None] * events), *(p for _, p in shown)],
    }
    for i, name in enumerate(("netns", "laddr", "lport", "raddr", "rport")):
        columns[name] = [*([None] * events), *(f[i] for f in fields)]
    columns["missing_pos"] = [*([None] * len(opened)), *(m for _, m in missed),
                              *([None] * len(shown))]  # fmt: skip
    return columns


# What tells one open socket row from another: where it became known, where a snapshot
# missed it, and (for a socket /proc showed) its tuple. ``_SOCKET_IDENTITY`` says it of a
# row of the socket tables, ``_END_IDENTITY`` of the columns of ``_open_socket_columns``.
_SOCKET_IDENTITY = ", ".join(
    [
        "origin_pos",
        "coalesce(missing_pos, -1)",
        *(
            f"CASE WHEN source = 'snapshot' THEN coalesce({column}, 0)::BIGINT ELSE 0 END"
            for column in ("netns", "laddr", "lport", "raddr", "rport")
        ),
    ]
)
_END_IDENTITY = ", ".join(
    [
        "coalesce(open_pos, snapshot_pos)",
        "coalesce(missing_pos, -1)",
        *(
            f"CASE WHEN open_pos IS NULL THEN coalesce({column}, 0)::BIGINT ELSE 0 END"
            for column in ("netns", "laddr", "lport", "raddr", "rport")
        ),
    ]
)


def _drop_rows(
    con: duckdb.DuckDBPyConnection, table: str, identity: str, keys: set[tuple[int, ...]]
) -> None:
    """Delete the rows of ``table`` whose ``identity`` (columns) is one of ``keys``."""
    if not keys:
        return
    names = [f"k{i}" for i in range(len(next(iter(keys))))]
    _stage(con, "_gone", names, sorted(keys))
    con.execute(
        f"DELETE FROM {table} WHERE ({identity}) IN (SELECT ({', '.join(names)}) FROM _gone)"
    )


def _segments(
    con: duckdb.DuckDBPyConnection, name: str, key: list[str], segments: list[Segment]
) -> None:
    rows = [(*segment.key, segment.source_pos, segment.end_pos) for segment in segments]
    _stage(con, name, [*key, "source_pos", "end_pos"], rows)


def _socket_rows(con: duckdb.DuckDBPyConnection, reader: LogReader, ends: list[SocketEnd]) -> None:
    """``_socket_rows``: the sockets ``ends`` describes, whole."""
    _stage(con, "_socket_ends",
           ["open_pos", "snapshot_pos", "netns", "laddr", "lport", "raddr", "rport", "close_pos",
            "missing_pos"],
           [(e.open_pos, e.snapshot_pos,
             *(tuple_fields(e.tuple) if e.tuple is not None else (None,) * 5),
             e.close_pos, e.missing_pos)
            for e in ends])  # fmt: skip
    _stage_snapshot_sockets(con, reader, [e for e in ends if e.snapshot_pos is not None])
    _socket_table(con, "_socket_rows", sockets_sql(ends))


def _socket_table(con: duckdb.DuckDBPyConnection, name: str, sql: str) -> None:
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} ({SOCKET_COLUMNS})")
    con.execute(f"INSERT INTO {name} {sql}")


# -- sockets only /proc knew -----------------------------------------------------------------
def _stage_snapshot_sockets(
    con: duckdb.DuckDBPyConnection, reader: LogReader, ends: list[SocketEnd]
) -> None:
    """``_snapshot_sockets``: what the snapshot that showed each of ``ends`` says of it, read
    back from the log as replay has always read a snapshot's rows."""
    wanted: dict[int, set[Tuple]] = {}
    for end in ends:
        assert end.snapshot_pos is not None and end.tuple is not None
        wanted.setdefault(end.snapshot_pos, set()).add(end.tuple)
    ids = dict(
        (bytes(raw), id_) for id_, raw in con.execute("SELECT id, raw FROM addr").fetchall()
    ) if wanted else {}  # fmt: skip
    rows = []
    for position in sorted(wanted):
        snapshot = reader.snapshot(position)
        comms = {p.pid: p.comm for p in snapshot.processes}
        seen: set[Tuple] = set()
        for ordinal, row in enumerate(snapshot.connections, start=1):
            fields = (row.netns, ids.get(bytes(row.laddr), 0), row.lport,
                      ids.get(bytes(row.raddr), 0), row.rport)  # fmt: skip
            key = tuple_key(*fields)
            if key not in wanted[position] or key in seen:
                continue
            seen.add(key)  # the first row with these addresses
            rows.append((position, *fields, ordinal, _is_server(snapshot, row), row.pid,
                         comms.get(row.pid) if row.pid is not None else None))  # fmt: skip
    arrow = pa.table(
        list(zip(*rows, strict=True)) if rows else [() for _ in range(10)],
        schema=pa.schema([("snapshot_pos", pa.int64()), ("netns", pa.int64()),
                          ("laddr", pa.int64()), ("lport", pa.int64()), ("raddr", pa.int64()),
                          ("rport", pa.int64()), ("ordinal", pa.int64()),
                          ("is_server", pa.bool_()), ("pid", pa.int64()),
                          ("comm", pa.string())]),
    )  # fmt: skip
    con.register("_staged", arrow)
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE _snapshot_sockets AS SELECT * FROM _staged")
    finally:
        con.unregister("_staged")


def _is_server(snapshot: Snapshot, row: Any) -> bool:
    """A socket /proc showed is the server's if its port listens in its namespace (on its
    address or on all), else by Scope's rule: the lower local port is the server's."""
    for other in snapshot.connections:
        listening = (
            other.state == TCP_LISTEN and other.netns == row.netns and other.lport == row.lport
        )
        if listening and (other.laddr == row.laddr or not any(other.laddr)):
            return True
    return bool(row.lport < row.rport)


# -- the interval rows, in SQL ----------------------------------------------------------------
# Sockets from ``_socket_ends``: opened by an event, seen in a snapshot, or only closed.
_SOCKETS_SQL = f"""
SELECT o.position, 0, o.recording_id, o.kind <> {_CONNECT}, o.pid, o.comm, o.netns,
    o.laddr, coalesce(o.lport, 0), o.raddr, coalesce(o.rport, 0),
    o.wall_ns, o.wall_ns, c.wall_ns, c.position, c.pid, c.comm, c.bytes_sent, c.bytes_received,
    m.wall_ns, m.position,
    CASE WHEN json_extract_string(o.extra, '$.source') = 'proc' THEN 'proc' ELSE 'events' END,
    false, o.sock_id
FROM _socket_ends x JOIN {{opens}} o ON o.position = x.open_pos
LEFT JOIN {{closes}} c ON c.position = x.close_pos
LEFT JOIN {{misses}} m ON m.position = x.missing_pos
UNION ALL
SELECT x.snapshot_pos, s.ordinal, e.recording_id, s.is_server, s.pid, s.comm, x.netns,
    nullif(x.laddr, 0), x.lport, nullif(x.raddr, 0), x.rport,
    e.wall_ns, NULL, c.wall_ns, c.position, c.pid, c.comm, c.bytes_sent, c.bytes_received,
    m.wall_ns, m.position, 'snapshot', false, NULL
FROM _socket_ends x JOIN snap_marks e ON e.position = x.snapshot_pos
JOIN _snapshot_sockets s ON s.snapshot_pos = x.snapshot_pos AND s.netns = x.netns
 AND s.laddr = x.laddr AND s.lport = x.lport AND s.raddr = x.raddr AND s.rport = x.rport
LEFT JOIN {{closes}} c ON c.position = x.close_pos
LEFT JOIN {{misses}} m ON m.position = x.missing_pos
UNION ALL
SELECT c.position, 0, c.recording_id, coalesce(c.lport, 0) < coalesce(c.rport, 0), c.pid,
    c.comm, c.netns, c.laddr, coalesce(c.lport, 0), c.raddr, coalesce(c.rport, 0),
    c.wall_ns, NULL, c.wall_ns, c.position, c.pid, c.comm, c.bytes_sent, c.bytes_received,
    NULL, NULL, 'events', true, NULL
FROM _socket_ends x JOIN {{closes}} c ON c.position = x.close_pos
WHERE x.open_pos IS NULL AND x.snapshot_pos IS NULL
"""

# Processes from ``_process_segments``: as their EXEC, FORK or snapshot row described them
# (a forked child has its parent's name and no command line of its own until it execs).
_PROCESSES_SQL = f"""
SELECT x.recording_id, x.pid, x.source_pos, e.wall_ns, z.wall_ns,
    CASE WHEN e.kind IN ({_EXEC}, {_FORK}) THEN coalesce(e.comm, '?') ELSE p.comm END,
    CASE WHEN e.kind IN ({_EXEC}, {_FORK}) THEN CAST(json_extract(e.extra, '$.ppid') AS INTEGER)
         ELSE p.ppid END,
    CASE WHEN e.kind = {_EXEC} THEN coalesce({exec_command_line("e")}, '')
         WHEN e.kind = {_FORK} THEN ''
         ELSE p.cmdline END,
    CASE WHEN e.kind IN ({_EXEC}, {_FORK}) THEN '' ELSE p.cgroup END,
    CASE WHEN e.kind IN ({_EXEC}, {_FORK}) THEN e.netns ELSE p.netns END,
    CASE WHEN e.kind IN ({_EXEC}, {_FORK})
         THEN CAST(json_extract(e.extra, '$.cgroup_id') AS BIGINT) END,
    CASE WHEN e.kind IN ({_EXEC}, {_FORK})
         THEN CAST(json_extract(e.extra, '$.cgroup_v1_id') AS BIGINT) END
FROM _process_segments x JOIN {{sources}} e ON e.position = x.source_pos
LEFT JOIN {{ends}} z ON z.position = x.end_pos
LEFT JOIN {{source_processes}} p ON p.position = x.source_pos AND p.pid = x.pid
WHERE e.kind IN ({_EXEC}, {_FORK}) OR p.pid IS NOT NULL
"""

# NAT entries from ``_nat_segments`` (entries conntrack did not translate are left out).
_NAT_SQL = f"""
SELECT x.recording_id, x.netns, x.ct_id, x.source_pos, t.wall_ns, z.wall_ns,
    t.orig_src, t.orig_sport, t.orig_dst, t.orig_dport, t.reply_src, t.reply_sport, t.reply_dst,
    t.reply_dport, t.status
FROM _nat_segments x
JOIN {{source_sightings}} t ON t.position = x.source_pos
 AND (t.change <> 'snapshot' OR (t.netns = x.netns AND t.ct_id = x.ct_id))
LEFT JOIN {{ends}} z ON z.position = x.end_pos
WHERE t.status & {IPS_NAT_MASK} <> 0
"""


# The rows of the events (and snapshot processes, conntrack sightings) an interval is made
# of are joined by position. DuckDB skips a table's row groups for a join only when it can
# bound the keys, and a column of NULLs (the ends of what is still open) it cannot: so each
# join reads its table through the literal range of the positions wanted.
def sockets_sql(ends: Collection[SocketEnd]) -> str:
    return _SOCKETS_SQL.format(
        opens=_within("ev", (e.open_pos for e in ends)),
        closes=_within("ev", (e.close_pos for e in ends)),
        misses=_within("ev", (e.missing_pos for e in ends)),
    )


def processes_sql(segments: Collection[Segment]) -> str:
    return _PROCESSES_SQL.format(
        sources=_within("ev", (s.source_pos for s in segments)),
        ends=_within("ev", (s.end_pos for s in segments)),
        source_processes=_within("snap_proc", (s.source_pos for s in segments)),
    )


def nat_sql(segments: Collection[Segment]) -> str:
    return _NAT_SQL.format(
        source_sightings=_within("conntrack_raw", (s.source_pos for s in segments)),
        ends=_within("ev", (s.end_pos for s in segments)),
    )


def _within(table: str, positions: Iterable[int | None]) -> str:
    """``table``'s rows between the least and the greatest of ``positions``."""
    present = [p for p in positions if p is not None]
    low, high = (min(present), max(present)) if present else (0, -1)
    return f"(SELECT * FROM {table} WHERE position BETWEEN {int(low)} AND {int(high)})"
