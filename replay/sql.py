"""scope-query's work: SQL over the log's mirror, read-only, results streamed in a format.

Each query first brings the mirror up to the log's committed head (so a query made while
scope-record writes sees what is committed), then runs in a DuckDB connection that is
read-only, cannot reach files or the network, and cannot change that configuration. Only one
SELECT (or EXPLAIN) statement runs per call; anything else is refused before it runs.
"""

from __future__ import annotations

import csv
import datetime
import decimal
import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import duckdb

from eventlog.errors import QueryError, UsageError
from eventlog.store import LogStore
from replay import mirror
from replay.output import to_table
from replay.sqlviews import MACROS, PUBLIC_VIEWS

FORMATS = ("table", "csv", "json", "ndjson", "parquet")
FETCH_ROWS = 10_000
TABLE_ROW_LIMIT = 10_000  # the table format is for people; machines use csv/json/parquet
_SANDBOX: dict[str, Any] = {"enable_external_access": False, "lock_configuration": True}
_ALLOWED = {"SELECT", "EXPLAIN"}


@dataclass
class QueryRun:
    columns: list[str]
    rows: int
    truncated: bool = False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(text.splitlines()[:1]) if text else type(exc).__name__


def check_statement(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(_first_line(exc)) from exc
    if not statements:
        raise UsageError("no SQL given")
    if len(statements) > 1:
        raise QueryError("one statement at a time, please")
    kind = statements[0].type.name
    if kind not in _ALLOWED:
        raise QueryError(
            f"scope-query only reads: a {kind} statement is refused (the log is never changed)"
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _batches(result: duckdb.DuckDBPyConnection) -> Iterator[list[tuple[Any, ...]]]:
    while True:
        batch = result.fetchmany(FETCH_ROWS)
        if not batch:
            return
        yield batch


def _write(
    result: duckdb.DuckDBPyConnection, columns: list[str], fmt: str, out: IO[str]
) -> QueryRun:
    run = QueryRun(columns, 0)
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for batch in _batches(result):
            writer.writerows([["" if v is None else _csv_cell(v) for v in row] for row in batch])
            run.rows += len(batch)
    elif fmt == "ndjson":
        for batch in _batches(result):
            out.write(
                "".join(
                    json.dumps(dict(zip(columns, map(_jsonable, row), strict=True))) + "\n"
                    for row in batch
                )
            )
            run.rows += len(batch)
    elif fmt == "json":
        out.write("[")
        first = True
        for batch in _batches(result):
            for row in batch:
                out.write(
                    ("\n" if first else ",\n")
                    + json.dumps(dict(zip(columns, map(_jsonable, row), strict=True)))
                )
                first = False
            run.rows += len(batch)
        out.write("\n]\n" if not first else "]\n")
    else:
        rows = result.fetchmany(TABLE_ROW_LIMIT + 1)
        run.truncated = len(rows) > TABLE_ROW_LIMIT
        rows = rows[:TABLE_ROW_LIMIT]
        run.rows = len(rows)
        out.write(to_table(columns, [[_table_cell(v) for v in row] for row in rows], "(no rows)"))
    return run


def _csv_cell(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(_jsonable(value))
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    return value


def _table_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return str(value)


def prepare(store: LogStore, mirror_path: Path | None = None) -> Path:
    """Bring the mirror of ``store`` up to date; return where it is."""
    path = mirror_path or mirror.default_mirror_path(store)
    mirror.sync_mirror(store, path)
    return path


def run_query(
    store: LogStore,
    sql: str,
    fmt: str,
    output: Path | None = None,
    mirror_path: Path | None = None,
    out: IO[str] | None = None,
) -> QueryRun:
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if fmt == "parquet" and output is None:
        raise UsageError("--format parquet needs --output FILE")
    _refuse_log_as_output(store, output)
    path = mirror_path or mirror.default_mirror_path(store)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if fmt == "parquet":
        mirror.sync_mirror(store, path)
        assert output is not None
        return _export_parquet(path, sql, output)
    with mirror.current_mirror(store, path, config=_SANDBOX) as con:
        check_statement(con, sql)
        try:
            result = con.execute(sql)
            columns = [d[0] for d in result.description or []]
            if output is not None:
                with output.open("w", newline="") as handle:
                    return _write(result, columns, fmt, handle)
            return _write(result, columns, fmt, out or sys.stdout)
        except duckdb.Error as exc:
            raise QueryError(_first_line(exc)) from exc
        except OSError as exc:
            raise UsageError(f"cannot write {output}: {exc.strerror}") from exc


def _refuse_log_as_output(store: LogStore, output: Path | None) -> None:
    if output is None or store.location.path is None:
        return
    target = output.expanduser().absolute()
    log = store.location.path
    if target == log or (target.name.startswith(log.name + "-") and target.parent == log.parent):
        raise UsageError(f"--output {output} would overwrite the log")


def _export_parquet(path: Path, sql: str, output: Path) -> QueryRun:
    """Parquet is written by DuckDB itself (streaming), from the mirror attached read-only."""
    with duckdb.connect(config=mirror.DUCKDB_SAFE_CONFIG) as con:
        check_statement(con, sql)
        try:
            con.execute(f"ATTACH '{path}' AS m (READ_ONLY)")
            con.execute("USE m")
            columns = [d[0] for d in con.execute(f"DESCRIBE {sql}").fetchall()]
            target = str(output.expanduser().absolute()).replace("'", "''")
            count = con.execute(f"COPY ({sql}) TO '{target}' (FORMAT parquet)").fetchone()
        except duckdb.Error as exc:
            raise QueryError(_first_line(exc)) from exc
    return QueryRun(columns, int(count[0]) if count else 0)


def describe(store: LogStore, mirror_path: Path | None = None) -> list[tuple[str, str, str]]:
    """(view, column, type) of every view and macro scope-query offers."""
    path = prepare(store, mirror_path)
    rows: list[tuple[str, str, str]] = []
    with mirror.connect(path, read_only=True, config=_SANDBOX) as con:
        for view in PUBLIC_VIEWS:
            for name, kind, *_ in con.execute(f"DESCRIBE {view}").fetchall():
                rows.append((view, name, kind))
        for name, text in MACROS.items():
            rows.append((name, "(table macro)", text))
    return rows
