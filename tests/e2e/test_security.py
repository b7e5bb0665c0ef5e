"""The log holds command lines and network peers: who may read it, and where it may live."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.capabilities import is_root, require
from tests.cli import assert_one_line_error, run_cli

NOBODY = 65534
# /proc mode records without loading programs: these tests are about files, not capture.
QUICK = ("--mode", "proc", "--duration", "0.5", "--quiet", "--no-conntrack")


def _record(db: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("scope-record", "--db", str(db), *QUICK, *extra)


def test_new_log_and_its_companions_are_private(tmp_path: Path) -> None:
    db = tmp_path / "scope.db"
    old_umask = os.umask(0o022)
    try:
        assert _record(db).returncode == 0
    finally:
        os.umask(old_umask)
    for path in (db, *tmp_path.glob("scope.db-*")):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_refuses_another_users_log_unless_forced(tmp_path: Path) -> None:
    require(is_root(), "root (to give the log to another user)")
    db = tmp_path / "scope.db"
    assert _record(db).returncode == 0
    os.chown(db, NOBODY, NOBODY)
    before = db.read_bytes()
    assert_one_line_error(_record(db), 2, f"belongs to uid {NOBODY}", "--force")
    assert db.read_bytes() == before
    forced = _record(db, "--force")
    assert forced.returncode == 0, forced.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM recordings").fetchone() == (2,)


def test_refuses_a_directory_anyone_can_write_to(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert_one_line_error(_record(shared / "scope.db"), 2, "writable by everyone", "--force")
    assert not (shared / "scope.db").exists()
    assert _record(shared / "scope.db", "--force").returncode == 0
    # The sticky bit (as on /tmp) stops others from replacing the file: allowed.
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    assert _record(sticky / "scope.db").returncode == 0


def test_redact_cmdline_keeps_only_argv0(tmp_path: Path) -> None:
    secret = "--password=hunter2-do-not-log"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", secret], stdin=subprocess.DEVNULL
    )
    try:
        time.sleep(0.2)
        plain, redacted = tmp_path / "plain.db", tmp_path / "redacted.db"
        assert _record(plain).returncode == 0
        assert _record(redacted, "--redact-cmdline").returncode == 0
    finally:
        holder.kill()
        holder.wait()

    def cmdline_of(db: Path) -> str:
        with sqlite3.connect(db) as conn:
            row = conn.execute(
                "SELECT cmdline FROM snapshot_processes WHERE pid = ?", (holder.pid,)
            ).fetchone()
        assert row is not None
        return str(row[0])

    assert secret in cmdline_of(plain)
    assert cmdline_of(redacted) == sys.executable
    with sqlite3.connect(redacted) as conn:
        everything = "\n".join(
            str(value)
            for table in ("snapshot_processes", "events", "recordings")
            for row in conn.execute(f"SELECT * FROM {table}")
            for value in row
        )
    assert "hunter2" not in everything


def test_without_privileges_says_what_is_missing_and_what_proc_mode_can_do() -> None:
    require(is_root(), "root (to drop privileges)")
    # Somewhere an unprivileged user can reach (pytest's own directories are root's only).
    shared = Path(tempfile.mkdtemp(prefix="scope-unprivileged-"))
    shared.chmod(0o1777)
    try:
        _record_unprivileged(shared)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _record_unprivileged(shared: Path) -> None:
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all"]  # fmt: skip
    record = [str(Path(sys.executable).parent / "scope-record"), "--db", str(shared / "u.db")]
    strict = subprocess.run(
        [*drop, *record, "--require-ebpf", "--duration", "1"],
        capture_output=True, text=True, timeout=60, check=False, cwd=shared,
    )  # fmt: skip
    assert_one_line_error(strict, 4, "CAP_BPF", "CAP_PERFMON", "/proc mode")
    fallback = subprocess.run(
        [*drop, *record, "--duration", "1", "--no-conntrack"],
        capture_output=True, text=True, timeout=60, check=False, cwd=shared,
    )  # fmt: skip
    assert fallback.returncode == 0, fallback.stderr
    assert "using /proc mode" in fallback.stderr and "short-lived" in fallback.stderr
