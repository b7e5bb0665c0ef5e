"""`scope-replay serve` as a user runs it: its bad input, and a real start on a real port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.cli import BIN, assert_one_line_error, run_cli
from tests.engine_golden import unpack_real_log
from tests.integration.serve.conftest import serving


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--bind", "nowhere"], "invalid --bind"),
        (["--bind", "example.com:80"], "not an IP address"),
        (["--bind", "0.0.0.0:4040", "--token", "short"], "at least 16"),
    ],
)
def test_bad_arguments_are_one_line(real_log: Path, args: list[str], says: str) -> None:
    assert_one_line_error(run_cli("scope-replay", "serve", "--db", str(real_log), *args), 2, says)


def test_a_missing_log_is_one_line(tmp_path: Path) -> None:
    result = run_cli("scope-replay", "serve", "--db", str(tmp_path / "none.db"))
    assert_one_line_error(result, 2)


def test_a_port_in_use_is_one_line(real_log: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("scope-replay", "serve", "--db", str(real_log),
                         "--bind", f"127.0.0.1:{port}")  # fmt: skip
    assert_one_line_error(result, 2, "cannot listen")


def test_it_serves_until_interrupted(real_log: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    child = subprocess.Popen(
        [str(BIN / "scope-replay"), "serve", "--db", str(real_log), "--bind", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert child.poll() is None, child.communicate()
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/span", timeout=10)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert answer.status_code == 200
    finally:
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    assert f"serving {real_log} at http://127.0.0.1:{port}/" in out
    assert "Traceback" not in err


def test_other_commands_read_the_log_while_a_server_that_synced_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that brought the derived store up to date keeps it open for reading only:
    a scope-replay and a scope-query of the same log, with the same store, answer."""
    db = tmp_path / "real.db"
    unpack_real_log(db)
    monkeypatch.setenv("SCOPE_CACHE_DIR", str(tmp_path / "fresh-cache"))
    with serving(db) as served:
        span = served.client().get("/api/span").json()
        at = str(span["end_ns"])
        table = run_cli("scope-replay", "--db", str(db), "--at", at, timeout=50)
        query = run_cli("scope-query", "--db", str(db), "SELECT count(*) FROM events", timeout=50)
    assert table.returncode == 0, table.stderr
    assert query.returncode == 0, query.stderr
