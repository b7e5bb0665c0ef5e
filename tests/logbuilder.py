"""Hand-written logs for replay tests: events at given seconds, through the real writer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from eventlog.events import (
    TCP_ESTABLISHED,
    TCP_LISTEN,
    CgroupIds,
    ConntrackEntry,
    ContainerRecord,
    Event,
    Kind,
    Loss,
    Snapshot,
    SnapshotConnection,
    SnapshotProcess,
    conntrack_event,
    container_event,
    more_holders,
)
from eventlog.location import LogLocation, resolve
from eventlog.writer import LogWriter
from tests.factories import MONO_BASE_NS, ROOT_NETNS, WALL_BASE_NS, ip, recording_writer

SECOND = 1_000_000_000
NO_CGROUPS = CgroupIds(None, None)


def mono(seconds: float) -> int:
    return MONO_BASE_NS + round(seconds * SECOND)


def wall(seconds: float) -> int:
    """The wall time (ns) of ``seconds`` after the recording's start."""
    return WALL_BASE_NS + round(seconds * SECOND)


class Builder:
    def __init__(self, writer: LogWriter) -> None:
        self.writer = writer
        self._inodes: dict[tuple[str, str], int] = {}  # a snapshot socket's inode - 1000

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

    def exec(
        self,
        at: float,
        pid: int,
        comm: str,
        ppid: int = 1,
        netns: int = ROOT_NETNS,
        cgroups: CgroupIds = NO_CGROUPS,
    ) -> None:
        extra: dict[str, Any] = {"ppid": ppid, "filename": f"/usr/bin/{comm}"}
        if cgroups.unified is not None:
            extra["cgroup_id"] = cgroups.unified
        if cgroups.v1 is not None:
            extra["cgroup_v1_id"] = cgroups.v1
        self.writer.add(Event(int(Kind.EXEC), mono(at), pid, comm, netns, extra=extra))

    def container(self, at: float, record: ContainerRecord) -> None:
        self.writer.add(container_event(mono(at), record))

    def conntrack(self, at: float, entry: ConntrackEntry, kind: Kind = Kind.CT_NEW) -> None:
        self.writer.add(conntrack_event(kind, mono(at), entry))

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

    def fork(self, at: float, pid: int, ppid: int, comm: str) -> None:
        self.writer.add(
            Event(int(Kind.FORK), mono(at), pid, comm, ROOT_NETNS, extra={"ppid": ppid})
        )

    def owner(
        self, at: float, sock: int, pid: int, comm: str, local: str, remote: str, opener: int
    ) -> None:
        """``pid`` closed socket ``sock`` (which ``opener`` opened) in its own context."""
        self.socket(Kind.OWNER, at, sock, pid, comm, local, remote, owner=opener, state=9)

    def snapshot(
        self,
        at: float,
        connections: Sequence[tuple[str, str, int, int | tuple[int, ...] | None]],
        processes: list[tuple[int, str] | tuple[int, str, str]] = (),  # type: ignore[assignment]
        walk_ms: float = 10,
        netns: int = ROOT_NETNS,
        conntrack: Sequence[ConntrackEntry] | None = None,
    ) -> None:
        """``connections``: each with the pid holding it, or every pid holding it (a tuple);
        a socket's inode is 1000 + its (local, remote) pair's first index in the log's
        snapshots, the same in each. ``conntrack``: the entries its dump held (None: it did
        not dump conntrack)."""
        rows = []
        holders: dict[int, list[int]] = {}
        for local, remote, state, pid in connections:
            laddr, lport = _endpoint(local)
            raddr, rport = _endpoint(remote)
            inode = 1000 + self._inodes.setdefault((local, remote), len(self._inodes))
            pids = sorted(pid) if isinstance(pid, tuple) else [] if pid is None else [pid]
            holders[inode] = pids
            first = pids[0] if pids else None
            rows.append(
                SnapshotConnection(netns, laddr, lport, raddr, rport, state, inode, 0, first)
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
            extra={
                "initial": False,
                "walk_ns": round(walk_ms * 1e6),
                "namespace_list": [netns],
                "more_holders": more_holders(rows, holders),
                **({} if conntrack is None else {"conntrack": True}),
            },
        )
        self.writer.add_snapshot(marker, Snapshot(connections=tuple(rows), processes=procs,
                                                  conntrack=tuple(conntrack or ())))  # fmt: skip

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


# -- generated workloads, for property tests ----------------------------------------------

WORKLOAD_SERVER = "127.0.0.1:8080"
_ARGS = {"close": st.integers(0, 200), "snapshot": st.integers(0, 200),
         "exec": st.integers(1, 6), "exit": st.integers(1, 6), "flush": st.just(0)}  # fmt: skip


def workload_operation(*kinds: str) -> st.SearchStrategy[tuple[str, int]]:
    """One step of ``build_workload`` among ``kinds`` (see there), with its argument."""
    return st.one_of(
        *(st.tuples(st.just(kind), _ARGS.get(kind, st.integers(0, 40))) for kind in kinds)
    )


def build_workload(builder: Builder, operations: list[tuple[str, int]]) -> float:
    """Apply ``operations`` 50 ms apart, then an exec marking the end; return its time.

    pair: a local connect and its accept; outbound, outbound6: a connect to a remote server
    (IPv4; v4-mapped to IPv6); proc: one seen by /proc polling (half without a pid); unbound: a
    connect naming no local address or port; close: of a socket still open (its close names
    the owner when the open did not, and counts bytes); close-unknown: of a socket never
    opened; failed: a refused connect; snapshot: /proc showing some of the open sockets, a
    listener and a stranger; exec, exit: a process starts or ends; flush: a batch ends.
    """
    open_sockets: list[tuple[int, int | None, str, str]] = []  # sock, pid, local, remote
    next_sock, at = 1, 0.0
    for kind, arg in operations:
        at += 0.05
        if kind == "pair":
            client = f"127.0.0.1:{40000 + next_sock}"
            server = WORKLOAD_SERVER
            builder.connect(at, next_sock, 100 + arg % 3, f"c{arg % 3}", client, server)
            builder.accept(at, next_sock + 1, 200, "srv", server, client)
            open_sockets += [(next_sock, 100 + arg % 3, client, server),
                             (next_sock + 1, 200, server, client)]  # fmt: skip
            next_sock += 2
        elif kind in ("outbound", "outbound6", "proc"):
            local, remote = f"10.0.0.2:{50000 + next_sock}", f"93.184.216.{arg}:443"
            if kind == "outbound6":
                local, remote = f"[::ffff:10.0.0.2]:{50000 + next_sock}", f"[2001:db8::{arg}]:443"
            extra: dict[str, Any] = {"source": "proc"} if kind == "proc" else {}
            pid = None if kind == "proc" and arg % 2 else 300
            builder.socket(Kind.CONNECT, at, next_sock, pid, "out", local, remote, **extra)
            open_sockets.append((next_sock, pid, local, remote))
            next_sock += 1
        elif kind == "unbound":
            event = Event(Kind.CONNECT, mono(at), 300, "out", ROOT_NETNS, None, None,
                          ip("10.0.0.2"), 443, next_sock)  # fmt: skip
            builder.writer.add(event)
            open_sockets.append((next_sock, 300, "0.0.0.0:0", "10.0.0.2:443"))
            next_sock += 1
        elif kind == "close" and open_sockets:
            sock, pid, local, remote = open_sockets.pop(arg % len(open_sockets))
            closer = 400 + arg % 2 if pid is None else pid
            builder.close(at, sock, closer, "x", local, remote, bytes_sent=arg, bytes_received=1)
        elif kind == "close-unknown":
            builder.close(at, None, None, None, f"10.0.0.2:{30000 + arg}", "10.0.0.3:5432")
        elif kind == "failed":
            local = f"127.0.0.1:{45000 + next_sock}"
            builder.failed(at, next_sock, 100, "c0", local, "127.0.0.1:1")
            next_sock += 1
        elif kind == "snapshot":
            shown = [s for i, s in enumerate(open_sockets) if (i + arg) % 4]  # some go missing
            rows: list[tuple[str, str, int, int | None]] = [
                (local, remote, TCP_ESTABLISHED, pid) for _, pid, local, remote in shown
            ]
            rows += [("0.0.0.0:8080", "0.0.0.0:0", TCP_LISTEN, 200)]
            rows += [(f"10.9.0.1:{2000 + arg}", f"10.9.0.2:{60000 + arg}", TCP_ESTABLISHED, None)]
            builder.snapshot(at, rows, processes=[(200, "srv"), (300 + arg % 2, "p")])
        elif kind == "exec":
            builder.exec(at, 1000 + arg, f"proc{arg}")
        elif kind == "exit":
            builder.exit(at, 1000 + arg, f"proc{arg}")
        elif kind == "flush":
            builder.flush()
    builder.exec(at + 0.05, 999, "end-marker")
    return at + 0.05
