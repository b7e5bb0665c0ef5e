"""Alembic, driven from code: the schema of a log belongs to the migrations alone.

Opening a log only needs to know the revisions, which are listed here (a test holds this list
equal to the migration scripts); Alembic itself is imported only to migrate, which keeps the
commands that merely read a log quick to start.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text

import migrations

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

# Every revision in migrations/versions, oldest first. Append when adding a migration.
REVISIONS = ("0001", "0002", "0003", "0004", "0005")


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config  # noqa: PLC0415 - see the module docstring

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["connection"] = connection
    return config


def script_directory() -> ScriptDirectory:
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    return REVISIONS[-1]


def known_revisions() -> set[str]:
    return set(REVISIONS)


def current_revision(connection: Connection) -> str | None:
    """The revision recorded in the log (what Alembic's MigrationContext reads)."""
    rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    return str(rows[0][0]) if rows else None


def upgrade(connection: Connection, target: str = "head") -> None:
    from alembic import command  # noqa: PLC0415

    command.upgrade(_config(connection), target)


def downgrade(connection: Connection, target: str) -> None:
    from alembic import command  # noqa: PLC0415

    command.downgrade(_config(connection), target)
