"""A built-in loopback workload: named server and client processes making TCP connections.

Used by `make demo`, the tests and the benchmarks. Each role runs in its own process with
its own name (``prctl(PR_SET_NAME)``), so recordings show recognisable process names.

    python -m recorder.workload server --name demo-api --port-file /tmp/p [--v6]
    python -m recorder.workload client --name demo-web --port 8080 --count 50 [--hold-ms 0]
    python -m recorder.workload refused --name demo-web --port 1
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import ctypes
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

PR_SET_NAME = 15
MAX_SERVER_SECONDS = 3600.0  # a forgotten server exits by itself
MAX_PACED_SECONDS = 600.0  # a paced load stops by itself whatever its user does
# A connection and its CONNECT event are this close in time (the event is stamped in
# connect(); the load notes the time after it returns).
PACED_MATCH_NS = 500_000_000


class PacedLoad:
    """In this process: a loopback server and a client making ``rate`` connections a second
    (connect, close), each one's client port and wall time kept; as a context manager or
    with ``start`` and ``stop``. For tests and benchmarks that must know every connection."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.made: list[tuple[int, int]] = []
        self._by_port: dict[int, list[int]] = {}  # made, by client port (of _indexed of made)
        self._indexed = 0
        self.server = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.port = self.server.getsockname()[1]
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._accept, daemon=True),
            threading.Thread(target=self._connect, daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self.server.close()

    def _accept(self) -> None:
        self.server.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            conn.close()

    def _connect(self) -> None:
        period = 1 / self.rate
        due = started = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - started < MAX_PACED_SECONDS:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
                self.made.append((conn.getsockname()[1], time.time_ns()))
            due += period
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)

    def between(self, first_ns: int, last_ns: int) -> list[tuple[int, int]]:
        return [(port, at) for port, at in list(self.made) if first_ns <= at <= last_ns]

    def logged_connects(self, db: Path) -> dict[int, list[int]]:
        """Wall times of the CONNECT events to this load's server in the log ``db``, by
        client port."""
        from eventlog.events import Kind  # noqa: PLC0415 (the demo's workload needs no log)
        from eventlog.location import resolve  # noqa: PLC0415
        from eventlog.reader import LogReader  # noqa: PLC0415
        from eventlog.store import Purpose, open_log  # noqa: PLC0415

        times: dict[int, list[int]] = {}
        with open_log(resolve(str(db)), Purpose.READ) as store:
            for e in LogReader(store).events():
                if e.kind == Kind.CONNECT and e.rport == self.port and e.lport is not None:
                    times.setdefault(e.lport, []).append(e.wall_ns)
        return times

    def times_logged(self, logged: dict[int, list[int]], port: int, made_ns: int) -> int:
        """How often the connection made from ``port`` at ``made_ns`` is in ``logged``. The
        kernel hands a client port out again (at once, when the server closed first: twice
        within 0.5 s at 200 connections a second), so an event of the port is the one of the
        connection made from it nearest in time, and only if that is near."""
        made = self._made_from(port)
        return sum(
            1
            for at in logged.get(port, ())
            if abs(at - made_ns) < PACED_MATCH_NS and _nearest(made, at) == made_ns
        )

    def _made_from(self, port: int) -> list[int]:
        """The times of the connections made from ``port``, in order."""
        added = self.made[self._indexed :]  # (only what was made since the last call)
        for made_port, at in added:
            bisect.insort(self._by_port.setdefault(made_port, []), at)
        self._indexed += len(added)
        return self._by_port.get(port, [])

    def __enter__(self) -> PacedLoad:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _nearest(times: list[int], at: int) -> int | None:
    """Of ``times`` (in order), the one nearest ``at`` (the earlier of two as near)."""
    index = bisect.bisect_left(times, at)
    near = times[max(0, index - 1) : index + 1]
    return min(near, key=lambda t: (abs(t - at), t)) if near else None


def set_process_name(name: str) -> None:
    """Set this process's comm (what the kernel and the recorder call it)."""
    libc = ctypes.CDLL(None)
    libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def _answer(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(30)
        try:
            while data := conn.recv(4096):
                conn.sendall(b"ok:" + data[:32])
        except OSError:
            pass


def serve(hosts: Sequence[str], port: int, port_file: Path | None, seconds: float) -> None:
    """Accept on every host address (same port), echo, close when the client does."""
    selector = selectors.DefaultSelector()
    chosen = port
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        listener.bind((host, chosen))
        chosen = listener.getsockname()[1]
        listener.listen(1024)
        selector.register(listener, selectors.EVENT_READ)
    if port_file is not None:
        port_file.write_text(str(chosen))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.2):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            conn, _ = ready.accept()
            threading.Thread(target=_answer, args=(conn,), daemon=True).start()


def client(host: str, port: int, count: int, hold_ms: float, gap_ms: float) -> int:
    """``count`` connections, one after another: send, read the answer, hold, close."""
    done = 0
    for number in range(count):
        try:
            with socket.create_connection((host, port), timeout=10) as conn:
                conn.sendall(f"hello {number}".encode())
                conn.recv(64)
                if hold_ms:
                    time.sleep(hold_ms / 1000)
        except OSError as exc:  # the server went away: say so in a line, not a traceback
            print(f"workload client: connection {number + 1} failed: {exc}", file=sys.stderr)
            return done
        done += 1
        if gap_ms:
            time.sleep(gap_ms / 1000)
    return done


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recorder.workload")
    parser.add_argument("role", choices=["server", "client", "refused"])
    parser.add_argument("--name", default="scope-workload")
    parser.add_argument("--host", action="append", default=None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--hold-ms", type=float, default=0.0)
    parser.add_argument("--gap-ms", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=MAX_SERVER_SECONDS)
    args = parser.parse_args(argv)
    set_process_name(args.name)
    hosts = args.host or ["127.0.0.1"]
    if args.role == "server":
        serve(hosts, args.port, args.port_file, min(args.seconds, MAX_SERVER_SECONDS))
        return 0
    if args.role == "client":
        done = client(hosts[0], args.port, args.count, args.hold_ms, args.gap_ms)
        return 0 if done == args.count else 1
    return 0 if refused(hosts[0], args.port) else 1


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid


def spawn(*args: str, netns: str | None = None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "recorder.workload", *args]
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def running_server(
    name: str,
    hosts: Sequence[str] = ("127.0.0.1",),
    netns: str | None = None,
    workdir: Path | None = None,
) -> Iterator[Server]:
    """A server process for the duration of the block; its port once it listens."""
    directory = workdir or Path(os.environ.get("TMPDIR", "/tmp"))
    port_file = directory / f"scope-workload-{os.getpid()}-{name}-{time.monotonic_ns()}.port"
    host_args = [arg for host in hosts for arg in ("--host", host)]
    process = spawn(
        "server", "--name", name, "--port-file", str(port_file), *host_args, netns=netns
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"workload server {name} did not start")
            time.sleep(0.01)
        yield Server(process, int(port_file.read_text()))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        port_file.unlink(missing_ok=True)


def run_client(
    name: str,
    host: str,
    port: int,
    count: int,
    hold_ms: float = 0,
    gap_ms: float = 0,
    netns: str | None = None,
) -> subprocess.Popen[bytes]:
    return spawn(
        "client", "--name", name, "--host", host, "--port", str(port), "--count", str(count),
        "--hold-ms", str(hold_ms), "--gap-ms", str(gap_ms), netns=netns,
    )  # fmt: skip


def closed_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (bound then released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
