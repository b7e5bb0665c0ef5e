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
