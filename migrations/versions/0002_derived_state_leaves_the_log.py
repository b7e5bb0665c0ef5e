"""Derived state leaves the log; the log gets an identity.

Replay's checkpoints were folded state kept inside the log, written by read commands. The
reading engine now keeps everything it derives in a store of its own (replay.derived), so
the table goes. ``log_id`` in log_meta names this log (a random UUID, given once), so that a
derived store can tell it from another file later put at the same path.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_LOG_META = sa.table("log_meta", sa.column("key", sa.Text), sa.column("value", sa.Text))


def upgrade() -> None:
    op.drop_table("checkpoints")
    op.bulk_insert(_LOG_META, [{"key": "log_id", "value": str(uuid.uuid4())}])


def downgrade() -> None:
    op.execute(_LOG_META.delete().where(_LOG_META.c.key == "log_id"))
    op.create_table(
        "checkpoints",
        sa.Column(
            "position",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("format", sa.Integer, nullable=False),
        sa.Column("max_wall_ns", sa.BigInteger, nullable=False),
        sa.Column("state", sa.LargeBinary, nullable=False),
    )
