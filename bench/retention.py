"""Benchmark: retention and the archive.

In one run:

- on a copy of the synthetic 10,000,000-event log (bench/synthetic.py; the cached one is
  never written), ``scope-replay compact`` of the whole log: the archive's bytes per event
  (``archive_bytes_per_event``; the live log takes about 58 on the same events) and the
  cut's speed, archive written and live rows deleted: median of ``--compactions``, each of
  a fresh copy (``compact_events_per_s``);
- ``scope-replay --at T`` (connection table, 15 s window, through the library as
  bench/replay.py times it) at moments inside the archive, the derived store current:
  median of ``--seeks`` moments (``replay_in_archive_s``); the store's first build from the
  archive is printed, not in the RESULT;
- scope-record with ``--retain 3s`` under the loopback load of bench/capture.py (the C load
  generator) for ``--steady-seconds``: the live log's files (database and write-ahead log)
  sampled every second, median of the second half in MB (``live_log_mb_steady``);
- the load's connection rate while recorded with retention cutting every second, against
  recorded without retention, side by side in each of ``--rounds`` rounds (order alternated),
  median of the rounds' ratios (``capture_ratio_during_compaction``); every connection the
  clients completed must be in the log (archive and live) as four events, and the events
  that reached the recorder after its reorder horizon (``late``) are printed for both.

The machine is shared with other work: figures move from run to run.

Last line:
RESULT archive_bytes_per_event=<n> compact_events_per_s=<n> live_log_mb_steady=<n>
       replay_in_archive_s=<n> capture_ratio_during_compaction=<n>
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.capture import build_loadgen, run_load, start_recorder
from bench.synthetic import ensure_log
from eventlog import retention
from eventlog.location import resolve
from eventlog.reader import LogReader
from eventlog.store import Purpose, open_log
from replay.derived.store import open_derived
from replay.table import replay_table

BIN = Path(sys.executable).parent
WINDOW = "15s"


def compact_whole(db: Path) -> tuple[retention.CutResult, float]:
    """The whole log compacted; and the processor time it took (this process's threads,
    the native scan's included): with ``result.seconds``, how many cores it kept busy."""
    with open_log(resolve(str(db)), Purpose.ADMIN) as store:
        span = retention.wall_span(store)
        assert span is not None
        started, cpu_started = time.perf_counter(), time.process_time()
        result = retention.compact_before(store, span[1] + 1, None)
        result.seconds = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
    return result, cpu_s


def remove_log(workdir: Path) -> None:
    """The copy of the log in ``workdir``, its archive and its companions, gone."""
    for leftover in workdir.glob("log.db*"):
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()


def replays_in_archive(db: Path, seeks: int) -> list[float]:
    started = time.perf_counter()
    with open_log(resolve(str(db)), Purpose.READ) as log, open_derived(log) as derived:
        span = derived.con.execute("SELECT min(min_wall_ns), max(max_wall_ns) FROM batches")
        low, high = span.fetchall()[0]
    print(f"derived store built from the archive in {time.perf_counter() - started:.1f} s")
    rng = random.Random(20)
    moments = sorted(rng.randrange(int(low) + 20 * 10**9, int(high)) for _ in range(seeks))
    times = []
    for at_ns in moments:
        began = time.perf_counter()
        with open_log(resolve(str(db)), Purpose.READ) as log:
            result = replay_table(log, str(at_ns), WINDOW)
        times.append(time.perf_counter() - began)
        print(f"at {at_ns}: {len(result.rows)} connections in {times[-1]:.3f} s", flush=True)
        del result
    return times


def file_mb(db: Path) -> float:
    total = 0
    for suffix in ("", "-wal"):
        path = db.with_name(db.name + suffix)
        if path.exists():
            total += path.stat().st_size
    return total / 1e6


def stop(recorder: subprocess.Popen[bytes]) -> None:
    recorder.send_signal(signal.SIGTERM)
    if recorder.wait(timeout=120) != 0:
        raise RuntimeError(f"scope-record exited with {recorder.returncode}")


def late_events(db: Path) -> int:
    """Events the recorder's reorder buffer received after its horizon (its counters)."""
    with open_log(resolve(str(db)), Purpose.READ) as log:
        return sum(int((r.counters or {}).get("late", 0)) for r in LogReader(log).recordings())


def captured(db: Path, port: int) -> int:
    """Connection events of ``port`` in the log, archive included (through the derived
    store, as scope-query reads them)."""
    with (
        open_log(resolve(str(db)), Purpose.READ) as log,
        open_derived(log, db.with_suffix(".duckdb")) as derived,
    ):
        return int(
            derived.con.execute(
                "SELECT count(*) FROM events WHERE kind IN ('connect', 'accept', 'close') "
                f"AND (lport = {port} OR rport = {port})"
            ).fetchall()[0][0]
        )


def steady_size(loadgen: Path, workdir: Path, seconds: float, clients: int) -> float:
    db = workdir / "steady.db"
    recorder = start_recorder(db, "--retain", "3s", "--retention-interval", "1")
    try:
        server = subprocess.Popen([str(loadgen), "server", "21000", "1", str(seconds + 2)])
        loads = [
            subprocess.Popen([str(loadgen), "client", "21000", f"127.0.0.{i + 2}", str(seconds)],
                             stdout=subprocess.DEVNULL)
            for i in range(clients)
        ]  # fmt: skip
        samples = []
        for _ in range(int(seconds)):
            time.sleep(1)
            samples.append(file_mb(db))
            print(f"live log {samples[-1]:.1f} MB", flush=True)
        for process in (*loads, server):
            process.wait(timeout=30)
    finally:
        stop(recorder)
    return statistics.median(samples[len(samples) // 2 :])


def recorded_rate(
    loadgen: Path, port: int, clients: int, seconds: float, workdir: Path, *options: str
) -> tuple[float, int, int]:
    db = workdir / f"bench-{port}.db"
    recorder = start_recorder(db, *options)
    try:
        result = run_load(loadgen, port, clients, seconds)
        time.sleep(0.5)
    finally:
        stop(recorder)
    events = captured(db, port)
    print(f"late events: {late_events(db)}", flush=True)
    for leftover in workdir.glob(f"bench-{port}.*"):
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    return result.rate, events, 4 * result.completed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--compactions", type=int, default=3)
    parser.add_argument("--seeks", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--steady-seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/retention.py needs root (eBPF)")
    source = ensure_log(args.events)
    with tempfile.TemporaryDirectory(prefix="scope-bench-", dir=source.parent) as tmp:
        workdir = Path(tmp)
        os.environ["SCOPE_CACHE_DIR"] = str(workdir / "cache")
        db = workdir / "log.db"
        rates = []
        for _ in range(args.compactions):
            remove_log(workdir)
            shutil.copy(source, db)
            os.sync()  # the copy's writeback is the copy's, not the compaction's first fsync's
            result, cpu_s = compact_whole(db)
            per_event = result.archive_bytes / result.events
            rates.append(result.events / result.seconds)
            print(
                f"compacted {result.events:,} events in {result.seconds:.1f} s "
                f"({result.segments} segments, {result.archive_bytes:,} bytes); processor "
                f"time {cpu_s:.1f} s, {cpu_s / result.seconds:.2f} of the {os.cpu_count()} "
                "cores busy",
                flush=True,
            )
        seeks = replays_in_archive(db, args.seeks)  # in the last one's archive
        shutil.rmtree(workdir / "cache")
        remove_log(workdir)

        loadgen = build_loadgen(workdir)
        steady = steady_size(loadgen, workdir, args.steady_seconds, args.clients)
        ratios = []
        for round_number in range(args.rounds):
            port = 22000 + round_number * 2
            cutting = ("--retain", "2s", "--retention-interval", "1")
            if round_number % 2:
                with_cuts = recorded_rate(
                    loadgen, port + 1, args.clients, args.seconds, workdir, *cutting
                )
                without = recorded_rate(loadgen, port, args.clients, args.seconds, workdir)
            else:
                without = recorded_rate(loadgen, port, args.clients, args.seconds, workdir)
                with_cuts = recorded_rate(
                    loadgen, port + 1, args.clients, args.seconds, workdir, *cutting
                )
            ratios.append(with_cuts[0] / without[0])
            print(f"round {round_number + 1}: recorded {without[0]:,.0f} conn/s, with retention "
                  f"{with_cuts[0]:,.0f} conn/s, ratio {ratios[-1]:.3f}; events "
                  f"{with_cuts[1]:,}/{with_cuts[2]:,} with, {without[1]:,}/{without[2]:,} "
                  "without", flush=True)  # fmt: skip
    print(
        f"RESULT archive_bytes_per_event={per_event:.2f} "
        f"compact_events_per_s={statistics.median(rates):.0f} "
        f"live_log_mb_steady={steady:.1f} replay_in_archive_s={statistics.median(seeks):.3f} "
        f"capture_ratio_during_compaction={statistics.median(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
