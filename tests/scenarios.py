"""Deterministic logs that exercise every part of replay, for the engine's golden answers.

Each scenario is written through the real log writer from a seeded random generator, so the
same name always gives the same log: events, snapshots (connections, processes, conntrack),
losses, clock steps, and several recordings of one or more hosts in one log. The golden
answers in tests/golden/engine were computed from these logs; see tests/engine_golden.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eventlog.clock import ClockModel
from eventlog.events import (
    TCP_CLOSE_WAIT,
    TCP_ESTABLISHED,
    TCP_LISTEN,
    ClockSample,
    ConntrackEntry,
    Event,
    Kind,
    Loss,
    Snapshot,
    SnapshotConnection,
    SnapshotProcess,
    conntrack_event,
)
from eventlog.location import resolve
from eventlog.recordings import (
    STOP_DURATION,
    HostIdentity,
    RecordingStart,
    begin_recording,
    close_abandoned_recordings,
    end_recording,
)
from eventlog.store import LogStore, Purpose, open_log
from eventlog.writer import LogWriter
from tests.factories import MONO_BASE_NS, ROOT_NETNS, WALL_BASE_NS, ip

SECOND = 1_000_000_000
NS_A = 4026532001  # a container's network namespace
NS_B = 4026532002
IPS_CONFIRMED_SEEN = 0x8 | 0x2 | 0x4 | 0x100  # seen reply, assured, confirmed: no NAT
IPS_DNAT = IPS_CONFIRMED_SEEN | 0x20 | 0x80  # DST_NAT + DST_NAT_DONE
IPS_SNAT = IPS_CONFIRMED_SEEN | 0x10 | 0x40  # SRC_NAT + SRC_NAT_DONE
PUBLIC = ["93.184.216.34", "140.82.112.3", "8.8.4.4", "2606:4700::1111"]
LAN = ["10.0.0.9", "192.168.7.20"]
CONTAINERS = {
    "docker": f"0::/system.slice/docker-{'d0' * 32}.scope",
    "containerd": f"0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{'c1' * 32}.scope",
    "podman": f"0::/machine.slice/libpod-{'f3' * 32}.scope",
    "none": "0::/system.slice/app.service",
}


@dataclass
class Sock:
    sock: int
    pid: int | None
    comm: str
    netns: int
    local: str
    remote: str
    ct: ConntrackEntry | None = None  # the conntrack entry of its connection, if NAT


@dataclass
class Host:
    """One recording being written: its writer and what it has open."""

    name: str
    writer: LogWriter
    offset_ns: int  # wall - mono for events written from now on
    addresses: list[str]
    rng: random.Random
    open: list[Sock] = field(default_factory=list)
    conntrack: dict[int, ConntrackEntry] = field(default_factory=dict)
    processes: dict[int, tuple[str, str]] = field(default_factory=dict)  # pid -> comm, cgroup
    next_sock: int = 1
    next_port: int = 40000
    next_ct: int = 1

    def port(self) -> int:
        self.next_port += 1
        return self.next_port


def _split(endpoint: str) -> tuple[bytes, int]:
    address, _, port = endpoint.rpartition(":")
    return ip(address.strip("[]")), int(port)


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class Writer:
    """Writes one host's events at log-time seconds (mono = base + seconds)."""

    def __init__(self, host: Host, mono_base: int) -> None:
        self.host = host
        self.mono_base = mono_base

    def mono(self, at: float) -> int:
        return self.mono_base + round(at * SECOND)

    def socket(self, kind: Kind, at: float, s: Sock, **extra: Any) -> None:
        laddr, lport = _split(s.local)
        raddr, rport = _split(s.remote)
        sent, received = extra.pop("bytes_sent", None), extra.pop("bytes_received", None)
        pid, comm = extra.pop("pid", s.pid), extra.pop("comm", s.comm)
        self.host.writer.add(
            Event(int(kind), self.mono(at), pid, comm, s.netns, laddr, lport, raddr, rport,
                  s.sock, sent, received, extra or None)
        )  # fmt: skip

    def conntrack(self, kind: Kind, at: float, entry: ConntrackEntry) -> None:
        self.host.writer.add(conntrack_event(kind, self.mono(at), entry))

    def process(self, kind: Kind, at: float, pid: int, comm: str, ppid: int = 1) -> None:
        extra = (
            {"ppid": ppid, "filename": f"/usr/bin/{comm}"}
            if kind == Kind.EXEC
            else {"ppid": ppid, "exit_code": 0}
        )
        self.host.writer.add(Event(int(kind), self.mono(at), pid, comm, ROOT_NETNS, extra=extra))

    def snapshot(self, at: float, rng: random.Random, with_conntrack: bool) -> None:
        host = self.host
        rows = []
        # Some are missed (a real walk misses only what closed during it); unbound ones never
        # show.
        shown = [s for s in host.open if rng.random() < 0.93 and not s.local.endswith(":0")]
        for index, s in enumerate(shown):
            laddr, lport = _split(s.local)
            raddr, rport = _split(s.remote)
            state = TCP_ESTABLISHED if rng.random() < 0.9 else TCP_CLOSE_WAIT
            pid = s.pid if rng.random() < 0.9 else None
            rows.append(SnapshotConnection(s.netns, laddr, lport, raddr, rport, state,
                                           5000 + index, 0, pid))  # fmt: skip
        # Listeners, and a connection only /proc knows (opened before anything recorded).
        for netns in (ROOT_NETNS, NS_A, NS_B):
            rows.append(
                SnapshotConnection(netns, bytes(4), 8080, bytes(4), 0, TCP_LISTEN, 1, 0, 20)
            )
        stranger = rng.randrange(20)
        rows.append(SnapshotConnection(ROOT_NETNS, ip("10.0.0.2"), 22, ip(LAN[stranger % 2]),
                                       50000 + stranger, TCP_ESTABLISHED, 2, 0, 50))  # fmt: skip
        rows.append(SnapshotConnection(ROOT_NETNS, ip("10.0.0.2"), 51000 + stranger,
                                       ip("10.0.0.3"), 5432, TCP_ESTABLISHED, 3, 0, None))  # fmt: skip
        processes = tuple(
            SnapshotProcess(pid, 1, comm, f"{comm} --serve --port {pid}", cgroup, ROOT_NETNS,
                            self.mono(0))
            for pid, (comm, cgroup) in sorted(host.processes.items())
            if rng.random() < 0.95
        )  # fmt: skip
        entries: tuple[ConntrackEntry, ...] = ()
        if with_conntrack:
            entries = tuple(e for _, e in sorted(host.conntrack.items()) if rng.random() < 0.85)
        namespaces = [ROOT_NETNS, NS_A, NS_B] if rng.random() < 0.8 else [ROOT_NETNS]
        marker = Event(
            int(Kind.SNAPSHOT),
            self.mono(at),
            extra={"initial": False, "walk_ns": 5_000_000, "namespace_list": namespaces,
                   "conntrack": with_conntrack},
        )  # fmt: skip
        host.writer.add_snapshot(
            marker, Snapshot(connections=tuple(rows), processes=processes, conntrack=entries)
        )


def _local_sock(h: Host, pid: int | None, comm: str, netns: int, local: str, remote: str) -> Sock:
    s = Sock(h.next_sock, pid, comm, netns, local, remote)
    h.next_sock += 1
    return s


OPERATIONS = (
    "pair", "pair6", "outbound", "inbound", "proc", "unbound", "close", "close", "close",
    "close-unknown", "failed", "exec", "exit", "flush", "snapshot", "dnat", "snat", "ct-plain",
    "ct-update", "ct-destroy",
)  # fmt: skip


def step(w: Writer, kind: str, at: float, with_nat: bool) -> None:
    """One random operation of a host at log time ``at``."""
    h, rng = w.host, w.host.rng
    pids = sorted(h.processes) or [100]
    pid = rng.choice(pids)
    comm = h.processes.get(pid, ("c", ""))[0]
    if kind in ("pair", "pair6"):
        loop = "127.0.0.1" if kind == "pair" else "::1"
        port = h.port()
        netns = rng.choice([ROOT_NETNS, ROOT_NETNS, NS_A])
        client = _local_sock(h, pid, comm, netns, _endpoint(loop, port), _endpoint(loop, 8080))
        server = _local_sock(h, 20, "srv", netns, _endpoint(loop, 8080), _endpoint(loop, port))
        w.socket(Kind.CONNECT, at, client)
        w.socket(Kind.ACCEPT, at + 0.0001, server)
        h.open += [client, server]
    elif kind in ("outbound", "inbound", "proc", "unbound"):
        local = _endpoint(rng.choice(h.addresses), h.port())
        remote = _endpoint(rng.choice(PUBLIC + LAN + ["10.0.0.7"]), rng.choice([443, 5432]))
        if kind == "inbound":
            s = _local_sock(h, 30, "nginx", ROOT_NETNS, _endpoint(h.addresses[0], 443),
                            _endpoint(rng.choice(PUBLIC + LAN), h.port()))  # fmt: skip
            w.socket(Kind.ACCEPT, at, s)
        elif kind == "unbound":
            s = _local_sock(h, pid, comm, ROOT_NETNS, "0.0.0.0:0", remote)
            event = Event(int(Kind.CONNECT), w.mono(at), pid, comm, ROOT_NETNS, None, None,
                          _split(remote)[0], _split(remote)[1], s.sock)  # fmt: skip
            h.writer.add(event)
        else:
            owner = None if kind == "proc" and rng.random() < 0.5 else pid
            s = _local_sock(h, owner, comm, ROOT_NETNS, local, remote)
            w.socket(Kind.CONNECT, at, s, **({"source": "proc"} if kind == "proc" else {}))
        h.open.append(s)
    elif kind == "close" and h.open:
        s = h.open.pop(rng.randrange(len(h.open)))
        closer = s.pid if s.pid is not None else 400
        w.socket(Kind.CLOSE, at, s, pid=closer, bytes_sent=rng.randrange(1000),
                 bytes_received=rng.randrange(1000))  # fmt: skip
        if s.ct is not None and rng.random() < 0.7:
            h.conntrack.pop(s.ct.ct_id, None)
            w.conntrack(Kind.CT_DESTROY, at + 0.0002, s.ct)
    elif kind == "close-unknown":
        # The close of a socket opened before the recording (a snapshot may have shown it).
        stranger = rng.randrange(20)
        laddr, lport = _split(f"10.0.0.2:{51000 + stranger}")
        h.writer.add(Event(int(Kind.CLOSE), w.mono(at), None, None, ROOT_NETNS, laddr, lport,
                           ip("10.0.0.3"), 5432))  # fmt: skip
    elif kind == "failed":
        s = _local_sock(h, pid, comm, ROOT_NETNS, f"127.0.0.1:{h.port()}", "127.0.0.1:1")
        w.socket(Kind.CONNECT_FAILED, at, s, error=111)
    elif kind == "exec":
        child = 1000 + rng.randrange(12)
        name = rng.choice(["curl", "psql", "api", "worker", "cron"])
        h.processes[child] = (name, CONTAINERS[rng.choice(list(CONTAINERS))])
        w.process(Kind.EXEC, at, child, name, ppid=pid)
    elif kind == "exit":
        gone = rng.choice(pids)
        comm_gone = h.processes.pop(gone, ("gone", ""))[0]
        w.process(Kind.EXIT, at, gone, comm_gone)
    elif kind == "flush":
        h.writer.flush()
    elif kind == "snapshot":
        w.snapshot(at, rng, with_conntrack=with_nat)
    elif not with_nat:
        return
    elif kind == "dnat":
        # A client in NS_A calls a virtual address that DNAT sends to a backend in NS_B.
        port = h.port()
        client = _local_sock(h, pid, comm, NS_A, f"10.214.0.1:{port}", "10.99.0.10:80")
        server = _local_sock(h, 21, "backend", NS_B, "10.214.0.2:9090", f"10.214.0.1:{port}")
        entry = ConntrackEntry(NS_A, ip("10.214.0.1"), ip("10.99.0.10"), port, 80,
                               ip("10.214.0.2"), ip("10.214.0.1"), 9090, port, IPS_DNAT, 3,
                               h.next_ct, 0, 0)  # fmt: skip
        h.next_ct += 1
        client.ct = entry
        h.conntrack[entry.ct_id] = entry
        w.conntrack(Kind.CT_NEW, at, entry)
        w.socket(Kind.CONNECT, at + 0.0001, client)
        w.socket(Kind.ACCEPT, at + 0.0002, server)
        h.open += [client, server]
    elif kind == "snat":
        port, translated = h.port(), h.port()
        client = _local_sock(h, pid, comm, NS_A, f"10.216.0.1:{port}", "10.216.0.2:9090")
        server = _local_sock(h, 21, "backend", NS_B, "10.216.0.2:9090", f"10.216.0.3:{translated}")
        entry = ConntrackEntry(NS_A, ip("10.216.0.1"), ip("10.216.0.2"), port, 9090,
                               ip("10.216.0.2"), ip("10.216.0.3"), 9090, translated, IPS_SNAT, 3,
                               h.next_ct, 0, 0)  # fmt: skip
        h.next_ct += 1
        client.ct = entry
        h.conntrack[entry.ct_id] = entry
        w.conntrack(Kind.CT_NEW, at, entry)
        w.socket(Kind.CONNECT, at + 0.0001, client)
        w.socket(Kind.ACCEPT, at + 0.0002, server)
        h.open += [client, server]
    elif kind == "ct-plain":
        port = h.port()
        entry = ConntrackEntry(ROOT_NETNS, ip("10.0.0.2"), ip("10.0.0.7"), port, 443,
                               ip("10.0.0.7"), ip("10.0.0.2"), 443, port, IPS_CONFIRMED_SEEN, 3,
                               h.next_ct, 0, 0)  # fmt: skip
        h.next_ct += 1
        h.conntrack[entry.ct_id] = entry
        w.conntrack(Kind.CT_NEW, at, entry)
    elif kind == "ct-update" and h.conntrack:
        ct_id = rng.choice(sorted(h.conntrack))
        entry = h.conntrack[ct_id]._replace(tcp_state=rng.randrange(1, 9))
        h.conntrack[ct_id] = entry
        w.conntrack(Kind.CT_UPDATE, at, entry)
    elif kind == "ct-destroy" and h.conntrack:
        ct_id = rng.choice(sorted(h.conntrack))
        w.conntrack(Kind.CT_DESTROY, at, h.conntrack.pop(ct_id))


@contextmanager
def host_recording(
    store: LogStore,
    name: str,
    start_at: float,
    addresses: list[str],
    seed: int,
    boot: int = 1,
    skew_ns: int = 0,
) -> Iterator[tuple[Host, Writer]]:
    """A recording of host ``name`` starting ``start_at`` seconds after the base time, its
    wall clock ``skew_ns`` ahead of the others'."""
    mono_base = MONO_BASE_NS + round(start_at * SECOND)
    offset = WALL_BASE_NS - MONO_BASE_NS + skew_ns
    start = ClockSample(mono_base, offset, 100)
    identity = HostIdentity(name, name[0] * 32, f"boot-{name}-{boot}", "6.18.0")
    local = {"addresses": addresses, "networks": ["10.0.0.0/24", "10.214.0.0/24"]}
    recording_id = begin_recording(
        store,
        RecordingStart(identity, "ebpf", start, ROOT_NETNS, options={"local": local},
                       recorder_pid=4242),
    )  # fmt: skip
    writer = LogWriter(store, recording_id, ClockModel([start]))
    host = Host(name, writer, offset, addresses, random.Random(seed))
    host.processes = {100: ("client", CONTAINERS["docker"]), 20: ("srv", CONTAINERS["none"]),
                      21: ("backend", CONTAINERS["podman"]), 30: ("nginx", CONTAINERS["containerd"]),
                      50: ("sshd", CONTAINERS["none"])}  # fmt: skip
    try:
        yield host, Writer(host, MONO_BASE_NS)
    finally:
        writer.flush()
        writer.close()


def _clock_step(w: Writer, at: float, delta_ns: int) -> None:
    """From ``at`` on, the wall clock reads ``delta_ns`` later (earlier if negative)."""
    w.host.offset_ns += delta_ns
    w.host.writer.add_clock_sample(ClockSample(w.mono(at), w.host.offset_ns, 100))


def _run(
    writers: list[Writer], operations: int, seed: int, with_nat: bool,
    extras: Callable[[Writer, int, float], None] | None = None, start: float = 1.0,
) -> float:  # fmt: skip
    """``operations`` random steps 50 ms apart from ``start``, alternating between
    ``writers``; returns the time of the last."""
    rng = random.Random(seed)
    at = start
    for number in range(operations):
        w = writers[number % len(writers)]
        at += 0.05
        if extras is not None:
            extras(w, number, at)
        step(w, rng.choice(OPERATIONS), at, with_nat)
    return at


def _initial_snapshot(w: Writer, with_nat: bool, at: float = 0.5) -> None:
    w.snapshot(at, w.host.rng, with_conntrack=with_nat)


def build_workload_log(
    path: Path | str, seed: int, with_nat: bool, operations: int = 160, host: str = "alpha"
) -> None:
    """One host, one recording: random traffic, snapshots, NAT if asked."""
    with open_log(resolve(str(path)), Purpose.RECORD) as store:
        with host_recording(store, host, 0, ["10.0.0.2", "10.214.0.1"], seed) as (host_, w):
            _initial_snapshot(w, with_nat)
            end = _run([w], operations, seed, with_nat)
            w.process(Kind.EXEC, end + 0.5, 999, "end-marker")
        end_recording(store, host_.writer.recording_id, w.mono(end + 1), STOP_DURATION)


def build_fleet_log(path: Path | str, seed: int) -> None:
    """Two hosts recording into one log at once, a crash, a second recording, losses, and
    clock steps forward and back."""
    with open_log(resolve(str(path)), Purpose.RECORD) as store, ExitStack() as stack:
        _, wa = stack.enter_context(host_recording(store, "alpha", 0, ["10.0.0.2"], seed))
        beta, wb = stack.enter_context(host_recording(store, "beta", 0.2, ["10.0.0.3"], seed + 1))
        for w in (wa, wb):
            _initial_snapshot(w, True)

        def extras(w: Writer, number: int, at: float) -> None:
            if number == 40 and w is wa:
                _clock_step(w, at, 2 * SECOND)  # NTP stepped the clock forward
            if number == 81 and w is wb:
                _clock_step(w, at, -700_000_000)  # and back
            if number in (30, 95):
                w.host.writer.add_loss(Loss(3 + number, w.mono(at - 0.2), w.mono(at - 0.1),
                                            "ring buffer full"))  # fmt: skip

        _run([wa, wb], 140, seed, True, extras)
        wa.host.writer.flush()
        # alpha's recorder dies here (its recording is never closed); beta goes on.
        end_b = _run([wb], 30, seed + 2, True, start=8.1)
        end_recording(store, beta.writer.recording_id, wb.mono(end_b + 0.3), STOP_DURATION)
    restart = end_b + 1.0
    with open_log(resolve(str(path)), Purpose.RECORD) as store:
        # The next recorder of alpha finds the dead one's recording and marks it crashed.
        close_abandoned_recordings(store, HostIdentity("alpha", "a" * 32, "boot-alpha-2", "6.18.0"))
        with host_recording(store, "alpha", restart, ["10.0.0.2"], seed + 3, boot=2) as (again, wc):
            _initial_snapshot(wc, True, at=restart + 0.1)
            end_c = _run([wc], 40, seed + 4, True, start=restart + 0.2)
            wc.process(Kind.EXEC, end_c + 0.5, 999, "end-marker")
        end_recording(store, again.writer.recording_id, wc.mono(end_c + 1), STOP_DURATION)


CROSS_PORT = 5432  # beta's server, which alpha's clients call
CROSS_VIP = "10.99.0.30"  # a virtual address that DNAT on alpha sends to beta's server
CROSS_SNAT = "10.0.0.12"  # alpha's address as beta sees it through SNAT


def cross_call(client: Writer, server: Writer, at: float, how: str) -> None:
    """A client on ``client``'s host calls the server on ``server``'s host: directly, through
    DNAT on the client's host (``dnat``), through its SNAT (``snat``), or at a port DNAT on
    the server's host publishes (``published``). Each host records its own socket, by its
    own clock; they close at random later, each on its own."""
    a, b = client.host, server.host
    port = a.port()
    local = _endpoint(a.addresses[0], port)
    real = _endpoint(b.addresses[0], CROSS_PORT)
    dialled = {"dnat": _endpoint(CROSS_VIP, 80), "published": _endpoint(b.addresses[0], 8080)}
    dialled_to = dialled.get(how, real)
    seen = _endpoint(CROSS_SNAT, a.port()) if how == "snat" else local
    c = _local_sock(a, 100, "client", ROOT_NETNS, local, dialled_to)
    s = _local_sock(b, 20, "srv", ROOT_NETNS, real, seen)
    if how != "direct":
        # The rewriting host's conntrack entry: the tuple as dialled, and as answered.
        rewriter, rewrites = (server, b) if how == "published" else (client, a)
        reply_src, reply_sport = _split(real)
        reply_dst, reply_dport = _split(seen)
        status = IPS_SNAT if how == "snat" else IPS_DNAT
        entry = ConntrackEntry(ROOT_NETNS, _split(local)[0], _split(dialled_to)[0], port,
                               _split(dialled_to)[1], reply_src, reply_dst, reply_sport,
                               reply_dport, status, 3, rewrites.next_ct, 0, 0)  # fmt: skip
        rewrites.next_ct += 1
        rewrites.conntrack[entry.ct_id] = entry
        if rewrites is a:
            c.ct = entry
        rewriter.conntrack(Kind.CT_NEW, at, entry)
    client.socket(Kind.CONNECT, at + 0.0001, c)
    server.socket(Kind.ACCEPT, at + 0.0003, s)
    a.open.append(c)
    b.open.append(s)


def build_cross_host_log(path: Path | str, seed: int, skew_ns: int = 300_000_000) -> None:
    """Two hosts in one log whose clients call each other's servers (directly, through DNAT
    and SNAT on the client's host, and DNAT on the server's) among random traffic of their own; beta's clock reads ``skew_ns``
    ahead of alpha's."""
    with open_log(resolve(str(path)), Purpose.RECORD) as store, ExitStack() as stack:
        alpha, wa = stack.enter_context(host_recording(store, "alpha", 0, ["10.0.0.2"], seed))
        beta, wb = stack.enter_context(
            host_recording(store, "beta", 0.1, ["10.0.0.3"], seed + 1, skew_ns=skew_ns)
        )
        for w in (wa, wb):
            _initial_snapshot(w, True)
        rng = random.Random(seed)

        def extras(w: Writer, number: int, at: float) -> None:
            if number % 3 == 0:
                other = wb if w is wa else wa
                how = rng.choice(["direct", "direct", "dnat", "snat", "published"])
                cross_call(w, other, at + 0.01, how)

        end = _run([wa, wb], 150, seed, True, extras)
        for w in (wa, wb):
            w.process(Kind.EXEC, end + 0.5, 999, "end-marker")
    with open_log(resolve(str(path)), Purpose.RECORD) as store:
        for host, w in ((alpha, wa), (beta, wb)):
            end_recording(store, host.writer.recording_id, w.mono(end + 1), STOP_DURATION)


SCENARIOS: dict[str, Callable[[Path | str], None]] = {  # a SQLite path or a URL
    "workload-1": lambda p: build_workload_log(p, 1, with_nat=False),
    "workload-2": lambda p: build_workload_log(p, 2, with_nat=False, operations=240),
    "nat-1": lambda p: build_workload_log(p, 11, with_nat=True),
    "nat-2": lambda p: build_workload_log(p, 12, with_nat=True, operations=240),
    "fleet": lambda p: build_fleet_log(p, 21),
}
