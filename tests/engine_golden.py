"""Golden answers of replay: tables, every view and diffs at many moments of several logs.

The answers in tests/golden/engine/<log>.jsonl.gz were computed by the engine replay had
before the reading engine was redesigned (the fold in C over checkpoints, pairing in C), and
the engine of today must give the same bytes; tests/integration/replay/test_engine_golden.py
checks it. Each line is one command: its arguments (without ``--db``), exit code, stdout and
stderr. The logs are the scenarios of tests/scenarios.py, plus a real recording
(tests/golden/engine/real.db.gz, recorded by tests/make_real_log.py).

Changed since, on purpose (each checked to be the only difference before rewriting):
- a moment no recording of a host covers is said to be one (the table's JSON ``warnings``
  and stderr), and the maps warn on stderr as the table does (losses too): fleet.
- a socket still open when its recording ended is not open after that end: ``unknown``
  (with "unknown since ...") until a later recording of its host begins, then ended with
  its recording (so it no longer pairs with a socket of that later recording): fleet.
- a window of 0 is "0s" (was "0.0us"), and the table's heading says "open then" alone: all.
- a diff says what it removed: a removed node as the node it was (was its id alone), a
  removed edge with the connections it had (``connections_before``): diffs only.
- a connect refused by this host (to a loopback address) is ``local``, as one that succeeded
  there (it was ``outbound``): all.
- the maps leave out the recorder's own process (``--show-self`` shows it): real, where the
  recorder ran inside tests.make_real_log, a process node of the unconnected ones.
- a connection's id is "<position>#<ordinal>" (was "<position>.<ordinal>", read as a number
  by spreadsheets and by eye), and rows opened and closed at the same moments are in the
  order of their ids' numbers (they were in the order of the ids' text): all.
- a process is named in the maps by whichever of its connections knows its name (it was
  named by the first of them, and shown as "?" when that one did not): processes views of
  workload, nat and fleet, and their diffs.
- an edge of a map says how many of its connections are open at the moment
  (``open_connections``, beside ``connections``): every map's JSON that has an edge.

Regenerate (only when an answer is meant to change, and say why in the commit):
    python -m tests.engine_golden --write
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

GOLDEN_DIR = Path(__file__).parent / "golden" / "engine"
REAL_LOG = GOLDEN_DIR / "real.db.gz"
WINDOWS = ("0s", "100ms", "15s")
VIEWS = ("endpoints", "processes", "processes-by-name", "containers", "hosts")
SHOW_ALL = ("--unconnected", "show", "--pseudo", "show", "--show-unknown-lan")
FRACTIONS = (0.0, 0.02, 0.1, 0.2, 0.3, 0.37, 0.45, 0.5, 0.61, 0.7, 0.8, 0.88, 0.95, 1.0)


def run_replay(argv: list[str]) -> tuple[int, str, str]:
    """``scope-replay argv`` in this process: exit code, stdout, stderr."""
    from eventlog.cliutil import run
    from replay.cli import app

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run(app, "scope-replay", argv)
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return code, out.getvalue(), err.getvalue()


def moments(span: tuple[int, int], event_walls: list[int]) -> list[int]:
    """Moments spread over the span (on whole milliseconds), and some at exact event times."""
    start, end = span
    spread = [start + round(f * (end - start) / 1_000_000) * 1_000_000 for f in FRACTIONS]
    exact = event_walls[:: max(1, len(event_walls) // 6)][:6]
    return sorted(set(spread + exact))


def commands(span: tuple[int, int], event_walls: list[int]) -> list[list[str]]:
    """Every command whose answer is golden for a log spanning ``span``."""
    at = [str(m) for m in moments(span, event_walls)]
    found: list[list[str]] = []
    for moment in at:
        for window in WINDOWS:
            found.append(["--at", moment, "--window", window, "--format", "json"])
    for moment in at[1::3]:
        found.append(["--at", moment, "--format", "csv"])
        found.append(["--at", moment])
    for moment in at[::2]:
        for view in VIEWS:
            found.append(["--at", moment, "--view", view, "--format", "json"])
            found.append(["--at", moment, "--window", "0s", "--view", view, "--format", "json",
                          *SHOW_ALL])  # fmt: skip
    for first, second in zip(at[::3], at[2::3], strict=False):
        for view in ("processes", "containers", "hosts"):
            found.append(["diff", first, second, "--view", view, "--format", "json"])
    return found


def span_and_events(db: Path) -> tuple[tuple[int, int], list[int]]:
    """The log's extent as replay reports it, and the wall times of its events."""
    import sqlite3

    from eventlog.clock import ClockModel
    from eventlog.events import ClockSample

    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        clocks: dict[int, ClockModel] = {}
        for rid, mono, offset, unc in conn.execute(
            "SELECT recording_id, mono_ns, offset_ns, uncertainty_ns FROM clock_samples"
        ):
            clocks.setdefault(rid, ClockModel()).add(ClockSample(mono, offset, unc))
        walls = [
            clocks[rid].wall_ns(mono)
            for rid, mono in conn.execute(
                "SELECT recording_id, mono_ns FROM events ORDER BY position"
            )
        ]
        starts = [row[0] for row in conn.execute("SELECT started_wall_ns FROM recordings")]
        stops = [
            clocks[rid].wall_ns(stop)
            for rid, stop in conn.execute(
                "SELECT id, stopped_mono_ns FROM recordings WHERE stopped_mono_ns IS NOT NULL"
            )
        ]
        extent = conn.execute("SELECT min(min_wall_ns), max(max_wall_ns) FROM batches").fetchone()
    return (min([*starts, extent[0]]), max([*stops, extent[1]])), walls


@contextlib.contextmanager
def golden_logs() -> Iterator[dict[str, Path]]:
    """Every golden log, built (or unpacked) into a temporary directory."""
    from tests.scenarios import SCENARIOS

    with tempfile.TemporaryDirectory(prefix="scope-golden-") as tmp:
        logs: dict[str, Path] = {}
        for name, build in SCENARIOS.items():
            logs[name] = Path(tmp) / f"{name}.db"
            build(logs[name])
        logs["real"] = Path(tmp) / "real.db"
        unpack_real_log(logs["real"])
        yield logs


def unpack_real_log(db: Path) -> None:
    """The real recording, unpacked and brought to the current schema (it was recorded with
    schema 0001, so this also exercises the upgrade path)."""
    from eventlog.admin import upgrade_schema
    from eventlog.location import resolve

    with gzip.open(REAL_LOG, "rb") as packed, db.open("wb") as out:
        shutil.copyfileobj(packed, out)
    db.chmod(0o600)
    upgrade_schema(resolve(str(db)))


def answers(db: Path, argvs: list[list[str]]) -> list[dict[str, Any]]:
    found = []
    for argv in argvs:
        code, out, err = run_replay([*argv, "--db", str(db)])
        found.append({"args": argv, "code": code, "stdout": out, "stderr": err})
    return found


def golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"{name}.jsonl.gz"


def read_golden(name: str) -> list[dict[str, Any]]:
    with gzip.open(golden_path(name), "rt") as handle:
        return [json.loads(line) for line in handle]


def write_golden(name: str, lines: list[dict[str, Any]]) -> None:
    # mtime=0: the same answers give the same bytes.
    with golden_path(name).open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        for line in lines:
            gz.write((json.dumps(line, sort_keys=True) + "\n").encode())


def difference(expected: dict[str, Any], found: dict[str, Any]) -> str:
    """What differs between two answers to one command, as a unified diff."""
    import difflib

    lines = [f"== {' '.join(expected['args'])}"]
    for key in ("code", "stdout", "stderr"):
        if expected[key] != found[key]:
            lines += difflib.unified_diff(
                str(expected[key]).splitlines(), str(found[key]).splitlines(),
                f"expected {key}", f"found {key}", lineterm="", n=1,
            )  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Compute or check replay's golden answers.")
    parser.add_argument("--write", action="store_true", help="rewrite the golden files")
    parser.add_argument("--show", type=int, default=0, help="print the first N differences")
    parser.add_argument("--only", help="only this log")
    args = parser.parse_args()
    failures = 0
    with golden_logs() as logs:
        for name, db in logs.items():
            if args.only and name != args.only:
                continue
            if args.write:
                found = answers(db, commands(*span_and_events(db)))
                write_golden(name, found)
                print(f"{name}: {len(found)} answers written")
                continue
            expected = read_golden(name)
            found = answers(db, [e["args"] for e in expected])
            wrong = [(e, f) for e, f in zip(expected, found, strict=True) if e != f]
            for e, f in wrong[: args.show]:
                print(difference(e, f))
            failures += len(wrong)
            print(f"{name}: {len(found)} answers, {len(wrong)} differ")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
