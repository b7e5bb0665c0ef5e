"""Schema administration behind `scope-replay db current` and `db upgrade`."""

from __future__ import annotations

from dataclasses import dataclass

from eventlog import migrate
from eventlog.errors import LogOpenError, SchemaTooNewError
from eventlog.location import LogLocation
from eventlog.store import Purpose, SchemaState, open_log, schema_state


@dataclass(frozen=True)
class SchemaStatus:
    location: str
    state: SchemaState
    revision: str | None
    head: str


def schema_status(location: LogLocation) -> SchemaStatus:
    """Where the log's schema stands relative to this version's migrations."""
    with open_log(location, Purpose.ADMIN) as store, store.connect() as conn:
        state, revision = schema_state(conn)
    if state is SchemaState.FOREIGN:
        raise LogOpenError(f"{location.display()} is a database but not a scope-recorder log")
    if state is SchemaState.NEWER:
        raise SchemaTooNewError(
            f"{location.display()} was written by a newer scope-recorder (schema {revision}; "
            f"this version knows up to {migrate.head_revision()}): upgrade scope-recorder"
        )
    return SchemaStatus(location.display(), state, revision, migrate.head_revision())


def upgrade_schema(location: LogLocation) -> tuple[SchemaStatus | None, SchemaStatus]:
    """Apply pending migrations (creating the log if needed); return (before, after)."""
    before = None
    if not (location.is_sqlite and location.path is not None and not location.path.exists()):
        before = schema_status(location)
    with open_log(location, Purpose.RECORD):
        pass
    return before, schema_status(location)
