"""scope-query over real logs: view contents, agreement with replay, both backends, safety."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventlog.events import TCP_ESTABLISHED, TCP_LISTEN
from eventlog.location import resolve
from tests.agreement import AGREED, query_rows, replay_rows, rows_of
from tests.cli import assert_one_line_error, run_cli
from tests.integration.replay.test_derive import operation
from tests.logbuilder import Builder, build_workload, built_log, wall
from tests.scenarios import build_cross_host_log, build_workload_log

SERVER = "127.0.0.1:8080"


def small_log(b: Builder) -> None:
    b.snapshot(0.5, [("0.0.0.0:8080", "0.0.0.0:0", TCP_LISTEN, 20), ("10.0.0.2:22", "10.0.0.9:50000", TCP_ESTABLISHED, 50)],
               processes=[(20, "api"), (50, "sshd")])  # fmt: skip
    b.exec(1.0, 10, "curl", ppid=1)
    b.connect(1.1, 1, 10, "curl", "127.0.0.1:40001", SERVER)
    b.accept(1.1, 2, 20, "api", SERVER, "127.0.0.1:40001")
    b.close(1.2, 1, 10, "curl", "127.0.0.1:40001", SERVER, bytes_sent=5, bytes_received=7)
    b.close(1.2, 2, 20, "api", SERVER, "127.0.0.1:40001")
    b.failed(1.3, 3, 10, "curl", "127.0.0.1:40002", "127.0.0.1:1")
    b.exit(1.4, 10, "curl")
    b.exec(2.0, 10, "wget", ppid=1)  # the pid comes back for another process
    b.connect(
        2.1,
        4,
        10,
        "wget",
        "10.0.0.2:41000",
        "[2606:4700::1111]:443".replace("[", "").replace("]", ""),
    )
    b.loss(2.2, 2.3, 4)
    b.exec(9.0, 999, "end-marker")


def test_views_hold_what_the_log_holds(tmp_path: Path) -> None:
    with built_log(tmp_path / "q.db") as (location, b):
        small_log(b)
    mirror = tmp_path / "mirror.duckdb"
    kinds = rows_of(
        location, "SELECT kind, count(*) AS n FROM events GROUP BY kind ORDER BY kind", mirror
    )
    assert kinds == [
        {"kind": "accept", "n": 1}, {"kind": "close", "n": 2}, {"kind": "connect", "n": 2},
        {"kind": "connect_failed", "n": 1}, {"kind": "exec", "n": 3}, {"kind": "exit", "n": 1},
        {"kind": "snapshot", "n": 1},
    ]  # fmt: skip
    (first,) = rows_of(
        location, "SELECT * FROM events WHERE kind = 'connect' AND comm = 'curl'", mirror
    )
    assert (first["laddr"], first["lport"], first["raddr"], first["rport"], first["family"]) == (
        "127.0.0.1",
        40001,
        "127.0.0.1",
        8080,
        "inet",
    )
    assert first["wall_ns"] == wall(1.1) and first["ts"].startswith("2025-11-25T12:00:01.1")
    connections = rows_of(
        location,
        "SELECT state, direction, client, server, client_comm, server_comm, duration_ns, failed FROM connections",
        mirror,
    )
    assert {(c["state"], c["direction"], c["client_comm"], c["server_comm"]) for c in connections} == {
        ("closed", "local", "curl", "api"), ("failed", "local", "curl", None),
        ("open", "outbound", "wget", None), ("open", "inbound", None, "sshd"),
    }  # fmt: skip
    local = next(c for c in connections if c["direction"] == "local" and not c["failed"])
    assert local["duration_ns"] == 100_000_000
    processes = rows_of(
        location,
        "SELECT pid, comm, started_at IS NOT NULL AS started, exited_at IS NOT NULL AS exited FROM processes WHERE pid = 10 ORDER BY started_at",
        mirror,
    )
    assert processes == [
        {"pid": 10, "comm": "curl", "started": True, "exited": True},
        {"pid": 10, "comm": "wget", "started": True, "exited": False},
    ]
    assert rows_of(location, "SELECT lost, reason FROM losses", mirror) == [
        {"lost": 4, "reason": "ring buffer full"}
    ]
    assert rows_of(
        location, "SELECT count(*) AS n, sum(connections) AS c FROM snapshots", mirror
    ) == [{"n": 1, "c": 2}]
    assert rows_of(location, "SELECT host, mode FROM recordings", mirror) == [
        {"host": "testhost", "mode": "ebpf"}
    ]


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_connections_at_agrees_with_replay_in_every_column(tmp_path: Path, seed: int) -> None:
    """The same rows, in the same order, column for column, NAT included."""
    db = tmp_path / "nat.db"
    build_workload_log(db, seed, with_nat=True, operations=120)
    location = resolve(str(db))
    span_start, span_end = wall(0), wall(8)
    nat_rows = 0
    for step in range(9):
        at_ns = span_start + (span_end - span_start) * step // 8
        for window_ns in (0, 100_000_000, 15_000_000_000):
            expected = replay_rows(location, at_ns, window_ns)
            assert query_rows(location, at_ns, window_ns, tmp_path / "m.duckdb") == expected
            nat_rows += sum(1 for row in expected if row[AGREED.index("nat_destination")])
    assert nat_rows > 0  # the workload did put connections behind NAT


@pytest.mark.parametrize("skew_ns", [300_000_000, -700_000_000])
def test_connections_across_hosts_agree_with_replay(tmp_path: Path, skew_ns: int) -> None:
    """Two hosts calling each other (directly and through NAT), one's clock off: the same
    rows from both, with connections paired across hosts among them."""
    db = tmp_path / "hosts.db"
    build_cross_host_log(db, 31, skew_ns)
    location = resolve(str(db))
    across = 0
    for step in range(9):
        at_ns = wall(0) + (wall(8) - wall(0)) * step // 8 + max(skew_ns, 0)
        for window_ns in (0, 100_000_000, 15_000_000_000):
            expected = replay_rows(location, at_ns, window_ns)
            assert query_rows(location, at_ns, window_ns, tmp_path / "m.duckdb") == expected
            hosts = [(r[AGREED.index("client_host")], r[AGREED.index("server_host")])
                     for r in expected]  # fmt: skip
            across += sum(1 for c, s in hosts if c and s and c != s)
    assert across > 0  # connections did pair across hosts


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    operations=st.lists(operation, min_size=1, max_size=50),
    moments=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5),
    window_s=st.sampled_from([0.0, 0.1, 0.5, 15.0]),
)
def test_connections_at_agrees_with_replay(
    operations: list[tuple[str, int]], moments: list[float], window_s: float
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with built_log(Path(tmp) / "p.db") as (location, builder):
            end = build_workload(builder, operations)
        window_ns = int(window_s * 1e9)
        for fraction in moments:
            at_ns = wall(end * fraction)
            assert query_rows(location, at_ns, window_ns, Path(tmp) / "m.duckdb") == replay_rows(
                location, at_ns, window_ns
            )


def test_timestamp_macro_and_interval(tmp_path: Path) -> None:
    with built_log(tmp_path / "q.db") as (location, b):
        small_log(b)
    rows = rows_of(
        location,
        "SELECT id FROM connections_at(TIMESTAMP '2025-11-25 12:00:01.15', INTERVAL 15 SECOND)",
        tmp_path / "m.duckdb",
    )
    assert len(rows) == 2  # the local connection, open then, and the inbound ssh from the snapshot


@pytest.mark.postgres
def test_sqlite_and_postgres_give_the_same_rows(tmp_path: Path, pg_url: str) -> None:
    answers: list[list[list[dict[str, Any]]]] = []
    for location in (resolve(str(tmp_path / "q.db")), resolve(pg_url)):
        with built_log(location) as (_, b):
            small_log(b)
        answers.append(
            [
                rows_of(location, sql, tmp_path / f"m-{len(answers)}.duckdb")
                for sql in (
                    "SELECT * EXCLUDE (recording_id) FROM events ORDER BY position",
                    "SELECT * FROM connections ORDER BY id",
                    f"SELECT * FROM connections_at_ns({wall(1.15)}, 15000000000) ORDER BY id",
                    "SELECT * FROM processes ORDER BY pid, started_at",
                    "SELECT * EXCLUDE (id) FROM losses",
                )
            ]
        )
    assert answers[0] == answers[1]


def test_new_events_appear_in_the_next_query(tmp_path: Path) -> None:
    from tests.factories import MONO_BASE_NS, conn_event, recording_writer

    location = resolve(str(tmp_path / "live.db"))
    mirror = tmp_path / "m.duckdb"
    with recording_writer(location) as (_, writer):
        writer.add(conn_event(mono_ns=MONO_BASE_NS + 10, sock_id=1))
        writer.flush()
        assert rows_of(location, "SELECT count(*) AS n FROM events", mirror) == [{"n": 1}]
        writer.add(conn_event(mono_ns=MONO_BASE_NS + 20, sock_id=2))
        writer.add(conn_event(mono_ns=MONO_BASE_NS + 30, sock_id=3))
        writer.flush()
        assert rows_of(location, "SELECT count(*) AS n FROM events", mirror) == [{"n": 3}]
        assert rows_of(
            location, "SELECT count(*) AS n FROM connections WHERE state = 'open'", mirror
        ) == [{"n": 3}]


def test_formats_and_parquet(tmp_path: Path) -> None:
    with built_log(tmp_path / "q.db") as (location, b):
        small_log(b)
    db = str(location.path)
    env = {"SCOPE_CACHE_DIR": str(tmp_path / "cache")}
    sql = "SELECT position, kind, comm FROM events ORDER BY position LIMIT 3"
    as_csv = run_cli("scope-query", "--db", db, "--format", "csv", sql, env=env)
    assert next(csv.reader(io.StringIO(as_csv.stdout))) == ["position", "kind", "comm"]
    ndjson = run_cli("scope-query", "--db", db, "--format", "ndjson", sql, env=env)
    assert [json.loads(line)["position"] for line in ndjson.stdout.splitlines()] == [1, 2, 3]
    table = run_cli("scope-query", "--db", db, sql, env=env)
    assert table.returncode == 0 and "snapshot" in table.stdout
    parquet = tmp_path / "out.parquet"
    exported = run_cli(
        "scope-query", "--db", db, "--format", "parquet", "--output", str(parquet), sql, env=env
    )
    assert exported.returncode == 0, exported.stderr
    assert exported.stderr == ""  # DuckDB's warnings about its copies are not the user's
    import duckdb

    assert duckdb.execute(f"SELECT count(*) FROM '{parquet}'").fetchall() == [(3,)]
    from_file = tmp_path / "q.sql"
    from_file.write_text(sql)
    assert (
        run_cli("scope-query", "--db", db, "-f", str(from_file), "--format", "csv", env=env).stdout
        == as_csv.stdout
    )
    schema = run_cli("scope-query", "--db", db, "--schema", env=env)
    assert "connections_at" in schema.stdout and "client_pid" in schema.stdout
    listed = json.loads(run_cli("scope-query", "--db", db, "--schema", "--format", "json",
                                env=env).stdout)  # fmt: skip
    assert {"view": "connections", "column": "client_pid", "type": "INTEGER"} in listed
    assert listed[0]["view"] == "events" and listed[-1]["column"] == "(table macro)"
    refused = run_cli("scope-query", "--db", db, "--schema", "SELECT 1", env=env)
    assert_one_line_error(refused, 2, "--schema lists the views")


def test_moments_print_as_replay_prints_them(tmp_path: Path) -> None:
    """RFC 3339 in UTC with nanoseconds and a Z in every text format (DuckDB hands Python
    microseconds without a zone); two columns of one name stay two; Parquet keeps the type."""
    from eventlog.timefmt import format_ns

    with built_log(tmp_path / "t.db") as (location, b):
        small_log(b)
    db = str(location.path)
    env = {"SCOPE_CACHE_DIR": str(tmp_path / "cache")}
    sql = (
        "SELECT wall_ns, ts, ts AS ts, CAST(ts AS TIMESTAMPTZ) AS zoned, position "
        "FROM events ORDER BY position DESC LIMIT 3 -- newest first\n;"
    )
    rows = list(csv.reader(io.StringIO(
        run_cli("scope-query", "--db", db, "--format", "csv", sql, env=env).stdout
    )))  # fmt: skip
    assert rows[0] == ["wall_ns", "ts", "ts", "zoned", "position"]
    assert [int(row[4]) for row in rows[1:]] == sorted((int(r[4]) for r in rows[1:]), reverse=True)
    for wall_ns, *moments, _ in rows[1:]:
        assert moments == [format_ns(int(wall_ns))] * 3
    (first, *_) = json.loads(run_cli("scope-query", "--db", db, "--format", "json", sql,
                                     env=env).stdout)  # fmt: skip
    assert first["ts"] == first["zoned"] == format_ns(first["wall_ns"])
    table = run_cli("scope-query", "--db", db, sql, env=env).stdout
    assert format_ns(int(rows[1][0])) in table
    parquet = tmp_path / "t.parquet"
    run_cli("scope-query", "--db", db, "--format", "parquet", "-o", str(parquet), sql, env=env)
    import duckdb

    exported = duckdb.sql(f"SELECT ts FROM '{parquet}'")
    assert exported is not None and str(exported.types[0]).startswith("TIMESTAMP")


def _checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("sql", "needle"),
    [
        ("SELEC 1", "syntax"),
        ("SELECT nope FROM events", "nope"),
        ("DELETE FROM ev", "a DELETE statement is refused"),
        ("INSERT INTO ev SELECT * FROM ev", "an INSERT statement is refused"),
        ("CREATE TABLE x AS SELECT 1", "refused"),
        ("DROP VIEW events", "refused"),
        ("ATTACH '{log}' AS victim", "refused"),
        ("INSTALL sqlite", "refused"),
        ("LOAD httpfs", "refused"),
        ("COPY (SELECT 1) TO '{dir}/x.csv'", "refused"),
        ("SELECT 1; SELECT 2", "one statement"),
        ("SELECT * FROM read_csv('{log}')", "disabled"),
        ("SELECT * FROM read_parquet('https://example.com/x.parquet')", "disabled"),
    ],
)
def test_bad_and_writing_sql_is_refused_and_the_log_is_unchanged(
    tmp_path: Path, sql: str, needle: str
) -> None:
    with built_log(tmp_path / "q.db") as (location, b):
        small_log(b)
    log = location.path
    assert log is not None
    before = _checksum(log)
    env = {"SCOPE_CACHE_DIR": str(tmp_path / "cache")}
    result = run_cli("scope-query", "--db", str(log), sql.format(log=log, dir=log.parent), env=env)
    assert_one_line_error(result, 1, needle) if needle != "syntax" else assert_one_line_error(
        result, 1
    )
    assert needle.lower() in result.stderr.lower()
    assert _checksum(log) == before
    assert not (log.parent / "x.csv").exists()


def test_parquet_output_cannot_be_the_log(tmp_path: Path) -> None:
    with built_log(tmp_path / "q.db") as (location, b):
        small_log(b)
    log = str(location.path)
    result = run_cli(
        "scope-query",
        "--db",
        log,
        "--format",
        "parquet",
        "--output",
        log,
        "SELECT 1",
        env={"SCOPE_CACHE_DIR": str(tmp_path / "c")},
    )
    assert_one_line_error(result, 2, "overwrite the log")


def test_output_cannot_be_the_log_by_another_name(tmp_path: Path) -> None:
    """Through ``..``, a symbolic link or a hard link: the log (or its write-ahead log) would
    be truncated while it is read."""
    with built_log(tmp_path / "q.db") as (location, b):
        small_log(b)
    log = Path(str(location.path))
    (tmp_path / "sub").mkdir()
    (tmp_path / "alias.db").symlink_to(log)
    os.link(log, tmp_path / "hard.db")
    size = log.stat().st_size
    for other in (tmp_path / "sub" / ".." / "q.db", tmp_path / "alias.db", tmp_path / "hard.db"):
        result = run_cli("scope-query", "--db", str(log), "--format", "csv", "--output",
                         str(other), "SELECT 1", env={"SCOPE_CACHE_DIR": str(tmp_path / "c")})  # fmt: skip
        assert_one_line_error(result, 2, "overwrite the log")
    assert log.stat().st_size == size


def test_a_table_row_is_one_line_whatever_a_value_holds(tmp_path: Path) -> None:
    """A process's cgroup is its /proc file, a line per hierarchy on cgroup v1 hosts: the
    text table writes it with escapes, one row per line; JSON keeps it as it is."""
    cgroup = "1:cpu:/\n0::/system.slice/a.service"
    with built_log(tmp_path / "lines.db") as (location, b):
        b.snapshot(0.5, [], processes=[(20, "api", cgroup), (21, "tab\tname")])
        b.flush()
    db = str(location.path)
    sql = "SELECT pid, comm, cgroup FROM processes ORDER BY pid"
    table = run_cli("scope-query", "--db", db, sql, env={"SCOPE_CACHE_DIR": str(tmp_path)})
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[1:] == [
        "20   api        1:cpu:/\\n0::/system.slice/a.service",
        "21   tab\\tname  0::/system.slice/x.service",
    ]
    document = run_cli("scope-query", "--db", db, "--format", "json", sql,
                       env={"SCOPE_CACHE_DIR": str(tmp_path)})  # fmt: skip
    assert json.loads(document.stdout)[0]["cgroup"] == cgroup
