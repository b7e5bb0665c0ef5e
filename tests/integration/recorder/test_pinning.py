"""Pinned capture programs: a recorder killed and started again misses nothing, a changed
program is replaced, the service's unit verifies, and the recorder weighs little.

Each test pins under a directory of its own ($SCOPE_PIN_ROOT), so that nothing it leaves
can be adopted by another recorder, and removes its pins whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventlog.location import resolve
from eventlog.reader import LogReader
from eventlog.store import Purpose, open_log
from recorder.pins import BPFFS, ensure_bpffs
from recorder.workload import PacedLoad
from tests.capabilities import require
from tests.cli import BIN, run_cli
from tests.ebpf import require_ebpf
from tests.recording import start_recorder, wait_for

pytestmark = pytest.mark.ebpf

RSS_BOUND_MB = 100  # the figure the recorder is held to (it measures ~75 MB here)


@pytest.fixture
def pin_root() -> Iterator[Path]:
    require_ebpf()
    require(ensure_bpffs() is None, "bpffs mounted (or mountable) at /sys/fs/bpf")
    root = BPFFS / f"scope-test-{uuid.uuid4().hex[:12]}"
    try:
        yield root
    finally:
        _remove_pins(root)


def _remove_pins(root: Path) -> None:
    if root.exists():
        run_cli("scope-record", "stop", "--detach", env={"SCOPE_PIN_ROOT": str(root)})
    shutil.rmtree(root, ignore_errors=True)  # unlinking a pin detaches what it held


def _recordings(db: Path) -> list[dict[str, object]]:
    with open_log(resolve(str(db)), Purpose.READ) as store:
        return [
            {"id": r.id, "options": r.options, "stop_reason": r.stop_reason}
            for r in LogReader(store).recordings()
        ]


def _pinned(root: Path, tmp_path: Path, db: Path, *options: str) -> subprocess.Popen[str]:
    """``scope-record --pin`` pinning under ``root``, once it has committed its first batch."""
    progress = tmp_path / f"progress-{uuid.uuid4().hex[:6]}"
    os.environ["SCOPE_PIN_ROOT"] = str(root)  # inherited by the recorder
    try:
        return start_recorder(str(db), progress, "--pin", "--snapshot-interval", "0", *options)
    finally:
        del os.environ["SCOPE_PIN_ROOT"]


def _stop(recorder: subprocess.Popen[str]) -> str:
    recorder.send_signal(signal.SIGTERM)
    _out, err = recorder.communicate(timeout=60)
    assert recorder.returncode == 0, err
    return err


def test_a_recorder_killed_and_started_again_two_seconds_later_misses_nothing(
    pin_root: Path, tmp_path: Path
) -> None:
    db = tmp_path / "scope.db"
    first = _pinned(pin_root, tmp_path, db)
    with PacedLoad(200) as load:
        time.sleep(1.0)
        first.kill()  # SIGKILL: nothing said, nothing flushed
        first.wait()
        down_from = time.time_ns()
        time.sleep(2.0)
        down_until = time.time_ns()
        second = _pinned(pin_root, tmp_path, db)
        time.sleep(1.0)
    err = _stop(second)
    assert "adopted the capture programs" in err

    while_down = load.between(down_from, down_until)
    assert len(while_down) >= 100  # the load ran meanwhile
    logged = load.logged_connects(db)
    wrong = [
        (port, (at - down_from) / 1e9, times)
        for port, at in while_down
        if (times := load.times_logged(logged, port, at)) != 1
    ]
    assert wrong == []  # none lost, none twice: (port, seconds into the downtime, times)
    twice = [port for port, at in load.made if load.times_logged(logged, port, at) > 1]
    assert twice == []

    recordings = _recordings(db)
    adopted = recordings[-1]["options"]
    assert isinstance(adopted, dict) and adopted["pinning"]["adopted"] is True
    assert recordings[0]["stop_reason"] == "crashed"
    # Replay in the middle of the downtime: the adopted recording covers it, no gap.
    middle = (down_from + down_until) // 2
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(middle / 1e9)) + f".{middle % 10**9:09d}Z"
    replay = run_cli("scope-replay", "--db", str(db), "--at", at, "--window", "100ms")
    assert replay.returncode == 0, replay.stderr
    assert "no recording of host" not in replay.stderr
    assert str(load.port) in replay.stdout


def test_a_changed_program_is_replaced_and_what_the_old_one_held_is_kept(
    pin_root: Path, tmp_path: Path
) -> None:
    db = tmp_path / "scope.db"
    _stop(_pinned(pin_root, tmp_path, db, "--ringbuf-mb", "8"))
    (old_version,) = [p.name for p in next(pin_root.iterdir()).iterdir()]
    with PacedLoad(200) as load:
        time.sleep(1.0)  # made while no recorder runs: held by the old programs
        wait_for(lambda: len(load.made) >= 50)
    made_while_down = list(load.made)
    # Another ring buffer size is another program: the old one is replaced.
    err = _stop(_pinned(pin_root, tmp_path, db, "--ringbuf-mb", "16"))
    assert f"replaced pinned capture programs of other versions: {old_version}" in err
    versions = [p.name for p in next(pin_root.iterdir()).iterdir()]
    assert len(versions) == 1 and versions != [old_version]
    logged = load.logged_connects(db)
    assert [m for m in made_while_down if load.times_logged(logged, *m) != 1] == []
    replaced = _recordings(db)[-1]["options"]
    assert isinstance(replaced, dict) and replaced["pinning"]["replaced"] == [old_version]


def test_stop_detach_removes_the_programs_and_a_plain_recorder_leaves_none(
    pin_root: Path, tmp_path: Path
) -> None:
    db = tmp_path / "scope.db"
    recorder = _pinned(pin_root, tmp_path, db)
    environment = {"SCOPE_PIN_ROOT": str(pin_root)}
    status = run_cli("scope-record", "service", "status", env=environment)
    assert f"read by pid {recorder.pid}" in status.stdout, status.stdout
    stopped = run_cli("scope-record", "stop", "--detach", env=environment)
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped the recorder (pid {recorder.pid})" in stopped.stderr
    recorder.wait(timeout=30)
    assert list(pin_root.rglob("link-*")) == []
    (recording,) = _recordings(db)
    counters = _counters(db)
    # Detached by the recorder itself: every event staged in the kernel was received.
    assert counters["kernel_staged"] == counters["kernel_received_by_all_readers"]
    assert recording["stop_reason"] == "signal"
    again = run_cli("scope-record", "stop", env=environment)
    assert again.returncode == 2 and "no capture programs are pinned" in again.stderr


def _counters(db: Path) -> dict[str, int]:
    with open_log(resolve(str(db)), Purpose.READ) as store:
        (recording,) = LogReader(store).recordings()
        return dict(recording.counters or {})


def test_the_recorder_stays_under_its_resident_memory_bound(tmp_path: Path) -> None:
    """The compile runs in a child process (LLVM never maps into the recorder), the ring
    buffer is read through a small window: what stays resident is Python and the log."""
    require_ebpf()
    recorder = start_recorder(str(tmp_path / "scope.db"), tmp_path / "progress")
    try:
        with PacedLoad(500):
            time.sleep(3.0)
        status = Path(f"/proc/{recorder.pid}/status").read_text()
        rss_kb = int(status.split("VmRSS:")[1].split()[0])
        maps = Path(f"/proc/{recorder.pid}/maps").read_text()
    finally:
        _stop(recorder)
    assert "libLLVM" not in maps and "libclang" not in maps
    assert rss_kb / 1024 <= RSS_BOUND_MB, f"resident {rss_kb / 1024:.0f} MB"


def test_the_service_unit_verifies_and_installs_with_the_options_given(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "systemd-analyze (Debian's systemd package)")
    assert analyze is not None
    units = tmp_path / "units"
    db = tmp_path / "service.db"
    installed = run_cli(
        "scope-record", "service", "install", "--db", str(db), "--unit-dir", str(units),
        "--no-conntrack",
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    unit = units / "scope-recorder.service"
    text = unit.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split("=", 1)[1].split() == [
        str(BIN / "scope-record"), "--pin", "--log-interval", "60", "--db", str(db),
        "--no-conntrack",
    ]  # fmt: skip
    assert "Type=notify" in text and "Restart=on-failure" in text
    verify = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    refused = run_cli("scope-record", "service", "install", "--unit-dir", str(units), "--bogus")
    assert refused.returncode == 2 and "--bogus" in refused.stderr
    removed = run_cli("scope-record", "service", "uninstall", "--unit-dir", str(units))
    assert removed.returncode == 0 and not unit.exists(), removed.stderr


def test_the_recording_says_how_its_programs_are_held(pin_root: Path, tmp_path: Path) -> None:
    db = tmp_path / "scope.db"
    _stop(_pinned(pin_root, tmp_path, db))
    info = run_cli("scope-replay", "info", "--db", str(db), "--format", "json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)  # readable
    (recording,) = _recordings(db)
    pinning = recording["options"]["pinning"]  # type: ignore[index]
    assert pinning["directory"].startswith(str(pin_root)) and "adopted" not in pinning
