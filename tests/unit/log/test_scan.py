"""Reading the log's rows as columns: the C reader (eventlog/_scan.c) gives exactly what
Python's sqlite3 gives, for any split of the positions and any number of threads, and
refuses what the log's columns cannot hold with one clear error."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pyarrow as pa
import pytest

from eventlog import scan as scanning
from eventlog.errors import LogOpenError
from eventlog.location import resolve
from eventlog.store import Purpose, open_log
from replay.derived.copy import EVENTS, SNAPSHOT_CONNECTIONS, SNAPSHOT_CONNTRACK, SNAPSHOT_PROCESSES
from tests.capabilities import require
from tests.scenarios import SCENARIOS

SELECTS = (EVENTS, SNAPSHOT_CONNECTIONS, SNAPSHOT_PROCESSES, SNAPSHOT_CONNTRACK)


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scan") / "nat.db"
    SCENARIOS["nat-2"](path)
    return path


def head(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT max(position) FROM events").fetchone()[0])


@pytest.fixture(autouse=True)
def native_built() -> None:
    require(scanning.AVAILABLE, "the C reader (eventlog._scan), built by make setup")


def test_the_c_reader_shares_pythons_sqlite() -> None:
    """Its connections are used only then: a copy of SQLite of its own would drop the locks
    of the process's other connections to a log whenever it closed one of its own."""
    from eventlog import _scan

    assert scanning.native_scan_usable()
    probe = sqlite3.connect(":memory:")
    try:
        before = int(probe.execute("PRAGMA soft_heap_limit").fetchone()[0])
        probe.execute(f"PRAGMA soft_heap_limit = {before + 4099}")
        assert _scan.soft_heap_limit() == before + 4099
        probe.execute(f"PRAGMA soft_heap_limit = {before}")
    finally:
        probe.close()


@pytest.mark.parametrize("select", SELECTS, ids=lambda s: s.table)
@pytest.mark.parametrize("parts", [1, 2, 7])
@pytest.mark.parametrize("threads", [1, 2, 5])
def test_the_c_reader_reads_what_sqlite3_reads(
    log: Path, select: scanning.Select, parts: int, threads: int
) -> None:
    ranges = scanning.split(0, head(log), parts)
    native = scanning.scan_sqlite_native(str(log), select, ranges, threads=threads)
    reference = scanning.scan_sqlite_python(str(log), select, ranges)
    assert native.num_rows > 0
    assert native.equals(reference)
    assert native.schema == select.schema()


def test_nulls_empty_blobs_and_text(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (position INTEGER PRIMARY KEY, a INTEGER, b BLOB, c TEXT)")
        conn.executemany(
            "INSERT INTO t VALUES (?, ?, ?, ?)",
            [(1, None, None, None), (2, -(1 << 63), b"", ""), (3, (1 << 63) - 1, b"\x00\xff", "é"),
             *((4 + i, i, bytes([i % 256]) * (i % 17), "x" * (i % 5)) for i in range(300))],
        )  # fmt: skip
    select = scanning.Select(
        "t", (("position", scanning.INT), ("a", scanning.INT), ("b", scanning.BLOB),
              ("c", scanning.TEXT))
    )  # fmt: skip
    for parts in (1, 3, 303):
        ranges = scanning.split(0, 303, parts)
        native = scanning.scan_sqlite_native(str(path), select, ranges)
        assert native.equals(scanning.scan_sqlite_python(str(path), select, ranges))
    rows = native.to_pylist()
    assert rows[0] == {"position": 1, "a": None, "b": None, "c": None}
    assert rows[1]["b"] == b"" and rows[2]["c"] == "é".encode()


def test_a_value_the_column_cannot_hold_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "odd.db"
    SCENARIOS["workload-1"](path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE events SET sock_id = 1.5 WHERE position = 3")
    for read in (scanning.scan_sqlite_native, scanning.scan_sqlite_python):
        with pytest.raises(LogOpenError, match="cannot read the log"):
            read(str(path), EVENTS, [(0, 10)])


def test_ranges_beyond_the_log_and_empty_ranges(log: Path) -> None:
    last = head(log)
    assert scanning.scan_sqlite_native(str(log), EVENTS, [(last, last + 100)]).num_rows == 0
    assert scanning.scan_sqlite_native(str(log), EVENTS, []).num_rows == 0
    assert scanning.split(5, 5, 3) == [] and scanning.split(0, 2, 5) == [(0, 1), (1, 2)]
    with open_log(resolve(str(log)), Purpose.READ) as store:
        assert scanning.scan_live(store, EVENTS, 10, 10).num_rows == 0
        assert scanning.scan_live(store, EVENTS, 0, 10).num_rows == 10


def in_order(table: pa.Table) -> pa.Table:
    """The rows sorted: the rows of one snapshot have no order (replay reads them as sets)."""
    return table.sort_by([(name, "ascending") for name in table.column_names])


@pytest.mark.postgres
def test_a_postgresql_log_reads_as_the_same_sqlite_log_does(log: Path, pg_url: str) -> None:
    SCENARIOS["nat-2"](pg_url)
    last = head(log)
    ranges = [(0, last), (0, 1), (last // 3, last // 2), (last, last + 50)]
    with (
        open_log(resolve(str(log)), Purpose.READ) as lite,
        open_log(resolve(pg_url), Purpose.READ) as pg,
    ):
        for select in SELECTS:
            for after, upto in ranges:
                expected = in_order(scanning.scan_live(lite, select, after, upto)).to_pylist()
                found = in_order(scanning.scan_live(pg, select, after, upto)).to_pylist()
                assert found == expected, (select.table, after, upto)


def test_bad_arguments_and_files(tmp_path: Path, log: Path) -> None:
    from eventlog import _scan

    with pytest.raises(ValueError, match="types"):
        _scan.scan(str(log), EVENTS.sql, "ix", [(0, 1)], 1, 100)
    with pytest.raises(ValueError, match="threads"):
        _scan.scan(str(log), EVENTS.sql, EVENTS.types, [(0, 1)], 0, 100)
    with pytest.raises(_scan.ScanError, match="columns"):
        _scan.scan(str(log), EVENTS.sql, "i", [(0, 1)], 1, 100)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database " * 1000)
    with pytest.raises(LogOpenError):
        scanning.scan_sqlite_native(str(garbage), EVENTS, [(0, 10)])
    with pytest.raises(LogOpenError):
        scanning.scan_sqlite_native(str(tmp_path / "missing.db"), EVENTS, [(0, 10)])
