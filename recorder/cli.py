"""scope-record: capture every TCP connection event into the log. Thin: see recorder.record."""

from __future__ import annotations

import typer

from recorder.cliutil import DbOption, run
from recorder.log.location import resolve
from recorder.log.store import Purpose, open_log

app = typer.Typer(add_completion=False, help="Record TCP connection events into the log.")


@app.command()
def record(db: DbOption = None) -> None:
    """Record connection events into the log until interrupted.

    Example: scope-record --db scope.db --duration 60
    """
    with open_log(resolve(db), Purpose.RECORD):
        pass


def main() -> None:
    run(app, "scope-record")
