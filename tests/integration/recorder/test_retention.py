"""scope-record --retain under load (real eBPF capture, real SQLite file, real archive): the
live log stops growing while archives appear, nothing is lost, and replay around the first
cut is byte-identical to the same replay on a copy of the log taken before any cut. With no
room for the archive, the recorder says so and the live log keeps everything."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from eventlog.archive import boundary
from eventlog.location import resolve
from eventlog.reader import LogReader
from eventlog.store import Purpose, open_log
from tests.cli import BIN, run_cli
from tests.ebpf import require_ebpf
from tests.integration.log.test_retention import answers, cache_dir, live_events, run_in_process
from tests.load import committed, loopback_load, tmpfs
from tests.recording import wait_for

pytestmark = pytest.mark.ebpf

RETAIN = "4s"
# Retention looks every second; a cut waits until the live log holds more than 6 s (half as
# much again as it must keep: eventlog.retention.apply_policy), then moves what is older than
# 4 s. The first cut is then 6 s or more after the start, of moments up to 2 or 3 s after
# it: a copy taken 4.5 s after the first commit holds them and was taken before the cut.
LOOK_EVERY_S = "1"
COPY_AFTER_S = 4.5


def record(db: Path, progress: Path, duration: int, *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "scope-record"), "--db", str(db), "--quiet", "--no-conntrack",
         "--snapshot-interval", "2", "--duration", str(duration), "--progress-file",
         str(progress), "--retain", RETAIN, "--retention-interval", LOOK_EVERY_S, *options],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def copy_of(db: Path, target: Path) -> None:
    """A consistent copy of a log being written (SQLite's online backup)."""
    with (
        sqlite3.connect(f"file:{db}?mode=ro", uri=True) as source,
        sqlite3.connect(target) as copy,
    ):
        source.backup(copy)


def file_bytes(db: Path) -> int:
    """The log's files on disk: the database and its write-ahead log."""
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def archived_upto(db: Path) -> int:
    with open_log(resolve(str(db)), Purpose.READ) as store:
        return boundary(store).archived_upto


def test_retention_under_load_keeps_the_live_log_bounded_and_every_answer(
    tmp_path: Path,
) -> None:
    require_ebpf()
    db, progress, early = tmp_path / "scope.db", tmp_path / "progress", tmp_path / "early.db"
    samples: list[tuple[int, int]] = []  # (events in the live log, its file's bytes)
    # Where the archive ends, looked at often: the cuts (a small segment is merged with the
    # next cut's, so the archive's segments do not tell them).
    boundaries: set[int] = set()
    with loopback_load("keep", tmp_path, gap_ms=1):
        recorder = record(db, progress, 20)
        try:
            # Retention starts with the recording, just before its first commit.
            wait_for(lambda: committed(progress) > 0 or recorder.poll() is not None, 60)
            started = time.monotonic()
            time.sleep(max(0.0, started + COPY_AFTER_S - time.monotonic()))
            copy_of(db, early)
            while recorder.poll() is None:
                samples.append((live_events(resolve(str(db))), file_bytes(db)))
                for _ in range(4):
                    boundaries.add(archived_upto(db))
                    time.sleep(0.25)
            _, stderr = recorder.communicate(timeout=60)
        finally:
            recorder.kill()
            recorder.wait()
    assert recorder.returncode == 0, stderr
    assert "retention" not in stderr, stderr  # no failure to say
    assert archived_upto(early) == 0, "the copy was taken after a cut"

    location = resolve(str(db))
    with open_log(location, Purpose.READ) as store:
        edge = boundary(store)
        head = LogReader(store).head()
        wall_at = {b.last_position: b.max_wall_ns for b in LogReader(store).batches()}
    cuts = sorted(boundaries - {0})
    assert edge.archive is not None and len(cuts) >= 3, cuts
    # Nothing lost: positions 1..head, each once, in the archive or the live log, and as many
    # as the recorder said it committed.
    check = run_cli("scope-replay", "db", "check", "--db", str(db))
    assert check.returncode == 0, check.stdout
    assert head == committed(progress)
    # Bounded: at the end the live log holds a few seconds of the recording, and neither its
    # events nor its file grew over the second half of it.
    third = len(samples) // 3
    assert samples[-1][0] < head / 2, samples
    middle, last = samples[third : 2 * third], samples[2 * third :]
    assert max(s[0] for s in last) <= 1.5 * max(s[0] for s in middle), samples
    assert max(s[1] for s in last) <= 1.5 * max(s[1] for s in middle), samples

    # The load's connections are in the archive and in the live log.
    query = run_cli("scope-query", "--db", str(db), "--format", "csv",
                    "SELECT min(position), max(position) FROM events WHERE comm = 'keep-cli' "
                    "AND kind = 'connect'",
                    env={"SCOPE_CACHE_DIR": str(tmp_path / "cache-q")})  # fmt: skip
    assert query.returncode == 0, query.stderr
    low, high = (int(v) for v in query.stdout.splitlines()[1].split(","))
    assert low <= edge.archived_upto < high

    # Replay around the first cut, on the cut log and on the copy taken before it (the
    # copy holds less of the recording: the queries over the whole log would differ).
    with open_log(resolve(str(early)), Purpose.READ) as store:
        copy_walls = [b.max_wall_ns for b in LogReader(store).batches()]
    cut_wall = wall_at[cuts[0]]  # a cut falls at a batch's end
    # The copy's last moment, less a second: an event that reached the recorder after the
    # copy with an earlier time (late: a loaded machine kept it from reading in time, which
    # the log allows) would change the answers of the copy's last moments only.
    copy_end = copy_walls[-1] - 10**9
    moments = sorted({copy_walls[len(copy_walls) // 4], cut_wall - 1, cut_wall, cut_wall + 1,
                      copy_end})  # fmt: skip
    assert cut_wall < copy_end, "the first cut is after the copy's end"
    assert answers(str(db), tmp_path / "cache-cut", moments, queries=False) == answers(
        str(early), tmp_path / "cache-copy", moments, queries=False
    )


def test_no_room_for_the_archive_is_said_and_the_live_log_kept(tmp_path: Path) -> None:
    require_ebpf()
    db, progress = tmp_path / "scope.db", tmp_path / "progress"
    # 16 KiB: less than the five files of any segment take (a segment of a few seconds of a
    # slow load, on a busy machine, fits in 64 KiB).
    with tmpfs(tmp_path / "small", "size=16k") as small, loopback_load("full", tmp_path, gap_ms=1):
        recorder = record(db, progress, 8, "--archive", str(small / "archive"))
        _, stderr = recorder.communicate(timeout=120)
    assert recorder.returncode == 0, stderr
    said = [line for line in stderr.splitlines() if "retention" in line]
    assert said and "cannot write the archive" in said[0] and "no space left" in said[0]
    assert len(set(said)) == len(said), said  # each failure said once
    assert archived_upto(db) == 0
    assert live_events(resolve(str(db))) == committed(progress)
    check = run_cli("scope-replay", "db", "check", "--db", str(db))
    assert check.returncode == 0, check.stdout


# Who held a socket at a moment may be settled by a later event (an OWNER event: the child
# that closed it held it since its fork, replay.derived.owners), and the copy holds fewer of
# the recording's events than the log: of the host's other sockets (a server that forks),
# only what later events cannot change is compared.
OWNER_FIELDS = ("client_pid", "client_comm", "server_pid", "server_comm", "note")


def tables(db: Path, cache: Path, moments: list[int]) -> list[str]:
    """The connection table (JSON, 1 s window) at each of ``moments``."""
    said = []
    with cache_dir(cache):
        for moment in moments:
            code, out, err = run_in_process(
                "scope-replay",
                ["--db", str(db), "--at", str(moment), "--window", "1s", "--format", "json"],
            )
            assert code == 0, err
            said.append(out)
    return said


def settled(table: str, port: int) -> dict[str, Any]:
    """A connection table as far as later events cannot change it: whole for the load's
    connections (server on ``port``), without their holders for the others."""
    document: dict[str, Any] = json.loads(table)
    document["connections"] = [
        row if str(row.get("server") or "").endswith(f":{port}")
        else {k: v for k, v in row.items() if k not in OWNER_FIELDS}
        for row in document["connections"]
    ]  # fmt: skip
    return document


def test_retention_without_an_archive_keeps_every_answer_after_the_cut(tmp_path: Path) -> None:
    """--archive none under load: what leaves the live log is dropped, and replay at moments
    after the cut (their window too) is byte-identical to replay on a copy of the log taken
    before any cut; moments before it are refused."""
    require_ebpf()
    db, progress, early = tmp_path / "scope.db", tmp_path / "progress", tmp_path / "early.db"
    # --retain 6s: the first cut comes once the live log holds 9 s, after the copy at 8 s;
    # the last one (by 12 s) drops at most the first 6 s, and the copy's last 2 s are later.
    with loopback_load("drop", tmp_path, gap_ms=1) as server:
        recorder = subprocess.Popen(
            [str(BIN / "scope-record"), "--db", str(db), "--quiet", "--no-conntrack",
             "--snapshot-interval", "2", "--duration", "12", "--progress-file", str(progress),
             "--retain", "6s", "--retention-interval", "1", "--archive", "none"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_for(lambda: committed(progress) > 0 or recorder.poll() is not None, 60)
            time.sleep(8)
            copy_of(db, early)
            _, stderr = recorder.communicate(timeout=120)
        finally:
            recorder.kill()
            recorder.wait()
    assert recorder.returncode == 0, stderr
    assert "retention" not in stderr, stderr
    assert archived_upto(early) == 0, "the copy was taken after a cut"

    with open_log(resolve(str(db)), Purpose.READ) as store:
        edge = boundary(store)
        head = LogReader(store).head()
    assert edge.seed is not None and edge.archive is None, edge
    assert not (tmp_path / "scope.db.archive").exists()
    assert head == committed(progress)
    assert live_events(resolve(str(db))) < head
    check = run_cli("scope-replay", "db", "check", "--db", str(db))
    assert check.returncode == 0, check.stdout

    window_ns = 10**9
    with open_log(resolve(str(early)), Purpose.READ) as store:
        copy_walls = [b.max_wall_ns for b in LogReader(store).batches()]
    later = [t for t in copy_walls if t - window_ns > edge.seed.dropped_wall_ns + 1]
    assert later, (edge.seed.dropped_wall_ns, copy_walls[-1])
    moments = sorted({later[0], later[len(later) // 2], later[-1] - 1, later[-1]})
    cut_tables = [settled(t, server.port) for t in tables(db, tmp_path / "cache-cut", moments)]
    copy_tables = [settled(t, server.port) for t in tables(early, tmp_path / "cache-copy", moments)]
    assert any(row["server"].endswith(f":{server.port}") for t in copy_tables
               for row in t["connections"])  # fmt: skip
    assert cut_tables == copy_tables
    refused = run_cli("scope-replay", "--db", str(db), "--at", str(copy_walls[0]),
                      env={"SCOPE_CACHE_DIR": str(tmp_path / "cache-cut")})  # fmt: skip
    assert refused.returncode == 2 and "dropped" in refused.stderr, refused.stderr
