"""scope-query: SQL over the log with DuckDB. Thin: see replay.sql."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Annotated

import typer

from eventlog.cliutil import DbOption, check_output_path, run
from eventlog.errors import UsageError

app = typer.Typer(
    add_completion=False,
    help="Run SQL over the log with DuckDB.\n\nViews: events, connections, processes, conntrack, "
    "recordings, losses, snapshots, sockets; table macro connections_at(TIMESTAMP, INTERVAL).",
)


class QueryFormat(enum.StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    ndjson = "ndjson"
    parquet = "parquet"


@app.command()
def main_command(
    sql: Annotated[
        str | None, typer.Argument(metavar="SQL", help="The query; '-' or nothing: stdin.")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("-f", "--file", help="Read the query from this file.")
    ] = None,
    format: Annotated[
        QueryFormat, typer.Option("--format", help="Output format.")
    ] = QueryFormat.table,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (needed for parquet).")
    ] = None,
    schema: Annotated[
        bool, typer.Option("--schema", help="List the views and their columns.")
    ] = False,
    store: Annotated[
        Path | None,
        typer.Option(
            "--store",
            "--mirror",  # its name while the store was a mirror of the log
            metavar="FILE",
            help="Where to keep the derived store (default: one per log in the cache directory).",
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Run one SELECT over the log.

    Example: scope-query "SELECT comm, count(*) FROM events WHERE kind = 'connect' GROUP BY 1"
    """
    # The library is imported when a query runs, not for --help (see pyproject.toml)
    from eventlog.location import refuse_as_output, resolve
    from eventlog.store import Purpose, open_log
    from replay import query
    from replay.derived.store import open_derived, refuse_replacing

    check_output_path(output)
    check_output_path(store)
    if schema and (sql is not None or file is not None):
        raise UsageError("--schema lists the views and their columns: it runs no other query")
    with open_log(resolve(db), Purpose.READ) as log:
        text = query.schema_sql() if schema else _sql_text(sql, file)
        if format is QueryFormat.parquet and output is None:
            raise UsageError("--format parquet needs --output FILE")
        refuse_as_output(log.location, output)
        refuse_as_output(log.location, store, "--store")
        refuse_replacing(store)
        with open_derived(log, store) as derived:
            _notices(derived.notices)
            outcome = query.query_derived(derived, text, format.value, output)
    if outcome.truncated:
        print(
            f"scope-query: showing the first {outcome.rows} rows; use --format csv/json for all",
            file=sys.stderr,
        )


def _notices(lines: list[str]) -> None:
    for line in lines:
        print(f"scope-query: warning: {line}", file=sys.stderr, flush=True)


def _sql_text(sql: str | None, file: Path | None) -> str:
    """The query's text, from the argument, ``-f FILE`` or stdin: UTF-8 text, or refused."""
    try:
        text = _read_sql(sql, file)
        text.encode()  # (an argument or stdin not UTF-8 holds lone surrogates)
    except UnicodeError as exc:
        where = file if file is not None else "the query"
        raise UsageError(f"{where} is not UTF-8 text") from exc
    return text


def _read_sql(sql: str | None, file: Path | None) -> str:
    if file is not None:
        if sql is not None:
            raise UsageError("give the query as an argument or with -f, not both")
        try:
            return file.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read {file}: {exc.strerror}") from exc
    if sql is None or sql == "-":
        if sys.stdin.isatty():
            raise UsageError("no query: give SQL as an argument, with -f FILE, or on stdin")
        return sys.stdin.read()
    return sql


def main() -> None:
    run(app, "scope-query")
