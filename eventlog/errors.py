"""The one error tree of scope-recorder.

Every failure a user can cause or meet is one of these; driver errors (sqlite3, SQLAlchemy,
psycopg, bcc, netlink) are mapped into it at the seam where they occur, with ``raise ... from``.
The CLIs turn a ``ScopeError`` into one line on stderr and ``exit_code``.

    ScopeError
    ├── UsageError            bad arguments: timestamps, durations, views, formats   (2)
    ├── LogError              the event log
    │   ├── LogLocationError  path/URL unusable: directory, missing, bad scheme     (2)
    │   ├── LogOpenError      not a database, corrupt, foreign, unreachable server   (2)
    │   ├── SchemaTooNewError written by a newer scope-recorder                      (2)
    │   ├── SchemaMissingError not initialised yet (read-only commands)              (2)
    │   ├── EmptyLogError     initialised but holds no events                        (2)
    │   ├── LogBusyError      another recorder of this host is appending to it       (2)
    │   ├── CutBusyError      another cut of the log is under way                    (2)
    │   ├── LogWriteError     an append failed: disk full, server gone               (3)
    │   └── ArchiveError      the archive cannot be written (no space) or read       (3)
    ├── CaptureError          eBPF capture cannot start or broke                     (4)
    │   └── EbpfUnavailableError   this host cannot run the programs (why in the message)
    ├── ConntrackUnavailableError conntrack cannot be read in some namespace              (4)
    └── QueryError            the SQL of scope-query was refused or failed           (1)
"""

from __future__ import annotations


class ScopeError(Exception):
    """Base of every error scope-recorder reports to a user."""

    exit_code = 1


class UsageError(ScopeError):
    exit_code = 2


class LogError(ScopeError):
    exit_code = 2


class LogLocationError(LogError):
    pass


class LogOpenError(LogError):
    pass


class SchemaTooNewError(LogError):
    pass


class SchemaMissingError(LogError):
    pass


class EmptyLogError(LogError):
    pass


class LogBusyError(LogError):
    """Another recorder of the same host is appending: a second would record it all twice."""


class CutBusyError(LogError):
    """Another process is cutting the log (eventlog.cutlock): one cut at a time."""


class LogWriteError(LogError):
    exit_code = 3


class ArchiveError(LogError):
    """Rows could not be moved to the archive: the live log keeps them."""

    exit_code = 3


class CaptureError(ScopeError):
    exit_code = 4


class EbpfUnavailableError(CaptureError):
    pass


class CaptureBusyError(CaptureError):
    """Another recorder reads this host's pinned capture programs."""


class ServiceError(ScopeError):
    """The service manager refused, or the unit could not be written."""

    exit_code = 5


class ConntrackUnavailableError(ScopeError):
    exit_code = 4


class QueryError(ScopeError):
    exit_code = 1
