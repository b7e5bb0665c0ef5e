"""The kernel side's handle: the capture programs attached, their ring buffer drained.

``EbpfCapture`` starts (compiling in a child process, or adopting programs pinned by an
earlier recorder), polls raw records, reads the in-kernel counters, and stops without losing
what is staged. It does no decoding (``eventlog.kernel_records``) and no writing
(``recorder.record``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpf
from eventlog.errors import CaptureError, EbpfUnavailableError
from eventlog.kernel_records import record_count
from recorder import bpfsys
from recorder.btf import VMLINUX_BTF, Btf, BtfError
from recorder.cgroups import Hierarchies, hierarchies
from recorder.hostenv import bcc_installed, ensure_tracefs, tracefs_directory
from recorder.loader import (
    FLUSH_PROGRAM,
    MAPS,
    RAW_TRACEPOINTS,
    TRACEPOINTS,
    LoadedPrograms,
    load_in_child,
    raw_tracepoint_function,
    tracepoint_function,
)
from recorder.pins import (
    BPFFS,
    PIN_ROOT,
    PinLock,
    ensure_bpffs,
    host_directory,
    lock_host,
    open_all,
    pin_all,
    remove_scratch,
    versions,
)
from recorder.pins import remove as remove_pins
from recorder.ringbuf import RingReader

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
    ("OFF_TASK_PID", "task_struct", "pid"),
    ("OFF_TASK_FLAGS", "task_struct", "flags"),
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
    ("OFF_TASK_CGROUPS", "task_struct", "cgroups"),
    ("OFF_CSS_SET_SUBSYS", "css_set", "subsys"),
    ("OFF_CSS_CGROUP", "cgroup_subsys_state", "cgroup"),
    ("OFF_CGROUP_KN", "cgroup", "kn"),
    ("OFF_KERNFS_NODE_ID", "kernfs_node", "id"),
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

# control slots, as in bpf/tcp_events.c (CTL_FLUSH_ALL) and otherwise user space's own: what
# a reader of pinned programs leaves for the next one.
(
    CTL_FLUSH_ALL,
    CTL_ATTACHED_WALL_NS,  # when the programs were attached
    CTL_RECEIVED,  # kernel events handed over to readers
    # What readers have counted as losses in a batch of theirs: a reader killed before that
    # batch committed loses them with it, as it loses the batch's events.
    CTL_LOST,  # ring buffer losses
    CTL_RECURSION,  # recursion misses
    CTL_STALE,  # stale sockets
    CTL_LAST_READ_WALL_NS,  # when a reader last wrote these slots
    CTL_LAST_READ_MONO_NS,
    CTL_READER_PID,  # the process reading the programs now (or last)
    CTL_DETACH,  # 1: scope-record stop --detach asks the reader to remove the pins
) = range(10)

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
    # Forks (EV_FORK) and closes by a process other than a socket's owner (EV_OWNER), so
    # that replay follows a socket to the process that serves it; False: neither.
    follow_forks: bool = True
    # Pin the programs in bpffs so that they capture on while no recorder runs; adopt the
    # pinned programs of this host if they are there.
    pin: bool = False
    host_id: str = ""
    pin_root: Path = PIN_ROOT
    # The network namespaces (inodes) recorded; () = every one (recorder.netns).
    netns: tuple[int, ...] = ()


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

# A stage record is at most a 16-byte header and STAGE_MAX events of 128 bytes.
MAX_RECORD_BYTES = 16 + bpf.header_define("STAGE_MAX") * 128
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
        "NETNS_FILTER": int(bool(options.netns)),
        "FOLLOW_FORKS": int(options.follow_forks),
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
    if not bcc_installed():  # optional: only hosts that capture need it
        return "bcc is not installed (apt-get install python3-bpfcc)"
    return None


@dataclass(frozen=True)
class Pinning:
    """How the programs of this capture are held: pinned in bpffs (they go on capturing
    after the recorder stops) or by the recorder's fds alone."""

    directory: str = ""  # the version's pin directory; "" when not pinned
    version: str = ""
    adopted: bool = False  # found pinned and running: nothing was compiled
    replaced: tuple[str, ...] = ()  # other versions found pinned, and replaced
    attached_wall_ns: int = 0  # since when the programs have been capturing
    previous_read_wall_ns: int = 0  # when a recorder last read the pinned ring (adopted)
    problem: str = ""  # why pinning was asked for but is not done

    @property
    def covers_from_wall_ns(self) -> int:
        """Adopted programs: from when what they hold continues the record (their previous
        reader's last read, else their attachment); 0 otherwise."""
        if not self.adopted:
            return 0
        return self.previous_read_wall_ns or self.attached_wall_ns

    def describe(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self) | {"covers_from_wall_ns": self.covers_from_wall_ns}
        return {k: v for k, v in fields.items() if v not in ("", 0, (), False)}


@dataclass(frozen=True)
class InheritedLoss:
    """Events lost while no recorder read the programs (found when adopting them)."""

    count: int
    first_mono_ns: int
    reason: str


class EbpfCapture:
    """The attached programs: ``start`` (load, or adopt pinned ones), ``poll`` for raw
    records, ``stop``."""

    def __init__(self, options: CaptureOptions | None = None) -> None:
        self.options = options or CaptureOptions()
        self.pinning = Pinning()
        self.inherited_records: list[bytes] = []  # from a replaced version's ring
        self.inherited_losses: list[InheritedLoss] = []
        self._objects: LoadedPrograms | None = None
        self._reader: RingReader | None = None
        self._flusher: StageFlusher | None = None
        self._lock: PinLock | None = None
        self._cpus = bpfsys.possible_cpus()
        self._received = 0  # kernel events handed over, by every reader of these programs

    # -- starting ----------------------------------------------------------------------------
    def start(self) -> None:
        reason = why_ebpf_unavailable()
        if reason:
            raise EbpfUnavailableError(reason)
        tracefs_problem = ensure_tracefs()
        if tracefs_problem:
            raise EbpfUnavailableError(tracefs_problem)
        try:
            if self.options.pin:
                self._start_pinned()
            else:
                self._objects = self._attach(self._compile())
            self._open()
        except BaseException:
            self.close()  # the programs may be attached already: nothing may stay behind
            raise

    def _start_pinned(self) -> None:
        problem = ensure_bpffs(BPFFS)
        if problem:
            self.pinning = Pinning(problem=f"{problem}: capture stops with the recorder")
            self._objects = self._attach(self._compile())
            return
        host = host_directory(self.options.host_id, self.options.pin_root)
        self._lock = lock_host(host)
        remove_scratch(host)
        version = program_version(self.options)
        here = host / version
        others = [name for name in versions(host) if name != version]
        adopted = self._adopt(here) if here.is_dir() else None
        if adopted is None:
            compiled = self._compile()  # while the other versions still capture
        retired = [self._retire(host / name) for name in others]
        self._objects = adopted if adopted is not None else self._attach(compiled)
        for objects in retired:
            if objects is not None:
                self._take_over(objects)
        if adopted is None:
            pin_all(self._objects, here)
        else:
            self._received = self._control(CTL_RECEIVED)
        self.pinning = Pinning(
            str(here), version, adopted=adopted is not None, replaced=tuple(others),
            attached_wall_ns=self._control(CTL_ATTACHED_WALL_NS),
            previous_read_wall_ns=self._control(CTL_LAST_READ_WALL_NS) if adopted else 0,
        )  # fmt: skip

    def _adopt(self, directory: Path) -> LoadedPrograms | None:
        """The programs pinned in ``directory``, or None (and the pins removed) if they are
        incomplete."""
        try:
            return open_all(directory, list(object_names()))
        except CaptureError:
            remove_pins(directory)
            return None

    def _compile(self) -> LoadedPrograms:
        """The programs and maps, loaded (by a child process, which also reads the struct
        offsets from BTF) but not attached."""
        loaded = load_in_child(program_cflags({}, self.options))
        try:
            for inode in self.options.netns:
                bpfsys.update_u64(loaded.fd("map:netns_wanted"), inode, 1)
        except BaseException:
            loaded.close()
            raise
        return loaded

    def _attach(self, loaded: LoadedPrograms) -> LoadedPrograms:
        tracefs = tracefs_directory()
        try:
            for tracepoint in TRACEPOINTS:
                prog = loaded.fd(f"prog:{tracepoint_function(tracepoint)}")
                loaded.fds[f"link:{tracepoint}"] = bpfsys.attach_tracepoint(
                    prog, tracefs, tracepoint
                )
            for tracepoint in RAW_TRACEPOINTS:
                prog = loaded.fd(f"prog:{raw_tracepoint_function(tracepoint)}")
                loaded.fds[f"link:{tracepoint}"] = bpfsys.attach_raw_tracepoint(prog, tracepoint)
        except BaseException:
            loaded.close()
            raise
        bpfsys.update_u64(loaded.fd("map:control"), CTL_ATTACHED_WALL_NS, time.time_ns())
        return loaded

    def _retire(self, directory: Path) -> LoadedPrograms | None:
        """Detach another version's pinned programs, keeping its maps open to drain them."""
        names = [name for name in object_names() if not name.startswith("link:")]
        try:
            objects = open_all(directory, names)
        except CaptureError:
            objects = None
        remove_pins(directory)  # its links had no other holder: detached now
        return objects

    def _take_over(self, old: LoadedPrograms) -> None:
        """What a detached older version still held: its staged events and ring, and the
        losses nobody has accounted yet."""
        try:
            bpfsys.update_u64(old.fd("map:control"), CTL_FLUSH_ALL, 1)
            flusher = StageFlusher(old.fd(f"prog:{FLUSH_PROGRAM}"), 0, self._cpus)
            flusher.flush_all()
            reader = RingReader(old.fd("map:events"))
            try:
                self.inherited_records.extend(reader.read())
            finally:
                reader.close()
            received = _control_of(old, CTL_RECEIVED) + sum(
                record_count(r) for r in self.inherited_records
            )
            stats = read_stats(old)
            lost = stats.lost_events - _control_of(old, CTL_LOST)
            unread = stats.staged_events - received - stats.lost_events
            missed = stats.recursion_misses - _control_of(old, CTL_RECURSION)
            stale = stats.stale_sockets - _control_of(old, CTL_STALE)
            since = _control_of(old, CTL_LAST_READ_MONO_NS)
            for count, reason in (
                (lost, "ring buffer full while no recorder read it"),
                (unread, "staged in the replaced programs, never handed over"),
                (missed, "kernel skipped the replaced programs (BPF recursion)"),
                (stale, "socket closes the replaced programs never saw"),
            ):
                if count > 0:
                    self.inherited_losses.append(InheritedLoss(count, since, reason))
        finally:
            old.close()

    def _open(self) -> None:
        """The ring buffer's reader and the stage flusher, once the programs run."""
        assert self._objects is not None
        self._reader = RingReader(self._objects.fd("map:events"))
        self._flusher = StageFlusher(
            self._objects.fd(f"prog:{FLUSH_PROGRAM}"),
            1_000_000_000 // max(1, self.options.tick_hz),
            self._cpus,
        )
        control = self._objects.fd("map:control")
        bpfsys.update_u64(control, CTL_FLUSH_ALL, 0)
        bpfsys.update_u64(control, CTL_DETACH, 0)  # asked of a reader that died before it could
        bpfsys.update_u64(control, CTL_READER_PID, os.getpid())
        try:
            self._flusher.run_everywhere()  # fails here, not later, if the kernel cannot
        except CaptureError as exc:
            raise EbpfUnavailableError(str(exc)) from exc

    def _control(self, slot: int) -> int:
        assert self._objects is not None
        return _control_of(self._objects, slot)

    # -- running -----------------------------------------------------------------------------
    def poll(self, timeout_ms: int) -> list[bytes]:
        """Raw stage records that arrived within ``timeout_ms`` (possibly none). The programs
        wake the consumer only every few records, so the wait ends with a drain; quiet CPUs
        hand over what they staged when the flusher's tick is due."""
        assert self._reader is not None and self._flusher is not None
        if self.inherited_records:
            taken, self.inherited_records = self.inherited_records, []
            return taken + self.drain()
        self._reader.wait(timeout_ms)
        self._flusher.tick(time.monotonic_ns())
        return self.drain()

    def drain(self) -> list[bytes]:
        assert self._reader is not None
        records = self._reader.read()
        if records:
            self._received += sum(record_count(r) for r in records)
        return records

    def stats(self) -> KernelStats:
        assert self._objects is not None
        return read_stats(self._objects)

    def accounted(self) -> KernelStats:
        """What readers of these programs have accounted for so far: losses reported, events
        received. All zero for programs this capture loaded."""
        return KernelStats(
            staged_events=0,
            lost_events=self._control(CTL_LOST),
            lost_records=0,
            lost_last_ts_ns=0,
            sock_table_full=0,
            recursion_misses=self._control(CTL_RECURSION),
            stale_sockets=self._control(CTL_STALE),
        )

    def note_accounted(self, stats: KernelStats) -> None:
        """Leave in the programs' control map what this reader has accounted for, for the
        next one should this one stop (or die) with the programs pinned."""
        assert self._objects is not None
        control = self._objects.fd("map:control")
        for slot, value in (
            (CTL_RECEIVED, self._received),
            (CTL_LOST, stats.lost_events),
            (CTL_RECURSION, stats.recursion_misses),
            (CTL_STALE, stats.stale_sockets),
            (CTL_LAST_READ_WALL_NS, time.time_ns()),
            (CTL_LAST_READ_MONO_NS, time.monotonic_ns()),
        ):
            bpfsys.update_u64(control, slot, value)

    @property
    def received_total(self) -> int:
        """Kernel events handed over to every reader of these programs, this one included."""
        return self._received

    @property
    def detach_requested(self) -> bool:
        """``scope-record stop --detach`` asked the reader of pinned programs to remove them."""
        return bool(self.pinning.directory) and self._control(CTL_DETACH) == 1

    # -- stopping ----------------------------------------------------------------------------
    def stop(self, keep_pinned: bool = True) -> list[bytes]:
        """The last records. Pinned programs go on capturing unless ``keep_pinned`` is False
        (or a detach was asked for); any others are detached and every CPU's stage flushed."""
        assert self._objects is not None
        if self.pinning.directory and keep_pinned and not self.detach_requested:
            return self.drain()
        if self.pinning.directory:
            remove_pins(Path(self.pinning.directory))
            self.pinning = dataclasses.replace(
                self.pinning, directory="", adopted=self.pinning.adopted
            )
        for name in [n for n in self._objects.fds if n.startswith("link:")]:
            os.close(self._objects.fds.pop(name))  # the last holder: detached
        bpfsys.update_u64(self._objects.fd("map:control"), CTL_FLUSH_ALL, 1)
        try:
            if self._flusher is not None:
                self._flusher.flush_all()
        finally:
            records = self.drain()
        records.extend(self.drain())
        return records

    @property
    def keeps_running(self) -> bool:
        """The programs stay attached after this process (pinned, not detached)."""
        return bool(self.pinning.directory)

    def close(self) -> None:
        self._flusher = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._objects is not None:
            self._objects.close()
            self._objects = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def read_stats(objects: LoadedPrograms) -> KernelStats:
    """The programs' counters, summed over CPUs."""
    stats_fd = objects.fd("map:stats")
    cpus = len(bpfsys.possible_cpus())
    per_slot = [bpfsys.lookup_u64s(stats_fd, slot, cpus) for slot in range(ST_SLOTS)]
    return KernelStats(
        staged_events=sum(per_slot[ST_EVENTS]),
        lost_events=sum(per_slot[ST_LOST_EVENTS]),
        lost_records=sum(per_slot[ST_LOST_RECORDS]),
        lost_last_ts_ns=max(per_slot[ST_LOST_LAST_TS]),
        sock_table_full=sum(per_slot[ST_SOCK_TABLE_FULL]),
        stale_sockets=sum(per_slot[ST_STALE_SOCKETS]),
        recursion_misses=sum(
            bpfsys.prog_recursion_misses(fd)
            for name, fd in objects.fds.items()
            if name.startswith("prog:")
        ),
    )


def _control_of(objects: LoadedPrograms, slot: int) -> int:
    return bpfsys.lookup_u64s(objects.fd("map:control"), slot, 1)[0]


def object_names() -> Iterator[str]:
    """The names of everything a running capture holds (and pins)."""
    for name in MAPS:
        yield f"map:{name}"
    yield f"prog:{FLUSH_PROGRAM}"
    for tracepoint in TRACEPOINTS:
        yield f"prog:{tracepoint_function(tracepoint)}"
        yield f"link:{tracepoint}"
    for tracepoint in RAW_TRACEPOINTS:
        yield f"prog:{raw_tracepoint_function(tracepoint)}"
        yield f"link:{tracepoint}"


def kernel_cflags() -> list[str]:
    """The -D flags with this kernel's struct offsets and read spans, from its BTF, and the
    v1 cgroup controller EXEC events take a second cgroup id from (-1: none mounted)."""
    try:
        btf = Btf.from_file()
        offsets = kernel_layout(btf) | {"CGROUP_V1_SUBSYS": v1_subsys(btf, hierarchies())}
    except BtfError as exc:
        raise EbpfUnavailableError(f"cannot read struct offsets from BTF: {exc}") from exc
    return [f"-D{name}={value}" for name, value in sorted(offsets.items())]


def v1_subsys(btf: Btf, where: Hierarchies) -> int:
    """The kernel's index of the followed v1 controller in a css_set's ``subsys``, or -1."""
    if where.v1_controller is None:
        return -1
    return btf.enum_value(f"{where.v1_controller}_cgrp_id")


def program_version(options: CaptureOptions) -> str:
    """Names what a pinned program was built from: its text, its header, the options
    compiled into it and the namespaces it keeps (not the struct offsets: pins do not outlive
    the kernel's boot)."""
    digest = hashlib.sha256(bpf.program_text().encode())
    digest.update((BPF_DIR / bpf.HEADER).read_bytes())
    digest.update(" ".join(program_cflags({}, options)[:-1]).encode())
    digest.update(" ".join(map(str, sorted(options.netns))).encode())  # netns_wanted's keys
    return digest.hexdigest()[:16]


STAGE_WAS_HELD = 1  # flush_stage's return value when a program it interrupted held the stage


class StageFlusher:
    """Runs the flush_stage program on every CPU, at most once every ``period_ns``.

    BPF_PROG_TEST_RUN with BPF_F_TEST_RUN_ON_CPU runs a raw tracepoint program on the CPU
    asked for (from an interrupt there, or directly on this one), which is what flushing a
    per-CPU stage needs: no thread per CPU, nothing attached to a syscall. CPUs that are
    possible but offline are skipped; their stages are flushed once they are back.
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
        return bpfsys.run_on_cpu(self.prog_fd, cpu)
