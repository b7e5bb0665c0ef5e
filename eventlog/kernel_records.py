"""Raw ring-buffer records -> events. Pure: tested on byte fixtures, no kernel needed.

A record is one CPU's stage: a 16-byte header (count, cpu, first timestamp) followed by
``count`` 128-byte events laid out as ``struct event`` in ``bpf/tcp_events.h``.

This is the recorder's hottest Python code (every event passes through it once), so the
common kinds are decoded inline in one loop and tuples are built without keyword arguments.
"""

from __future__ import annotations

import struct
from typing import Any, cast

from eventlog import native
from eventlog.events import Event, Kind, cmdline_text

HEADER = struct.Struct("<IIQ")
EVENT = struct.Struct("<QQQQIIIHHBBHI16s56s")
assert EVENT.size == 128, EVENT.size

FAMILY_INET = 2
FAMILY_INET6 = 10

FLAG_PASSIVE = 0x1
FLAG_UNATTRIBUTED = 0x2
FLAG_TRUNCATED = 0x4

# EV_ARGS: a piece of the command line of the EXEC before it in the same record; joined into
# that EXEC's extra here, never an event of its own (and not a kind of the log).
ARGS = 64
ARGS_PIECE = 64
KIND_OFFSET = 48  # of struct event's kind

_CONNECT, _ACCEPT, _CLOSE, _FAILED = (
    int(Kind.CONNECT),
    int(Kind.ACCEPT),
    int(Kind.CLOSE),
    int(Kind.CONNECT_FAILED),
)
_FAST = struct.Struct("<QQQQIIIHHBBHI16s16s16s24x")  # EVENT with the address union split
_FAST_KINDS = frozenset({_CONNECT, _ACCEPT, _CLOSE})
_make_event = tuple.__new__
_COMM_CACHE_LIMIT = 4096
_comm_cache: dict[bytes, str | None] = {}


class DecodeError(ValueError):
    """A record that does not have the layout the programs write."""


def _cstring(raw: bytes) -> str:
    end = raw.find(b"\0")
    return raw[: end if end >= 0 else len(raw)].decode("utf-8", "replace")


def _comm(raw: bytes) -> str | None:
    comm = _cstring(raw) or None
    if len(_comm_cache) >= _COMM_CACHE_LIMIT:
        _comm_cache.clear()
    _comm_cache[raw] = comm
    return comm


def decode_record(data: bytes) -> list[Event]:
    """All events of one stage record, in the order they were staged."""
    if len(data) < HEADER.size:
        raise DecodeError(f"record of {len(data)} bytes is shorter than its header")
    count = HEADER.unpack_from(data)[0]
    body = memoryview(data)[HEADER.size : HEADER.size + count * EVENT.size]
    if len(body) != count * EVENT.size:
        raise DecodeError(f"record says {count} events but holds {len(data)} bytes")
    comms = _comm_cache
    # Every event decoded as a connection event in one comprehension (pid 0 = unattributed);
    # the few of other kinds are decoded again properly below.
    events: list[Event] = [
        _make_event(
            Event,
            (kind, ts, pid or None,
             (comms[comm] if comm in comms else _comm(comm)) if pid else None,
             netns or None, laddr[:4] if family == FAMILY_INET else laddr, lport,
             raddr[:4] if family == FAMILY_INET else raddr, rport, sock_id or None,
             sent if kind == _CLOSE else None, received if kind == _CLOSE else None, None),
        )
        for (ts, sock_id, sent, received, pid, netns, _aux, lport, rport, kind, family, _flags,
             _aux2, comm, laddr, raddr) in _FAST.iter_unpack(body)
    ]  # fmt: skip
    pieces = False
    for index, event in enumerate(events):
        if event[0] == ARGS:
            pieces = True
        elif event[0] not in _FAST_KINDS:
            events[index] = decode_event(EVENT.unpack_from(body, index * EVENT.size))
    return _with_command_lines(events, body) if pieces else events


def record_count(data: bytes) -> int:
    """How many 128-byte records the kernel put in a stage record (EV_ARGS pieces included)."""
    return int(HEADER.unpack_from(data)[0])


def holds_command_lines(data: bytes) -> bool:
    """Whether a record has EV_ARGS pieces (which only ``decode_record`` joins)."""
    kinds = memoryview(data)[HEADER.size + KIND_OFFSET :: EVENT.size]
    return ARGS in kinds.tobytes()


def _with_command_lines(events: list[Event], body: memoryview) -> list[Event]:
    """The events without their EV_ARGS pieces, each EXEC with the command line its pieces
    hold (``cmdline``; ``cmdline_truncated`` when the record holds less than all of it).
    A piece follows its EXEC directly, or another piece of it."""
    joined: list[Event] = []
    parts: dict[int, list[tuple[int, bytes]]] = {}  # by the EXEC's index in ``joined``
    wholes: dict[int, int] = {}
    for index, event in enumerate(events):
        if event[0] != ARGS:
            joined.append(event)
            continue
        fields = EVENT.unpack_from(body, index * EVENT.size)
        pid, offset, length, whole = fields[4], fields[6], fields[7], fields[12]
        owner = len(joined) - 1
        if owner < 0 or joined[owner].kind != Kind.EXEC or joined[owner].pid != pid or not length:
            continue  # not after its EXEC (the record is malformed), or an unused piece
        parts.setdefault(owner, []).append(
            (offset, (fields[13] + fields[14])[: min(length, ARGS_PIECE)])
        )
        wholes[owner] = whole
    for owner, pieces in parts.items():
        joined[owner] = _with_command_line(joined[owner], pieces, wholes[owner])
    return joined


def _with_command_line(event: Event, parts: list[tuple[int, bytes]], whole: int) -> Event:
    raw = b"".join(piece for _, piece in sorted(parts))
    extra = dict(event.extra or {})
    extra["cmdline"] = cmdline_text(raw)
    if whole > len(raw):
        extra["cmdline_truncated"] = True
    return event._replace(extra=extra)


def _add_cgroups(extra: dict[str, Any], unified: int, v1: int) -> None:
    """An EXEC's or FORK's cgroup ids (recorder.cgroups), held where a CLOSE keeps its
    socket's id and bytes sent."""
    if unified:
        extra["cgroup_id"] = unified
    if v1:
        extra["cgroup_v1_id"] = v1


def decode_event(fields: tuple[Any, ...]) -> Event:
    """One event from its unpacked fields (any kind; the rarer kinds only come here)."""
    (ts_ns, sock_id, bytes_sent, bytes_received, pid, netns, aux, lport, rport, kind, family,
     flags, aux2, comm_raw, tail) = fields  # fmt: skip
    comm = _cstring(comm_raw) or None
    if kind in (_CONNECT, _ACCEPT, _CLOSE, _FAILED):
        width = 4 if family == FAMILY_INET else 16
        unattributed = bool(flags & FLAG_UNATTRIBUTED) and not pid
        closing = kind == _CLOSE
        return Event(
            kind=kind,
            mono_ns=ts_ns,
            pid=None if unattributed else pid,
            comm=None if unattributed else comm,
            netns=netns or None,
            laddr=bytes(tail[:width]),
            lport=lport,
            raddr=bytes(tail[16 : 16 + width]),
            rport=rport,
            sock_id=sock_id or None,
            bytes_sent=bytes_sent if closing else None,
            bytes_received=bytes_received if closing else None,
            # sk_err: a positive errno, e.g. 111 ECONNREFUSED
            extra={"error": aux} if kind == _FAILED else None,
        )
    if kind == Kind.EXEC:
        extra: dict[str, Any] = {"ppid": aux, "filename": _cstring(tail)}
        _add_cgroups(extra, sock_id, bytes_sent)
        if flags & FLAG_TRUNCATED:
            extra["filename_truncated"] = True
        return Event(kind=kind, mono_ns=ts_ns, pid=pid, comm=comm, netns=netns or None, extra=extra)
    if kind == Kind.FORK:
        extra = {"ppid": aux}
        _add_cgroups(extra, sock_id, bytes_sent)
        return Event(kind=kind, mono_ns=ts_ns, pid=pid, comm=comm, netns=netns or None, extra=extra)
    if kind == Kind.OWNER:
        width = 4 if family == FAMILY_INET else 16
        return Event(
            kind=kind,
            mono_ns=ts_ns,
            pid=pid,
            comm=comm,
            netns=netns or None,
            laddr=bytes(tail[:width]),
            lport=lport,
            raddr=bytes(tail[16 : 16 + width]),
            rport=rport,
            sock_id=sock_id or None,
            extra={"owner": aux, "state": aux2},
        )
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


def decode_one(raw: bytes) -> Event:
    """One 128-byte event (what the C path hands back for the rarer kinds)."""
    return decode_event(EVENT.unpack(raw))


def raw_run(data: bytes) -> native.RawRun:
    """The events of one stage record kept as the kernel wrote them, in time order: the C
    path's counterpart of ``decode_record`` (which gives the same events as tuples)."""
    try:
        return native.raw_run(data)
    except ValueError as exc:
        raise DecodeError(str(exc)) from exc


def expand(items: list[Event | native.RawRun]) -> list[Event]:
    """Events and runs of events as one list of events, in order."""
    events: list[Event] = []
    for item in items:
        if native.is_run(item):
            events.extend(decode_record(item.record()))
        else:
            events.append(cast(Event, item))
    return events
