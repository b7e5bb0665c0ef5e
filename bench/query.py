"""Benchmark: scope-query (DuckDB over the derived store) versus the same SQL on the SQLite
log.

On the synthetic log of bench/replay.py (10,000,000 events), three questions:

1. short-lived connections (under 10 ms) per process in a 5-minute window;
2. top talkers: processes by number of connections opened;
3. failed connects by destination.

Each runs through scope-query's library entry point (``replay.query.run_query``: the
derived store's currency check, the DuckDB query, JSON output), and, in the same process and
run, as the equivalent SQL on the SQLite log with Python's sqlite3: the same work on both
sides. The first call builds the derived store from nothing (first_query_s includes that).
Medians over ``--rounds`` runs of each query are printed, the answers are compared, and the
wall time of the `scope-query` command itself (a new Python process) is printed for
reference. Then the reading engine's figures (bench/replay.py) are measured and printed.

Last line: the RESULT line of bench/replay.py.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.replay import measure
from bench.synthetic import ensure_log
from eventlog.location import resolve
from eventlog.store import Purpose, open_log
from replay import query

BIN = Path(sys.executable).parent
TEN_MS = 10_000_000


def duckdb_queries(start_ns: int) -> list[str]:
    window = f"{start_ns} AND {start_ns + 300 * 10**9}"
    return [
        f"""SELECT o.comm, count(*) AS short_lived
            FROM events o JOIN events c
              ON c.recording_id = o.recording_id AND c.sock_id = o.sock_id AND c.kind = 'close'
            WHERE o.kind IN ('connect', 'accept') AND o.wall_ns BETWEEN {window}
              AND c.mono_ns - o.mono_ns < {TEN_MS}
            GROUP BY o.comm ORDER BY short_lived DESC, o.comm""",
        """SELECT comm, count(*) AS connections FROM events WHERE kind = 'connect'
           GROUP BY comm ORDER BY connections DESC, comm LIMIT 10""",
        """SELECT raddr, rport, count(*) AS failed FROM events WHERE kind = 'connect_failed'
           GROUP BY raddr, rport ORDER BY failed DESC, raddr, rport""",
    ]


def sqlite_queries(conn: sqlite3.Connection, start_ns: int) -> list[str]:
    """The same questions for SQLite: names through the dictionaries, the 5-minute window
    through the batches index (events carry monotonic time; batches map it to wall time)."""
    first, last = conn.execute(
        "SELECT min(first_position), max(last_position) FROM batches "
        "WHERE max_wall_ns >= ? AND min_wall_ns <= ?",
        (start_ns, start_ns + 300 * 10**9),
    ).fetchone()
    offset = conn.execute(
        "SELECT offset_ns FROM clock_samples ORDER BY mono_ns LIMIT 1"
    ).fetchone()[0]
    return [
        f"""SELECT n.name, count(*) AS short_lived
            FROM events o JOIN events c
              ON c.recording_id = o.recording_id AND c.sock_id = o.sock_id AND c.kind = 3
            JOIN comms n ON n.id = o.comm_id
            WHERE o.kind IN (1, 2) AND o.position BETWEEN {first} AND {last}
              AND o.mono_ns + {offset} BETWEEN {start_ns} AND {start_ns + 300 * 10**9}
              AND c.position > o.position AND c.mono_ns - o.mono_ns < {TEN_MS}
            GROUP BY n.name ORDER BY short_lived DESC, n.name""",
        """SELECT n.name, count(*) AS connections FROM events e JOIN comms n ON n.id = e.comm_id
           WHERE e.kind = 1 GROUP BY n.name ORDER BY connections DESC, n.name LIMIT 10""",
        """SELECT raddr, rport, count(*) AS failed FROM events WHERE kind = 4
           GROUP BY raddr, rport ORDER BY failed DESC, raddr, rport""",
    ]


def run_library(db: str, sql: str, mirror: Path) -> tuple[float, list[list[object]]]:
    started = time.perf_counter()
    out = io.StringIO()
    with open_log(resolve(db), Purpose.READ) as store:
        query.run_query(store, sql, "json", store_path=mirror, out=out)
    elapsed = time.perf_counter() - started
    return elapsed, [list(row.values()) for row in json.loads(out.getvalue())]


def run_scope_query(db: str, sql: str, cache: Path) -> tuple[float, list[list[object]]]:
    started = time.perf_counter()
    result = subprocess.run(
        [str(BIN / "scope-query"), "--db", db, "--format", "json", sql],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SCOPE_CACHE_DIR": str(cache)},
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return elapsed, [list(row.values()) for row in json.loads(result.stdout)]


def run_sqlite(db: str, sql: str) -> tuple[float, list[list[object]]]:
    started = time.perf_counter()
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(sql).fetchall()
    return time.perf_counter() - started, [list(row) for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    db = str(ensure_log(args.events))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        start = conn.execute("SELECT min(min_wall_ns) FROM batches").fetchone()[0] + 600 * 10**9
        lite_sql = sqlite_queries(conn, start)
    duck_sql = duckdb_queries(start)
    with tempfile.TemporaryDirectory(prefix="scope-bench-query-") as tmp:
        cache = Path(tmp)
        mirror = cache / "mirror.duckdb"
        first_query_s, _ = run_library(db, duck_sql[1], mirror)
        print(f"first query (derived store built from nothing): {first_query_s:.2f} s", flush=True)
        command_s, _ = run_scope_query(db, duck_sql[1], cache)  # builds the CLI's own mirror
        command_s, _ = run_scope_query(db, duck_sql[1], cache)
        print(f"the scope-query command, start to end: {command_s:.2f} s", flush=True)
        duck_times: list[float] = []
        lite_times: list[float] = []
        for number, (duck, lite) in enumerate(zip(duck_sql, lite_sql, strict=True), start=1):
            per_duck, per_lite = [], []
            duck_rows: list[list[object]] = []
            lite_rows: list[list[object]] = []
            for _ in range(args.rounds):
                seconds, duck_rows = run_library(db, duck, mirror)
                per_duck.append(seconds)
                seconds, lite_rows = run_sqlite(db, lite)
                per_lite.append(seconds)
            duck_times += per_duck
            lite_times += per_lite
            counts = [row[-1] for row in duck_rows], [row[-1] for row in lite_rows]
            agree = len(duck_rows) == len(lite_rows) and counts[0] == counts[1]
            print(
                f"query {number}: scope-query {statistics.median(per_duck):.3f} s, "
                f"sqlite {statistics.median(per_lite):.3f} s, {len(duck_rows)} rows, "
                f"counts agree: {agree}",
                flush=True,
            )
    duck_median, lite_median = statistics.median(duck_times), statistics.median(lite_times)
    print(
        f"scope-query median {duck_median:.3f} s, sqlite median {lite_median:.3f} s "
        f"({lite_median / duck_median:.1f}x), first query {first_query_s:.2f} s",
        flush=True,
    )
    print(measure(args.events, rounds=args.rounds).line())


if __name__ == "__main__":
    main()
