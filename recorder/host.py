"""Facts about the host a recording runs on."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostIdentity:
    host_id: str  # the host name: Scope's host node id
    machine_id: str | None
    boot_id: str | None
    kernel_release: str


def _read_first_line(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def host_identity() -> HostIdentity:
    return HostIdentity(
        host_id=socket.gethostname(),
        machine_id=_read_first_line("/etc/machine-id"),
        boot_id=_read_first_line("/proc/sys/kernel/random/boot_id"),
        kernel_release=os.uname().release,
    )


def netns_inode(pid: int | str = "self") -> int | None:
    """The inode of a process's network namespace (what `readlink /proc/<pid>/ns/net` shows)."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None
