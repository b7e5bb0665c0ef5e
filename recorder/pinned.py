"""Pinned capture programs seen from outside the recorder: what is pinned for a host, who
reads it, and stopping that reader (``scope-record stop``), with or without the programs.

The recorder leaves its pid and its accounting in the programs' control map (see
``recorder.capture``); the host's pin directory is locked while a recorder reads them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from eventlog.errors import CaptureError, UsageError
from recorder import bpfsys
from recorder.capture import (
    CTL_ATTACHED_WALL_NS,
    CTL_DETACH,
    CTL_LAST_READ_WALL_NS,
    CTL_LOST,
    CTL_READER_PID,
    CTL_RECEIVED,
    read_stats,
)
from recorder.loader import LoadedPrograms
from recorder.pins import PIN_ROOT, host_directory, open_all, remove, remove_scratch, versions


@dataclass(frozen=True)
class PinnedVersion:
    """One pinned program version of a host, as its control map and counters tell."""

    directory: Path
    reader_pid: int
    reading: bool  # a recorder holds the host's pins now
    attached_wall_ns: int
    last_read_wall_ns: int
    staged_events: int
    received_events: int
    lost_events: int

    @property
    def unread_events(self) -> int:
        """Captured, neither handed to a recorder nor lost: waiting in the kernel."""
        return max(0, self.staged_events - self.received_events - self.lost_events)


def _maps(directory: Path) -> LoadedPrograms:
    return open_all(directory, ["map:control", "map:stats", "prog:flush_stage"])


def pinned_versions(host_id: str, root: Path = PIN_ROOT) -> list[PinnedVersion]:
    host = host_directory(host_id, root)
    reading = _is_locked(host)
    found = []
    for name in versions(host):
        try:
            objects = _maps(host / name)
        except CaptureError:
            continue  # incomplete: the next recorder removes it
        try:
            control = objects.fd("map:control")

            def slot(index: int, fd: int = control) -> int:
                return bpfsys.lookup_u64s(fd, index, 1)[0]

            stats = read_stats(objects)
            found.append(
                PinnedVersion(
                    host / name, slot(CTL_READER_PID), reading, slot(CTL_ATTACHED_WALL_NS),
                    slot(CTL_LAST_READ_WALL_NS), stats.staged_events, slot(CTL_RECEIVED),
                    max(stats.lost_events, slot(CTL_LOST)),
                )
            )  # fmt: skip
        finally:
            objects.close()
    return found


def _is_locked(directory: Path) -> bool:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lock if it was taken
    return False


@dataclass(frozen=True)
class StopResult:
    stopped_pid: int  # 0: no recorder was reading
    removed: tuple[str, ...]  # pin directories removed
    unread_events: int  # what the removed programs held that no recorder received


def stop(host_id: str, detach: bool, root: Path = PIN_ROOT, timeout_s: float = 30.0) -> StopResult:
    """Stop the recorder reading this host's pinned programs (SIGTERM, as a service manager
    does); with ``detach`` the programs are removed too: by that recorder, which hands over
    everything they staged first, or here if none runs."""
    pinned = pinned_versions(host_id, root)
    if not pinned:
        raise UsageError(f"no capture programs are pinned for host {host_id} (in {root})")
    host = host_directory(host_id, root)
    stopped = 0
    if pinned[0].reading:
        if detach:
            for version in pinned:
                with contextlib.closing(_maps(version.directory)) as objects:
                    bpfsys.update_u64(objects.fd("map:control"), CTL_DETACH, 1)
        stopped = _terminate(pinned[0].reader_pid, host, timeout_s)
    if not detach:
        return StopResult(stopped, (), 0)
    left = pinned_versions(host_id, root)  # what the recorder did not remove itself
    for version in left:
        remove(version.directory)
    remove_scratch(host)
    with contextlib.suppress(OSError):
        host.rmdir()
    return StopResult(
        stopped, tuple(str(v.directory) for v in left), sum(v.unread_events for v in left)
    )


def _terminate(pid: int, host: Path, timeout_s: float) -> int:
    """SIGTERM the reader and wait until it lets go of the pins."""
    if pid <= 0:
        raise CaptureError(f"a recorder holds {host} but did not leave its pid")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return 0
    deadline = time.monotonic() + timeout_s
    while _is_locked(host):
        if time.monotonic() > deadline:
            raise CaptureError(f"the recorder (pid {pid}) did not stop within {timeout_s:.0f} s")
        time.sleep(0.05)
    return pid
