"""Benchmark: the ownership rule (replay.derived.owners) on a log with many forks.

A pre-fork server as PostgreSQL is one: a postmaster accepts every connection and forks a
backend for it, which serves it, closes it (an OWNER event) and exits; a few connections
are held open for the whole log, each by its backend. /proc snapshots every 15 s show each
open socket's holder. Two logs of the same connections are written side by side:

- ``forks``: as recorded by default (FORK and OWNER events);
- ``no_forks``: as with ``--no-follow-forks`` (neither), the snapshots the same.

On each, in one run: the first build of the derived store (``build_s``), the table at
``--seeks`` moments with the story (``scope-replay --at T --window 15s --story``, the store
current: ``seek_median_s``), and scope-query over every connection of the log (the
``connections`` view, each socket's process as it ended: ``view_median_s``). The held
connections are open at every moment while the postmaster forks on: each moment's rule
follows every backend forked since they opened.

One RESULT line per log, then one with the ratios (forks / no_forks):
RESULT log=<forks|no_forks> events=<n> connections=<n> held=<n> build_s=<n>
       seek_median_s=<n> view_median_s=<n> served_by_backend=<n> shared=<n>
RESULT ratio snapshots=<bool> build=<n> seek=<n> view=<n>

``--no-snapshots``: the same logs without snapshots (``--snapshot-interval 0``): the held
connections' holders are then every backend forked since they opened (``shared``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.synthetic import ROOT_NETNS, UPTIME_NS, WALL_START_NS
from eventlog.clock import ClockModel
from eventlog.events import (
    TCP_ESTABLISHED,
    ClockSample,
    Event,
    Kind,
    Snapshot,
    SnapshotConnection,
    SnapshotProcess,
)
from eventlog.location import resolve
from eventlog.recordings import (
    STOP_DURATION,
    HostIdentity,
    RecordingStart,
    begin_recording,
    end_recording,
)
from eventlog.store import Purpose, open_log
from eventlog.writer import LogWriter
from replay import query
from replay.derived.store import open_derived
from replay.table import table_at

LOOPBACK = bytes([127, 0, 0, 1])
SERVER_PORT = 5432
POSTMASTER = 100
CLIENTS = tuple(range(200, 210))
FIRST_BACKEND = 10_000
SNAPSHOT_EVERY_NS = 15 * 10**9
MS = 1_000_000


@dataclass
class Conn:
    """A connection of the log: its client's pid and port, its backend, when it closes."""

    client: int
    port: int
    backend: int
    close_ns: int | None  # None: held to the end
    sock: int  # the server socket's id; the client's is sock + 1


def connections(count: int, held: int, seed: int) -> list[tuple[int, Conn]]:
    """(accept time, connection): ``held`` at the start, then ``count`` every 5 ms or so."""
    rng = random.Random(seed)
    out = []
    mono = UPTIME_NS + 100 * MS
    for index in range(held + count):
        mono += rng.randrange(2 * MS, 8 * MS)
        close = None if index < held else mono + rng.randrange(2 * MS, 20 * MS)
        port = 32768 + index % 28000
        out.append((mono, Conn(CLIENTS[index % len(CLIENTS)], port, FIRST_BACKEND + index,
                               close, 2 * index + 1)))  # fmt: skip
    return out


def events_of(mono: int, c: Conn, follow_forks: bool) -> list[Event]:
    """A connection's events: connect, accept, the backend's fork, and (unless held) its
    close by the backend, both sides' closes, and the backend's exit."""
    client = (LOOPBACK, c.port, LOOPBACK, SERVER_PORT)
    server = (LOOPBACK, SERVER_PORT, LOOPBACK, c.port)
    out = [
        Event(Kind.CONNECT, mono, c.client, "pgbench", ROOT_NETNS, *client, c.sock + 1),
        Event(Kind.ACCEPT, mono + 1000, POSTMASTER, "postgres", ROOT_NETNS, *server, c.sock),
    ]
    if follow_forks:
        out.append(Event(Kind.FORK, mono + 2000, c.backend, "postgres", ROOT_NETNS,
                         extra={"ppid": POSTMASTER}))  # fmt: skip
    if c.close_ns is None:
        return out
    if follow_forks:
        out.append(Event(Kind.OWNER, c.close_ns, c.backend, "postgres", ROOT_NETNS, *server,
                         c.sock, extra={"owner": POSTMASTER, "state": 4}))  # fmt: skip
    out += [
        Event(Kind.CLOSE, c.close_ns + 1000, c.client, "pgbench", ROOT_NETNS, *client,
              c.sock + 1, 100, 200),
        Event(Kind.CLOSE, c.close_ns + 2000, POSTMASTER, "postgres", ROOT_NETNS, *server,
              c.sock, 200, 100),
        Event(Kind.EXIT, c.close_ns + 3000, c.backend, "postgres", ROOT_NETNS,
              extra={"ppid": POSTMASTER, "exit_code": 0}),
    ]  # fmt: skip
    return out


def snapshot_at(mono: int, open_conns: list[Conn]) -> tuple[Event, Snapshot]:
    """What /proc shows at ``mono``: each open connection's two sockets and their holders."""
    rows = []
    for c in open_conns:
        server = (LOOPBACK, SERVER_PORT, LOOPBACK, c.port)
        client = (LOOPBACK, c.port, LOOPBACK, SERVER_PORT)
        inode = 10**6 + c.sock
        rows.append(SnapshotConnection(ROOT_NETNS, *server, TCP_ESTABLISHED, inode, 0, c.backend))
        rows.append(
            SnapshotConnection(ROOT_NETNS, *client, TCP_ESTABLISHED, inode + 1, 0, c.client)
        )
    pids = sorted({POSTMASTER, *CLIENTS, *(c.backend for c in open_conns)})
    processes = tuple(
        SnapshotProcess(pid, 1, "postgres" if pid not in CLIENTS else "pgbench", "", "",
                        ROOT_NETNS, UPTIME_NS)
        for pid in pids
    )  # fmt: skip
    extra = {"initial": False, "walk_ns": 0, "namespace_list": [ROOT_NETNS], "more_holders": []}
    marker = Event(Kind.SNAPSHOT, mono, extra=extra)
    rows.sort(key=lambda r: (r.lport, r.rport, r.inode))
    return marker, Snapshot(connections=tuple(rows), processes=processes)


def generate(path: Path, conns: list[tuple[int, Conn]], follow_forks: bool, snapshots: bool) -> int:
    """Write the log; the number of events."""
    start = ClockSample(UPTIME_NS, WALL_START_NS - UPTIME_NS, 100)
    store = open_log(resolve(str(path)), Purpose.RECORD)
    host = HostIdentity("bench-host", "0" * 32, "boot-bench", "6.18.0")
    recording = begin_recording(store, RecordingStart(host, "ebpf", start, ROOT_NETNS))
    writer = LogWriter(store, recording, ClockModel([start]))
    by_sock = {c.sock: c for _, c in conns}
    timeline: list[tuple[int, int, Event | None]] = []  # (mono, order, event; None: snapshot)
    for mono, c in conns:
        timeline += [(e.mono_ns, 1, e) for e in events_of(mono, c, follow_forks)]
    end = max(t for t, _, _ in timeline) + 10**9
    if snapshots:
        timeline += [(t, 0, None) for t in range(UPTIME_NS, end, SNAPSHOT_EVERY_NS)]
    timeline.sort(key=lambda item: (item[0], item[1]))
    open_now: dict[int, Conn] = {}
    for mono, _, event in timeline:
        if event is None:
            writer.add_snapshot(*snapshot_at(mono, [open_now[k] for k in sorted(open_now)]))
            continue
        if event.kind == Kind.ACCEPT and event.sock_id is not None:
            open_now[event.sock_id] = by_sock[event.sock_id]
        elif event.kind == Kind.CLOSE and event.sock_id is not None:
            open_now.pop(event.sock_id, None)
        writer.add(event)
        if writer.pending_events >= 20_000:
            writer.flush()
    writer.flush()
    writer.close()
    end_recording(store, recording, end, STOP_DURATION)
    store.close()
    return len(timeline)


@dataclass
class Figures:
    log: str
    events: int
    build_s: float
    seek_median_s: float
    view_median_s: float
    served_by_backend: int  # of the held connections' rows at the last moment
    shared: int

    def line(self, connections: int, held: int) -> str:
        return (
            f"RESULT log={self.log} events={self.events} connections={connections} "
            f"held={held} build_s={self.build_s:.2f} seek_median_s={self.seek_median_s:.3f} "
            f"view_median_s={self.view_median_s:.3f} "
            f"served_by_backend={self.served_by_backend} shared={self.shared}"
        )


VIEW_SQL = (
    "SELECT count(*) AS n, count(DISTINCT server_pid) AS servers, "
    "count(*) FILTER (WHERE server_served_how = 'shared') AS shared FROM connections"
)


def measure(log: str, db: Path, events: int, span: tuple[int, int], seeks: int,
            rounds: int, held_until: int) -> Figures:  # fmt: skip
    location = resolve(str(db))
    started = time.perf_counter()
    with open_log(location, Purpose.READ) as store, open_derived(store):
        pass
    build_s = time.perf_counter() - started
    rng = random.Random(20)
    moments = sorted(rng.randrange(*span) for _ in range(seeks))
    seek_times = []
    backend = shared = 0
    for at_ns in moments:
        started = time.perf_counter()
        with open_log(location, Purpose.READ) as store, open_derived(store) as derived:
            result = table_at(derived, str(at_ns), "15s", story=True)
        seek_times.append(time.perf_counter() - started)
        held_rows = [r for r in result.rows if r.server_open_pid == POSTMASTER
                     and r.state == "open" and r.server_open_ns is not None
                     and r.server_open_ns < held_until]  # fmt: skip
        backend = sum(1 for r in held_rows if (r.server_pid or 0) >= FIRST_BACKEND)
        shared = sum(1 for r in held_rows if r.server_served_how == "shared")
        del result
    view_times = []
    for _ in range(rounds):
        out = io.StringIO()
        started = time.perf_counter()
        with open_log(location, Purpose.READ) as store:
            query.run_query(store, VIEW_SQL, "json", out=out)
        view_times.append(time.perf_counter() - started)
    print(f"{log}: {out.getvalue().strip()}", flush=True)
    return Figures(log, events, build_s, statistics.median(seek_times),
                   statistics.median(view_times), backend, shared)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--held", type=int, default=50)
    parser.add_argument("--seeks", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--no-snapshots", action="store_true",
        help="logs without /proc snapshots (as --snapshot-interval 0 records them)",
    )  # fmt: skip
    args = parser.parse_args()
    conns = connections(args.connections, args.held, seed=1)
    first_ns = WALL_START_NS - UPTIME_NS + conns[args.held][0]  # held ones opened before
    last_ns = WALL_START_NS - UPTIME_NS + conns[-1][0]
    span = (first_ns + 20 * 10**9, last_ns)
    with tempfile.TemporaryDirectory(prefix="scope-bench-owners-") as tmp:
        os.environ["SCOPE_CACHE_DIR"] = str(Path(tmp) / "cache")
        figures = {}
        for log, follow in (("forks", True), ("no_forks", False)):
            db = Path(tmp) / f"{log}.db"
            started = time.perf_counter()
            events = generate(db, conns, follow, snapshots=not args.no_snapshots)
            print(f"{log}: {events:,} events written in {time.perf_counter() - started:.1f} s",
                  flush=True)  # fmt: skip
        for log in ("forks", "no_forks"):  # measured one after the other, on the same load
            db = Path(tmp) / f"{log}.db"
            with open_log(resolve(str(db)), Purpose.READ) as store, store.connect() as conn:
                (events,) = conn.exec_driver_sql("SELECT count(*) FROM events").one()
            figures[log] = measure(log, db, int(events), span, args.seeks, args.rounds, first_ns)
            print(figures[log].line(args.connections, args.held), flush=True)
    f, n = figures["forks"], figures["no_forks"]
    print(
        f"RESULT ratio snapshots={not args.no_snapshots} build={f.build_s / n.build_s:.2f} "
        f"seek={f.seek_median_s / n.seek_median_s:.2f} view={f.view_median_s / n.view_median_s:.2f}"
    )
    print(json.dumps({"load_average": os.getloadavg()}))


if __name__ == "__main__":
    main()
