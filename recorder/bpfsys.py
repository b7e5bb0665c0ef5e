"""The bpf() and perf_event_open() system calls the recorder makes itself, through ctypes.

Everything past loading the programs goes through these: attaching them as links (which
can be pinned and outlive the process), pinning and opening pinned objects, reading and
writing maps, running the stage flush on a chosen CPU. None of it needs bcc, so a recorder
that adopts pinned programs never loads the compiler. Only UAPI structures appear here
(their layout is stable across kernels).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from pathlib import Path

from eventlog.errors import CaptureError
from recorder.hostenv import LIBC

_BPF_SYSCALL = {
    "x86_64": 321,
    "aarch64": 280,
    "riscv64": 280,
    "ppc64le": 361,
    "ppc64": 361,
    "s390x": 351,
    "i686": 357,
    "armv7l": 386,
}.get(platform.machine())
_PERF_EVENT_OPEN_SYSCALL = {
    "x86_64": 298,
    "aarch64": 241,
    "riscv64": 241,
    "ppc64le": 319,
    "ppc64": 319,
    "s390x": 331,
    "i686": 336,
    "armv7l": 364,
}.get(platform.machine())

# enum bpf_cmd
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
OBJ_PIN = 6
OBJ_GET = 7
PROG_TEST_RUN = 10
OBJ_GET_INFO_BY_FD = 15
RAW_TRACEPOINT_OPEN = 17
LINK_CREATE = 28

_BPF_PERF_EVENT = 41  # enum bpf_attach_type
_PERF_TYPE_TRACEPOINT = 2
_PERF_FLAG_FD_CLOEXEC = 1 << 3
_PERF_EVENT_IOC_ENABLE = 0x2400
_F_TEST_RUN_ON_CPU = 1
_RECURSION_MISSES_OFFSET = 208  # struct bpf_prog_info.recursion_misses
_PROG_INFO_SIZE = 256


class BpfCallError(CaptureError):
    """A bpf() call failed; ``errno`` says how."""

    def __init__(self, what: str, error: int) -> None:
        super().__init__(f"{what}: {os.strerror(error)}")
        self.errno = error


def bpf(command: int, attr: ctypes.Structure) -> int:
    """bpf(command, &attr): its non-negative result, or minus the errno it failed with."""
    if _BPF_SYSCALL is None:
        return -errno.ENOSYS
    result = int(LIBC.syscall(_BPF_SYSCALL, command, ctypes.byref(attr), ctypes.sizeof(attr)))
    return result if result >= 0 else -ctypes.get_errno()


def _checked(what: str, command: int, attr: ctypes.Structure) -> int:
    result = bpf(command, attr)
    if result < 0:
        raise BpfCallError(what, -result)
    return result


class _PathAttr(ctypes.Structure):
    _fields_ = (
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    )


def pin(fd: int, path: Path) -> None:
    name = ctypes.create_string_buffer(os.fsencode(path))
    _checked(f"cannot pin at {path}", OBJ_PIN, _PathAttr(ctypes.addressof(name), fd, 0))


def open_pinned(path: Path) -> int:
    """A new fd on the object pinned at ``path`` (raises with ENOENT if nothing is)."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    return _checked(f"cannot open {path}", OBJ_GET, _PathAttr(ctypes.addressof(name), 0, 0))


class _RawTracepointAttr(ctypes.Structure):
    _fields_ = (("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32))


def attach_raw_tracepoint(prog_fd: int, tracepoint: str) -> int:
    """A link fd: the program runs at the raw tracepoint for as long as the link lives."""
    name = ctypes.create_string_buffer(tracepoint.encode())
    return _checked(
        f"cannot attach to raw tracepoint {tracepoint}",
        RAW_TRACEPOINT_OPEN,
        _RawTracepointAttr(ctypes.addressof(name), prog_fd, 0),
    )


class _PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr, up to the fields a tracepoint event uses (PERF_ATTR_SIZE_VER0
    is 64 bytes; the rest is zero)."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
        ("_rest", ctypes.c_uint8 * 64),
    )


class _LinkCreateAttr(ctypes.Structure):
    _fields_ = (
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("_rest", ctypes.c_uint8 * 32),
    )


def attach_tracepoint(prog_fd: int, tracefs: Path, tracepoint: str) -> int:
    """A link fd for a classic tracepoint (``category:name``): a perf event on it, and a BPF
    link over that event (Linux 5.15+), which unlike the perf event alone can be pinned."""
    if _PERF_EVENT_OPEN_SYSCALL is None:
        raise CaptureError(
            f"no perf_event_open() system call number known for {platform.machine()}"
        )
    category, name = tracepoint.split(":")
    try:
        event_id = int((tracefs / "events" / category / name / "id").read_text())
    except (OSError, ValueError) as exc:
        raise CaptureError(f"tracepoint {tracepoint} is not known to this kernel: {exc}") from exc
    attr = _PerfEventAttr(
        type=_PERF_TYPE_TRACEPOINT,
        size=ctypes.sizeof(_PerfEventAttr),
        config=event_id,
        sample_period=1,
        wakeup_events=1,
    )
    perf_fd = int(
        LIBC.syscall(_PERF_EVENT_OPEN_SYSCALL, ctypes.byref(attr), -1, 0, -1, _PERF_FLAG_FD_CLOEXEC)
    )
    if perf_fd < 0:
        raise BpfCallError(f"cannot open a perf event on {tracepoint}", ctypes.get_errno())
    try:
        link = _checked(
            f"cannot link a program to {tracepoint}",
            LINK_CREATE,
            _LinkCreateAttr(prog_fd=prog_fd, target_fd=perf_fd, attach_type=_BPF_PERF_EVENT),
        )
        LIBC.ioctl(perf_fd, _PERF_EVENT_IOC_ENABLE, 0)
        return link
    finally:
        os.close(perf_fd)  # the link holds the event now


class _MapElemAttr(ctypes.Structure):
    _fields_ = (
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    )


def lookup_u64s(map_fd: int, key: int, count: int) -> list[int]:
    """The value at a u32 ``key`` of a map whose values are u64s: ``count`` of them (one per
    possible CPU in a per-CPU map, else one)."""
    key_buffer = ctypes.c_uint32(key)
    values = (ctypes.c_uint64 * count)()
    _checked(
        "cannot read a map",
        MAP_LOOKUP_ELEM,
        _MapElemAttr(map_fd, 0, ctypes.addressof(key_buffer), ctypes.addressof(values), 0),
    )
    return list(values)


def update_u64(map_fd: int, key: int, value: int) -> None:
    """Set a u32 ``key`` of an array map of u64s."""
    key_buffer = ctypes.c_uint32(key)
    value_buffer = ctypes.c_uint64(value)
    _checked(
        "cannot write a map",
        MAP_UPDATE_ELEM,
        _MapElemAttr(map_fd, 0, ctypes.addressof(key_buffer), ctypes.addressof(value_buffer), 0),
    )


class _InfoAttr(ctypes.Structure):
    _fields_ = (
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    )


def object_info(fd: int, size: int = _PROG_INFO_SIZE) -> bytes:
    """struct bpf_{prog,map,link}_info of ``fd``, as many bytes as this kernel filled."""
    info = ctypes.create_string_buffer(size)
    attr = _InfoAttr(fd, size, ctypes.addressof(info))
    _checked("cannot read a BPF object's information", OBJ_GET_INFO_BY_FD, attr)
    return info.raw[: attr.info_len]


def map_max_entries(map_fd: int) -> int:
    """struct bpf_map_info.max_entries: for a ring buffer, its size in bytes."""
    return int.from_bytes(object_info(map_fd, 80)[16:20], "little")


def prog_recursion_misses(prog_fd: int) -> int:
    """How often the kernel skipped this program because another one was running on the CPU
    (events it never handed over). 0 where the kernel does not count them."""
    try:
        info = object_info(prog_fd)
    except BpfCallError:
        return 0
    if len(info) < _RECURSION_MISSES_OFFSET + 8:
        return 0
    return int.from_bytes(info[_RECURSION_MISSES_OFFSET : _RECURSION_MISSES_OFFSET + 8], "little")


class _TestRunAttr(ctypes.Structure):
    """union bpf_attr's member for BPF_PROG_TEST_RUN."""

    _fields_ = (
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    )


def run_on_cpu(prog_fd: int, cpu: int) -> int | None:
    """Run a raw tracepoint program once on ``cpu`` (BPF_PROG_TEST_RUN): its return value,
    or None if that CPU is offline."""
    attr = _TestRunAttr(prog_fd=prog_fd, flags=_F_TEST_RUN_ON_CPU, cpu=cpu)
    result = bpf(PROG_TEST_RUN, attr)
    if result >= 0:
        return int(attr.retval)
    if -result == errno.ENXIO:
        return None
    raise CaptureError(
        f"cannot run the stage flush on CPU {cpu}: {os.strerror(-result)} "
        "(BPF_PROG_TEST_RUN on a chosen CPU needs Linux 5.10 or later)"
    )


def possible_cpus() -> list[int]:
    """/sys/devices/system/cpu/possible, e.g. ``0-3,8``: the CPUs per-CPU maps have a slot
    for."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    cpus: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus
