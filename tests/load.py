"""What the fault tests share: a steady loopback load, small filesystems, progress files."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recorder.workload import Server, run_client, running_server
from tests.capabilities import is_root, require


@contextmanager
def loopback_load(
    name: str, workdir: Path, clients: int = 2, count: int = 200_000, gap_ms: float = 0
) -> Iterator[Server]:
    """A server and ``clients`` clients connecting to it back to back, for the block."""
    with running_server(f"{name}-srv", workdir=workdir) as server:
        procs = [
            run_client(f"{name}-cli", "127.0.0.1", server.port, count=count, gap_ms=gap_ms)
            for _ in range(clients)
        ]
        try:
            yield server
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()


@contextmanager
def tmpfs(mount_point: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted with ``options`` (``size=3m``, ``ro``, ...) for the block."""
    require(is_root(), f"root (to mount a tmpfs with {options})")
    mount_point.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def last_progress(progress: Path) -> dict[str, int] | None:
    """The last whole commit line scope-record wrote to its --progress-file, as numbers (the
    line saying capture is live, ``capturing_since_ns=``, is not a commit)."""
    if not progress.exists():
        return None
    lines = progress.read_text().split("\n")[:-1]  # only newline-terminated lines are whole
    commits = [line for line in lines if "committed=" in line]
    if not commits:
        return None
    return {key: int(value) for key, value in (part.split("=") for part in commits[-1].split())}


def committed(progress: Path) -> int:
    """Events the recorder has reported durable so far (0 before its first commit)."""
    last = last_progress(progress)
    return last["committed"] if last else 0
