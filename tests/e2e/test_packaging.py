"""The package as a user installs it: a wheel built from this tree, installed into a fresh
virtual environment (not editable), records two seconds and replays them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.ebpf import require_ebpf

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.ebpf, pytest.mark.slow]


def run(*command: str | Path, cwd: Path | None = None, timeout: float = 600) -> str:
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=timeout, cwd=cwd,
        check=False, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result.stdout


def test_a_wheel_in_a_fresh_environment_records_and_replays(tmp_path: Path) -> None:
    require_ebpf()
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
        "-w", tmp_path / "dist", ROOT)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("scope_recorder-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    page = [f"replay/serve/static/{name}" for name in ("index.html", "app.js", "app.css",
            "vendor/cytoscape.min.js", "vendor/cytoscape.LICENSE", "vendor/SHA256SUMS")]  # fmt: skip
    unit = "recorder/systemd/scope-recorder.service"
    for shipped in ("bpf/tcp_events.c", "bpf/tcp_events.h", "migrations/script.py.mako", unit,
                    *page):  # fmt: skip
        assert shipped in names
    assert any(n.startswith("eventlog/_native") for n in names)
    assert any(n.startswith("eventlog/_scan") for n in names)

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
        wheel)  # fmt: skip
    work = tmp_path / "work"  # far from the source tree: nothing can be found there
    work.mkdir(mode=0o700)
    record = run(venv / "bin" / "scope-record", "--db", "fresh.db", "--duration", "2",
                 "--require-ebpf", "--quiet", cwd=work)  # fmt: skip
    del record
    env_cache = ("env", f"SCOPE_CACHE_DIR={tmp_path / 'cache'}")
    info = json.loads(run(*env_cache, venv / "bin" / "scope-replay", "info", "--db", "fresh.db",
                          "--format", "json", cwd=work))  # fmt: skip
    (recording,) = info["recordings"]
    assert recording["mode"] == "ebpf" and recording["snapshots"]
    table = run(*env_cache, venv / "bin" / "scope-replay", "--db", "fresh.db", "--at", "-0s",
                "--format", "json", cwd=work)  # fmt: skip
    assert "connections" in json.loads(table)
    counted = run(venv / "bin" / "scope-query", "--db", "fresh.db", "--store", "derived.duckdb",
                  "--format", "csv", "SELECT count(*) AS n FROM events", cwd=work)  # fmt: skip
    assert int(counted.splitlines()[1]) > 0 and (work / "derived.duckdb").is_file()
    imported = run(venv / "bin" / "python", "-c",
                   "import bpf, eventlog; print(bpf.directory(), eventlog.__file__)",
                   cwd=work)  # fmt: skip
    assert str(ROOT) not in imported and str(venv) in imported
