"""Raw ring-buffer records -> events. Pure: tested on byte fixtures, no kernel needed.

A record is one CPU's stage: a 16-byte header (count, cpu, first timestamp) followed by
``count`` 128-byte events laid out as ``struct event`` in ``bpf/tcp_events.h``.
"""

from __future__ import annotations

import struct
from typing import Any

from recorder.events import Event, Kind

HEADER = struct.Struct("<IIQ")
EVENT = struct.Struct("<QQQQIIIHHBBHI16s56s")
assert EVENT.size == 128, EVENT.size

FAMILY_INET = 2
FAMILY_INET6 = 10

FLAG_PASSIVE = 0x1
FLAG_UNATTRIBUTED = 0x2
FLAG_TRUNCATED = 0x4

_CONNECTION_KINDS = {int(Kind.CONNECT), int(Kind.ACCEPT), int(Kind.CLOSE), int(Kind.CONNECT_FAILED)}


class DecodeError(ValueError):
    """A record that does not have the layout the programs write."""


def _cstring(raw: bytes) -> str:
    end = raw.find(b"\0")
    return raw[: end if end >= 0 else len(raw)].decode("utf-8", "replace")


def decode_record(data: bytes) -> list[Event]:
    """All events of one stage record, in the order they were staged."""
    if len(data) < HEADER.size:
        raise DecodeError(f"record of {len(data)} bytes is shorter than its header")
    count, _cpu, _first_ts = HEADER.unpack_from(data)
    body = memoryview(data)[HEADER.size : HEADER.size + count * EVENT.size]
    if len(body) != count * EVENT.size:
        raise DecodeError(f"record says {count} events but holds {len(data)} bytes")
    return [decode_event(fields) for fields in EVENT.iter_unpack(body)]


def decode_event(fields: tuple[Any, ...]) -> Event:
    (
        ts_ns,
        sock_id,
        bytes_sent,
        bytes_received,
        pid,
        netns,
        aux,
        lport,
        rport,
        kind,
        family,
        flags,
        aux2,
        comm_raw,
        tail,
    ) = fields
    comm = _cstring(comm_raw) or None
    if kind in _CONNECTION_KINDS:
        width = 4 if family == FAMILY_INET else 16
        extra: dict[str, Any] | None = None
        if kind == Kind.CONNECT_FAILED:
            extra = {"error": aux}  # sk_err: a positive errno, e.g. 111 ECONNREFUSED
        unattributed = bool(flags & FLAG_UNATTRIBUTED)
        return Event(
            kind=kind,
            mono_ns=ts_ns,
            pid=None if unattributed and not pid else pid,
            comm=None if unattributed and not pid else comm,
            netns=netns or None,
            laddr=bytes(tail[:width]),
            lport=lport,
            raddr=bytes(tail[16 : 16 + width]),
            rport=rport,
            sock_id=sock_id or None,
            bytes_sent=bytes_sent if kind == Kind.CLOSE else None,
            bytes_received=bytes_received if kind == Kind.CLOSE else None,
            extra=extra,
        )
    if kind == Kind.EXEC:
        extra = {"ppid": aux, "filename": _cstring(tail)}
        if flags & FLAG_TRUNCATED:
            extra["filename_truncated"] = True
        return Event(kind=kind, mono_ns=ts_ns, pid=pid, comm=comm, netns=netns or None, extra=extra)
    if kind == Kind.EXIT:
        return Event(
            kind=kind,
            mono_ns=ts_ns,
            pid=pid,
            comm=comm,
            netns=netns or None,
            extra={"ppid": aux, "exit_code": aux2},
        )
    raise DecodeError(f"unknown event kind {kind}")
