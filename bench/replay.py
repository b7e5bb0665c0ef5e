"""Benchmark: the reading engine over a large synthetic log (bench/synthetic.py, 10,000,000
events).

Measures, in one run, on a copy of the log (the cached one is never written):

- the first build of the derived store from nothing (``first_build_s``; the log's events per
  second of it, ``derive_events_per_s``);
- ``scope-replay --at T`` (the connection table with a 15 s window, through the library:
  opening the log and its store, the currency check, the table) at 20 random moments, the
  store current (``seek_median_s``, ``seek_p95_s``);
- bringing the store up to date after 100,000 new events are appended
  (``incremental_sync_s``);
- scope-query's three benchmark questions (bench/query.py), median of 5 runs each
  (``query_median_s``).

The engine before this one (C fold over checkpoints in the log, a DuckDB mirror for SQL) is
gone, so it cannot run beside this one; its last figures on this benchmark were
seek 0.126-0.157 s median after 43 s of checkpoints, and 132-279 s for the mirror's first
build.

Last line:
RESULT events=<n> derive_events_per_s=<n> first_build_s=<n> seek_median_s=<n> seek_p95_s=<n>
       incremental_sync_s=<n> query_median_s=<n>
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.synthetic import ROOT_NETNS, Generator, cache_dir, ensure_log
from eventlog.clock import ClockModel
from eventlog.events import ClockSample
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
from replay.moment import log_span
from replay.table import replay_table

WINDOW = "15s"
NEW_EVENTS = 100_000


@dataclass
class Figures:
    events: int
    first_build_s: float
    seek_median_s: float
    seek_p95_s: float
    incremental_sync_s: float
    query_median_s: float

    def line(self) -> str:
        return (
            f"RESULT events={self.events} "
            f"derive_events_per_s={self.events / self.first_build_s:.0f} "
            f"first_build_s={self.first_build_s:.2f} seek_median_s={self.seek_median_s:.3f} "
            f"seek_p95_s={self.seek_p95_s:.3f} incremental_sync_s={self.incremental_sync_s:.3f} "
            f"query_median_s={self.query_median_s:.3f}"
        )


@contextmanager
def working_copy(events: int) -> Iterator[Path]:
    """A copy of the cached synthetic log, and a cache directory for its store."""
    source = ensure_log(events)
    with tempfile.TemporaryDirectory(prefix="scope-bench-", dir=cache_dir()) as tmp:
        copy = Path(tmp) / "log.db"
        shutil.copyfile(source, copy)
        copy.chmod(0o600)
        os.environ["SCOPE_CACHE_DIR"] = str(Path(tmp) / "cache")
        yield copy


def first_build(db: Path) -> float:
    started = time.perf_counter()
    with open_log(resolve(str(db)), Purpose.READ) as log, open_derived(log) as derived:
        assert derived.stats.rebuilt or derived.stats.events > 0
        print(f"first build: {derived.stats}", flush=True)
    return time.perf_counter() - started


def seeks(db: Path, count: int) -> list[float]:
    with open_log(resolve(str(db)), Purpose.READ) as log, open_derived(log) as derived:
        span = log_span(derived)
    assert span is not None
    rng = random.Random(20)
    moments = sorted(rng.randrange(span.start_ns + 20 * 10**9, span.end_ns) for _ in range(count))
    times = []
    for at_ns in moments:
        started = time.perf_counter()
        with open_log(resolve(str(db)), Purpose.READ) as log:
            result = replay_table(log, str(at_ns), WINDOW)
        times.append(time.perf_counter() - started)
        print(f"at {at_ns}: {len(result.rows)} connections in {times[-1]:.3f} s", flush=True)
        # Freed here, not when the next seek's result replaces it: inside the next seek's
        # timing, freeing 16,000 rows counted 10 ms against a seek that did not make them.
        del result
    return times


def append_events(db: Path, count: int) -> None:
    """``count`` more events, as a new recording of the synthetic host after the log's end."""
    with open_log(resolve(str(db)), Purpose.RECORD) as store:
        with store.connect() as conn:
            (last_mono,) = conn.exec_driver_sql("SELECT max(mono_ns) FROM events").one()
            (offset,) = conn.exec_driver_sql("SELECT offset_ns FROM clock_samples LIMIT 1").one()
        generator = Generator(seed=7)
        generator.mono = int(last_mono) + 10**9
        start = ClockSample(generator.mono, int(offset), 100)
        host = HostIdentity("bench-host", "0" * 32, "boot-bench-2", "6.18.0")
        recording = begin_recording(store, RecordingStart(host, "ebpf", start, ROOT_NETNS))
        writer = LogWriter(store, recording, ClockModel([start]))
        written = 0
        while written < count:
            batch = generator.step()[: count - written]
            writer.add_events(batch)
            written += len(batch)
            if writer.pending_events >= 10_000:
                writer.flush()
        writer.flush()
        writer.close()
        end_recording(store, recording, generator.mono, STOP_DURATION)


def incremental_sync(db: Path) -> float:
    started = time.perf_counter()
    with open_log(resolve(str(db)), Purpose.READ) as log, open_derived(log) as derived:
        print(f"sync: {derived.stats}", flush=True)
        assert not derived.stats.rebuilt
    return time.perf_counter() - started


def query_medians(db: Path, rounds: int) -> float:
    """The median time of scope-query's benchmark questions (bench/query.py)."""
    from bench.query import duckdb_queries

    with open_log(resolve(str(db)), Purpose.READ) as log, open_derived(log) as derived:
        span = log_span(derived)
    assert span is not None
    times = []
    for sql in duckdb_queries(span.start_ns + 600 * 10**9):
        for _ in range(rounds):
            started = time.perf_counter()
            with open_log(resolve(str(db)), Purpose.READ) as log:
                query.run_query(log, sql, "json", out=io.StringIO())
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(events: int, seek_count: int = 20, rounds: int = 5) -> Figures:
    with working_copy(events) as db:
        build_s = first_build(db)
        print(f"first build of the derived store: {build_s:.2f} s", flush=True)
        seek_times = seeks(db, seek_count)
        query_s = query_medians(db, rounds)
        append_events(db, NEW_EVENTS)
        sync_s = incremental_sync(db)
        print(f"sync of {NEW_EVENTS:,} new events: {sync_s:.3f} s", flush=True)
    ordered = sorted(seek_times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return Figures(events, build_s, statistics.median(seek_times), p95, sync_s, query_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--seeks", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(measure(args.events, args.seeks, args.rounds).line())


if __name__ == "__main__":
    main()
