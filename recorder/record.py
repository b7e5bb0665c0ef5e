"""scope-record's work: capture, order, snapshot and append until told to stop.

One thread drains the kernel's ring buffer, decodes, and feeds the reorder buffer, which
feeds the log writer; /proc walks run in a helper thread so that draining never waits for
them. Stopping detaches the programs, flushes every CPU's staged events, writes everything
still buffered and closes the recording with its reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eventlog import __version__, native
from eventlog.batch import Batch
from eventlog.clock import ClockModel, monotonic_ns
from eventlog.errors import EbpfUnavailableError, LogError, LogWriteError, ScopeError
from eventlog.events import (
    MODE_EBPF,
    MODE_PROC,
    ClockSample,
    Event,
    Kind,
    Loss,
    Snapshot,
    more_holders,
)
from eventlog.kernel_records import (
    HEADER,
    DecodeError,
    decode_record,
    holds_command_lines,
    raw_run,
    record_count,
)
from eventlog.location import LogLocation
from eventlog.options import SqliteOptions
from eventlog.recordings import (
    STOP_DURATION,
    STOP_ERROR,
    STOP_SIGNAL,
    HostIdentity,
    RecordingStart,
    begin_recording,
    close_abandoned_recordings,
    end_recording,
    mark_alive,
    set_recording_field,
)
from eventlog.reserve import SpaceReserve
from eventlog.store import LogStore, Purpose, open_log
from eventlog.timefmt import format_ns
from eventlog.writer import LogWriter
from recorder.capture import CaptureOptions, EbpfCapture, KernelStats, why_ebpf_unavailable
from recorder.clock import sample_clock
from recorder.conntrack import ConntrackWatcher
from recorder.containers import DEFAULT_SOCKETS, ContainerFollower
from recorder.host import host_identity, local_addresses, netns_inode
from recorder.netns import NetnsScope
from recorder.procfs import ProcWalk, network_namespaces, walk
from recorder.procmode import ProcPoller
from recorder.reorder import ReorderBuffer

if TYPE_CHECKING:
    from eventlog.retention import RetentionPolicy

CLOCK_SAMPLE_INTERVAL_NS = 10_000_000_000
STATS_INTERVAL_NS = 200_000_000
# How often an idle recording says it is alive (see eventlog.recordings.mark_alive).
ALIVE_INTERVAL_NS = 1_000_000_000
# Longest an event can wait before reaching user space: a CPU's stage age, one tick of the
# per-CPU flush timer, one drain; plus room for accept() returning late.
REORDER_HORIZON_NS = 300_000_000
OUTAGE_RETRY_NS = 1_000_000_000
# How long a recorder that is stopping goes on trying to commit its last events to a
# central store that is away (a stop during the database's restart loses nothing).
STOP_GRACE_NS = 10_000_000_000
LOSS_WARNING_INTERVAL_NS = 10_000_000_000


@dataclass(frozen=True)
class RecordOptions:
    location: LogLocation
    duration_s: float | None = None
    snapshot_interval_s: float = 15.0
    flush_interval_ms: int = 200
    proc_poll_interval_s: float = 1.0
    require_ebpf: bool = False
    mode: str | None = None  # force MODE_EBPF or MODE_PROC; None = eBPF if possible
    redact_cmdline: bool = False
    conntrack: bool = True
    # The container runtime API sockets to follow (the first that answers); () = none.
    container_sockets: tuple[str, ...] = DEFAULT_SOCKETS
    buffer_events: int = 1_000_000  # kept in memory while a PostgreSQL store is unreachable
    progress_file: Path | None = None  # one line per commit: what is durable so far
    sqlite: SqliteOptions = field(default_factory=SqliteOptions)
    capture: CaptureOptions = field(default_factory=CaptureOptions)
    retention: RetentionPolicy | None = None  # keep the live log bounded (eventlog.retention)
    host_id: str | None = None  # the host's name in the log (and its pins); None: hostname
    netns: NetnsScope = field(default_factory=NetnsScope)  # the namespaces recorded


@dataclass
class Progress:
    """What the recorder has done so far; read by the status line and the summary."""

    mode: str = ""
    recording_id: int = 0
    committed_events: int = 0
    lost_events: int = 0
    late_events: int = 0
    snapshots: int = 0
    unattributed_sockets: int = 0
    started_mono_ns: int = 0
    capturing_since_ns: int = 0  # wall time from which nothing is missed (0: not yet)
    stop_reason: str | None = None
    fallback_reason: str | None = None


Notify = Callable[[str], None]


def _default_notify(message: str) -> None:
    print(f"scope-record: {message}", file=sys.stderr, flush=True)


class _SnapshotWorker:
    """Runs /proc walks (and conntrack dumps) off the draining thread, one at a time."""

    def __init__(
        self,
        redact_cmdline: bool,
        conntrack: ConntrackWatcher | None = None,
        scope: NetnsScope | None = None,
    ) -> None:
        self._redact = redact_cmdline
        self.conntrack = conntrack
        self._scope = scope or NetnsScope()
        self._results: queue.Queue[tuple[int, ProcWalk | BaseException]] = queue.Queue()
        self.busy_since: int | None = None

    def start(self, started_mono_ns: int) -> None:
        self.busy_since = started_mono_ns
        thread = threading.Thread(target=self._run, args=(started_mono_ns,), daemon=True)
        thread.start()

    def _run(self, started_mono_ns: int) -> None:
        try:
            proc_walk = self._scope.walk(walk(redact_cmdline=self._redact))
            if self.conntrack is not None and self.conntrack.capturing:
                # Namespaces that appeared since the last walk are followed from now on.
                self.conntrack.add_namespaces(proc_walk.namespace_paths)
                proc_walk.conntrack = self.conntrack.dump()
            self._results.put((started_mono_ns, proc_walk))
        except BaseException as exc:  # reported by the recorder, which keeps going
            self._results.put((started_mono_ns, exc))

    def result(self, timeout: float = 0.0) -> tuple[int, ProcWalk | BaseException] | None:
        try:
            item = self._results.get(timeout=timeout) if timeout else self._results.get_nowait()
        except queue.Empty:
            return None
        self.busy_since = None
        return item


def snapshot_of(
    proc_walk: ProcWalk,
    started_mono_ns: int,
    initial: bool,
    opened_meanwhile: list[Event] = (),  # type: ignore[assignment]
) -> tuple[Event, Snapshot]:
    """The SNAPSHOT event and its rows, stamped at the walk's start.

    A connection whose open event came while the walk ran is in the log from that event; the
    walk may have seen it too, and its row is dropped so that it is never there twice.
    """
    opened = {
        (e.netns, e.laddr, e.lport, e.raddr, e.rport)
        for e in opened_meanwhile
        if e.kind in (Kind.CONNECT, Kind.ACCEPT)
    }
    connections = tuple(
        c
        for c in proc_walk.connections
        if (c.netns, c.laddr, c.lport, c.raddr, c.rport) not in opened
    )
    event = Event(
        kind=Kind.SNAPSHOT,
        mono_ns=started_mono_ns,
        extra={
            "initial": initial,
            "walk_ns": proc_walk.finished_mono_ns - proc_walk.started_mono_ns,
            "namespace_list": sorted(proc_walk.namespaces),
            "opened_during_walk": len(proc_walk.connections) - len(connections),
            "unreadable": proc_walk.stats.vanished,
            "bad_lines": proc_walk.stats.bad_lines,
            "conntrack": proc_walk.conntrack is not None,
            "more_holders": more_holders(connections, proc_walk.holders),
        },
    )
    return event, Snapshot(
        connections=connections,
        processes=tuple(sorted(proc_walk.processes)),
        conntrack=tuple(proc_walk.conntrack or ()),
    )


@contextlib.contextmanager
def _collector_tuned_for_streaming() -> Iterator[None]:
    """Collect young objects far less often while recording.

    The recorder allocates a tuple per event and frees it a fraction of a second later; with
    the default thresholds the cyclic collector ran thousands of times a second walking
    them (none of them form cycles). Long-lived objects are moved out of its way.
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


class Recorder:
    """One recording, from ``run()`` until ``request_stop()``, the duration, or an error."""

    def __init__(
        self,
        options: RecordOptions,
        notify: Notify = _default_notify,
        on_live: Callable[[Progress], None] | None = None,
    ) -> None:
        self.options = options
        self.notify = notify
        self.on_live = on_live  # called once, when capture is live (progress says since when)
        self.progress = Progress()
        self._stop_reason: str | None = None
        self._stop_event = threading.Event()
        self._reserve: SpaceReserve | None = None  # held while a SQLite log is recorded
        self.stop_signal: str | None = None  # the signal that stopped it, if one did

    def request_stop(self, reason: str = STOP_SIGNAL, signal_name: str | None = None) -> None:
        """Stop at the next turn of the loop; ``signal_name`` (SIGINT, ...) is kept in the
        recording's stop detail."""
        if self._stop_reason is None:
            self._stop_reason = reason
            self.stop_signal = signal_name
        self._stop_event.set()

    # -- set-up ----------------------------------------------------------------------------
    def _choose_mode(self) -> str:
        forced = self.options.mode
        if forced == MODE_PROC:
            if self.options.require_ebpf:
                raise EbpfUnavailableError("--require-ebpf conflicts with /proc mode")
            self.progress.fallback_reason = "/proc mode requested"
            self.notify(
                "using /proc mode (requested): connections shorter than a poll are not seen"
            )
            return MODE_PROC
        reason = why_ebpf_unavailable()
        if reason is None:
            return MODE_EBPF
        if self.options.require_ebpf or forced == MODE_EBPF:
            raise EbpfUnavailableError(reason)
        self.progress.fallback_reason = reason
        self.notify(f"using /proc mode: {reason}")
        return MODE_PROC

    def run(self) -> Progress:
        options = self.options
        mode = self._choose_mode()
        # Arguments may hold secrets: with --redact-cmdline the programs read none.
        capture_options = dataclasses.replace(
            options.capture,
            command_lines=not options.redact_cmdline,
            host_id=self._host().host_id,
            netns=tuple(sorted(options.netns.wanted or ())),
        )
        capture = EbpfCapture(capture_options) if mode == MODE_EBPF else None
        if capture is not None:
            try:
                capture.start()
            except EbpfUnavailableError as exc:
                if options.require_ebpf or options.mode == MODE_EBPF:
                    raise
                self.notify(f"using /proc mode: {exc}")
                self.progress.fallback_reason = str(exc)
                capture, mode = None, MODE_PROC
        try:
            store = open_log(options.location, Purpose.RECORD, options.sqlite)
        except BaseException:
            if capture is not None:
                capture.close()
            raise
        reserve = SpaceReserve(store.location.path) if store.location.path else None
        if reserve is not None:
            reserve.hold()
        self._reserve = reserve
        try:
            with _collector_tuned_for_streaming():
                return self._record(store, mode, capture)
        finally:
            if capture is not None:
                capture.close()
            if reserve is not None:
                reserve.release()
            store.close()

    def _host(self) -> HostIdentity:
        """This host, under the name it is recorded by."""
        host = host_identity()
        return dataclasses.replace(host, host_id=self.options.host_id or host.host_id)

    def _recording_options(self) -> dict[str, Any]:
        options = self.options
        return {
            "snapshot_interval_s": options.snapshot_interval_s,
            "flush_interval_ms": options.flush_interval_ms,
            "proc_poll_interval_s": options.proc_poll_interval_s,
            "redact_cmdline": options.redact_cmdline,
            "ringbuf_bytes": options.capture.ringbuf_bytes,
            "follow_forks": options.capture.follow_forks,
            "fallback_reason": self.progress.fallback_reason,
            "version": __version__,
            "local": local_addresses(),
            "retention": options.retention.describe() if options.retention else None,
            "netns": options.netns.describe(),
        }

    def _pinning_options(self, capture: EbpfCapture | None) -> dict[str, Any]:
        """How the programs are held, for the recording's options: pinned or not, adopted
        from an earlier recorder (and since when they have been capturing), versions replaced."""
        if capture is None or not (self.options.capture.pin or capture.pinning.directory):
            return {}
        return {"pinning": capture.pinning.describe()}

    def _record(self, store: LogStore, mode: str, capture: EbpfCapture | None) -> Progress:
        host = self._host()
        for recording_id in close_abandoned_recordings(store, host):
            self.notify(f"recording {recording_id} had not been closed: marked as crashed")
        started = sample_clock()
        recording_id = begin_recording(
            store,
            RecordingStart(
                host=host,
                mode=mode,
                started=started,
                root_netns=netns_inode(1) or netns_inode(),
                options=self._recording_options() | self._pinning_options(capture),
            ),
        )
        self.progress.mode = mode
        self.progress.recording_id = recording_id
        self.progress.started_mono_ns = started.mono_ns
        writer = LogWriter(
            store,
            recording_id,
            ClockModel([started]),
            max_age_ns=self.options.flush_interval_ms * 1_000_000,
        )
        session = _Session(self, store, writer, capture, started)
        retention: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if self.options.retention is not None:
            from eventlog.retention import retention_running  # noqa: PLC0415 (pyarrow: ~40 MB)

            retention = retention_running(
                self.options.location, self.options.retention, self.notify, self.options.sqlite
            )
        try:
            with retention:
                reason = session.loop()
        except LogError as exc:
            self.progress.stop_reason = STOP_ERROR
            unwritten = self._close_after_error(store, session, str(exc))
            if unwritten:  # said in the one line the error is
                raise type(exc)(f"{exc}; {_lost(unwritten)}") from exc
            raise
        except BaseException as exc:
            self.progress.stop_reason = STOP_ERROR
            unwritten = self._close_after_error(store, session, f"{type(exc).__name__}: {exc}")
            if unwritten:
                self.notify(f"warning: {_lost(unwritten)}")
            raise
        finally:
            writer.close()
        self.progress.stop_reason = reason
        end_recording(
            store, recording_id, monotonic_ns(), reason, session.stop_detail(), session.counters()
        )
        return self.progress

    def _close_after_error(self, store: LogStore, session: _Session, detail: str) -> int:
        """The kernel side stopped, and what was captured and not written (lost with the log:
        how many is returned) said where the log can still take it: a loss, and the
        recording's end. A full disk still has the reserve's room for this; if the log
        failed otherwise, the next recorder marks this recording crashed."""
        unwritten = session.abandon()
        if self._reserve is not None:
            self._reserve.release()
        if unwritten:
            self.progress.lost_events += unwritten
            detail = f"{detail}; {_lost(unwritten)}"
            now = monotonic_ns()
            loss = Loss(unwritten, session.started, now, "captured, not written: the log failed")
            with contextlib.suppress(ScopeError):
                session.writer.commit_alone(Batch(losses=[loss]))
        with contextlib.suppress(ScopeError):
            end_recording(
                store, session.progress.recording_id, monotonic_ns(), STOP_ERROR, detail,
                session.counters(),
            )  # fmt: skip
        return unwritten


class _Session:
    """The recording loop's state; separate from Recorder to keep each step small."""

    def __init__(
        self,
        recorder: Recorder,
        store: LogStore,
        writer: LogWriter,
        capture: EbpfCapture | None,
        started: ClockSample,
    ) -> None:
        started_mono_ns = started.mono_ns
        self.started_wall_ns = started.mono_ns + started.offset_ns
        self.recorder = recorder
        self.options = recorder.options
        self.progress = recorder.progress
        self.store = store
        self.writer = writer
        self.capture = capture
        self.reorder = ReorderBuffer(REORDER_HORIZON_NS if capture else 0)
        self.conntrack = ConntrackWatcher(monotonic_ns) if self.options.conntrack else None
        self.snapshots = _SnapshotWorker(
            self.options.redact_cmdline, self.conntrack, self.options.netns
        )
        self.containers = (
            ContainerFollower(monotonic_ns, self.options.container_sockets, recorder.notify)
            if self.options.container_sockets
            else None
        )
        self.poller = ProcPoller() if capture is None else None
        self.started = started_mono_ns
        # Counters as far as earlier readers of pinned programs accounted for them.
        self.kernel = capture.accounted() if capture else KernelStats(0, 0, 0, 0, 0, 0, 0)
        self.stats_read_mono = started_mono_ns
        self.loss_warned_at: int | None = None
        self.decode_errors = 0
        self.received_events = 0
        self.received_pieces = 0  # of command lines: received, joined into their EXECs
        self.outage_since: int | None = None
        self.retry_at = 0
        self.stop_waits_said = False  # a stop waiting for a central store said so
        self.initial_snapshot_mono: int | None = None

    # -- the loop --------------------------------------------------------------------------
    def _start_conntrack(self) -> None:
        if self.conntrack is None:
            set_recording_field(
                self.store, self.progress.recording_id, conntrack="off (--no-conntrack)"
            )
            return
        scope = self.options.netns
        status = self.conntrack.start(lambda: scope.namespaces(network_namespaces()))
        if not self.conntrack.capturing:
            self.recorder.notify(
                f"conntrack not captured ({status}); recording goes on without NAT"
            )
        set_recording_field(self.store, self.progress.recording_id, conntrack=status)

    def _announce_live(self) -> None:
        """Say once that capture is live, and since when: the kernel's programs were attached
        (or /proc is polled) from the recording's start, and conntrack is followed now. Until
        then (compiling the programs takes seconds) nothing was captured. Adopted pinned
        programs have captured all along: since their previous reader's last read."""
        adopted_from = self.capture.pinning.covers_from_wall_ns if self.capture else 0
        since = min(adopted_from or self.started_wall_ns, self.started_wall_ns)
        self.progress.capturing_since_ns = since
        if self.options.progress_file is not None:
            with self.options.progress_file.open("a") as out:
                out.write(f"recording={self.progress.recording_id} capturing_since_ns={since}\n")
        if self.recorder.on_live is not None:
            self.recorder.on_live(self.progress)

    def _drain_conntrack(self) -> None:
        if self.conntrack is not None:
            events = self.conntrack.drain()
            if events:
                self.reorder.add(events)

    def _say_how_programs_are_held(self) -> None:
        """Pinned programs adopted or replaced, or pinning not possible: said, and what the
        programs lost while no recorder read them goes into this recording."""
        if self.capture is None:
            return
        pinning = self.capture.pinning
        if pinning.problem:
            self.recorder.notify(f"warning: cannot pin the capture programs: {pinning.problem}")
        if pinning.adopted:
            self.recorder.notify(
                f"adopted the capture programs pinned in {pinning.directory} (capturing since "
                f"{format_ns(pinning.attached_wall_ns)}): nothing compiled"
            )
        if pinning.replaced:
            self.recorder.notify(
                f"replaced pinned capture programs of other versions: {', '.join(pinning.replaced)}"
            )
        now = monotonic_ns()
        for loss in self.capture.inherited_losses:
            first = loss.first_mono_ns or self.started
            self.writer.add_loss(Loss(loss.count, min(first, now), now, loss.reason))
            self.progress.lost_events += loss.count

    def _drain_containers(self) -> None:
        if self.containers is not None:
            events = self.containers.drain()
            if events:
                self.reorder.add(events)

    def loop(self) -> str:
        options = self.options
        self._say_how_programs_are_held()
        adopted = self.capture is not None and self.capture.pinning.adopted
        if adopted:
            # The kernel never stopped capturing: live now, conntrack is followed right after
            # (what a service manager waits for should not wait for its namespaces).
            self._announce_live()
        self._start_conntrack()
        if not adopted:
            self._announce_live()
        if self.containers is not None:
            # After the line saying capture is live: what it says of the runtime comes next.
            self.containers.start()
        deadline = (
            self.started + int(options.duration_s * 1e9) if options.duration_s is not None else None
        )
        self._initial_snapshot()
        snapshot_every = int(options.snapshot_interval_s * 1e9)
        next_snapshot = self.started + snapshot_every if snapshot_every > 0 else None
        next_clock = self.started + CLOCK_SAMPLE_INTERVAL_NS
        next_stats = self.started + STATS_INTERVAL_NS
        next_alive = self.started + ALIVE_INTERVAL_NS
        next_poll = self.started + int(options.proc_poll_interval_s * 1e9)
        while True:
            now = monotonic_ns()
            if self.recorder._stop_event.is_set():
                return self._finish(self.recorder._stop_reason or STOP_SIGNAL)
            if deadline is not None and now >= deadline:
                return self._finish(STOP_DURATION)
            if self.capture is not None:
                self._drain(self.capture.poll(20))
            else:
                if now >= next_poll:
                    next_poll = now + int(options.proc_poll_interval_s * 1e9)
                    self._poll_proc()
                self.recorder._stop_event.wait(0.02)
            now = monotonic_ns()
            if (
                next_snapshot is not None
                and now >= next_snapshot
                and self.snapshots.busy_since is None
            ):
                next_snapshot = now + snapshot_every
                self._start_snapshot(now)
            self._collect_snapshot()
            self._drain_conntrack()
            self._drain_containers()
            if now >= next_clock:
                next_clock = now + CLOCK_SAMPLE_INTERVAL_NS
                self.writer.add_clock_sample(sample_clock())
            if self.capture is not None and now >= next_stats:
                next_stats = now + STATS_INTERVAL_NS
                self._account_kernel_losses(now)
            self.reorder.release(now, self.writer)
            if self.writer.due(now) and now >= self.retry_at:
                self._flush()
            if now >= next_alive:
                next_alive = now + ALIVE_INTERVAL_NS
                self._mark_alive(now)

    def _drain(self, records: list[bytes]) -> None:
        for record in records:
            try:
                # Kept as the kernel wrote them, down to the INSERT; except a record with
                # command lines, whose pieces are joined into their EXECs when decoded.
                if native.AVAILABLE and not holds_command_lines(record):
                    run = raw_run(record)
                    self.received_events += len(run)
                    self.reorder.add_run(run)
                else:
                    events = decode_record(record)
                    received = record_count(record)
                    self.received_events += received
                    self.received_pieces += received - len(events)
                    self.reorder.add(events)
            except DecodeError as exc:
                self.decode_errors += 1
                now = monotonic_ns()
                self.writer.add_loss(
                    Loss(_events_in(record), now, now, f"undecodable record: {exc}")
                )

    def _mark_alive(self, now: int) -> None:
        if self.outage_since is not None:
            return  # the store is away: the next batch, once it is back, says it instead
        with contextlib.suppress(LogError):  # a store that fails here fails the next flush
            mark_alive(self.store, self.progress.recording_id, now)

    def _flush(self, final: bool = False) -> None:
        try:
            result = self.writer.flush()
        except LogError as exc:
            if not self.store.location.is_postgres or final:
                raise
            self._hold_during_outage(exc)
            return
        if self.outage_since is not None:
            seconds = (monotonic_ns() - self.outage_since) / 1e9
            self.recorder.notify(
                f"warning: the log is reachable again after {seconds:.1f} s; caught up"
            )
            self.outage_since = None
        self.progress.committed_events = self.writer.committed_events
        self.progress.late_events = self.reorder.late_events
        if result is not None and self.options.progress_file is not None:
            with self.options.progress_file.open("a") as out:
                out.write(
                    f"recording={self.progress.recording_id} position={self.writer.last_position} "
                    f"committed={self.writer.committed_events}\n"
                )

    def _hold_during_outage(self, exc: LogError) -> None:
        """A central store went away: keep capturing into memory, retry, up to a bound."""
        now = monotonic_ns()
        waiting = self.writer.pending_events
        if self.outage_since is None:
            self.outage_since = now
            self.recorder.notify(
                f"warning: {exc}: keeping events in memory (up to "
                f"{self.options.buffer_events:,}) and retrying"
            )
        if waiting > self.options.buffer_events:
            seconds = (now - self.outage_since) / 1e9
            raise LogWriteError(
                f"the log has been unreachable for {seconds:.0f} s and {waiting:,} events are "
                f"waiting, more than --buffer-events {self.options.buffer_events:,}: stopping "
                "(they are lost; the recording is marked as crashed by the next scope-record)"
            ) from exc
        self.retry_at = now + OUTAGE_RETRY_NS

    # -- snapshots -------------------------------------------------------------------------
    def _initial_snapshot(self) -> None:
        """Walk /proc once, synchronously with respect to the log: nothing after its start
        is written before it. Events keep flowing into the buffer meanwhile."""
        start = monotonic_ns()
        self.initial_snapshot_mono = start
        self._start_snapshot(start)
        while True:
            if self.capture is not None:
                self._drain(self.capture.poll(20))
                # What came before the walk (what adopted programs held, say) is committed
                # meanwhile: a walk of a big host takes seconds.
                now = monotonic_ns()
                self.reorder.release(now, self.writer)
                if self.writer.due(now) and now >= self.retry_at:
                    self._flush()
            if self._collect_snapshot(timeout=0 if self.capture else 0.05):
                return

    def _start_snapshot(self, now: int) -> None:
        self.reorder.hold(now)
        self.snapshots.start(now)

    def _collect_snapshot(self, timeout: float = 0.0) -> bool:
        item = self.snapshots.result(timeout)
        if item is None:
            return False
        started, result = item
        if isinstance(result, BaseException):
            self.reorder.cancel_hold(started)
            self.recorder.notify(f"a /proc snapshot failed: {result}")
            return True
        initial = started == self.initial_snapshot_mono
        if initial and self.poller is not None:
            self.poller.prime(result)
        event, snapshot = snapshot_of(result, started, initial, self.reorder.pending_since(started))
        self.reorder.add_snapshot(event, snapshot)
        self.progress.snapshots += 1
        return True

    def _poll_proc(self) -> None:
        assert self.poller is not None
        proc_walk = self.options.netns.walk(walk(redact_cmdline=self.options.redact_cmdline))
        self.reorder.add(self.poller.events(proc_walk))

    # -- losses ----------------------------------------------------------------------------
    def _account_kernel_losses(self, now: int) -> None:
        assert self.capture is not None
        current = self.capture.stats()
        previous = self.kernel
        window_start = self.stats_read_mono
        lost = current.lost_events - previous.lost_events
        if lost > 0:
            last = current.lost_last_ts_ns if current.lost_last_ts_ns >= window_start else now
            self.writer.add_loss(
                Loss(lost, window_start, max(window_start, min(last, now)), "ring buffer full")
            )
        missed = current.recursion_misses - previous.recursion_misses
        if missed > 0:
            self.writer.add_loss(
                Loss(missed, window_start, now, "kernel skipped the programs (BPF recursion)")
            )
        stale = current.stale_sockets - previous.stale_sockets
        if stale > 0:
            # The skipped close happened at some time before the socket reuse that showed it.
            self.writer.add_loss(
                Loss(stale, self.started, now, "socket closes the programs never saw")
            )
        self.progress.lost_events += max(lost, 0) + max(missed, 0) + max(stale, 0)
        self.progress.unattributed_sockets = current.sock_table_full
        self.kernel = current
        self.stats_read_mono = now
        self.capture.note_accounted(current)
        if lost > 0 or missed > 0:
            self._warn_losses(now)

    def _warn_losses(self, now: int) -> None:
        """Say so when the kernel drops events, at most once per LOSS_WARNING_INTERVAL_NS."""
        if self.loss_warned_at is not None and now - self.loss_warned_at < LOSS_WARNING_INTERVAL_NS:
            return
        self.loss_warned_at = now
        self.recorder.notify(
            f"warning: {self.progress.lost_events:,} events lost so far in the kernel "
            f"(counted in the log's losses); a larger --ringbuf-mb helps if the ring buffer "
            "overflowed"
        )

    # -- stopping --------------------------------------------------------------------------
    def _finish(self, reason: str) -> str:
        if self.capture is not None:
            self._drain(self.capture.stop())
            now = monotonic_ns()
            self._account_kernel_losses(now)
            # Anything staged that neither arrived nor was counted lost is lost all the same;
            # unless the programs stay pinned: then the next recorder receives it.
            unaccounted = (
                self.kernel.staged_events - self.capture.received_total - self.kernel.lost_events
            )
            if unaccounted > 0 and not self.capture.keeps_running:
                self.writer.add_loss(
                    Loss(unaccounted, self.started, now, "staged in the kernel, never handed over")
                )
                self.progress.lost_events += unaccounted
        while self.snapshots.busy_since is not None:
            self._collect_snapshot(timeout=0.1)
        if self.conntrack is not None:
            self.conntrack.stop()
            self._drain_conntrack()
        if self.containers is not None:
            self.containers.stop()
            self._drain_containers()
        self.reorder.release_all(self.writer)
        self._final_flush()
        return reason

    def _final_flush(self) -> None:
        """The last commit; to a central store that is away, tried again for STOP_GRACE_NS
        (said once), then given up: the error says how many events are lost."""
        deadline = monotonic_ns() + STOP_GRACE_NS
        while True:
            try:
                self._flush(final=True)
                return
            except LogError as exc:
                if not self.store.location.is_postgres or monotonic_ns() >= deadline:
                    raise
                if self.outage_since is None:
                    self.outage_since = monotonic_ns()
                    self.recorder.notify(f"warning: {exc}")
                if not self.stop_waits_said:
                    self.stop_waits_said = True
                    self.recorder.notify(
                        f"warning: stopping once the log takes the last "
                        f"{self.writer.pending_events:,} events (trying for "
                        f"{STOP_GRACE_NS // 1_000_000_000} s)"
                    )
                time.sleep(OUTAGE_RETRY_NS / 1e9)

    def abandon(self) -> int:
        """After an error: stop the kernel side. How many events were captured and will not
        be written (lost with the log): those waiting for a commit or in the reorder buffer,
        the kernel's last records, and what it staged and never handed over, or counted
        lost since the last look (unless the programs stay pinned: then the next recorder
        receives and counts it)."""
        unwritten = self.writer.pending_events + len(self.reorder)
        if self.capture is not None:
            with contextlib.suppress(Exception):  # (the error that stops it is said already)
                unwritten += sum(map(_events_in, self.capture.stop()))
                if not self.capture.keeps_running:
                    unwritten += self._unreported_kernel_events()
            self.capture.close()
        if self.conntrack is not None:
            self.conntrack.stop()
        if self.containers is not None:
            self.containers.stop()
        return unwritten

    def _unreported_kernel_events(self) -> int:
        """What the kernel staged and never handed over, and counted lost, skipped or
        stale since the last look: none of it in the log."""
        assert self.capture is not None
        current = self.capture.stats()
        previous = self.kernel
        never_handed = current.staged_events - self.capture.received_total - current.lost_events
        since = (
            (current.lost_events - previous.lost_events)
            + (current.recursion_misses - previous.recursion_misses)
            + (current.stale_sockets - previous.stale_sockets)
        )
        return max(0, never_handed) + max(0, since)

    def counters(self) -> dict[str, int]:
        """The accounting a test or an operator can check: staged in the kernel = received
        from the ring buffer + lost in it; committed = received - the pieces of command lines
        (each joined into its EXEC) + snapshots and /proc events + container records."""
        return {
            "kernel_staged": self.kernel.staged_events,
            "kernel_lost": self.kernel.lost_events,
            "kernel_recursion_misses": self.kernel.recursion_misses,
            "kernel_stale_sockets": self.kernel.stale_sockets,
            "received": self.received_events,
            "command_line_pieces": self.received_pieces,
            "committed": self.writer.committed_events,
            "late": self.reorder.late_events,
            "snapshots": self.progress.snapshots,
            "unattributed_sockets": self.kernel.sock_table_full,
            # Pinned programs are read by one recorder after another: all of them together.
            "kernel_received_by_all_readers": (
                self.capture.received_total if self.capture is not None else 0
            ),
            "undecodable_records": self.decode_errors,
            "unparsed_conntrack_messages": (
                self.conntrack.stats.bad_lines if self.conntrack is not None else 0
            ),
            **self._container_counters(),
        }

    def _container_counters(self) -> dict[str, int]:
        stats = self.containers.stats if self.containers is not None else None
        return {
            "container_records": stats.records if stats else 0,
            "container_api_connects": stats.connects if stats else 0,
            "container_api_timeouts": stats.timeouts if stats else 0,
            "container_api_bad_answers": stats.bad_answers if stats else 0,
            "container_pid_mismatches": stats.pid_mismatches if stats else 0,
        }

    def stop_detail(self) -> str | None:
        parts = []
        if self.recorder.stop_signal:
            parts.append(f"stopped by {self.recorder.stop_signal}")
        if self.progress.lost_events:
            parts.append(f"{self.progress.lost_events} events lost")
        if self.progress.unattributed_sockets:
            parts.append(f"{self.progress.unattributed_sockets} sockets unattributed (table full)")
        if self.decode_errors:
            parts.append(f"{self.decode_errors} undecodable records")
        if self.capture is not None and self.capture.keeps_running:
            parts.append(
                f"capture goes on in the kernel (pinned in {self.capture.pinning.directory})"
            )
        return "; ".join(parts) or None


def _lost(unwritten: int) -> str:
    return f"{unwritten:,} events captured since the last commit are lost"


def _events_in(record: bytes) -> int:
    """How many events the kernel staged in ``record`` (all of them are lost with it when it
    cannot be decoded); 1 when even its header is cut short."""
    if len(record) < HEADER.size:
        return 1
    return max(1, record_count(record))


def log_size_bytes(location: LogLocation) -> int | None:
    if location.path is None:
        return None
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.stat(f"{location.path}{suffix}").st_size
    return total


def elapsed_s(progress: Progress) -> float:
    return max(0.0, (monotonic_ns() - progress.started_mono_ns) / 1e9)


__all__ = ["MODE_EBPF", "MODE_PROC", "Progress", "RecordOptions", "Recorder", "elapsed_s"]
