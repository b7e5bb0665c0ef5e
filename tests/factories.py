"""Small builders for events and recordings used across tests."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from eventlog.clock import ClockModel
from eventlog.events import ClockSample, Event, Kind
from eventlog.location import LogLocation
from eventlog.recordings import HostIdentity, RecordingStart, begin_recording
from eventlog.store import LogStore, Purpose, open_log
from eventlog.writer import LogWriter

ROOT_NETNS = 4026531833
WALL_BASE_NS = 1_764_072_000_000_000_000  # 2025-11-25T12:00:00Z
MONO_BASE_NS = 1_000_000_000_000


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def make_host(name: str = "testhost") -> HostIdentity:
    return HostIdentity(host_id=name, machine_id="m" * 32, boot_id="b-1", kernel_release="6.x")


def clock_sample(mono_ns: int = MONO_BASE_NS, offset_ns: int | None = None) -> ClockSample:
    offset = WALL_BASE_NS - MONO_BASE_NS if offset_ns is None else offset_ns
    return ClockSample(mono_ns=mono_ns, offset_ns=offset, uncertainty_ns=100)


def conn_event(
    kind: int = Kind.CONNECT,
    mono_ns: int = MONO_BASE_NS,
    *,
    pid: int = 100,
    comm: str | None = "client",
    netns: int = ROOT_NETNS,
    laddr: str = "127.0.0.1",
    lport: int = 40000,
    raddr: str = "127.0.0.1",
    rport: int = 8080,
    sock_id: int = 1,
    bytes_sent: int | None = None,
    bytes_received: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Event:
    return Event(
        kind=int(kind),
        mono_ns=mono_ns,
        pid=pid,
        comm=comm,
        netns=netns,
        laddr=ip(laddr),
        lport=lport,
        raddr=ip(raddr),
        rport=rport,
        sock_id=sock_id,
        bytes_sent=bytes_sent,
        bytes_received=bytes_received,
        extra=extra,
    )


@contextmanager
def recording_writer(
    location: LogLocation,
    host: HostIdentity | None = None,
    start: ClockSample | None = None,
    **writer_options: Any,
) -> Iterator[tuple[LogStore, LogWriter]]:
    """An open log with a new recording and a writer for it."""
    start = start or clock_sample()
    store = open_log(location, Purpose.RECORD)
    try:
        recording_id = begin_recording(
            store,
            RecordingStart(
                host=host or make_host(), mode="ebpf", started=start, root_netns=ROOT_NETNS
            ),
        )
        writer = LogWriter(store, recording_id, ClockModel([start]), **writer_options)
        try:
            yield store, writer
        finally:
            writer.close()
    finally:
        store.close()
