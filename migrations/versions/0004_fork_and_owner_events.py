"""Sockets followed from process to process: events of kinds 12 (FORK) and 13 (OWNER).

A FORK says a process (not a thread) forked a child, which holds every socket its parent
held; an OWNER says a socket was closed by a process other than the one its open event names
(it had moved to that process: a forked child, or one it was passed to over a unix socket).
Replay derives from them which process held a socket at each moment. No table changes: the
revision exists so that a tool that does not know these kinds refuses the log (it names a
revision that tool lacks) rather than misreads it. Older logs hold neither kind and read as
before: each socket is its opening process's.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing to change in the tables: older logs hold no fork or owner events."""


def downgrade() -> None:
    """Nothing either: the events stay (removing them would leave gaps in the positions)."""
