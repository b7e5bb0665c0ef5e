"""The derived store: however it is built, it holds the same intervals and gives the same
answers; read commands leave the log as it was; the store follows the log it belongs to.

Stores are compared by their interval tables (sockets, processes, NAT entries, as rows
sorted), the holders the snapshots showed where they changed, and by the fold's state: built with and without the set-aside of plain socket
pairs (replay.derived.derive), in ranges of every size, and synced after every batch of a
log being written against one built once at the end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventlog.location import LogLocation, resolve
from eventlog.store import Purpose, open_log
from replay.derived import copy, derive
from replay.derived.store import open_derived
from replay.table import render, replay_table
from tests.logbuilder import Builder, build_workload, built_log, wall, workload_operation
from tests.scenarios import SCENARIOS

operation = workload_operation(
    "pair", "outbound", "outbound6", "proc", "unbound", "close", "close-unknown", "failed",
    "snapshot", "exec", "exit", "flush",
)  # fmt: skip

# Addresses by their bytes, not by the ids a store gave them (which depend on the order it
# met them in).
DUMPED = {
    "sockets": "SELECT s.* EXCLUDE (laddr, raddr), a1.raw, a2.raw FROM socket_all s "
    "LEFT JOIN addr a1 ON a1.id = s.laddr LEFT JOIN addr a2 ON a2.id = s.raddr",
    "processes": "SELECT * FROM process_all",
    "nat": "SELECT * FROM nat_all",
    "state_sockets": "SELECT * FROM state_sockets",
    "state_missing": "SELECT * FROM state_missing",
    "state_snapshot_sockets": "SELECT s.* EXCLUDE (laddr, raddr), a1.raw, a2.raw "
    "FROM state_snapshot_sockets s LEFT JOIN addr a1 ON a1.id = s.laddr "
    "LEFT JOIN addr a2 ON a2.id = s.raddr",
    "snap_holders": "SELECT h.* EXCLUDE (laddr, raddr), a1.raw, a2.raw FROM snap_holders h "
    "LEFT JOIN addr a1 ON a1.id = h.laddr LEFT JOIN addr a2 ON a2.id = h.raddr",
    "state_processes": "SELECT * FROM state_processes",
    "state_conntrack": "SELECT * FROM state_conntrack",
}


def dump(location: LogLocation, store: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every interval and the state, as sorted rows, from a store brought up to date."""
    with open_log(location, Purpose.READ) as log, open_derived(log, store) as derived:
        return {
            name: sorted(derived.con.execute(sql).fetchall(), key=repr)
            for name, sql in DUMPED.items()
        }


def _nothing_set_aside(con: duckdb.DuckDBPyConnection, chunk: Any, state: Any) -> int:
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _set_aside (recording_id INTEGER, sock_id BIGINT, "
        "open_pos BIGINT, close_pos BIGINT, known_ns BIGINT, close_ns BIGINT)"
    )
    return 0


def test_the_set_aside_and_range_sizes_change_no_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("nat-1", "fleet"):
        db = tmp_path / f"{name}.db"
        SCENARIOS[name](db)
        location = resolve(str(db))
        reference = dump(location, tmp_path / f"{name}-ref.duckdb")
        assert reference["sockets"] and reference["processes"] and reference["nat"]
        with monkeypatch.context() as patch:
            patch.setattr(derive, "set_aside", _nothing_set_aside)
            assert dump(location, tmp_path / f"{name}-folded.duckdb") == reference
        for size in (1, 7, 64):
            with monkeypatch.context() as patch:
                patch.setattr(copy, "CHUNK_POSITIONS", size)
                assert dump(location, tmp_path / f"{name}-{size}.duckdb") == reference, size


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=st.lists(operation, min_size=1, max_size=60), size=st.integers(1, 30))
def test_generated_logs_give_the_same_store_however_it_is_built(
    operations: list[tuple[str, int]], size: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with built_log(Path(tmp) / "g.db") as (location, builder):
            build_workload(builder, operations)
        reference = dump(location, Path(tmp) / "ref.duckdb")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(copy, "CHUNK_POSITIONS", size)
            patch.setattr(derive, "set_aside", _nothing_set_aside)
            assert dump(location, Path(tmp) / "other.duckdb") == reference


class SyncingBuilder(Builder):
    """A builder that brings a store up to date after every batch it commits."""

    def __init__(self, writer: Any, location: LogLocation, store: Path) -> None:
        super().__init__(writer)
        self.location, self.store, self.syncs = location, store, 0

    def flush(self) -> None:
        super().flush()
        dump(self.location, self.store)
        self.syncs += 1


def test_a_store_synced_after_every_batch_equals_one_built_at_the_end(tmp_path: Path) -> None:
    """Sync while the log is written (the fold resumes from its stored state each time)."""
    store = tmp_path / "live.duckdb"
    operations = [(kind, i) for i in range(25) for kind in
                  ("pair", "outbound", "close", "snapshot", "exec", "close", "exit", "flush")]  # fmt: skip
    with built_log(tmp_path / "live.db") as (location, plain):
        builder = SyncingBuilder(plain.writer, location, store)
        build_workload(builder, operations)
    assert builder.syncs == 25
    assert dump(location, store) == dump(location, tmp_path / "once.duckdb")


def test_what_the_file_beside_a_store_says_changes_nothing(tmp_path: Path) -> None:
    """The small file beside a store (the signature and position it was last synced to) only
    lets a stale store be opened for writing at once, and its new events be read meanwhile:
    stale, wrong or unreadable, the sync still reaches the store built at the end."""
    middle = tmp_path / "middle.duckdb"
    operations = [(kind, i) for i in range(12) for kind in ("pair", "outbound", "close", "flush")]
    with built_log(tmp_path / "h.db") as (location, builder):
        build_workload(builder, operations)
        builder.flush()
        dump(location, middle)  # synced to here; the file beside it says so
        build_workload(builder, operations)
    reference = dump(location, tmp_path / "end.duckdb")
    hint = middle.with_name(middle.name + ".synced")
    signature, synced = hint.read_text().split()
    for text in (
        f"stale {synced}", "stale 0", "stale 3", f"stale {10**9}", f"{signature} 3",
        "one-word", "", "stale not-a-number",
    ):  # fmt: skip
        store = tmp_path / f"case-{len(list(tmp_path.iterdir()))}.duckdb"
        shutil.copyfile(middle, store)
        store.with_name(store.name + ".synced").write_text(text)
        assert dump(location, store) == reference, text
        assert store.with_name(store.name + ".synced").read_text().split()[1] != synced
    # A current store said to be stale (as after a new version's views): nothing to read.
    end = tmp_path / "end.duckdb"
    head = end.with_name(end.name + ".synced").read_text().split()[1]
    end.with_name(end.name + ".synced").write_text(f"stale {head}")
    assert dump(location, end) == reference


def test_sql_from_a_user_runs_read_only_after_a_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "q.db"
    SCENARIOS["workload-1"](db)
    with cache(tmp_path, monkeypatch), open_log(resolve(str(db)), Purpose.READ) as log:
        with open_derived(log) as derived:
            assert derived.writable and derived.stats.events > 0  # reads on where it synced
            con = derived.read_only()
            assert derived.con is con
            with pytest.raises(duckdb.Error, match="read-only"):
                con.execute("INSERT INTO meta VALUES ('k', 'v')")


@pytest.mark.parametrize("opened", ["built", "synced", "current", "in memory"])
def test_a_read_alongside_sees_the_store_and_session_as_the_connection_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: str
) -> None:
    """The second connection a map reads through reads the same store, however it was
    opened (made by the sync; synced and attached; current and read-only; in memory), with
    the session's settings (the cross-host skew), and goes when the store closes."""
    with cache(tmp_path, monkeypatch) as directory, built_log(tmp_path / "a.db") as (_, b):
        b.connect(0.1, 1, 100, "curl", "127.0.0.1:40001", "127.0.0.1:80")
        b.flush()
        if opened in ("synced", "current"):
            _sync_stats(tmp_path / "a.db")
        if opened == "synced":
            b.accept(0.2, 2, 200, "srv", "127.0.0.1:80", "127.0.0.1:40001")
            b.flush()
        if opened == "in memory":
            (tmp_path / "blocked").write_text("a file where the cache directory should be")
            monkeypatch.setenv("SCOPE_CACHE_DIR", str(tmp_path / "blocked" / "cache"))
        with open_log(resolve(str(tmp_path / "a.db")), Purpose.READ) as log:
            with open_derived(log) as derived:
                assert derived.writable == (opened in ("built", "synced"))
                assert (derived.path is None) == (opened == "in memory")
                assert derived.path is None or derived.path.parent == directory
                derived.pair_across_hosts_within(123)
                question = "SELECT skew_ns(), (SELECT count(*) FROM ev)"
                here = derived.con.execute(question).fetchall()
                there = derived.alongside(lambda con: con.execute(question).fetchall()).result()
                assert there == here == [(123, 2 if opened == "synced" else 1)]
                side = derived._side
                assert side is not None
    with pytest.raises(duckdb.Error, match="closed"):
        side.execute("SELECT 1")


def test_answers_repeat_byte_for_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "r.db"
    SCENARIOS["nat-2"](db)
    outputs = set()
    for cache in ("a", "b", "b"):
        monkeypatch.setenv("SCOPE_CACHE_DIR", str(tmp_path / cache))
        with open_log(resolve(str(db)), Purpose.READ) as log:
            outputs.add(render(replay_table(log, str(wall(4.2)), "2s"), "json"))
    assert len(outputs) == 1


# -- the log is never written --------------------------------------------------------------


def _digests(db: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(db.parent.glob(db.name + "*"))
        if not path.name.endswith("-shm")  # SQLite's shared memory index, not content
    }


def test_read_commands_leave_the_log_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.engine_golden import run_replay

    written = tmp_path / "written.db"
    SCENARIOS["workload-1"](written)
    # A write-ahead log left behind by a writer that stopped (copied while it is open, as a
    # crash leaves it): readers must not checkpoint it into the file.
    conn = sqlite3.connect(written)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("INSERT INTO log_meta VALUES ('left-in-the-wal', 'yes')")
    conn.commit()
    db = tmp_path / "w.db"
    shutil.copyfile(written, db)
    shutil.copyfile(f"{written}-wal", f"{db}-wal")
    conn.close()
    before = _digests(db)
    assert "w.db-wal" in before
    monkeypatch.setenv("SCOPE_CACHE_DIR", str(tmp_path / "cache"))
    for argv in (["--at", "+3s"], ["--at", "+3s", "--view", "processes", "--format", "json"],
                 ["info"], ["diff", "+1s", "+3s"]):  # fmt: skip
        code, _, err = run_replay([*argv, "--db", str(db)])
        assert code == 0, err
    from replay.query import run_query

    with open_log(resolve(str(db)), Purpose.READ) as log:
        run_query(log, "SELECT count(*) FROM events", "csv", out=open(os.devnull, "w"))  # noqa: SIM115
    assert _digests(db) == before


# -- where the store lives, and when it is rebuilt -------------------------------------------


@contextmanager
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    directory = tmp_path / "cache"
    monkeypatch.setenv("SCOPE_CACHE_DIR", str(directory))
    yield directory


def _sync_stats(db: Path) -> Any:
    with open_log(resolve(str(db)), Purpose.READ) as log, open_derived(log) as derived:
        return derived.stats, derived.notices, derived.path


def test_the_store_is_kept_per_log_and_only_new_events_are_folded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with cache(tmp_path, monkeypatch) as directory, built_log(tmp_path / "k.db") as (_, b):
        for sock in range(1, 20, 2):
            b.connect(sock * 0.1, sock, 100, "curl", f"127.0.0.1:{40000 + sock}", "127.0.0.1:80")
            b.accept(sock * 0.1, sock + 1, 200, "srv", "127.0.0.1:80", f"127.0.0.1:{40000 + sock}")
        b.flush()
        first, notices, path = _sync_stats(tmp_path / "k.db")
        assert notices == [] and path is not None and path.parent == directory
        assert first.rebuilt is False and first.events == 20
        again, _, _ = _sync_stats(tmp_path / "k.db")
        assert again.events == 0 and again.seconds == 0.0  # current: not even opened to write
        b.close(3.0, 1, 100, "curl", "127.0.0.1:40001", "127.0.0.1:80")
        b.close(3.0, 2, 200, "srv", "127.0.0.1:80", "127.0.0.1:40001")
        b.flush()
        more, _, _ = _sync_stats(tmp_path / "k.db")
        assert more.events == 2 and not more.rebuilt
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_log_replaced_at_the_same_path_is_derived_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "same.db"
    with cache(tmp_path, monkeypatch):
        SCENARIOS["workload-1"](db)
        _sync_stats(db)
        with open_log(resolve(str(db)), Purpose.READ) as log:
            first = render(replay_table(log, "+3s"), "json")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        SCENARIOS["nat-1"](db)
        stats, _, _ = _sync_stats(db)
        assert stats.rebuilt
        with open_log(resolve(str(db)), Purpose.READ) as log:
            second = render(replay_table(log, "+3s"), "json")
        monkeypatch.setenv("SCOPE_CACHE_DIR", str(tmp_path / "fresh"))
        with open_log(resolve(str(db)), Purpose.READ) as log:
            assert render(replay_table(log, "+3s"), "json") == second != first


def test_a_store_of_another_format_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "f.db"
    SCENARIOS["workload-1"](db)
    with cache(tmp_path, monkeypatch):
        _, _, path = _sync_stats(db)
        assert path is not None
        with duckdb.connect(str(path)) as con:
            con.execute("UPDATE meta SET value = '0' WHERE key = 'format'")
            con.execute("UPDATE meta SET value = 'stale' WHERE key = 'signature'")
        stats, _, _ = _sync_stats(db)
        assert stats.rebuilt
        path.write_bytes(b"not a database at all" * 100)
        stats, _, _ = _sync_stats(db)
        assert stats.events > 0


def test_an_unwritable_cache_falls_back_to_memory_and_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.engine_golden import run_replay

    db = tmp_path / "m.db"
    SCENARIOS["workload-1"](db)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache directory should be")
    monkeypatch.setenv("SCOPE_CACHE_DIR", str(blocked / "cache"))
    code, out, err = run_replay(["--at", "+3s", "--format", "json", "--db", str(db)])
    assert code == 0
    assert err.count("warning") == 1 and "in memory" in err
    monkeypatch.setenv("SCOPE_CACHE_DIR", str(tmp_path / "ok"))
    assert run_replay(["--at", "+3s", "--format", "json", "--db", str(db)])[1] == out


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1_000_000])
def test_snapshot_holders_are_kept_where_they_change_however_the_store_is_built(
    tmp_path: Path, size: int
) -> None:
    """A socket shown by five snapshots, held by 100, then 100 and 200, then 200 twice, then
    100 again: four changes, whatever ranges the store is built in."""
    server, client = "127.0.0.1:5432", "127.0.0.1:40000"
    with built_log(tmp_path / "h.db") as (location, b):
        b.connect(1.0, 1, 900, "psql", client, server)
        b.accept(1.0, 2, 100, "postgres", server, client)
        for index, holders in enumerate([(100,), (100, 200), (200,), (200,), (100,)]):
            b.snapshot(2.0 + index, [(server, client, 1, holders), (client, server, 1, 900)])
            b.flush()
        b.exec(10.0, 4242, "cron")
        b.flush()
    reference = dump(location, tmp_path / "ref.duckdb")
    with open_log(location, Purpose.READ) as log, open_derived(log, tmp_path / "ref.duckdb") as d:
        kept = d.con.execute("SELECT wall_ns, pid FROM snap_holders ORDER BY ALL").fetchall()
    assert kept == [(wall(2.0), 100), (wall(2.0), 900), (wall(3.0), 100), (wall(3.0), 200),
                    (wall(4.0), 200), (wall(6.0), 100)]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(copy, "CHUNK_POSITIONS", size)
        assert dump(location, tmp_path / f"other-{size}.duckdb") == reference
