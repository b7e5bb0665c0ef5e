"""Recorders of namespace-hosts: each ``scope-record --netns NS --host-id NAME``, a host of
its own on this machine, for the tests of many hosts in one store."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.netns import Namespace
from tests.recording import start_recorder


def record_host(
    db: str, workdir: Path, host: str, netns: Namespace, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """A recorder of ``netns`` as ``host`` into ``db``, once it has committed a batch."""
    return start_recorder(
        db, workdir / f"{host}.progress", "--host-id", host, "--netns",
        f"/run/netns/{netns.name}", "--snapshot-interval", "1", "--no-containers", "-q",
        env=env,
    )  # fmt: skip


def stop(recorder: subprocess.Popen[str]) -> int:
    """Stop a recorder as a service manager does (SIGTERM: exit 0); its exit code."""
    recorder.send_signal(signal.SIGTERM)
    try:
        return recorder.wait(timeout=60)
    except subprocess.TimeoutExpired:
        recorder.kill()
        recorder.wait()
        raise
