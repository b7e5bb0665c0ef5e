"""Hand-written logs for replay tests: events at given seconds, through the real writer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recorder.events import Event, Kind, Loss, Snapshot, SnapshotConnection, SnapshotProcess
from recorder.log.location import LogLocation, resolve
from recorder.log.writer import LogWriter
from tests.factories import MONO_BASE_NS, ROOT_NETNS, WALL_BASE_NS, ip, recording_writer

SECOND = 1_000_000_000


def mono(seconds: float) -> int:
    return MONO_BASE_NS + round(seconds * SECOND)


def wall(seconds: float) -> int:
    """The wall time (ns) of ``seconds`` after the recording's start."""
    return WALL_BASE_NS + round(seconds * SECOND)


class Builder:
    def __init__(self, writer: LogWriter) -> None:
        self.writer = writer

    def flush(self) -> None:
        self.writer.flush()

    def socket(
        self,
        kind: Kind,
        at: float,
        sock: int | None,
        pid: int | None,
        comm: str | None,
        local: str,
        remote: str,
        netns: int = ROOT_NETNS,
        **extra: Any,
    ) -> None:
        laddr, lport = _endpoint(local)
        raddr, rport = _endpoint(remote)
        self.writer.add(
            Event(
                int(kind),
                mono(at),
                pid,
                comm,
                netns,
                laddr,
                lport,
                raddr,
                rport,
                sock,
                extra.pop("bytes_sent", None),
                extra.pop("bytes_received", None),
                extra or None,
            )
        )

    def connect(
        self, at: float, sock: int, pid: int, comm: str, local: str, remote: str, **kw: Any
    ) -> None:
        self.socket(Kind.CONNECT, at, sock, pid, comm, local, remote, **kw)

    def accept(
        self, at: float, sock: int, pid: int, comm: str, local: str, remote: str, **kw: Any
    ) -> None:
        self.socket(Kind.ACCEPT, at, sock, pid, comm, local, remote, **kw)

    def close(
        self,
        at: float,
        sock: int | None,
        pid: int | None,
        comm: str | None,
        local: str,
        remote: str,
        **kw: Any,
    ) -> None:
        self.socket(Kind.CLOSE, at, sock, pid, comm, local, remote, **kw)

    def failed(self, at: float, sock: int, pid: int, comm: str, local: str, remote: str) -> None:
        self.socket(Kind.CONNECT_FAILED, at, sock, pid, comm, local, remote, error=111)

    def exec(self, at: float, pid: int, comm: str, ppid: int = 1) -> None:
        self.writer.add(
            Event(
                int(Kind.EXEC),
                mono(at),
                pid,
                comm,
                ROOT_NETNS,
                extra={"ppid": ppid, "filename": f"/usr/bin/{comm}"},
            )
        )

    def exit(self, at: float, pid: int, comm: str, ppid: int = 1) -> None:
        self.writer.add(
            Event(
                int(Kind.EXIT),
                mono(at),
                pid,
                comm,
                ROOT_NETNS,
                extra={"ppid": ppid, "exit_code": 0},
            )
        )

    def snapshot(
        self,
        at: float,
        connections: list[tuple[str, str, int, int | None]],
        processes: list[tuple[int, str] | tuple[int, str, str]] = (),  # type: ignore[assignment]
        walk_ms: float = 10,
        netns: int = ROOT_NETNS,
    ) -> None:
        rows = []
        for index, (local, remote, state, pid) in enumerate(connections):
            laddr, lport = _endpoint(local)
            raddr, rport = _endpoint(remote)
            rows.append(
                SnapshotConnection(netns, laddr, lport, raddr, rport, state, 1000 + index, 0, pid)
            )
        default_cgroup = "0::/system.slice/x.service"
        procs = tuple(
            SnapshotProcess(
                entry[0],
                1,
                entry[1],
                f"{entry[1]} --serve",
                entry[2] if len(entry) > 2 else default_cgroup,
                netns,
                mono(0),
            )
            for entry in processes
        )
        marker = Event(
            int(Kind.SNAPSHOT),
            mono(at),
            extra={"initial": False, "walk_ns": round(walk_ms * 1e6), "namespace_list": [netns]},
        )
        self.writer.add_snapshot(marker, Snapshot(connections=tuple(rows), processes=procs))

    def loss(self, start: float, end: float, lost: int) -> None:
        self.writer.add_loss(Loss(lost, mono(start), mono(end), "ring buffer full"))


def _endpoint(text: str) -> tuple[bytes, int]:
    host, _, port = text.rpartition(":")
    return ip(host.strip("[]")), int(port)


@contextmanager
def built_log(path: Path | LogLocation) -> Iterator[tuple[LogLocation, Builder]]:
    """A log at ``path`` with one recording; write to the builder, then replay the location."""
    location = path if isinstance(path, LogLocation) else resolve(str(path))
    with recording_writer(location) as (_, writer):
        builder = Builder(writer)
        yield location, builder
        writer.flush()
