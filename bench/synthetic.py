"""A large synthetic log, shaped like a busy host, for the replay and query benchmarks.

Written through the real log writer (one recording, batches of about 200 ms of log time),
deterministic for a seed, and cached under ``$SCOPE_BENCH_CACHE`` (default
/var/tmp/scope-bench) so that the benchmarks can share it.

Mix: short-lived local connections (both ends on the host: 4 events), outbound calls to
remote services, inbound connections from remote clients (2 events each), some connections
held for minutes, failed connects, process starts and exits, and a /proc snapshot every 15 s
holding every connection open at that moment.
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from eventlog.admin import upgrade_schema
from eventlog.clock import ClockModel
from eventlog.events import ClockSample, Event, Kind, Snapshot, SnapshotConnection, SnapshotProcess
from eventlog.location import resolve
from eventlog.options import SqliteOptions
from eventlog.recordings import (
    STOP_DURATION,
    HostIdentity,
    RecordingStart,
    begin_recording,
    end_recording,
)
from eventlog.store import Purpose, open_log
from eventlog.writer import LogWriter

VERSION = 4  # bump when the generated content changes
ROOT_NETNS = 4026531833
UPTIME_NS = 10 * 86_400 * 10**9
WALL_START_NS = 1_795_600_000 * 10**9  # 2026-11-25T09:46:40Z
SNAPSHOT_EVERY_NS = 15 * 10**9
BATCH_NS = 200_000_000
LOCALHOST = bytes([127, 0, 0, 1])
HOST_ADDR = bytes([10, 0, 0, 2])
SERVICES = [
    (bytes([10, 0, 1, n]), port) for n, port in ((10, 5432), (11, 6379), (12, 443), (13, 9092))
]
PUBLIC = [bytes([93, 184, 216, n]) for n in range(1, 40)] + [
    bytes([140, 82, 112, n]) for n in range(1, 20)
]
COMMS = [
    "api",
    "worker",
    "nginx",
    "postgres",
    "redis-server",
    "cron",
    "python3",
    "node",
    "curl",
    "java",
]


def cache_dir() -> Path:
    path = Path(os.environ.get("SCOPE_BENCH_CACHE", "/var/tmp/scope-bench"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_path(events: int, seed: int) -> Path:
    return cache_dir() / f"synthetic-{events}-{seed}-v{VERSION}.db"


@dataclass
class OpenSocket:
    sock_id: int
    pid: int
    comm: str
    laddr: bytes
    lport: int
    raddr: bytes
    rport: int
    kind: int


class Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.mono = UPTIME_NS
        self.next_sock = 0
        self.next_port = 32768
        self.closing: list[tuple[int, int, OpenSocket]] = []  # heap of (close mono, seq, socket)
        self.open: dict[int, OpenSocket] = {}
        self.seq = 0
        self.processes = {1000 + i: COMMS[i % len(COMMS)] for i in range(60)}
        self.next_pid = 5000

    def _sock(
        self, pid: int, comm: str, laddr: bytes, lport: int, raddr: bytes, rport: int, kind: int
    ) -> OpenSocket:
        self.next_sock += 1
        return OpenSocket(self.next_sock, pid, comm, laddr, lport, raddr, rport, kind)

    def _ephemeral(self) -> int:
        self.next_port = self.next_port + 1 if self.next_port < 60999 else 32768
        return self.next_port

    def _open(self, sock: OpenSocket, lifetime_ns: int) -> Event:
        self.open[sock.sock_id] = sock
        self.seq += 1
        heapq.heappush(self.closing, (self.mono + lifetime_ns, self.seq, sock))
        return Event(sock.kind, self.mono, sock.pid, sock.comm, ROOT_NETNS, sock.laddr, sock.lport,
                     sock.raddr, sock.rport, sock.sock_id)  # fmt: skip

    def _lifetime(self) -> int:
        roll = self.rng.random()
        if roll < 0.85:
            return self.rng.randrange(100_000, 5_000_000)  # 0.1 to 5 ms
        if roll < 0.98:
            return self.rng.randrange(5_000_000, 2_000_000_000)
        return self.rng.randrange(60, 1800) * 1_000_000_000  # held for minutes

    def step(self) -> list[Event]:
        """Events of the next moment of log time, in time order."""
        self.mono += self.rng.randrange(500_000, 3_500_000)  # ~1,400 events per second
        out: list[Event] = []
        while self.closing and self.closing[0][0] <= self.mono:
            close_at, _, sock = heapq.heappop(self.closing)
            del self.open[sock.sock_id]
            out.append(
                Event(
                    Kind.CLOSE,
                    close_at,
                    sock.pid,
                    sock.comm,
                    ROOT_NETNS,
                    sock.laddr,
                    sock.lport,
                    sock.raddr,
                    sock.rport,
                    sock.sock_id,
                    self.rng.randrange(1 << 16),
                    self.rng.randrange(1 << 20),
                )
            )
        pid = self.rng.choice(sorted(self.processes))
        comm = self.processes[pid]
        roll = self.rng.random()
        lifetime = self._lifetime()
        if roll < 0.45:  # local: a client and a server on this host
            port = self._ephemeral()
            client = self._sock(pid, comm, LOCALHOST, port, LOCALHOST, 8080, Kind.CONNECT)
            server = self._sock(1000, "api", LOCALHOST, 8080, LOCALHOST, port, Kind.ACCEPT)
            out += [self._open(client, lifetime), self._open(server, lifetime + 20_000)]
        elif roll < 0.75:  # outbound to a service or the Internet
            raddr, rport = (
                self.rng.choice(SERVICES) if roll < 0.65 else (self.rng.choice(PUBLIC), 443)
            )
            out.append(
                self._open(
                    self._sock(pid, comm, HOST_ADDR, self._ephemeral(), raddr, rport, Kind.CONNECT),
                    lifetime,
                )
            )
        elif roll < 0.93:  # inbound from a remote client
            raddr = self.rng.choice(PUBLIC)
            out.append(
                self._open(
                    self._sock(
                        1002, "nginx", HOST_ADDR, 443, raddr, self._ephemeral(), Kind.ACCEPT
                    ),
                    lifetime,
                )
            )
        elif roll < 0.96:
            self.next_sock += 1
            out.append(Event(Kind.CONNECT_FAILED, self.mono, pid, comm, ROOT_NETNS, HOST_ADDR,
                             self._ephemeral(), self.rng.choice(PUBLIC), 8443, self.next_sock,
                             extra={"error": 111}))  # fmt: skip
        else:
            self.next_pid += 1
            child = self.next_pid
            name = self.rng.choice(COMMS)
            out.append(
                Event(
                    Kind.EXEC,
                    self.mono,
                    child,
                    name,
                    ROOT_NETNS,
                    extra={"ppid": pid, "filename": f"/usr/bin/{name}"},
                )
            )
            if self.rng.random() < 0.9:
                out.append(
                    Event(
                        Kind.EXIT,
                        self.mono + 50_000,
                        child,
                        name,
                        ROOT_NETNS,
                        extra={"ppid": pid, "exit_code": 0},
                    )
                )
            else:
                self.processes[child] = name
        return sorted(out, key=lambda e: e.mono_ns)

    def snapshot(self) -> tuple[Event, Snapshot]:
        connections = tuple(
            SnapshotConnection(
                ROOT_NETNS, s.laddr, s.lport, s.raddr, s.rport, 1, 100_000 + s.sock_id, 0, s.pid
            )
            for s in sorted(self.open.values(), key=lambda s: s.sock_id)
        )
        processes = tuple(
            SnapshotProcess(
                pid,
                1,
                comm,
                f"/usr/bin/{comm}",
                "0::/system.slice/app.service",
                ROOT_NETNS,
                UPTIME_NS,
            )
            for pid, comm in sorted(self.processes.items())
        )
        marker = Event(
            Kind.SNAPSHOT,
            self.mono,
            extra={"initial": False, "walk_ns": 0, "namespace_list": [ROOT_NETNS]},
        )
        return marker, Snapshot(connections=connections, processes=processes)


def generate(path: Path, events: int, seed: int) -> None:
    partial = path.with_suffix(".partial")
    for leftover in path.parent.glob(partial.name + "*"):
        leftover.unlink()
    start = ClockSample(UPTIME_NS, WALL_START_NS - UPTIME_NS, 100)
    store = open_log(resolve(str(partial)), Purpose.RECORD, SqliteOptions(synchronous="NORMAL"))
    host = HostIdentity("bench-host", "0" * 32, "boot-bench", "6.18.0")
    recording_id = begin_recording(store, RecordingStart(host, "ebpf", start, ROOT_NETNS))
    writer = LogWriter(store, recording_id, ClockModel([start]))
    generator = Generator(seed)
    written = 0
    batch_end = UPTIME_NS + BATCH_NS
    next_snapshot = UPTIME_NS
    while written < events:
        if generator.mono >= next_snapshot:
            marker, snapshot = generator.snapshot()
            writer.add_snapshot(marker, snapshot)
            written += 1
            next_snapshot += SNAPSHOT_EVERY_NS
        batch = generator.step()
        writer.add_events(batch[: events - written])
        written += min(len(batch), events - written)
        if generator.mono >= batch_end:
            writer.flush()
            batch_end = generator.mono + BATCH_NS
    writer.flush()
    writer.close()
    end_recording(store, recording_id, generator.mono, STOP_DURATION)
    store.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{partial}{suffix}").unlink(missing_ok=True)
    partial.rename(path)


def ensure_log(events: int, seed: int = 1) -> Path:
    """The cached log (made if missing), at the schema of this version."""
    path = log_path(events, seed)
    if not path.exists():
        started = time.monotonic()
        print(f"generating {events:,} events into {path} ...", flush=True)
        generate(path, events, seed)
        print(f"generated in {time.monotonic() - started:.0f} s", flush=True)
    upgrade_schema(resolve(str(path)))  # a log cached by an earlier version
    return path


def iter_steps(seed: int, count: int) -> Iterator[list[Event]]:
    generator = Generator(seed)
    for _ in range(count):
        yield generator.step()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args()
    print(ensure_log(arguments.events, arguments.seed))
