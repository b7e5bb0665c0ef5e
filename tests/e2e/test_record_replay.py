"""Record a real workload, then replay moments of it through the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from eventlog.location import resolve
from eventlog.timefmt import format_ns
from recorder.workload import run_client, running_server
from tests.cli import BIN, run_cli
from tests.ebpf import require_ebpf
from tests.recording import recording, start_recorder

pytestmark = pytest.mark.ebpf


def replay_json(db: Path, at_ns: int, window: str = "15s") -> dict:  # type: ignore[type-arg]
    result = run_cli(
        "scope-replay", "--db", str(db), "--at", str(at_ns), "--window", window, "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_long_lived_and_short_lived_connections_replay_with_their_processes(tmp_path: Path) -> None:
    require_ebpf()
    db = tmp_path / "scope.db"
    with (
        recording(resolve(str(db)), snapshot_interval_s=1),
        running_server("e2e-api", workdir=tmp_path) as server,
    ):
        long_lived = run_client("e2e-long", "127.0.0.1", server.port, count=1, hold_ms=3000)
        time.sleep(1.0)
        during_long = time.time_ns()
        burst = run_client("e2e-burst", "127.0.0.1", server.port, count=50)
        assert burst.wait(timeout=60) == 0
        after_burst = time.time_ns()
        assert long_lived.wait(timeout=60) == 0
        time.sleep(0.5)

    document = replay_json(db, during_long, window="0.5s")
    (long_row,) = [row for row in document["connections"] if row["client_comm"] == "e2e-long"]
    assert (long_row["state"], long_row["direction"]) == ("open", "local")
    assert (long_row["client_pid"], long_row["server_pid"]) == (long_lived.pid, server.pid)
    assert long_row["server_comm"] == "e2e-api"

    document = replay_json(db, after_burst + 100_000_000, window="15s")
    burst_rows = [row for row in document["connections"] if row["client_comm"] == "e2e-burst"]
    assert len(burst_rows) == 50
    assert {row["state"] for row in burst_rows} == {"closed"}
    assert {(row["client_pid"], row["server_pid"]) for row in burst_rows} == {
        (burst.pid, server.pid)
    }
    assert all(row["duration_ns"] < 1_000_000_000 for row in burst_rows)
    # The long connection is still open at that moment, and shows too.
    assert [
        row["state"] for row in document["connections"] if row["client_comm"] == "e2e-long"
    ] == ["open"]
    # The same question gives the same bytes.
    first = run_cli("scope-replay", "--db", str(db), "--at", str(after_burst), "--format", "csv")
    second = run_cli("scope-replay", "--db", str(db), "--at", str(after_burst), "--format", "csv")
    assert first.stdout == second.stdout and first.returncode == 0


def test_bad_moments_are_one_line_errors(tmp_path: Path) -> None:
    from tests.cli import assert_one_line_error
    from tests.logbuilder import built_log

    with built_log(tmp_path / "x.db") as (location, builder):
        builder.exec(1.0, 5, "a")
        builder.exec(2.0, 6, "b")
    db = str(location.path)
    assert_one_line_error(
        run_cli("scope-replay", "--db", db, "--at", "yesterday"), 2, "invalid time"
    )
    assert_one_line_error(run_cli("scope-replay", "--db", db, "--at", "+1h"), 2, "outside the log")
    assert_one_line_error(
        run_cli("scope-replay", "--db", db, "--at", "2020-01-01T00:00:00Z"), 2, "outside the log"
    )
    assert_one_line_error(
        run_cli("scope-replay", "--db", db, "--at", "+1s", "--window", "-5s"), 2, "invalid window"
    )
    assert_one_line_error(
        run_cli("scope-replay", "--db", db, "--at", "+1s", "--format", "xml"), 2, "--format"
    )
    assert run_cli("scope-replay", "--db", db, "--at", "+1s").returncode == 0
    assert run_cli("scope-replay", "--db", db, "--at", "-0.5s", "--format", "csv").returncode == 0


@pytest.mark.parametrize("quiet", [[], ["-q"], ["-qq"]])
def test_scope_record_says_when_capture_is_live(tmp_path: Path, quiet: list[str]) -> None:
    """One line when capture is live (even piped, even with -q; not with -qq), the same in
    the progress file, and --duration counted from that moment, not from the start."""
    require_ebpf()
    db, progress = tmp_path / "live.db", tmp_path / "progress"
    launched = time.time_ns()
    result = run_cli(
        "scope-record", "--db", str(db), "--duration", "2", "--snapshot-interval", "0",
        "--progress-file", str(progress), *quiet,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    said = [line for line in lines if "capturing since" in line]
    assert len(said) == (0 if quiet == ["-qq"] else 1), lines
    first, *commits = progress.read_text().splitlines()
    assert first.startswith("recording=1 capturing_since_ns=") and commits
    since = int(first.split("=")[-1])
    assert launched < since < time.time_ns()
    if said:
        assert said[0].startswith("scope-record: recording 1 (ebpf): capturing since ")
        assert said[0].endswith(format_ns(since))
    if not quiet:
        assert any("stopped" in line for line in lines)
    recorded = run_cli(
        "scope-query", "--db", str(db), "--format", "csv",
        "SELECT epoch_ns(started_at), epoch_ns(ended_at) FROM recordings",
    )  # fmt: skip
    started_ns, ended_ns = map(int, recorded.stdout.splitlines()[1].split(","))
    assert started_ns == since
    # The two seconds ran from then (counted from the start, they would end before).
    # No upper bound: how soon a stop is done is the machine's load, not the recorder's rule.
    assert (ended_ns - since) / 1e9 >= 2.0


def test_the_recorder_starts_no_process(tmp_path: Path) -> None:
    """The recorder forks nothing while it records, conntrack dumps in every namespace
    included: a child of the recorder would hold a copy of every socket it holds (its
    store's connection) while it lived, and a program it ran would be on the host's maps."""
    require_ebpf()
    db = tmp_path / "helpers.db"
    progress = tmp_path / "progress.json"
    recorder = start_recorder(
        str(db), progress, "--duration", "3", "--proc-interval", "0.3", "--snapshot-interval", "0"
    )
    started = subprocess.Popen(["true"])  # a fork the recorder sees: this process's
    assert started.wait(timeout=30) == 0
    _, stderr = recorder.communicate(timeout=120)
    assert recorder.returncode == 0, stderr
    asked = run_cli(
        "scope-query", "--db", str(db), "--format", "json",
        "SELECT recorder_pid, conntrack FROM recordings_raw",
    )  # fmt: skip
    (recording,) = json.loads(asked.stdout)
    assert recording["conntrack"] == "captured"  # the dumps ran
    processes = run_cli(
        "scope-query", "--db", str(db), "--format", "json",
        "SELECT kind, pid, comm, CAST(json_extract(extra, '$.ppid') AS INTEGER) AS ppid "
        "FROM events WHERE kind IN ('fork', 'exec', 'exit')",
    )  # fmt: skip
    assert processes.returncode == 0, processes.stderr
    rows = json.loads(processes.stdout)
    assert {"fork", "exit"} <= {row["kind"] for row in rows if row["pid"] == started.pid}
    assert [row for row in rows if row["ppid"] == recording["recorder_pid"]] == []


def test_a_service_manager_is_told_when_capture_is_live(tmp_path: Path) -> None:
    """systemd's Type=notify: READY=1 when capture is live (not when the process starts),
    then how it is doing, and STOPPING=1 when a stop begins; --log-interval writes the same
    to stderr, a line each, for a journal."""
    require_ebpf()
    address = tmp_path / "notify"
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(address))
    manager.settimeout(60)
    recorder = subprocess.Popen(
        [str(BIN / "scope-record"), "--db", str(tmp_path / "svc.db"), "--snapshot-interval", "0",
         "--log-interval", "0.5"],
        env={**os.environ, "NOTIFY_SOCKET": str(address)},
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ready = manager.recv(4096).decode()
        assert ready.startswith("READY=1\nSTATUS=recording 1 (ebpf): capturing since "), ready
        doing = manager.recv(4096).decode()
        assert doing.startswith("STATUS=recording 1 (ebpf): ") and " events (" in doing, doing
        recorder.send_signal(signal.SIGTERM)
        message = manager.recv(4096).decode()
        while not message.startswith("STOPPING=1"):  # a STATUS may come first
            message = manager.recv(4096).decode()
        assert message == "STOPPING=1\nSTATUS=stopping (SIGTERM)"
        _, stderr = recorder.communicate(timeout=60)
    finally:
        recorder.kill()
        manager.close()
    assert recorder.returncode == 0, stderr
    lines = stderr.splitlines()
    assert lines[0] == "scope-record: " + ready.split("STATUS=", 1)[1]
    assert any(" events (" in line and line.endswith(" lost") for line in lines), lines
