"""scope-replay: the connection table or a topology at any moment, and log administration.

Thin by design: each command resolves its options, calls one library function and prints.
"""

from __future__ import annotations

import typer

from recorder.cliutil import DbOption, run
from recorder.log.admin import schema_status, upgrade_schema
from recorder.log.location import resolve

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    help="Replay the recorded connection log at any moment.",
)
db_app = typer.Typer(add_completion=False, help="Inspect and migrate the log's schema.")
app.add_typer(db_app, name="db")


@app.callback(invoke_without_command=True)
def replay_main(ctx: typer.Context) -> None:
    """Replay the recorded connection log at any moment."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


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
