"""Snapshots stored as their changes: the ``snapshot_deltas`` table and ``gone`` rows.

A /proc snapshot lists every socket and process of the host, and successive snapshots of a
recording are nearly all alike (on the benchmark log, 97.5% of the socket rows and 99.6% of
the process rows of a snapshot are in the one before). From this revision a writer may store
a snapshot as its changes from its recording's snapshot before (``snapshot_deltas``: the
snapshot at ``position`` is its ``base_position`` snapshot with the rows marked ``gone``
taken out and its other rows added), and stores one whole now and then, so that a reader
never follows many. Readers give every snapshot back whole (eventlog.snapshots). A snapshot
without a ``snapshot_deltas`` row is whole, as every snapshot of an older log is.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_SNAPSHOT_TABLES = ("snapshot_connections", "snapshot_processes", "snapshot_conntrack")


def upgrade() -> None:
    op.create_table(
        "snapshot_deltas",
        sa.Column(
            "position",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("base_position", sa.BigInteger, nullable=False),
    )
    for table in _SNAPSHOT_TABLES:
        op.add_column(table, sa.Column("gone", sa.SmallInteger))


def downgrade() -> None:
    """Only a log holding no snapshot stored as changes can go back: an older version would
    read such a snapshot as only its changes."""
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT count(*) FROM snapshot_deltas")).scalar():
        raise RuntimeError("the log holds snapshots stored as changes: it cannot be downgraded")
    for table in _SNAPSHOT_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("gone")
    op.drop_table("snapshot_deltas")
