"""Copying the log into the derived store: decoded, with wall times and address ids.

Events and snapshot rows are read in position ranges as Arrow columns (eventlog.scan) and
inserted by DuckDB, which also does the per-row work: dictionary ids resolved, wall time
from the recording's clock segments (as ``eventlog.clock.ClockModel``: a sample applies from
its monotonic time on, the first one before it too), addresses and socket tuples given ids.
Python touches only what is new to the store: addresses (their text is
``eventlog.addresses``'), cgroups. The small tables (recordings, losses, clock samples,
dictionaries) are copied whole at every sync; batches are appended.
"""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa

from eventlog import addresses
from eventlog.events import Kind
from eventlog.reader import LogReader
from eventlog.scan import BLOB, INT, TEXT, Select, scan
from eventlog.store import LogStore

CHUNK_POSITIONS = 1_000_000  # events read and inserted at a time (~150 MB of columns)

EVENTS = Select(
    "events",
    (("position", INT), ("recording_id", INT), ("kind", INT), ("mono_ns", INT), ("pid", INT),
     ("comm_id", INT), ("netns_id", INT), ("laddr", BLOB), ("lport", INT), ("raddr", BLOB),
     ("rport", INT), ("sock_id", INT), ("bytes_sent", INT), ("bytes_received", INT),
     ("extra", TEXT)),
)  # fmt: skip
SNAPSHOT_CONNECTIONS = Select(
    "snapshot_connections",
    (("position", INT), ("netns", INT), ("laddr", BLOB), ("lport", INT), ("raddr", BLOB),
     ("rport", INT), ("state", INT), ("inode", INT), ("uid", INT), ("pid", INT)),
)  # fmt: skip
SNAPSHOT_PROCESSES = Select(
    "snapshot_processes",
    (("position", INT), ("pid", INT), ("ppid", INT), ("comm", TEXT), ("cmdline", TEXT),
     ("cgroup", TEXT), ("netns", INT), ("start_mono_ns", INT)),
)  # fmt: skip
SNAPSHOT_CONNTRACK = Select(
    "snapshot_conntrack",
    (("position", INT), ("netns", INT), ("orig_src", BLOB), ("orig_dst", BLOB),
     ("orig_sport", INT), ("orig_dport", INT), ("reply_src", BLOB), ("reply_dst", BLOB),
     ("reply_sport", INT), ("reply_dport", INT), ("status", INT), ("tcp_state", INT),
     ("ct_id", INT), ("zone", INT), ("mark", INT)),
)  # fmt: skip

_SOCKET_KINDS = f"({int(Kind.CONNECT)}, {int(Kind.ACCEPT)}, {int(Kind.CLOSE)})"
_CT_KINDS = f"({int(Kind.CT_NEW)}, {int(Kind.CT_UPDATE)}, {int(Kind.CT_DESTROY)})"

# The wall time of the rows of ``c`` (with recording_id, mono_ns), by the recording's clock.
_WALL_JOIN = """
    ASOF LEFT JOIN clock k ON k.recording_id = c.recording_id AND c.mono_ns >= k.mono_ns
    LEFT JOIN (SELECT recording_id, arg_min(offset_ns, mono_ns) AS offset_ns FROM clock
               GROUP BY recording_id) f ON f.recording_id = c.recording_id
"""
_WALL = "c.mono_ns + coalesce(k.offset_ns, f.offset_ns)"


def copy_small_tables(
    con: duckdb.DuckDBPyConnection, reader: LogReader, after: int, upto: int
) -> None:
    """Recordings, losses, clock segments and dictionaries, whole; batches in (after, upto]."""
    recordings = reader.recordings()
    _replace(con, "recordings_raw", [
        (r.id, r.host_id, r.machine_id, r.boot_id, r.kernel_release, r.tool_version, r.mode,
         r.recorder_pid, r.root_netns, r.started_mono_ns, r.started_wall_ns, r.last_mono_ns,
         r.stopped_mono_ns, r.stop_reason, r.stop_detail, r.conntrack, _json(r.options),
         _json(r.counters))
        for r in recordings
    ])  # fmt: skip
    _replace(con, "losses_raw", [
        (x.id, x.recording_id, x.lost, x.first_mono_ns, x.last_mono_ns, x.first_wall_ns,
         x.last_wall_ns, x.after_position, x.reason)
        for x in reader.losses()
    ])  # fmt: skip
    _replace(con, "clock", [
        (r.id, mono, offset) for r in recordings for mono, offset in reader.clock(r.id).segments()
    ])  # fmt: skip
    comms, namespaces = reader.dictionaries()
    _replace(con, "dict_comms", [(k, v) for k, v in comms.items() if k is not None])
    _replace(con, "dict_netns", [(k, v) for k, v in namespaces.items() if k is not None])
    con.execute("DELETE FROM batches WHERE last_position > ?", [after])
    _insert(con, "batches", [
        (b.first_position, b.last_position, b.recording_id, b.min_wall_ns, b.max_wall_ns)
        for b in reader.batches(after, upto)
    ])  # fmt: skip


def _json(value: Any) -> str | None:
    import json  # noqa: PLC0415 - only the small tables need it

    return None if value is None else json.dumps(value)


def _replace(con: duckdb.DuckDBPyConnection, table: str, rows: list[tuple[Any, ...]]) -> None:
    con.execute(f"DELETE FROM {table}")
    _insert(con, table, rows)


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        return
    columns = [row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()]
    arrow = pa.Table.from_pylist([dict(zip(columns, row, strict=True)) for row in rows])
    con.register("_small_rows", arrow)
    try:
        selected = ", ".join(f'"{c}"' for c in columns)
        con.execute(f"INSERT INTO {table} SELECT {selected} FROM _small_rows")
    finally:
        con.unregister("_small_rows")


def copy_range(con: duckdb.DuckDBPyConnection, store: LogStore, after: int, upto: int) -> int:
    """Events and snapshot rows with positions in ``(after, upto]``; returns events copied."""
    copied = 0
    for low in range(after, upto, CHUNK_POSITIONS):
        high = min(low + CHUNK_POSITIONS, upto)
        copied += _copy_events(con, scan(store, EVENTS, low, high))
        _copy_snapshot_connections(con, scan(store, SNAPSHOT_CONNECTIONS, low, high))
        _copy_snapshot_processes(con, scan(store, SNAPSHOT_PROCESSES, low, high))
        _copy_conntrack(con, scan(store, SNAPSHOT_CONNTRACK, low, high), low, high)
    return copied


def _learn_addresses(con: duckdb.DuckDBPyConnection, raw_sql: str) -> None:
    """Give every address in ``raw_sql`` (one BLOB column) that the store lacks an id."""
    new = con.execute(
        f"SELECT DISTINCT r FROM ({raw_sql}) t(r) WHERE r IS NOT NULL AND octet_length(r) > 0 "
        "AND r NOT IN (SELECT raw FROM addr) ORDER BY r"
    ).fetchall()
    if not new:
        return
    first = con.execute("SELECT coalesce(max(id), 0) + 1 FROM addr").fetchall()[0][0]
    rows = []
    for offset, (raw,) in enumerate(new):
        raw = bytes(raw)
        rows.append((first + offset, raw, addresses.address_text(raw), addresses.family(raw),
                     addresses.is_loopback(addresses.address_text(raw)),
                     addresses.is_unspecified(raw)))  # fmt: skip
    arrow = pa.table(
        list(zip(*rows, strict=True)),
        names=["id", "raw", "text", "family", "loopback", "unspecified"],
    )
    con.register("_new_addr", arrow)
    try:
        con.execute("INSERT INTO addr SELECT * FROM _new_addr")
    finally:
        con.unregister("_new_addr")


def _learn_tuples(con: duckdb.DuckDBPyConnection, keyed_sql: str) -> None:
    """Give every (netns, laddr id, lport, raddr id, rport) in ``keyed_sql`` that the store
    lacks an id."""
    con.execute(
        f"""
        INSERT INTO tuples
        SELECT (SELECT coalesce(max(id), 0) FROM tuples)
                   + row_number() OVER (ORDER BY netns, laddr, lport, raddr, rport),
               netns, laddr, lport, raddr, rport
        FROM (SELECT DISTINCT * FROM ({keyed_sql})) k
        WHERE NOT EXISTS (SELECT 1 FROM tuples t WHERE t.netns = k.netns AND t.laddr = k.laddr
                          AND t.lport = k.lport AND t.raddr = k.raddr AND t.rport = k.rport)
        """
    )


def _copy_events(con: duckdb.DuckDBPyConnection, chunk: pa.Table) -> int:
    if chunk.num_rows == 0:
        return 0
    con.register("_events", chunk)
    try:
        _learn_addresses(con, "SELECT laddr FROM _events UNION ALL SELECT raddr FROM _events")
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _ev_keyed AS
            SELECT c.*, coalesce(n.inode, 0) AS netns_key, coalesce(a1.id, 0) AS laddr_key,
                   coalesce(a2.id, 0) AS raddr_key, a1.text AS laddr_text, a2.text AS raddr_text,
                   a1.family AS family, n.inode AS netns, d.name AS comm
            FROM _events c
            LEFT JOIN addr a1 ON a1.raw = c.laddr
            LEFT JOIN addr a2 ON a2.raw = c.raddr
            LEFT JOIN dict_netns n ON n.id = c.netns_id
            LEFT JOIN dict_comms d ON d.id = c.comm_id
            """
        )
        _learn_tuples(
            con,
            "SELECT netns_key AS netns, laddr_key AS laddr, coalesce(lport, 0) AS lport, "
            "raddr_key AS raddr, coalesce(rport, 0) AS rport "
            f"FROM _ev_keyed WHERE kind IN {_SOCKET_KINDS}",
        )
        con.execute(
            f"""
            INSERT INTO ev
            SELECT c.position, c.recording_id, c.kind, c.mono_ns, {_WALL}, c.pid, c.comm,
                   c.netns, c.laddr_text, c.lport, c.raddr_text, c.rport, c.sock_id,
                   c.bytes_sent, c.bytes_received, CAST(decode(c.extra) AS JSON), c.family,
                   CASE WHEN c.kind IN {_SOCKET_KINDS} THEN t.id END
            FROM _ev_keyed c
            {_WALL_JOIN}
            LEFT JOIN tuples t ON t.netns = c.netns_key AND t.laddr = c.laddr_key
                AND t.lport = coalesce(c.lport, 0) AND t.raddr = c.raddr_key
                AND t.rport = coalesce(c.rport, 0)
            ORDER BY c.position
            """
        )
        con.execute("DROP TABLE _ev_keyed")
    finally:
        con.unregister("_events")
    return int(chunk.num_rows)


def _copy_snapshot_connections(con: duckdb.DuckDBPyConnection, chunk: pa.Table) -> None:
    if chunk.num_rows == 0:
        return
    con.register("_snap", chunk)
    try:
        _learn_addresses(con, "SELECT laddr FROM _snap UNION ALL SELECT raddr FROM _snap")
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _snap_keyed AS
            SELECT s.*, a1.id AS laddr_key, a2.id AS raddr_key, a1.text AS laddr_text,
                   a2.text AS raddr_text,
                   -- as the snapshot's rows are read back in order (netns, ports, inode)
                   row_number() OVER (PARTITION BY s.position
                       ORDER BY s.netns, s.lport, s.rport, s.inode, s.laddr, s.raddr, s.state,
                                s.uid, s.pid) AS ordinal
            FROM _snap s
            LEFT JOIN addr a1 ON a1.raw = s.laddr
            LEFT JOIN addr a2 ON a2.raw = s.raddr
            """
        )
        _learn_tuples(
            con,
            "SELECT netns, coalesce(laddr_key, 0) AS laddr, lport, coalesce(raddr_key, 0) AS raddr,"
            " rport FROM _snap_keyed",
        )
        con.execute(
            """
            INSERT INTO snap_conn
            SELECT s.position, s.ordinal, s.netns, s.laddr_text, s.lport, s.raddr_text, s.rport,
                   s.state, s.inode, s.uid, s.pid, t.id
            FROM _snap_keyed s
            LEFT JOIN tuples t ON t.netns = s.netns AND t.laddr = coalesce(s.laddr_key, 0)
                AND t.lport = s.lport AND t.raddr = coalesce(s.raddr_key, 0) AND t.rport = s.rport
            ORDER BY s.position, s.ordinal
            """
        )
        con.execute("DROP TABLE _snap_keyed")
    finally:
        con.unregister("_snap")


def _copy_snapshot_processes(con: duckdb.DuckDBPyConnection, chunk: pa.Table) -> None:
    if chunk.num_rows == 0:
        return
    con.register("_procs", chunk)
    try:
        con.execute(
            """
            INSERT INTO snap_proc
            SELECT position, pid, ppid, decode(comm), decode(cmdline), decode(cgroup), netns,
                   start_mono_ns
            FROM _procs ORDER BY position, pid
            """
        )
    finally:
        con.unregister("_procs")


def _copy_conntrack(
    con: duckdb.DuckDBPyConnection, chunk: pa.Table, after: int, upto: int
) -> None:
    """Every sighting of a conntrack entry in the range: the dumps of its snapshots and its
    CT_* events (whose reply tuple and the rest are in the event's extra)."""
    if chunk.num_rows:
        con.register("_ct", chunk)
        try:
            _learn_addresses(
                con,
                "SELECT orig_src FROM _ct UNION ALL SELECT orig_dst FROM _ct "
                "UNION ALL SELECT reply_src FROM _ct UNION ALL SELECT reply_dst FROM _ct",
            )
            con.execute(
                """
                INSERT INTO conntrack_raw
                SELECT t.position, e.recording_id, e.wall_ns, 'snapshot', t.netns,
                    (SELECT text FROM addr WHERE raw = t.orig_src), t.orig_sport,
                    (SELECT text FROM addr WHERE raw = t.orig_dst), t.orig_dport,
                    (SELECT text FROM addr WHERE raw = t.reply_src), t.reply_sport,
                    (SELECT text FROM addr WHERE raw = t.reply_dst), t.reply_dport,
                    t.status, t.tcp_state, t.ct_id, t.zone, t.mark
                FROM _ct t JOIN ev e ON e.position = t.position
                ORDER BY t.position, t.netns, t.ct_id
                """
            )
        finally:
            con.unregister("_ct")
    con.execute(
        f"""
        INSERT INTO conntrack_raw
        SELECT e.position, e.recording_id, e.wall_ns,
            CASE e.kind WHEN {int(Kind.CT_NEW)} THEN 'new' WHEN {int(Kind.CT_UPDATE)} THEN 'update'
                 ELSE 'destroy' END,
            coalesce(e.netns, 0), coalesce(e.laddr, '?'), coalesce(e.lport, 0),
            coalesce(e.raddr, '?'), coalesce(e.rport, 0),
            coalesce(json_extract_string(e.extra, '$.reply_src'), '0.0.0.0'),
            coalesce(CAST(json_extract(e.extra, '$.reply_sport') AS INTEGER), 0),
            coalesce(json_extract_string(e.extra, '$.reply_dst'), '0.0.0.0'),
            coalesce(CAST(json_extract(e.extra, '$.reply_dport') AS INTEGER), 0),
            coalesce(CAST(json_extract(e.extra, '$.status') AS INTEGER), 0),
            coalesce(CAST(json_extract(e.extra, '$.tcp_state') AS SMALLINT), 0),
            coalesce(CAST(json_extract(e.extra, '$.ct_id') AS BIGINT), 0),
            coalesce(CAST(json_extract(e.extra, '$.zone') AS INTEGER), 0),
            coalesce(CAST(json_extract(e.extra, '$.mark') AS BIGINT), 0)
        FROM ev e
        WHERE e.position > {int(after)} AND e.position <= {int(upto)} AND e.kind IN {_CT_KINDS}
        ORDER BY e.position
        """
    )
