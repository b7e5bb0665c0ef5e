"""Conntrack (NAT) capture: every network namespace's TCP entries, dumped and followed.

Conntrack tables are per network namespace, so one netfilter netlink socket is opened in each
namespace the recorder knows of (the root one and those the /proc walks find, each opened by
its /proc/<pid>/ns/net path; see ``netfilter_socket_in``). Each gets a dump when asked
(the snapshots) and follows new and destroyed entries. Updates (status and TCP state
changes, five or so per connection) are not followed: the kernel makes their messages only
for a listener, which slowed a loopback workload by a tenth, and NAT resolution does not
need them (a translation is chosen before its entry is confirmed: the entry's first message
has it). Everything runs in one asyncio loop on a thread of its own; the recorder drains
the events it collected.

Only translated entries (source or destination NAT) are read: they are what NAT resolution
needs, and few, where a host with any NAT rule (Docker, Kubernetes) tracks every connection,
loopback ones included. The kernel leaves the others out: dumps ask for translated entries
only, and each following socket carries a filter that drops the others' messages before
they are queued to it.

If conntrack cannot be read (module absent, no CAP_NET_ADMIN), ``status`` says why and the
rest of the capture goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from eventlog.events import (
    IPS_DST_NAT,
    IPS_NAT_MASK,
    IPS_SRC_NAT,
    ConntrackEntry,
    Event,
    Kind,
    conntrack_event,
)
from recorder.hostenv import LIBC
from recorder.procfs import ParseStats

IPPROTO_TCP = 6
NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_DESTROY = 3
IPCTNL_MSG_CT_DELETE = 2
NETLINK_NETFILTER = 12
CLONE_NEWNET = 0x40000000
DUMP_TIMEOUT_S = 10.0
STARTUP_TIMEOUT_S = 15.0
DISCOVERY_PERIOD_S = 1.0  # how soon a new network namespace is followed

T = TypeVar("T")

# The classic BPF program that keeps a conntrack message only if its status (the top-level
# attribute CTA_STATUS, after the netlink and netfilter headers) has a NAT bit. The kernel's
# netlink-attribute lookup (SKF_AD_NLATTR) finds the attribute wherever it is.
_NLMSG_AND_NFGEN_HEADERS = 16 + 4
_CTA_STATUS = 3
_SKF_AD_NLATTR = (-0x1000 + 12) & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_NLATTR
_KEEP, _DROP = 0xFFFFFFFF, 0
_TRANSLATED_ONLY = (
    (0x00, 0, 0, _NLMSG_AND_NFGEN_HEADERS),  # A = where the attributes begin
    (0x01, 0, 0, _CTA_STATUS),  # X = the attribute to find
    (0x20, 0, 0, _SKF_AD_NLATTR),  # A = its offset, 0 if absent
    (0x15, 5, 0, 0),  # absent: drop
    (0x07, 0, 0, 0),  # X = A
    (0x40, 0, 0, 4),  # A = the status (big-endian, after the attribute's 4-byte header)
    (0x54, 0, 0, IPS_NAT_MASK),  # A &= the NAT bits
    (0x15, 1, 0, 0),  # none: drop
    (0x06, 0, 0, _KEEP),
    (0x06, 0, 0, _DROP),
)
_SO_ATTACH_FILTER = 26


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter)))


_FILTER_CODE = (_SockFilter * len(_TRANSLATED_ONLY))(*(_SockFilter(*i) for i in _TRANSLATED_ONLY))
_FILTER_PROGRAM = _SockFprog(len(_TRANSLATED_ONLY), _FILTER_CODE)


def keep_translated_only(sock: Any) -> None:
    """Have the kernel drop, before queueing them to ``sock``, the messages of entries that
    were not translated (the kernel copies the program: the structures need not outlive
    the call)."""
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, bytes(_FILTER_PROGRAM))


# A dump filters on ``status & mask == value``: one dump for each kind of translation.
_TRANSLATIONS = (IPS_SRC_NAT, IPS_DST_NAT)


def _groups() -> int:
    return sum(1 << (g - 1) for g in (NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY))


def _address(msg: Any, direction: str, field: str) -> bytes | None:
    for version in ("V4", "V6"):
        text = msg.get_nested(direction, "CTA_TUPLE_IP", f"CTA_IP_{version}_{field}")
        if text:
            return ipaddress.ip_address(text).packed
    return None


def entry_of(msg: Any, netns: int, stats: ParseStats | None = None) -> ConntrackEntry | None:
    """A TCP conntrack entry from a netlink message, or None for anything else.

    A message that does not parse (a kernel or pyroute2 newer than this code, say) is
    counted in ``stats`` and skipped, like a bad line of /proc text.
    """
    try:
        return _tcp_entry(msg, netns)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        if stats is not None:
            stats.bad_lines += 1
        return None


def _tcp_entry(msg: Any, netns: int) -> ConntrackEntry | None:
    if msg.get_nested("CTA_TUPLE_ORIG", "CTA_TUPLE_PROTO", "CTA_PROTO_NUM") != IPPROTO_TCP:
        return None
    orig_src, orig_dst = (
        _address(msg, "CTA_TUPLE_ORIG", "SRC"),
        _address(msg, "CTA_TUPLE_ORIG", "DST"),
    )
    reply_src, reply_dst = (
        _address(msg, "CTA_TUPLE_REPLY", "SRC"),
        _address(msg, "CTA_TUPLE_REPLY", "DST"),
    )
    if None in (orig_src, orig_dst, reply_src, reply_dst):
        return None

    def port(direction: str, field: str) -> int:
        return int(msg.get_nested(direction, "CTA_TUPLE_PROTO", f"CTA_PROTO_{field}_PORT") or 0)

    state = msg.get_nested("CTA_PROTOINFO", "CTA_PROTOINFO_TCP", "CTA_PROTOINFO_TCP_STATE")
    return ConntrackEntry(
        netns=netns,
        orig_src=orig_src,  # type: ignore[arg-type]
        orig_dst=orig_dst,  # type: ignore[arg-type]
        orig_sport=port("CTA_TUPLE_ORIG", "SRC"),
        orig_dport=port("CTA_TUPLE_ORIG", "DST"),
        reply_src=reply_src,  # type: ignore[arg-type]
        reply_dst=reply_dst,  # type: ignore[arg-type]
        reply_sport=port("CTA_TUPLE_REPLY", "SRC"),
        reply_dport=port("CTA_TUPLE_REPLY", "DST"),
        status=int(msg.get_attr("CTA_STATUS") or 0),
        tcp_state=int(state or 0),
        ct_id=int(msg.get_attr("CTA_ID") or 0),
        zone=int(msg.get_attr("CTA_ZONE") or 0),
        mark=int(msg.get_attr("CTA_MARK") or 0),
    )


def netfilter_socket_in(path: str) -> int:
    """A netfilter netlink socket made in the network namespace at ``path`` (its descriptor).

    A socket stays in the namespace it was made in, and ``setns`` moves only the thread that
    calls it, so a thread of its own enters the namespace, makes the socket and leaves. No
    fork: a child of the recorder would hold a copy of every socket the recorder holds (its
    store's connection, a pre-fork server's under test), and replay would count it among
    their holders while it lived.
    """
    made: list[int] = []
    failed: list[BaseException] = []

    def make() -> None:
        try:
            made.append(_make_in(path))
        except BaseException as exc:  # raised again in the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=make, name="scope-netns")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


def _make_in(path: str) -> int:
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _enter(path)
        try:
            sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_NETFILTER
            )
        finally:
            _setns(home)  # this thread ends next, but leaves where it came from all the same
        return sock.detach()
    finally:
        os.close(home)


def _enter(path: str) -> None:
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
    finally:
        os.close(target)


def _setns(fd: int) -> None:
    if LIBC.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


class ConntrackWatcher:
    """Follows conntrack in a set of namespaces from a thread running an asyncio loop."""

    def __init__(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="scope-conntrack", daemon=True
        )
        self._namespaces: dict[int, str] = {}  # netns inode -> path to open it by
        self._listeners: dict[int, asyncio.Task[None]] = {}
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self.failures: dict[int, str] = {}
        self.stats = ParseStats()  # messages that did not parse
        self.status: str | None = None
        self._discovery: Future[None] | None = None

    @property
    def capturing(self) -> bool:
        return self.status is not None and self.status.startswith("captured")

    def _run(self, coroutine: Awaitable[T], timeout: float) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def start(self, discover: Callable[[], dict[int, str]] | None = None) -> str:
        """Follow every namespace ``discover`` finds, now and every second; return the status."""
        self._thread.start()
        try:
            self._run(self._probe(), STARTUP_TIMEOUT_S)
        except Exception as exc:
            self.status = f"unavailable: {_reason(exc)}"
            return self.status
        self.status = "captured"
        if discover is not None:
            self.add_namespaces(discover())
            self._discovery = asyncio.run_coroutine_threadsafe(self._discover(discover), self._loop)
        return self.status

    async def _discover(self, discover: Callable[[], dict[int, str]]) -> None:
        while True:
            await asyncio.sleep(DISCOVERY_PERIOD_S)
            for inode, path in sorted(discover().items()):
                if inode not in self._namespaces:
                    self._namespaces[inode] = path
                    try:
                        await self._listen(inode, path)
                    except Exception as exc:
                        self.failures[inode] = _reason(exc)

    async def _probe(self) -> None:
        """Open one socket in our own namespace: fails fast without conntrack or privileges."""
        from pyroute2.netlink.nfnetlink.nfctsocket import AsyncNFCTSocket  # noqa: PLC0415

        sock = AsyncNFCTSocket(nfgen_family=socket.AF_INET)
        try:
            await sock.setup_endpoint()
            async for _ in await sock.dump():
                break
        finally:
            sock.close()

    def add_namespaces(self, namespaces: dict[int, str]) -> None:
        """Follow namespaces not followed yet (from a /proc walk)."""
        if not self.capturing:
            return
        for inode, path in sorted(namespaces.items()):
            if inode in self._namespaces:
                continue
            self._namespaces[inode] = path
            try:
                self._run(self._listen(inode, path), STARTUP_TIMEOUT_S)
            except Exception as exc:
                self.failures[inode] = _reason(exc)

    async def _listen(self, inode: int, path: str) -> None:
        from pyroute2.netlink.nfnetlink.nfctsocket import AsyncNFCTSocket  # noqa: PLC0415

        sock = AsyncNFCTSocket(
            nfgen_family=socket.AF_UNSPEC, fileno=netfilter_socket_in(path), groups=_groups()
        )
        await sock.setup_endpoint()
        keep_translated_only(sock)
        await sock.bind(groups=_groups())
        self._listeners[inode] = asyncio.ensure_future(self._follow(inode, sock))

    async def _follow(self, inode: int, sock: Any) -> None:
        try:
            while True:
                async for msg in sock.get():
                    self._record(inode, msg)
        except asyncio.CancelledError:
            sock.close()
            raise
        except Exception as exc:  # the namespace went away, or netlink failed
            self.failures[inode] = _reason(exc)
            with contextlib.suppress(Exception):
                sock.close()

    def _record(self, inode: int, msg: Any) -> None:
        entry = entry_of(msg, inode, self.stats)
        if entry is None:
            return
        destroyed = msg["header"]["type"] & 0xFF == IPCTNL_MSG_CT_DELETE
        kind = Kind.CT_DESTROY if destroyed else Kind.CT_NEW  # the groups followed: _groups
        event = conntrack_event(kind, self._clock(), entry)
        with self._lock:
            self._events.append(event)

    def drain(self) -> list[Event]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def dump(self) -> list[ConntrackEntry]:
        """Every TCP entry of every followed namespace, now."""
        if not self.capturing:
            return []
        entries: list[ConntrackEntry] = []
        for inode, path in sorted(self._namespaces.items()):
            if inode in self.failures:
                continue
            try:
                entries.extend(self._run(self._dump(inode, path), DUMP_TIMEOUT_S))
            except Exception as exc:
                self.failures[inode] = _reason(exc)
        return sorted(entries, key=lambda e: (e.netns, e.ct_id))

    async def _dump(self, inode: int, path: str) -> list[ConntrackEntry]:
        from pyroute2.netlink.nfnetlink.nfctsocket import AsyncNFCTSocket  # noqa: PLC0415

        found: dict[int, ConntrackEntry] = {}  # by id: an entry of both kinds is dumped twice
        for family in (socket.AF_INET, socket.AF_INET6):
            sock = AsyncNFCTSocket(nfgen_family=family, fileno=netfilter_socket_in(path))
            try:
                await sock.setup_endpoint()
                for bit in _TRANSLATIONS:
                    async for msg in await sock.dump(status=bit, status_mask=bit):
                        entry = entry_of(msg, inode, self.stats)
                        # (a kernel older than the status filter, 5.15, dumps them all)
                        if entry is not None and entry.status & IPS_NAT_MASK:
                            found[entry.ct_id] = entry
            finally:
                sock.close()
        return list(found.values())

    def stop(self) -> None:
        if self._discovery is not None:
            self._discovery.cancel()

        async def cancel_all() -> None:
            for task in self._listeners.values():
                task.cancel()
            await asyncio.gather(*self._listeners.values(), return_exceptions=True)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._run(cancel_all(), 5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._loop.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) in (1, 13):
        return "no permission (CAP_NET_ADMIN is needed to read conntrack)"
    if isinstance(exc, TimeoutError):
        return "conntrack did not answer in time"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text
