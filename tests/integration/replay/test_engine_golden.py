"""Replay gives, byte for byte, the answers of the engine it replaced (tests/engine_golden.py):
tables in every format, every view, diffs, at many moments of generated logs (snapshots,
NAT, losses, clock steps, several recordings and hosts) and of a real recording."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from eventlog.admin import upgrade_schema
from eventlog.location import resolve
from tests.engine_golden import REAL_LOG, difference, read_golden, run_replay
from tests.scenarios import SCENARIOS

LOGS = [*SCENARIOS, "real"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("name", LOGS)
def test_every_answer_is_the_old_engines(
    name: str, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / f"{name}.db"
    if name == "real":
        with gzip.open(REAL_LOG, "rb") as packed, db.open("wb") as out:
            shutil.copyfileobj(packed, out)
        db.chmod(0o600)
        upgrade_schema(resolve(str(db)))  # recorded by an earlier version of the schema
    else:
        SCENARIOS[name](db)
    monkeypatch.setenv("SCOPE_CACHE_DIR", str(cache))
    expected = read_golden(name)
    differences = []
    for answer in expected:
        code, stdout, stderr = run_replay([*answer["args"], "--db", str(db)])
        found = {"args": answer["args"], "code": code, "stdout": stdout, "stderr": stderr}
        if found != answer:
            differences.append(difference(answer, found))
    assert not differences, f"{len(differences)} of {len(expected)} differ:\n" + "\n".join(
        differences[:3]
    )
