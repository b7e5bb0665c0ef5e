"""A connection's id names the log position (and snapshot row) that made it known."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from eventlog.events import TCP_ESTABLISHED
from tests.engine_golden import run_replay
from tests.logbuilder import built_log

ROWS = 12


def test_ids_do_not_read_as_numbers_and_sort_by_their_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spreadsheets (and people) read "15.0" as a number: an id is "<position>#<row>". Rows
    known alike (here a snapshot's, with no open or close time) are in the order of the
    numbers, where the text's order would put row 10 before row 2."""
    monkeypatch.setenv("SCOPE_CACHE_DIR", str(tmp_path / "cache"))
    db = tmp_path / "ids.db"
    with built_log(db) as (_, b):
        b.snapshot(
            1.0,
            [
                (f"10.0.0.5:{50000 + k}", "93.184.216.34:443", TCP_ESTABLISHED, 300)
                for k in range(ROWS)
            ],
            processes=[(300, "worker")],
        )
        b.flush()
    code, out, err = run_replay(["--db", str(db), "--at", "-0s", "--format", "csv"])
    assert code == 0, err
    ids = [row["id"] for row in csv.DictReader(io.StringIO(out))]
    assert len(ids) == ROWS
    assert all(re.fullmatch(r"\d+#\d+", i) for i in ids), ids
    positions = {i.split("#")[0] for i in ids}
    assert len(positions) == 1  # one snapshot
    assert [int(i.split("#")[1]) for i in ids] == list(range(1, ROWS + 1))
    for i in ids:
        with pytest.raises(ValueError):
            float(i)
