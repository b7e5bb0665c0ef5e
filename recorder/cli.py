"""scope-record: capture every TCP connection event into the log. Thin: see recorder.record.
The library is imported when a recording starts, not to print --help (see pyproject.toml).
"""

from __future__ import annotations

import enum
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from eventlog.cliutil import EXIT_INTERRUPTED, DbOption, check_output_path, run
from eventlog.errors import UsageError
from eventlog.events import MODE_EBPF, MODE_PROC
from eventlog.options import SQLITE_SYNC_LEVELS, SqliteOptions
from eventlog.timefmt import format_ns
from recorder.service import ServiceNotifier

if TYPE_CHECKING:
    from recorder.record import Progress, RecordOptions

MAX_SECONDS = 10 * 365 * 86400.0  # ten years: beyond it a number is a typo
MAX_RINGBUF_MB = 2048  # the kernel caps a BPF ring buffer below 4 GiB

app = typer.Typer(add_completion=False, help="Record TCP connection events into the log.")


class Mode(enum.StrEnum):
    auto = "auto"
    ebpf = MODE_EBPF
    proc = MODE_PROC


def _positive(
    value: float | None, name: str, allow_zero: bool = False, most: float | None = None
) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise UsageError(
            f"{name} must be a number {'>= 0' if allow_zero else '> 0'}, not {value:g}"
        )
    if most is not None and value > most:
        raise UsageError(f"{name} must be at most {most:g}, not {value:g}")


@app.callback(invoke_without_command=True)
def record(
    ctx: typer.Context,
    db: DbOption = None,
    duration: Annotated[
        float | None,
        typer.Option(help="Stop after this many seconds (default: until SIGINT/SIGTERM)."),
    ] = None,
    snapshot_interval: Annotated[
        float, typer.Option(help="Seconds between /proc snapshots; 0 disables them.")
    ] = 15.0,
    flush_interval: Annotated[
        int, typer.Option(help="Longest a captured event waits before it is committed (ms).")
    ] = 200,
    require_ebpf: Annotated[
        bool, typer.Option("--require-ebpf", help="Fail instead of falling back to /proc mode.")
    ] = False,
    mode: Annotated[
        Mode, typer.Option(help="Capture with eBPF, poll /proc, or pick (auto).")
    ] = Mode.auto,
    proc_interval: Annotated[
        float, typer.Option(help="Poll period in /proc mode (seconds).")
    ] = 1.0,
    ringbuf_mb: Annotated[
        float, typer.Option(help="Kernel ring buffer size in MiB (rounded up to a power of two).")
    ] = 32.0,
    sync: Annotated[
        str, typer.Option(help=f"SQLite synchronous level: {', '.join(SQLITE_SYNC_LEVELS)}.")
    ] = "FULL",
    redact_cmdline: Annotated[
        bool, typer.Option("--redact-cmdline", help="Keep only argv[0] of command lines.")
    ] = False,
    no_conntrack: Annotated[
        bool, typer.Option("--no-conntrack", help="Do not record conntrack (NAT) entries.")
    ] = False,
    container_api: Annotated[
        list[str] | None,
        typer.Option(
            help="A container runtime's API socket (Docker or Podman) to follow for container "
            "names, images and labels; repeatable. Default: Podman's and Docker's usual ones."
        ),
    ] = None,
    no_containers: Annotated[
        bool, typer.Option("--no-containers", help="Do not follow a container runtime's API.")
    ] = False,
    no_follow_forks: Annotated[
        bool,
        typer.Option(
            "--no-follow-forks",
            help="Do not record forks, nor which process closed a socket it did not open: "
            "replay then attributes each socket to the process that opened it (accept(), "
            "connect()), also behind pre-fork servers.",
        ),
    ] = False,
    buffer_events: Annotated[
        int,
        typer.Option(help="Events kept in memory while a PostgreSQL log is unreachable."),
    ] = 1_000_000,
    progress_file: Annotated[
        Path | None,
        typer.Option(help="Append a line here after every commit (what is durable so far)."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Append to a log owned by another user, or in an unsafe directory."
        ),
    ] = False,
    pin: Annotated[
        bool,
        typer.Option(
            "--pin",
            help="Pin the capture programs in bpffs: capture goes on while the recorder is "
            "down (restart, upgrade, crash) and the next one adopts them without compiling. "
            "scope-record stop --detach removes them.",
        ),
    ] = False,
    log_interval: Annotated[
        float,
        typer.Option(
            help="Write how the recording is doing to stderr every this many seconds, a line "
            "each (for a journal); 0: only when it stops."
        ),
    ] = 0.0,
    retain: Annotated[
        str | None,
        typer.Option(
            help="Keep this much history in the live log (e.g. 7d, 12h); older events move "
            "to the archive as the recording goes on."
        ),
    ] = None,
    max_log_size: Annotated[
        str | None,
        typer.Option(
            help="Keep the live log under this size (e.g. 10G); the oldest events "
            "move to the archive."
        ),
    ] = None,
    archive: Annotated[
        str | None,
        typer.Option(
            help="Directory of the archive (Parquet) for --retain/--max-log-size "
            "(default: LOG.archive beside a SQLite log), or none: what leaves the live log is "
            "dropped, and only the state at each cut is kept (moments before it are refused)."
        ),
    ] = None,
    retention_interval: Annotated[
        float | None,
        typer.Option(
            help="Seconds between retention's looks (default: a quarter of --retain, 1 to 60)."
        ),
    ] = None,
    host_id: Annotated[
        str | None,
        typer.Option(
            "--host-id",
            help="The host's name in the log (default: the hostname): its recordings, its "
            "node in the maps, its pinned programs.",
        ),
    ] = None,
    netns: Annotated[
        list[str] | None,
        typer.Option(
            "--netns",
            help="Record only this network namespace (repeatable): /run/netns/NAME, NAME, "
            "/proc/PID/ns/net or its inode. Its sockets, the processes in it, its conntrack.",
        ),
    ] = None,
    quiet: Annotated[
        int,
        typer.Option(
            "--quiet",
            "-q",
            count=True,
            help="No status line or summary (-q); nor the line saying capture is live (-qq).",
        ),
    ] = 0,
) -> None:
    """Record connection and process events into the log until stopped.

    Example: scope-record --db scope.db --duration 60
    """
    if ctx.invoked_subcommand is not None:
        return  # scope-record stop / service ...: not a recording
    from eventlog.location import resolve
    from eventlog.recordings import STOP_SIGNAL
    from recorder.capture import CaptureOptions
    from recorder.containers import DEFAULT_SOCKETS
    from recorder.netns import NetnsScope
    from recorder.record import Recorder, RecordOptions
    from replay.timespec import parse_duration

    _positive(duration, "--duration", most=MAX_SECONDS)
    _positive(snapshot_interval, "--snapshot-interval", allow_zero=True, most=MAX_SECONDS)
    _positive(flush_interval, "--flush-interval", most=MAX_SECONDS * 1000)
    _positive(proc_interval, "--proc-interval", most=MAX_SECONDS)
    _positive(ringbuf_mb, "--ringbuf-mb", most=MAX_RINGBUF_MB)
    _positive(buffer_events, "--buffer-events")
    _positive(log_interval, "--log-interval", allow_zero=True, most=MAX_SECONDS)
    _positive(retention_interval, "--retention-interval", most=MAX_SECONDS)
    if sync.upper() not in SQLITE_SYNC_LEVELS:
        raise UsageError(f"--sync must be one of {', '.join(SQLITE_SYNC_LEVELS)}")
    if host_id is not None and not (0 < len(host_id) <= 253 and host_id.isprintable()):
        raise UsageError("--host-id must be 1 to 253 printable characters")
    location = resolve(db)
    retention = None
    if any(option is not None for option in (retain, max_log_size, archive, retention_interval)):
        # Imported only then: the archive's Parquet writer costs a recorder ~40 MB resident.
        from eventlog.retention import is_dropping, make_policy

        seed_maker = None
        if is_dropping(archive):
            # What a cut keeps of what it drops is the state replay folds (eventlog.seed).
            from replay.derived.seed import make_seed

            seed_maker = make_seed
        retention = make_policy(
            location,
            parse_duration(retain, "--retain") if retain is not None else None,
            max_log_size,
            archive,
            retention_interval,
            seed_maker,
        )
    check_output_path(progress_file)  # (before capture starts, not at its first line)
    options = RecordOptions(
        location=location,
        duration_s=duration,
        snapshot_interval_s=snapshot_interval,
        flush_interval_ms=flush_interval,
        proc_poll_interval_s=proc_interval,
        require_ebpf=require_ebpf,
        mode=None if mode is Mode.auto else mode.value,
        redact_cmdline=redact_cmdline,
        conntrack=not no_conntrack,
        container_sockets=() if no_containers else tuple(container_api or DEFAULT_SOCKETS),
        buffer_events=buffer_events,
        progress_file=progress_file,
        sqlite=SqliteOptions(synchronous=sync.upper(), force=force),
        capture=CaptureOptions(
            ringbuf_bytes=int(ringbuf_mb * (1 << 20)), pin=pin, follow_forks=not no_follow_forks
        ),
        retention=retention,
        host_id=host_id or None,
        netns=NetnsScope.of(netns or ()),
    )
    manager = ServiceNotifier(warn=_notify)

    def on_live(progress: Progress) -> None:
        line = _live_line(progress)
        if quiet < 2:  # said even when piped or -q: what came before is not recorded
            _notify(line)
        manager.ready(line)

    recorder = Recorder(options, notify=_notify_quiet if quiet else _notify, on_live=on_live)

    def on_signal(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        manager.stopping(f"stopping ({name})")
        recorder.request_stop(STOP_SIGNAL, name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    status = _StatusLine(recorder.progress, options) if not quiet and sys.stderr.isatty() else None
    reports = _Reports(recorder.progress, log_interval, manager)
    if status:
        status.start()
    reports.start()
    try:
        progress = recorder.run()
    finally:
        reports.stop()
        if status:
            status.stop()
    if not quiet:
        _summary(progress, options)
    if recorder.stop_signal == "SIGINT":
        # Interrupted, as a shell reports it; SIGTERM is a service manager's stop: 0.
        raise typer.Exit(EXIT_INTERRUPTED)


def _live_line(progress: Progress) -> str:
    return (
        f"recording {progress.recording_id} ({progress.mode}): capturing since "
        f"{format_ns(progress.capturing_since_ns)}"
    )


def _doing_line(progress: Progress, rate: float) -> str:
    return (
        f"recording {progress.recording_id} ({progress.mode}): {progress.committed_events} "
        f"events ({rate:.0f}/s), {progress.lost_events} lost"
    )


class _Reports:
    """How the recording is doing, every ``log_interval`` seconds on stderr (0: never), and
    as often (else every few seconds) to a service manager, when one asked for it."""

    MANAGER_EVERY_S = 5.0

    def __init__(self, progress: Progress, log_interval: float, manager: ServiceNotifier) -> None:
        self._progress = progress
        self._log_interval = log_interval
        self._manager = manager
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scope-reports", daemon=True)

    def start(self) -> None:
        if self._log_interval or self._manager.active:
            self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def _run(self) -> None:
        started = time.monotonic()
        logged = told = (started, 0)
        while not self._done.wait(0.5):
            now, committed = time.monotonic(), self._progress.committed_events
            if not self._progress.capturing_since_ns:
                logged = told = (now, committed)  # not live yet: said when it is
                continue
            if self._log_interval and now - logged[0] >= self._log_interval:
                _notify(_doing_line(self._progress, (committed - logged[1]) / (now - logged[0])))
                logged = (now, committed)
            if self._manager.active and now - told[0] >= (
                self._log_interval or self.MANAGER_EVERY_S
            ):
                self._manager.status(
                    _doing_line(self._progress, (committed - told[1]) / (now - told[0]))
                )
                told = (now, committed)


def _notify(message: str) -> None:
    print(f"scope-record: {message}", file=sys.stderr, flush=True)


def _notify_quiet(message: str) -> None:
    # A fallback to /proc mode and warnings matter even then; a mode asked for does not.
    requested = message.startswith("using /proc mode (requested)")
    if message.startswith(("using /proc mode", "warning:")) and not requested:
        _notify(message)


def _summary(progress: Progress, options: RecordOptions) -> None:
    from recorder.record import elapsed_s

    detail = f", {progress.lost_events} lost" if progress.lost_events else ", none lost"
    print(
        f"scope-record: recording {progress.recording_id} ({progress.mode}) stopped "
        f"({progress.stop_reason}): {progress.committed_events} events in "
        f"{elapsed_s(progress):.1f} s{detail}, into {options.location.display()}",
        file=sys.stderr,
        flush=True,
    )


class _StatusLine:
    """A live line on the terminal: rate, total, lost, log size."""

    def __init__(self, progress: Progress, options: RecordOptions) -> None:
        self._progress = progress
        self._options = options
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=2)
        print(file=sys.stderr, flush=True)

    def _run(self) -> None:
        from recorder.record import log_size_bytes

        previous = 0
        while not self._done.wait(1.0):
            progress = self._progress
            rate = progress.committed_events - previous
            previous = progress.committed_events
            size = log_size_bytes(self._options.location)
            size_text = f"  log {size / 1e6:.1f} MB" if size is not None else ""
            sys.stderr.write(
                f"\rrecording ({progress.mode}): {progress.committed_events:,} events "
                f"({rate:,}/s)  lost {progress.lost_events:,}{size_text}   "
            )
            sys.stderr.flush()


# -- scope-record stop / service -----------------------------------------------------------
HostIdOption = Annotated[
    str | None,
    typer.Option("--host-id", help="The host whose pinned programs to act on (default: this one)."),
]


@app.command()
def stop(
    detach: Annotated[
        bool,
        typer.Option(
            "--detach",
            help="Remove the pinned capture programs too (else they capture on, for the next "
            "recorder to adopt).",
        ),
    ] = False,
    host_id: HostIdOption = None,
) -> None:
    """Stop the recorder that reads this host's pinned capture programs (scope-record --pin)."""
    from recorder.host import host_identity
    from recorder.pinned import stop as stop_pinned

    result = stop_pinned(host_id or host_identity().host_id, detach)
    if result.stopped_pid:
        _notify(f"stopped the recorder (pid {result.stopped_pid})")
    elif not detach:
        _notify(
            "no recorder is reading the pinned programs; they capture on (--detach removes them)"
        )
    for directory in result.removed:
        _notify(f"removed the pinned programs in {directory}")
    if result.unread_events:
        _notify(
            f"warning: {result.unread_events} events the removed programs held were never "
            "recorded (no recorder read them)"
        )


service_app = typer.Typer(add_completion=False, help="Run scope-record as a systemd service.")
app.add_typer(service_app, name="service")

ServiceDbOption = Annotated[
    str,
    typer.Option(
        "--db",
        metavar="PATH|URL",
        help="The log the service records into (a path is made absolute).",
    ),
]


@service_app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def install(
    ctx: typer.Context,
    db: ServiceDbOption = "/var/lib/scope-recorder/scope.db",
    unit_dir: Annotated[Path, typer.Option(help="Where the unit file goes.")] = Path(
        "/etc/systemd/system"
    ),
) -> None:
    """Install (and where systemd runs, enable and start) the recorder as a service. Further
    options are scope-record's, e.g. scope-record service install --db ... --no-conntrack."""
    from eventlog.location import resolve
    from recorder.unit import install as install_unit

    _check_record_arguments(ctx.args)
    location = resolve(db)
    if location.path is not None:
        location.path.absolute().parent.mkdir(parents=True, exist_ok=True)
        db = str(location.path.absolute())
    installed = install_unit(["--db", db, *ctx.args], unit_dir)
    if installed.started:
        _notify(f"installed {installed.path}, enabled and started")
    else:
        _notify(
            f"installed {installed.path}; systemd is not running on this host, so it is not "
            "started (systemctl enable --now scope-recorder where it runs)"
        )


def _check_record_arguments(arguments: list[str]) -> None:
    """The recording options a unit will run with, refused now rather than at its start."""
    # The recording's options alone (not its subcommands): a stray word is refused too.
    options = typer.core.TyperCommand("scope-record", params=typer.main.get_command(app).params)
    options.make_context("scope-record", list(arguments))


@service_app.command()
def uninstall(
    unit_dir: Annotated[Path, typer.Option(help="Where the unit file is.")] = Path(
        "/etc/systemd/system"
    ),
) -> None:
    """Stop and remove the service, and the capture programs it pinned."""
    from recorder.host import host_identity
    from recorder.pinned import pinned_versions
    from recorder.pinned import stop as stop_pinned
    from recorder.unit import uninstall as uninstall_unit

    removed = uninstall_unit(unit_dir)
    _notify(f"removed {removed}" if removed else "no scope-recorder unit was installed")
    host = host_identity().host_id
    if pinned_versions(host):
        stop_pinned(host, detach=True)
        _notify("removed the pinned capture programs")


@service_app.command()
def status(
    unit_dir: Annotated[Path, typer.Option(help="Where the unit file is.")] = Path(
        "/etc/systemd/system"
    ),
    host_id: HostIdOption = None,
) -> None:
    """The unit, the service's state, and the pinned capture programs with their reader."""
    from recorder.host import host_identity
    from recorder.pinned import pinned_versions
    from recorder.unit import UNIT_NAME, active_state

    path = unit_dir / UNIT_NAME
    print(f"unit: {path if path.exists() else 'not installed'}")
    print(f"service: {active_state()}")
    pinned = pinned_versions(host_id or host_identity().host_id)
    if not pinned:
        print("pinned programs: none")
    for version in pinned:
        reader = f"read by pid {version.reader_pid}" if version.reading else "no reader"
        print(
            f"pinned programs: {version.directory} ({reader}), capturing since "
            f"{format_ns(version.attached_wall_ns)}, "
            f"last read {format_ns(version.last_read_wall_ns)}, "
            f"{version.staged_events} events captured, {version.unread_events} waiting, "
            f"{version.lost_events} lost"
        )


def main() -> None:
    run(app, "scope-record")
