"""Bad logs and locations give one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from eventlog.location import resolve
from tests.cli import after_live_line, assert_one_line_error, run_cli
from tests.damage import overwrite, table_pages
from tests.factories import conn_event, recording_writer
from tests.postgres import PostgresServer, free_port


def _populated_log(path: Path, events: int = 5000) -> Path:
    with recording_writer(resolve(str(path))) as (_, writer):
        for i in range(events):
            writer.add(conn_event(mono_ns=10**12 + i, sock_id=i, comm=f"c{i % 50}"))
        writer.flush()
    return path


@pytest.mark.parametrize("command", [("db", "current"), ("db", "upgrade")])
def test_not_a_database(tmp_path: Path, command: tuple[str, ...]) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("these are not the bytes of a database\n" * 100)
    result = run_cli("scope-replay", *command, "--db", str(bad))
    assert_one_line_error(result, 2, "not a SQLite database")


def test_truncated_sqlite_file(tmp_path: Path) -> None:
    log = _populated_log(tmp_path / "scope.db")
    data = log.read_bytes()
    log.write_bytes(data[: len(data) // 2])
    result = run_cli("scope-replay", "db", "current", "--db", str(log))
    assert_one_line_error(result, 2, "truncated")


def test_corrupt_sqlite_pages(tmp_path: Path) -> None:
    log = _populated_log(tmp_path / "scope.db")
    data = bytearray(log.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    for offset in range(page_size, len(data)):
        data[offset] = (offset * 7919) & 0xFF
    log.write_bytes(bytes(data))
    result = run_cli("scope-replay", "db", "current", "--db", str(log))
    assert_one_line_error(result, 2, "not a valid SQLite log")


@pytest.mark.parametrize("table", ["recordings", "events"])
def test_recording_into_a_damaged_log(tmp_path: Path, table: str) -> None:
    """scope-record meets damage where it reads (recordings, at start) or appends (events,
    once capture is live): it says the log is not valid in one line. (Damage on a page it
    never reads goes unnoticed: `scope-replay db check` finds it, `db recover` copies around
    it.)"""
    log = _populated_log(tmp_path / "scope.db")
    root = table_pages(log, table)[0]  # every read and every append goes through the root
    overwrite(log, root)
    result = run_cli("scope-record", "--db", str(log), "--mode", "proc", "--no-conntrack",
                     "--duration", "5", "--quiet")  # fmt: skip
    if table == "events":
        result = after_live_line(result)
    assert_one_line_error(result, 2, f"{log} is not a valid SQLite log")


def test_foreign_sqlite_database(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    for command in (("db", "current"), ("db", "upgrade")):
        result = run_cli("scope-replay", *command, "--db", str(other))
        assert_one_line_error(result, 2, "not a scope-recorder log")


def test_log_from_a_newer_version(tmp_path: Path) -> None:
    log = _populated_log(tmp_path / "scope.db", events=10)
    with sqlite3.connect(log) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    for command in (("db", "current"), ("db", "upgrade")):
        result = run_cli("scope-replay", *command, "--db", str(log))
        assert_one_line_error(result, 2, "newer scope-recorder")


def test_directory_missing_parent_and_bad_scheme(tmp_path: Path) -> None:
    assert_one_line_error(
        run_cli("scope-replay", "db", "current", "--db", str(tmp_path)), 2, "is a directory"
    )
    assert_one_line_error(
        run_cli("scope-replay", "db", "upgrade", "--db", str(tmp_path / "no" / "x.db")),
        2,
        "does not exist",
    )
    assert_one_line_error(
        run_cli("scope-replay", "db", "current", "--db", "mysql://u@h/db"), 2, "unsupported"
    )


def test_missing_log_for_reading(tmp_path: Path) -> None:
    result = run_cli("scope-replay", "db", "current", "--db", str(tmp_path / "absent.db"))
    assert_one_line_error(result, 2, "no log at")


def test_unreachable_postgres() -> None:
    url = f"postgresql://scope@127.0.0.1:{free_port()}/scope"
    result = run_cli("scope-replay", "db", "current", "--db", url)
    assert_one_line_error(result, 2, "cannot reach")


@pytest.mark.postgres
def test_postgres_database_from_a_newer_version(pg_server: PostgresServer) -> None:
    url = pg_server.create_database("scope_newer")
    assert run_cli("scope-replay", "db", "upgrade", "--db", url).returncode == 0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    result = run_cli("scope-replay", "db", "current", "--db", url)
    assert_one_line_error(result, 2, "newer scope-recorder")


def test_env_var_names_the_default_log(tmp_path: Path) -> None:
    log = tmp_path / "from-env.db"
    result = run_cli("scope-replay", "db", "upgrade", env={"SCOPE_DB": str(log)})
    assert result.returncode == 0, result.stderr
    assert log.exists() and (log.stat().st_mode & 0o777) == 0o600
    result = run_cli("scope-replay", "db", "current", env={"SCOPE_DB": str(log)})
    assert "current" in result.stdout
