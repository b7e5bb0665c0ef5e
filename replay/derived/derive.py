"""Deriving: the log's new events copied, folded into intervals, and the intervals made whole.

One sync takes the derived store from the position it had folded to the log's head:

1. copy the small tables and the new events and snapshot rows (replay.derived.copy);
2. set aside the sockets that need no fold (below);
3. fold the rest from the stored state (replay.fold) and store what ended, the new state,
   and what is open at the head;
4. join those positions with the events to make interval rows (sockets, processes, NAT).

The set-aside (step 2) is the one shortcut, and it changes no answer. Most sockets open and
close between two snapshots of their recording, and nothing else in that stretch concerns
them: if a socket id occurs exactly twice among the new events, first in an open and then in
a close, no snapshot of its recording falls between the two, and the id was not open at the
previous head, then folding the two events one at a time would set ``sockets[id]`` at the
open, leave it untouched (no other event names the id; snapshots of other recordings and
closes without an id do not look at this recording's sockets), and end it at the close with
nothing else changed. So the pair is an interval (open, close) and both events are left out
of the fold. tests/unit/replay/test_derive.py derives generated logs with and without it and
compares every interval.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from eventlog.events import OPEN_STATES, TCP_LISTEN, IPS_NAT_MASK, Kind
from replay.fold import (
    FOLDED_KINDS,
    Ended,
    Fold,
    FoldRow,
    FoldState,
    Segment,
    SnapshotContent,
    SocketEnd,
)

_SNAPSHOT = int(Kind.SNAPSHOT)
_CONNECT = int(Kind.CONNECT)
_EXEC = int(Kind.EXEC)
_OPEN_STATES = ", ".join(map(str, sorted(OPEN_STATES)))
FOLD_PAGE = 200_000


@dataclass
class DeriveStats:
    events: int = 0  # events copied
    set_aside: int = 0  # sockets that needed no fold
    folded: int = 0  # events the fold read


class StoreSource:
    """The fold's look-ups, answered from the derived store's copies."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def snapshot(self, recording: int, position: int) -> SnapshotContent:
        con = self.con
        rows = con.execute("SELECT extra FROM ev WHERE position = ?", [position]).fetchall()
        extra = json.loads(rows[0][0]) if rows and rows[0][0] else {}
        walked = extra.get("namespace_list")
        sockets = con.execute(
            "SELECT tuple_id, state IN (" + _OPEN_STATES + ") FROM snap_conn "
            f"WHERE position = ? AND state <> {TCP_LISTEN}",
            [position],
        ).fetchall()
        pids = con.execute("SELECT pid FROM snap_proc WHERE position = ?", [position]).fetchall()
        conntrack = None
        if extra.get("conntrack"):
            dumped = con.execute(
                "SELECT netns, ct_id FROM conntrack_raw WHERE position = ? AND change = 'snapshot'",
                [position],
            ).fetchall()
            conntrack = frozenset((int(n), int(c)) for n, c in dumped)
        return SnapshotContent(
            namespaces=None if walked is None else frozenset(int(n) for n in walked),
            open_tuples=frozenset(t for t, is_open in sockets if is_open),
            closing_tuples=frozenset(t for t, is_open in sockets if not is_open),
            pids=frozenset(pid for (pid,) in pids),
            conntrack=conntrack,
        )

    def tuples_of(self, positions: Collection[int]) -> dict[int, int]:
        return dict(self._lookup("SELECT position, coalesce(tuple_id, 0) FROM ev", "position", positions))

    def netns_of(self, tuple_ids: Collection[int]) -> dict[int, int]:
        return dict(self._lookup("SELECT id, netns FROM tuples", "id", tuple_ids))

    def _lookup(self, select: str, column: str, keys: Collection[int]) -> list[tuple[int, int]]:
        table = pa.table({"k": pa.array(sorted(set(keys)), type=pa.int64())})
        self.con.register("_keys", table)
        try:
            return self.con.execute(
                f"SELECT * FROM ({select}) s WHERE {column} IN (SELECT k FROM _keys)"
            ).fetchall()
        finally:
            self.con.unregister("_keys")


# -- the fold's state, kept in the store ----------------------------------------------------
def load_state(con: duckdb.DuckDBPyConnection, position: int) -> FoldState:
    state = FoldState(position=position)
    for recording, key, opened in con.execute("SELECT * FROM state_sockets").fetchall():
        state.sockets_of(recording)[key] = opened
    for recording, key, opened, missed in con.execute("SELECT * FROM state_missing").fetchall():
        state.missing_of(recording)[key] = (opened, missed)
    for recording, tuple_id, seen in con.execute("SELECT * FROM state_snapshot_sockets").fetchall():
        state.snapshot_sockets[(recording, tuple_id)] = seen
    for recording, pid, source in con.execute("SELECT * FROM state_processes").fetchall():
        state.processes[(recording, pid)] = source
    for recording, netns, ct_id, source in con.execute("SELECT * FROM state_conntrack").fetchall():
        state.conntrack[(recording, netns, ct_id)] = source
    return state


def save_state(con: duckdb.DuckDBPyConnection, state: FoldState) -> None:
    _replace(con, "state_sockets", ["recording_id", "key", "open_pos"], [
        (r, k, p) for r, sockets in state.sockets.items() for k, p in sockets.items()
    ])  # fmt: skip
    _replace(con, "state_missing", ["recording_id", "key", "open_pos", "missed_pos"], [
        (r, k, p, m) for r, entries in state.missing.items() for k, (p, m) in entries.items()
    ])  # fmt: skip
    _replace(con, "state_snapshot_sockets", ["recording_id", "tuple_id", "snapshot_pos"], [
        (r, t, p) for (r, t), p in state.snapshot_sockets.items()
    ])  # fmt: skip
    _replace(con, "state_processes", ["recording_id", "pid", "source_pos"], [
        (r, pid, p) for (r, pid), p in state.processes.items()
    ])  # fmt: skip
    _replace(con, "state_conntrack", ["recording_id", "netns", "ct_id", "source_pos"], [
        (r, n, c, p) for (r, n, c), p in state.conntrack.items()
    ])  # fmt: skip


def _replace(
    con: duckdb.DuckDBPyConnection, table: str, columns: list[str], rows: list[tuple[int, ...]]
) -> None:
    con.execute(f"DELETE FROM {table}")
    _append(con, table, columns, rows)


def _append(
    con: duckdb.DuckDBPyConnection, table: str, columns: list[str], rows: list[tuple[Any, ...]]
) -> None:
    if not rows:
        return
    arrow = pa.table(
        [pa.array(values, type=pa.int64()) for values in zip(*rows, strict=True)], names=columns
    )
    con.register("_rows", arrow)
    try:
        con.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM _rows")
    finally:
        con.unregister("_rows")


# -- step 2: sockets that need no fold -----------------------------------------------------
def set_aside(con: duckdb.DuckDBPyConnection, after: int) -> int:
    """Make ``_set_aside(open_pos, close_pos)``: the new sockets the module docstring
    describes. Returns how many."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _set_aside AS
        WITH snaps AS (
            SELECT recording_id, position, row_number() OVER (
                PARTITION BY recording_id ORDER BY position) AS run
            FROM ev WHERE position > {int(after)} AND kind = {_SNAPSHOT}
        ),
        once AS (
            SELECT recording_id, sock_id, min(position) AS open_pos, max(position) AS close_pos,
                   arg_min(kind, position) AS first_kind, arg_max(kind, position) AS last_kind
            FROM ev
            WHERE position > {int(after)} AND sock_id IS NOT NULL
              AND kind IN ({int(Kind.CONNECT)}, {int(Kind.ACCEPT)}, {int(Kind.CLOSE)})
            GROUP BY recording_id, sock_id HAVING count(*) = 2
        ),
        pairs AS (
            SELECT * FROM once o
            WHERE first_kind IN ({int(Kind.CONNECT)}, {int(Kind.ACCEPT)})
              AND last_kind = {int(Kind.CLOSE)}
              AND NOT EXISTS (SELECT 1 FROM state_sockets s
                              WHERE s.recording_id = o.recording_id AND s.key = o.sock_id)
        ),
        runs AS (  -- how many of its recording's snapshots came before the open
            SELECT p.recording_id, p.open_pos, p.close_pos, coalesce(a.run, 0) AS open_run
            FROM pairs p ASOF LEFT JOIN snaps a
              ON a.recording_id = p.recording_id AND p.open_pos > a.position
        )
        SELECT r.open_pos, r.close_pos
        FROM runs r ASOF LEFT JOIN snaps b
          ON b.recording_id = r.recording_id AND r.close_pos > b.position
        WHERE coalesce(b.run, 0) = r.open_run
        """
    )
    return int(con.execute("SELECT count(*) FROM _set_aside").fetchall()[0][0])


# -- step 3: the fold ----------------------------------------------------------------------
def fold_rows(
    con: duckdb.DuckDBPyConnection, after: int, upto: int, skip_set_aside: bool
) -> Iterator[list[FoldRow]]:
    """The rows the fold reads, in position order, a page at a time."""
    kinds = ", ".join(map(str, sorted(FOLDED_KINDS)))
    skip = (
        "AND e.position NOT IN (SELECT open_pos FROM _set_aside UNION ALL "
        "SELECT close_pos FROM _set_aside)"
        if skip_set_aside
        else ""
    )
    # Fetched whole before folding: the fold's look-ups run on the same connection (the
    # sync's transaction), which cannot interleave them with a pending result.
    table = con.sql(
        f"""
        SELECT e.position, e.recording_id, e.kind, e.sock_id, coalesce(e.tuple_id, 0),
               coalesce(e.pid, 0), coalesce(c.netns, 0), coalesce(c.ct_id, 0)
        FROM ev e LEFT JOIN conntrack_raw c ON c.position = e.position AND c.change <> 'snapshot'
        WHERE e.position > {int(after)} AND e.position <= {int(upto)} AND e.kind IN ({kinds}) {skip}
        ORDER BY e.position
        """
    ).to_arrow_table()
    for batch in table.to_batches(FOLD_PAGE):
        columns = [column.to_pylist() for column in batch.columns]
        yield list(map(FoldRow._make, zip(*columns, strict=True)))


def fold(
    con: duckdb.DuckDBPyConnection, after: int, upto: int, skip_set_aside: bool = True
) -> tuple[FoldState, Ended, int]:
    """Fold the new events from the stored state; returns the new state, what ended, and how
    many events were read."""
    state = load_state(con, after)
    folder = Fold(state, StoreSource(con))
    read = 0
    for page in fold_rows(con, after, upto, skip_set_aside):
        folder.apply(page)
        read += len(page)
    state.position = upto
    return state, folder.ended, read


# -- step 4: whole intervals -----------------------------------------------------------------
def store_intervals(
    con: duckdb.DuckDBPyConnection, ended: Ended, open_: Ended, with_set_aside: bool
) -> None:
    """Append what ended to the interval tables (with the set-aside sockets), and replace
    what is open."""
    _stage_sockets(con, ended.sockets, with_set_aside)
    con.execute(f"INSERT INTO socket_iv {SOCKETS_SQL}")
    _stage_sockets(con, open_.sockets, False)
    con.execute("DELETE FROM socket_iv_open")
    con.execute(f"INSERT INTO socket_iv_open {SOCKETS_SQL}")
    _stage_segments(con, "_process_segments", ["recording_id", "pid"], ended.processes)
    con.execute(f"INSERT INTO process_iv {PROCESSES_SQL}")
    _stage_segments(con, "_process_segments", ["recording_id", "pid"], open_.processes)
    con.execute("DELETE FROM process_iv_open")
    con.execute(f"INSERT INTO process_iv_open {PROCESSES_SQL}")
    _stage_segments(con, "_nat_segments", ["recording_id", "netns", "ct_id"], ended.conntrack)
    con.execute(f"INSERT INTO nat_iv {NAT_SQL}")
    _stage_segments(con, "_nat_segments", ["recording_id", "netns", "ct_id"], open_.conntrack)
    con.execute("DELETE FROM nat_iv_open")
    con.execute(f"INSERT INTO nat_iv_open {NAT_SQL}")


def _stage_sockets(
    con: duckdb.DuckDBPyConnection, ends: list[SocketEnd], with_set_aside: bool
) -> None:
    columns = ["open_pos", "snapshot_pos", "tuple_id", "close_pos", "missing_pos"]
    arrow = pa.table(
        [pa.array([end[i] for end in ends], type=pa.int64()) for i in range(len(columns))],
        names=columns,
    )
    con.register("_ends", arrow)
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE _socket_ends AS SELECT * FROM _ends")
    finally:
        con.unregister("_ends")
    if with_set_aside:
        con.execute(
            "INSERT INTO _socket_ends SELECT open_pos, NULL, NULL, close_pos, NULL FROM _set_aside"
        )


def _stage_segments(
    con: duckdb.DuckDBPyConnection, name: str, key: list[str], segments: list[Segment]
) -> None:
    columns = [*key, "source_pos", "end_pos"]
    rows = [(*segment.key, segment.source_pos, segment.end_pos) for segment in segments]
    arrow = pa.table(
        [pa.array([row[i] for row in rows], type=pa.int64()) for i in range(len(columns))],
        names=columns,
    )
    con.register("_segments", arrow)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM _segments")
    finally:
        con.unregister("_segments")


# Sockets from ``_socket_ends``: opened by an event, seen in a snapshot, or only closed.
SOCKETS_SQL = f"""
SELECT o.position, 0, o.recording_id, coalesce(r.host, '?'),
    CASE WHEN o.kind = {_CONNECT} THEN 'client' ELSE 'server' END,
    o.pid, o.comm, o.netns, coalesce(o.laddr, '?'), coalesce(o.lport, 0),
    coalesce(o.raddr, '?'), coalesce(o.rport, 0),
    coalesce(la.loopback, false) OR coalesce(ra.loopback, false),
    o.wall_ns, o.wall_ns, o.position,
    c.wall_ns, c.position, c.pid, c.comm, c.bytes_sent, c.bytes_received, m.wall_ns, m.position,
    CASE WHEN json_extract_string(o.extra, '$.source') = 'proc' THEN 'proc' ELSE 'events' END,
    false
FROM _socket_ends x JOIN ev o ON o.position = x.open_pos
LEFT JOIN ev c ON c.position = x.close_pos
LEFT JOIN ev m ON m.position = x.missing_pos
LEFT JOIN recordings_raw r ON r.id = o.recording_id
LEFT JOIN tuples t ON t.id = o.tuple_id
LEFT JOIN addr la ON la.id = t.laddr
LEFT JOIN addr ra ON ra.id = t.raddr
UNION ALL
SELECT x.snapshot_pos, s.ordinal, e.recording_id, coalesce(r.host, '?'),
    CASE WHEN EXISTS (
            SELECT 1 FROM snap_conn l JOIN tuples lt ON lt.id = l.tuple_id
            JOIN addr lad ON lad.id = lt.laddr
            WHERE l.position = s.position AND l.state = {TCP_LISTEN} AND l.netns = s.netns
              AND l.lport = s.lport AND (lt.laddr = t.laddr OR lad.unspecified))
         OR s.lport < s.rport THEN 'server' ELSE 'client' END,
    s.pid, (SELECT min(p.comm) FROM snap_proc p WHERE p.position = s.position AND p.pid = s.pid),
    s.netns, s.laddr, s.lport, s.raddr, s.rport,
    coalesce(la.loopback, false) OR coalesce(ra.loopback, false),
    e.wall_ns, NULL, e.position,
    c.wall_ns, c.position, c.pid, c.comm, c.bytes_sent, c.bytes_received, m.wall_ns, m.position,
    'snapshot', false
FROM _socket_ends x JOIN ev e ON e.position = x.snapshot_pos
JOIN (SELECT position, tuple_id, min(ordinal) AS ordinal FROM snap_conn
      WHERE position IN (SELECT snapshot_pos FROM _socket_ends) GROUP BY position, tuple_id) f
  ON f.position = x.snapshot_pos AND f.tuple_id = x.tuple_id
JOIN snap_conn s ON s.position = f.position AND s.ordinal = f.ordinal
LEFT JOIN ev c ON c.position = x.close_pos
LEFT JOIN ev m ON m.position = x.missing_pos
LEFT JOIN recordings_raw r ON r.id = e.recording_id
LEFT JOIN tuples t ON t.id = s.tuple_id
LEFT JOIN addr la ON la.id = t.laddr
LEFT JOIN addr ra ON ra.id = t.raddr
UNION ALL
SELECT c.position, 0, c.recording_id, coalesce(r.host, '?'),
    CASE WHEN coalesce(c.lport, 0) < coalesce(c.rport, 0) THEN 'server' ELSE 'client' END,
    c.pid, c.comm, c.netns, coalesce(c.laddr, '?'), coalesce(c.lport, 0),
    coalesce(c.raddr, '?'), coalesce(c.rport, 0),
    coalesce(la.loopback, false) OR coalesce(ra.loopback, false),
    c.wall_ns, NULL, c.position,
    c.wall_ns, c.position, c.pid, c.comm, c.bytes_sent, c.bytes_received, NULL, NULL,
    'events', true
FROM _socket_ends x JOIN ev c ON c.position = x.close_pos
LEFT JOIN recordings_raw r ON r.id = c.recording_id
LEFT JOIN tuples t ON t.id = c.tuple_id
LEFT JOIN addr la ON la.id = t.laddr
LEFT JOIN addr ra ON ra.id = t.raddr
WHERE x.open_pos IS NULL AND x.snapshot_pos IS NULL
"""

# Processes from ``_process_segments``: as their EXEC or snapshot row described them.
PROCESSES_SQL = f"""
SELECT x.recording_id, coalesce(r.host, '?'), x.pid, x.source_pos, e.wall_ns, z.wall_ns,
    CASE WHEN e.kind = {_EXEC} THEN coalesce(e.comm, '?') ELSE p.comm END,
    CASE WHEN e.kind = {_EXEC} THEN CAST(json_extract(e.extra, '$.ppid') AS INTEGER) ELSE p.ppid END,
    CASE WHEN e.kind = {_EXEC} THEN coalesce(json_extract_string(e.extra, '$.filename'), '')
         ELSE p.cmdline END,
    CASE WHEN e.kind = {_EXEC} THEN '' ELSE p.cgroup END,
    CASE WHEN e.kind = {_EXEC} THEN e.netns ELSE p.netns END
FROM _process_segments x JOIN ev e ON e.position = x.source_pos
LEFT JOIN ev z ON z.position = x.end_pos
LEFT JOIN snap_proc p ON p.position = x.source_pos AND p.pid = x.pid
LEFT JOIN recordings_raw r ON r.id = x.recording_id
WHERE e.kind = {_EXEC} OR p.pid IS NOT NULL
"""

# NAT entries from ``_nat_segments`` (entries conntrack did not translate are left out).
NAT_SQL = f"""
SELECT x.recording_id, x.netns, x.ct_id, x.source_pos, t.wall_ns, z.wall_ns,
    t.orig_src, t.orig_sport, t.orig_dst, t.orig_dport, t.reply_src, t.reply_sport, t.reply_dst,
    t.reply_dport, t.status
FROM _nat_segments x
JOIN conntrack_raw t ON t.position = x.source_pos
 AND (t.change <> 'snapshot' OR (t.netns = x.netns AND t.ct_id = x.ct_id))
LEFT JOIN ev z ON z.position = x.end_pos
WHERE t.status & {IPS_NAT_MASK} <> 0
"""
