"""The derived store's tables (DuckDB): the log's content decoded, and the intervals folded
from it.

Three groups, all rebuilt from the log alone:

- copies of the log: events (``ev``) with their wall time, snapshot processes and
  conntrack sightings (a CT_* event or a row of a snapshot's dump); the forks, exits and
  OWNER events again in small tables of their own, for the holders of sockets, with the
  holders the snapshots showed where they changed (``snap_holders``); recordings, losses,
  clock segments, batches and the log's name and namespace dictionaries. Addresses get
  small ids (``addr``, with their text and kind), so that the fold compares integers. An
  event carries its names in words too (its process name, namespace inode, addresses as
  text): a query over ``events`` then joins no dictionary for every row it reads.
  Snapshot connections are not copied: the fold reads them as they pass, and the few a
  socket is known by are read back from the log.
- intervals (replay.fold's output): sockets, processes and NAT entries, each from the
  position that made it known to the position that ended it. Most sockets are a pair of an
  open and a close event and nothing else (``pairs_*``: their positions and times; the rest
  is in the two events). The others (long-lived ones, those /proc showed or a snapshot
  missed) are whole rows (``socket_*``). Both are kept by how long the socket lived
  (``*_short``: up to ``SHORT_NS``; ``*_long``), in about the order they became known, so
  that the sockets of a moment are read from a few row groups. What is open at the log's
  head is in the ``*_open`` tables, replaced at every sync.
- the fold's state at the head (``state_*``), so that the next sync folds only new events.

``FORMAT`` changes whenever a table or its meaning does: a store of another format is rebuilt.
"""

from __future__ import annotations

from eventlog.addresses import FAMILIES

FORMAT = 7
SHORT_NS = 60 * 1_000_000_000


def exec_command_line(event: str) -> str:
    """SQL: the command line of the EXEC row ``event`` (an alias of ``ev``): what the
    programs read of its memory, else (an older log, or --redact-cmdline) its program."""
    return (
        f"coalesce(json_extract_string({event}.extra, '$.cmdline'), "
        f"json_extract_string({event}.extra, '$.filename'))"
    )


_FAMILIES = ", ".join(f"'{name}'" for name in FAMILIES)

SOCKET_COLUMNS = """
    origin_pos BIGINT, origin_ord INTEGER, recording_id INTEGER, is_server BOOLEAN,
    pid INTEGER, comm VARCHAR, netns BIGINT, laddr INTEGER, lport INTEGER, raddr INTEGER,
    rport INTEGER, known_ns BIGINT, opened_ns BIGINT, close_ns BIGINT, close_pos BIGINT,
    close_pid INTEGER, close_comm VARCHAR, bytes_sent BIGINT, bytes_received BIGINT,
    missing_ns BIGINT, missing_pos BIGINT, source VARCHAR, close_only BOOLEAN, sock_id BIGINT
"""
SOCKET_TABLES = ("socket_short", "socket_long", "socket_open")
PAIR_COLUMNS = "open_pos BIGINT, close_pos BIGINT, known_ns BIGINT, close_ns BIGINT"

PROCESS_COLUMNS = """
    recording_id INTEGER, pid INTEGER, source_pos BIGINT, start_ns BIGINT, end_ns BIGINT,
    comm VARCHAR, ppid INTEGER, cmdline VARCHAR, cgroup VARCHAR, netns BIGINT, cgroup_id BIGINT,
    cgroup_v1_id BIGINT
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
    stop_reason VARCHAR, stop_detail VARCHAR, conntrack VARCHAR, options JSON, counters JSON,
    stopped_wall_ns BIGINT, ended_wall_ns BIGINT);
CREATE TABLE IF NOT EXISTS losses_raw (
    id INTEGER, recording_id INTEGER, lost BIGINT, first_mono_ns BIGINT, last_mono_ns BIGINT,
    first_wall_ns BIGINT, last_wall_ns BIGINT, after_position BIGINT, reason VARCHAR);
CREATE TABLE IF NOT EXISTS clock (recording_id INTEGER, mono_ns BIGINT, offset_ns BIGINT);
CREATE TABLE IF NOT EXISTS batches (
    first_position BIGINT, last_position BIGINT, recording_id INTEGER, min_wall_ns BIGINT,
    max_wall_ns BIGINT);
CREATE TABLE IF NOT EXISTS dict_comms (id INTEGER, name VARCHAR);
CREATE TABLE IF NOT EXISTS dict_netns (id INTEGER, inode BIGINT);

-- A family is one of two words: kept as a byte, shown as the word.
CREATE TYPE IF NOT EXISTS family AS ENUM ({_FAMILIES});
CREATE TABLE IF NOT EXISTS addr (
    id INTEGER PRIMARY KEY, raw BLOB, text VARCHAR, family family, loopback BOOLEAN,
    unspecified BOOLEAN);

CREATE TABLE IF NOT EXISTS ev (
    position BIGINT, recording_id INTEGER, kind SMALLINT, mono_ns BIGINT, wall_ns BIGINT,
    pid INTEGER, comm VARCHAR, netns BIGINT, laddr INTEGER, lport INTEGER,
    raddr INTEGER, rport INTEGER, sock_id BIGINT, bytes_sent BIGINT, bytes_received BIGINT,
    extra JSON, family family, laddr_text VARCHAR, raddr_text VARCHAR);
CREATE TABLE IF NOT EXISTS snap_marks (
    position BIGINT, recording_id INTEGER, wall_ns BIGINT, mono_ns BIGINT, extra JSON,
    connections BIGINT, processes BIGINT, conntrack_entries BIGINT);
CREATE TABLE IF NOT EXISTS snap_proc (
    position BIGINT, pid INTEGER, ppid INTEGER, comm VARCHAR, cmdline VARCHAR, cgroup VARCHAR,
    netns BIGINT, start_mono_ns BIGINT);
CREATE TABLE IF NOT EXISTS conntrack_raw (
    position BIGINT, recording_id INTEGER, wall_ns BIGINT, change VARCHAR, netns BIGINT,
    orig_src VARCHAR, orig_sport INTEGER, orig_dst VARCHAR, orig_dport INTEGER,
    reply_src VARCHAR, reply_sport INTEGER, reply_dst VARCHAR, reply_dport INTEGER,
    status INTEGER, tcp_state SMALLINT, ct_id BIGINT, zone INTEGER, mark BIGINT);
-- What a socket's holders are derived from (replay.derived.owners): forks and exits of
-- processes, and closes of sockets by a process other than their opener (OWNER events).
CREATE TABLE IF NOT EXISTS forks (
    position BIGINT, recording_id INTEGER, pid INTEGER, ppid INTEGER, comm VARCHAR,
    wall_ns BIGINT);
CREATE TABLE IF NOT EXISTS exits (position BIGINT, recording_id INTEGER, pid INTEGER, wall_ns BIGINT);
CREATE TABLE IF NOT EXISTS owners (
    position BIGINT, recording_id INTEGER, sock_id BIGINT, pid INTEGER, comm VARCHAR,
    wall_ns BIGINT);
-- Which processes the /proc snapshots showed holding each connection's socket (by inode):
-- a row a holder (none: a row with no pid) at each snapshot where they differ from the
-- socket's snapshot before, its first included. The latest by a moment is what held it then.
CREATE TABLE IF NOT EXISTS snap_holders (
    position BIGINT, recording_id INTEGER, wall_ns BIGINT, netns BIGINT, laddr INTEGER,
    lport INTEGER, raddr INTEGER, rport INTEGER, inode BIGINT, pid INTEGER, comm VARCHAR);
CREATE TABLE IF NOT EXISTS cgroups (cgroup VARCHAR PRIMARY KEY, runtime VARCHAR, container_id VARCHAR);

CREATE TABLE IF NOT EXISTS pairs_short ({PAIR_COLUMNS});
CREATE TABLE IF NOT EXISTS pairs_long ({PAIR_COLUMNS});
CREATE TABLE IF NOT EXISTS socket_short ({SOCKET_COLUMNS});
CREATE TABLE IF NOT EXISTS socket_long ({SOCKET_COLUMNS});
CREATE TABLE IF NOT EXISTS socket_open ({SOCKET_COLUMNS});
CREATE TABLE IF NOT EXISTS process_iv ({PROCESS_COLUMNS});
CREATE TABLE IF NOT EXISTS process_open ({PROCESS_COLUMNS});
CREATE TABLE IF NOT EXISTS nat_iv ({NAT_COLUMNS});
CREATE TABLE IF NOT EXISTS nat_open ({NAT_COLUMNS});

CREATE TABLE IF NOT EXISTS state_sockets (recording_id INTEGER, key BIGINT, open_pos BIGINT);
CREATE TABLE IF NOT EXISTS state_missing (
    recording_id INTEGER, key BIGINT, open_pos BIGINT, missed_pos BIGINT);
CREATE TABLE IF NOT EXISTS state_snapshot_sockets (
    recording_id INTEGER, netns BIGINT, laddr INTEGER, lport INTEGER, raddr INTEGER,
    rport INTEGER, snapshot_pos BIGINT);
CREATE TABLE IF NOT EXISTS state_processes (recording_id INTEGER, pid BIGINT, source_pos BIGINT);
CREATE TABLE IF NOT EXISTS state_conntrack (
    recording_id INTEGER, netns BIGINT, ct_id BIGINT, source_pos BIGINT);
"""
