"""What scope-replay's table and scope-query's views say of the same connections, side by
side, for the tests that check the two agree."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from eventlog.location import LogLocation
from eventlog.store import Purpose, open_log
from replay import query
from replay.table import render, replay_table


def rows_of(location: LogLocation, text: str, mirror: Path) -> list[dict[str, Any]]:
    out = io.StringIO()
    with open_log(location, Purpose.READ) as store:
        query.run_query(store, text, "json", store_path=mirror, out=out)
    return json.loads(out.getvalue())  # type: ignore[no-any-return]


# Every column the two say of a connection: scope-replay's JSON and scope-query's table.
AGREED = (
    "id", "state", "direction", "host", "client_host", "server_host", "client", "server",
    "opened_ns", "closed_ns", "duration_ns", "client_pid", "client_comm", "client_netns",
    "server_pid", "server_comm", "server_netns", "nat_destination", "nat_source", "source",
    "note", "bytes_sent", "bytes_received", "positions",
)  # fmt: skip


def replay_rows(location: LogLocation, at_ns: int, window_ns: int) -> list[tuple[Any, ...]]:
    with open_log(location, Purpose.READ) as store:
        result = replay_table(store, str(at_ns), f"{window_ns}ns")
    documents = json.loads(render(result, "json"))["connections"]
    return [tuple(d[c] for c in AGREED) for d in documents]


def query_rows(
    location: LogLocation, at_ns: int, window_ns: int, mirror: Path
) -> list[tuple[Any, ...]]:
    rows = rows_of(location, f"SELECT * FROM connections_at_ns({at_ns}, {window_ns})", mirror)
    return [tuple(r[c] for c in AGREED) for r in rows]
