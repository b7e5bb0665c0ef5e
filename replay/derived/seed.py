"""What a cut that drops its history keeps (eventlog.seed): the fold state at the cut and the
rows it refers to, decided here, where the state is folded and read.

The state is the derived store's, synced up to the cut (replay.derived.store.derived_at). A
moment after the cut reads, of the history before it:

- the intervals still open at the cut (``*_open``), made of the events and snapshot rows
  at their positions (``state_*``: an opening event, the snapshot that showed a socket or
  process, the snapshot that missed a socket); of the conntrack entries open at the cut,
  only the sightings that describe a NAT entry (``nat_open``): a connection open at the
  cut, or one that opens after it, is shown with the NAT of an entry alive at the moment
  asked, and an entry without NAT is shown by no answer (the fold state still holds every
  entry, so that a later dump or CT_DESTROY ends it where it ended);
- each recording's last snapshot by the cut (a moment's process table reads the last
  snapshot by then);
- who held a socket still open (replay.derived.owners): the forks that made its holders,
  their exits, and the OWNER events naming it;
- the container records (a container is named by its records by then, or its first).

A snapshot is kept whole (its event and all its rows, as it reads whole, even if the log
stored it as changes): a socket only /proc knew is read back with the ordinal and the server
side its snapshot gave it, and a snapshot after the cut stored as changes from a recording's
last snapshot by the cut is built on it.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import text

from eventlog.archive import BATCH_SCHEMA, TABLES, boundary, scan
from eventlog.events import Kind
from eventlog.rebuild import scan_whole
from eventlog.scan import Select
from eventlog.seed import Seed
from eventlog.snapshots import DELTAS_TABLE, SNAPSHOT_TABLES
from eventlog.store import LogStore
from replay.derived.copy import CHUNK_POSITIONS
from replay.derived.derive import exported_state
from replay.derived.owners import MAX_DEPTH, MAX_NS, owner_ctes
from replay.derived.store import SyncStoppedError, derived_at

# The socket rows open at the cut, as owner_ctes reads them (every holder, to the end).
_OPEN_ROWS = """
seed_open AS (
    SELECT *, pid AS at_pid, comm AS at_comm, CAST(NULL AS VARCHAR) AS note,
        CAST(NULL AS BIGINT) AS end_ns
    FROM socket_open
)"""

# Whoever may hold a socket open at the cut later: its opener, every process they forked
# while it was open, and the descendants of the holders its snapshots showed (owner_ctes).
_HELD = f"""
seed_held AS (
    SELECT b.origin_pos, b.origin_ord, b.recording_id, b.pid, b.opened_ns AS since_ns,
        b.life_end, 0 AS depth
    FROM own_base b
    UNION ALL
    SELECT h.origin_pos, h.origin_ord, h.recording_id, f.pid, f.wall_ns, h.life_end,
        h.depth + 1
    FROM seed_held h JOIN forks f ON f.recording_id = h.recording_id AND f.ppid = h.pid
     AND f.wall_ns >= h.since_ns AND f.wall_ns < h.life_end
    WHERE h.depth < {MAX_DEPTH}
),
seed_holders AS (
    SELECT recording_id, pid, since_ns, depth FROM seed_held
    UNION ALL SELECT recording_id, pid, since_ns, depth FROM own_descendants
)"""

# The positions a seed keeps: the rows of the state open at the cut (of the conntrack
# entries, the NAT ones); each recording's last snapshot; container records; the forks,
# exits and OWNER events that say who held a socket open at the cut; and the snapshots that
# showed its holders change, with the snapshot before each (a hand-over is bounded by them),
# so that every answer after the cut is the uncut log's.
_KEPT_POSITIONS = f"""
WITH RECURSIVE {_OPEN_ROWS},
{owner_ctes("seed_open", str(MAX_NS))},
{_HELD}
SELECT open_pos FROM state_sockets
UNION SELECT open_pos FROM state_missing
UNION SELECT missed_pos FROM state_missing
UNION SELECT snapshot_pos FROM state_snapshot_sockets
UNION SELECT source_pos FROM state_processes
UNION SELECT source_pos FROM nat_open
UNION SELECT max(position) FROM snap_marks GROUP BY recording_id
UNION SELECT position FROM ev WHERE kind = {int(Kind.CONTAINER)}
UNION SELECT f.position FROM seed_holders h JOIN forks f ON f.recording_id = h.recording_id
    AND f.pid = h.pid AND f.wall_ns = h.since_ns WHERE h.depth > 0
UNION SELECT x.position FROM seed_holders h JOIN exits x ON x.recording_id = h.recording_id
    AND x.pid = h.pid AND x.wall_ns >= h.since_ns
UNION SELECT w.position FROM seed_open r JOIN owners w ON w.recording_id = r.recording_id
    AND w.sock_id = r.sock_id AND w.wall_ns >= r.opened_ns
UNION SELECT position FROM own_seen
UNION SELECT (SELECT max(k.position) FROM snap_marks k
              WHERE k.recording_id = b.recording_id AND k.position < s.position)
    FROM own_seen s JOIN own_base b ON b.origin_pos = s.origin_pos AND b.origin_ord = s.origin_ord
"""


def make_seed(
    log: LogStore, upto: int, stopping: Callable[[], bool] = lambda: False
) -> Seed | None:
    """The seed of a cut at ``upto`` (a batch's last position) of ``log``; None if
    ``stopping`` said so while it was made (it is asked between the ranges read)."""
    try:
        with derived_at(log, upto, stopping) as con:
            positions = _kept_positions(con)
            snapshots = pa.array(
                [row[0] for row in con.execute("SELECT position FROM snap_marks").fetchall()],
                pa.int64(),
            )
            snapshots = pc.filter(snapshots, pc.is_in(snapshots, positions))
            state = exported_state(con)
            (dropped,) = con.execute(
                "SELECT max(max_wall_ns) FROM batches WHERE last_position <= ?", [upto]
            ).fetchall()[0]
        tables = {
            name: _kept_rows(log, select, upto, positions if name == "events" else snapshots,
                             stopping)
            for name, select in TABLES.items()
            if name != DELTAS_TABLE
        }  # fmt: skip
        # Each snapshot kept whole: what it was built from is not kept (eventlog.snapshots).
        tables[DELTAS_TABLE] = TABLES[DELTAS_TABLE].schema().empty_table()
    except SyncStoppedError:
        return None
    tables["batches"] = _kept_batches(log, upto, positions)
    return Seed(upto, int(dropped or 0), tables, state)


def _kept_positions(con: duckdb.DuckDBPyConnection) -> pa.Array:
    rows = con.execute(f"SELECT * FROM ({_KEPT_POSITIONS}) k(p) WHERE p IS NOT NULL ORDER BY p")
    return pa.array([row[0] for row in rows.fetchall()], pa.int64())


def _kept_rows(
    log: LogStore, select: Select, upto: int, positions: pa.Array, stopping: Callable[[], bool]
) -> pa.Table:
    """The rows of ``select`` at ``positions`` (up to ``upto``), as the log gives them
    (SyncStoppedError if ``stopping`` says so between two ranges)."""
    parts = []
    for after in range(0, upto, CHUNK_POSITIONS):
        if stopping():
            raise SyncStoppedError
        end = min(upto, after + CHUNK_POSITIONS)
        whole = select.table in SNAPSHOT_TABLES
        rows = scan_whole(log, select, after, end) if whole else scan(log, select, after, end)
        parts.append(rows.filter(pc.is_in(rows.column("position"), positions)))
    return pa.concat_tables(parts) if parts else select.schema().empty_table()


def _kept_batches(log: LogStore, upto: int, positions: pa.Array) -> pa.Table:
    """The batches up to ``upto`` that hold a kept position (``positions``, sorted), and the
    first one: of the seed before this one, and of the live log."""
    edge = boundary(log)
    rows = list(edge.seed.batches(0, upto, upto)) if edge.seed is not None else []
    with log.connect() as conn:
        rows += [
            tuple(int(v) for v in row)
            for row in conn.execute(
                text(f"SELECT {', '.join(BATCH_SCHEMA.names)} FROM batches "
                     "WHERE last_position > :a AND last_position <= :u ORDER BY last_position"),
                {"a": edge.archived_upto, "u": upto},
            ).all()
        ]  # fmt: skip
    kept = positions.to_numpy()
    firsts = np.array([row[0] for row in rows], dtype=np.int64)
    lasts = np.array([row[1] for row in rows], dtype=np.int64)
    # A batch holds a kept position if the first kept at or after its first is within it.
    at = np.searchsorted(kept, firsts)
    holds = (at < len(kept)) & (kept[np.minimum(at, len(kept) - 1)] <= lasts) if len(kept) else (
        np.zeros(len(rows), dtype=bool))  # fmt: skip
    # And the log's first batch: where the log begins, which moments given from its start
    # (``--at +10s``) are counted from, stays where it was.
    wanted = [row for i, (row, keep) in enumerate(zip(rows, holds.tolist(), strict=True))
              if keep or i == 0]  # fmt: skip
    columns = [pa.array([row[i] for row in wanted], pa.int64()) for i in range(len(BATCH_SCHEMA))]
    return pa.table(columns, schema=BATCH_SCHEMA)
