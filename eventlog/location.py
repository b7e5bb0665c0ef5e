"""Where a log lives: a SQLite path or a SQLAlchemy URL, from `--db`, `SCOPE_DB` or ./scope.db."""

from __future__ import annotations

import contextlib
import glob
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from eventlog.errors import LogLocationError, UsageError

DEFAULT_LOG = "scope.db"
ENV_VAR = "SCOPE_DB"

# The PostgreSQL driver this project installs. A bare postgresql:// URL would otherwise make
# SQLAlchemy look for psycopg2, which is not a dependency.
_POSTGRES_DRIVER = "postgresql+psycopg"
_POSTGRES_DRIVERS_READ_AS_PSYCOPG = ("", "psycopg", "psycopg2")


@dataclass(frozen=True)
class LogLocation:
    """A resolved log location. ``path`` is set for SQLite files, ``url`` always."""

    url: URL
    path: Path | None
    text: str = ""  # as the user gave it, for messages

    @property
    def is_sqlite(self) -> bool:
        return self.path is not None

    @property
    def is_postgres(self) -> bool:
        return self.url.get_backend_name() == "postgresql"

    def display(self) -> str:
        """The location as a user wrote it, without a password."""
        if self.path is not None:
            return str(self.path)
        try:
            return make_url(self.text).render_as_string(hide_password=True)
        except ArgumentError:
            return self.url.render_as_string(hide_password=True)


def default_location_text() -> str:
    return os.environ.get(ENV_VAR) or DEFAULT_LOG


def resolve(text: str | None) -> LogLocation:
    """Turn a `--db` value into a location. Nothing is opened or created here."""
    text = text if text else default_location_text()
    if "://" not in text:
        return _sqlite_location(Path(text))
    try:
        url = make_url(text)
    except (ArgumentError, ValueError) as exc:  # (ValueError: a port that is no number)
        raise LogLocationError(f"not a database URL: {text!r}") from exc
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise LogLocationError("a SQLite log must be a file, not an in-memory database")
        return _sqlite_location(Path(url.database))
    if backend in ("postgresql", "postgres"):
        return LogLocation(url=_postgres_url(url), path=None, text=text)
    raise LogLocationError(
        f"unsupported database URL scheme {url.drivername!r}: use a file path, "
        "sqlite:///path or postgresql://user@host/db"
    )


def _postgres_url(url: URL) -> URL:
    """``url`` for the PostgreSQL driver scope-recorder uses (psycopg 3). The forms users
    paste name the same server and database: postgres://, postgresql://, and the URLs of
    SQLAlchemy applications that use psycopg 2. Another driver is refused by name."""
    driver = url.get_driver_name() if "+" in url.drivername else ""
    if driver not in _POSTGRES_DRIVERS_READ_AS_PSYCOPG:
        raise LogLocationError(
            f"unsupported PostgreSQL driver {driver!r}: scope-recorder connects through "
            "psycopg 3; write postgresql://user@host/db"
        )
    return url.set(drivername=_POSTGRES_DRIVER)


def _sqlite_location(path: Path) -> LogLocation:
    path = path.expanduser().absolute()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise LogLocationError(f"cannot use {path}: {exc.strerror}") from exc
    if mode is not None and stat.S_ISDIR(mode):
        raise LogLocationError(f"{path} is a directory, not a log file")
    if mode is not None and not stat.S_ISREG(mode):
        raise LogLocationError(f"{path} is not a regular file")
    return LogLocation(url=URL.create("sqlite", database=str(path)), path=path, text=str(path))


def refuse_as_output(location: LogLocation, output: Path | None, option: str = "--output") -> None:
    """Refuse an output file that is the log at ``location`` or one of its companion files
    (``-wal``, ``-shm``, ...), by whatever name: through ``..``, a symbolic link or a hard
    link. Writing it would destroy the log."""
    if output is None or location.path is None:
        return
    target = Path(os.path.realpath(output.expanduser()))
    path = Path(os.path.realpath(location.path))
    same_name = target == path or (
        target.name.startswith(path.name + "-") and target.parent == path.parent
    )
    if same_name or _same_file(target, path):
        raise UsageError(f"{option} {output} would overwrite the log {location.path}")


def _same_file(target: Path, log: Path) -> bool:
    """Whether ``target`` exists and is the log's file or a companion's (a hard link)."""
    try:
        found = target.stat()
    except OSError:
        return False
    for candidate in [log, *log.parent.glob(glob.escape(log.name) + "-*")]:
        with contextlib.suppress(OSError):
            if os.path.samestat(found, candidate.stat()):
                return True
    return False
