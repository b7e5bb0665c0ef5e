"""scope-query's work: SQL over the derived store, read-only, results streamed in a format.

Each query first brings the derived store up to the log's committed head (so a query made
while scope-record writes sees what is committed), then runs in a DuckDB connection that is
read-only, cannot reach files or the network, and cannot change that configuration. Only one
SELECT (or EXPLAIN) statement runs per call; anything else is refused before it runs.
Parquet is written from the query's Arrow batches by pyarrow, never by DuckDB itself.
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
import pyarrow.parquet as pq

from eventlog.errors import QueryError, UsageError
from eventlog.location import refuse_as_output
from eventlog.store import LogStore
from replay.derived.store import Derived, arrow_copy_allowed, open_derived
from replay.derived.views import MACROS, PUBLIC_VIEWS
from replay.output import to_table

FORMATS = ("table", "csv", "json", "ndjson", "parquet")
FETCH_ROWS = 10_000
TABLE_ROW_LIMIT = 10_000  # the table format is for people; machines use csv/json/parquet
_ALLOWED = {"SELECT", "EXPLAIN"}


def sandbox(con: duckdb.DuckDBPyConnection) -> None:
    """No files, no network, no extensions, and no way to change that on ``con``."""
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


@dataclass
class QueryRun:
    columns: list[str]
    rows: int
    truncated: bool = False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(text.splitlines()[:1]) if text else type(exc).__name__


def check_statement(con: duckdb.DuckDBPyConnection, sql: str) -> duckdb.Statement:
    """The one statement of ``sql``, refused unless it only reads."""
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
            f"scope-query only reads: {_article(kind)} {kind} statement is refused "
            "(the log is never changed)"
        )
    return statements[0]


def _article(word: str) -> str:
    return "an" if word[:1].upper() in "AEIOU" else "a"


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


def run_query(
    log: LogStore,
    sql: str,
    fmt: str,
    output: Path | None = None,
    store_path: Path | None = None,
    out: IO[str] | None = None,
) -> QueryRun:
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if fmt == "parquet" and output is None:
        raise UsageError("--format parquet needs --output FILE")
    refuse_as_output(log.location, output)
    with open_derived(log, store_path) as derived:
        return query_derived(derived, sql, fmt, output, out)


def query_derived(
    derived: Derived,
    sql: str,
    fmt: str,
    output: Path | None = None,
    out: IO[str] | None = None,
) -> QueryRun:
    con = derived.read_only()
    sandbox(con)
    statement = check_statement(con, sql)
    try:
        columns: list[str] | None = None
        if fmt != "parquet" and statement.type.name == "SELECT":
            sql, columns = _timestamps_as_text(con, statement.query)
        result = con.execute(sql)
        columns = columns or [d[0] for d in result.description or []]
        if fmt == "parquet":
            assert output is not None
            return _write_parquet(result, columns, output)
        if output is not None:
            with output.open("w", newline="") as handle:
                return _write(result, columns, fmt, handle)
        return _write(result, columns, fmt, out or sys.stdout)
    except duckdb.Error as exc:
        raise QueryError(_first_line(exc)) from exc
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from exc


# Moments in words as scope-replay prints them: RFC 3339 in UTC, nanoseconds, a Z (DuckDB
# hands Python a timestamp as a datetime, to the microsecond and without a zone).
_RFC3339_NS = "%Y-%m-%dT%H:%M:%S.%nZ"
_NAIVE_TIMESTAMPS = {"TIMESTAMP", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S"}
_ZONED_TIMESTAMP = "TIMESTAMP WITH TIME ZONE"


def _timestamps_as_text(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[str, list[str]]:
    """``sql`` with its timestamp columns as text (``_RFC3339_NS``), and its column names.
    The columns are renamed by place first: two of a query's may have one name."""
    relation = con.sql(sql)
    names, types = list(relation.columns), [str(t) for t in relation.types]
    if not any(t in _NAIVE_TIMESTAMPS or t == _ZONED_TIMESTAMP for t in types):
        return sql, names
    places = [f"c{i}" for i in range(len(names))]
    select = ", ".join(_as_text(place, kind) for place, kind in zip(places, types, strict=True))
    body = sql.rstrip().rstrip(";").rstrip()
    # A line of the query may end in a comment: the closing parenthesis goes on its own line.
    return f"SELECT {select} FROM (\n{body}\n) AS _q({', '.join(places)})", names


def _as_text(column: str, kind: str) -> str:
    if kind in _NAIVE_TIMESTAMPS:  # the views' timestamps are UTC, without a zone
        return f"strftime({column}, '{_RFC3339_NS}')"
    if kind == _ZONED_TIMESTAMP:
        return f"strftime(timezone('UTC', {column}), '{_RFC3339_NS}')"
    return column


def _write_parquet(result: duckdb.DuckDBPyConnection, columns: list[str], output: Path) -> QueryRun:
    with arrow_copy_allowed():
        reader: Any = result.to_arrow_reader(FETCH_ROWS)
    rows = 0
    with pq.ParquetWriter(str(output), reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
            rows += batch.num_rows
    return QueryRun(columns, rows)


def schema_sql() -> str:
    """A query listing (view, column, type) of every view scope-query offers, then its table
    macros: ``--schema`` runs it as any query, so it prints in every format."""
    views = ", ".join(f"('{view}', {rank})" for rank, view in enumerate(PUBLIC_VIEWS))
    macros = ", ".join(
        f"({_literal(name)}, '(table macro)', {_literal(text)}, {rank})"
        for rank, (name, text) in enumerate(MACROS.items(), start=len(PUBLIC_VIEWS))
    )
    return f"""
        SELECT "view", "column", "type" FROM (
            SELECT c.table_name AS "view", c.column_name AS "column", c.data_type AS "type",
                o.rank, c.column_index AS place
            FROM duckdb_columns() c JOIN (VALUES {views}) o(name, rank) ON o.name = c.table_name
            WHERE c.database_name = current_database() AND c.schema_name = 'main'
            UNION ALL
            SELECT name, what, text, rank, 0 FROM (VALUES {macros}) m(name, what, text, rank)
        ) ORDER BY rank, place"""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
