"""`scope-replay --at T`: the connection table at a moment, with its window and warnings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eventlog.batch import gc_paused
from eventlog.reader import LossRecord
from eventlog.store import LogStore
from replay.connections import ConnectionRow, connection_table
from replay.engine import Replayer
from replay.output import to_csv, to_json_listing, to_table
from replay.timespec import check_inside, format_duration, format_ns, parse_duration, parse_moment

DEFAULT_WINDOW = "15s"


@dataclass
class Moment:
    """A resolved ``--at``/``--window`` pair."""

    at_ns: int
    window_ns: int
    text: str

    @property
    def start_ns(self) -> int:
        return self.at_ns - self.window_ns


@dataclass
class TableResult:
    moment: Moment
    rows: list[ConnectionRow]
    losses: list[LossRecord] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [
            f"{loss.lost} events were lost between {format_ns(loss.first_wall_ns)} and "
            f"{format_ns(loss.last_wall_ns)} ({loss.reason}): this window may be incomplete"
            for loss in self.losses
        ]


def resolve_moment(replayer: Replayer, at_text: str, window_text: str) -> Moment:
    span = replayer.log_span()
    at_ns = parse_moment(at_text, span)
    check_inside(at_ns, span, at_text)
    window_ns = parse_duration(window_text, "window")
    return Moment(at_ns, window_ns, at_text)


def losses_overlapping(replayer: Replayer, start_ns: int, end_ns: int) -> list[LossRecord]:
    return [
        loss
        for loss in replayer.reader.losses()
        if loss.last_wall_ns > start_ns and loss.first_wall_ns <= end_ns
    ]


def replay_table(
    store: LogStore, at_text: str, window_text: str = DEFAULT_WINDOW, use_checkpoints: bool = True
) -> TableResult:
    replayer = Replayer(store, use_checkpoints=use_checkpoints)
    moment = resolve_moment(replayer, at_text, window_text)
    with gc_paused():  # many short-lived, acyclic objects: collecting them as they come is waste
        window = replayer.window(moment.at_ns, moment.window_ns)
        rows = connection_table(replayer.reader, window, replayer.runs)
        del window  # before the collector resumes, so that its first pass walks only the rows
    return TableResult(moment, rows, losses_overlapping(replayer, moment.start_ns, moment.at_ns))


COLUMNS = (
    "id", "state", "direction", "client", "server", "opened_at", "closed_at", "duration",
    "client_pid", "client_comm", "server_pid", "server_comm", "client_netns", "server_netns",
    "nat_destination", "nat_source", "source", "host", "bytes_sent", "bytes_received",
    "positions", "note",
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


def _proc(pid: int | None, comm: str | None) -> str:
    if pid is None:
        return ""
    return f"{comm or '?'}({pid})"


def row_values(row: ConnectionRow) -> list[Any]:
    return [
        row.id, row.state, row.direction, row.client, row.server, format_ns(row.opened_ns),
        format_ns(row.closed_ns), format_duration(row.duration_ns), row.client_pid,
        row.client_comm, row.server_pid, row.server_comm, row.client_netns, row.server_netns,
        row.nat_destination, row.nat_source, row.source, row.host, row.bytes_sent,
        row.bytes_received, row.positions, row.note,
    ]  # fmt: skip


def row_document(row: ConnectionRow) -> dict[str, Any]:
    document = dict(zip(COLUMNS, row_values(row), strict=True))
    document["duration_ns"] = row.duration_ns
    document["opened_ns"] = row.opened_ns
    document["closed_ns"] = row.closed_ns
    return document


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
        return to_json_listing(head, "connections", [row_document(row) for row in result.rows])
    if fmt == "csv":
        return to_csv(COLUMNS, [row_values(row) for row in result.rows])
    header = (
        f"connections at {format_ns(moment.at_ns)} "
        f"(open then, or closed in the {format_duration(moment.window_ns)} before): "
        f"{len(result.rows)}\n"
    )
    table_rows = [
        [row.state, row.direction, row.client, row.server, _nat(row),
         format_ns(row.opened_ns) or "(before)",
         format_duration(row.duration_ns), _proc(row.client_pid, row.client_comm),
         _proc(row.server_pid, row.server_comm), row.source, row.id]
        for row in result.rows
    ]  # fmt: skip
    return header + to_table(TABLE_COLUMNS, table_rows)
