"""A real multi-process workload, recorded, then drawn: the processes map and its diff."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from eventlog.location import resolve
from recorder.workload import closed_port, run_client, running_server, spawn
from tests.cli import run_cli
from tests.ebpf import require_ebpf
from tests.recording import recording

pytestmark = pytest.mark.ebpf


def test_processes_map_and_diff_of_a_real_workload(tmp_path: Path) -> None:
    require_ebpf()
    db = tmp_path / "scope.db"
    with (
        recording(resolve(str(db)), snapshot_interval_s=1),
        running_server("e2e-srv", workdir=tmp_path) as server,
    ):
        time.sleep(0.5)
        before = time.time_ns()
        time.sleep(0.5)
        alpha = run_client("e2e-alpha", "127.0.0.1", server.port, count=20, gap_ms=40, hold_ms=20)
        beta = run_client("e2e-beta", "127.0.0.1", server.port, count=20, gap_ms=40, hold_ms=20)
        refused = spawn("refused", "--name", "e2e-alpha", "--port", str(closed_port()))
        time.sleep(0.5)
        during = time.time_ns()
        for process in (alpha, beta, refused):
            assert process.wait(timeout=60) == 0
        time.sleep(0.3)

    common = ["--db", str(db), "--view", "processes", "--window", "0.4s"]
    result = run_cli("scope-replay", "--at", str(during), *common, "--format", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    edges = {(e["source"], e["target"]) for e in document["edges"]}
    host = next(iter(document["nodes"].values()))["id"].split(";")[0]
    assert edges == {
        (f"{host};{alpha.pid}", f"{host};{server.pid}"),
        (f"{host};{beta.pid}", f"{host};{server.pid}"),
    }
    assert document["nodes"][f"{host};{server.pid}"]["label"] == "e2e-srv"
    assert {document["nodes"][f"{host};{p.pid}"]["label"] for p in (alpha, beta)} == {
        "e2e-alpha",
        "e2e-beta",
    }

    diff = run_cli(
        "scope-replay",
        "diff",
        str(before),
        str(during),
        "--db",
        str(db),
        "--view",
        "processes",
        "--window",
        "0.4s",
        "--format",
        "json",
    )
    assert diff.returncode == 0, diff.stderr
    changes = json.loads(diff.stdout)
    added = {(e["source"], e["target"]) for e in changes["edges"]["add"]}
    assert added == edges
    assert {n["id"] for n in changes["add"]} >= {f"{host};{alpha.pid}", f"{host};{beta.pid}"}
    # Backwards, the same changes are removals, and say what was removed.
    undone = run_cli("scope-replay", "diff", str(during), str(before), "--db", str(db),
                     "--view", "processes", "--window", "0.4s")  # fmt: skip
    assert undone.returncode == 0, undone.stderr
    removed = [line.split() for line in undone.stdout.splitlines() if line.startswith("-")]
    assert ["-", "node", f"{host};{alpha.pid}", "e2e-alpha"] in removed
    (edge,) = [
        r for r in removed if r[2:5] == [f"{host};{alpha.pid}", "->", f"{host};{server.pid}"]
    ]
    assert edge[5] == "had" and int(edge[6]) >= 1 and edge[7].startswith("connection")

    svg = tmp_path / "map.svg"
    drawn = run_cli(
        "scope-replay", "--at", str(during), *common, "--format", "svg", "--output", str(svg)
    )
    assert drawn.returncode == 0, drawn.stderr
    text = svg.read_text()
    assert text.lstrip().startswith(("<?xml", "<svg"))
    assert "e2e-srv" in text or "e2e&#45;srv" in text  # Graphviz escapes hyphens
