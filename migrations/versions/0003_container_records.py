"""Container records: events of kind 11 (CONTAINER), and EXECs that carry their cgroup id.

What a container runtime says of its containers (id, name, image, labels, first process,
network namespace, cgroup) is appended as events of a new kind, with the record in the
event's ``extra``; an EXEC's ``extra`` gains ``cgroup_id``. No table changes: the revision
exists so that a tool that does not know the kind refuses the log (it names a revision that
tool lacks) rather than misreads it, and so that ``db upgrade`` says which logs may hold them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing to change in the tables: older logs hold no container records."""


def downgrade() -> None:
    """Nothing either: the records stay (removing them would leave gaps in the positions)."""
