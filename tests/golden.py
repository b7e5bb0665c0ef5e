"""Golden files: expected output kept in tests/golden, rewritten with SCOPE_UPDATE_GOLDEN=1."""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN_DIR = Path(__file__).parent / "golden"


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN_DIR / name
    if os.environ.get("SCOPE_UPDATE_GOLDEN"):
        path.write_text(actual)
        return
    assert path.exists(), f"no golden file {path}: run with SCOPE_UPDATE_GOLDEN=1 and review it"
    assert actual == path.read_text(), f"output differs from {path}"
