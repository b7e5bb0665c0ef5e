"""`scope-replay export`: the events and the connections of a time range, as files other
tools read (Parquet, CSV, JSON lines), from the derived store (archive and live log as one).

``events.<ext>``: the events whose wall time is in ``[from, to)``, by position.
``connections.<ext>``: the connections open at some moment of ``[from, to)``, as the
table at the range's last nanosecond with the range for its window gives them (what
``scope-replay --at`` and scope-query's ``connections_at`` give: each connection as it was
then, its NAT and process then), by when they opened. Both are written in a fixed order, so
the same log and range give the same files; and, since a moment's table is what a cut never
changes, the same files before and after a cut of the history before ``from`` (archived or
dropped).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import duckdb

from eventlog.errors import QueryError, UsageError
from eventlog.timefmt import format_ns
from replay.derived.store import Derived
from replay.moment import check_kept

FORMATS = {"parquet": "(FORMAT parquet, COMPRESSION zstd)", "csv": "(FORMAT csv, HEADER)",
           "jsonl": "(FORMAT json)"}  # fmt: skip


EXPORTED = ("events", "connections")  # the files written, each NAME.FORMAT


@dataclass(frozen=True)
class Exported:
    path: Path
    rows: int


def export_range(
    derived: Derived, from_ns: int, to_ns: int, fmt: str, directory: Path
) -> list[Exported]:
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    if to_ns <= from_ns:
        raise UsageError("--to must be after --from")
    # The table at to - 1 with a window of to - from: what was open in (from - 1, to - 1].
    at_ns, window_ns = int(to_ns) - 1, int(to_ns) - int(from_ns)
    check_kept(derived, at_ns - window_ns, f"--from {format_ns(from_ns)}")
    _ensure_directory(directory)
    for name in EXPORTED:
        if (directory / f"{name}.{fmt}").exists():
            raise UsageError(
                f"{directory / f'{name}.{fmt}'} exists: remove it, or export to another directory"
            )
    queries = {
        "events": f"SELECT * FROM events WHERE wall_ns >= {int(from_ns)} "
        f"AND wall_ns < {int(to_ns)} ORDER BY position",
        "connections": f"SELECT * FROM connections_at_ns({at_ns}, {window_ns})",
    }
    written = []
    for name, sql in queries.items():
        path = directory / f"{name}.{fmt}"
        quoted = str(path).replace("'", "''")
        try:
            rows = derived.con.execute(f"COPY ({sql}) TO '{quoted}' {FORMATS[fmt]}").fetchall()
        except duckdb.Error as exc:
            raise QueryError(f"cannot write {path}: {str(exc).splitlines()[0]}") from exc
        written.append(Exported(path, int(rows[0][0]) if rows else 0))
    return written


def _ensure_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write {directory}: {exc.strerror}") from exc
    if not os.access(directory, os.W_OK):
        raise UsageError(f"cannot write {directory}: permission denied or read-only file system")
