"""Replay gives, byte for byte, the answers of the engine it replaced (tests/engine_golden.py):
tables in every format, every view, diffs, at many moments of generated logs (snapshots,
NAT, losses, clock steps, several recordings and hosts) and of a real recording."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine_golden import difference, read_golden, run_replay, unpack_real_log
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
        unpack_real_log(db)
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
