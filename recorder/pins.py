"""Capture programs pinned in bpffs, so that capture goes on while no recorder runs.

A pinned link keeps its program attached after every fd on it is closed; a pinned ring buffer
keeps what the programs wrote. The next recorder opens the pins, reads what the ring holds
(events carry their kernel time, so their order and clock stay right) and carries on: a
restart, an upgrade or a crash of the recorder is not a gap in the record.

Layout: ``/sys/fs/bpf/scope-recorder/<host-id>/<version>/<object>``, one directory per
program version (a hash of the program text and the options compiled into it). A recorder
holds an exclusive lock on the host's directory while it reads the pins: two readers of one
ring would each get part of it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from eventlog.errors import CaptureBusyError, CaptureError
from recorder import bpfsys
from recorder.hostenv import LIBC
from recorder.loader import LoadedPrograms

BPFFS = Path("/sys/fs/bpf")
# $SCOPE_PIN_ROOT (a directory on bpffs) keeps apart recorders that must not adopt each
# other's programs on one machine: tests, or two installations.
PIN_ROOT = Path(os.environ.get("SCOPE_PIN_ROOT") or BPFFS / "scope-recorder")
_BPF_FS_MAGIC = 0xCAFE4A11
SCRATCH_SUFFIX = "-new"  # a version directory being pinned


def pin_name(name: str) -> str:
    """A file name for an object's name: ``link:sched:sched_process_exec`` becomes
    ``link-sched-sched_process_exec`` (bpffs refuses names with a dot; colons read badly)."""
    return name.replace(":", "-")


def host_directory(host_id: str, root: Path = PIN_ROOT) -> Path:
    return root / re.sub(r"[^A-Za-z0-9_-]", "_", host_id)


class _StatFs(ctypes.Structure):
    _fields_ = (("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112))


def is_bpffs(path: Path) -> bool:
    buffer = _StatFs()
    if LIBC.statfs(os.fsencode(path), ctypes.byref(buffer)) != 0:
        return False
    return int(buffer.f_type) & 0xFFFFFFFF == _BPF_FS_MAGIC


def ensure_bpffs(root: Path = BPFFS) -> str | None:
    """Mount bpffs at ``root`` if it is not mounted; why it cannot be used, or None."""
    if is_bpffs(root):
        return None
    if os.geteuid() != 0:
        return f"bpffs is not mounted at {root} and mounting it needs root"
    subprocess.run(["mount", "-t", "bpf", "bpf", str(root)], check=False, capture_output=True)
    if is_bpffs(root):
        return None
    return f"bpffs is not mounted at {root} and could not be mounted"


@dataclass
class PinLock:
    """An exclusive hold on a host's pin directory, released by ``close``."""

    fd: int

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def lock_host(directory: Path) -> PinLock:
    """Hold ``directory`` (created if absent) exclusively; CaptureBusyError if a recorder
    does."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CaptureBusyError(
            f"another recorder is reading the pinned capture programs in {directory}: stop "
            "it first (scope-record stop)"
        ) from None
    return PinLock(fd)


def versions(directory: Path) -> list[str]:
    """The program versions pinned for a host (whole ones: not a scratch directory)."""
    try:
        return sorted(
            entry.name
            for entry in directory.iterdir()
            if entry.is_dir() and not entry.name.endswith(SCRATCH_SUFFIX)
        )
    except FileNotFoundError:
        return []


def remove_scratch(host: Path) -> None:
    """Remove what a recorder that died while pinning left (its links would capture on with
    nobody ever reading them); only while holding the host's lock."""
    for entry in list(host.iterdir()) if host.is_dir() else []:
        if entry.name.endswith(SCRATCH_SUFFIX):
            remove(entry)


def pin_all(loaded: LoadedPrograms, directory: Path) -> None:
    """Pin every object under ``directory``: first in a scratch directory, then renamed, so
    that a version directory is either whole or absent."""
    scratch = directory.with_name(directory.name + SCRATCH_SUFFIX)
    remove(scratch)
    scratch.mkdir(parents=True)
    try:
        for name, fd in loaded.fds.items():
            bpfsys.pin(fd, scratch / pin_name(name))
        scratch.rename(directory)
    except BaseException:
        remove(scratch)
        raise


def open_all(directory: Path, names: list[str]) -> LoadedPrograms:
    """Fds on the objects pinned under ``directory``; CaptureError if one is missing."""
    fds: dict[str, int] = {}
    try:
        for name in names:
            fds[name] = bpfsys.open_pinned(directory / pin_name(name))
    except bpfsys.BpfCallError as exc:
        for fd in fds.values():
            os.close(fd)
        raise CaptureError(f"the pinned programs in {directory} are incomplete: {exc}") from exc
    return LoadedPrograms(fds)


def remove(directory: Path) -> None:
    """Unpin everything under ``directory`` and remove it; a pinned link's program is
    detached once its last fd is closed."""
    with contextlib.suppress(FileNotFoundError):
        for entry in directory.iterdir():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        try:
            directory.rmdir()
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
