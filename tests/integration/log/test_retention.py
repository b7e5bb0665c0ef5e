"""Retention by hand (`scope-replay compact`), `export` and `info`, on real SQLite and
PostgreSQL logs: a cut moves the oldest positions to the Parquet archive, and every answer
(tables at moments before, at and after each cut; SQL over the views; exports) is
byte-identical to the uncut log's, whether the derived store was made before the cut or is
made afresh from archive and live log."""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.synthetic import SNAPSHOT_EVERY_NS, Generator
from eventlog import retention
from eventlog.archive import boundary
from eventlog.errors import ArchiveError
from eventlog.location import LogLocation, resolve
from eventlog.reader import LogReader
from eventlog.store import Purpose, open_log
from tests.cli import BIN, assert_one_line_error, run_cli
from tests.engine_golden import unpack_real_log
from tests.factories import recording_writer
from tests.load import tmpfs
from tests.recording import db_argument

EVENTS = 40_000
BATCH_EVENTS = 700  # about a recorder's batch under load
QUERIES = [
    "SELECT kind, count(*), sum(bytes_sent), min(position), max(position) FROM events "
    "GROUP BY kind ORDER BY kind",
    "SELECT * FROM connections ORDER BY opened_ns NULLS FIRST, id",
    "SELECT * FROM processes ORDER BY ALL",
    "SELECT count(*), sum(orig_sport) FROM conntrack",
]


def write_log(location: LogLocation, events: int = EVENTS) -> None:
    """A recording of a busy host (bench/synthetic.py's generator): snapshots every 15 s of
    its time, sockets opening and closing, processes coming and going."""
    generator = Generator(seed=7)
    with recording_writer(location) as (_, writer):
        written, next_snapshot = 0, generator.mono
        while written < events:
            if generator.mono >= next_snapshot:
                writer.add_snapshot(*generator.snapshot())
                written += 1
                next_snapshot += SNAPSHOT_EVERY_NS
            batch = generator.step()[: events - written]
            writer.add_events(batch)
            written += len(batch)
            if writer.pending_events >= BATCH_EVENTS:
                writer.flush()
        writer.flush()


def batch_walls(location: LogLocation) -> list[int]:
    with open_log(location, Purpose.READ) as store:
        return [b.max_wall_ns for b in LogReader(store).batches()]


def moments(walls: list[int], cuts: list[int]) -> list[int]:
    """Moments spread over the log, and on either side of each cut."""
    spread = [walls[len(walls) * i // 4] for i in range(1, 4)]
    around = [t + d for t in cuts for d in (-1, 0, 1, 3_000_000_000)]
    return sorted(set(spread + around))


def answers(
    db: str, cache: Path, at: list[int], queries: bool = True, window: str | None = None
) -> list[str]:
    """What scope-replay (at each of ``at``, with ``window`` if given) and scope-query
    (``QUERIES``, unless not ``queries``) say of the log, with ``cache`` as the cache
    directory (a new one: a derived store made from nothing). The commands run in this
    process (as tests.engine_golden.run_replay does), as they do in a shell."""
    said = []
    windowed = ["--window", window] if window is not None else []
    with cache_dir(cache):
        for moment in at:
            for view in ("connections", "processes"):
                code, out, err = run_in_process(
                    "scope-replay",
                    ["--db", db, "--at", str(moment), "--view", view, "--format", "json",
                     *windowed],
                )  # fmt: skip
                assert code == 0, err
                said.append(out)
        for sql in QUERIES if queries else []:
            code, out, err = run_in_process("scope-query", ["--db", db, "--format", "csv", sql])
            assert code == 0, err
            said.append(out)
    return said


@contextlib.contextmanager
def cache_dir(path: Path) -> Iterator[None]:
    before = os.environ.get("SCOPE_CACHE_DIR")
    os.environ["SCOPE_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if before is None:
            del os.environ["SCOPE_CACHE_DIR"]
        else:
            os.environ["SCOPE_CACHE_DIR"] = before


def run_in_process(prog: str, argv: list[str]) -> tuple[int, str, str]:
    """``prog argv`` run in this process: exit code, stdout, stderr."""
    from eventlog.cliutil import run
    from replay.cli import app as replay_app
    from replay.query_cli import app as query_app

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run(replay_app if prog == "scope-replay" else query_app, prog, argv)
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return code, out.getvalue(), err.getvalue()


def compact(db: str, before: int, archive: Path, env: dict[str, str] | None = None) -> str:
    result = run_cli("scope-replay", "compact", "--db", db, "--before", str(before),
                     "--archive", str(archive), env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def live_events(location: LogLocation) -> int:
    with open_log(location, Purpose.READ) as store, store.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM events").scalar() or 0)


def test_cuts_change_no_answer(log_location: LogLocation, tmp_path: Path) -> None:
    write_log(log_location)
    db = db_argument(log_location)
    walls = batch_walls(log_location)
    cuts = [walls[len(walls) // 3], walls[2 * len(walls) // 3]]
    at = moments(walls, cuts)
    uncut = answers(db, tmp_path / "uncut", at)
    archive = tmp_path / "archive"

    said = compact(db, cuts[0], archive)
    assert "moved" in said
    assert 0 < live_events(log_location) < EVENTS
    # The store made before the cut is still current; one made from nothing reads the archive.
    assert answers(db, tmp_path / "uncut", at) == uncut
    assert answers(db, tmp_path / "after-first", at) == uncut

    first_segment = [p for p in archive.iterdir() if p.is_dir()]
    compact(db, cuts[1], archive)
    with open_log(log_location, Purpose.READ) as store:
        edge = boundary(store)
        # The first cut's segment was small, and no larger than the second cut's rows: the
        # second cut's segment holds its positions too.
        assert edge.archive is not None and len(edge.archive.segments()) == 1
        assert edge.archive.segments()[0].after == 0
        assert edge.archived_upto + live_events(log_location) == LogReader(store).head()
    assert answers(db, tmp_path / "after-second", at) == uncut
    compact(db, walls[-1], archive)  # the merged-away segment's files leave at a later cut
    assert all(not p.exists() for p in first_segment)
    assert answers(db, tmp_path / "after-third", at) == uncut

    check = run_cli("scope-replay", "db", "check", "--db", db)
    assert check.returncode == 0, check.stdout
    assert "in the archive" in check.stdout


def test_a_cut_in_many_segments_of_all_but_the_newest_batch(
    sqlite_location: LogLocation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segments of a few thousand positions, and a cut of everything it may cut: still the
    same answers, the log's file gives its pages back, and a recording appended afterwards
    counts its positions on from where the log was."""
    write_log(sqlite_location)
    db = db_argument(sqlite_location)
    walls = batch_walls(sqlite_location)
    at = moments(walls, [walls[len(walls) // 2]])
    uncut = answers(db, tmp_path / "uncut", at)
    assert sqlite_location.path is not None
    size_before = sqlite_location.path.stat().st_size

    monkeypatch.setattr(retention, "SEGMENT_POSITIONS", 4_000)
    with open_log(sqlite_location, Purpose.ADMIN) as store:
        result = retention.compact_before(store, walls[-1] + 1, None)
    assert result.segments >= EVENTS // 4_000
    # The newest batch stays: positions are counted on from it.
    assert 0 < live_events(sqlite_location) <= BATCH_EVENTS + 100
    assert sqlite_location.path.stat().st_size < size_before / 4
    assert (sqlite_location.path.parent / (sqlite_location.path.name + ".archive")).is_dir()
    assert answers(db, tmp_path / "cut", at) == uncut

    write_log(sqlite_location, 5_000)
    with open_log(sqlite_location, Purpose.READ) as store:
        assert LogReader(store).head() == EVENTS + 5_000
    check = run_cli("scope-replay", "db", "check", "--db", db)
    assert check.returncode == 0, check.stdout


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export_is_the_same_before_and_after_a_cut(
    log_location: LogLocation, tmp_path: Path, fmt: str
) -> None:
    write_log(log_location, 15_000)
    db = db_argument(log_location)
    walls = batch_walls(log_location)
    start, end = walls[len(walls) // 4], walls[3 * len(walls) // 4]

    def export(name: str) -> dict[str, bytes]:
        out = tmp_path / name
        result = run_cli("scope-replay", "export", "--db", db, "--from", str(start), "--to",
                         str(end), "--format", fmt, "-o", str(out),
                         env={"SCOPE_CACHE_DIR": str(tmp_path / f"cache-{name}")})  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"events.{fmt}" in result.stdout
        return {p.name: p.read_bytes() for p in sorted(out.iterdir())}

    before = export("before")
    assert set(before) == {f"events.{fmt}", f"connections.{fmt}"}
    compact(db, walls[len(walls) // 2], tmp_path / "archive")
    assert export("after") == before
    if fmt == "jsonl":
        events = [json.loads(line) for line in before["events.jsonl"].splitlines()]
        assert events and all(start <= e["wall_ns"] < end for e in events)


def test_info_shows_the_live_log_and_the_archive(log_location: LogLocation, tmp_path: Path) -> None:
    write_log(log_location, 10_000)
    db = db_argument(log_location)
    walls = batch_walls(log_location)
    compact(db, walls[len(walls) // 2], tmp_path / "archive")
    env = {"SCOPE_CACHE_DIR": str(tmp_path / "cache")}
    result = run_cli("scope-replay", "info", "--db", db, "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    storage = json.loads(result.stdout)["storage"]
    assert storage["archive"] == str((tmp_path / "archive").resolve())
    assert storage["archive_bytes"] > 0 and storage["archive_segments"] == 1
    assert storage["live_log_bytes"] > 0
    assert storage["archived_upto_position"] > 0
    assert storage["last_commit"].startswith("20")
    assert storage["archive_from"] < storage["archive_to"] < storage["last_commit"]


def test_disk_full_while_archiving_leaves_the_live_log(
    sqlite_location: LogLocation, tmp_path: Path
) -> None:
    write_log(sqlite_location, 20_000)
    db = db_argument(sqlite_location)
    walls = batch_walls(sqlite_location)
    with tmpfs(tmp_path / "small", "size=64k") as small:
        result = run_cli("scope-replay", "compact", "--db", db, "--before", str(walls[-2]),
                         "--archive", str(small / "archive"))  # fmt: skip
        assert_one_line_error(result, 3, "cannot write the archive", "no space left")
        leftovers = list((small / "archive").iterdir()) if (small / "archive").exists() else []
        assert leftovers == []
    assert live_events(sqlite_location) == 20_000
    with open_log(sqlite_location, Purpose.READ) as store:
        assert boundary(store).archived_upto == 0
    check = run_cli("scope-replay", "db", "check", "--db", db)
    assert check.returncode == 0, check.stdout


def test_disk_full_while_segments_are_written_at_once_keeps_those_listed(
    sqlite_location: LogLocation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segments are written WRITERS at a time and listed in order: when the disk fills, the
    segments listed stay (the log's boundary at the last one), those written but not listed
    leave the disk, and every answer is the uncut log's."""
    write_log(sqlite_location, 20_000)
    db = db_argument(sqlite_location)
    walls = batch_walls(sqlite_location)
    at = moments(walls, [walls[len(walls) // 4]])
    uncut = answers(db, tmp_path / "uncut", at)
    monkeypatch.setattr(retention, "SEGMENT_POSITIONS", 1_500)
    with tmpfs(tmp_path / "small", "size=160k") as small:
        archive = small / "archive"
        with open_log(sqlite_location, Purpose.ADMIN) as store:
            with pytest.raises(ArchiveError, match="no space left"):
                retention.compact_before(store, walls[-2], archive)
            edge = boundary(store)
        assert edge.archive is not None
        listed = edge.archive.segments(edge.archived_upto)
        assert listed and edge.archived_upto == listed[-1].upto
        assert {p.name for p in archive.iterdir() if p.is_dir()} == {s.name for s in listed}
        assert live_events(sqlite_location) == 20_000  # rows leave only after a whole cut
        assert answers(db, tmp_path / "after", at) == uncut


def test_an_archive_gone_is_said(sqlite_location: LogLocation, tmp_path: Path) -> None:
    write_log(sqlite_location, 10_000)
    db = db_argument(sqlite_location)
    walls = batch_walls(sqlite_location)
    compact(db, walls[len(walls) // 2], tmp_path / "archive")
    shutil.rmtree(tmp_path / "archive")
    result = run_cli("scope-replay", "--db", db, "--at", str(walls[3]),
                     env={"SCOPE_CACHE_DIR": str(tmp_path / "cache")})  # fmt: skip
    assert_one_line_error(result, 2, "archive")


def test_copy_while_cutting_reads_each_position_once(
    sqlite_location: LogLocation, tmp_path: Path
) -> None:
    """The derived store of a log cut while it is read: the scan reads the boundary again
    after the live rows and reads again if it moved, so a cut in between loses nothing."""
    write_log(sqlite_location, 20_000)
    db = db_argument(sqlite_location)
    walls = batch_walls(sqlite_location)
    env = {**os.environ, "SCOPE_CACHE_DIR": str(tmp_path / "cache")}
    reader = subprocess.Popen(
        [str(BIN / "scope-query"), "--db", db, "--format", "csv",
         "SELECT count(*), count(DISTINCT position) FROM events"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    compact(db, walls[len(walls) // 2], tmp_path / "archive")
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    assert out.splitlines()[1] == "20000,20000"


def test_policies_cut_by_age_and_by_size(sqlite_location: LogLocation, tmp_path: Path) -> None:
    """--retain cuts what is older than asked once the live log holds half as much again (or
    a segment's worth); --max-log-size cuts the oldest until the rows take less than asked."""
    write_log(sqlite_location)
    walls = batch_walls(sqlite_location)
    retain = 10 * 10**9
    by_age = retention.RetentionPolicy(tmp_path / "archive", retain_ns=retain)
    with open_log(sqlite_location, Purpose.ADMIN) as store:
        # 12 s into the log: 2 s of it could go, too little to be worth a segment yet.
        assert retention.apply_policy(store, by_age, walls[0] + 12 * 10**9) is None
        now = walls[len(walls) // 2] + retain
        result = retention.apply_policy(store, by_age, now)
        assert result is not None and result.archived_upto > 0
        assert result.archived_upto == retention.cut_before(store, now - retain)
        assert boundary(store).archived_upto == result.archived_upto

        used = retention.live_bytes(store)
        by_size = retention.RetentionPolicy(tmp_path / "archive", max_log_bytes=used // 2)
        assert retention.apply_policy(store, by_size, now) is not None
        assert retention.live_bytes(store) <= used // 2
        assert retention.apply_policy(store, by_size, now) is None  # within the limit now


def test_a_cut_that_rebuilds_the_tables_while_a_recording_appends(
    sqlite_location: LogLocation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cut of all but the newest batch drops and rebuilds the tables, in one transaction,
    while another recording appends: every position the appender committed is once in the
    archive or the live log, and the log checks."""
    # Rebuilt however much the appender added meanwhile.
    monkeypatch.setattr(retention, "REBUILD_SHARE", 100.0)
    rebuilds: list[int] = []
    rebuild = retention._rebuild_without

    def counted(store: object, upto: int) -> None:
        rebuilds.append(upto)
        rebuild(store, upto)  # type: ignore[arg-type]

    monkeypatch.setattr(retention, "_rebuild_without", counted)
    write_log(sqlite_location)
    db = db_argument(sqlite_location)
    walls = batch_walls(sqlite_location)
    appended = threading.Event()
    failures: list[BaseException] = []

    def append() -> None:
        try:
            write_log(sqlite_location, 20_000)
        except BaseException as exc:  # said by the test, not lost with the thread
            failures.append(exc)
        finally:
            appended.set()

    appender = threading.Thread(target=append)
    appender.start()
    with open_log(sqlite_location, Purpose.ADMIN) as store:
        result = retention.compact_before(store, walls[-1] + 1, None)
    appender.join(timeout=120)
    assert appended.is_set() and not failures, failures
    assert rebuilds == [result.archived_upto]
    assert result.archived_upto >= EVENTS - BATCH_EVENTS - 100
    with open_log(sqlite_location, Purpose.READ) as store:
        assert LogReader(store).head() == EVENTS + 20_000
        assert boundary(store).archived_upto + live_events(sqlite_location) == EVENTS + 20_000
    check = run_cli("scope-replay", "db", "check", "--db", db)
    assert check.returncode == 0, check.stdout


def test_a_recorders_retention_looks_again_for_a_log_it_cannot_open_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log the worker cannot open (a central store not up yet; here, no file yet) is
    said once, and the worker looks again: it cuts once the log is there."""
    db = tmp_path / "log.db"
    said: list[str] = []
    failures: list[object] = []
    monkeypatch.setattr(threading, "excepthook", failures.append)
    policy = retention.RetentionPolicy(tmp_path / "archive", retain_ns=1, min_cut_positions=1,
                                       interval_s=0.05)  # fmt: skip
    with retention.retention_running(resolve(str(db)), policy, said.append) as worker:
        assert worker is not None
        _wait_until(lambda: said)
        staging = tmp_path / "staging" / "log.db"
        staging.parent.mkdir()
        write_log(resolve(str(staging)))
        os.rename(staging, db)  # (whole: not a file half made)
        _wait_until(lambda: worker.cuts)
    assert failures == []
    assert said[0].startswith("warning: retention: ") and len(said) == 2, said
    assert said[1] == "note: retention: the log is reachable"


def _wait_until(check: Callable[[], object], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.05)


def test_a_log_moved_without_its_archive_is_not_cut_further(
    sqlite_location: LogLocation, tmp_path: Path
) -> None:
    """The log names its archive's directory. Moved elsewhere with it, the next cut would
    have started a second archive in the old place, and the history between them is in
    neither: the cut is refused, and the live log keeps every row it had."""
    write_log(sqlite_location)
    db = db_argument(sqlite_location)
    walls = batch_walls(sqlite_location)
    compact(db, walls[len(walls) // 3], tmp_path / "first" / "archive")
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(db, moved / "log.db")
    shutil.move(tmp_path / "first", moved / "first")
    kept = live_events(resolve(str(moved / "log.db")))
    result = run_cli("scope-replay", "compact", "--db", str(moved / "log.db"),
                     "--before", str(walls[2 * len(walls) // 3]))  # fmt: skip
    assert_one_line_error(result, 2, "lacks positions", "without its archive")
    assert live_events(resolve(str(moved / "log.db"))) == kept


def test_a_cut_that_cannot_write_says_why_in_one_line(tmp_path: Path) -> None:
    """A cut that keeps few rows rewrites the tables (one transaction): when SQLite cannot
    write (a file-size limit here, as a full disk), the one line says so, and the log
    answers as before."""
    db = tmp_path / "real.db"
    unpack_real_log(db)
    walls = batch_walls(resolve(str(db)))
    before = live_events(resolve(str(db)))

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (40 * 1024, resource.RLIM_INFINITY))

    result = subprocess.run(
        [str(BIN / "scope-replay"), "compact", "--db", str(db), "--before", str(walls[-2])],
        capture_output=True, text=True, preexec_fn=limited, timeout=120, check=False,
        env={**os.environ, "SCOPE_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    assert_one_line_error(result, 2, "disk I/O error")
    assert live_events(resolve(str(db))) == before


def test_a_moment_from_the_start_counts_from_the_logs_start_after_a_drop(
    sqlite_location: LogLocation,
) -> None:
    """``--before +Xs`` is X seconds after the log began, as a replay's ``+Xs`` is: after a
    first drop, an earlier one drops nothing more (it counted from the cut, and dropped
    again, further each time)."""
    write_log(sqlite_location)
    db = db_argument(sqlite_location)
    walls = batch_walls(sqlite_location)
    with open_log(sqlite_location, Purpose.READ) as store, store.connect() as conn:
        started = int(conn.exec_driver_sql("SELECT min(started_wall_ns) FROM recordings").one()[0])
    # (seconds after the recording began: the factory's starts well before its events)
    half, quarter = ((walls[len(walls) // n] - started) / 1e9 for n in (2, 4))

    def drop(seconds: float) -> str:
        result = run_cli("scope-replay", "compact", "--db", db, "--before", f"+{seconds:.3f}s",
                         "--archive", "none")  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert not drop(half).startswith("dropped 0 events")
    kept = live_events(sqlite_location)
    assert EVENTS // 3 < kept < 2 * EVENTS // 3  # what came after +half
    assert drop(quarter).startswith("dropped 0 events")
    assert live_events(sqlite_location) == kept
