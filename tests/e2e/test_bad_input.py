"""Bad command lines, for each of the three CLIs: one clear line on stderr, exit code 2.

(Bad log files and locations are in test_bad_logs.py, bad SQL in the query tests.)
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventlog.location import resolve
from tests.cli import assert_one_line_error, run_cli
from tests.factories import conn_event, recording_writer
from tests.load import tmpfs

EXIT_USAGE = 2


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bad-input") / "scope.db"
    with recording_writer(resolve(str(path))) as (_, writer):
        for i in range(200):
            writer.add(conn_event(mono_ns=10**12 + i * 1_000_000, sock_id=i))
        writer.flush()
    return path


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody can write to, root included: a read-only filesystem."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mount_point:
        yield mount_point


REPLAY_CASES = {
    "malformed time": (["--at", "yesterday"], "invalid time 'yesterday'"),
    "time before the log": (["--at", "2001-01-01T00:00:00Z"], "is outside the log"),
    "time after the log": (["--at", "2999-01-01T00:00:00Z"], "is outside the log"),
    "huge unix seconds": (["--at", "99999999999999"], "after the year 9999"),
    "huge offset": (["--at=-99999999999d"], "longer than 100 years"),
    "huge window": (["--at", "-0s", "--window", "99999999999d"], "longer than 100 years"),
    "negative window": (["--at", "-0s", "--window", "-5s"], "invalid window '-5s'"),
    "window without a number": (["--at", "-0s", "--window", "s"], "invalid window"),
    "unknown view": (["--at", "-0s", "--view", "deployments"], "'deployments' is not one of"),
    "unknown format": (["--at", "-0s", "--format", "xml"], "'xml' is not one of"),
    "map format for the table": (["--at", "-0s", "--format", "svg"], "draws maps"),
    "csv for a map": (
        ["--at", "-0s", "--view", "hosts", "--format", "csv"],
        "is for the connection table",
    ),
    "--db twice": (["info", "--db", "/elsewhere.db"], "--db is given twice"),
    "csv for info": (["info", "--format", "csv"], "'csv' is not one of 'table', 'json'"),
    "csv for diff": (["diff", "-1s", "-0s", "--format", "csv"], "'csv' is not one of"),
    "a table for diff": (["diff", "-1s", "-0s", "--view", "connections"], "is not one of"),
    "unknown option": (["--at", "-0s", "--colour"], "No such option"),
    "no moment": (["--window", "5s"], "--at is required"),
    "compact at a bad time": (["compact", "--before", "yesterday"], "invalid time 'yesterday'"),
    "export in xml": (
        ["export", "--from", "-1s", "--to", "-0s", "--format", "xml", "-o", "/no/such/dir"],
        "unknown export format 'xml'",
    ),
    "export backwards": (
        ["export", "--from", "-0s", "--to", "-1s", "-o", "/no/such/dir"],
        "--to must be after --from",
    ),
}


@pytest.mark.parametrize("case", REPLAY_CASES, ids=list(REPLAY_CASES))
def test_replay_bad_arguments(log: Path, case: str) -> None:
    args, needle = REPLAY_CASES[case]
    assert_one_line_error(run_cli("scope-replay", "--db", str(log), *args), EXIT_USAGE, needle)


def test_replay_diff_bad_times(log: Path) -> None:
    result = run_cli("scope-replay", "diff", "--db", str(log), "soon", "-0s")
    assert_one_line_error(result, EXIT_USAGE, "invalid time 'soon'")
    result = run_cli(
        "scope-replay", "diff", "--db", str(log), "-1s", "-0s", "--view", "deployments"
    )
    assert_one_line_error(result, EXIT_USAGE, "'deployments' is not one of")
    # Offsets from the end look like options, and are taken as the two moments.
    assert run_cli("scope-replay", "diff", "--db", str(log), "-0.1s", "-0s").returncode == 0


@pytest.mark.parametrize("command", [["info"], ["diff", "-0.1s", "-0s"], ["db", "current"]])
def test_db_before_or_after_a_subcommand(log: Path, command: list[str]) -> None:
    before = run_cli("scope-replay", "--db", str(log), *command)
    after = run_cli("scope-replay", *command, "--db", str(log))
    assert before.returncode == 0, before.stderr
    assert (before.stdout, before.returncode) == (after.stdout, after.returncode)


RECORD_CASES = {
    "negative duration": (["--duration", "-1"], "--duration must be a number > 0"),
    "zero duration": (["--duration", "0"], "--duration must be a number > 0"),
    "negative snapshot interval": (
        ["--snapshot-interval", "-3"],
        "--snapshot-interval must be a number >= 0",
    ),
    "negative flush interval": (["--flush-interval", "-200"], "--flush-interval"),
    "zero ring buffer": (["--ringbuf-mb", "0"], "--ringbuf-mb"),
    "unknown mode": (["--mode", "magic"], "'magic' is not one of"),
    "not a number": (["--duration", "ten"], "Invalid value for '--duration'"),
    "not finite": (["--duration", "nan"], "--duration must be a number > 0"),
    "too long": (["--duration", "1e300"], "--duration must be at most"),
    "huge ring buffer": (["--ringbuf-mb", "100000"], "--ringbuf-mb must be at most 2048"),
    "retain without a unit": (["--retain", "week"], "invalid --retain 'week'"),
    "retain nothing": (["--retain", "0s"], "--retain must be longer than 0"),
    "size without a number": (["--max-log-size", "lots"], "invalid size 'lots'"),
    "archive none alone": (["--archive", "none"], "--archive needs --retain or --max-log-size"),
    "archive alone": (["--archive", "/srv/a"], "--archive needs --retain or --max-log-size"),
    "negative retention interval": (
        ["--retain", "1d", "--retention-interval", "-1"],
        "--retention-interval must be a number > 0",
    ),
}


@pytest.mark.parametrize("case", RECORD_CASES, ids=list(RECORD_CASES))
def test_record_bad_arguments(tmp_path: Path, case: str) -> None:
    args, needle = RECORD_CASES[case]
    db = tmp_path / "scope.db"
    assert_one_line_error(run_cli("scope-record", "--db", str(db), *args), EXIT_USAGE, needle)
    assert not db.exists(), "a rejected command line must not create the log"


def test_paths_that_cannot_be_written(log: Path, tmp_path: Path, read_only_dir: Path) -> None:
    assert_one_line_error(
        run_cli("scope-record", "--db", str(read_only_dir / "scope.db"), "--duration", "1"),
        EXIT_USAGE,
        "Read-only file system",
    )
    for prog, args in (
        ("scope-replay", ["--at", "-0s"]),
        ("scope-query", ["SELECT 1"]),
    ):
        for target, needle in (
            (read_only_dir / "out.txt", "read-only file system"),
            (tmp_path / "missing" / "out.txt", "does not exist"),
            (tmp_path, "is a directory"),
        ):
            result = run_cli(prog, "--db", str(log), *args, "--output", str(target))
            assert_one_line_error(result, EXIT_USAGE, f"cannot write {target}", needle)


@pytest.mark.parametrize("prog", ["scope-record", "scope-replay", "scope-query"])
def test_every_cli_refuses_bad_locations(tmp_path: Path, prog: str) -> None:
    args = {"scope-record": ["--duration", "1"], "scope-replay": ["--at", "-0s"]}.get(
        prog, ["SELECT 1"]
    )
    for db, needle in (
        (str(tmp_path), "is a directory"),
        (str(tmp_path / "no" / "such" / "x.db"), "does not exist"),
        ("ftp://example/log", "unsupported database URL scheme 'ftp'"),
    ):
        assert_one_line_error(run_cli(prog, "--db", db, *args), EXIT_USAGE, needle)


def test_empty_logs(tmp_path: Path) -> None:
    empty_file = tmp_path / "empty.db"
    empty_file.touch()
    for prog, args in (("scope-replay", ["--at", "-0s"]), ("scope-query", ["SELECT 1"])):
        result = run_cli(prog, "--db", str(empty_file), *args)
        assert_one_line_error(result, EXIT_USAGE, "is empty")

    no_events = tmp_path / "fresh.db"
    assert run_cli("scope-replay", "db", "upgrade", "--db", str(no_events)).returncode == 0
    result = run_cli("scope-replay", "--db", str(no_events), "--at", "-0s")
    assert_one_line_error(result, EXIT_USAGE, "has no events")
    query = run_cli(
        "scope-query", "--db", str(no_events), "--format", "csv", "SELECT count(*) AS n FROM events"
    )
    assert query.returncode == 0 and query.stdout.split() == ["n", "0"], query.stderr


@pytest.mark.parametrize(
    "command",
    [["scope-record"], ["scope-replay"], ["scope-replay", "cache", "prune"], ["scope-query"]],
)
def test_help_shows_flags_without_a_value(command: list[str]) -> None:
    """A flag takes no value (``--quiet true`` is refused): the help must not show one."""
    result = run_cli(*command, "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "--help" in result.stdout and "<bool>" not in result.stdout
    if command == ["scope-record"]:  # options that take a value still say which
        (line,) = [line for line in result.stdout.splitlines() if "│ --duration" in line]
        assert "<float>" in line


def test_the_clis_start_without_the_library() -> None:
    """--help (and a usage error) needs none of SQLAlchemy, DuckDB, Arrow, numpy or bcc:
    importing them took two thirds of a second before every command printed a thing."""
    probe = (
        "import sys, recorder.cli, replay.cli, replay.query_cli; "
        "print(sorted(m for m in ('sqlalchemy', 'alembic', 'duckdb', 'pyarrow', 'numpy', 'bcc') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_no_output_overwrites_the_log(log: Path, tmp_path: Path) -> None:
    """An output that is the log, or a companion of it, by any name, is refused before
    anything is written: the log stays as it was."""
    linked = tmp_path / "linked.db"
    linked.symlink_to(log)
    before = _sha(log)
    cases = [
        ["scope-replay", "--at", "-0s", "-o", str(log)],
        ["scope-replay", "--at", "-0s", "--view", "hosts", "--format", "json", "-o", str(linked)],
        ["scope-replay", "--at", "-0s", "-o", f"{log}-wal"],
        ["scope-query", "SELECT 1", "--store", str(log)],
        ["scope-query", "SELECT 1", "--store", str(linked)],
    ]
    for command in cases:
        prog, *args = command
        result = run_cli(prog, "--db", str(log), *args)
        assert_one_line_error(result, EXIT_USAGE, "would overwrite the log")
    recovered = run_cli("scope-replay", "db", "recover", str(log), "--db", f"{log}-wal")
    assert_one_line_error(recovered, EXIT_USAGE, "would overwrite the log")
    assert _sha(log) == before
    # Nor is a file of the user's that is no derived store replaced by one.
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    result = run_cli("scope-query", "--db", str(log), "SELECT 1", "--store", str(notes))
    assert_one_line_error(result, EXIT_USAGE, "not a derived store")
    assert notes.read_text() == "mine\n"


def test_export_does_not_replace_files_it_finds(log: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "events.csv").write_text("mine\n")
    result = run_cli("scope-replay", "--db", str(log), "export", "--from", "+0s", "--to",
                     "-0s", "--format", "csv", "-o", str(out))  # fmt: skip
    assert_one_line_error(result, EXIT_USAGE, "events.csv exists")
    assert (out / "events.csv").read_text() == "mine\n"


@pytest.mark.parametrize("url", ["postgresql://u@h:abc/db", "postgresql://u@[::1/db"])
def test_a_url_that_does_not_parse_is_one_line(url: str) -> None:
    for prog in ("scope-replay", "scope-query"):
        args = ["--at", "-0s"] if prog == "scope-replay" else ["SELECT 1"]
        assert_one_line_error(run_cli(prog, "--db", url, *args), EXIT_USAGE, "not a database URL")


def test_compact_past_the_year_2262_moves_everything_but_the_last_batch(tmp_path: Path) -> None:
    db = tmp_path / "scope.db"
    with recording_writer(resolve(str(db))) as (_, writer):
        for batch in range(3):
            for i in range(10):
                writer.add(conn_event(mono_ns=10**12 + batch * 10**9 + i, sock_id=batch * 10 + i))
            writer.flush()
    result = run_cli("scope-replay", "compact", "--db", str(db), "--before", "99999999999")
    assert result.returncode == 0, result.stderr
    assert "moved 20 events" in result.stdout


def test_a_query_that_is_not_utf8_is_one_line(log: Path, tmp_path: Path) -> None:
    query = tmp_path / "bad.sql"
    query.write_bytes(b"SELECT 1 -- \xff")
    from_file = run_cli("scope-query", "--db", str(log), "-f", str(query))
    assert_one_line_error(from_file, EXIT_USAGE, "is not UTF-8 text")
    argument = subprocess.run(
        [sys.executable, "-c", "from replay.query_cli import main; main()", "--db", str(log),
         b"SELECT 1 -- \xff"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert_one_line_error(argument, EXIT_USAGE, "is not UTF-8 text")


@pytest.mark.parametrize("where", ["a directory", "no such directory"])
def test_a_progress_file_that_cannot_be_written_is_refused_before_capture(
    tmp_path: Path, where: str
) -> None:
    progress = tmp_path if where == "a directory" else tmp_path / "none" / "progress"
    result = run_cli("scope-record", "--db", str(tmp_path / "scope.db"), "--mode", "proc",
                     "--duration", "1", "--quiet", "--progress-file", str(progress))  # fmt: skip
    assert_one_line_error(result, EXIT_USAGE, f"cannot write {progress}")
    assert not (tmp_path / "scope.db").exists()
