"""A real server over a real recorded log: uvicorn on a loopback port, in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from eventlog.location import resolve
from replay.serve.app import Limits, create_app
from replay.serve.server import Bind, listening_socket, server_config
from replay.serve.session import LogSession
from tests.engine_golden import unpack_real_log


@dataclass
class Served:
    url: str
    db: Path
    session: LogSession

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@contextmanager
def serving(db: Path, token: str | None = None, limits: Limits | None = None) -> Iterator[Served]:
    """``scope-replay serve`` over ``db`` as the command runs it, on a free loopback port."""
    sock = listening_socket(Bind("127.0.0.1", 0))
    port = sock.getsockname()[1]
    session = LogSession(resolve(str(db)))
    server = uvicorn.Server(server_config(create_app(session, token, limits or Limits())))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}", db, session)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        session.close()
        sock.close()


@pytest.fixture(scope="module")
def real_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The real recording of tests/golden/engine (loopback clients of a server, a burst of
    short connections, NAT), with its own cache directory for the derived store."""
    directory = tmp_path_factory.mktemp("serve")
    db = directory / "real.db"
    unpack_real_log(db)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SCOPE_CACHE_DIR", str(directory / "cache"))
        yield db


@pytest.fixture(scope="module")
def served(real_log: Path) -> Iterator[Served]:
    with serving(real_log) as running:
        yield running
