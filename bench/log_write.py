"""Benchmark: appending connection events through the log writer versus raw sqlite3.

Appends N events (default 1,000,000) through ``LogWriter`` to a SQLite log and, in the same
run, the same rows with plain ``sqlite3.executemany`` in 5,000-row transactions into a copy of
the same schema (same pragmas: WAL, synchronous=FULL). Each side runs ``--rounds`` times,
alternating; medians are reported. With a PostgreSQL server (started here from the Debian
binaries as an unprivileged user, or given by ``--postgres URL``) the writer's rate there too.

Last line:
RESULT writer_events_per_s=<n> raw_events_per_s=<n> ratio=<writer/raw> bytes_per_event=<n>
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.workload import UPTIME_NS, connection_events
from eventlog.batch import encode_extra
from eventlog.clock import ClockModel
from eventlog.events import ClockSample, Event
from eventlog.location import resolve
from eventlog.recordings import RecordingStart, begin_recording
from eventlog.sqlite import insert_events_sql
from eventlog.store import Purpose, open_log
from eventlog.writer import LogWriter
from recorder.host import host_identity

START = ClockSample(mono_ns=UPTIME_NS, offset_ns=1_764_000_000 * 10**9, uncertainty_ns=50)
CHUNK = 1024  # events per hand-over, as the capture drains its ring buffer


def _open_recording(location_text: str) -> tuple[object, LogWriter]:
    store = open_log(resolve(location_text), Purpose.RECORD)
    recording_id = begin_recording(
        store, RecordingStart(host=host_identity(), mode="ebpf", started=START, root_netns=None)
    )
    return store, LogWriter(store, recording_id, ClockModel([START]))


def run_writer(location_text: str, events: list[Event]) -> float:
    store, writer = _open_recording(location_text)
    started = time.perf_counter()
    for offset in range(0, len(events), CHUNK):
        writer.add_events(events[offset : offset + CHUNK])
        if writer.pending_events >= writer.max_events:
            writer.flush()
    writer.flush()
    elapsed = time.perf_counter() - started
    writer.close()
    store.close()  # type: ignore[attr-defined]
    return elapsed


def run_raw(path: Path, events: list[Event], schema_from: Path) -> float:
    """The same rows, as tuples ready for the table, with plain executemany."""
    comm_ids: dict[str, int] = {}
    netns_ids: dict[int, int] = {}
    rows = []
    for event in events:
        comm_id = comm_ids.setdefault(event.comm, len(comm_ids) + 1) if event.comm else None
        netns_id = netns_ids.setdefault(event.netns, len(netns_ids) + 1) if event.netns else None
        rows.append(
            (event.kind, event.mono_ns, event.pid, comm_id, netns_id, event.laddr,
             event.lport, event.raddr, event.rport, event.sock_id, event.bytes_sent,
             event.bytes_received, encode_extra(event.extra))
        )  # fmt: skip
    with sqlite3.connect(schema_from) as source:
        ddl = [
            sql for (sql,) in source.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")
        ]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    for statement in ddl:
        conn.execute(statement)
    started = time.perf_counter()
    for offset in range(0, len(rows), 5000):
        conn.execute("BEGIN")
        conn.executemany(insert_events_sql(1), rows[offset : offset + 5000])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def file_bytes(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


@contextlib.contextmanager
def postgres_url(given: str | None) -> Iterator[str | None]:
    if given:
        yield given
        return
    from tests.capabilities import postgres_bindir
    from tests.postgres import postgres_server

    bindir = postgres_bindir()
    if bindir is None:
        yield None
        return
    with postgres_server(bindir) as server:
        yield server.create_database("bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", help="a PostgreSQL URL (default: start a temporary server)")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()

    events = list(connection_events(args.events, seed=7))
    writer_times, raw_times, sizes = [], [], []
    with tempfile.TemporaryDirectory(prefix="scope-bench-") as tmp:
        for round_number in range(args.rounds):
            log = Path(tmp) / f"writer-{round_number}.db"
            writer_times.append(run_writer(str(log), events))
            sizes.append(file_bytes(log) / len(events))
            raw = Path(tmp) / f"raw-{round_number}.db"
            raw_times.append(run_raw(raw, events, schema_from=log))
            print(
                f"round {round_number + 1}: writer {len(events) / writer_times[-1]:,.0f} ev/s, "
                f"raw {len(events) / raw_times[-1]:,.0f} ev/s, {sizes[-1]:.1f} B/event",
                flush=True,
            )
            os.unlink(raw)
            for leftover in Path(tmp).glob(f"writer-{round_number}.db*"):
                os.unlink(leftover)
        pg_rate = None
        if not args.no_postgres:
            with postgres_url(args.postgres) as url:
                if url:
                    pg_rate = len(events) / run_writer(url, events)
                    print(f"postgres: writer {pg_rate:,.0f} ev/s (COPY, default batch size)")
    writer_rate = len(events) / statistics.median(writer_times)
    raw_rate = len(events) / statistics.median(raw_times)
    print(
        f"RESULT writer_events_per_s={writer_rate:.0f} raw_events_per_s={raw_rate:.0f} "
        f"ratio={writer_rate / raw_rate:.3f} bytes_per_event={statistics.median(sizes):.1f}"
        + (f" postgres_writer_events_per_s={pg_rate:.0f}" if pg_rate else "")
    )


if __name__ == "__main__":
    main()
