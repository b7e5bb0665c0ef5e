"""scope-replay: the connection table or a topology at any moment, and log administration.

Thin by design: each command resolves its options, calls one library function and prints.
The library is imported when a command runs, not to print --help (see pyproject.toml).
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from eventlog.cliutil import DbOption, check_output_path, run
from eventlog.errors import UsageError
from replay.timespec import DEFAULT_WINDOW

if TYPE_CHECKING:
    from replay.derived.store import Derived
    from replay.views.topology import Options

app = typer.Typer(
    add_completion=False,
    help="Replay the recorded connection log at any moment.\n\n"
    "Example: scope-replay --at 2026-11-25T12:00:00Z --window 15s --view processes",
)
db_app = typer.Typer(
    add_completion=False,
    help="Check the log, recover a damaged one, and inspect and migrate its schema.",
)
app.add_typer(db_app, name="db")
cache_app = typer.Typer(
    add_completion=False,
    help="The derived stores kept in the cache directory: list them, remove those of gone logs.",
)
app.add_typer(cache_app, name="cache")


class ViewName(enum.StrEnum):
    connections = "connections"
    endpoints = "endpoints"
    processes = "processes"
    processes_by_name = "processes-by-name"
    containers = "containers"
    containers_by_image = "containers-by-image"
    pods = "pods"
    services = "services"
    hosts = "hosts"


class MapName(enum.StrEnum):
    """The maps (``diff`` compares maps, not tables)."""

    endpoints = "endpoints"
    processes = "processes"
    processes_by_name = "processes-by-name"
    containers = "containers"
    containers_by_image = "containers-by-image"
    pods = "pods"
    services = "services"
    hosts = "hosts"


class DocumentFormat(enum.StrEnum):
    """What ``info`` and ``diff`` print: one document, not rows."""

    table = "table"
    json = "json"


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
FormatOption = Annotated[DocumentFormat, typer.Option("--format", help="Output format.")]
SkewOption = Annotated[
    str | None,
    typer.Option(
        "--skew-tolerance",
        metavar="DURATION",
        help="How far apart two hosts' clocks may be for the sides of one connection, each "
        "recorded on its host, to be paired (default 1s).",
    ),
]
UnconnectedOption = Annotated[
    ShowHide, typer.Option("--unconnected", help="Processes without connections (process maps).")
]
PseudoOption = Annotated[
    ShowHide,
    typer.Option(
        "--pseudo",
        help="The uncontained (and unmanaged: in no pod) pseudo nodes of container maps.",
    ),
]
UnknownLanOption = Annotated[
    bool,
    typer.Option("--show-unknown-lan", help="Show private addresses that were not recorded."),
]
SelfOption = Annotated[
    bool,
    typer.Option(
        "--show-self",
        help="Show the recorder's own processes and connections (to a central store).",
    ),
]


def _warn(lines: list[str]) -> None:
    for line in lines:
        print(f"scope-replay: warning: {line}", file=sys.stderr, flush=True)


def _log_argument(ctx: typer.Context, db: str | None) -> str | None:
    """A subcommand's ``--db``, given after it or before it (``scope-replay --db x info``)."""
    before = ctx.find_root().obj
    if db is not None and before is not None and db != before:
        raise UsageError(f"--db is given twice: {before} before the subcommand, {db} after it")
    return db if db is not None else before


@contextmanager
def _derived(db: str | None, skew_tolerance: str | None = None) -> Iterator[Derived]:
    """The derived store of the log ``db``, current, its notices said; pairing across hosts
    with ``skew_tolerance`` (a duration) if given."""
    from eventlog.location import resolve
    from eventlog.store import Purpose, open_log
    from replay.derived.store import open_derived
    from replay.timespec import parse_duration

    skew = None if skew_tolerance is None else parse_duration(skew_tolerance, "--skew-tolerance")
    with open_log(resolve(db), Purpose.READ) as log, open_derived(log) as derived:
        _warn(derived.notices)
        if skew is not None:
            derived.pair_across_hosts_within(skew)
        yield derived


def _view_options(
    unconnected: ShowHide, pseudo: ShowHide, show_unknown_lan: bool, show_self: bool
) -> Options:
    from replay.views.topology import Options

    return Options(
        show_unconnected=unconnected is ShowHide.show,
        show_uncontained=pseudo is ShowHide.show,
        show_unknown_lan=show_unknown_lan,
        show_self=show_self,
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
    window: WindowOption = DEFAULT_WINDOW,
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
    show_self: SelfOption = False,
    story: Annotated[
        bool,
        typer.Option(
            "--story",
            help="The table: for each side, the process that opened the socket (connected, "
            "accepted) and the one that served it since when (a forked child, a worker it "
            "was handed to).",
        ),
    ] = False,
    skew_tolerance: SkewOption = None,
    db: DbOption = None,
) -> None:
    """Print the connection table, or a map, at --at T (open then, or closed in the window).

    Example: scope-replay --at -30s --view processes --format svg --output map.svg
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = db  # --db before the subcommand, as git and kubectl take it: see _log_argument
        return
    if at is None:
        raise UsageError(
            "--at is required: the moment to replay (e.g. --at -30s, --at 2026-12-06T10:00:00Z); "
            "scope-replay --help lists the rest"
        )
    check_output_path(output)
    from eventlog.location import refuse_as_output, resolve

    refuse_as_output(resolve(db), output)
    from replay import table
    from replay.views import render as view_render
    from replay.views.api import topology_and_warnings
    from replay.views.topology import View

    fmt = format.value
    if view is ViewName.connections:
        if fmt not in ("table", "json", "csv"):
            raise UsageError(f"--format {fmt} draws maps: pick a --view, or use table, json or csv")
        with _derived(db, skew_tolerance) as derived:
            result = table.table_at(derived, at, window, last_read=True, story=story)
        _warn(result.warnings)
        _emit(table.render(result, fmt), output)
        return
    if fmt == "csv":
        raise UsageError(
            "--format csv is for the connection table; maps print table, json, dot, svg, png"
        )
    options = _view_options(unconnected, pseudo, show_unknown_lan, show_self)
    with _derived(db, skew_tolerance) as derived:
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
    ctx: typer.Context,
    before: Annotated[str, typer.Argument(metavar="T1", help="The earlier moment.")],
    after: Annotated[str, typer.Argument(metavar="T2", help="The later moment.")],
    view: Annotated[MapName, typer.Option("--view", help="Which map.")] = MapName.processes,
    window: WindowOption = DEFAULT_WINDOW,
    format: FormatOption = DocumentFormat.table,
    unconnected: UnconnectedOption = ShowHide.hide,
    pseudo: PseudoOption = ShowHide.hide,
    show_unknown_lan: UnknownLanOption = False,
    show_self: SelfOption = False,
    db: DbOption = None,
) -> None:
    """What changed in a map between two moments: nodes and edges added, updated, removed.

    Example: scope-replay diff -60s -5s --view processes --format json
    """
    from replay.views.api import topology_in
    from replay.views.diff import render_diff, topology_diff
    from replay.views.topology import View

    options = _view_options(unconnected, pseudo, show_unknown_lan, show_self)
    with _derived(_log_argument(ctx, db)) as derived:
        first = topology_in(derived, before, window, View(view.value), options)
        second = topology_in(derived, after, window, View(view.value), options)
    sys.stdout.write(render_diff(topology_diff(first, second), format.value))


@app.command("info")
def info_command(
    ctx: typer.Context, db: DbOption = None, format: FormatOption = DocumentFormat.table
) -> None:
    """List recordings, event counts by kind, losses and snapshot times; the live log's
    and the archive's size and range, retention in force, and the last commit.

    Example: scope-replay info --db scope.db
    """
    from eventlog.location import resolve
    from eventlog.retention import storage_status
    from eventlog.store import Purpose, open_log
    from replay import info
    from replay.derived.store import open_derived

    location = resolve(_log_argument(ctx, db))
    with open_log(location, Purpose.READ) as log, open_derived(log) as derived:
        _warn(derived.notices)
        found = info.log_info(derived, location.display(), storage=storage_status(log))
    sys.stdout.write(info.render(found, format.value))


@app.command("compact")
def compact_command(
    ctx: typer.Context,
    before: Annotated[
        str,
        typer.Option(
            "--before",
            metavar="T",
            help="Move the events before this moment to the archive (as --at takes it).",
        ),
    ],
    archive: Annotated[
        Path | None,
        typer.Option(
            help="The archive's directory, for a log that has none yet (default: LOG.archive "
            "beside a SQLite log), or none: drop what leaves, keeping only the state at the cut "
            "(moments before it are refused after)."
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Move what is older than T from the live log to its archive (Parquet) now, as
    scope-record --retain does as it goes. Answers do not change.

    Example: scope-replay compact --before -7d --db scope.db
    """
    from eventlog.location import resolve
    from eventlog.retention import compact_before, is_dropping, wall_span
    from eventlog.store import Purpose, open_log
    from replay.derived.seed import make_seed
    from replay.timespec import LogSpan, parse_moment

    dropping = is_dropping(archive)
    with open_log(resolve(_log_argument(ctx, db)), Purpose.RECORD) as log:
        span = wall_span(log)
        moment = parse_moment(before, LogSpan(*span) if span else None)
        result = compact_before(
            log, moment, None if dropping else archive, make_seed if dropping else None,
            waiting=lambda: typer.echo(
                "scope-replay compact: another cut of this log is under way (a recorder's "
                "retention?): waiting for it to end", err=True,
            ),
        )  # fmt: skip
    if dropping:
        typer.echo(
            f"dropped {result.events} events, keeping the state at position "
            f"{result.archived_upto}; moments before it are no longer answered"
        )
        return
    typer.echo(
        f"moved {result.events} events ({result.segments} segments, "
        f"{result.archive_bytes} bytes) to the archive; it holds positions up to "
        f"{result.archived_upto}"
    )


@app.command("export")
def export_command(
    ctx: typer.Context,
    start: Annotated[str, typer.Option("--from", metavar="T1", help="From this moment.")],
    end: Annotated[str, typer.Option("--to", metavar="T2", help="Up to this moment.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="DIR", help="Write the files here.")
    ],
    format: Annotated[str, typer.Option("--format", help="parquet, csv or jsonl.")] = "parquet",
    db: DbOption = None,
) -> None:
    """Write the events and the connections of a time range (archive included) as
    DIR/events.FORMAT and DIR/connections.FORMAT.

    Example: scope-replay export --from -1h --to -0s --format csv -o out --db scope.db
    """
    from replay.export import export_range
    from replay.moment import log_span
    from replay.timespec import parse_moment

    with _derived(_log_argument(ctx, db)) as derived:
        span = log_span(derived)
        written = export_range(
            derived, parse_moment(start, span), parse_moment(end, span), format, output
        )
    for item in written:
        typer.echo(f"{item.path}: {item.rows} rows")


@app.command("serve")
def serve_command(
    ctx: typer.Context,
    db: DbOption = None,
    bind: Annotated[
        str,
        typer.Option(
            "--bind",
            metavar="HOST:PORT",
            help="Where to listen. Loopback by default; another address needs a token.",
        ),
    ] = "127.0.0.1:4040",
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            envvar="SCOPE_SERVE_TOKEN",
            help="Ask API clients for this token (one is generated and printed when --bind "
            "is not loopback and none is given).",
        ),
    ] = None,
) -> None:
    """Serve the map in a browser, with a time slider: a read-only web app over the log.

    Example: scope-replay serve --db scope.db   (then open http://127.0.0.1:4040/)
    """
    from eventlog.location import resolve
    from replay.serve.server import serve

    serve(resolve(_log_argument(ctx, db)), bind, token)


@db_app.command("current")
def db_current(ctx: typer.Context, db: DbOption = None) -> None:
    """Show the log's schema revision and whether it is up to date.

    Example: scope-replay db current --db scope.db
    """
    from eventlog.admin import schema_status
    from eventlog.location import resolve

    status = schema_status(resolve(_log_argument(ctx, db)))
    typer.echo(
        f"{status.location}: schema {status.revision or '(none)'} "
        f"({status.state.value}; newest known {status.head})"
    )


@db_app.command("check")
def db_check(ctx: typer.Context, db: DbOption = None) -> None:
    """Check that the log is whole: sound pages, positions without a gap, recordings closed.
    Exits 1 if something is wrong.

    Example: scope-replay db check --db scope.db
    """
    from eventlog.check import check_log
    from eventlog.location import resolve

    location = resolve(_log_argument(ctx, db))
    findings = check_log(location)
    for finding in findings:
        typer.echo(f"{finding.what}: {'ok' if finding.ok else 'PROBLEM'}: {finding.detail}")
    if not all(finding.ok for finding in findings):
        raise typer.Exit(1)


@db_app.command("recover")
def db_recover(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(metavar="SRC", help="The damaged SQLite log: read, never written."),
    ],
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            metavar="NEW",
            help="The new log to write: a SQLite file that does not exist yet.",
            show_default=False,
        ),
    ] = None,
    format: FormatOption = DocumentFormat.table,
) -> None:
    """Copy what can be read of a damaged SQLite log into a new log, and say what could not.

    What could not be read is counted per table, and held in the new log as loss records,
    which replay warns of. Positions are renumbered to run without a gap, as every log's do:
    an event keeps its position up to the first one lost, later ones move earlier by the
    number lost before them. SRC is never written. Exits 1 if anything was lost.

    Example: scope-replay db recover damaged.db --db recovered.db
    """
    from eventlog.location import refuse_as_output, resolve
    from eventlog.recover import recover_log

    new = _log_argument(ctx, db)
    if new is None:  # not $SCOPE_DB or ./scope.db: the damaged log is usually one of them
        raise UsageError("--db NEW is required: the new log to write the recovered one to")
    target = resolve(new)
    if target.path is not None:
        refuse_as_output(resolve(source), target.path, "--db")
    recovery = recover_log(resolve(source), target)
    sys.stdout.write(_recovery_report(recovery.document(), format.value))
    if not recovery.whole:
        _warn([f"{source} could not be read whole: what is missing is said above"])
        raise typer.Exit(1)


@db_app.command("import")
def db_import(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(metavar="SRC", help="The log to import from (a path or URL): only read."),
    ],
    db: DbOption = None,
    format: FormatOption = DocumentFormat.table,
) -> None:
    """Append every recording of SRC to the log (--db), once: a recording the log already
    holds whole is left alone, one it holds a part of is carried on from where it ends.

    So logs copied from the hosts of an incident combine into one, without a server, and an
    import run twice (or stopped and run again) holds each recording once.

    Example: scope-replay db import host-b.db --db incident.db
    """
    from eventlog.importing import import_log
    from eventlog.location import resolve

    report = import_log(resolve(source), resolve(_log_argument(ctx, db)))
    sys.stdout.write(_import_report(report.document(), format.value))


def _import_report(document: dict[str, Any], fmt: str) -> str:
    from replay.output import to_json, to_table

    if fmt == "json":
        return to_json(document)
    rows = [
        [r["host_id"], r["source_id"], r["target_id"], r["events"], r["already"]]
        for r in document["recordings"]
    ]
    return f"imported {document['source']} into {document['log']}\n" + to_table(
        ["host", "recording", "as", "events appended", "held before"], rows
    )


def _recovery_report(document: dict[str, Any], fmt: str) -> str:
    from replay.output import to_json, to_table

    if fmt == "json":
        return to_json(document)
    rows = [
        [t["table"], t["copied"], f"{t['lost']}{'' if t['lost_exactly'] else '+'}"]
        for t in document["tables"]
    ]
    lines = "".join(f"{note}\n" for note in document["notes"])
    return (
        f"recovered {document['source']} into {document['log']}\n"
        + to_table(["table", "copied", "lost"], rows)
        + lines
    )


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, db: DbOption = None) -> None:
    """Apply pending schema migrations (creates the log if it does not exist).

    Example: scope-replay db upgrade --db postgresql://scope@db.example/scope
    """
    from eventlog.admin import upgrade_schema
    from eventlog.location import resolve

    before, after = upgrade_schema(resolve(_log_argument(ctx, db)))
    was = before.revision if before and before.revision else "(none)"
    if before is not None and before.revision == after.revision:
        typer.echo(f"{after.location}: already at schema {after.revision}")
    else:
        typer.echo(f"{after.location}: upgraded schema {was} -> {after.revision}")


@cache_app.command("list")
def cache_list(format: FormatOption = DocumentFormat.table) -> None:
    """List the derived stores: their size, last use, and the log each was derived from.

    Example: scope-replay cache list
    """
    from replay.derived.cache import cached_stores, render_list
    from replay.derived.store import cache_dir

    sys.stdout.write(render_list(cache_dir(), cached_stores(), format.value))


@cache_app.command("prune")
def cache_prune(
    everything: Annotated[
        bool, typer.Option("--all", help="Remove every store not in use, not only gone logs'.")
    ] = False,
) -> None:
    """Remove the stores whose log is gone (or that cannot be read); they are rebuilt on use.

    Example: scope-replay cache prune
    """
    from replay.derived.cache import LogState, cached_stores, remove_store, render_pruned

    stores = cached_stores()
    chosen = [s for s in stores if s.removable or (everything and s.log_state is not LogState.busy)]
    for store in chosen:
        remove_store(store)
    sys.stdout.write(render_pruned(chosen, len(stores)))


def main() -> None:
    run(app, "scope-replay")
