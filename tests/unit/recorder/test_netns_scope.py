"""What a recorder limited to some network namespaces keeps of a /proc walk."""

from __future__ import annotations

import os

import pytest

from eventlog.errors import UsageError
from eventlog.events import ConntrackEntry, SnapshotConnection, SnapshotProcess
from recorder.netns import NetnsScope, resolve
from recorder.procfs import ProcWalk

A, B = 4026532001, 4026532002


def _walk() -> ProcWalk:
    def process(pid: int, netns: int | None) -> SnapshotProcess:
        return SnapshotProcess(pid, 1, "p", "p", "0::/", netns, 0)

    def connection(netns: int) -> SnapshotConnection:
        return SnapshotConnection(netns, b"\x7f\0\0\1", 80, b"\x7f\0\0\1", 5000, 1, 1, 0, None)

    def entry(netns: int) -> ConntrackEntry:
        addr = b"\x0a\0\0\1"
        return ConntrackEntry(netns, addr, addr, 1, 2, addr, addr, 2, 1, 0x1A0, 3, 7, 0, 0)

    return ProcWalk(
        processes=[process(1, A), process(2, B), process(3, None)],
        connections=[connection(A), connection(B)],
        namespaces={A, B},
        namespace_paths={A: "/proc/1/ns/net", B: "/proc/2/ns/net"},
        conntrack=[entry(A), entry(B)],
    )


def test_every_namespace_unless_some_are_named() -> None:
    walk = _walk()
    assert NetnsScope().walk(walk) is walk
    kept = NetnsScope(frozenset({A})).walk(walk)
    assert [p.pid for p in kept.processes] == [1]  # B's, and one of no known namespace, not
    assert [c.netns for c in kept.connections] == [A]
    assert (kept.namespaces, kept.namespace_paths) == ({A}, {A: "/proc/1/ns/net"})
    assert kept.conntrack is not None and [e.netns for e in kept.conntrack] == [A]


def test_namespaces_are_named_by_inode_path_or_name() -> None:
    own = os.stat("/proc/self/ns/net").st_ino
    assert resolve(str(own)) == own
    assert resolve("/proc/self/ns/net") == own
    assert NetnsScope.of([]).wanted is None
    assert NetnsScope.of(["/proc/self/ns/net", str(own)]).describe() == [own]
    with pytest.raises(UsageError, match="--netns no-such: No such file"):
        resolve("no-such")  # looked for as /run/netns/no-such
