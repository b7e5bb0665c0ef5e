"""Copying the log into the derived store, a range of positions at a time.

Events and snapshot rows are read as Arrow columns (eventlog.scan) and inserted by DuckDB,
which also does the per-row work: addresses given ids, dictionaries resolved. Wall times are
computed per column with the recordings' clocks (``eventlog.clock.ClockModel``). Python
touches only what is new to the store: addresses (their text and kind are
``eventlog.addresses``') and cgroups (their container, ``replay.views.containers``). The
small tables (recordings, losses, clock samples, dictionaries) are copied whole at every
sync; batches are appended.

Snapshot connections are not kept: ``Chunk.snapshot_sockets`` gives their tuples and states
to the fold as numpy columns, and ``snap_holders`` keeps their holders where they changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from eventlog import addresses
from eventlog.archive import scan
from eventlog.clock import ClockModel
from eventlog.errors import LogOpenError
from eventlog.events import OPEN_STATES, TCP_LISTEN, Kind
from eventlog.reader import LogReader
from eventlog.rebuild import chains, scan_whole
from eventlog.scan import BLOB, INT, TEXT, THREADS, Select
from eventlog.store import LogStore
from replay.views.containers import container_of

CHUNK_POSITIONS = 1_000_000  # events read, folded and committed at a time (~150 MB of columns)

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
     ("rport", INT), ("state", INT), ("inode", INT), ("pid", INT)),
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

SOCKET_KINDS = f"({int(Kind.CONNECT)}, {int(Kind.ACCEPT)}, {int(Kind.CLOSE)})"
_CT_KINDS = f"({int(Kind.CT_NEW)}, {int(Kind.CT_UPDATE)}, {int(Kind.CT_DESTROY)})"
Clocks = dict[int, ClockModel]  # recording -> its clock


# -- the small tables ------------------------------------------------------------------------
def copy_small_tables(
    con: duckdb.DuckDBPyConnection, reader: LogReader, clocks: Clocks, after: int, upto: int
) -> None:
    """Recordings, losses, clock segments, whole; batches in (after, upto]."""
    recordings = reader.recordings()
    rows = []
    for r in recordings:
        clock = clocks.get(r.id) or ClockModel()
        has_clock = len(clock) > 0
        stopped = clock.wall_ns(r.stopped_mono_ns) if has_clock and r.stopped_mono_ns else None
        last = r.stopped_mono_ns or r.last_mono_ns or r.started_mono_ns
        ended = clock.wall_ns(last) if has_clock else r.started_wall_ns
        rows.append(
            (r.id, r.host_id, r.machine_id, r.boot_id, r.kernel_release, r.tool_version, r.mode,
             r.recorder_pid, r.root_netns, r.started_mono_ns, r.started_wall_ns, r.last_mono_ns,
             r.stopped_mono_ns, r.stop_reason, r.stop_detail, r.conntrack, _json(r.options),
             _json(r.counters), stopped, ended)
        )  # fmt: skip
    _replace(con, "recordings_raw", rows)
    _replace(con, "losses_raw", [
        (x.id, x.recording_id, x.lost, x.first_mono_ns, x.last_mono_ns, x.first_wall_ns,
         x.last_wall_ns, x.after_position, x.reason)
        for x in reader.losses()
    ])  # fmt: skip
    _replace(con, "clock", [
        (r.id, mono, offset) for r in recordings
        for mono, offset in (clocks.get(r.id) or ClockModel()).segments()
    ])  # fmt: skip
    con.execute("DELETE FROM batches WHERE last_position > ?", [after])
    _insert(con, "batches", [
        (b.first_position, b.last_position, b.recording_id, b.min_wall_ns, b.max_wall_ns)
        for b in reader.batches(after, upto)
    ])  # fmt: skip


def copy_dictionaries(con: duckdb.DuckDBPyConnection, reader: LogReader) -> None:
    """The process names and network namespaces that events refer to by id, whole."""
    comms, namespaces = reader.dictionaries()
    _replace(con, "dict_comms", [(k, v) for k, v in comms.items() if k is not None])
    _replace(con, "dict_netns", [(k, v) for k, v in namespaces.items() if k is not None])


def _json(value: Any) -> str | None:
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


# -- ids for addresses ---------------------------------------------------------------------------
def learn_addresses(con: duckdb.DuckDBPyConnection, raw_sql: str) -> None:
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
        text = addresses.address_text(bytes(raw))
        rows.append((first + offset, bytes(raw), text, addresses.family(bytes(raw)),
                     addresses.is_loopback(text), addresses.is_unspecified(bytes(raw))))  # fmt: skip
    arrow = pa.table(
        list(zip(*rows, strict=True)),
        names=["id", "raw", "text", "family", "loopback", "unspecified"],
    )
    con.register("_new_addr", arrow)
    try:
        con.execute("INSERT INTO addr SELECT * FROM _new_addr")
    finally:
        con.unregister("_new_addr")


# -- one range of events ---------------------------------------------------------------------
@dataclass
class Chunk:
    """One range of positions as copied."""

    after: int
    upto: int
    events: int
    # The snapshots' sockets that are not listening, ordered by position, as columns:
    # position, netns, laddr id, lport, raddr id, rport, open (1) or closing (0).
    snapshot_sockets: tuple[npt.NDArray[np.int64], ...]


@dataclass
class Scanned:
    """A range's rows as read from the log, before they are copied."""

    after: int
    upto: int
    events: pa.Table
    connections: pa.Table
    processes: pa.Table
    conntrack: pa.Table


def scan_range(
    store: LogStore, clocks: Clocks, after: int, upto: int, threads: int = THREADS
) -> Scanned:
    """Read the events (with their wall times) and snapshot rows (each snapshot whole) of
    ``(after, upto]``.

    Only the log and numpy are touched here (no DuckDB), so a range can be read on another
    thread while the one before is copied and folded."""
    links = chains(store, after, upto)
    return Scanned(
        after,
        upto,
        with_wall_time(scan(store, EVENTS, after, upto, threads), clocks),
        scan_whole(store, SNAPSHOT_CONNECTIONS, after, upto, threads, links),
        scan_whole(store, SNAPSHOT_PROCESSES, after, upto, threads, links),
        scan_whole(store, SNAPSHOT_CONNTRACK, after, upto, threads, links),
    )


def copy_chunk(con: duckdb.DuckDBPyConnection, scanned: Scanned) -> Chunk:
    """Copy a range read by ``scan_range``."""
    con.register("_raw_events", scanned.events)
    try:
        learn_addresses(
            con, "SELECT laddr FROM _raw_events UNION ALL SELECT raddr FROM _raw_events"
        )
        con.execute(
            """
            INSERT INTO ev
            SELECT c.position, c.recording_id, c.kind, c.mono_ns, c.wall_ns, c.pid, d.name,
                   n.inode, a1.id, c.lport, a2.id, c.rport, c.sock_id, c.bytes_sent,
                   c.bytes_received, CAST(decode(c.extra) AS JSON), a1.family, a1.text, a2.text
            FROM _raw_events c
            LEFT JOIN addr a1 ON a1.raw = c.laddr
            LEFT JOIN addr a2 ON a2.raw = c.raddr
            LEFT JOIN dict_comms d ON d.id = c.comm_id
            LEFT JOIN dict_netns n ON n.id = c.netns_id
            """
        )
    finally:
        con.unregister("_raw_events")
    where = f"e.position > {int(scanned.after)} AND e.position <= {int(scanned.upto)}"
    _copy_lineage(con, where)
    sockets = _snapshot_sockets(con, scanned.connections)
    _copy_snapshot_processes(con, scanned.processes)
    _copy_holders(con, scanned.connections, where)
    _copy_conntrack(con, scanned.conntrack, where)
    _mark_snapshots(con, where)
    return Chunk(scanned.after, scanned.upto, scanned.events.num_rows, sockets)


def _copy_lineage(con: duckdb.DuckDBPyConnection, where: str) -> None:
    """The range's forks, exits and OWNER events, again in tables of their own: few beside
    the events, and read for every socket shown (replay.derived.owners)."""
    con.execute(f"""
        INSERT INTO forks SELECT e.position, e.recording_id, e.pid,
            CAST(json_extract(e.extra, '$.ppid') AS INTEGER), e.comm, e.wall_ns
        FROM ev e WHERE {where} AND e.kind = {int(Kind.FORK)} ORDER BY e.position""")
    con.execute(f"""
        INSERT INTO exits SELECT e.position, e.recording_id, e.pid, e.wall_ns
        FROM ev e WHERE {where} AND e.kind = {int(Kind.EXIT)} ORDER BY e.position""")
    con.execute(f"""
        INSERT INTO owners SELECT e.position, e.recording_id, e.sock_id, e.pid, e.comm, e.wall_ns
        FROM ev e WHERE {where} AND e.kind = {int(Kind.OWNER)} AND e.sock_id IS NOT NULL
        ORDER BY e.position""")  # fmt: skip


def with_wall_time(events: pa.Table, clocks: Clocks) -> pa.Table:
    """``events`` (with recording_id and mono_ns) and a wall_ns column, by each recording's
    clock."""
    recordings = events.column("recording_id").to_numpy()
    monos = events.column("mono_ns").to_numpy()
    wall = np.empty_like(monos)
    for recording in np.unique(recordings).tolist():
        clock = clocks.get(recording)
        if clock is None or not len(clock):
            raise LogOpenError(f"recording {recording} has events but no clock samples")
        rows = recordings == recording
        wall[rows] = clock.wall_ns_array(monos[rows])
    return events.append_column("wall_ns", pa.array(wall, type=pa.int64()))


def _snapshot_sockets(
    con: duckdb.DuckDBPyConnection, rows: pa.Table
) -> tuple[npt.NDArray[np.int64], ...]:
    """The snapshots' sockets that are not listening (``Chunk.snapshot_sockets``)."""
    con.register("_snap", rows)
    try:
        learn_addresses(con, "SELECT laddr FROM _snap UNION ALL SELECT raddr FROM _snap")
        table = con.sql(
            f"""
            SELECT s.position, s.netns, coalesce(a1.id, 0), s.lport, coalesce(a2.id, 0), s.rport,
                   s.state IN ({", ".join(map(str, sorted(OPEN_STATES)))})
            FROM _snap s LEFT JOIN addr a1 ON a1.raw = s.laddr LEFT JOIN addr a2 ON a2.raw = s.raddr
            WHERE s.state <> {TCP_LISTEN}
            ORDER BY s.position
            """
        ).to_arrow_table()
        _count_rows(con, "_snap_counts", "_snap")
    finally:
        con.unregister("_snap")
    return tuple(column.to_numpy().astype(np.int64) for column in table.columns)


def _copy_holders(con: duckdb.DuckDBPyConnection, rows: pa.Table, where: str) -> None:
    """The holders of the snapshots' connections (a row's pid and the SNAPSHOT event's
    ``more_holders``) into ``snap_holders``, where they differ from the socket's snapshot
    before (its first included): a row a holder, one with no pid for a socket no process
    held. The socket's rows before the range are the store's."""
    con.register("_snap", rows)
    try:
        con.execute(f"""
            INSERT INTO snap_holders
            WITH shown AS (
                SELECT s.position, e.recording_id, e.wall_ns, s.netns, a1.id AS laddr, s.lport,
                    a2.id AS raddr, s.rport, s.inode, s.pid
                FROM _snap s JOIN ev e ON e.position = s.position AND {where}
                LEFT JOIN addr a1 ON a1.raw = s.laddr LEFT JOIN addr a2 ON a2.raw = s.raddr
                WHERE s.state <> {TCP_LISTEN} AND s.inode <> 0
            ),
            more AS (
                SELECT position, CAST(pair[1] AS BIGINT) AS inode, CAST(pair[2] AS INTEGER) AS pid
                FROM (SELECT e.position,
                          unnest(CAST(json_extract(e.extra, '$.more_holders') AS BIGINT[][])) AS pair
                      FROM ev e WHERE {where} AND e.kind = {int(Kind.SNAPSHOT)})
            ),
            held AS (
                SELECT * FROM shown
                UNION
                SELECT s.* REPLACE (m.pid AS pid)
                FROM shown s JOIN more m ON m.position = s.position AND m.inode = s.inode
            ),
            sets AS (
                SELECT position, recording_id, wall_ns, netns, laddr, lport, raddr, rport, inode,
                    coalesce(list(pid ORDER BY pid) FILTER (WHERE pid IS NOT NULL), []) AS pids
                FROM held GROUP BY ALL
            ),
            stored AS (  -- each socket's holders as the store last has them
                SELECT recording_id, inode, arg_max(pids, position) AS pids FROM (
                    SELECT h.recording_id, h.inode, h.position,
                        coalesce(list(h.pid ORDER BY h.pid) FILTER (WHERE h.pid IS NOT NULL), [])
                            AS pids
                    FROM snap_holders h
                    SEMI JOIN sets s ON s.recording_id = h.recording_id AND s.inode = h.inode
                    GROUP BY ALL)
                GROUP BY ALL
            ),
            compared AS (
                SELECT s.*, coalesce(
                    lag(s.pids) OVER (PARTITION BY s.recording_id, s.inode ORDER BY s.position),
                    t.pids) AS before
                FROM sets s LEFT JOIN stored t ON t.recording_id = s.recording_id
                 AND t.inode = s.inode
            ),
            changed AS (SELECT * FROM compared WHERE before IS NULL OR before <> pids)
            SELECT c.position, c.recording_id, c.wall_ns, c.netns, c.laddr, c.lport, c.raddr,
                c.rport, c.inode, h.pid, p.comm
            FROM changed c
            LEFT JOIN (SELECT position, inode, unnest(pids) AS pid FROM changed) h
              ON h.position = c.position AND h.inode = c.inode
            LEFT JOIN snap_proc p ON p.position = c.position AND p.pid = h.pid
            ORDER BY c.position, c.inode, h.pid""")  # fmt: skip
    finally:
        con.unregister("_snap")


def _count_rows(con: duckdb.DuckDBPyConnection, name: str, rows: str) -> None:
    """``name``: how many rows of ``rows`` each snapshot position holds."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {name} AS "
        f"SELECT position, count(*) AS n FROM {rows} GROUP BY position"
    )


def _copy_snapshot_processes(con: duckdb.DuckDBPyConnection, rows: pa.Table) -> None:
    con.register("_procs", rows)
    try:
        con.execute(
            """
            INSERT INTO snap_proc
            SELECT position, pid, ppid, decode(comm), decode(cmdline), decode(cgroup), netns,
                   start_mono_ns
            FROM _procs
            """
        )
        _count_rows(con, "_proc_counts", "_procs")
        new = con.execute(
            "SELECT DISTINCT decode(cgroup) AS g FROM _procs "
            "WHERE decode(cgroup) NOT IN (SELECT cgroup FROM cgroups) ORDER BY g"
        ).fetchall()
    finally:
        con.unregister("_procs")
    _insert(con, "cgroups", [(cgroup, *_container(cgroup)) for (cgroup,) in new])


def _container(cgroup: str) -> tuple[str | None, str | None]:
    container = container_of(cgroup)
    return (container.runtime, container.id) if container else (None, None)


def _copy_conntrack(con: duckdb.DuckDBPyConnection, rows: pa.Table, where: str) -> None:
    """Every sighting of a conntrack entry in the range: the dumps of its snapshots and its
    CT_* events (whose reply tuple and the rest are in the event's extra)."""
    con.register("_ct", rows)
    _count_rows(con, "_ct_counts", "_ct")
    con.unregister("_ct")
    if rows.num_rows:
        con.register("_ct", rows)
        try:
            learn_addresses(
                con,
                "SELECT orig_src FROM _ct UNION ALL SELECT orig_dst FROM _ct "
                "UNION ALL SELECT reply_src FROM _ct UNION ALL SELECT reply_dst FROM _ct",
            )
            con.execute(
                f"""
                INSERT INTO conntrack_raw
                SELECT t.position, e.recording_id, e.wall_ns, 'snapshot', t.netns,
                    (SELECT text FROM addr WHERE raw = t.orig_src), t.orig_sport,
                    (SELECT text FROM addr WHERE raw = t.orig_dst), t.orig_dport,
                    (SELECT text FROM addr WHERE raw = t.reply_src), t.reply_sport,
                    (SELECT text FROM addr WHERE raw = t.reply_dst), t.reply_dport,
                    t.status, t.tcp_state, t.ct_id, t.zone, t.mark
                FROM _ct t JOIN ev e ON e.position = t.position AND {where}
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
            coalesce(e.netns, 0), coalesce(e.laddr_text, '?'), coalesce(e.lport, 0),
            coalesce(e.raddr_text, '?'), coalesce(e.rport, 0),
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
        WHERE {where} AND e.kind IN {_CT_KINDS}
        ORDER BY e.position
        """
    )


def _mark_snapshots(con: duckdb.DuckDBPyConnection, where: str) -> None:
    """The range's snapshot events, with how many rows each holds."""
    con.execute(
        f"""
        INSERT INTO snap_marks
        SELECT e.position, e.recording_id, e.wall_ns, e.mono_ns, e.extra,
            coalesce(c.n, 0), coalesce(p.n, 0), coalesce(t.n, 0)
        FROM ev e
        LEFT JOIN _snap_counts c ON c.position = e.position
        LEFT JOIN _proc_counts p ON p.position = e.position
        LEFT JOIN _ct_counts t ON t.position = e.position
        WHERE {where} AND e.kind = {int(Kind.SNAPSHOT)}
        ORDER BY e.position
        """
    )
    for name in ("_snap_counts", "_proc_counts", "_ct_counts"):
        con.execute(f"DROP TABLE {name}")
