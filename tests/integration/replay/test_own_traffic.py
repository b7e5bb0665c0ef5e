"""The recorder's own connections (to a central store) are not the host's traffic: the maps
leave the recorder's process out, unless --show-self; the table shows everything."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.engine_golden import run_replay
from tests.logbuilder import built_log


def _process_map(db: Path, *options: str) -> dict[str, object]:
    code, out, err = run_replay(
        ["--db", str(db), "--at", "-0s", "--view", "processes", "--format", "json", *options]
    )
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def test_the_recorders_own_connections_are_left_out_of_the_maps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCOPE_CACHE_DIR", str(tmp_path / "cache"))
    recorder = os.getpid()  # the process that began the recording is its recorder
    db = tmp_path / "own.db"
    with built_log(db) as (_, b):
        b.connect(0.1, 1, recorder, "scope-record", "10.0.0.2:40001", "93.184.216.34:5432")
        b.connect(0.2, 3, 4242, "curl", "127.0.0.1:40002", "127.0.0.1:80")
        b.accept(0.2, 4, 4343, "srv", "127.0.0.1:80", "127.0.0.1:40002")
        b.flush()
    hidden = _process_map(db)
    shown = _process_map(db, "--show-self")
    (host,) = {n.split(";")[0] for n in shown["nodes"] if n.endswith(";4242")}  # type: ignore[attr-defined]
    own = f"{host};{recorder}"
    assert own not in hidden["nodes"] and own in shown["nodes"]  # type: ignore[operator]
    assert {(e["source"], e["target"]) for e in hidden["edges"]} == {  # type: ignore[attr-defined]
        (f"{host};4242", f"{host};4343")
    }
    assert len(shown["edges"]) == 2  # type: ignore[arg-type]
    unconnected = _process_map(db, "--unconnected", "show")
    assert own not in unconnected["nodes"]  # type: ignore[operator]
    code, out, _ = run_replay(["--db", str(db), "--at", "-0s", "--format", "json"])
    assert code == 0
    assert recorder in {row["client_pid"] for row in json.loads(out)["connections"]}
