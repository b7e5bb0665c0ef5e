"""The connection table at a moment: sockets from the replay state, paired into connections.

Each local socket is one side of a connection. The side that connected is the client; a
socket known only from /proc gets its side from the listening sockets of the same snapshot,
else by Scope's rule that the lower local port is the server. Two sockets of this host whose
addresses mirror each other (and, on loopback, share a network namespace) and whose lifetimes
overlap are the two ends of one connection.

This module is the definition. Where the C modules are built, the sockets known from their
events are read and made by the run reader (``RunReader.socket_views``) and the pairing runs
in ``replay/_table.c``; both give what the code here gives (tests/unit/replay/
test_table_native.py), and hand back to it what they do not take (NAT, odd values).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, is_dataclass
from functools import lru_cache

from eventlog.events import TCP_LISTEN, Kind, LoggedEvent, Snapshot, SnapshotConnection
from eventlog.reader import LogReader, Recording, decode_extra
from replay import native
from replay.engine import Window
from replay.fold import Closed, SocketRef
from replay.nat import Translation, nat_index
from replay.state import TupleKey

_CONNECT = int(Kind.CONNECT)
CLIENT = "client"
SERVER = "server"
CLOSE_ONLY_NOTE = "opened before anything recorded"
MISSING_NOTE = "gone by the next /proc snapshot (its close was not captured)"


@lru_cache(maxsize=1 << 16)
def address_text(raw: bytes | None) -> str:
    """An address as people write it; v4-mapped IPv6 shown as plain IPv4."""
    if not raw:
        return "?"
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


@lru_cache(maxsize=1 << 16)
def endpoint_text(raw: bytes | None, port: int | None) -> str:
    text = address_text(raw)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


@lru_cache(maxsize=1 << 12)
def is_loopback(raw: bytes | None) -> bool:
    return bool(raw) and ipaddress.ip_address(address_text(raw)).is_loopback


@dataclass(slots=True)
class SocketView:
    """One local socket, whole, as replay saw it."""

    recording_id: int
    host_id: str
    role: str | None
    pid: int | None
    comm: str | None
    netns: int | None
    laddr: bytes
    lport: int
    raddr: bytes
    rport: int
    opened_ns: int | None
    closed_ns: int | None
    source: str
    origin: tuple[int, int]  # (position, ordinal): stable identity in the log
    positions: list[int] = field(default_factory=list)
    nat: Translation | None = None  # conntrack rewrote this (client) socket's connection
    known_ns: int | None = None  # from when replay knows of it (open event, snapshot, close)
    close_event_ns: int | None = None  # its close event, if one came
    missing_ns: int | None = None  # the snapshot that no longer showed it, if any
    close_note: str | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None

    def server_side_view(self) -> tuple[tuple[str, int], tuple[str, int]]:
        """(client, server) as the server's socket sees them: after any NAT."""
        if self.nat is not None:
            seen = self.nat.server_view
            return (seen[0], seen[1]), (seen[2], seen[3])
        return self.ends()

    def ends(self) -> tuple[tuple[str, int], tuple[str, int]]:
        """(client, server) as this socket saw them."""
        local = (address_text(self.laddr), self.lport)
        remote = (address_text(self.raddr), self.rport)
        return (remote, local) if self.role == SERVER else (local, remote)

    @property
    def client(self) -> tuple[str, int]:
        return self.ends()[0]

    @property
    def server(self) -> tuple[str, int]:
        return self.ends()[1]


@dataclass(slots=True, frozen=True)
class ConnectionRow:
    """One connection in a table. Frozen: the C pairing leaves a row whose fields hold no
    container out of the cyclic collector's walks (it cannot be part of a cycle)."""

    id: str
    state: str  # open, closed, failed
    direction: str  # local, outbound, inbound
    host: str
    client: str
    server: str
    opened_ns: int | None
    closed_ns: int | None
    client_pid: int | None = None
    client_comm: str | None = None
    client_netns: int | None = None
    server_pid: int | None = None
    server_comm: str | None = None
    server_netns: int | None = None
    nat_destination: str | None = None  # the real backend, when conntrack rewrote the destination
    nat_source: str | None = None  # the client as the server saw it, when the source was rewritten
    source: str = "events"
    positions: tuple[int, ...] = ()  # the log positions that made it, ascending
    note: str | None = None
    bytes_sent: int | None = None  # client to server, as the client's kernel counted
    bytes_received: int | None = None
    # For the topology views: the endpoints apart, and which sides are sockets of this host.
    client_ip: str = ""
    client_port: int = 0
    server_ip: str = ""
    server_port: int = 0
    client_local: bool = False
    server_local: bool = False

    @property
    def duration_ns(self) -> int | None:
        if self.opened_ns is None or self.closed_ns is None or self.state == "failed":
            return None
        return self.closed_ns - self.opened_ns

    def sort_key(self) -> tuple[int, int, str]:
        return (self.opened_ns if self.opened_ns is not None else -1, self.closed_ns or 0, self.id)


_ROW_FIELDS = tuple(f.name for f in fields(ConnectionRow))  # the order ConnectionRow takes them
_VIEW_FIELDS = tuple(f.name for f in fields(SocketView))


def plain_slots(cls: type) -> bool:
    """Whether the C loops may make ``cls`` by setting its slots instead of calling it (a
    tenth of the cost): a dataclass with slots whose generated __init__ only sets them."""
    return is_dataclass(cls) and "__slots__" in vars(cls) and not hasattr(cls, "__post_init__")


def frozen(cls: type) -> bool:
    """Whether ``cls`` is a dataclass whose fields cannot be assigned after __init__."""
    params = getattr(cls, "__dataclass_params__", None)
    return bool(getattr(params, "frozen", False))


_ROW_PLAIN = plain_slots(ConnectionRow)
_ROW_FROZEN = frozen(ConnectionRow)
_VIEW_PLAIN = plain_slots(SocketView)


class _Materializer:
    """Turns references in a replay window into whole sockets, reading rows by position."""

    def __init__(self, reader: LogReader, window: Window) -> None:
        self.reader = reader
        self.window = window
        self.recordings: dict[int, Recording] = {r.id: r for r in reader.recordings()}
        self.hosts = {r.id: r.host_id for r in self.recordings.values()}
        self._snapshots: dict[int, Snapshot] = {}
        self._events: dict[int, LoggedEvent] = {}

    def prefetch(self, positions: Iterable[int]) -> None:
        wanted = [p for p in positions if p not in self._events]
        if wanted:
            self._events.update(self.reader.events_at(wanted))

    def event(self, position: int) -> LoggedEvent:
        if position not in self._events:
            self.prefetch([position])
        return self._events[position]

    def snapshot(self, position: int) -> Snapshot:
        if position not in self._snapshots:
            self._snapshots[position] = self.reader.snapshot(position)
        return self._snapshots[position]

    def host(self, recording_id: int) -> str:
        return self.hosts.get(recording_id, "?")

    def from_event(self, event: LoggedEvent) -> SocketView:
        extra, wall_ns, position = event.extra, event.wall_ns, event.position
        return SocketView(
            event.recording_id,
            self.hosts.get(event.recording_id, "?"),
            CLIENT if event.kind == _CONNECT else SERVER,
            event.pid,
            event.comm,
            event.netns,
            event.laddr or b"",
            event.lport or 0,
            event.raddr or b"",
            event.rport or 0,
            wall_ns,
            None,
            "proc" if extra and extra.get("source") == "proc" else "events",
            (position, 0),
            [position],
            known_ns=wall_ns,
        )

    def from_snapshot(self, position: int, key: TupleKey) -> SocketView:
        snapshot = self.snapshot(position)
        marker = self.event(position)
        row = _find_connection(snapshot, key)
        comms = {p.pid: p.comm for p in snapshot.processes}
        pid = row.pid if row else None
        ordinal = snapshot.connections.index(row) + 1 if row else 0
        return SocketView(
            recording_id=key[0],
            host_id=self.host(key[0]),
            role=_infer_role(snapshot, key),
            pid=pid,
            comm=comms.get(pid) if pid is not None else None,
            netns=key[1],
            laddr=key[2],
            lport=key[3],
            raddr=key[4],
            rport=key[5],
            opened_ns=None,
            closed_ns=None,
            source="snapshot",
            origin=(marker.position, ordinal),
            positions=[position],
            known_ns=marker.wall_ns,
        )

    def from_close(self, close: LoggedEvent) -> SocketView:
        """A socket whose only trace is its close: side unknown, start unknown."""
        key = (close.recording_id, close.netns or 0, close.laddr or b"", close.lport or 0,
               close.raddr or b"", close.rport or 0)  # fmt: skip
        role = SERVER if (close.lport or 0) < (close.rport or 0) else CLIENT
        view = SocketView(
            recording_id=key[0],
            host_id=self.host(key[0]),
            role=role,
            pid=close.pid,
            comm=close.comm,
            netns=close.netns,
            laddr=key[2],
            lport=key[3],
            raddr=key[4],
            rport=key[5],
            opened_ns=None,
            closed_ns=None,
            source="events",
            origin=(close.position, 0),
            positions=[],
            close_note=CLOSE_ONLY_NOTE,
            known_ns=close.wall_ns,
        )
        return view

    def opened(self, ref: SocketRef, close: LoggedEvent | None) -> SocketView | None:
        if ref.open_position is not None:
            return self.from_event(self.event(ref.open_position))
        if ref.snapshot_position is not None and ref.tuple_key is not None:
            return self.from_snapshot(ref.snapshot_position, ref.tuple_key)
        if close is not None:
            return self.from_close(close)
        return None

    def views_from_events(
        self, runs: native.RunReader, opens: list[int], pairs: list[tuple[int, int]]
    ) -> tuple[list[SocketView], list[SocketView]] | None:
        """What ``from_event`` makes of ``opens`` and ``closed_pair`` of the ``pairs`` closed in
        the window, read and made in C; None where the C reader declines."""
        start_ns, at_ns = self.window.start_ns, self.window.at_ns
        if not native.fits_int64(start_ns, at_ns):
            return None
        comms, namespaces = self.reader.dictionaries()
        clocks = {rid: self.reader.clock(rid).segments() for rid in self.recordings}
        made: tuple[list[SocketView], list[SocketView]] | None = runs.socket_views(
            opens, pairs, start_ns, at_ns, clocks, self.hosts, comms, namespaces, SocketView,
            _VIEW_FIELDS, decode_extra, _VIEW_PLAIN,
        )  # fmt: skip
        return made

    def closed_pair(self, opened: LoggedEvent, close: LoggedEvent) -> SocketView:
        """``closed`` for a socket whose open and close events were both folded."""
        return _closed_by(self.from_event(opened), close)

    def closed(self, item: Closed) -> SocketView | None:
        close = self.event(item.close_position) if item.close_position is not None else None
        view = self.opened(item.ref, close)
        if view is None:
            return None
        if item.missing_at is not None:
            view.missing_ns = self.event(item.missing_at).wall_ns
        if close is not None:
            _closed_by(view, close)
        elif item.missing_at is not None:
            view.closed_ns = self.event(item.missing_at).wall_ns
            view.positions.append(item.missing_at)
            view.close_note = MISSING_NOTE
        return view


def _closed_by(view: SocketView, close: LoggedEvent) -> SocketView:
    """``view`` ended by its close event, which also names the owner if the open did not."""
    view.closed_ns = view.close_event_ns = close.wall_ns
    view.positions.append(close.position)
    view.bytes_sent, view.bytes_received = close.bytes_sent, close.bytes_received
    if close.pid is not None and view.pid is None:
        view.pid, view.comm = close.pid, close.comm
    return view


def _find_connection(snapshot: Snapshot, key: TupleKey) -> SnapshotConnection | None:
    for conn in snapshot.connections:
        if (conn.netns, conn.laddr, conn.lport, conn.raddr, conn.rport) == key[1:]:
            return conn
    return None


def _infer_role(snapshot: Snapshot, key: TupleKey) -> str:
    """Server if the local port listens in the socket's namespace, else the lower port wins."""
    _, netns, laddr, lport, _, rport = key
    for conn in snapshot.connections:
        listening = conn.state == TCP_LISTEN and conn.netns == netns and conn.lport == lport
        if listening and (conn.laddr == laddr or not any(conn.laddr)):
            return SERVER
    return SERVER if lport < rport else CLIENT


def _closed_order(item: Closed) -> tuple[int, int, int, int, TupleKey | tuple[()]]:
    """A socket that ended, ordered by where it ended in the log (then by what it was)."""
    ref, missing_at = item.ref, item.missing_at if item.missing_at is not None else -1
    ended = item.close_position if item.close_position is not None else missing_at
    opened = ref.open_position if ref.open_position is not None else -1
    seen = ref.snapshot_position if ref.snapshot_position is not None else -1
    return (ended, missing_at, opened, seen, ref.tuple_key or ())


def sockets_in_window(
    reader: LogReader, window: Window, runs: native.RunReader | None = None
) -> list[SocketView]:
    """Every socket open at the window's end or closed inside it, whole. ``runs``, the C
    reader of the same log, makes the sockets known from their events (most of them)."""
    m = _Materializer(reader, window)
    state, retained = window.state, window.retained
    start_ns, at_ns = window.start_ns, window.at_ns
    opens = sorted(state.open_positions())
    # What the fold retained comes in no defined order (the C fold and Fold._apply_fast keep
    # the same pairs in different orders): sorted here, so the sockets come in one order.
    pairs = sorted(retained.pairs)
    from_events = m.views_from_events(runs, opens, pairs) if runs is not None else None
    if from_events is None:
        m.prefetch(opens)
        m.prefetch(p for pair in pairs for p in pair)
        from_events = [m.from_event(m.event(p)) for p in opens], []
        # The bulk of a busy window: sockets whose open and close were both folded in it.
        for open_position, close_position in pairs:
            close = m.event(close_position)
            if start_ns < close.wall_ns <= at_ns:
                from_events[1].append(m.closed_pair(m.event(open_position), close))
    m.prefetch(
        p for item in retained.closed for p in (item.ref.open_position, item.close_position) if p
    )
    views = from_events[0]
    views.extend(m.from_snapshot(p, key) for key, p in sorted(state.snapshot_sockets.items()))
    views.extend(from_events[1])
    closed = sorted(retained.closed, key=_closed_order) + [
        Closed(SocketRef(open_position), None, missing_at=missed_at)
        for open_position, missed_at in sorted(state.missing_entries())
    ]
    for item in closed:
        view = m.closed(item)
        if view is not None and view.closed_ns is not None and start_ns < view.closed_ns <= at_ns:
            views.append(view)
    nat = nat_index(reader, state)
    if len(nat):
        for view in views:
            if view.role != SERVER:
                client, server = view.client, view.server
                view.nat = nat.lookup(view.recording_id, view.netns, (*client, *server))
    return views


def failed_attempts(reader: LogReader, window: Window) -> list[ConnectionRow]:
    m = _Materializer(reader, window)
    m.prefetch(window.retained.failed)
    rows = []
    for position in sorted(window.retained.failed):
        event = m.event(position)
        error = (event.extra or {}).get("error")
        rows.append(
            ConnectionRow(
                id=f"{position}.0",
                state="failed",
                direction="outbound",
                host=m.host(event.recording_id),
                client=endpoint_text(event.laddr, event.lport),
                server=endpoint_text(event.raddr, event.rport),
                opened_ns=event.wall_ns,
                closed_ns=event.wall_ns,
                client_pid=event.pid,
                client_comm=event.comm,
                client_netns=event.netns,
                positions=(position,),
                note=f"connect failed: errno {error}" if error else "connect failed",
                client_ip=address_text(event.laddr),
                client_port=event.lport or 0,
                server_ip=address_text(event.raddr),
                server_port=event.rport or 0,
                client_local=True,
            )
        )
    return rows


def _pair_key(view: SocketView) -> tuple[object, ...]:
    client, server = view.server_side_view()
    loopback = is_loopback(view.laddr) or is_loopback(view.raddr)
    return (view.host_id, client, server, view.netns if loopback else None)


def _overlaps(a: SocketView, b: SocketView) -> bool:
    a_start = a.opened_ns if a.opened_ns is not None else -1
    b_start = b.opened_ns if b.opened_ns is not None else -1
    a_end = a.closed_ns if a.closed_ns is not None else 1 << 63
    b_end = b.closed_ns if b.closed_ns is not None else 1 << 63
    return a_start <= b_end and b_start <= a_end


def _open_order(view: SocketView) -> tuple[int, tuple[int, int]]:
    return (view.opened_ns if view.opened_ns is not None else -1, view.origin)


def pair(views: list[SocketView], use_native: bool = True) -> list[ConnectionRow]:
    """Connections from sockets, in the order their first sockets come (a stable order);
    ``connection_table`` sorts them by open time, close time and id. In C where the module
    is built (``replay/_table.c``; it leaves sockets behind NAT to the definition below)."""
    if use_native and native.PAIRS_AVAILABLE:
        made = native.pair_rows(
            views, ConnectionRow, _ROW_FIELDS, address_text, is_loopback, _ROW_PLAIN, _ROW_FROZEN
        )
        if made is not None:
            return made
    groups: dict[tuple[object, ...], list[SocketView]] = {}
    for view in views:
        key = _pair_key(view)
        group = groups.get(key)
        if group is None:
            groups[key] = [view]
        else:
            group.append(view)
    rows: list[ConnectionRow] = []
    for members in groups.values():
        members.sort(key=_open_order)
        clients = [v for v in members if v.role != SERVER]
        servers = [v for v in members if v.role == SERVER]
        # The k-th client (by open time) pairs with the k-th server if their lives overlap:
        # a rule simple enough to state in SQL too (scope-query's connections_at).
        for rank in range(max(len(clients), len(servers))):
            client = clients[rank] if rank < len(clients) else None
            server = servers[rank] if rank < len(servers) else None
            if client is not None and server is not None and not _overlaps(client, server):
                rows.extend((_row(client, None), _row(None, server)))
            else:
                rows.append(_row(client, server))
    return rows


def _row(client: SocketView | None, server: SocketView | None) -> ConnectionRow:
    sides = [v for v in (client, server) if v is not None]
    first = min(sides, key=lambda v: v.origin)
    seen_client, seen_server = (client or first).ends()  # as the client saw them, if ours
    nat = client.nat if client is not None else None
    real = nat.real_destination if nat else None
    source_nat = nat.translated_source if nat else None
    opened = [v.opened_ns for v in sides if v.opened_ns is not None]
    closed = [v.closed_ns for v in sides if v.closed_ns is not None]
    is_open = any(v.closed_ns is None for v in sides)
    notes = sorted({v.close_note for v in sides if v.close_note})
    direction = "local" if client and server else ("outbound" if client else "inbound")
    return ConnectionRow(
        id=f"{first.origin[0]}.{first.origin[1]}",
        state="open" if is_open else "closed",
        direction=direction,
        host=first.host_id,
        client=_endpoint(*seen_client),
        server=_endpoint(*seen_server),
        opened_ns=min(opened) if opened else None,
        closed_ns=None if is_open else (max(closed) if closed else None),
        client_pid=client.pid if client else None,
        client_comm=client.comm if client else None,
        client_netns=client.netns if client else None,
        server_pid=server.pid if server else None,
        server_comm=server.comm if server else None,
        server_netns=server.netns if server else None,
        source="+".join(sorted({v.source for v in sides})),
        positions=tuple(sorted({p for v in sides for p in v.positions})),
        note="; ".join(notes) or None,
        bytes_sent=client.bytes_sent if client else (server.bytes_received if server else None),
        bytes_received=client.bytes_received if client else (server.bytes_sent if server else None),
        client_ip=seen_client[0],
        client_port=seen_client[1],
        server_ip=real[0] if real else seen_server[0],
        server_port=real[1] if real else seen_server[1],
        client_local=client is not None,
        server_local=server is not None,
        nat_destination=_endpoint(*real) if real else None,
        nat_source=_endpoint(*source_nat) if source_nat else None,
    )


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def connection_table(
    reader: LogReader, window: Window, runs: native.RunReader | None = None
) -> list[ConnectionRow]:
    """The window's connections, sorted. ``runs``: the C reader of the same log, if any."""
    rows = pair(sockets_in_window(reader, window, runs)) + failed_attempts(reader, window)
    return sort_rows(rows)


def sort_rows(rows: list[ConnectionRow], use_native: bool = True) -> list[ConnectionRow]:
    """``rows`` in the table's order (``ConnectionRow.sort_key``), compared in C if built."""
    ordered = native.sorted_rows(rows) if use_native and native.PAIRS_AVAILABLE else None
    return ordered if ordered is not None else sorted(rows, key=ConnectionRow.sort_key)
