"""A container runtime's API that answers garbage, hangs, lies or is not there: counted,
bounded by timeouts, said once, and never in the way of capture.

The runtimes here are real unix-socket servers that speak bad HTTP on purpose (no real
runtime misbehaves on demand); the well-behaved runtime is tests/integration/containers'.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from eventlog.events import MODE_PROC, Kind
from eventlog.location import resolve
from recorder.containers import REQUEST_TIMEOUT_S, ContainerFollower
from tests.recording import RecordingRun, recording, wait_for

FAKE_ID = "ab" * 32
Answer = Callable[[str], bytes | None]  # request line -> raw response (None: never answer)


def http(body: object, status: str = "200 OK") -> bytes:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
    )
    return head.encode() + raw


@contextmanager
def runtime(path: Path, answer: Answer) -> Iterator[threading.Event]:
    """A server on ``path`` answering each request by ``answer``; the event set at exit
    releases the requests it holds."""
    release = threading.Event()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while True:
                line = self.rfile.readline().decode(errors="replace")
                if not line:
                    return
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # the headers
                response = answer(line)
                if response is None:
                    release.wait()
                    return
                self.wfile.write(response)

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    server = Server(str(path), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield release
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def follow(path: Path, notes: list[str] | None = None) -> ContainerFollower:
    said = notes if notes is not None else []
    follower = ContainerFollower(time.monotonic_ns, [str(path)], said.append)
    follower.start()
    return follower


def test_garbage_is_counted_and_retried(tmp_path: Path) -> None:
    path = tmp_path / "garbage.sock"
    with runtime(path, lambda line: http(b"\x00{not json")):
        follower = follow(path)
        wait_for(lambda: follower.stats.bad_answers >= 2, timeout=30)
        follower.stop()
    assert follower.drain() == []
    assert follower.stats.connects == 0


def test_a_hanging_runtime_is_bounded_by_timeouts(tmp_path: Path) -> None:
    path = tmp_path / "hang.sock"
    with runtime(path, lambda line: None):
        follower = follow(path)
        wait_for(lambda: follower.stats.timeouts >= 1, timeout=30)
        follower.stop()
    assert follower.drain() == []


def lying_runtime(line: str) -> bytes | None:
    """A runtime that says this test's own process is its container's."""
    if "/version" in line:
        return http({"Components": [{"Name": "Podman Engine"}]})
    if "/containers/json " in line or "/containers/json?" in line:
        return http([{"Id": FAKE_ID}])
    if f"/containers/{FAKE_ID}/json" in line:
        return http(
            {
                "Id": FAKE_ID,
                "Name": "/liar",
                "Image": "sha256:00",
                "Config": {"Image": "localhost/liar:1", "Labels": {"app": "x"}},
                "State": {"Pid": os.getpid(), "StartedAt": "now"},
            }
        )
    return None  # the event stream: open, and quiet


def test_a_pid_that_is_not_the_containers_is_not_recorded(tmp_path: Path) -> None:
    path = tmp_path / "liar.sock"
    with runtime(path, lying_runtime):
        follower = follow(path)
        wait_for(lambda: follower.stats.records >= 1, timeout=30)
        follower.stop()
    (event,) = follower.drain()
    assert event.kind == Kind.CONTAINER and event.extra is not None
    assert (event.extra["name"], event.extra["image"], event.extra["labels"]) == (
        "liar",
        "localhost/liar:1",
        {"app": "x"},
    )
    assert (event.pid, event.netns, event.extra["cgroup_id"]) == (None, None, None)
    assert follower.stats.pid_mismatches == 1
    assert follower.status.startswith("following podman at ")


def test_no_runtime_is_said_once(tmp_path: Path) -> None:
    notes: list[str] = []
    follower = follow(tmp_path / "absent.sock", notes)
    wait_for(lambda: follower.stats.unreachable >= 3, timeout=30)
    follower.stop()
    assert len(notes) == 1 and "no container runtime API reachable" in notes[0]


def connected(run: RecordingRun, port: int) -> bool:
    return any(e.rport == port for e in run.events() if e.kind == Kind.CONNECT)


def test_capture_goes_on_while_the_runtime_hangs(tmp_path: Path) -> None:
    path = tmp_path / "hang.sock"
    location = resolve(str(tmp_path / "scope.db"))
    with (
        runtime(path, lambda line: None),
        recording(location, mode=MODE_PROC, container_sockets=(str(path),)) as run,
    ):
        # Past the first request's timeout, and on: connections are recorded throughout.
        for _ in range(2):
            listener = socket.create_server(("127.0.0.1", 0))
            port = listener.getsockname()[1]
            client = socket.create_connection(("127.0.0.1", port))
            server, _ = listener.accept()
            wait_for(lambda port=port: connected(run, port), timeout=30)
            for sock in (client, server, listener):
                sock.close()
            time.sleep(REQUEST_TIMEOUT_S + 0.5)
    counters = run.recording().counters or {}
    assert counters["container_api_timeouts"] >= 1
    assert counters["container_records"] == 0
