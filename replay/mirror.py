"""A DuckDB copy of the log for SQL: derived data, kept up to date by log position.

The log stays the one source of truth. The mirror holds the same events with their columns
decoded (wall time, process name, namespace inode, addresses as text), the snapshot rows,
the small tables, and one row per socket lifetime worked out by replay's own fold, so that
connection questions asked in SQL get replay's answers. Before every query it is brought up
to the log's committed head, incrementally; it is rebuilt when it is missing, of another
format, or of another log. Deleting it loses nothing.

Bulk copies go through CSV files, which DuckDB loads natively: SQLite rows are written by
the csv module's C loop, PostgreSQL writes them itself with ``COPY ... TO STDOUT``.
"""

from __future__ import annotations

import csv
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from eventlog.batch import gc_paused
from eventlog.errors import LogError, QueryError
from eventlog.reader import LogReader
from eventlog.store import LogStore
from replay import native
from replay.connections import CLOSE_ONLY_NOTE, _Materializer, address_text
from replay.engine import Window
from replay.fold import Closed, Fold, Retained, SocketRef
from replay.sqlviews import VIEWS_SQL
from replay.state import ReplayState
from replay.views.containers import container_of

FORMAT = 2  # bump when the mirror's tables or their meaning change: it is rebuilt
CHUNK_EVENTS = 500_000  # events per bulk copy
LOCK_WAIT_S = 60.0
DUCKDB_SAFE_CONFIG: dict[str, Any] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS ev (
    position BIGINT, recording_id INTEGER, kind SMALLINT, mono_ns BIGINT, wall_ns BIGINT,
    pid INTEGER, comm VARCHAR, netns BIGINT, laddr VARCHAR, lport INTEGER, raddr VARCHAR,
    rport INTEGER, sock_id BIGINT, bytes_sent BIGINT, bytes_received BIGINT, extra JSON,
    family VARCHAR);
CREATE TABLE IF NOT EXISTS addr (hex VARCHAR PRIMARY KEY, text VARCHAR, family VARCHAR);
CREATE TABLE IF NOT EXISTS clock (recording_id INTEGER, mono_ns BIGINT, offset_ns BIGINT);
CREATE TABLE IF NOT EXISTS recordings_raw (
    id INTEGER, host VARCHAR, machine_id VARCHAR, boot_id VARCHAR, kernel VARCHAR,
    version VARCHAR, mode VARCHAR, started_mono_ns BIGINT, started_wall_ns BIGINT,
    last_mono_ns BIGINT, stopped_mono_ns BIGINT, stop_reason VARCHAR, stop_detail VARCHAR,
    conntrack VARCHAR);
CREATE TABLE IF NOT EXISTS losses_raw (
    id INTEGER, recording_id INTEGER, lost BIGINT, first_wall_ns BIGINT, last_wall_ns BIGINT,
    after_position BIGINT, reason VARCHAR);
CREATE TABLE IF NOT EXISTS snap_conn (
    position BIGINT, netns BIGINT, laddr VARCHAR, lport INTEGER, raddr VARCHAR, rport INTEGER,
    state SMALLINT, inode BIGINT, uid INTEGER, pid INTEGER);
CREATE TABLE IF NOT EXISTS snap_proc (
    position BIGINT, pid INTEGER, ppid INTEGER, comm VARCHAR, cmdline VARCHAR, cgroup VARCHAR,
    netns BIGINT, start_mono_ns BIGINT);
CREATE TABLE IF NOT EXISTS snap_ct (
    position BIGINT, netns BIGINT, orig_src VARCHAR, orig_dst VARCHAR, orig_sport INTEGER,
    orig_dport INTEGER, reply_src VARCHAR, reply_dst VARCHAR, reply_sport INTEGER,
    reply_dport INTEGER, status INTEGER, tcp_state SMALLINT, ct_id BIGINT, zone INTEGER,
    mark BIGINT);
CREATE TABLE IF NOT EXISTS cgroups (cgroup VARCHAR PRIMARY KEY, runtime VARCHAR, container_id VARCHAR);
CREATE TABLE IF NOT EXISTS dict_comms (id INTEGER, name VARCHAR);
CREATE TABLE IF NOT EXISTS dict_netns (id INTEGER, inode BIGINT);
"""

# One row per socket as replay sees it; see replay.connections.SocketView.
_SOCKET_COLUMNS = """
    origin_pos BIGINT, origin_ord INTEGER, recording_id INTEGER, host VARCHAR, role VARCHAR,
    pid INTEGER, comm VARCHAR, netns BIGINT, local_ip VARCHAR, local_port INTEGER,
    remote_ip VARCHAR, remote_port INTEGER, known_ns BIGINT, opened_ns BIGINT, close_ns BIGINT,
    missing_ns BIGINT, source VARCHAR, note VARCHAR, bytes_sent BIGINT, bytes_received BIGINT
"""
_SOCKET_TABLES = f"""
CREATE TABLE IF NOT EXISTS sockets_closed ({_SOCKET_COLUMNS});
CREATE TABLE IF NOT EXISTS sockets_open ({_SOCKET_COLUMNS});
CREATE TABLE IF NOT EXISTS sock_refs (open_pos BIGINT, close_pos BIGINT, missing_pos BIGINT);
"""

# Dictionary ids are resolved in DuckDB (the comms and netns tables are copied whole); the
# source does as little per row as it can.
_EVENT_SELECT_SQLITE = """
SELECT position, recording_id, kind, mono_ns, pid, comm_id, netns_id, lower(hex(laddr)), lport,
       lower(hex(raddr)), rport, sock_id, bytes_sent, bytes_received, extra
FROM events WHERE position > ? AND position <= ?
"""
_EVENT_SELECT_POSTGRES = """
SELECT position, recording_id, kind, mono_ns, pid, comm_id, netns_id, encode(laddr, 'hex'), lport,
       encode(raddr, 'hex'), rport, sock_id, bytes_sent, bytes_received, extra::text
FROM events WHERE position > {after} AND position <= {upto} ORDER BY position
"""
_SNAPSHOT_SELECTS = {
    "snap_conn": (
        "SELECT position, netns, {hex_laddr}, lport, {hex_raddr}, rport, state, inode, uid, pid "
        "FROM snapshot_connections WHERE position > {after} AND position <= {upto}"
    ),
    "snap_proc": (
        "SELECT position, pid, ppid, comm, cmdline, cgroup, netns, start_mono_ns "
        "FROM snapshot_processes WHERE position > {after} AND position <= {upto}"
    ),
    "snap_ct": (
        "SELECT position, netns, {hex_orig_src}, {hex_orig_dst}, orig_sport, orig_dport, "
        "{hex_reply_src}, {hex_reply_dst}, reply_sport, reply_dport, status, tcp_state, ct_id, "
        "zone, mark FROM snapshot_conntrack WHERE position > {after} AND position <= {upto}"
    ),
}
_ADDRESS_COLUMNS = {
    "snap_conn": ("laddr", "raddr"),
    "snap_ct": ("orig_src", "orig_dst", "reply_src", "reply_dst"),
}


@dataclass
class SyncStats:
    events: int = 0
    seconds: float = 0.0
    rebuilt: bool = False


def cache_dir() -> Path:
    configured = os.environ.get("SCOPE_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "scope-recorder"


def default_mirror_path(store: LogStore) -> Path:
    """One mirror per log, named after where the log is (password left out)."""
    identity = store.location.display() if store.location.path is None else str(store.location.path)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
    return cache_dir() / f"mirror-{digest}.duckdb"


def log_fingerprint(reader: LogReader) -> str:
    """What tells one log from another at the same place: its first recording."""
    recordings = reader.recordings()
    if not recordings:
        return "empty"
    first = recordings[0]
    return f"{first.id}:{first.host_id}:{first.machine_id}:{first.started_wall_ns}"


@contextmanager
def connect(
    path: Path, read_only: bool, config: dict[str, Any] | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the mirror, waiting while another process holds its write lock."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        # The mirror holds what the log holds (command lines, peers): owner-only, like it.
        previous_umask = os.umask(0o077)
        try:
            con = duckdb.connect(
                str(path), read_only=read_only, config={**DUCKDB_SAFE_CONFIG, **(config or {})}
            )
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise QueryError(
                    f"cannot open the query mirror {path}: {_first_line(exc)}"
                ) from exc
            time.sleep(0.1)
        finally:
            os.umask(previous_umask)
    try:
        yield con
    finally:
        con.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class MirrorSync:
    """Brings one mirror up to the head of one log."""

    def __init__(self, store: LogStore, con: duckdb.DuckDBPyConnection) -> None:
        self.store = store
        self.con = con
        self.reader = LogReader(store)
        self.head = self.reader.head()

    @gc_paused()  # millions of short-lived rows and fold tuples, no reference cycles
    def run(self, signature: str) -> SyncStats:
        started = time.monotonic()
        stats = SyncStats()
        con = self.con
        con.execute(_SCHEMA + _SOCKET_TABLES)
        fingerprint = log_fingerprint(self.reader)
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        synced = int(meta.get("synced_position", 0))
        if (
            meta.get("format") != str(FORMAT)
            or meta.get("log") not in (None, fingerprint)
            or synced > self.head
            or (synced and not meta.get("fold_state"))  # the last sync could not keep its fold
        ):
            self._reset()
            synced, stats.rebuilt = 0, True
        con.execute("BEGIN")
        try:
            self._copy_small_tables()
            for after in range(synced, self.head, CHUNK_EVENTS):
                upto = min(after + CHUNK_EVENTS, self.head)
                self._copy_events(after, upto)
                self._copy_snapshots(after, upto)
                stats.events += upto - after
            self._update_cgroups()
            state_blob = meta.get("fold_state") if synced else None
            self._fold_sockets(synced, state_blob)
            self._set_meta(
                {
                    "format": str(FORMAT),
                    "log": fingerprint,
                    "synced_position": str(self.head),
                    "signature": signature,
                }
            )
            create_views(con)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        stats.seconds = time.monotonic() - started
        return stats

    def _reset(self) -> None:
        for table in ("meta", "ev", "addr", "clock", "recordings_raw", "losses_raw", "snap_conn", "dict_comms", "dict_netns",
                      "snap_proc", "snap_ct", "cgroups", "sockets_closed", "sockets_open", "sock_refs"):  # fmt: skip
            self.con.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
        self.con.execute(_SCHEMA + _SOCKET_TABLES)

    def _set_meta(self, values: dict[str, str]) -> None:
        for key, value in values.items():
            self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    # -- bulk copies -----------------------------------------------------------------------
    def _source_csv(
        self, sqlite_sql: str, params: tuple[Any, ...], postgres_sql: str, path: Path
    ) -> None:
        """Write the rows of a query on the log to a CSV file, without Python touching each."""
        if self.store.dialect == "postgresql":
            raw = self.store.engine.raw_connection()
            try:
                driver: Any = raw.driver_connection
                with (
                    driver.cursor() as cur,
                    path.open("wb") as out,
                    cur.copy(f"COPY ({postgres_sql}) TO STDOUT (FORMAT csv)") as copy,
                ):
                    for data in copy:
                        out.write(data)
                driver.rollback()
            finally:
                raw.close()
            return
        raw = self.store.engine.raw_connection()
        try:
            sqlite_conn: Any = raw.driver_connection
            cursor = sqlite_conn.execute(sqlite_sql, params)
            with path.open("w", newline="") as out:
                csv.writer(out, lineterminator="\n").writerows(cursor)
        finally:
            raw.close()

    def _insert(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        """Rows from Python into a mirror table. DuckDB's executemany costs about a
        millisecond a row; a CSV file costs a microsecond."""
        if not rows:
            return
        with tempfile.TemporaryDirectory(prefix="scope-mirror-") as tmp:
            path = Path(tmp) / f"{table}.csv"
            with path.open("w", newline="") as out:
                csv.writer(out, lineterminator="\n").writerows(rows)
            self._load_csv(table, path)

    def _load_csv(self, table: str, path: Path) -> None:
        if path.stat().st_size:
            self.con.execute(
                f"COPY {table} FROM '{path}' (FORMAT csv, HEADER false, NULL '', QUOTE '\"', ESCAPE '\"', DELIM ',', AUTO_DETECT false)"
            )

    def _copy_events(self, after: int, upto: int) -> None:
        con = self.con
        con.execute(
            "CREATE OR REPLACE TEMP TABLE ev_stage (position BIGINT, recording_id INTEGER, "
            "kind SMALLINT, mono_ns BIGINT, pid INTEGER, comm_id INTEGER, netns_id INTEGER, laddr VARCHAR, "
            "lport INTEGER, raddr VARCHAR, rport INTEGER, sock_id BIGINT, bytes_sent BIGINT, "
            "bytes_received BIGINT, extra VARCHAR)"
        )
        with tempfile.TemporaryDirectory(prefix="scope-mirror-") as tmp:
            path = Path(tmp) / "events.csv"
            self._source_csv(
                _EVENT_SELECT_SQLITE,
                (after, upto),
                _EVENT_SELECT_POSTGRES.format(after=after, upto=upto),
                path,
            )
            self._load_csv("ev_stage", path)
        self._learn_addresses("SELECT laddr FROM ev_stage UNION SELECT raddr FROM ev_stage")
        con.execute(
            """
            INSERT INTO ev
            SELECT s.position, s.recording_id, s.kind, s.mono_ns,
                   s.mono_ns + coalesce(c.offset_ns, f.first_offset),
                   s.pid, d.name, n.inode, a1.text, s.lport, a2.text, s.rport, s.sock_id,
                   s.bytes_sent, s.bytes_received, s.extra::JSON, a1.family
            FROM ev_stage s
            ASOF LEFT JOIN clock c ON s.recording_id = c.recording_id AND s.mono_ns >= c.mono_ns
            LEFT JOIN (SELECT recording_id, arg_min(offset_ns, mono_ns) AS first_offset
                       FROM clock GROUP BY recording_id) f ON f.recording_id = s.recording_id
            LEFT JOIN addr a1 ON a1.hex = s.laddr
            LEFT JOIN addr a2 ON a2.hex = s.raddr
            LEFT JOIN dict_comms d ON d.id = s.comm_id
            LEFT JOIN dict_netns n ON n.id = s.netns_id
            ORDER BY s.position
            """
        )
        con.execute("DROP TABLE ev_stage")

    def _copy_snapshots(self, after: int, upto: int) -> None:
        hexes = {
            "sqlite": {
                f"hex_{c}": f"lower(hex({c}))"
                for c in ("laddr", "raddr", "orig_src", "orig_dst", "reply_src", "reply_dst")
            },
            "postgresql": {
                f"hex_{c}": f"encode({c}, 'hex')"
                for c in ("laddr", "raddr", "orig_src", "orig_dst", "reply_src", "reply_dst")
            },
        }
        for table, template in _SNAPSHOT_SELECTS.items():
            described = self.con.execute(f"DESCRIBE {table}").fetchall()
            columns = [row[0] for row in described]
            types = {row[0]: row[1] for row in described}
            stage = f"{table}_stage"
            self.con.execute(
                f"CREATE OR REPLACE TEMP TABLE {stage} ({', '.join(f'{c} {types[c]}' for c in columns)})"
            )
            with tempfile.TemporaryDirectory(prefix="scope-mirror-") as tmp:
                path = Path(tmp) / f"{table}.csv"
                sqlite_sql = template.format(after="?", upto="?", **hexes["sqlite"])
                postgres_sql = template.format(after=after, upto=upto, **hexes["postgresql"])
                self._source_csv(sqlite_sql, (after, upto), postgres_sql, path)
                self._load_csv(stage, path)
            address_columns = _ADDRESS_COLUMNS.get(table, ())
            if address_columns:
                self._learn_addresses(
                    " UNION ".join(f"SELECT {c} FROM {stage}" for c in address_columns)
                )
            select = ", ".join(
                f"(SELECT text FROM addr WHERE hex = {stage}.{c})" if c in address_columns else c
                for c in columns
            )
            self.con.execute(f"INSERT INTO {table} SELECT {select} FROM {stage}")
            self.con.execute(f"DROP TABLE {stage}")

    def _learn_addresses(self, distinct_sql: str) -> None:
        """Address text as replay writes it, for every new address (there are few)."""
        new = self.con.execute(
            f"SELECT DISTINCT h FROM ({distinct_sql}) t(h) WHERE h IS NOT NULL AND h NOT IN (SELECT hex FROM addr)"
        ).fetchall()
        rows = []
        for (hex_text,) in new:
            raw = bytes.fromhex(hex_text)
            rows.append((hex_text, address_text(raw), "inet" if len(raw) == 4 else "inet6"))
        if rows:
            self._insert("addr", rows)

    def _copy_small_tables(self) -> None:
        """Recordings, losses, clock samples, dictionaries: small, copied whole each time."""
        con, reader = self.con, self.reader
        for table, source in (
            ("dict_comms", "SELECT id, name FROM comms"),
            ("dict_netns", "SELECT id, inode FROM netns"),
        ):
            con.execute(f"DELETE FROM {table}")
            self._insert(table, [tuple(row) for row in reader._fetch(source)])
        con.execute("DELETE FROM recordings_raw")
        recordings = reader.recordings()
        self._insert(
            "recordings_raw",
            [
                (
                    r.id,
                    r.host_id,
                    r.machine_id,
                    r.boot_id,
                    r.kernel_release,
                    r.tool_version,
                    r.mode,
                    r.started_mono_ns,
                    r.started_wall_ns,
                    r.last_mono_ns,
                    r.stopped_mono_ns,
                    r.stop_reason,
                    r.stop_detail,
                    r.conntrack,
                )
                for r in recordings
            ],
        )
        con.execute("DELETE FROM losses_raw")
        self._insert(
            "losses_raw",
            [
                (
                    x.id,
                    x.recording_id,
                    x.lost,
                    x.first_wall_ns,
                    x.last_wall_ns,
                    x.after_position,
                    x.reason,
                )
                for x in reader.losses()
            ],
        )
        con.execute("DELETE FROM clock")
        samples = [
            (recording.id, mono, offset)
            for recording in recordings
            for mono, offset in reader.clock(recording.id).segments()
        ]
        if samples:
            self._insert("clock", samples)

    def _update_cgroups(self) -> None:
        new = self.con.execute(
            "SELECT DISTINCT cgroup FROM snap_proc WHERE cgroup NOT IN (SELECT cgroup FROM cgroups)"
        ).fetchall()
        rows = []
        for (cgroup,) in new:
            container = container_of(cgroup)
            rows.append(
                (
                    cgroup,
                    container.runtime if container else None,
                    container.id if container else None,
                )
            )
        if rows:
            self._insert("cgroups", rows)

    # -- sockets, by replay's own fold -----------------------------------------------------
    def _fold_sockets(self, synced: int, state_blob: str | None) -> None:
        state = ReplayState.from_bytes(bytes.fromhex(state_blob)) if state_blob else ReplayState()
        runs = native.open_run_reader(self.reader.store)  # the fold's C loops, on SQLite
        fold = Fold(state, self.reader, retain=True, runs=runs)
        for recording_id, first, last in _recording_runs(self.reader.batches(synced, self.head)):
            after = max(first - 1, synced)
            if runs is not None:
                _, after = fold.apply_runs(recording_id, runs, after, last)
            for rows in self.reader.narrow_pages(after, last):
                fold.apply(recording_id, rows)
            if len(fold.retained.pairs) + len(fold.retained.closed) > 200_000:
                self._store_closed(fold.retained)
                fold.retained = Retained()
        self._store_closed(fold.retained)
        self._store_open(fold.state)
        try:
            encoded = fold.state.to_bytes().hex()
        except ValueError:
            encoded = ""  # a foreign log's odd socket ids: the next sync folds from the start
        self._set_meta({"fold_state": encoded})

    def _store_closed(self, retained: Retained) -> None:
        by_events: list[tuple[int, int | None, int | None]] = [
            (o, c, None) for o, c in retained.pairs
        ]
        by_events += [(c.ref.open_position, c.close_position, c.missing_at) for c in retained.closed
                     if c.ref.open_position is not None]  # fmt: skip
        others = [c for c in retained.closed if c.ref.open_position is None]
        self._insert_event_sockets("sockets_closed", by_events)
        self._insert_python_sockets("sockets_closed", others)

    def _store_open(self, state: ReplayState) -> None:
        self.con.execute("DELETE FROM sockets_open")
        refs: list[tuple[int, int | None, int | None]] = [
            (p, None, None) for p in sorted(state.open_positions())
        ]
        refs += [(p, None, missed) for p, missed in sorted(state.missing_entries())]
        self._insert_event_sockets("sockets_open", refs)
        snapshot_sockets = [
            Closed(SocketRef(None, p, key), None)
            for key, p in sorted(state.snapshot_sockets.items())
        ]
        self._insert_python_sockets("sockets_open", snapshot_sockets)

    def _insert_event_sockets(
        self, table: str, refs: list[tuple[int, int | None, int | None]]
    ) -> None:
        """Sockets opened by an event: every column comes from the mirrored events."""
        if not refs:
            return
        self.con.execute("DELETE FROM sock_refs")
        self._insert("sock_refs", refs)
        self.con.execute(
            f"""
            INSERT INTO {table}
            SELECT o.position, 0, o.recording_id, coalesce(r.host, '?'),
                   CASE WHEN o.kind = 1 THEN 'client' ELSE 'server' END,
                   CASE WHEN o.pid IS NULL AND c.pid IS NOT NULL THEN c.pid ELSE o.pid END,
                   CASE WHEN o.pid IS NULL AND c.pid IS NOT NULL THEN c.comm ELSE o.comm END,
                   o.netns, o.laddr, o.lport, o.raddr, o.rport,
                   o.wall_ns, o.wall_ns, c.wall_ns, m.wall_ns,
                   CASE WHEN json_extract_string(o.extra, '$.source') = 'proc' THEN 'proc' ELSE 'events' END,
                   NULL,
                   c.bytes_sent, c.bytes_received
            FROM sock_refs s
            JOIN ev o ON o.position = s.open_pos
            LEFT JOIN ev c ON c.position = s.close_pos
            LEFT JOIN ev m ON m.position = s.missing_pos
            LEFT JOIN recordings_raw r ON r.id = o.recording_id
            """
        )

    def _insert_python_sockets(self, table: str, items: list[Closed]) -> None:
        """Sockets known from snapshots or only by their close: few, made as replay makes them."""
        if not items:
            return
        materializer = _Materializer(self.reader, Window(0, 0, ReplayState(), Retained()))
        rows = []
        for item in items:
            view = (
                materializer.closed(item)
                if (item.close_position or item.missing_at)
                else (materializer.opened(item.ref, None))
            )
            if view is None:
                continue
            rows.append(
                (view.origin[0], view.origin[1], view.recording_id, view.host_id, view.role, view.pid,
                 view.comm, view.netns, address_text(view.laddr), view.lport, address_text(view.raddr),
                 view.rport, view.known_ns, view.opened_ns, view.close_event_ns, view.missing_ns,
                 view.source, view.close_note if view.close_note == CLOSE_ONLY_NOTE else None,
                 view.bytes_sent, view.bytes_received)
            )  # fmt: skip
        self._insert(table, rows)


def _recording_runs(spans: list[Any]) -> Iterator[tuple[int, int, int]]:
    """(recording, first, last) of consecutive batches of one recording: read in big pages."""
    run: list[int] | None = None
    for span in spans:
        if run is not None and run[0] == span.recording_id and run[2] + 1 == span.first_position:
            run[2] = span.last_position
            continue
        if run is not None:
            yield run[0], run[1], run[2]
        run = [span.recording_id, span.first_position, span.last_position]
    if run is not None:
        yield run[0], run[1], run[2]


def log_signature(reader: LogReader) -> str:
    """What the mirror must match to be current: the head, the recordings' state, the counts
    of the small tables. Cheap to compute, so an up-to-date mirror costs almost nothing."""
    recordings = [(r.id, r.stop_reason, r.stopped_mono_ns) for r in reader.recordings()]
    losses = len(reader.losses())
    clocks = sum(len(reader.clock(r[0])) for r in recordings)
    views = hashlib.sha256(VIEWS_SQL.encode()).hexdigest()[:12]
    payload = (
        f"{FORMAT}|{views}|{reader.head()}|{log_fingerprint(reader)}|{recordings}|{losses}|{clocks}"
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _current_signature(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        with connect(path, read_only=True) as con:
            row = con.execute("SELECT value FROM meta WHERE key = 'signature'").fetchone()
    except (duckdb.Error, QueryError):
        return None
    return str(row[0]) if row else None


@contextmanager
def current_mirror(
    store: LogStore, path: Path, config: dict[str, Any] | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to the mirror of ``store``, brought up to date first if needed.

    An up-to-date mirror is opened once: its signature is read on the connection that then
    runs the query.
    """
    signature = log_signature(LogReader(store))
    if path.exists():
        with connect(path, read_only=True, config=config) as con:
            try:
                row = con.execute("SELECT value FROM meta WHERE key = 'signature'").fetchone()
            except duckdb.Error:
                row = None
            if row is not None and row[0] == signature:
                yield con
                return
    sync_mirror(store, path, signature)
    with connect(path, read_only=True, config=config) as con:
        yield con


def sync_mirror(store: LogStore, path: Path, signature: str | None = None) -> SyncStats:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        signature = signature or log_signature(LogReader(store))
        if _current_signature(path) == signature:
            return SyncStats()
        with connect(path, read_only=False) as con:
            return MirrorSync(store, con).run(signature)
    except duckdb.Error as exc:
        raise QueryError(
            f"could not bring the query mirror up to date: {_first_line(exc)}"
        ) from exc
    except LogError:
        raise


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(VIEWS_SQL)
