"""scope-query: SQL over the log with DuckDB. Thin: see replay.sql."""

from __future__ import annotations

import typer

from recorder.cliutil import DbOption, run

app = typer.Typer(add_completion=False, help="Run SQL over the log with DuckDB.")


@app.command()
def query(db: DbOption = None) -> None:
    """Run SQL over the log."""
    raise typer.Exit(0)


def main() -> None:
    run(app, "scope-query")
