"""scope-replay: the connection table or a topology at any moment, and log administration.

Thin by design: each command resolves its options, calls one library function and prints.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from recorder.cliutil import DbOption, OutputFormat, run
from recorder.errors import UsageError
from recorder.log.admin import schema_status, upgrade_schema
from recorder.log.location import resolve
from recorder.log.store import Purpose, open_log
from replay import checkpoints, info, table
from replay.engine import Replayer

app = typer.Typer(
    add_completion=False,
    help="Replay the recorded connection log at any moment.\n\n"
    "Example: scope-replay --at 2026-11-25T12:00:00Z --window 15s",
)
db_app = typer.Typer(add_completion=False, help="Inspect and migrate the log's schema.")
checkpoints_app = typer.Typer(
    add_completion=False, help="Manage replay checkpoints (derived data)."
)
app.add_typer(db_app, name="db")
app.add_typer(checkpoints_app, name="checkpoints")

AtOption = Annotated[
    str | None,
    typer.Option(
        "--at",
        metavar="T",
        help="The moment: RFC 3339 (UTC if no zone), Unix seconds or nanoseconds, "
        "-30s (before the log's end) or +10s (after its start).",
    ),
]
WindowOption = Annotated[
    str,
    typer.Option(
        "--window", metavar="DURATION", help="Also show connections closed this long before T."
    ),
]
FormatOption = Annotated[OutputFormat, typer.Option("--format", help="Output format.")]


def _warn(lines: list[str]) -> None:
    for line in lines:
        print(f"scope-replay: warning: {line}", file=sys.stderr, flush=True)


@app.callback(invoke_without_command=True)
def replay_main(
    ctx: typer.Context,
    at: AtOption = None,
    window: WindowOption = table.DEFAULT_WINDOW,
    format: FormatOption = OutputFormat.table,
    no_checkpoints: Annotated[
        bool, typer.Option("--no-checkpoints", help="Fold from the start of the log.")
    ] = False,
    db: DbOption = None,
) -> None:
    """Print the connection table at --at T: open connections and those closed in the window.

    Example: scope-replay --at -30s --window 15s --format json
    """
    if ctx.invoked_subcommand is not None:
        return
    if at is None:
        typer.echo(ctx.get_help())
        return
    with open_log(resolve(db), Purpose.READ) as store:
        result = table.replay_table(store, at, window, use_checkpoints=not no_checkpoints)
    _warn(result.warnings)
    sys.stdout.write(table.render(result, format.value))


@app.command("info")
def info_command(db: DbOption = None, format: FormatOption = OutputFormat.table) -> None:
    """List recordings, event counts by kind, losses and snapshot times.

    Example: scope-replay info --db scope.db
    """
    if format is OutputFormat.csv:
        raise UsageError("info prints table or json")
    with open_log(resolve(db), Purpose.READ) as store:
        sys.stdout.write(info.render(info.log_info(store), format.value))


@checkpoints_app.command("rebuild")
def checkpoints_rebuild(db: DbOption = None) -> None:
    """Drop every checkpoint and fold the whole log again, saving new ones.

    Example: scope-replay checkpoints rebuild --db scope.db
    """
    with open_log(resolve(db), Purpose.READ) as store:
        dropped = checkpoints.drop(store)
        saved = Replayer(store).rebuild_checkpoints()
    typer.echo(f"dropped {dropped} checkpoints, saved {saved}")


@checkpoints_app.command("drop")
def checkpoints_drop(db: DbOption = None) -> None:
    """Delete every checkpoint (they are rebuilt on demand).

    Example: scope-replay checkpoints drop --db scope.db
    """
    with open_log(resolve(db), Purpose.READ) as store:
        typer.echo(f"dropped {checkpoints.drop(store)} checkpoints")


@db_app.command("current")
def db_current(db: DbOption = None) -> None:
    """Show the log's schema revision and whether it is up to date.

    Example: scope-replay db current --db scope.db
    """
    status = schema_status(resolve(db))
    typer.echo(
        f"{status.location}: schema {status.revision or '(none)'} "
        f"({status.state.value}; newest known {status.head})"
    )


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Apply pending schema migrations (creates the log if it does not exist).

    Example: scope-replay db upgrade --db postgresql://scope@db.example/scope
    """
    before, after = upgrade_schema(resolve(db))
    was = before.revision if before and before.revision else "(none)"
    if before is not None and before.revision == after.revision:
        typer.echo(f"{after.location}: already at schema {after.revision}")
    else:
        typer.echo(f"{after.location}: upgraded schema {was} -> {after.revision}")


def main() -> None:
    run(app, "scope-replay")
