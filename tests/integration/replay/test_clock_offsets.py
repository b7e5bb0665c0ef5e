"""`scope-replay info` says how far apart recorded hosts' clocks read, as the connections
paired between them measure it: a user sees a skewed host."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from replay.timespec import format_duration
from tests.engine_golden import run_replay
from tests.scenarios import build_cross_host_log, build_fleet_log

# The scenario's server accepts 0.2 ms after its client connects: alpha's calls measure
# beta 0.2 ms further ahead than beta's calls do, and the median is one of the two.
ACCEPT_DELAY_NS = 200_000


def _info(db: Path) -> tuple[dict[str, Any], str]:
    code, out, err = run_replay(["info", "--db", str(db), "--format", "json"])
    assert code == 0, err
    code, text, err = run_replay(["info", "--db", str(db)])
    assert code == 0, err
    return json.loads(out), text


@pytest.mark.parametrize("skew_ns", [300_000_000, -700_000_000, 0])
def test_info_measures_how_far_a_hosts_clock_is_off(tmp_path: Path, skew_ns: int) -> None:
    db = tmp_path / "hosts.db"
    build_cross_host_log(db, 31, skew_ns)
    document, text = _info(db)
    (offset,) = document["clock_offsets"]
    assert (offset["host"], offset["other_host"]) == ("alpha", "beta")
    assert offset["connections"] > 20
    assert abs(offset["offset_ns"] - skew_ns) == ACCEPT_DELAY_NS
    assert "other's clock ahead by" in text
    sign = "-" if offset["offset_ns"] < 0 else "+"
    assert f"{sign}{format_duration(abs(offset['offset_ns']))}" in text


def test_hosts_that_never_called_each_other_have_no_offset(tmp_path: Path) -> None:
    """The fleet scenario's two hosts reuse each other's addresses: nothing pairs across
    them, so nothing is measured (and a single host's log has no such table either)."""
    db = tmp_path / "fleet.db"
    build_fleet_log(db, 21)
    document, text = _info(db)
    assert document["clock_offsets"] == []
    assert "clock ahead by" not in text
