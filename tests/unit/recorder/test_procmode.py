"""/proc mode: events inferred from the difference between two walks."""

from __future__ import annotations

from eventlog.events import TCP_ESTABLISHED, TCP_LISTEN, Kind, SnapshotConnection, SnapshotProcess
from recorder.procfs import ProcWalk
from recorder.procmode import ProcPoller

NS = 4026531833
LO = bytes([127, 0, 0, 1])


def proc(pid: int, comm: str, start: int = 1) -> SnapshotProcess:
    return SnapshotProcess(pid, 1, comm, comm, "0::/", NS, start)


def conn(
    lport: int, rport: int, pid: int | None, state: int = TCP_ESTABLISHED
) -> SnapshotConnection:
    return SnapshotConnection(NS, LO, lport, LO, rport, state, 1000 + lport, 0, pid)


def walk_of(
    mono: int, processes: list[SnapshotProcess], connections: list[SnapshotConnection]
) -> ProcWalk:
    return ProcWalk(processes=processes, connections=connections, started_mono_ns=mono)


def test_new_and_gone_connections_become_events_with_direction() -> None:
    poller = ProcPoller()
    server, client = proc(10, "server"), proc(20, "client")
    listener = conn(8080, 0, 10, TCP_LISTEN)
    preexisting = conn(8080, 40000, 10)
    poller.prime(walk_of(1, [server, client], [listener, preexisting]))
    events = poller.events(
        walk_of(
            2,
            [server, client],
            [listener, preexisting, conn(8080, 40001, 10), conn(40001, 8080, 20)],
        )
    )
    assert sorted((e.kind, e.pid, e.comm, e.lport) for e in events) == [
        (Kind.CONNECT, 20, "client", 40001),
        (Kind.ACCEPT, 10, "server", 8080),
    ]
    closes = poller.events(walk_of(3, [server, client], [listener]))
    assert sorted((e.kind, e.lport, e.rport, e.mono_ns) for e in closes) == [
        (Kind.CLOSE, 8080, 40000, 3),
        (Kind.CLOSE, 8080, 40001, 3),
        (Kind.CLOSE, 40001, 8080, 3),
    ]
    opened_ids = {e.sock_id for e in events}
    assert {e.sock_id for e in closes} == opened_ids | {None}


def test_process_start_and_exit_and_pid_reuse() -> None:
    poller = ProcPoller()
    poller.prime(walk_of(1, [proc(10, "a")], []))
    events = poller.events(walk_of(2, [proc(10, "b", start=5), proc(11, "c")], []))
    assert [(e.kind, e.pid, e.comm) for e in events] == [
        (Kind.EXIT, 10, "a"),
        (Kind.EXEC, 10, "b"),
        (Kind.EXEC, 11, "c"),
    ]


def test_a_socket_seen_before_its_process_waits_a_poll_for_its_owner() -> None:
    """A walk can read the socket tables before the fds of the process that just made the
    socket: the socket waits one poll for its owner and keeps the time it was first seen."""
    poller = ProcPoller()
    client = proc(20, "client")
    poller.prime(walk_of(1, [client], []))
    assert poller.events(walk_of(2, [client], [conn(40001, 8080, None)])) == []
    (opened,) = poller.events(walk_of(3, [client], [conn(40001, 8080, 20)]))
    assert (opened.kind, opened.pid, opened.comm, opened.mono_ns) == (Kind.CONNECT, 20, "client", 2)
    # Never found: recorded without one after the grace, from when it was first seen.
    assert poller.events(walk_of(4, [client], [conn(40001, 8080, 20), conn(40002, 9, None)])) == []
    (unowned,) = poller.events(walk_of(5, [client], [conn(40001, 8080, 20), conn(40002, 9, None)]))
    assert (unowned.lport, unowned.pid, unowned.mono_ns) == (40002, None, 4)
    # Gone while waiting: opened when first seen and closed when gone.
    still = [conn(40001, 8080, 20), conn(40002, 9, None)]
    assert poller.events(walk_of(6, [client], [*still, conn(40003, 9, None)])) == []
    events = poller.events(walk_of(7, [client], []))
    assert sorted((e.kind, e.lport, e.mono_ns) for e in events) == [
        (Kind.CONNECT, 40003, 6),
        (Kind.CLOSE, 40001, 7),
        (Kind.CLOSE, 40002, 7),
        (Kind.CLOSE, 40003, 7),
    ]
