"""`make demo`: record a built-in loopback workload for a few seconds, then show it.

The workload: a server ("demo-api", IPv4 and IPv6), two web clients making many connections
that last well under a millisecond, a worker holding a few long connections (one over IPv6),
and one connection refused by a closed port.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from eventlog.cliutil import error_line
from eventlog.errors import ScopeError
from eventlog.events import Kind
from eventlog.location import resolve
from eventlog.reader import LogReader
from eventlog.store import Purpose, open_log
from recorder.workload import closed_port, run_client, running_server, spawn

BIN = Path(sys.executable).parent


def _recording_ready(db: str, after_id: int) -> int | None:
    """The id of a recording newer than ``after_id`` whose initial snapshot is committed."""
    try:
        with open_log(resolve(db), Purpose.READ) as store:
            reader = LogReader(store)
            for recording in reader.recordings():
                if recording.id > after_id and reader.event_counts().get(
                    (recording.id, Kind.SNAPSHOT)
                ):
                    return recording.id
    except ScopeError:
        return None
    return None


def _latest_recording(db: str) -> int:
    try:
        with open_log(resolve(db), Purpose.READ) as store:
            return max((r.id for r in LogReader(store).recordings()), default=0)
    except ScopeError:
        return 0


def run_workload() -> int:
    """Run the workload; return a wall-clock moment in the middle of it."""
    with running_server("demo-api", hosts=("127.0.0.1", "::1")) as server:
        clients = [
            run_client("demo-web", "127.0.0.1", server.port, count=60, gap_ms=15),
            run_client("demo-web", "127.0.0.1", server.port, count=60, gap_ms=15),
            run_client("demo-worker", "127.0.0.1", server.port, count=3, hold_ms=1200),
            run_client("demo-worker", "::1", server.port, count=1, hold_ms=800),
            spawn("refused", "--name", "demo-web", "--port", str(closed_port())),
        ]
        time.sleep(0.6)
        middle = time.time_ns()
        for process in clients:
            process.wait(timeout=60)
    return middle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recorder.demo")
    parser.add_argument("--db", default="scope.db")
    parser.add_argument("--svg", default="scope-demo-processes.svg")
    args = parser.parse_args(argv)
    before = _latest_recording(args.db)
    recorder = subprocess.Popen(
        [str(BIN / "scope-record"), "--db", args.db, "--snapshot-interval", "2", "--quiet"],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    recording_id = None
    while recording_id is None:
        if recorder.poll() is not None:
            error_line("demo", f"scope-record exited with {recorder.returncode}")
            return 1
        if time.monotonic() > deadline:
            recorder.kill()
            error_line("demo", "scope-record did not start within 60 s")
            return 1
        time.sleep(0.2)
        recording_id = _recording_ready(args.db, before)
    print(f"demo: recording {recording_id} into {args.db}; running the workload...", flush=True)
    middle = run_workload()
    time.sleep(0.5)
    recorder.send_signal(signal.SIGTERM)
    if recorder.wait(timeout=60) != 0:
        error_line("demo", f"scope-record exited with {recorder.returncode}")
        return 1
    with open_log(resolve(args.db), Purpose.READ) as store:
        reader = LogReader(store)
        counts = reader.event_counts()
        recording = next(r for r in reader.recordings() if r.id == recording_id)
    print(f"demo: recording {recording_id} ({recording.mode}), stopped: {recording.stop_reason}")
    for kind in Kind:
        count = counts.get((recording_id, kind), 0)
        if count:
            print(f"  {kind.name.lower():<16} {count:>6}")
    replay = [str(BIN / "scope-replay"), "--db", args.db, "--at", str(middle), "--window", "1s"]
    print(f"\ndemo: scope-replay --db {args.db} --at {middle} --window 1s", flush=True)
    steps = [
        replay,
        [*replay, "--view", "processes"],
        [*replay, "--view", "processes", "--format", "svg", "--output", args.svg],
    ]
    for step in steps:
        if step is steps[1]:
            print("\ndemo: ... --view processes", flush=True)
        if subprocess.run(step, check=False).returncode != 0:
            return 1
    print(f"\ndemo: the processes map at that moment is in {Path(args.svg).resolve()}")
    print(
        f"\ndemo: to see the map in a browser and move through time, run\n"
        f"  {BIN / 'scope-replay'} serve --db {args.db}\n"
        "and open http://127.0.0.1:4040/",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
