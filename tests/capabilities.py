"""What the test host can do, and the policy for when it cannot.

Locally a missing capability skips the tests that need it. When ``CI`` is set, it fails them:
CI machines are expected to run everything, and a skip there would hide a broken set-up.
"""

from __future__ import annotations

import os
import shutil
from functools import cache
from pathlib import Path

import pytest

SKIP_PREFIX = "needs "


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def require(ok: bool, what: str) -> None:
    """Skip (locally) or fail (in CI) the calling test unless ``ok``."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"CI must run this test, but the host lacks: {what}", pytrace=False)
    pytest.skip(f"{SKIP_PREFIX}{what}")


def is_root() -> bool:
    return os.geteuid() == 0


@cache
def postgres_bindir() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@cache
def has_bcc() -> bool:
    try:
        import bcc  # noqa: F401
    except Exception:
        return False
    return True


def has_btf() -> bool:
    return Path("/sys/kernel/btf/vmlinux").exists()
