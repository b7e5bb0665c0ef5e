"""Soak: a steady loopback connection load for many minutes, scope-record killed with SIGKILL
and restarted every minute on the same log (the last minute ends with SIGTERM).

After each kill the log must pass `PRAGMA integrity_check` with gap-free positions. At the end
the log is checked against itself: every connection opened well inside a recording (at least
``--margin`` from its first and last committed event) must have its accept on the other end
and both closes in that recording, unless a loss record of that recording covers the moment.
Anything else missing was lost without being counted.

Last line:
RESULT minutes=<n> restarts=<n> events=<n> lost_uncounted=<n> integrity=ok|fail
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from eventlog.events import Kind
from recorder.workload import run_client, running_server

BIN = Path(sys.executable).parent
CLIENT_NAME = "soak-cli"
SERVER_NAME = "soak-srv"
CONNECTIONS_PER_CLIENT = 10_000_000  # bounded, and more than a soak can make


@dataclass
class Recording:
    """What the log holds of one recording, for the self-consistency check."""

    first_ns: int = 0
    last_ns: int = 0
    opens: dict[int, tuple[int, int, bytes, int, bytes, int]] = field(default_factory=dict)
    closed: set[int] = field(default_factory=set)
    accepts: defaultdict[tuple[bytes, int, bytes, int], list[int]] = field(
        default_factory=lambda: defaultdict(list)
    )
    losses: list[tuple[int, int]] = field(default_factory=list)


def committed(progress: Path) -> int:
    if not progress.exists():
        return 0
    lines = progress.read_text().split("\n")[:-1]
    return int(lines[-1].rsplit("=", 1)[1]) if lines else 0


def log_is_whole(db: Path) -> bool:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        if conn.execute("PRAGMA integrity_check").fetchone() != ("ok",):
            return False
        low, high, count = conn.execute(
            "SELECT min(position), max(position), count(*) FROM events"
        ).fetchone()
    return bool(count == high - low + 1)


def record_for(db: Path, progress: Path, seconds: float, clean: bool) -> bool:
    """One recorder's life: start, run ``seconds`` after its first commit, stop. Clean?"""
    progress.unlink(missing_ok=True)
    recorder = subprocess.Popen(
        [str(BIN / "scope-record"), "--db", str(db), "--quiet", "--progress-file", str(progress)],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while committed(progress) == 0:
        if recorder.poll() is not None or time.monotonic() > deadline:
            recorder.kill()
            raise RuntimeError("scope-record did not start")
        time.sleep(0.05)
    time.sleep(seconds)
    recorder.send_signal(signal.SIGTERM if clean else signal.SIGKILL)
    code = recorder.wait(timeout=120)
    return code == 0 if clean else code == -signal.SIGKILL


def load_recordings(db: Path, server_port: int) -> dict[int, Recording]:
    """The connection events of the soak's own processes, by recording."""
    recordings: dict[int, Recording] = defaultdict(Recording)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        for rid, first, last in conn.execute(
            "SELECT recording_id, min(mono_ns), max(mono_ns) FROM events GROUP BY recording_id"
        ):
            recordings[rid].first_ns, recordings[rid].last_ns = first, last
        for rid, first, last in conn.execute(
            "SELECT recording_id, first_mono_ns, last_mono_ns FROM losses"
        ):
            recordings[rid].losses.append((first, last))
        rows = conn.execute(
            "SELECT e.recording_id, e.kind, e.mono_ns, e.sock_id, e.laddr, e.lport, e.raddr, "
            "e.rport FROM events e JOIN comms c ON c.id = e.comm_id "
            "WHERE c.name IN (?, ?) AND e.kind IN (?, ?, ?) AND (e.lport = ? OR e.rport = ?) "
            "ORDER BY e.position",
            (CLIENT_NAME, SERVER_NAME, Kind.CONNECT, Kind.ACCEPT, Kind.CLOSE, server_port,
             server_port),
        )  # fmt: skip
        for rid, kind, mono, sock, laddr, lport, raddr, rport in rows:
            recording = recordings[rid]
            if kind == Kind.CLOSE:
                recording.closed.add(sock)
                continue
            recording.opens[sock] = (kind, mono, laddr, lport, raddr, rport)
            if kind == Kind.ACCEPT:
                recording.accepts[(raddr, rport, laddr, lport)].append(mono)
    return recordings


def uncounted_losses(recording: Recording, margin_ns: int, pair_ns: int) -> int:
    """Events missing from connections well inside the recording, outside its loss spans."""

    def covered(mono: int) -> bool:
        return any(first - pair_ns <= mono <= last + pair_ns for first, last in recording.losses)

    missing = 0
    inside = (recording.first_ns + margin_ns, recording.last_ns - margin_ns)
    for sock, (kind, mono, laddr, lport, raddr, rport) in recording.opens.items():
        if not inside[0] <= mono <= inside[1] or covered(mono):
            continue
        if sock not in recording.closed:
            missing += 1
        if kind == Kind.CONNECT:
            accepted = recording.accepts.get((laddr, lport, raddr, rport), [])
            if not any(abs(peer - mono) <= pair_ns for peer in accepted):
                missing += 1
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--margin", type=float, default=2.0, help="seconds")
    parser.add_argument("--keep", type=Path, help="keep the log here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/soak.py needs root (eBPF)")
    with tempfile.TemporaryDirectory(prefix="scope-soak-") as tmp:
        workdir = Path(tmp)
        db = args.keep or workdir / "soak.db"
        progress = workdir / "progress"
        integrity = True
        restarts = 0
        started = time.monotonic()
        with running_server(SERVER_NAME, workdir=workdir) as server:
            clients = [
                run_client(CLIENT_NAME, "127.0.0.1", server.port, CONNECTIONS_PER_CLIENT)
                for _ in range(args.clients)
            ]
            try:
                for minute in range(args.minutes):
                    last = minute == args.minutes - 1
                    # A minute from start to start, the recorder's start-up included.
                    remaining = started + 60 * (minute + 1) - time.monotonic()
                    stopped_as_asked = record_for(db, progress, max(remaining - 3, 5), clean=last)
                    whole = log_is_whole(db)
                    integrity = integrity and whole and stopped_as_asked
                    restarts += 0 if last else 1
                    print(
                        f"minute {minute + 1}: {'stopped' if last else 'killed'}, "
                        f"{committed(progress):,} events acknowledged, "
                        f"log {'whole' if whole else 'DAMAGED'}",
                        flush=True,
                    )
            finally:
                for client in clients:
                    client.kill()
                    client.wait()
            port = server.port
        recordings = load_recordings(db, port)
        lost_uncounted = sum(
            uncounted_losses(r, int(args.margin * 1e9), 1_000_000_000) for r in recordings.values()
        )
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            reasons = [r for (r,) in conn.execute("SELECT stop_reason FROM recordings ORDER BY id")]
        if reasons != ["crashed"] * (args.minutes - 1) + ["signal"]:
            print(f"unexpected stop reasons: {reasons}", flush=True)
            integrity = False
    print(
        f"RESULT minutes={args.minutes} restarts={restarts} events={events} "
        f"lost_uncounted={lost_uncounted} integrity={'ok' if integrity else 'fail'}"
    )


if __name__ == "__main__":
    main()
