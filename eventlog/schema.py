"""The log's tables, as SQLAlchemy Core metadata.

This module describes the schema for queries; it never creates it. The schema belongs to the
Alembic migrations in ``migrations/versions`` and a test checks that both agree.

The events table is the one source of truth and is sized for hundreds of millions of rows:
no secondary index (the ``batches`` table maps time to positions), process names and network
namespace inodes stored through the small ``comms`` and ``netns`` dictionaries, wall time
derived from ``clock_samples`` rather than stored twice. Every batch of positions was
committed in one transaction, recorded as one ``batches`` row.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
)

metadata = MetaData()

# SQLite only makes a column the rowid (and so free and append-ordered) when its type is
# spelled exactly INTEGER; PostgreSQL needs 64 bits.
Position = BigInteger().with_variant(Integer(), "sqlite")
# Plain JSON (not JSONB) in PostgreSQL: it keeps the text exactly as written, so both backends
# hand back byte-identical documents.
Json = JSON()

log_meta = Table(
    "log_meta",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

recordings = Table(
    "recordings",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host_id", Text, nullable=False),  # host name: Scope's host node id
    Column("machine_id", Text),
    Column("boot_id", Text),
    Column("kernel_release", Text),
    Column("tool_version", Text, nullable=False),
    Column("mode", Text, nullable=False),  # "ebpf" or "proc"
    Column("recorder_pid", Integer),
    Column("root_netns", BigInteger),
    Column("started_mono_ns", BigInteger, nullable=False),
    Column("started_wall_ns", BigInteger, nullable=False),
    Column("last_mono_ns", BigInteger),  # advanced with every committed batch
    Column("stopped_mono_ns", BigInteger),
    Column("stop_reason", Text),  # NULL while running or if it died without closing
    Column("stop_detail", Text),
    Column("conntrack", Text),  # "captured", or why it was not
    Column("options", Json),
    Column("counters", Json),  # at stop: events staged in the kernel, received, lost, ...
)

clock_samples = Table(
    "clock_samples",
    metadata,
    Column("recording_id", Integer, primary_key=True),
    Column("mono_ns", BigInteger, primary_key=True),
    Column("offset_ns", BigInteger, nullable=False),  # wall = mono + offset
    Column("uncertainty_ns", BigInteger, nullable=False),
)

comms = Table(
    "comms",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
)

netns = Table(
    "netns",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("inode", BigInteger, nullable=False, unique=True),
)

events = Table(
    "events",
    metadata,
    Column("position", Position, primary_key=True, autoincrement=False),
    Column("recording_id", Integer, nullable=False),
    Column("kind", SmallInteger, nullable=False),
    Column("mono_ns", BigInteger, nullable=False),
    Column("pid", Integer),
    Column("comm_id", Integer),
    Column("netns_id", Integer),
    Column("laddr", LargeBinary),
    Column("lport", Integer),
    Column("raddr", LargeBinary),
    Column("rport", Integer),
    Column("sock_id", BigInteger),
    Column("bytes_sent", BigInteger),
    Column("bytes_received", BigInteger),
    Column("extra", Json),
)

EVENT_COLUMNS = tuple(c.name for c in events.columns)

batches = Table(
    "batches",
    metadata,
    Column("last_position", Position, primary_key=True, autoincrement=False),
    Column("first_position", BigInteger, nullable=False),
    Column("recording_id", Integer, nullable=False),
    Column("min_mono_ns", BigInteger, nullable=False),
    Column("max_mono_ns", BigInteger, nullable=False),
    Column("min_wall_ns", BigInteger, nullable=False),
    Column("max_wall_ns", BigInteger, nullable=False),
    Index("ix_batches_min_wall", "min_wall_ns"),
)

snapshot_connections = Table(
    "snapshot_connections",
    metadata,
    Column("position", BigInteger, nullable=False),
    Column("netns", BigInteger, nullable=False),
    Column("laddr", LargeBinary, nullable=False),
    Column("lport", Integer, nullable=False),
    Column("raddr", LargeBinary, nullable=False),
    Column("rport", Integer, nullable=False),
    Column("state", SmallInteger, nullable=False),
    Column("inode", BigInteger, nullable=False),
    Column("uid", Integer, nullable=False),
    Column("pid", Integer),
    Column("gone", SmallInteger),  # 1: a row of a snapshot stored as changes that went
    Index("ix_snapshot_connections_position", "position"),
)

snapshot_processes = Table(
    "snapshot_processes",
    metadata,
    Column("position", BigInteger, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("ppid", Integer, nullable=False),
    Column("comm", Text, nullable=False),
    Column("cmdline", Text, nullable=False),
    Column("cgroup", Text, nullable=False),
    Column("netns", BigInteger),
    Column("start_mono_ns", BigInteger, nullable=False),
    Column("gone", SmallInteger),  # 1: a row of a snapshot stored as changes that went
    Index("ix_snapshot_processes_position", "position"),
)

snapshot_conntrack = Table(
    "snapshot_conntrack",
    metadata,
    Column("position", BigInteger, nullable=False),
    Column("netns", BigInteger, nullable=False),
    Column("orig_src", LargeBinary, nullable=False),
    Column("orig_dst", LargeBinary, nullable=False),
    Column("orig_sport", Integer, nullable=False),
    Column("orig_dport", Integer, nullable=False),
    Column("reply_src", LargeBinary, nullable=False),
    Column("reply_dst", LargeBinary, nullable=False),
    Column("reply_sport", Integer, nullable=False),
    Column("reply_dport", Integer, nullable=False),
    Column("status", Integer, nullable=False),
    Column("tcp_state", SmallInteger, nullable=False),
    Column("ct_id", BigInteger, nullable=False),
    Column("zone", Integer, nullable=False),
    Column("mark", BigInteger, nullable=False),
    Column("gone", SmallInteger),  # 1: a row of a snapshot stored as changes that went
    Index("ix_snapshot_conntrack_position", "position"),
)

# A snapshot stored as its changes from its recording's snapshot at ``base_position``: that
# one's rows, less those of its rows marked ``gone``, with its other rows added. A snapshot
# with no row here is whole (eventlog.snapshots).
snapshot_deltas = Table(
    "snapshot_deltas",
    metadata,
    Column("position", Position, primary_key=True, autoincrement=False),
    Column("base_position", BigInteger, nullable=False),
)

losses = Table(
    "losses",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("recording_id", Integer, nullable=False),
    Column("lost", BigInteger, nullable=False),
    Column("first_mono_ns", BigInteger, nullable=False),
    Column("last_mono_ns", BigInteger, nullable=False),
    Column("first_wall_ns", BigInteger, nullable=False),
    Column("last_wall_ns", BigInteger, nullable=False),
    Column("after_position", BigInteger, nullable=False),  # last position before it was seen
    Column("reason", Text, nullable=False),
)

SCHEMA_TABLES = tuple(metadata.tables)
