"""Benchmark: replay over a large synthetic log (bench/synthetic.py, 10,000,000 events).

Measures, in one run: the full fold rate (reading the log and folding every event, no
checkpoints), the time to build checkpoints, and the time to answer `--at T` (the connection
table with a 15 s window) for 20 random moments with checkpoints versus folding from the
start. Medians are reported.

Last line:
RESULT events=<n> fold_events_per_s=<n> seek_median_s=<n> seek_from_start_median_s=<n>
       speedup=<n>
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from bench.synthetic import ensure_log
from eventlog.location import resolve
from eventlog.store import Purpose, open_log
from replay import checkpoints
from replay.engine import Replayer
from replay.table import replay_table

WINDOW = "15s"


def timed_table(db: str, at_ns: int, use_checkpoints: bool) -> tuple[float, int]:
    started = time.perf_counter()
    with open_log(resolve(db), Purpose.READ) as store:
        result = replay_table(store, str(at_ns), WINDOW, use_checkpoints=use_checkpoints)
    return time.perf_counter() - started, len(result.rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--seeks", type=int, default=20)
    parser.add_argument("--fold-rounds", type=int, default=3)
    args = parser.parse_args()
    db = str(ensure_log(args.events))

    with open_log(resolve(db), Purpose.READ) as store:
        checkpoints.drop(store)
        replayer = Replayer(store, use_checkpoints=False, save_checkpoints=False)
        span = replayer.log_span()
        assert span is not None
        rates = []
        for round_number in range(args.fold_rounds):
            replayer = Replayer(store, use_checkpoints=False, save_checkpoints=False)
            started = time.perf_counter()
            state = replayer.state_at(span.end_ns)
            elapsed = time.perf_counter() - started
            rates.append(replayer.stats.events_folded / elapsed)
            print(
                f"full fold {round_number + 1}: {replayer.stats.events_folded:,} events in "
                f"{elapsed:.2f} s ({rates[-1]:,.0f} events/s), {state.open_count()} open",
                flush=True,
            )
        started = time.perf_counter()
        saved = Replayer(store).rebuild_checkpoints()
        print(f"checkpoints: {saved} built in {time.perf_counter() - started:.2f} s", flush=True)

    rng = random.Random(20)
    moments = sorted(
        rng.randrange(span.start_ns + 20 * 10**9, span.end_ns) for _ in range(args.seeks)
    )
    with_checkpoints, from_start = [], []
    for at_ns in moments:
        seconds, rows = timed_table(db, at_ns, use_checkpoints=True)
        with_checkpoints.append(seconds)
        seconds_plain, rows_plain = timed_table(db, at_ns, use_checkpoints=False)
        from_start.append(seconds_plain)
        assert rows == rows_plain
        print(
            f"at +{(at_ns - span.start_ns) / 1e9:7.1f} s: {rows} connections, "
            f"{with_checkpoints[-1]:.3f} s with checkpoints, {seconds_plain:.3f} s from the start",
            flush=True,
        )
    seek, seek_plain = statistics.median(with_checkpoints), statistics.median(from_start)
    print(
        f"RESULT events={args.events} fold_events_per_s={statistics.median(rates):.0f} "
        f"seek_median_s={seek:.3f} seek_from_start_median_s={seek_plain:.3f} "
        f"speedup={seek_plain / seek:.1f}"
    )


if __name__ == "__main__":
    main()
