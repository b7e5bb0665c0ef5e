"""Recordings: one row per `scope-record` run, opened at start and closed with a reason."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, case, func, insert, select, update

from eventlog import __version__, schema
from eventlog.errors import LogBusyError
from eventlog.events import ClockSample
from eventlog.store import LogStore

STOP_DURATION = "duration"  # --duration elapsed
STOP_SIGNAL = "signal"  # SIGINT / SIGTERM
STOP_ERROR = "error"  # the recorder stopped itself on an error (detail says which)
STOP_CRASHED = "crashed"  # found dead without having closed (kill -9, power loss)


@dataclass(frozen=True)
class HostIdentity:
    host_id: str  # the host name: Scope's host node id
    machine_id: str | None
    boot_id: str | None
    kernel_release: str


@dataclass(frozen=True)
class RecordingStart:
    host: HostIdentity
    mode: str  # "ebpf" or "proc"
    started: ClockSample
    root_netns: int | None
    options: dict[str, Any] = field(default_factory=dict)
    recorder_pid: int = field(default_factory=os.getpid)


def begin_recording(store: LogStore, start: RecordingStart) -> int:
    """Insert the recording row and its first clock sample; return the recording id.

    Refused (LogBusyError) while a recorder in another process records the same host into
    this log: both would append every event, and replay would show every connection twice.
    The row is inserted before the others are looked for, in one transaction: of two
    recorders starting at once, the second waits for the first's commit and sees it (SQLite
    takes its write lock at the insert; on PostgreSQL a lock on the host orders them)."""
    with store.connect() as conn:
        if store.dialect == "postgresql":
            lock = func.hashtext("scope-record " + start.host.host_id)
            conn.execute(select(func.pg_advisory_xact_lock(lock)))
        recording_id = conn.execute(
            insert(schema.recordings)
            .values(
                host_id=start.host.host_id,
                machine_id=start.host.machine_id,
                boot_id=start.host.boot_id,
                kernel_release=start.host.kernel_release,
                tool_version=__version__,
                mode=start.mode,
                recorder_pid=start.recorder_pid,
                root_netns=start.root_netns,
                started_mono_ns=start.started.mono_ns,
                started_wall_ns=start.started.mono_ns + start.started.offset_ns,
                last_mono_ns=start.started.mono_ns,
                options=start.options,
            )
            .returning(schema.recordings.c.id)
        ).scalar_one()
        busy = _other_live_recorder(conn, start.host, recording_id)
        if busy is not None:
            conn.rollback()
            other_id, other_pid = busy
            raise LogBusyError(
                f"another recorder of host {start.host.host_id} (pid {other_pid}) is appending "
                f"to {store.location.display()} as recording {other_id}: stop it first (two "
                "would record every connection twice)"
            )
        conn.execute(
            insert(schema.clock_samples).values(
                recording_id=recording_id,
                mono_ns=start.started.mono_ns,
                offset_ns=start.started.offset_ns,
                uncertainty_ns=start.started.uncertainty_ns,
            )
        )
        conn.commit()
    return int(recording_id)


def end_recording(
    store: LogStore,
    recording_id: int,
    stopped_mono_ns: int,
    reason: str,
    detail: str | None = None,
    counters: dict[str, int] | None = None,
) -> None:
    with store.connect() as conn:
        conn.execute(
            update(schema.recordings)
            .where(schema.recordings.c.id == recording_id)
            .values(
                stopped_mono_ns=stopped_mono_ns,
                stop_reason=reason,
                stop_detail=detail,
                counters=counters,
            )
        )
        conn.commit()


def mark_alive(store: LogStore, recording_id: int, mono_ns: int) -> None:
    """The recording was running at ``mono_ns``: a recording found crashed later ended no
    earlier than that (its last batch alone may be long before, on an idle host)."""
    last = schema.recordings.c.last_mono_ns
    with store.connect() as conn:
        conn.execute(
            update(schema.recordings)
            .where(schema.recordings.c.id == recording_id)
            .values(last_mono_ns=case((last.is_(None), mono_ns), (last < mono_ns, mono_ns),
                                      else_=last))
        )  # fmt: skip
        conn.commit()


def set_recording_field(store: LogStore, recording_id: int, **values: Any) -> None:
    with store.connect() as conn:
        conn.execute(
            update(schema.recordings).where(schema.recordings.c.id == recording_id).values(**values)
        )
        conn.commit()


def close_abandoned_recordings(store: LogStore, host: HostIdentity) -> list[int]:
    """Mark this host's recordings that died without closing (kill -9, reboot) as crashed.

    A recording is abandoned when it has no stop reason and its recorder is gone: another
    boot, or no process with its pid any more. Its stop time is the last committed batch.
    """
    recordings = schema.recordings
    with store.connect() as conn:
        rows = conn.execute(
            select(
                recordings.c.id,
                recordings.c.boot_id,
                recordings.c.recorder_pid,
                recordings.c.last_mono_ns,
            ).where(and_(recordings.c.host_id == host.host_id, recordings.c.stop_reason.is_(None)))
        ).all()
        abandoned = []
        for recording_id, boot_id, pid, last_mono in rows:
            if boot_id == host.boot_id and pid is not None and process_alive(pid):
                continue
            detail = "recorder ended without closing the recording"
            if boot_id != host.boot_id:
                detail = "host rebooted during the recording"
            conn.execute(
                update(recordings)
                .where(recordings.c.id == recording_id)
                .values(stop_reason=STOP_CRASHED, stop_detail=detail, stopped_mono_ns=last_mono)
            )
            abandoned.append(int(recording_id))
        conn.commit()
    return abandoned


def _other_live_recorder(
    conn: Connection, host: HostIdentity, recording_id: int
) -> tuple[int, int] | None:
    """(recording, pid) of an open recording of ``host`` made by a live recorder in another
    process of this boot, if there is one."""
    recordings = schema.recordings
    rows = conn.execute(
        select(recordings.c.id, recordings.c.recorder_pid).where(
            and_(
                recordings.c.host_id == host.host_id,
                recordings.c.boot_id == host.boot_id,
                recordings.c.stop_reason.is_(None),
                recordings.c.id != recording_id,
            )
        )
    ).all()
    for other_id, pid in rows:
        if pid is not None and pid != os.getpid() and process_alive(pid):
            return int(other_id), int(pid)
    return None


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (this one counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
