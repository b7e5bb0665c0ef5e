"""A connect that failed is a row of the table, with the direction it was going."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine_golden import run_replay
from tests.logbuilder import built_log


def test_a_connect_this_host_refused_is_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a connection that succeeded there would be: the direction says where it went."""
    monkeypatch.setenv("SCOPE_CACHE_DIR", str(tmp_path / "cache"))
    db = tmp_path / "refused.db"
    with built_log(db) as (_, b):
        b.failed(0.1, 1, 100, "curl", "127.0.0.1:40001", "127.0.0.1:1")
        b.failed(0.2, 2, 100, "curl", "[::1]:40002", "[::1]:1")
        b.failed(0.3, 3, 100, "curl", "10.0.0.2:40003", "93.184.216.34:443")
        b.flush()
    code, out, err = run_replay(["--db", str(db), "--at", "-0s", "--format", "json"])
    assert code == 0, err
    rows = json.loads(out)["connections"]
    assert [(row["state"], row["direction"]) for row in rows] == [
        ("failed", "local"),
        ("failed", "local"),
        ("failed", "outbound"),
    ]
