"""The derived store's tables (DuckDB): the log's content decoded, and the intervals folded
from it.

Three groups, all rebuilt from the log alone:

- copies of the log, decoded: events (``ev``) with wall time, names and addresses as text;
  snapshot rows; recordings, losses, clock segments and batches. Addresses and socket
  tuples get small ids (``addr``, ``tuples``) as they are first seen, so that the fold
  compares integers.
- conntrack, one row per sighting of an entry: a CT_* event or a dump in a snapshot.
- intervals (replay.fold's output, materialised): sockets, processes and conntrack entries,
  each from the position that made it known to the position that ended it. Those still open
  at the log's head are in the ``*_open`` tables, replaced at every sync; the fold's state at
  the head is kept in the ``state_*`` tables so that the next sync folds only new events.

``FORMAT`` changes whenever a table or its meaning does: a store of another format is rebuilt.
"""

from __future__ import annotations

FORMAT = 1

SOCKET_COLUMNS = """
    origin_pos BIGINT, origin_ord INTEGER, recording_id INTEGER, host VARCHAR, role VARCHAR,
    pid INTEGER, comm VARCHAR, netns BIGINT, local_ip VARCHAR, local_port INTEGER,
    remote_ip VARCHAR, remote_port INTEGER, loopback BOOLEAN,
    known_ns BIGINT, opened_ns BIGINT, known_pos BIGINT,
    close_ns BIGINT, close_pos BIGINT, close_pid INTEGER, close_comm VARCHAR,
    bytes_sent BIGINT, bytes_received BIGINT,
    missing_ns BIGINT, missing_pos BIGINT, source VARCHAR, close_only BOOLEAN
"""

PROCESS_COLUMNS = """
    recording_id INTEGER, host VARCHAR, pid INTEGER, source_pos BIGINT, start_ns BIGINT,
    end_ns BIGINT, comm VARCHAR, ppid INTEGER, cmdline VARCHAR, cgroup VARCHAR, netns BIGINT
"""

NAT_COLUMNS = """
    recording_id INTEGER, netns BIGINT, ct_id BIGINT, source_pos BIGINT, start_ns BIGINT,
    end_ns BIGINT, orig_src VARCHAR, orig_sport INTEGER, orig_dst VARCHAR, orig_dport INTEGER,
    reply_src VARCHAR, reply_sport INTEGER, reply_dst VARCHAR, reply_dport INTEGER,
    status INTEGER
"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);

CREATE TABLE IF NOT EXISTS recordings_raw (
    id INTEGER, host VARCHAR, machine_id VARCHAR, boot_id VARCHAR, kernel VARCHAR,
    version VARCHAR, mode VARCHAR, recorder_pid INTEGER, root_netns BIGINT,
    started_mono_ns BIGINT, started_wall_ns BIGINT, last_mono_ns BIGINT, stopped_mono_ns BIGINT,
    stop_reason VARCHAR, stop_detail VARCHAR, conntrack VARCHAR, options JSON, counters JSON);
CREATE TABLE IF NOT EXISTS losses_raw (
    id INTEGER, recording_id INTEGER, lost BIGINT, first_mono_ns BIGINT, last_mono_ns BIGINT,
    first_wall_ns BIGINT, last_wall_ns BIGINT, after_position BIGINT, reason VARCHAR);
CREATE TABLE IF NOT EXISTS clock (recording_id INTEGER, mono_ns BIGINT, offset_ns BIGINT);
CREATE TABLE IF NOT EXISTS batches (
    first_position BIGINT, last_position BIGINT, recording_id INTEGER, min_wall_ns BIGINT,
    max_wall_ns BIGINT);
CREATE TABLE IF NOT EXISTS dict_comms (id INTEGER, name VARCHAR);
CREATE TABLE IF NOT EXISTS dict_netns (id INTEGER, inode BIGINT);

CREATE TABLE IF NOT EXISTS addr (
    id INTEGER PRIMARY KEY, raw BLOB, text VARCHAR, family VARCHAR, loopback BOOLEAN,
    unspecified BOOLEAN);
CREATE TABLE IF NOT EXISTS tuples (
    id INTEGER PRIMARY KEY, netns BIGINT, laddr INTEGER, lport INTEGER, raddr INTEGER,
    rport INTEGER);

CREATE TABLE IF NOT EXISTS ev (
    position BIGINT, recording_id INTEGER, kind SMALLINT, mono_ns BIGINT, wall_ns BIGINT,
    pid INTEGER, comm VARCHAR, netns BIGINT, laddr VARCHAR, lport INTEGER, raddr VARCHAR,
    rport INTEGER, sock_id BIGINT, bytes_sent BIGINT, bytes_received BIGINT, extra JSON,
    family VARCHAR, tuple_id INTEGER);
CREATE TABLE IF NOT EXISTS snap_conn (
    position BIGINT, ordinal INTEGER, netns BIGINT, laddr VARCHAR, lport INTEGER,
    raddr VARCHAR, rport INTEGER, state SMALLINT, inode BIGINT, uid INTEGER, pid INTEGER,
    tuple_id INTEGER);
CREATE TABLE IF NOT EXISTS snap_proc (
    position BIGINT, pid INTEGER, ppid INTEGER, comm VARCHAR, cmdline VARCHAR, cgroup VARCHAR,
    netns BIGINT, start_mono_ns BIGINT);
CREATE TABLE IF NOT EXISTS conntrack_raw (
    position BIGINT, recording_id INTEGER, wall_ns BIGINT, change VARCHAR, netns BIGINT,
    orig_src VARCHAR, orig_sport INTEGER, orig_dst VARCHAR, orig_dport INTEGER,
    reply_src VARCHAR, reply_sport INTEGER, reply_dst VARCHAR, reply_dport INTEGER,
    status INTEGER, tcp_state SMALLINT, ct_id BIGINT, zone INTEGER, mark BIGINT);

CREATE TABLE IF NOT EXISTS socket_iv ({SOCKET_COLUMNS});
CREATE TABLE IF NOT EXISTS socket_iv_open ({SOCKET_COLUMNS});
CREATE TABLE IF NOT EXISTS process_iv ({PROCESS_COLUMNS});
CREATE TABLE IF NOT EXISTS process_iv_open ({PROCESS_COLUMNS});
CREATE TABLE IF NOT EXISTS nat_iv ({NAT_COLUMNS});
CREATE TABLE IF NOT EXISTS nat_iv_open ({NAT_COLUMNS});

CREATE TABLE IF NOT EXISTS state_sockets (recording_id INTEGER, key BIGINT, open_pos BIGINT);
CREATE TABLE IF NOT EXISTS state_missing (
    recording_id INTEGER, key BIGINT, open_pos BIGINT, missed_pos BIGINT);
CREATE TABLE IF NOT EXISTS state_snapshot_sockets (
    recording_id INTEGER, tuple_id INTEGER, snapshot_pos BIGINT);
CREATE TABLE IF NOT EXISTS state_processes (recording_id INTEGER, pid BIGINT, source_pos BIGINT);
CREATE TABLE IF NOT EXISTS state_conntrack (
    recording_id INTEGER, netns BIGINT, ct_id BIGINT, source_pos BIGINT);
"""

TABLES = (
    "meta", "recordings_raw", "losses_raw", "clock", "batches", "dict_comms", "dict_netns",
    "addr", "tuples", "ev", "snap_conn", "snap_proc", "conntrack_raw", "socket_iv",
    "socket_iv_open", "process_iv", "process_iv_open", "nat_iv", "nat_iv_open", "state_sockets",
    "state_missing", "state_snapshot_sockets", "state_processes", "state_conntrack",
)  # fmt: skip
