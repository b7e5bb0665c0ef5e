"""`scope-replay --at T`: the connection table at a moment, with its window and warnings.

The rows come from the derived store's ``connections_at_ns`` (replay.derived.views defines
what a connection is); here they become ``ConnectionRow``s and are printed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import repeat
from typing import TYPE_CHECKING, Any, NamedTuple

from eventlog.batch import gc_paused
from eventlog.store import LogStore
from eventlog.timefmt import format_ns
from replay.derived.store import Derived, arrow_copy_allowed, open_derived
from replay.moment import Moment, resolve_moment, uncovered
from replay.output import to_csv, to_json_listing, to_table
from replay.timespec import DEFAULT_WINDOW, format_duration

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["DEFAULT_WINDOW", "ConnectionRow", "Loss", "TableResult", "connection_table"]


class ConnectionRow(NamedTuple):
    """One connection in a table (a tuple: a table holds tens of thousands)."""

    id: str  # "<position>#<ordinal>" of the event (or snapshot row) that made it known first
    state: str  # open, closed, failed
    direction: str  # local, outbound, inbound
    host: str
    client: str
    server: str
    opened_ns: int | None
    closed_ns: int | None
    client_pid: int | None = None
    client_comm: str | None = None
    client_netns: int | None = None
    server_pid: int | None = None
    server_comm: str | None = None
    server_netns: int | None = None
    nat_destination: str | None = None  # the real backend, when conntrack rewrote the destination
    nat_source: str | None = None  # the client as the server saw it, when the source was rewritten
    source: str = "events"
    positions: Sequence[int] = ()  # the log positions that made it, ascending
    note: str | None = None
    bytes_sent: int | None = None  # client to server, as the client's kernel counted
    bytes_received: int | None = None
    # The host that recorded each side's socket (None: a side no recording has); they differ
    # when a client recorded on one host is paired with its server recorded on another.
    client_host: str | None = None
    server_host: str | None = None
    # For the topology views: the endpoints apart, and which sides are sockets of this host.
    client_ip: str = ""
    client_port: int = 0
    server_ip: str = ""
    server_port: int = 0
    client_local: bool = False
    server_local: bool = False
    # The story of each side (replay.derived.owners): the process that opened the socket
    # (connect(), accept()) and when; since when its process above (client_pid, server_pid)
    # held it and how that is known (opened, fork, passed, snapshot, alone, shared); when that
    # process closed it, where it is not the opener; the /proc snapshot the answer rests on;
    # and when a socket handed over not by a fork was (after, by), as far as snapshots tell.
    client_open_pid: int | None = None
    client_open_comm: str | None = None
    client_open_ns: int | None = None
    client_served_since_ns: int | None = None
    client_served_how: str | None = None
    client_served_closed_ns: int | None = None
    client_served_seen_ns: int | None = None
    client_handed_after_ns: int | None = None
    client_handed_by_ns: int | None = None
    server_open_pid: int | None = None
    server_open_comm: str | None = None
    server_open_ns: int | None = None
    server_served_since_ns: int | None = None
    server_served_how: str | None = None
    server_served_closed_ns: int | None = None
    server_served_seen_ns: int | None = None
    server_handed_after_ns: int | None = None
    server_handed_by_ns: int | None = None

    @property
    def duration_ns(self) -> int | None:
        if self.opened_ns is None or self.closed_ns is None or self.state == "failed":
            return None
        return self.closed_ns - self.opened_ns


# What a table shows, without the endpoints apart (for the topology views only): a table
# does not read those, which saves a tenth of its time (8 ms of a table of 16,000 connections).
SHOWN = ConnectionRow._fields[: ConnectionRow._fields.index("client_ip")]
ALL_FIELDS = ConnectionRow._fields
# Each side's story (who opened it, who served it since when): read for --story only.
STORY = ConnectionRow._fields[ConnectionRow._fields.index("client_open_pid") :]
# ConnectionRow._make without its length check: the rows have exactly its fields
_connection_row = partial(tuple.__new__, ConnectionRow)


def connection_table(
    derived: Derived, at_ns: int, window_ns: int, fields: Sequence[str] = ALL_FIELDS
) -> list[ConnectionRow]:
    """Every connection open at ``at_ns`` or closed in the ``window_ns`` before it, sorted by
    open time, close time and id. ``fields``: those read (the rest keep their defaults: a
    reader that needs a few saves reading the others, the positions' lists above all)."""
    return connection_rows(read_connections(derived, at_ns, window_ns, fields))


def read_connections(
    derived: Derived, at_ns: int, window_ns: int, fields: Sequence[str] = ALL_FIELDS
) -> pa.Table:
    """The rows of ``connection_table``, as read from the store (``fields`` of ConnectionRow)."""
    query = f"SELECT {', '.join(fields)} FROM connections_at_ns({int(at_ns)}, {int(window_ns)})"
    with arrow_copy_allowed():
        table = derived.con.execute(query).to_arrow_table()
    assert table is not None  # None only once a result was fetched
    return table


def connection_rows(table: pa.Table) -> list[ConnectionRow]:
    """The rows of ``table`` (columns named as ConnectionRow's fields); the fields it lacks are
    at their defaults (None for those without one: a reader reads every field it uses)."""
    read = dict(zip(table.column_names, table.columns, strict=True))
    with gc_paused(lasting=True):  # tens of thousands of acyclic tuples, kept: see there
        columns = [
            read[name].to_pylist()
            if name in read
            else repeat(ConnectionRow._field_defaults.get(name), table.num_rows)
            for name in ConnectionRow._fields
        ]
        return list(map(_connection_row, zip(*columns, strict=True)))


@dataclass(frozen=True)
class Loss:
    lost: int
    first_wall_ns: int
    last_wall_ns: int
    reason: str


def losses_between(derived: Derived, start_ns: int, end_ns: int) -> list[Loss]:
    """Losses whose span overlaps (start_ns, end_ns]."""
    rows = derived.con.execute(
        "SELECT lost, first_wall_ns, last_wall_ns, reason FROM losses_raw "
        "WHERE last_wall_ns > ? AND first_wall_ns <= ? ORDER BY id",
        [start_ns, end_ns],
    ).fetchall()
    return [Loss(*row) for row in rows]


@dataclass
class TableResult:
    moment: Moment
    rows: list[ConnectionRow]
    losses: list[Loss] = field(default_factory=list)
    uncovered: list[str] = field(default_factory=list)  # hosts no recording covers then
    story: bool = False  # each side's story is shown

    @property
    def warnings(self) -> list[str]:
        return [*self.uncovered, *loss_warnings(self.losses)]


def loss_warnings(losses: list[Loss]) -> list[str]:
    return [
        f"{loss.lost} events were lost between {format_ns(loss.first_wall_ns)} and "
        f"{format_ns(loss.last_wall_ns)} ({loss.reason}): this window may be incomplete"
        for loss in losses
    ]


def moment_warnings(derived: Derived, moment: Moment) -> list[str]:
    """What a reader of ``moment`` must know: hosts the log holds nothing of then, losses."""
    losses = losses_between(derived, moment.start_ns, moment.at_ns)
    return [*uncovered(derived, moment.at_ns), *loss_warnings(losses)]


def table_at(
    derived: Derived,
    at_text: str,
    window_text: str = DEFAULT_WINDOW,
    last_read: bool = False,
    story: bool = False,
) -> TableResult:
    """The table at ``at_text``. ``last_read``: nothing more is read from ``derived`` after,
    and its connection is closed while the rows are made (see Derived.closed_meanwhile).
    ``story``: with who opened each side and who served it since when."""
    moment = resolve_moment(derived, at_text, window_text)
    fields = (*SHOWN, *STORY) if story else SHOWN
    connections = read_connections(derived, moment.at_ns, moment.window_ns, fields)
    losses = losses_between(derived, moment.start_ns, moment.at_ns)
    hosts_uncovered = uncovered(derived, moment.at_ns)
    with derived.closed_meanwhile() if last_read else contextlib.nullcontext():
        rows = connection_rows(connections)
        return TableResult(moment, rows, losses, hosts_uncovered, story)


def replay_table(log: LogStore, at_text: str, window_text: str = DEFAULT_WINDOW) -> TableResult:
    """The table at ``at_text``, from the derived store of ``log`` (brought up to date)."""
    with open_derived(log) as derived:
        return table_at(derived, at_text, window_text, last_read=True)


COLUMNS = (
    "id", "state", "direction", "client", "server", "opened_at", "closed_at", "duration",
    "client_pid", "client_comm", "server_pid", "server_comm", "client_netns", "server_netns",
    "nat_destination", "nat_source", "source", "host", "client_host", "server_host",
    "bytes_sent", "bytes_received", "positions", "note",
)  # fmt: skip
TABLE_COLUMNS = (
    "state", "direction", "client", "server", "nat", "opened_at", "duration", "client_proc",
    "server_proc", "source", "id",
)  # fmt: skip


def _nat(row: ConnectionRow) -> str:
    parts = []
    if row.nat_destination:
        parts.append(f"to {row.nat_destination}")
    if row.nat_source:
        parts.append(f"from {row.nat_source}")
    return ", ".join(parts)


def _proc(pid: int | None, comm: str | None, host: str | None = None) -> str:
    """A side's process, and its host when the row's sides are on different hosts."""
    if pid is None:
        return ""
    return f"{comm or '?'}({pid})" + (f"@{host}" if host else "")


def _across(row: ConnectionRow) -> bool:
    return bool(row.client_host and row.server_host and row.client_host != row.server_host)


def row_values(row: ConnectionRow) -> list[Any]:
    return [
        row.id, row.state, row.direction, row.client, row.server, format_ns(row.opened_ns),
        format_ns(row.closed_ns), format_duration(row.duration_ns), row.client_pid,
        row.client_comm, row.server_pid, row.server_comm, row.client_netns, row.server_netns,
        row.nat_destination, row.nat_source, row.source, row.host, row.client_host,
        row.server_host, row.bytes_sent, row.bytes_received, row.positions, row.note,
    ]  # fmt: skip


def row_document(row: ConnectionRow, story: bool = False) -> dict[str, Any]:
    document = dict(zip(COLUMNS, row_values(row), strict=True))
    document["duration_ns"] = row.duration_ns
    document["opened_ns"] = row.opened_ns
    document["closed_ns"] = row.closed_ns
    if story:
        document["client_story"] = side_story(row, "client")
        document["server_story"] = side_story(row, "server")
    return document


# The story's two steps, as each side names them.
STORY_NAMES = {"client": ("connected_by", "used_by"), "server": ("accepted_by", "served_by")}
STORY_COLUMNS = ("connected_by", "used_by", "accepted_by", "served_by")


def side_story(row: ConnectionRow, side: str) -> dict[str, Any] | None:
    """Who opened the ``side`` ("client" or "server") socket of ``row``, and which process
    served it (the row's process of that side) since when; None for a side not of this host."""
    opened, served = STORY_NAMES[side]
    values = row._asdict()
    open_pid, how = values[f"{side}_open_pid"], values[f"{side}_served_how"]
    if open_pid is None and how is None:
        return None
    return {
        opened: {
            "pid": open_pid,
            "comm": values[f"{side}_open_comm"],
            "at": format_ns(values[f"{side}_open_ns"]),
        },
        served: {
            "pid": values[f"{side}_pid"] if how != "shared" else None,
            "comm": values[f"{side}_comm"] if how != "shared" else None,
            "since": format_ns(values[f"{side}_served_since_ns"]),
            "how": how,
            "closed_at": format_ns(values[f"{side}_served_closed_ns"]),
            "seen_at": format_ns(values[f"{side}_served_seen_ns"]),
            "handed_after": format_ns(values[f"{side}_handed_after_ns"]),
            "handed_by": format_ns(values[f"{side}_handed_by_ns"]),
        },
    }


def story_texts(row: ConnectionRow) -> list[str]:
    """The story as the four columns of STORY_COLUMNS."""
    texts = []
    for side in ("client", "server"):
        story = side_story(row, side)
        opened, served = STORY_NAMES[side]
        if story is None:
            texts += ["", ""]
            continue
        first, second = story[opened], story[served]
        texts.append(f"{_proc(first['pid'], first['comm'])} at {first['at'] or '?'}")
        texts.append(_served_text(second))
    return texts


_HOW = {
    "opened": "since {since}",
    "fork": "since its fork at {since}",
    "alone": "since its fork at {since}, its other holders gone",
    "snapshot": "since its fork at {since}",
    "shared": "several processes held it (see note)",
}
_HANDED = "handed over at a moment not recorded"


def _served_text(served: dict[str, Any]) -> str:
    how = served["how"]
    if how is None:
        return ""
    handed = how == "passed" or (how == "snapshot" and not served["since"])
    text = _HANDED if handed else _HOW[how].format(since=served["since"] or "?")
    if how != "shared":
        text = f"{_proc(served['pid'], served['comm'])} {text}"
    if served["handed_after"]:
        text += f", after {served['handed_after']}"
    if served["handed_by"]:
        text += f", by {served['handed_by']}"
    if served["seen_at"]:
        text += f", as the /proc snapshot at {served['seen_at']} showed"
    if served["closed_at"]:
        text += f", closed it at {served['closed_at']}"
    return text


def render(result: TableResult, fmt: str) -> str:
    moment = result.moment
    if fmt == "json":
        head = {
            "at": format_ns(moment.at_ns),
            "window": format_duration(moment.window_ns),
            "window_start": format_ns(moment.start_ns),
            "warnings": result.warnings,
            "losses": [
                {
                    "lost": loss.lost,
                    "from": format_ns(loss.first_wall_ns),
                    "to": format_ns(loss.last_wall_ns),
                    "reason": loss.reason,
                }
                for loss in result.losses
            ],
        }
        documents = [row_document(row, result.story) for row in result.rows]
        return to_json_listing(head, "connections", documents)
    if fmt == "csv":
        if result.story:
            rows = [[*row_values(row), *story_texts(row)] for row in result.rows]
            return to_csv((*COLUMNS, *STORY_COLUMNS), rows)
        return to_csv(COLUMNS, [row_values(row) for row in result.rows])
    window = (
        f"open then, or closed in the {format_duration(moment.window_ns)} before"
        if moment.window_ns
        else "open then"
    )
    header = f"connections at {format_ns(moment.at_ns)} ({window}): {len(result.rows)}\n"
    table_rows = [
        [row.state, row.direction, row.client, row.server, _nat(row),
         format_ns(row.opened_ns) or "(before)",
         format_duration(row.duration_ns),
         _proc(row.client_pid, row.client_comm, row.client_host if _across(row) else None),
         _proc(row.server_pid, row.server_comm, row.server_host if _across(row) else None),
         row.source, row.id]
        for row in result.rows
    ]  # fmt: skip
    if result.story:
        table_rows = [
            [*cells, *story_texts(row)] for cells, row in zip(table_rows, result.rows, strict=True)
        ]
        return header + to_table((*TABLE_COLUMNS, *STORY_COLUMNS), table_rows)
    return header + to_table(TABLE_COLUMNS, table_rows)
