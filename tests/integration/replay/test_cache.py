"""`scope-replay cache list|prune`: the derived stores in the cache directory, named by the
log each was derived from; those of gone logs (and unreadable ones) removed with the files
beside them; a store another process holds is never removed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine_golden import run_replay
from tests.scenarios import SCENARIOS


def _listing(directory: Path) -> dict[str, dict[str, object]]:
    code, out, err = run_replay(["cache", "list", "--format", "json"])
    assert code == 0, err
    document = json.loads(out)
    assert document["directory"] == str(directory)
    return {Path(str(store["store"])).name: store for store in document["stores"]}


def _sync(db: Path) -> None:
    code, _, err = run_replay(["info", "--db", str(db)])
    assert code == 0, err


def test_stores_are_listed_by_their_log_and_pruned_when_it_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "cache"
    monkeypatch.setenv("SCOPE_CACHE_DIR", str(directory))
    kept, dropped = tmp_path / "kept.db", tmp_path / "dropped.db"
    SCENARIOS["workload-1"](kept)
    SCENARIOS["nat-1"](dropped)
    _sync(kept)
    _sync(dropped)
    (directory / "derived-0123.duckdb").write_text("not a store")
    stores = _listing(directory)
    by_log = {store["log"]: store for store in stores.values()}
    assert set(by_log) == {str(kept), str(dropped), None}
    assert by_log[str(kept)]["log_is"] == "present" and by_log[None]["log_is"] == "unknown"
    assert all(int(str(store["bytes"])) > 0 for store in stores.values())
    assert int(str(by_log[str(kept)]["synced_to"])) > 0

    dropped.unlink()
    gone = Path(str(by_log[str(dropped)]["store"]))
    assert _listing(directory)[gone.name]["log_is"] == "gone"
    code, out, _ = run_replay(["cache", "prune"])
    assert code == 0
    assert f"its log {dropped} is gone" in out and "cannot be read" in out
    assert re.search(r"\nremoved 2 of 3 stores, [0-9.]+ [KM]iB freed\n$", out), out
    assert [store["log"] for store in _listing(directory).values()] == [str(kept)]
    assert sorted(p.name for p in directory.iterdir() if p.name.startswith(gone.name)) == []

    code, out, _ = run_replay(["cache", "list"])
    assert code == 0 and str(kept) in out and "present" in out


def test_a_store_in_use_is_listed_as_busy_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "cache"
    monkeypatch.setenv("SCOPE_CACHE_DIR", str(directory))
    db = tmp_path / "busy.db"
    SCENARIOS["workload-1"](db)
    _sync(db)
    (store,) = directory.glob("derived-*.duckdb")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
         "time.sleep(60)", str(store)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert _listing(directory)[store.name]["log_is"] == "busy"
        code, out, _ = run_replay(["cache", "prune", "--all"])
        assert code == 0 and out == "removed 0 of 1 stores, 0 B freed\n"
        assert store.exists()
    finally:
        holder.kill()
        holder.wait()
    code, out, _ = run_replay(["cache", "prune", "--all"])
    assert code == 0 and f"its log {db} is present" in out and not store.exists()
    assert _listing(directory) == {}


def test_an_empty_or_missing_cache_lists_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCOPE_CACHE_DIR", str(tmp_path / "none"))
    code, out, _ = run_replay(["cache", "list"])
    assert code == 0 and out.startswith(f"derived stores in {tmp_path / 'none'}: 0, 0 B")
    assert run_replay(["cache", "prune"])[1] == "removed 0 of 0 stores, 0 B freed\n"
    assert not (tmp_path / "none").exists()  # listing creates nothing
