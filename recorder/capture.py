"""Load the tracepoint programs with bcc and drain the ring buffer.

``EbpfCapture`` is the kernel side's handle: start, poll raw records, read the in-kernel
counters, and stop without losing what is staged. It does no decoding (``eventlog.kernel_records``)
and no writing (``recorder.record``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpf
from eventlog.errors import CaptureError, EbpfUnavailableError
from recorder.btf import VMLINUX_BTF, Btf, BtfError
from recorder.hostenv import LIBC, ensure_tracefs, import_bcc

BPF_DIR = bpf.directory()

# Kernel struct members the programs read, as (macro, struct, member path).
KERNEL_OFFSETS = (
    ("OFF_SKC_DADDR", "sock", "__sk_common.skc_daddr"),
    ("OFF_SKC_RCV_SADDR", "sock", "__sk_common.skc_rcv_saddr"),
    ("OFF_SKC_DPORT", "sock", "__sk_common.skc_dport"),
    ("OFF_SKC_FAMILY", "sock", "__sk_common.skc_family"),
    ("OFF_SOCK_NET", "sock", "__sk_common.skc_net.net"),
    ("OFF_SKC_V6_DADDR", "sock", "__sk_common.skc_v6_daddr"),
    ("OFF_SKC_V6_RCV_SADDR", "sock", "__sk_common.skc_v6_rcv_saddr"),
    ("OFF_SOCK_PROTOCOL", "sock", "sk_protocol"),
    ("OFF_INET_SPORT", "inet_sock", "inet_sport"),
    ("OFF_NET_INUM", "net", "ns.inum"),
    ("OFF_SOCK_ERR", "sock", "sk_err"),
    ("OFF_TCP_BYTES_ACKED", "tcp_sock", "bytes_acked"),
    ("OFF_TCP_BYTES_RECEIVED", "tcp_sock", "bytes_received"),
    ("OFF_TASK_FILES", "task_struct", "files"),
    ("OFF_TASK_NSPROXY", "task_struct", "nsproxy"),
    ("OFF_TASK_REAL_PARENT", "task_struct", "real_parent"),
    ("OFF_TASK_TGID", "task_struct", "tgid"),
    ("OFF_TASK_EXIT_CODE", "task_struct", "exit_code"),
    ("OFF_TASK_MM", "task_struct", "mm"),
    ("OFF_MM_ARG_START", "mm_struct", "arg_start"),
    ("OFF_MM_ARG_END", "mm_struct", "arg_end"),
    ("OFF_NSPROXY_NET_NS", "nsproxy", "net_ns"),
    ("OFF_FILES_FDT", "files_struct", "fdt"),
    ("OFF_FDTABLE_MAX_FDS", "fdtable", "max_fds"),
    ("OFF_FDTABLE_FD", "fdtable", "fd"),
    ("OFF_FILE_PRIVATE_DATA", "file", "private_data"),
    ("OFF_SOCKET_SK", "socket", "sk"),
)

# Members the programs take from one read of the struct they sit in, by group: the
# <GROUP>_SPAN_START/_BYTES macros cover every member of the group. One probe read costs
# about what the kernel's tracepoint spent copying the whole tuple, so fewer is faster.
READ_SPANS = {
    "SKC": (
        "OFF_SKC_DADDR",
        "OFF_SKC_RCV_SADDR",
        "OFF_SKC_DPORT",
        "OFF_SKC_FAMILY",
        "OFF_SOCK_NET",
        "OFF_SKC_V6_DADDR",
        "OFF_SKC_V6_RCV_SADDR",
    ),
    "TCP_BYTES": ("OFF_TCP_BYTES_ACKED", "OFF_TCP_BYTES_RECEIVED"),
    "FDT": ("OFF_FDTABLE_MAX_FDS", "OFF_FDTABLE_FD"),
}
# Groups the programs can also read member by member, where a kernel spreads them too far
# apart (<GROUP>_SPAN_BYTES is 0 then); the others are small structs by nature.
SEPARABLE_SPANS = frozenset({"TCP_BYTES"})
# A span is read onto the programs' 512-byte stack.
MAX_SPAN_BYTES = 128

TRACEPOINTS = (
    "sched:sched_process_exec",
    "sched:sched_process_exit",
    "syscalls:sys_exit_accept",
    "syscalls:sys_exit_accept4",
)
# sock:inet_sock_set_state, attached raw: see bpf/tcp_events.c.
RAW_TRACEPOINTS = ("inet_sock_set_state",)

# stats slots, as in bpf/tcp_events.c
(
    ST_LOST_EVENTS,
    ST_LOST_RECORDS,
    ST_LOST_LAST_TS,
    ST_SOCK_TABLE_FULL,
    ST_EVENTS,
    ST_STALE_SOCKETS,
    ST_SLOTS,
) = range(7)

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CAP_PERFMON = 38
CAP_BPF = 39
CAP_SYS_ADMIN = 21


@dataclass(frozen=True)
class CaptureOptions:
    ringbuf_bytes: int = 32 << 20  # rounded up to a power-of-two number of pages
    sock_table_size: int = 262_144  # sockets remembered between open and close
    stage_max_age_ns: int = 20_000_000  # a staged event waits at most this (plus a tick)
    # Per-CPU flush checks per second (see StageFlusher). Busy CPUs hand over full stages
    # themselves; a tick only serves a CPU that went quiet, and each costs an interrupt
    # there that the caller waits for.
    tick_hz: int = 20
    # False: every event is handed over as a record of its own, the path a program takes when
    # it interrupts another one writing to its CPU's stage. Slow; tests exercise that path.
    staging: bool = True
    # Each EXEC followed by pieces of its command line (EV_ARGS: EXEC_ARGS_PIECES of 64
    # bytes), read from the new process's memory; False: the program path only.
    command_lines: bool = True


@dataclass(frozen=True)
class KernelStats:
    """Counters summed over CPUs since the programs were loaded."""

    staged_events: int
    lost_events: int
    lost_records: int
    lost_last_ts_ns: int
    sock_table_full: int
    recursion_misses: int  # program runs the kernel skipped (a BPF program already running)
    # Sockets found with an earlier socket's entry: that one's close never reached the
    # programs, so each is at least one close event the kernel did not hand over.
    stale_sockets: int = 0


def kernel_layout(btf: Btf) -> dict[str, int]:
    """The OFF_* and span constants for the running kernel."""
    members = {
        macro: (btf.offset_of(struct, path), btf.member_size(struct, path))
        for macro, struct, path in KERNEL_OFFSETS
    }
    return {macro: offset for macro, (offset, _size) in members.items()} | read_spans(members)


def read_spans(members: dict[str, tuple[int, int]]) -> dict[str, int]:
    """<GROUP>_SPAN_START (8-byte aligned) and _SPAN_BYTES for each of READ_SPANS, from the
    members' (offset, size); _SPAN_BYTES 0 where a separable group cannot be read at once.
    Pure."""
    spans = {}
    for group, macros in READ_SPANS.items():
        start = min(members[macro][0] for macro in macros) // 8 * 8
        end = max(members[macro][0] + members[macro][1] for macro in macros)
        problem = _span_problem(group, [members[macro] for macro in macros], start, end)
        if problem and group not in SEPARABLE_SPANS:
            raise BtfError(problem)
        spans[f"{group}_SPAN_START"] = start
        spans[f"{group}_SPAN_BYTES"] = 0 if problem else end - start
    return spans


def _span_problem(group: str, members: list[tuple[int, int]], start: int, end: int) -> str:
    """Why a group cannot be read as one span onto the stack, or ''."""
    if end - start > MAX_SPAN_BYTES:
        return (
            f"the members of {group} span {end - start} bytes in this kernel "
            f"(the programs read at most {MAX_SPAN_BYTES} at once)"
        )
    # The verifier wants stack reads aligned to their size.
    if any((offset - start) % min(size, 8) for offset, size in members):
        return f"a member of {group} is not aligned to its size in this kernel"
    return ""


def ringbuf_pages(ringbuf_bytes: int) -> int:
    pages = max(1, -(-ringbuf_bytes // PAGE_SIZE))
    return 1 << (pages - 1).bit_length()


EXEC_ARGS_PIECES = 4  # up to 256 bytes of a command line

# A stage record is at most a 16-byte header and 64 events of 128 bytes.
MAX_RECORD_BYTES = 16 + 64 * 128
MAX_RECORDS_PER_WAKEUP = 16


def records_per_wakeup(ringbuf_bytes: int) -> int:
    """How many records each CPU hands over between wake-ups of the consumer: few enough that
    all CPUs together fill at most an eighth of the ring buffer meanwhile."""
    cpus = max(1, os.cpu_count() or 1)  # every CPU stages, not only the recorder's
    fit = ringbuf_pages(ringbuf_bytes) * PAGE_SIZE // (8 * cpus * MAX_RECORD_BYTES)
    return max(1, min(MAX_RECORDS_PER_WAKEUP, fit))


def program_cflags(offsets: dict[str, int], options: CaptureOptions) -> list[str]:
    """The -D flags that specialise the program for this kernel and these options. Pure."""
    defines = {
        **offsets,
        "RINGBUF_PAGES": ringbuf_pages(options.ringbuf_bytes),
        "WAKEUP_EVERY_RECORDS": records_per_wakeup(options.ringbuf_bytes),
        "SOCK_TABLE_SIZE": options.sock_table_size,
        "STAGE_MAX_AGE_NS": f"{options.stage_max_age_ns}ULL",
        "STAGING": int(options.staging),
        "EXEC_ARGS_PIECES": EXEC_ARGS_PIECES if options.command_lines else 0,
    }
    return [f"-D{name}={value}" for name, value in sorted(defines.items())] + [f"-I{BPF_DIR}"]


def effective_capabilities() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def why_ebpf_unavailable() -> str | None:
    """A one-line reason this process cannot run the capture programs, or None."""
    caps = effective_capabilities()
    has_admin = bool(caps & (1 << CAP_SYS_ADMIN))
    has_bpf = bool(caps & (1 << CAP_BPF)) and bool(caps & (1 << CAP_PERFMON))
    if not (has_admin or has_bpf):
        return (
            "eBPF capture needs root or CAP_BPF+CAP_PERFMON (this process has neither); "
            "/proc mode sees connections that live across a poll, not short-lived ones"
        )
    if not VMLINUX_BTF.exists():
        return f"the kernel has no BTF ({VMLINUX_BTF} missing), so struct offsets are unknown"
    if not import_bcc():  # optional: only hosts that capture need it
        return "bcc is not installed (apt-get install python3-bpfcc)"
    return None


class EbpfCapture:
    """The loaded programs: attach on ``start``, ``poll`` for raw records, ``stop``."""

    def __init__(self, options: CaptureOptions | None = None) -> None:
        self.options = options or CaptureOptions()
        self._bpf: Any = None
        self._records: list[bytes] = []
        self._callback: Callable[..., Any] | None = None
        self._flusher: StageFlusher | None = None

    def start(self) -> None:
        reason = why_ebpf_unavailable()
        if reason:
            raise EbpfUnavailableError(reason)
        tracefs_problem = ensure_tracefs()
        if tracefs_problem:
            raise EbpfUnavailableError(tracefs_problem)
        try:
            offsets = kernel_layout(Btf.from_file())
        except BtfError as exc:
            raise EbpfUnavailableError(f"cannot read struct offsets from BTF: {exc}") from exc
        # bcc reads tracefs's location at import: import it only after ensure_tracefs().
        from bcc import BPF  # noqa: PLC0415

        source = bpf.program_text()
        try:
            with _quiet_stderr():
                self._bpf = BPF(text=source.encode(), cflags=program_cflags(offsets, self.options))
        except Exception as exc:
            raise CaptureError(f"the capture programs did not load: {exc}") from exc
        try:
            self._open(BPF)
        except BaseException:
            self.close()  # the programs are attached already: nothing may stay behind
            raise

    def _open(self, bpf_class: Any) -> None:
        """The ring buffer's consumer and the stage flusher, once the programs are loaded."""
        records = self._records

        def on_record(_ctx: Any, data: Any, size: int) -> int:
            records.append(ctypes.string_at(data, size))
            return 0

        self._callback = on_record
        self._bpf[b"events"].open_ring_buffer(on_record)
        from bcc.utils import get_possible_cpus  # noqa: PLC0415

        flush = self._bpf.load_func(FLUSH_PROGRAM, bpf_class.RAW_TRACEPOINT)
        self._flusher = StageFlusher(
            flush.fd, 1_000_000_000 // max(1, self.options.tick_hz), get_possible_cpus()
        )
        try:
            self._flusher.run_everywhere()  # fails here, not later, if the kernel cannot
        except CaptureError as exc:
            raise EbpfUnavailableError(str(exc)) from exc

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Raw stage records that arrived within ``timeout_ms`` (possibly none). The programs
        wake the consumer only every few records, so the wait ends with a drain; quiet CPUs
        hand over what they staged when the flusher's tick is due."""
        self._bpf.ring_buffer_poll(timeout_ms)
        if self._flusher is not None:
            self._flusher.tick(time.monotonic_ns())
        self._bpf.ring_buffer_consume()
        return self._take()

    def drain(self) -> list[bytes]:
        self._bpf.ring_buffer_consume()
        return self._take()

    def _take(self) -> list[bytes]:
        if not self._records:
            return []
        taken = self._records[:]
        del self._records[:]
        return taken

    def stats(self) -> KernelStats:
        table = self._bpf[b"stats"]
        totals = [sum(table[table.Key(slot)]) for slot in range(ST_SLOTS)]
        last_ts = max(table[table.Key(ST_LOST_LAST_TS)])
        return KernelStats(
            staged_events=totals[ST_EVENTS],
            lost_events=totals[ST_LOST_EVENTS],
            lost_records=totals[ST_LOST_RECORDS],
            lost_last_ts_ns=last_ts,
            sock_table_full=totals[ST_SOCK_TABLE_FULL],
            stale_sockets=totals[ST_STALE_SOCKETS],
            recursion_misses=sum(
                prog_recursion_misses(fn.fd) for fn in list(self._bpf.funcs.values())
            ),
        )

    def stop(self) -> list[bytes]:
        """Detach the event tracepoints, flush every CPU's stage, return the last records."""
        for raw in RAW_TRACEPOINTS:
            with contextlib.suppress(Exception):
                self._bpf.detach_raw_tracepoint(raw.encode())
        for tracepoint in TRACEPOINTS:
            with contextlib.suppress(Exception):
                self._bpf.detach_tracepoint(tracepoint.encode())
        control = self._bpf[b"control"]
        control[control.Key(0)] = control.Leaf(1)
        try:
            if self._flusher is not None:
                self._flusher.flush_all()
        finally:
            records = self.drain()
        records.extend(self.drain())
        return records

    def close(self) -> None:
        self._flusher = None
        if self._bpf is not None:
            with contextlib.suppress(Exception):
                self._bpf.cleanup()
            self._bpf = None


FLUSH_PROGRAM = b"flush_stage"
STAGE_WAS_HELD = 1  # flush_stage's return value when a program it interrupted held the stage
_BPF_PROG_TEST_RUN = 10
_BPF_F_TEST_RUN_ON_CPU = 1


class _TestRunAttr(ctypes.Structure):
    """union bpf_attr's member for BPF_PROG_TEST_RUN (UAPI, stable)."""

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


class StageFlusher:
    """Runs the flush_stage program on every CPU, at most once every ``period_ns``.

    BPF_PROG_TEST_RUN with BPF_F_TEST_RUN_ON_CPU runs a raw tracepoint program on the CPU
    asked for (from an interrupt there, or directly on this one), which is what flushing a
    per-CPU stage needs: no thread per CPU, nothing attached to a syscall. CPUs that are
    possible but offline are skipped (ENXIO); their stages are flushed once they are back.
    """

    def __init__(self, prog_fd: int, period_ns: int, cpus: list[int]) -> None:
        self.prog_fd = prog_fd
        self.period_ns = period_ns
        self.cpus = cpus
        self._due_ns = 0

    def tick(self, now_ns: int) -> None:
        if now_ns >= self._due_ns:
            self._due_ns = now_ns + self.period_ns
            self.run_everywhere()

    def run_everywhere(self) -> list[int]:
        """Run the flush on every CPU; the CPUs whose stage a program was holding."""
        return [cpu for cpu in self.cpus if self.run_on(cpu) == STAGE_WAS_HELD]

    def flush_all(self, attempts: int = 10) -> None:
        """At shutdown (every stage is to be handed over): run the flush everywhere, and again
        where a program held the stage, which it does only for a few microseconds."""
        pending = self.run_everywhere()
        for _ in range(attempts):
            if not pending:
                return
            time.sleep(0.001)
            pending = [cpu for cpu in pending if self.run_on(cpu) == STAGE_WAS_HELD]

    def run_on(self, cpu: int) -> int | None:
        """flush_stage's return value on ``cpu``; None if the CPU is offline."""
        if _BPF_SYSCALL is None:
            raise CaptureError(f"no bpf() system call number known for {platform.machine()}")
        attr = _TestRunAttr(prog_fd=self.prog_fd, flags=_BPF_F_TEST_RUN_ON_CPU, cpu=cpu)
        error = bpf_syscall(_BPF_PROG_TEST_RUN, attr)
        if error == 0:
            return int(attr.retval)
        if error == errno.ENXIO:
            return None
        raise CaptureError(
            f"cannot run the stage flush on CPU {cpu}: {os.strerror(error)} "
            "(BPF_PROG_TEST_RUN on a chosen CPU needs Linux 5.10 or later)"
        )


@contextlib.contextmanager
def _quiet_stderr() -> Any:
    """bcc's compiler prints warnings about the kernel headers on fd 2; keep them out of the
    user's terminal unless the compile fails (then the exception says so)."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# -- bpf(BPF_OBJ_GET_INFO_BY_FD) for the recursion-miss counter ----------------------------
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
_BPF_OBJ_GET_INFO_BY_FD = 15
_PROG_INFO_SIZE = 256
_RECURSION_MISSES_OFFSET = 208  # struct bpf_prog_info.recursion_misses (UAPI, stable)


class _InfoAttr(ctypes.Structure):
    _fields_ = (
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    )


def bpf_syscall(command: int, attr: ctypes.Structure) -> int:
    """bpf(command, &attr): 0, or the errno it failed with (ENOSYS where its number is not
    known for this machine)."""
    if _BPF_SYSCALL is None:
        return errno.ENOSYS
    if LIBC.syscall(_BPF_SYSCALL, command, ctypes.byref(attr), ctypes.sizeof(attr)) == 0:
        return 0
    return ctypes.get_errno()


def prog_recursion_misses(prog_fd: int) -> int:
    """How often the kernel skipped this program because another one was running on the CPU.

    Those are events the kernel never handed over; they are reported as losses.
    """
    info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
    attr = _InfoAttr(prog_fd, _PROG_INFO_SIZE, ctypes.addressof(info))
    if bpf_syscall(_BPF_OBJ_GET_INFO_BY_FD, attr) != 0:
        return 0
    if attr.info_len < _RECURSION_MISSES_OFFSET + 8:
        return 0
    return int.from_bytes(
        info.raw[_RECURSION_MISSES_OFFSET : _RECURSION_MISSES_OFFSET + 8], "little"
    )
