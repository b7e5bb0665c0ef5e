"""Benchmark: restarts of a recorder whose capture programs are pinned.

A loopback client connects at a steady ``--rate`` (1,000 a second by default) for the whole
run. ``scope-record --pin`` starts cold (compiling, pinning), then ``--restarts`` times it is
killed with SIGKILL, left down for ``--down`` seconds, and started again: it adopts the pinned
programs and drains what they captured meanwhile. Every connection made while it was down
must be in the log exactly once.

Times to live are from the recorder's start to the line saying capture is live (what a
service manager's READY=1 waits for); medians over the restarts. Resident memory is the
recorders' highest VmRSS after a second under load.

A killed recorder loses what it had read but not committed: the connections made after the
last event committed before the kill. Those are counted apart from any other connection
missing from the log, which would be a loss the standard does not allow.

Last line:
RESULT restarts=<n> conns_during_downtime=<n> conns_lost=<n> adopt_start_s=<n>
       cold_start_s=<n> rss_mb=<n>
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from itertools import accumulate
from pathlib import Path

from eventlog.location import resolve
from eventlog.reader import LogReader
from eventlog.store import Purpose, open_log
from recorder.pins import BPFFS
from recorder.workload import PacedLoad

BIN = Path(sys.executable).parent


class Recorder:
    """``scope-record --pin`` in a process of its own; ``live_after_s`` is the time from its
    start to its line saying capture is live."""

    def __init__(self, db: Path, environment: dict[str, str]) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [str(BIN / "scope-record"), "--db", str(db), "--pin", "--snapshot-interval", "0"],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        self.live_after_s: float | None = None
        self.lines: list[str] = []
        self._live = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip())
            if "capturing since" in line and line.startswith("scope-record: recording"):
                self.live_after_s = time.monotonic() - self.started
                self._live.set()

    def wait_live(self) -> float:
        if not self._live.wait(120) or self.live_after_s is None:
            raise RuntimeError("scope-record did not go live: " + " | ".join(self.lines))
        return self.live_after_s

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) / 1024

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        if self.process.wait(timeout=120) != 0:
            raise RuntimeError(f"scope-record exited with {self.process.returncode}")


def last_committed(db: Path) -> list[int]:
    """Each recording's last committed event's wall time, the recordings in the order they
    began (0 for one that committed nothing)."""
    with open_log(resolve(str(db)), Purpose.READ) as store:
        reader = LogReader(store)
        last: dict[int, int] = {}
        for span in reader.batches():
            last[span.recording_id] = max(last.get(span.recording_id, 0), span.max_wall_ns)
        return [last.get(recording.id, 0) for recording in reader.recordings()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--down", type=float, default=2.0, help="seconds without a recorder")
    parser.add_argument("--up", type=float, default=2.0, help="seconds recording between kills")
    parser.add_argument("--rate", type=float, default=1000.0, help="connections a second")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/restart.py needs root (eBPF)")
    pin_root = BPFFS / f"scope-bench-{uuid.uuid4().hex[:12]}"
    environment = {**os.environ, "SCOPE_PIN_ROOT": str(pin_root)}
    with tempfile.TemporaryDirectory(prefix="scope-bench-") as tmp:
        db = Path(tmp) / "restart.db"
        load = PacedLoad(args.rate)
        recorder = Recorder(db, environment)
        try:
            cold = recorder.wait_live()
            load.start()
            downtimes: list[tuple[int, int]] = []
            adopt: list[float] = []
            rss: list[float] = []
            for restart in range(args.restarts):
                time.sleep(1.0)
                rss.append(recorder.rss_mb())
                time.sleep(max(0.0, args.up - 1.0))
                recorder.kill()
                down_from = time.time_ns()
                time.sleep(args.down)
                down_until = time.time_ns()
                recorder = Recorder(db, environment)
                adopt.append(recorder.wait_live())
                downtimes.append((down_from, down_until))
                print(
                    f"restart {restart + 1}: down {args.down:.1f} s, live again after "
                    f"{adopt[-1]:.3f} s",
                    flush=True,
                )
            time.sleep(args.up)
            rss.append(recorder.rss_mb())
            load.stop()
            time.sleep(0.5)
            recorder.stop()
        finally:
            if recorder.process.poll() is None:
                recorder.kill()
            subprocess.run(
                [str(BIN / "scope-record"), "stop", "--detach"],
                env=environment,
                capture_output=True,
                check=False,
            )
            shutil.rmtree(pin_root, ignore_errors=True)
        logged = load.logged_connects(db)
        committed_until = last_committed(db)
    during = [made for first, last in downtimes for made in load.between(first, last)]
    lost = sum(1 for port, at in during if load.times_logged(logged, port, at) == 0)
    missing = [at for port, at in load.made if load.times_logged(logged, port, at) == 0]
    twice = sum(1 for port, at in load.made if load.times_logged(logged, port, at) > 1)
    # A killed recorder loses what it had read and not committed: what was made after the
    # last event committed before the kill (by it, or before it). The recorders killed are
    # the log's first recordings, one a restart.
    killed = list(
        zip(accumulate(committed_until, max), (first for first, _ in downtimes), strict=False)
    )
    unflushed = sum(1 for at in missing if any(last < at < kill for last, kill in killed))
    print(
        f"connections made: {len(load.made)}, missing from the log: {len(missing)} "
        f"({unflushed} made after the last event their killed recorder committed, "
        f"{len(missing) - unflushed} otherwise), twice: {twice}; cold start {cold:.3f} s",
        flush=True,
    )
    print(
        f"RESULT restarts={args.restarts} conns_during_downtime={len(during)} "
        f"conns_lost={lost} adopt_start_s={statistics.median(adopt):.3f} "
        f"cold_start_s={cold:.3f} rss_mb={max(rss):.1f}"
    )


if __name__ == "__main__":
    main()
