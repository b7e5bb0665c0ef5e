"""The initial log: recordings, clock samples, events, batches, snapshots, losses, checkpoints.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON()


def upgrade() -> None:
    op.create_table(
        "log_meta",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.bulk_insert(
        sa.table("log_meta", sa.column("key", sa.Text), sa.column("value", sa.Text)),
        [{"key": "format", "value": "scope-recorder-log"}],
    )
    op.create_table(
        "recordings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("host_id", sa.Text, nullable=False),
        sa.Column("machine_id", sa.Text),
        sa.Column("boot_id", sa.Text),
        sa.Column("kernel_release", sa.Text),
        sa.Column("tool_version", sa.Text, nullable=False),
        sa.Column("mode", sa.Text, nullable=False),
        sa.Column("recorder_pid", sa.Integer),
        sa.Column("root_netns", sa.BigInteger),
        sa.Column("started_mono_ns", sa.BigInteger, nullable=False),
        sa.Column("started_wall_ns", sa.BigInteger, nullable=False),
        sa.Column("last_mono_ns", sa.BigInteger),
        sa.Column("stopped_mono_ns", sa.BigInteger),
        sa.Column("stop_reason", sa.Text),
        sa.Column("stop_detail", sa.Text),
        sa.Column("conntrack", sa.Text),
        sa.Column("options", Json),
        sa.Column("counters", Json),
    )
    op.create_table(
        "clock_samples",
        sa.Column("recording_id", sa.Integer, primary_key=True),
        sa.Column("mono_ns", sa.BigInteger, primary_key=True),
        sa.Column("offset_ns", sa.BigInteger, nullable=False),
        sa.Column("uncertainty_ns", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "comms",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
    )
    op.create_table(
        "netns",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("inode", sa.BigInteger, nullable=False, unique=True),
    )
    op.create_table(
        "events",
        sa.Column("position", Position, primary_key=True, autoincrement=False),
        sa.Column("recording_id", sa.Integer, nullable=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("mono_ns", sa.BigInteger, nullable=False),
        sa.Column("pid", sa.Integer),
        sa.Column("comm_id", sa.Integer),
        sa.Column("netns_id", sa.Integer),
        sa.Column("laddr", sa.LargeBinary),
        sa.Column("lport", sa.Integer),
        sa.Column("raddr", sa.LargeBinary),
        sa.Column("rport", sa.Integer),
        sa.Column("sock_id", sa.BigInteger),
        sa.Column("bytes_sent", sa.BigInteger),
        sa.Column("bytes_received", sa.BigInteger),
        sa.Column("extra", Json),
    )
    op.create_table(
        "batches",
        sa.Column("last_position", Position, primary_key=True, autoincrement=False),
        sa.Column("first_position", sa.BigInteger, nullable=False),
        sa.Column("recording_id", sa.Integer, nullable=False),
        sa.Column("min_mono_ns", sa.BigInteger, nullable=False),
        sa.Column("max_mono_ns", sa.BigInteger, nullable=False),
        sa.Column("min_wall_ns", sa.BigInteger, nullable=False),
        sa.Column("max_wall_ns", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_batches_min_wall", "batches", ["min_wall_ns"])
    op.create_table(
        "snapshot_connections",
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("netns", sa.BigInteger, nullable=False),
        sa.Column("laddr", sa.LargeBinary, nullable=False),
        sa.Column("lport", sa.Integer, nullable=False),
        sa.Column("raddr", sa.LargeBinary, nullable=False),
        sa.Column("rport", sa.Integer, nullable=False),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("inode", sa.BigInteger, nullable=False),
        sa.Column("uid", sa.Integer, nullable=False),
        sa.Column("pid", sa.Integer),
    )
    op.create_index("ix_snapshot_connections_position", "snapshot_connections", ["position"])
    op.create_table(
        "snapshot_processes",
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("ppid", sa.Integer, nullable=False),
        sa.Column("comm", sa.Text, nullable=False),
        sa.Column("cmdline", sa.Text, nullable=False),
        sa.Column("cgroup", sa.Text, nullable=False),
        sa.Column("netns", sa.BigInteger),
        sa.Column("start_mono_ns", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_snapshot_processes_position", "snapshot_processes", ["position"])
    op.create_table(
        "snapshot_conntrack",
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("netns", sa.BigInteger, nullable=False),
        sa.Column("orig_src", sa.LargeBinary, nullable=False),
        sa.Column("orig_dst", sa.LargeBinary, nullable=False),
        sa.Column("orig_sport", sa.Integer, nullable=False),
        sa.Column("orig_dport", sa.Integer, nullable=False),
        sa.Column("reply_src", sa.LargeBinary, nullable=False),
        sa.Column("reply_dst", sa.LargeBinary, nullable=False),
        sa.Column("reply_sport", sa.Integer, nullable=False),
        sa.Column("reply_dport", sa.Integer, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("tcp_state", sa.SmallInteger, nullable=False),
        sa.Column("ct_id", sa.BigInteger, nullable=False),
        sa.Column("zone", sa.Integer, nullable=False),
        sa.Column("mark", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_snapshot_conntrack_position", "snapshot_conntrack", ["position"])
    op.create_table(
        "losses",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("recording_id", sa.Integer, nullable=False),
        sa.Column("lost", sa.BigInteger, nullable=False),
        sa.Column("first_mono_ns", sa.BigInteger, nullable=False),
        sa.Column("last_mono_ns", sa.BigInteger, nullable=False),
        sa.Column("first_wall_ns", sa.BigInteger, nullable=False),
        sa.Column("last_wall_ns", sa.BigInteger, nullable=False),
        sa.Column("after_position", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_table(
        "checkpoints",
        sa.Column("position", Position, primary_key=True, autoincrement=False),
        sa.Column("format", sa.Integer, nullable=False),
        sa.Column("max_wall_ns", sa.BigInteger, nullable=False),
        sa.Column("state", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "checkpoints",
        "losses",
        "snapshot_conntrack",
        "snapshot_processes",
        "snapshot_connections",
        "batches",
        "events",
        "netns",
        "comms",
        "clock_samples",
        "recordings",
        "log_meta",
    ):
        op.drop_table(table)
