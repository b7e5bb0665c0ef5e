"""scope-replay: the connection table or a topology at any moment, and log administration.

Thin by design: each command resolves its options, calls one library function and prints.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from eventlog.admin import schema_status, upgrade_schema
from eventlog.cliutil import DbOption, OutputFormat, check_output_path, run
from eventlog.errors import UsageError
from eventlog.location import resolve
from eventlog.store import Purpose, open_log
from replay import info, table
from replay.derived.store import Derived, open_derived
from replay.views import render as view_render
from replay.views.api import topology_and_warnings, topology_in
from replay.views.diff import render_diff, topology_diff
from replay.views.topology import Options, View

app = typer.Typer(
    add_completion=False,
    help="Replay the recorded connection log at any moment.\n\n"
    "Example: scope-replay --at 2026-11-25T12:00:00Z --window 15s --view processes",
)
db_app = typer.Typer(add_completion=False, help="Inspect and migrate the log's schema.")
app.add_typer(db_app, name="db")


class ViewName(enum.StrEnum):
    connections = "connections"
    endpoints = "endpoints"
    processes = "processes"
    processes_by_name = "processes-by-name"
    containers = "containers"
    hosts = "hosts"


class ReplayFormat(enum.StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    dot = "dot"
    svg = "svg"
    png = "png"


class ShowHide(enum.StrEnum):
    show = "show"
    hide = "hide"


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
UnconnectedOption = Annotated[
    ShowHide, typer.Option("--unconnected", help="Processes without connections (process maps).")
]
PseudoOption = Annotated[
    ShowHide, typer.Option("--pseudo", help="The uncontained pseudo node (containers map).")
]
UnknownLanOption = Annotated[
    bool,
    typer.Option("--show-unknown-lan", help="Show private addresses that were not recorded."),
]


def _warn(lines: list[str]) -> None:
    for line in lines:
        print(f"scope-replay: warning: {line}", file=sys.stderr, flush=True)


@contextmanager
def _derived(db: str | None) -> Iterator[Derived]:
    """The derived store of the log ``db``, current, its notices said."""
    with open_log(resolve(db), Purpose.READ) as log, open_derived(log) as derived:
        _warn(derived.notices)
        yield derived


def _view_options(unconnected: ShowHide, pseudo: ShowHide, show_unknown_lan: bool) -> Options:
    return Options(
        show_unconnected=unconnected is ShowHide.show,
        show_uncontained=pseudo is ShowHide.show,
        show_unknown_lan=show_unknown_lan,
    )


def _emit(data: str | bytes, output: Path | None) -> None:
    if output is not None:
        try:
            output.write_bytes(data.encode() if isinstance(data, str) else data)
        except OSError as exc:
            raise UsageError(f"cannot write {output}: {exc.strerror}") from exc
        return
    if isinstance(data, bytes):
        if sys.stdout.isatty():
            raise UsageError("binary output: use --output FILE")
        sys.stdout.buffer.write(data)
    else:
        sys.stdout.write(data)


@app.callback(invoke_without_command=True)
def replay_main(
    ctx: typer.Context,
    at: AtOption = None,
    window: WindowOption = table.DEFAULT_WINDOW,
    view: Annotated[
        ViewName, typer.Option("--view", help="What to show: the table, or a map.")
    ] = ViewName.connections,
    format: Annotated[
        ReplayFormat,
        typer.Option(
            "--format",
            help="table, json or csv for connections; table, json, dot, svg or png for maps.",
        ),
    ] = ReplayFormat.table,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file.")
    ] = None,
    unconnected: UnconnectedOption = ShowHide.hide,
    pseudo: PseudoOption = ShowHide.hide,
    show_unknown_lan: UnknownLanOption = False,
    db: DbOption = None,
) -> None:
    """Print the connection table, or a map, at --at T (open then, or closed in the window).

    Example: scope-replay --at -30s --view processes --format svg --output map.svg
    """
    if ctx.invoked_subcommand is not None:
        if db is not None:
            raise UsageError(
                f"--db goes after the subcommand: scope-replay {ctx.invoked_subcommand} --db ..."
            )
        return
    if at is None:
        raise UsageError(
            "--at is required: the moment to replay (e.g. --at -30s, --at 2026-12-06T10:00:00Z); "
            "scope-replay --help lists the rest"
        )
    check_output_path(output)
    fmt = format.value
    if view is ViewName.connections:
        if fmt not in ("table", "json", "csv"):
            raise UsageError(f"--format {fmt} draws maps: pick a --view, or use table, json or csv")
        with _derived(db) as derived:
            result = table.table_at(derived, at, window)
        _warn(result.warnings)
        _emit(table.render(result, fmt), output)
        return
    if fmt == "csv":
        raise UsageError(
            "--format csv is for the connection table; maps print table, json, dot, svg, png"
        )
    options = _view_options(unconnected, pseudo, show_unknown_lan)
    with _derived(db) as derived:
        topology, warnings = topology_and_warnings(derived, at, window, View(view.value), options)
    _warn(warnings)
    rendered: str | bytes
    if fmt == "json":
        rendered = view_render.render_json(topology)
    elif fmt == "dot":
        rendered = view_render.render_dot(topology)
    elif fmt in ("svg", "png"):
        rendered = view_render.render_graphviz(topology, fmt)
    else:
        rendered = view_render.render_table(topology)
    _emit(rendered, output)


# Offsets from the log's end (-60s) look like options; let them through as the two moments.
@app.command("diff", context_settings={"ignore_unknown_options": True})
def diff_command(
    before: Annotated[str, typer.Argument(metavar="T1", help="The earlier moment.")],
    after: Annotated[str, typer.Argument(metavar="T2", help="The later moment.")],
    view: Annotated[ViewName, typer.Option("--view", help="Which map.")] = ViewName.processes,
    window: WindowOption = table.DEFAULT_WINDOW,
    format: FormatOption = OutputFormat.table,
    unconnected: UnconnectedOption = ShowHide.hide,
    pseudo: PseudoOption = ShowHide.hide,
    show_unknown_lan: UnknownLanOption = False,
    db: DbOption = None,
) -> None:
    """What changed in a map between two moments: nodes and edges added, updated, removed.

    Example: scope-replay diff -60s -5s --view processes --format json
    """
    if view is ViewName.connections:
        raise UsageError("diff compares maps: pick --view endpoints, processes, ...")
    if format is OutputFormat.csv:
        raise UsageError("diff prints table or json")
    options = _view_options(unconnected, pseudo, show_unknown_lan)
    with _derived(db) as derived:
        first = topology_in(derived, before, window, View(view.value), options)
        second = topology_in(derived, after, window, View(view.value), options)
    sys.stdout.write(render_diff(topology_diff(first, second), format.value))


@app.command("info")
def info_command(db: DbOption = None, format: FormatOption = OutputFormat.table) -> None:
    """List recordings, event counts by kind, losses and snapshot times.

    Example: scope-replay info --db scope.db
    """
    if format is OutputFormat.csv:
        raise UsageError("info prints table or json")
    location = resolve(db)
    with _derived(db) as derived:
        sys.stdout.write(info.render(info.log_info(derived, location.display()), format.value))


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
