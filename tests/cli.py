"""Running the installed console scripts as a user would, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def run_cli(
    prog: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("SCOPE_DEBUG", None)
    return subprocess.run(
        [str(BIN / prog), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: int, *needles: str
) -> None:
    """The bad-input contract: exit ``code``, exactly one line on stderr, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def after_live_line(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """``result`` of scope-record without its first line on stderr, the one saying capture
    is live (printed with --quiet too), which comes before anything that went wrong later."""
    first, *rest = result.stderr.splitlines() or [""]
    assert "capturing since" in first, result.stderr
    stderr = "".join(line + "\n" for line in rest)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout, stderr)
