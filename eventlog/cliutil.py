"""What the three CLIs share: running a Typer app with one error policy, and shared options.

Errors reach the user as one line, ``<prog>: error: <message>``, and an exit code:
``ScopeError.exit_code`` for library errors (see ``eventlog.errors``), 2 for bad usage, 130
for an interrupt, 70 for an internal error (a bug: ``SCOPE_DEBUG=1`` shows its traceback).
"""

from __future__ import annotations

import enum
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from eventlog.errors import ScopeError, UsageError

EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="PATH|URL",
        help="The log: a SQLite file path or a SQLAlchemy URL (postgresql://user@host/db). "
        "Default: $SCOPE_DB, else ./scope.db.",
        show_default=False,
    ),
]


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def error_line(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


def run(app: typer.Typer, prog: str, argv: list[str] | None = None) -> NoReturn:
    """Run ``app`` as ``prog`` and exit with the code the error policy gives."""
    command = typer.main.get_command(app)
    _flags_take_no_value(command)
    try:
        result = command.main(args=argv, prog_name=prog, standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # bad usage: unknown option, invalid value, ...
        error_line(prog, _one_line(exc.format_message()))
        sys.exit(exc.exit_code if exc.exit_code else EXIT_USAGE)
    except (typer.Abort, KeyboardInterrupt):
        error_line(prog, "interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except ScopeError as exc:
        error_line(prog, _one_line(str(exc)))
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        # The reader of our output went away (`| head`): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
    except Exception as exc:
        if os.environ.get("SCOPE_DEBUG"):
            raise
        error_line(
            prog,
            f"internal error: {type(exc).__name__}: {_one_line(str(exc))} "
            "(set SCOPE_DEBUG=1 for a traceback)",
        )
        sys.exit(EXIT_INTERNAL)
    sys.exit(result if isinstance(result, int) else 0)


def _flags_take_no_value(command: Any, parent: typer.Context | None = None) -> None:
    """Show the flags of ``command`` and its subcommands (``--help`` too) with no value in
    the help: Typer labels them ``<bool>``, as if ``--quiet true`` were taken."""
    ctx = typer.Context(command, info_name=command.name, parent=parent)
    for param in [*command.params, command.get_help_option(ctx)]:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    for subcommand in getattr(command, "commands", {}).values():
        _flags_take_no_value(subcommand, ctx)


def _one_line(message: str) -> str:
    # Click wraps the errors of enum conversion as "Value error, ...": the rest says it all.
    message = message.replace("Value error, ", "")
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def check_output_path(output: Path | None) -> None:
    """Refuse an --output that cannot be written before any work is done, not after."""
    if output is None:
        return
    if output.is_dir():
        raise UsageError(f"cannot write {output}: it is a directory")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"cannot write {output}: directory {parent} does not exist")
    if not os.access(output if output.exists() else parent, os.W_OK):
        raise UsageError(f"cannot write {output}: permission denied or read-only file system")
