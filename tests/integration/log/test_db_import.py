"""`scope-replay db import`: recordings of one log appended to another, once each; replay of
the combined log gives what replay of each gave. Into SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eventlog.events import Kind, Loss
from eventlog.importing import import_log
from eventlog.location import LogLocation, resolve
from eventlog.reader import LogReader
from eventlog.store import Purpose, open_log
from tests.engine_golden import commands, run_replay, span_and_events
from tests.factories import MONO_BASE_NS, conn_event, make_host, recording_writer
from tests.scenarios import SCENARIOS, build_workload_log


def _db(location: LogLocation) -> str:
    return str(location.path) if location.path is not None else location.text


def _answers(db: str, argvs: list[list[str]]) -> list[tuple[int, str, str]]:
    return [run_replay([*argv, "--db", db]) for argv in argvs]


def _counts(location: LogLocation) -> tuple[int, int, list[str]]:
    with open_log(location, Purpose.READ) as store:
        reader = LogReader(store)
        try:
            recordings = reader.recordings()
            return (
                reader.head(),
                len(reader.losses()),
                [f"{r.host_id}:{r.stop_reason}" for r in recordings],
            )
        finally:
            reader.close()


def test_an_imported_log_answers_as_the_original(tmp_path: Path, log_location: LogLocation) -> None:
    """Two hosts at once, a crashed recording, losses, clock steps, snapshots with NAT: into
    an empty log, every answer of replay is the same (positions too: nothing came before).
    Imported again, nothing is appended."""
    source = tmp_path / "fleet.db"
    SCENARIOS["fleet"](source)
    report = import_log(resolve(str(source)), log_location)
    assert [r.already for r in report.recordings] == [0, 0, 0] and report.events > 0
    span, walls = span_and_events(source)
    argvs = [*commands(span, walls)[::3], ["info", "--format", "json"]]
    original = _answers(str(source), argvs)
    imported = _answers(_db(log_location), argvs)
    for argv, first, second in zip(argvs, original, imported, strict=True):
        assert first[0] == second[0] == 0, (argv, first[2], second[2])
        if argv[0] == "info":  # says which log it read, and its size
            first_doc, second_doc = json.loads(first[1]), json.loads(second[1])
            assert first_doc["recordings"] == second_doc["recordings"]
            continue
        assert first[1] == second[1], argv
    before = _counts(log_location)
    again = import_log(resolve(str(source)), log_location)
    assert again.events == 0 and [r.already for r in again.recordings] == [
        r.events for r in report.recordings
    ]
    assert _counts(log_location) == before


def _rows(db: str, at: str) -> list[dict[str, Any]]:
    code, out, err = run_replay(["--db", db, "--at", at, "--format", "json"])
    assert code == 0, err
    rows: list[dict[str, Any]] = json.loads(out)["connections"]
    # Positions are the combined log's own: the connection's id moves with them.
    return sorted(
        ({k: v for k, v in row.items() if "position" not in k and k != "id"} for row in rows),
        key=json.dumps,
    )


def test_logs_of_several_hosts_combine(tmp_path: Path, log_location: LogLocation) -> None:
    alpha, beta = tmp_path / "alpha.db", tmp_path / "beta.db"
    build_workload_log(alpha, 1, with_nat=True)
    build_workload_log(beta, 2, with_nat=False, host="beta")
    for source in (alpha, beta):
        import_log(resolve(str(source)), log_location)
    _, _, hosts = _counts(log_location)
    assert hosts == ["alpha:duration", "beta:duration"]
    for at in ("+3s", "+6s"):
        combined = _rows(_db(log_location), at)
        assert combined == sorted(_rows(str(alpha), at) + _rows(str(beta), at), key=json.dumps)
        assert {row["host"] for row in combined} == {"alpha", "beta"}


def test_a_recording_that_went_on_is_carried_on(tmp_path: Path) -> None:
    """Imported while it records, then again: the rest is appended after what the first
    import took, a loss record with it, and the events are there once."""
    source, target = resolve(str(tmp_path / "live.db")), resolve(str(tmp_path / "all.db"))
    with recording_writer(source, make_host("live")) as (_, writer):
        for n in range(100):
            writer.add(conn_event(mono_ns=MONO_BASE_NS + n * 1000, lport=40_000 + n))
        writer.flush()
        first = import_log(source, target)
        for n in range(100, 160):
            writer.add(conn_event(mono_ns=MONO_BASE_NS + n * 1000, lport=40_000 + n))
        writer.flush()
        writer.add_loss(Loss(7, MONO_BASE_NS + 200_000, MONO_BASE_NS + 300_000, "ring buffer full"))
        writer.add(conn_event(mono_ns=MONO_BASE_NS + 400_000, lport=50_000))
        writer.flush()
        second = import_log(source, target)
    assert (first.events, second.events, second.recordings[0].already) == (100, 61, 100)
    with open_log(target, Purpose.READ) as store:
        reader = LogReader(store)
        events = list(reader.events())
        (loss,) = reader.losses()
        reader.close()
    assert [e.lport for e in events if e.kind == Kind.CONNECT] == [*range(40_000, 40_160), 50_000]
    assert (loss.lost, loss.after_position) == (7, 160)
    assert import_log(source, target).events == 0


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    source = tmp_path / "a.db"
    build_workload_log(source, 1, with_nat=False)
    code, _, err = run_replay(["db", "import", str(source), "--db", str(source)])
    assert (code, err) == (2, "scope-replay: error: db import: SRC and --db are the same log\n")
    code, _, err = run_replay(["db", "import", str(tmp_path / "none.db"), "--db", str(source)])
    assert code != 0 and len(err.splitlines()) == 1 and "none.db" in err, err
